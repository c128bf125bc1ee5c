"""Speech recognition with word timestamps, behind one function for two Whisper backends.

``faster-whisper`` (CTranslate2, int8 on CPU) is the default: several times faster than
``openai-whisper`` on CPU for the same model. ``openai-whisper`` (PyTorch) is kept for users
who already have its checkpoints. Both return the same :class:`Segment` list.

Models are loaded on first use and kept (an ``functools.lru_cache`` of two); call
:func:`unload_models` to free their memory, e.g. before training starts on the same GPU.
Names that are not local paths are downloaded by the backend into ``models/<backend>/``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine import paths
from engine.audio import file_sha256 as file_sha256  # re-exported: a recording's identity in the cache
from engine.audio import write_bytes_atomic

SAMPLE_RATE = 16_000
"""Sample rate in Hz that Whisper models expect (``whisper.audio.SAMPLE_RATE``)."""

DEFAULT_MODELS = {"faster-whisper": "small", "openai-whisper": "small"}
"""Model used when none is named: ``small`` (244 M parameters, multilingual) balances accuracy
against CPU speed; ``tiny``/``base`` (39/74 M) are faster, ``medium``/``large-v3`` (769 M/1.55 B)
more accurate (sizes from the openai-whisper README)."""

BACKENDS = tuple(DEFAULT_MODELS)

logger = logging.getLogger(__name__)


class TranscriptionError(ValueError):
    """Bad arguments to :func:`transcribe` (unknown backend, audio of the wrong shape)."""


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


def transcribe(
    audio: np.ndarray,
    backend: str = "faster-whisper",
    model: str | None = None,
    language: str | None = "en",
    device: str = "auto",
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
            English-only models (``*.en``) always use English.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``: CUDA when the backend sees a GPU
            (faster-whisper falls back to the CPU, with a logged warning, when its CUDA 12
            libraries cannot be loaded).

    Returns:
        Segments in time order; each has words unless the backend produced no alignment.

    Raises:
        TranscriptionError: unknown backend, or ``audio`` is not 1-D.
    """
    _check_backend(backend)
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise TranscriptionError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    model_name = resolve_model(backend, model)
    if backend == "faster-whisper":
        return _transcribe_faster_whisper(audio, model_name, language, device)
    return _transcribe_openai_whisper(audio, model_name, language, device)


def load_model(backend: str, model: str | None = None, device: str = "auto"):
    """Load (or fetch from the cache) the model :func:`transcribe` would use; returns it.

    Lets a caller fail early with a clear message before any work. Raises TranscriptionError
    for an unknown backend; the backend's own exception (OSError, RuntimeError, …) when the
    model is missing or cannot be downloaded.
    """
    name = resolve_model(backend, model)
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


# --- faster-whisper --------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _load_faster_whisper(model: str, device: str):
    import ctranslate2

    if device != "auto":
        return _faster_whisper_model(model, device)
    if ctranslate2.get_cuda_device_count() > 0:
        # The CTranslate2 wheel loads CUDA 12's cuBLAS/cuDNN on first use; a CUDA 13 torch
        # environment (torch 2.11 from PyPI) does not ship them. Try one second of silence on
        # the GPU and fall back to the CPU rather than fail on every file.
        try:
            whisper_model = _faster_whisper_model(model, "cuda")
            list(whisper_model.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), language="en")[0])
            return whisper_model
        except (RuntimeError, OSError, ValueError) as error:
            logger.warning("faster-whisper cannot use the GPU (%s); using the CPU", error)
    return _faster_whisper_model(model, "cpu")


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


def _transcribe_faster_whisper(audio: np.ndarray, model: str, language: str | None, device: str) -> list[Segment]:
    whisper_model = _load_faster_whisper(model, device)
    # condition_on_previous_text=False: a mistake is not carried into later windows, which
    # stops repetition loops on long recordings (WhisperX makes the same choice).
    pieces, _info = whisper_model.transcribe(
        audio,
        language=language,
        word_timestamps=True,
        condition_on_previous_text=False,
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
    return segments


# --- openai-whisper --------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _load_openai_whisper(model: str, device: str):
    import torch
    import whisper

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return whisper.load_model(model, device=device, download_root=str(paths.models_dir() / "whisper"))


def _transcribe_openai_whisper(audio: np.ndarray, model: str, language: str | None, device: str) -> list[Segment]:
    whisper_model = _load_openai_whisper(model, device)
    if not whisper_model.is_multilingual:
        language = "en"
    result = whisper_model.transcribe(
        audio,
        language=language,
        word_timestamps=True,
        condition_on_previous_text=False,
        fp16=whisper_model.device.type == "cuda",
        verbose=None,
    )
    segments = []
    for piece in result.get("segments", []):
        words = [
            Word(float(w["start"]), float(w["end"]), w["word"], float(w["probability"])) for w in piece.get("words", [])
        ]
        segments.append(
            Segment(
                start=float(piece["start"]),
                end=float(piece["end"]),
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

    VERSION = 1

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

    def put(self, key: str, segments: list[Segment], **details) -> None:
        """Store ``segments`` (and ``details``) under ``key`` and save the file."""
        self.entries[key] = {**details, "segments": [asdict(s) for s in segments]}
        self.save()

    def keep_only(self, sha256s: set[str]) -> None:
        """Forget entries of recordings not in ``sha256s`` (deleted files); saved on next put."""
        self.entries = {k: v for k, v in self.entries.items() if k.split(":")[0] in sha256s}

    def save(self) -> None:
        payload = {"version": self.VERSION, "entries": self.entries}
        write_bytes_atomic(self.path, (json.dumps(payload, indent=1) + "\n").encode())
