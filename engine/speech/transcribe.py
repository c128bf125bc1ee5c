"""Speech recognition with word timestamps, behind one function for two Whisper backends,
with voice activity detection (VAD) and language detection.

``faster-whisper`` (CTranslate2, int8 on CPU) is the default: several times faster than
``openai-whisper`` on CPU for the same model. ``openai-whisper`` (PyTorch) is kept for users
who already have its checkpoints. Both return the same :class:`Segment` list.

Deterministic by construction: decoding is beam search at temperature 0 with a fixed beam
size, and there is no temperature fallback (Whisper's default fallback *samples* at 0.2, 0.4 …
when a window fails its compression-ratio or log-probability check, so the same file could be
transcribed differently on every run). The same audio, model and settings give the same text.

Speech regions come from the Silero VAD that ships inside faster-whisper
(``faster_whisper.vad``, no download), for both backends: :func:`detect_speech` finds them,
:func:`speech_chunks` merges them into windows of at most 30 s, and Whisper transcribes only
those windows, so long silences are never shown to Whisper (where it hallucinates "you").

Models are loaded on first use and kept (an ``functools.lru_cache`` of two); call
:func:`unload_models` to free their memory, e.g. before training starts on the same GPU.
Names that are not local paths are downloaded by the backend into ``models/<backend>/``.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine import paths
from engine.errors import TimbreError
from engine.files import write_bytes_atomic
from engine.speech.audio import file_sha256 as file_sha256  # re-exported: a recording's identity in the cache
from engine.speech.whisper_runtime import is_model_local as is_model_local  # re-exported: engine.training.evaluation
from engine.speech.whisper_runtime import preload_cuda12_libraries, runtime

SAMPLE_RATE = 16_000
"""Sample rate in Hz that Whisper models expect (``whisper.audio.SAMPLE_RATE``)."""

DEFAULT_MODELS = {"faster-whisper": "small", "openai-whisper": "small"}
"""Model used when none is named: ``small`` (244 M parameters, multilingual) balances accuracy
against CPU speed; ``tiny``/``base`` (39/74 M) are faster, ``medium``/``large-v3`` (769 M/1.55 B)
more accurate (sizes from the openai-whisper README)."""

BACKENDS = tuple(DEFAULT_MODELS)

BEAM_SIZE = 5
"""Beam width of every decode: Whisper's own default for ``temperature=0`` (``transcribe.py``
``--beam_size 5``)."""

CHUNK_SECONDS = 30.0
"""Longest window Whisper is given, in seconds: its encoder's input length (``N_SAMPLES`` /
``SAMPLE_RATE``)."""

WINDOW_SECONDS = 25.0
"""Longest window prepared for Whisper, in seconds. Shorter than its 30 s input: in windows
that filled 29–30 s, Whisper's first pass left the first or the last sentence without words
(three sentences, 8.5 s of 218 s of speech, in ``bench/prepare_throughput.py``)."""

MIN_MISSED_SECONDS = 0.5
"""Speech the VAD found that holds no recognised word for at least this long (seconds) is
transcribed again on its own (:func:`words_missing`)."""

MAX_CHUNK_GAP_SECONDS = 2.0
"""Speech regions further apart than this (seconds of silence) go to separate windows, so a
long silence is never transcribed."""

VAD_MIN_SILENCE_MS = 250
"""A pause of at least this many milliseconds separates two speech regions. Shorter than
faster-whisper's 2000 ms default because the regions also mark the pauses between sentences
where clips are cut (sentence pauses in read speech are 0.3–1 s)."""

VAD_PAD_MS = 100
"""Speech regions are widened by this many milliseconds on each side (Silero's
``speech_pad_ms``), so the soft start and end of a word stay inside its region."""

BATCH_SIZE = 8
"""Windows decoded together by faster-whisper's ``BatchedInferencePipeline``."""

logger = logging.getLogger(__name__)


class TranscriptionError(TimbreError, ValueError):
    """Bad arguments to :func:`transcribe` (unknown backend, audio of the wrong shape, a
    language an English-only model cannot transcribe)."""


@dataclass(frozen=True)
class Word:
    """One recognised word. Times in seconds from the start of the audio.

    ``text`` is as Whisper writes it, usually with a leading space and attached punctuation
    (``" world."``); ``probability`` is the model's probability of the word, 0–1.
    """

    start: float
    end: float
    text: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """A stretch of recognised speech, usually a sentence or phrase. Times in seconds.

    ``avg_logprob`` is the mean token log-probability of the decoded text and
    ``no_speech_prob`` the model's probability that the stretch holds no speech; Whisper
    itself treats ``no_speech_prob > 0.6`` with ``avg_logprob < -1`` as silence.
    """

    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0

    @classmethod
    def from_dict(cls, data: dict) -> Segment:
        """Rebuild a Segment from ``dataclasses.asdict`` output (as cached in JSON)."""
        words = [Word(**word) for word in data.get("words", [])]
        return cls(**{**data, "words": words})


def resolve_model(backend: str, model: str | None) -> str:
    """The model a call will load: ``model`` (an absolute path if it names an existing file or
    folder) or the backend's entry in :data:`DEFAULT_MODELS`. Raises TranscriptionError for an
    unknown backend."""
    _check_backend(backend)
    if not model:
        return DEFAULT_MODELS[backend]
    candidate = Path(model).expanduser()
    return str(candidate.resolve()) if candidate.exists() else model


def english_only_by_name(model: str) -> bool:
    """Whether a model name or path says the model is English-only: Whisper's ``*.en`` names
    (``tiny.en`` … ``medium.en``), also as the last part of a path (``models/tiny.en``)."""
    name = Path(str(model).rstrip("/\\")).name.lower()
    for suffix in (".pt", ".bin"):
        name = name.removesuffix(suffix)
    return name.endswith(".en")


def is_multilingual(backend: str, model: str | None = None, device: str = "auto") -> bool:
    """Whether the model transcribes languages other than English. Loads the model (cached):
    CTranslate2's ``is_multilingual``, openai-whisper's ``is_multilingual`` (its vocabulary
    size); a ``*.en`` name is English-only without loading. Raises as :func:`load_model`."""
    name = resolve_model(backend, model)
    if english_only_by_name(name):
        return False
    loaded = load_model(backend, name, device)
    return bool(loaded.model.is_multilingual if backend == "faster-whisper" else loaded.is_multilingual)


def check_language(backend: str, model: str | None, language: str | None, device: str = "auto") -> None:
    """Refuse a language other than English for an English-only model, before any work.

    Raises:
        TranscriptionError: ``language`` is set, not ``"en"``, and the model is English-only
            (its message names the model and says which models to use instead).
    """
    if language in (None, "", "auto", "en"):
        return
    if not is_multilingual(backend, model, device):
        name = resolve_model(backend, model)
        raise TranscriptionError(
            f"the Whisper model {name!r} is English-only and cannot transcribe language {language!r}; "
            "choose a multilingual model (tiny, base, small, medium, large-v3) or leave the language on auto"
        )


def detect_speech(audio: np.ndarray, min_silence_ms: int = VAD_MIN_SILENCE_MS, pad_ms: int = VAD_PAD_MS):
    """Speech regions of ``audio`` found by Silero VAD (``faster_whisper.vad``).

    Args:
        audio: 1-D float32 samples at :data:`SAMPLE_RATE` (16 kHz).
        min_silence_ms: pauses shorter than this (ms) do not end a region.
        pad_ms: each region is widened by this many ms on both sides.

    Returns:
        ``[(start, end), …]`` in seconds, in time order, not overlapping. Silero's defaults
        otherwise (speech threshold 0.5); regions longer than :data:`WINDOW_SECONDS` are split
        at their last pause of at least 98 ms (Silero's rule).
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    audio = _mono_float32(audio)
    if audio.size == 0:
        return []
    options = VadOptions(
        min_silence_duration_ms=min_silence_ms, speech_pad_ms=pad_ms, max_speech_duration_s=WINDOW_SECONDS
    )
    regions = []
    for item in get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE):
        start, end = item["start"] / SAMPLE_RATE, min(item["end"], audio.size) / SAMPLE_RATE
        if regions and start < regions[-1][1]:  # padding can make neighbours overlap
            start = regions[-1][1]
        if end > start:
            regions.append((round(start, 3), round(end, 3)))
    return regions


def speech_chunks(
    regions: list[tuple[float, float]], max_seconds: float = WINDOW_SECONDS, max_gap: float = MAX_CHUNK_GAP_SECONDS
) -> list[tuple[float, float]]:
    """Merge consecutive speech regions into windows for Whisper: a region joins the window
    before it when the window stays within ``max_seconds`` and the silence between them is at
    most ``max_gap`` seconds (so Whisper hears whole sentences with their pauses, and never a
    long silence). Times in seconds; the windows cover every region."""
    chunks: list[list[float]] = []
    for start, end in regions:
        if chunks and start - chunks[-1][1] <= max_gap and end - chunks[-1][0] <= max_seconds:
            chunks[-1][1] = end
        else:
            chunks.append([start, end])
    return [(round(a, 3), round(b, 3)) for a, b in chunks]


def detect_language(
    audio: np.ndarray,
    backend: str = "faster-whisper",
    model: str | None = None,
    device: str = "auto",
    candidates: list[str] | None = None,
) -> tuple[str, float]:
    """The spoken language of ``audio`` (1-D, 16 kHz; its first 30 s are used, so pass speech,
    e.g. the VAD regions joined) as ``(Whisper language code, probability 0–1)``.

    ``candidates``: Whisper codes to choose from (the most probable of them wins), e.g. the
    languages the voice model can learn; None: all of Whisper's. An English-only model gives
    ``("en", 1.0)``. Raises as :func:`load_model`.
    """
    audio = _mono_float32(audio)
    if not is_multilingual(backend, model, device):
        return "en", 1.0
    name = resolve_model(backend, model)
    backend, device, _why = runtime(backend, name, device)
    if backend == "faster-whisper":
        _language, _probability, ranked = _load_faster_whisper(name, device).detect_language(audio=audio)
        probabilities = dict(ranked)
    else:
        import whisper

        loaded = _load_openai_whisper(name, device)
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), loaded.dims.n_mels).to(loaded.device)
        _tokens, probabilities = loaded.detect_language(mel)
    allowed = [code for code in (candidates or probabilities) if code in probabilities] or list(probabilities)
    language = max(allowed, key=lambda code: probabilities[code])
    return language, float(probabilities[language])


def transcribe(
    audio: np.ndarray,
    backend: str = "faster-whisper",
    model: str | None = None,
    language: str | None = "en",
    device: str = "auto",
    chunks: list[tuple[float, float]] | None = None,
    word_timestamps: bool = True,
) -> list[Segment]:
    """Recognise speech in ``audio`` and return its segments with word timestamps.

    Args:
        audio: 1-D float32 samples in [-1, 1] at :data:`SAMPLE_RATE` (16 kHz); a torch tensor
            is accepted too.
        backend: ``"faster-whisper"`` or ``"openai-whisper"``.
        model: a Whisper model name (``"tiny.en"``, ``"small"``, ``"large-v3"`` …) or a local
            path: a CTranslate2 model folder for faster-whisper, a ``.pt`` checkpoint file
            holding ``{"dims", "model_state_dict"}`` for openai-whisper. ``None`` picks
            :data:`DEFAULT_MODELS`. Names are downloaded into ``models/<backend>/`` on first use.
        language: a language code such as ``"en"``; ``None`` lets the model detect it.
            English-only models always use English.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``: CUDA when the backend sees a GPU
            (faster-whisper falls back to the CPU, with a logged warning, when its CUDA 12
            libraries cannot be loaded).
        chunks: ``[(start, end), …]`` seconds: transcribe only these windows (each at most
            30 s, e.g. :func:`speech_chunks`), each on its own; ``None``: the VAD regions of
            ``audio`` merged by :func:`speech_chunks`.
        word_timestamps: align words (needed to cut clips; off for a plain re-transcription).

    Returns:
        Segments in time order with times from the start of ``audio``; each has words when
        ``word_timestamps`` and the backend produced an alignment. Decoding is beam search
        (:data:`BEAM_SIZE`) at temperature 0 without fallback, so the result is repeatable.

    Raises:
        TranscriptionError: unknown backend, ``audio`` is not 1-D, or a non-English
            ``language`` for an English-only model.
    """
    _check_backend(backend)
    audio = _mono_float32(audio)
    model_name = resolve_model(backend, model)
    check_language(backend, model_name, language, device)
    if chunks is None:
        chunks = speech_chunks(detect_speech(audio))
    chunks = [(float(a), float(b)) for a, b in chunks if b > a]
    if not chunks:
        return []
    backend, device, _why = runtime(backend, model_name, device)
    if backend == "faster-whisper":
        return _transcribe_faster_whisper(audio, model_name, language, device, chunks, word_timestamps)
    return _transcribe_openai_whisper(audio, model_name, language, device, chunks, word_timestamps)


def transcribe_spans(
    audio: np.ndarray,
    spans: list[tuple[float, float]],
    backend: str = "faster-whisper",
    model: str | None = None,
    language: str | None = "en",
    device: str = "auto",
) -> list[str]:
    """Transcribe each ``(start, end)`` span of ``audio`` (seconds, each at most 30 s) on its
    own and return one text per span, in order: the second, independent pass that checks a
    clip's text against its audio. Batched with faster-whisper; deterministic as
    :func:`transcribe`; raises as it.

    Each span is its own Whisper window. Packing several clips into one 30 s window would
    need fewer encoder passes (13 windows instead of 32 in ``bench/prepare_throughput.py``),
    but Whisper decodes a window as one text, so each clip would be heard in the context of
    the one before: measured with tiny.en, "Hello there." became "The low air" (CER 0.24)
    once packed behind another clip. An independent check is worth more than the time.
    """
    _check_backend(backend)
    audio = _mono_float32(audio)
    spans = [(float(a), max(float(a), float(b))) for a, b in spans]
    ordered = all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
    if not ordered:  # overlapping or unsorted: one window at a time
        return [" ".join(transcribe_spans(audio, [span], backend, model, language, device)) for span in spans]
    chunks = [span for span in spans if span[1] > span[0]]
    pieces = transcribe(audio, backend, model, language, device, chunks, word_timestamps=False) if chunks else []
    texts: list[list[str]] = [[] for _ in spans]
    starts = [start for start, _end in spans]
    for piece in pieces:  # a piece belongs to the span its middle lies in
        index = max(0, bisect.bisect_right(starts, (piece.start + piece.end) / 2) - 1)
        texts[index].append(piece.text.strip())
    return [" ".join(" ".join(parts).split()) for parts in texts]


def gaps(start: float, end: float, spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The parts of ``[start, end]`` (seconds) outside every span of ``spans`` (sorted by
    start; they may overlap), in order."""
    found, position = [], start
    for a, b in spans:
        if b <= position or a >= end:
            continue
        if a > position:
            found.append((position, a))
        position = max(position, b)
    if position < end:
        found.append((position, end))
    return found


def words_missing(
    segments: list[Segment], speech: list[tuple[float, float]], min_seconds: float = MIN_MISSED_SECONDS
) -> list[tuple[float, float]]:
    """Stretches of the VAD's ``speech`` regions (seconds) in which no recognised word lies,
    at least ``min_seconds`` long and widened to whole seconds of context where the region
    allows: where the first pass heard nothing although someone spoke. A word covers its
    times widened by 0.2 s (Whisper's word times can be that far off)."""
    words = sorted((w.start - 0.2, w.end + 0.2) for s in segments for w in (s.words or [Word(s.start, s.end, "", 0)]))
    missing = [gap for start, end in speech for gap in gaps(start, end, words) if gap[1] - gap[0] >= min_seconds]
    return [(round(max(a, 0.0), 3), round(b, 3)) for a, b in missing]


def load_model(backend: str, model: str | None = None, device: str = "auto"):
    """Load (or fetch from the cache) the model :func:`transcribe` would use; returns it.

    Lets a caller fail early with a clear message before any work. Raises TranscriptionError
    for an unknown backend; the backend's own exception (OSError, RuntimeError, …) when the
    model is missing or cannot be downloaded.
    """
    name = resolve_model(backend, model)
    backend, device, _why = runtime(backend, name, device)
    if backend == "faster-whisper":
        return _load_faster_whisper(name, device)
    return _load_openai_whisper(name, device)


def unload_models() -> None:
    """Forget the cached Whisper models so their (GPU) memory can be freed."""
    _load_faster_whisper.cache_clear()
    _load_openai_whisper.cache_clear()


def _check_backend(backend: str) -> None:
    if backend not in DEFAULT_MODELS:
        raise TranscriptionError(f"unknown transcription backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _mono_float32(audio) -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise TranscriptionError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    return audio


# --- faster-whisper --------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _load_faster_whisper(model: str, device: str):
    if device == "auto":
        device = runtime("faster-whisper", model, device)[1]
    if device == "cuda":
        preload_cuda12_libraries()
    return _faster_whisper_model(model, device)


def _faster_whisper_model(model: str, device: str):
    from faster_whisper import WhisperModel

    # int8 on CPU and float16 on GPU are the compute types faster-whisper's README benchmarks
    # (the fastest and smallest of each).
    return WhisperModel(
        model,
        device=device,
        compute_type="int8" if device == "cpu" else "float16",
        download_root=str(paths.models_dir() / "faster-whisper"),
    )


def _transcribe_faster_whisper(audio, model, language, device, chunks, word_timestamps) -> list[Segment]:
    from faster_whisper import BatchedInferencePipeline

    whisper_model = _load_faster_whisper(model, device)
    if not whisper_model.model.is_multilingual:
        language = "en"
    # Each window is decoded on its own (clip_timestamps), several at a time. temperature 0
    # with no fallback list: the batched pipeline decodes once at the first temperature, so
    # nothing is sampled. condition_on_previous_text=False: a mistake is not carried into
    # later windows (WhisperX makes the same choice).
    pieces, _info = BatchedInferencePipeline(whisper_model).transcribe(
        audio,
        language=language,
        clip_timestamps=[{"start": start, "end": end} for start, end in chunks],
        beam_size=BEAM_SIZE,
        temperature=0.0,
        condition_on_previous_text=False,
        word_timestamps=word_timestamps,
        without_timestamps=False,  # segment times place each piece (transcribe_spans)
        batch_size=BATCH_SIZE,
    )
    segments = []
    for piece in pieces:  # a generator: decoding happens while iterating
        words = [Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in (piece.words or [])]
        segments.append(
            Segment(
                start=float(piece.start),
                end=float(piece.end),
                text=piece.text,
                words=words,
                avg_logprob=float(piece.avg_logprob),
                no_speech_prob=float(piece.no_speech_prob),
            )
        )
    return sorted(segments, key=lambda segment: segment.start)


# --- openai-whisper --------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _load_openai_whisper(model: str, device: str):
    import torch
    import whisper

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return whisper.load_model(model, device=device, download_root=str(paths.models_dir() / "whisper"))


def _transcribe_openai_whisper(audio, model, language, device, chunks, word_timestamps) -> list[Segment]:
    whisper_model = _load_openai_whisper(model, device)
    if not whisper_model.is_multilingual:
        language = "en"
    segments = []
    for start, end in chunks:  # one window at a time; times shifted back to the recording's
        first, last = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
        result = whisper_model.transcribe(
            audio[first:last],
            language=language,
            temperature=0.0,  # a single temperature: no sampled fallback
            beam_size=BEAM_SIZE,
            word_timestamps=word_timestamps,
            condition_on_previous_text=False,
            fp16=whisper_model.device.type == "cuda",
            verbose=None,
        )
        offset = first / SAMPLE_RATE
        for piece in result.get("segments", []):
            words = [
                Word(float(w["start"]) + offset, float(w["end"]) + offset, w["word"], float(w["probability"]))
                for w in piece.get("words", [])
            ]
            segments.append(
                Segment(
                    start=float(piece["start"]) + offset,
                    end=float(piece["end"]) + offset,
                    text=piece["text"],
                    words=words,
                    avg_logprob=float(piece["avg_logprob"]),
                    no_speech_prob=float(piece["no_speech_prob"]),
                )
            )
    return segments


# --- the transcription cache -----------------------------------------------------------------


class TranscriptCache:
    """A JSON file of transcripts, one entry per recording and settings, so that a re-run
    transcribes only recordings that are new or changed (or a new backend/model/language).

    Entries are keyed by ``"<sha256>:<backend>:<model>:<language or auto>"`` and hold the
    segments (``dataclasses.asdict`` form) plus whatever details the caller passes
    (file name, seconds taken …). Every :meth:`put` rewrites the file atomically, so an
    interrupted run keeps what it had transcribed. An unreadable file counts as empty.
    """

    VERSION = 3  # 2: VAD windows, beam search without temperature fallback; 3: 25 s windows, missed speech recovered, checks with timestamps

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") == self.VERSION:
                self.entries = dict(data["entries"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.entries = {}

    @staticmethod
    def key(sha256: str, backend: str, model: str, language: str | None) -> str:
        return f"{sha256}:{backend}:{model}:{language or 'auto'}"

    def get(self, key: str) -> list[Segment] | None:
        """The cached segments for ``key``, or None."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            return [Segment.from_dict(s) for s in entry["segments"]]
        except (KeyError, TypeError):
            return None

    def details(self, key: str) -> dict:
        """What :meth:`put` stored beside the segments of ``key`` ({} when nothing)."""
        return {k: v for k, v in self.entries.get(key, {}).items() if k != "segments"}

    def put(self, key: str, segments: list[Segment], **details) -> None:
        """Store ``segments`` (and ``details``) under ``key`` and save the file."""
        self.entries[key] = {**details, "segments": [asdict(s) for s in segments]}
        self.save()

    def per_clip(self, key: str, field: str, names: list[str], compute) -> list:
        """Per-clip results kept in the entry ``key`` under ``field`` (e.g. the checks'
        re-transcriptions), for the clips ``names`` (``"<start>:<end>"``): the stored ones as
        they are, the others from ``compute(indices of the missing names)`` (a list of
        JSON-serialisable values, in that order), then stored and the file saved. Only the
        ``names`` asked for are kept, so clips that are gone are forgotten. Exceptions of
        ``compute`` propagate and nothing is stored."""
        known = dict(self.entries.get(key, {}).get(field) or {})
        missing = [i for i, name in enumerate(names) if name not in known]
        if missing:
            known.update(zip([names[i] for i in missing], compute(missing), strict=True))
            if key in self.entries:
                self.entries[key][field] = {name: known[name] for name in names}
                self.save()
        return [known[name] for name in names]

    def keep_only(self, sha256s: set[str]) -> None:
        """Forget entries of recordings not in ``sha256s`` (deleted files); saved on next put."""
        self.entries = {k: v for k, v in self.entries.items() if k.split(":")[0] in sha256s}

    def save(self) -> None:
        payload = {"version": self.VERSION, "entries": self.entries}
        write_bytes_atomic(self.path, (json.dumps(payload, indent=1) + "\n").encode())
