"""Turn a voice's recordings into an XTTS-v2 fine-tuning dataset.

``voices/<voice>/*`` → ``datasets/<voice>/``::

    wavs/<stem>_00001.wav   22 050 Hz mono 16-bit clips of 0.5–11.5 s, cut in the pauses between
                            sentences (VAD + word timestamps)
    train.csv               coqui's "coqui" formatter: ``audio_file|text|speaker_name``
    validation.csv          the same, a seeded random share of the clips
    transcription.json      per recording: speech regions (VAD), language, Whisper's segments
                            and each clip's re-transcription (engine.transcribe.TranscriptCache),
                            so a re-run transcribes only new or changed recordings
    prepare.json            the voice's transcription settings (backend, model, language)
    report.json             counts, durations, skipped files with reasons, per-clip statistics
    edits.json              the user's changes (engine.dataset_edit): typed transcripts and
                            excluded clips, applied again by every run to the clips that remain

Every file is written atomically (temp file + ``os.replace``); the clips go to a new folder
that replaces ``wavs/`` only once all of them exist, so a failed or interrupted run leaves
the previous dataset whole.

Where to cut is :func:`engine.clips.plan_clips`; the per-clip quality figures are
:mod:`engine.dataset_quality`'s.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torchaudio.functional as AF

from engine import dataset_edit, dataset_quality, languages, paths, scoring, transcribe
from engine.audio import (
    SUPPORTED_EXTENSIONS,
    AudioError,
    audio_duration,
    dbfs,
    load_audio,
    loudness_normalise,
    peak,
    rms_dbfs,
    save_wav,
    write_bytes_atomic,
)
from engine.clips import PlannedClip, plan_clips
from engine.dataset_quality import clip_audio_stats, word_confidence

SAMPLE_RATE = 22_050
"""Clip sample rate in Hz: XTTS-v2's GPT/DVAE rate (``XttsAudioConfig.sample_rate``)."""

CSV_HEADER = dataset_edit.CSV_HEADER

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


class DatasetError(ValueError):
    """No dataset could be made. ``skipped`` lists ``{"file", "reason"}`` per unusable file."""

    def __init__(self, message: str, skipped: list[dict] | None = None):
        super().__init__(message)
        self.skipped = list(skipped or [])


HALLUCINATIONS = frozenset(
    {
        "you", "thank you", "thanks for watching", "thank you for watching", "thank you very much",
        "please subscribe", "subscribe to my channel", "bye", "so", "okay", "oh",
        "subtitles by the amaraorg community", "transcription by castingwords",
        "sous titrage st 501", "sous titres réalisés para la communauté damaraorg",
        "merci davoir regardé", "untertitel der amaraorg community", "untertitel im auftrag des zdf",
        "gracias por ver", "subtítulos realizados por la comunidad de amaraorg", "ご視聴ありがとうございました",
    }
)  # fmt: skip
"""Texts Whisper writes for silence or noise (normalised by :func:`engine.scoring.normalise`
with the basic normaliser): the "you" and "Thank you for watching" of YouTube subtitles, the
credit lines of subtitle communities. Found in Whisper's issue tracker and in the Seed-TTS and
WhisperX hallucination lists; a clip whose whole text is one of these is not kept."""

DETECTABLE_LANGUAGES = [languages.to_whisper(code) for code in languages.CODES]
"""Auto-detection chooses among the 17 languages XTTS-v2 can learn (as Whisper codes): a
voice in any other language cannot be trained, and on synthetic or accented speech Whisper's
top guess is sometimes a language no one spoke (espeak-ng's French is heard as Thai by the
base model, with French the likeliest of the 17)."""

SILENCE_BELOW_MEDIAN_DB = 40.0
"""A clip whose RMS level is more than this many dB below the voice's median speech level
(the RMS of the speech regions the VAD found, after loudness normalisation) is silence (or
breath, or hum), not speech, whatever Whisper wrote for it."""

MISMATCH_CER = dataset_quality.MISMATCH_CER
"""A clip whose text and an independent re-transcription of its audio differ by more than
this character error rate (0.25) is flagged "text does not match audio" and left out of
training until the user restores it (a sentence Whisper skipped or invented in the first pass
gives CER 0.4–1; two decodes of the same clean clip usually differ by under 0.1)."""

UNCOVERED_MIN_SECONDS = 0.3
"""Stretches of detected speech shorter than this (seconds) that are in no clip are not
listed in the coverage report: the VAD pads each region by 0.1 s and a clip keeps at most
0.2 s of pause, so shorter leftovers are the edges of speech that is in a clip."""


@dataclass
class ClipRecord:
    """One clip of report.json's ``per_clip``. Times and durations in seconds.

    Made by prepare: ``audio_file`` (``"wavs/<stem>_NNNNN.wav"``), ``key``
    (:func:`engine.dataset_edit.clip_key`), ``source`` (recording file name),
    ``source_sha256``, ``start``/``end`` in the recording, ``duration``, ``text`` (trained on),
    ``language`` (Whisper code of the recording), ``peak`` (0–1), ``peak_dbfs``,
    ``rms_dbfs``, ``clipping`` (share of samples near full scale before normalisation),
    ``leading_silence``/``trailing_silence``, Whisper's ``avg_logprob``,
    ``min_word_probability`` and ``low_words`` (:mod:`engine.dataset_quality`);
    ``verified_text`` (the clip re-transcribed on its own) and ``cer`` (character error rate
    of ``text`` against it, :func:`engine.scoring.character_error_rate`); ``auto_excluded``
    (the reason prepare left the clip out of training, e.g. "text does not match audio
    (CER 0.47)", or None); ``speaker_similarity`` (cosine of the clip's speaker embedding to
    the median one of the voice's other clips, None when unmeasured) and ``different_speaker``
    (:func:`engine.speaker.speaker_outliers` flagged it).

    Set by :func:`engine.dataset_edit.apply_edits`: ``split`` (``"train"``,
    ``"validation"``, ``"excluded"``), ``whisper_text``, ``origin``, ``excluded`` and, after a
    re-transcription of one clip, ``retranscription``.
    """

    audio_file: str
    key: str
    source: str
    source_sha256: str
    start: float
    end: float
    duration: float
    text: str
    split: str = "train"
    language: str | None = None
    peak: float | None = None
    peak_dbfs: float | None = None
    rms_dbfs: float | None = None
    clipping: float | None = None
    leading_silence: float | None = None
    trailing_silence: float | None = None
    avg_logprob: float | None = None
    min_word_probability: float | None = None
    low_words: list[str] = field(default_factory=list)
    verified_text: str | None = None
    cer: float | None = None
    auto_excluded: str | None = None
    speaker_similarity: float | None = None
    different_speaker: bool | None = None
    whisper_text: str | None = None
    origin: str = "whisper"
    excluded: bool = False
    recorded_split: str | None = None
    retranscription: dict | None = None

    @classmethod
    def from_dict(cls, data: dict) -> ClipRecord:
        """A record from a report.json entry; keys this version does not know are ignored
        (``path``, added by :func:`engine.dataset_edit.list_clips`, for one)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatasetReport:
    """What :func:`prepare_dataset` made; :meth:`to_dict` is ``report.json``.

    Durations in seconds. ``clips`` counts every clip in ``wavs/``; ``train`` and
    ``validation`` those in the csv files, ``excluded`` those left out (by the user, or by
    prepare when a clip's text does not match its audio); ``total_seconds`` is the speech in
    the csv files; ``edited`` counts clips whose text the user saved or had re-transcribed,
    and ``unmatched_edits`` the edits whose clip is gone (:func:`engine.dataset_edit.summarise`).
    ``skipped``: ``{"file", "reason"}`` per unusable recording. ``dropped``: ``{"file",
    "start", "end", "text", "reason"}`` per stretch of a usable recording that made no clip
    (too short, no usable text, silence, a known Whisper hallucination).
    ``language``: the Whisper code of the language most of the audio is in (the one asked
    for, or the one Whisper detected per recording when ``requested_language`` is
    ``"auto"``); ``languages``: ``{file: code}``. ``coverage``: ``speech_seconds`` (what the
    VAD found), ``clip_seconds`` (of that speech, how much is in a kept clip), ``share``,
    and ``uncovered``: ``{"file", "start", "end", "seconds", "reason"}`` per stretch of
    speech in no clip. ``verification``: how clips were checked (model, CER threshold,
    ``mismatched`` count). ``per_clip``: one :class:`ClipRecord` per clip.
    """

    voice: str
    clips: int
    train: int
    validation: int
    excluded: int
    edited: int
    unmatched_edits: int
    total_seconds: float
    audio_seconds: float
    recordings: int
    transcribed: int
    reused: int
    skipped: list[dict]
    dropped: list[dict]
    backend: str
    model: str
    language: str | None
    sample_rate: int
    validation_fraction: float
    seed: int
    seconds_taken: float
    transcription_seconds: float
    created: str
    requested_language: str = "auto"
    languages: dict[str, str] = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)
    speaker: dict = field(default_factory=dict)
    per_clip: list[ClipRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_dataset(
    voice: str,
    backend: str = "faster-whisper",
    whisper_model: str | None = None,
    language: str | None = "auto",
    validation_fraction: float = 0.15,
    seed: int = 0,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    device: str = "auto",
) -> DatasetReport:
    """Transcribe ``voices/<voice>/`` and write the dataset ``datasets/<voice>/``.

    Recordings are the files of :data:`engine.audio.SUPPORTED_EXTENSIONS` in the voice
    folder, by name. Each is decoded at 22 050 Hz in a worker process
    (:func:`engine.audio.load_audio`), RMS-normalised to -20 dBFS
    (:func:`engine.audio.loudness_normalise`), and then, unless ``transcription.json`` holds
    it already: its speech regions are found by Silero VAD, its language detected (with
    ``language="auto"``), and the speech transcribed deterministically
    (:mod:`engine.transcribe`). It is cut between sentences, in the pauses
    (:func:`engine.clips.plan_clips`). Every clip is transcribed again on its own and its
    text compared with that (CER, :data:`MISMATCH_CER`), and its speaker embedding compared
    with the voice's (:mod:`engine.speaker`). Silence and Whisper's silence phrases never
    become clips (:data:`SILENCE_BELOW_MEDIAN_DB`, :data:`HALLUCINATIONS`). The edits of
    ``edits.json`` (:mod:`engine.dataset_edit`) are applied to the clips whose recording and
    times they name. The same recordings, settings and model give the same files.

    Args:
        voice: voice name (checked by :func:`engine.paths.check_name`).
        backend: ``"faster-whisper"`` or ``"openai-whisper"``.
        whisper_model: model name or local path; None: :data:`transcribe.DEFAULT_MODELS`.
        language: spoken language (a Whisper code such as ``"es"``); None or ``"auto"``
            detects it per recording with a multilingual model (an English-only model is
            English).
        validation_fraction: share of clips for validation, 0 ≤ f < 1 (see
            :func:`engine.dataset_edit.assign_splits`).
        seed: seed of the train/validation split.
        progress: optional ``progress(fraction 0–1, description)``; the fraction is seconds
            of audio done over seconds of audio in all recordings, and the description names
            the stage (decoding, VAD, transcribing, verifying) and the seconds.
        log: gets one line per skipped file and a summary.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``, for Whisper.

    Returns:
        The :class:`DatasetReport` also saved as ``report.json``.

    Raises:
        engine.paths.InvalidNameError: bad voice name.
        engine.transcribe.TranscriptionError: unknown backend, unknown language, or a
            language other than English with an English-only model (nothing is written).
        ValueError: ``validation_fraction`` outside [0, 1).
        DatasetError: no recordings, the Whisper model cannot be loaded, no clip was made,
            edits.json cannot be read, or another run holds the dataset; the message lists
            each file's reason and the old dataset is kept.
    """
    started = time.perf_counter()
    progress = progress or _no_progress
    voice = paths.check_name(voice, "voice name")
    source_dir, out_dir = paths.voice_dir(voice), paths.dataset_dir(voice)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    language = _check_language_code(language)
    model = _resolve_model(backend, whisper_model)
    recordings, skipped = _find_recordings(source_dir, log)
    if not recordings:
        kinds = ", ".join(SUPPORTED_EXTENSIONS)
        raise DatasetError(f"no recordings ({kinds}) in {source_dir}", skipped)
    if language not in (None, "en"):  # refuse an English-only model before anything is written
        _load_whisper(backend, model, device)
        transcribe.check_language(backend, model, language, device)

    out_dir.mkdir(parents=True, exist_ok=True)
    whisper = _Whisper(backend, model, language, device)
    with _exclusive(out_dir):
        split = (validation_fraction, seed)
        report = _make_dataset(voice, recordings, skipped, whisper, split, progress, log, started)
        save_voice_settings(voice, backend=backend, whisper_model=whisper_model, language=language or "auto")
    excluded = f", {report.excluded} excluded" if report.excluded else ""
    log(
        f"{voice}: {report.clips} clips ({report.train} train, {report.validation} "
        f"validation{excluded}), {report.total_seconds:.1f} s of speech from "
        f"{report.audio_seconds:.1f} s of recordings; language {report.language}; "
        f"{report.coverage.get('clip_seconds', 0):.1f} of {report.coverage.get('speech_seconds', 0):.1f} s "
        f"of detected speech in clips; {len(skipped)} skipped; took {report.seconds_taken:.1f} s"
    )
    return report


def prepare_command(
    voice: str,
    backend: str = "faster-whisper",
    whisper_model: str | None = None,
    language: str | None = "auto",
    validation_fraction: float = 0.15,
    seed: int = 0,
    log: Callable[[str], None] = print,
    error_log: Callable[[str], None] | None = None,
) -> int:
    """``python -m engine prepare VOICE …``: run :func:`prepare_dataset`; an exit status.

    Prints progress (stage and seconds of audio done) to ``log`` about every 5 % or stage
    change. Returns 0 when at least one clip was made; 1 after writing ``error: <reason>`` to
    ``error_log`` (default: standard error) when the voice name, backend, model, language,
    arguments or recordings are bad. Skipped files and the summary go to ``log``.
    """
    error_log = error_log or (lambda line: print(line, file=sys.stderr))
    shown = {"fraction": -1.0, "stage": ""}

    def progress(fraction: float, description: str) -> None:
        stage = description.split(" ", 1)[0]
        if fraction - shown["fraction"] >= 0.05 or stage != shown["stage"] or fraction >= 1.0:
            shown.update(fraction=fraction, stage=stage)
            log(f"[{fraction:4.0%}] {description}")

    try:
        prepare_dataset(
            voice,
            backend=backend,
            whisper_model=whisper_model,
            language=language,
            validation_fraction=validation_fraction,
            seed=seed,
            progress=progress,
            log=log,
        )
    except ValueError as error:  # DatasetError, InvalidNameError, TranscriptionError
        error_log(f"error: {error}")
        return 1
    return 0


VOICE_SETTINGS_FILE = "prepare.json"


def voice_settings(voice: str) -> dict:
    """The transcription settings last used for the voice (``datasets/<voice>/prepare.json``):
    ``{"backend", "whisper_model", "language"}``; {} when none are saved or the file is
    unreadable. Raises InvalidNameError for a bad voice name."""
    path = paths.dataset_dir(voice) / VOICE_SETTINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keys = ("backend", "whisper_model", "language")
    return {k: data[k] for k in keys if isinstance(data, dict) and isinstance(data.get(k), str)}


def save_voice_settings(voice: str, backend: str, whisper_model: str | None, language: str) -> None:
    """Remember the transcription settings of a voice (see :func:`voice_settings`)."""
    data = {"backend": backend, "whisper_model": whisper_model or "", "language": language}
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    write_bytes_atomic(paths.dataset_dir(voice) / VOICE_SETTINGS_FILE, text.encode("utf-8"))


def load_clips(voice: str) -> list[dict]:
    """The clips of ``datasets/<voice>/``: train rows, then validation rows.

    Each dict has the csv columns (``audio_file``, ``text``, ``speaker_name``) plus
    ``split`` (``"train"`` or ``"validation"``), ``path`` (absolute path of the wav, as
    text) and ``duration`` (seconds, from report.json; None if unknown). [] when the voice
    has no dataset. Raises InvalidNameError for a bad voice name.
    """
    out_dir = paths.dataset_dir(voice)
    durations = {}
    try:
        report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
        durations = {c["audio_file"]: c["duration"] for c in report["per_clip"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rows = []
    for split in ("train", "validation"):
        csv_path = out_dir / f"{split}.csv"
        if not csv_path.is_file():
            continue
        with open(csv_path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="|"):
                name = row["audio_file"]
                extra = {"path": str(out_dir / name), "duration": durations.get(name)}
                rows.append({**row, "split": split, **extra})
    return rows


def _make_dataset(voice, recordings, skipped, whisper, split, progress, log, started) -> DatasetReport:
    """The body of :func:`prepare_dataset`, run while holding the dataset folder's lock."""
    out_dir = paths.dataset_dir(voice)
    try:
        edits = dataset_edit.load_edits(voice)  # before any work: an unreadable file stops the run
    except dataset_edit.DatasetEditError as error:
        raise DatasetError(str(error)) from error
    for leftover in out_dir.glob(".wavs.*"):  # staging folders of an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)
    cache = transcribe.TranscriptCache(out_dir / "transcription.json")
    hashes = {path: transcribe.file_sha256(path) for path in recordings}
    cache.keep_only(set(hashes.values()))
    staging = Path(tempfile.mkdtemp(prefix=".wavs.new-", dir=out_dir))
    stems = _clip_stems(recordings)
    meter = _Progress(progress, {path: audio_duration(path) for path in recordings})
    clips: list[ClipRecord] = []
    embeddings: dict[str, object] = {}
    dropped: list[dict] = []
    speech: dict[str, list] = {}
    languages: dict[str, str] = {}
    speech_levels: list[float] = []
    counts = {"audio": 0.0, "transcription": 0.0, "transcribed": 0, "reused": 0}
    try:
        for path in recordings:
            meter.begin(path)
            try:
                audio = load_audio(path, SAMPLE_RATE)
                meter.update("VAD", 0.1)
                audio_16k = AF.resample(audio, SAMPLE_RATE, transcribe.SAMPLE_RATE).numpy()
                key = cache.key(hashes[path], whisper.backend, whisper.model, whisper.language)
                segments, details = _transcript(path, audio_16k, whisper, cache, key, counts, meter)
            except (AudioError, _Unusable) as error:
                skipped.append(_skip(path, getattr(error, "reason", str(error)), log))
                meter.end(path)
                continue
            counts["audio"] += audio.numel() / SAMPLE_RATE
            speech[path.name], languages[path.name] = details["speech"], details["language"]
            raw, audio = audio, loudness_normalise(audio)
            speech_levels += _speech_levels(audio, details["speech"])
            planned, file_dropped = plan_clips(segments, audio, SAMPLE_RATE, speech=details["speech"])
            planned, hallucinated = _drop_hallucinations(planned)
            dropped += [{"file": path.name, **item} for item in file_dropped + hallucinated]
            meter.update("verifying", 0.8)
            verified = _verify(audio_16k, planned, whisper, details["language"], cache, key)
            vectors = _embeddings(audio_16k, planned, cache, key)
            for number, (clip, heard, vector) in enumerate(zip(planned, verified, vectors, strict=True), start=1):
                name = f"{stems[path]}_{number:05d}.wav"
                first = round(clip.start * SAMPLE_RATE)  # the length rounded once: ≥ 1 s stays ≥ 1 s
                stretch = slice(first, first + round((clip.end - clip.start) * SAMPLE_RATE))
                save_wav(staging / name, audio[stretch], SAMPLE_RATE)
                record = _clip_record(name, path, hashes[path], clip, audio[stretch], raw[stretch], segments)
                record.language = details["language"]
                _check_text(record, heard)
                clips.append(record)
                embeddings[record.audio_file] = vector
            if not planned:
                reasons = sorted({d["reason"] for d in file_dropped + hallucinated}) or ["no speech"]
                skipped.append(_skip(path, "no usable clip: " + "; ".join(reasons), log))
            meter.end(path)
        progress(1.0, "writing the dataset")
        clips, silent = _drop_silent(clips, staging, speech_levels)
        dropped += silent
        speaker = _check_speakers(clips, embeddings)
        if not clips:
            lines = [f"no clips could be made from the recordings in {paths.voice_dir(voice)}:"]
            lines += [f"  {entry['file']}: {entry['reason']}" for entry in skipped]
            raise DatasetError("\n".join(lines), skipped)
        per_clip = dataset_edit.apply_edits([clip.to_dict() for clip in clips], edits, *split)
        per_clip_records = [ClipRecord.from_dict(clip) for clip in per_clip]
        mismatched = sum(bool(clip.auto_excluded) for clip in clips)
        report = DatasetReport(
            voice=voice,
            **dataset_edit.summarise(per_clip, edits),
            audio_seconds=round(counts["audio"], 3),
            recordings=len(recordings),
            transcribed=counts["transcribed"],
            reused=counts["reused"],
            skipped=skipped,
            dropped=dropped,
            backend=whisper.backend,
            model=whisper.model,
            language=_majority(languages, speech) or whisper.language,
            requested_language=whisper.language or "auto",
            languages=languages,
            coverage=_coverage(speech, clips, dropped),
            verification={"cer_threshold": MISMATCH_CER, "mismatched": mismatched, "model": whisper.model},
            speaker=speaker,
            sample_rate=SAMPLE_RATE,
            validation_fraction=split[0],
            seed=split[1],
            seconds_taken=round(time.perf_counter() - started, 3),
            transcription_seconds=round(counts["transcription"], 3),
            created=_now(),
            per_clip=per_clip_records,
        )
        _install(out_dir, staging, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


# --- steps of prepare_dataset --------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(out_dir: Path):
    """:func:`engine.dataset_edit.dataset_lock` (so a run and an edit never interleave),
    raising DatasetError when another run or an edit holds it."""
    try:
        with dataset_edit.dataset_lock(out_dir):
            yield
    except dataset_edit.DatasetBusyError as error:
        raise DatasetError(str(error)) from error


def _no_progress(fraction: float, desc: str) -> None:
    pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _resolve_model(backend: str, whisper_model: str | None) -> str:
    model = transcribe.resolve_model(backend, whisper_model)  # raises for a bad backend
    looks_like_path = bool(whisper_model) and (os.sep in whisper_model or whisper_model.startswith((".", "~")))
    if looks_like_path and not Path(model).exists():
        raise DatasetError(f"Whisper model {whisper_model!r}: no such file or folder")
    return model


class _Unusable(Exception):
    """A recording to skip; the message is the reason."""


@dataclass(frozen=True)
class _Whisper:
    backend: str
    model: str
    language: str | None
    device: str


def _load_whisper(backend: str, model: str, device: str) -> None:
    """Load the Whisper model, or raise DatasetError with one plain sentence."""
    try:
        transcribe.load_model(backend, model, device)
    except transcribe.TranscriptionError:
        raise
    except Exception as error:  # the backends raise many kinds (OSError, hub errors, RuntimeError)
        logger.warning("cannot load the %s model %r", backend, model, exc_info=True)  # the details: server log
        raise DatasetError(
            f"The Whisper model {model!r} is not on this computer and could not be downloaded "
            f"({type(error).__name__}); choose a model folder on this computer as the Whisper model "
            "(or in Settings), or connect to the internet once to download it."
        ) from error


def _check_language_code(language: str | None) -> str | None:
    """None for auto-detection, else ``language`` if Whisper knows it; raises TranscriptionError."""
    if language in (None, "", "auto"):
        return None
    from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    code = str(language).strip().lower()
    code = {"zh-cn": "zh"}.get(code, TO_LANGUAGE_CODE.get(code, code))
    if code not in LANGUAGES:
        raise transcribe.TranscriptionError(
            f"language {language!r} is not one Whisper knows; use a code such as en, es, fr or auto"
        )
    return code


class _Progress:
    """Turns per-file stages into ``progress(fraction of all seconds of audio, description)``."""

    def __init__(self, progress: Progress, durations: dict[Path, float | None]):
        self.progress = progress
        self.durations = {path: seconds or 0.0 for path, seconds in durations.items()}
        self.total = sum(self.durations.values()) or float(len(durations))
        self.done = 0.0
        self.path: Path | None = None

    def _seconds(self, path: Path) -> float:
        return self.durations[path] if sum(self.durations.values()) else 1.0

    def begin(self, path: Path) -> None:
        self.path = path
        self.update("decoding", 0.0)

    def update(self, stage: str, share: float) -> None:
        """``share`` (0–1) of the current file is done; ``stage`` names what runs now."""
        done = self.done + share * self._seconds(self.path)
        total = sum(self.durations.values())
        amount = f"{done:.0f} of {total:.0f} s of audio" if total else f"file {done:.1f} of {self.total:.0f}"
        self.progress(min(done / self.total, 1.0), f"{stage} {self.path.name} ({amount})")

    def end(self, path: Path) -> None:
        self.done += self._seconds(path)


class _Unusable(Exception):
    """A recording to skip; the message is the reason."""


@dataclass(frozen=True)
class _Whisper:
    backend: str
    model: str
    language: str | None
    device: str


def _transcript(path, audio_16k, whisper: _Whisper, cache, key: str, counts: dict, meter: _Progress):
    """The recording's transcript and ``{"speech", "language"}`` from the cache, else from
    VAD + (language detection) + Whisper, then cached."""
    segments = cache.get(key)
    details = cache.details(key)
    if segments is not None and "speech" in details and "language" in details:
        counts["reused"] += 1
        return segments, details
    _load_whisper(whisper.backend, whisper.model, whisper.device)  # a missing model stops the run
    started = time.perf_counter()
    try:
        speech = transcribe.detect_speech(audio_16k)
        language, probability = whisper.language, 1.0
        if language is None and speech:
            meter.update("detecting-language", 0.15)
            voiced = np.concatenate(
                [audio_16k[round(a * transcribe.SAMPLE_RATE) : round(b * transcribe.SAMPLE_RATE)] for a, b in speech]
            )
            language, probability = transcribe.detect_language(
                voiced, whisper.backend, whisper.model, whisper.device, candidates=DETECTABLE_LANGUAGES
            )
        meter.update("transcribing", 0.2)
        chunks = transcribe.speech_chunks(speech)
        segments = transcribe.transcribe(
            audio_16k, whisper.backend, whisper.model, language, whisper.device, chunks=chunks
        )
        segments = _recover_missed_speech(audio_16k, segments, speech, whisper, language)
    except Exception as error:  # one bad file must not stop the rest
        raise _Unusable(f"transcription failed ({type(error).__name__}: {error})") from error
    seconds = time.perf_counter() - started
    counts["transcribed"] += 1
    counts["transcription"] += seconds
    details = {
        "file": path.name, "audio_seconds": round(audio_16k.size / transcribe.SAMPLE_RATE, 3),
        "speech": [list(region) for region in speech], "language": language or "en",
        "language_probability": round(probability, 4), "seconds_taken": round(seconds, 3),
        "transcribed_at": _now(),
    }  # fmt: skip
    cache.put(key, segments, **details)
    return segments, details


def _recover_missed_speech(audio_16k, segments, speech, whisper: _Whisper, language: str | None):
    """Speech the VAD found but the first pass left without words (Whisper sometimes drops
    the first or last sentence of a window) is transcribed again, each stretch on its own,
    and its words are added: nothing spoken is lost to where a window happened to fall."""
    missing = transcribe.words_missing(segments, speech)
    if not missing:
        return segments
    found = transcribe.transcribe(audio_16k, whisper.backend, whisper.model, language, whisper.device, chunks=missing)
    kept = []
    for segment in found:
        middle = (segment.start + segment.end) / 2
        if any(a <= middle <= b for a, b in missing) and any(ch.isalnum() for ch in segment.text):
            kept.append(segment)
    return sorted([*segments, *kept], key=lambda segment: segment.start)


def _verify(audio_16k, planned: list[PlannedClip], whisper: _Whisper, language: str, cache, key: str) -> list[str]:
    """Each planned clip transcribed again on its own (one batched pass), from the cache
    when the same clip of the same recording was checked before with the same settings."""
    entry = cache.entries.get(key, {})
    known = dict(entry.get("verified") or {})
    spans = [(clip.start, clip.end) for clip in planned]
    names = [f"{start:.3f}:{end:.3f}" for start, end in spans]
    missing = [i for i, name in enumerate(names) if name not in known]
    if missing:
        _load_whisper(whisper.backend, whisper.model, whisper.device)
        texts = transcribe.transcribe_spans(
            audio_16k, [spans[i] for i in missing], whisper.backend, whisper.model, language, whisper.device
        )
        known.update({names[i]: text for i, text in zip(missing, texts, strict=True)})
        if key in cache.entries:
            cache.entries[key]["verified"] = {name: known[name] for name in names}
            cache.save()
    return [known[name] for name in names]


def _check_text(record: ClipRecord, heard: str) -> None:
    """Record the re-transcription and its CER; leave the clip out of training when the two
    disagree by more than :data:`MISMATCH_CER`."""
    record.verified_text = dataset_edit.clean_text(heard)
    record.cer = round(scoring.character_error_rate(record.text, heard, record.language), 4)
    if record.cer > MISMATCH_CER:
        record.auto_excluded = f"text does not match audio (CER {record.cer:.2f})"


def _drop_hallucinations(planned: list[PlannedClip]) -> tuple[list[PlannedClip], list[dict]]:
    """Planned clips whose whole text is a known silence phrase (:data:`HALLUCINATIONS`) go."""
    kept, dropped = [], []
    for clip in planned:
        said = scoring.normalise(clip.text, language=None).replace(".", "")
        if said in HALLUCINATIONS:
            reason = f"a phrase Whisper writes for silence or noise ({clip.text.strip()!r})"
            dropped.append(
                {"start": round(clip.start, 3), "end": round(clip.end, 3), "text": clip.text, "reason": reason}
            )
        else:
            kept.append(clip)
    return kept, dropped


def _speech_levels(audio, speech: list) -> list[float]:
    """RMS level (dBFS) of each speech region the VAD found in ``audio`` (22 050 Hz)."""
    levels = []
    for start, end in speech:
        level = rms_dbfs(audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)])
        if level > -120.0:
            levels.append(level)
    return levels


def _drop_silent(
    clips: list[ClipRecord], staging: Path, speech_levels: list[float]
) -> tuple[list[ClipRecord], list[dict]]:
    """Clips more than :data:`SILENCE_BELOW_MEDIAN_DB` below the voice's median level are
    removed (their wav too); returns the rest and a ``dropped`` entry for each. The voice's
    level is the median RMS of the speech regions the VAD found (speech by definition, so a
    handful of silent clips cannot drag it down), else of the clips."""
    levels = speech_levels or [clip.rms_dbfs for clip in clips if clip.rms_dbfs is not None]
    if not levels:
        return clips, []
    median = statistics.median(levels)
    kept, dropped = [], []
    for clip in clips:
        if clip.rms_dbfs is not None and clip.rms_dbfs < median - SILENCE_BELOW_MEDIAN_DB:
            (staging / Path(clip.audio_file).name).unlink(missing_ok=True)
            reason = f"silence: RMS {clip.rms_dbfs:.0f} dBFS, {median - clip.rms_dbfs:.0f} dB below the voice's median"
            dropped.append(
                {"file": clip.source, "start": clip.start, "end": clip.end, "text": clip.text, "reason": reason}
            )
        else:
            kept.append(clip)
    return kept, dropped


def _embeddings(audio_16k: np.ndarray, planned: list[PlannedClip], cache, key: str) -> list:
    """Each planned clip's speaker embedding (:func:`engine.speaker.embed`, a ``(256,)``
    array), None where it cannot be made (too short, silent, no encoder); kept in the
    transcript cache beside the checks, so a re-run embeds only new clips."""
    entry = cache.entries.get(key, {})
    known = dict(entry.get("embeddings") or {})
    names = [f"{clip.start:.3f}:{clip.end:.3f}" for clip in planned]
    missing = [i for i, name in enumerate(names) if name not in known]
    if missing:
        try:
            from engine import speaker
        except ImportError:
            return [None] * len(planned)
        for i in missing:
            first, last = (
                round(planned[i].start * transcribe.SAMPLE_RATE),
                round(planned[i].end * transcribe.SAMPLE_RATE),
            )
            try:
                known[names[i]] = [round(float(x), 5) for x in speaker.embed(audio_16k[first:last])]
            except ValueError:  # too short or silent: no embedding, remembered as such
                known[names[i]] = None
            except (ImportError, OSError):  # resemblyzer missing or broken: nothing to remember
                return [None] * len(planned)
        if key in cache.entries:
            cache.entries[key]["embeddings"] = {name: known[name] for name in names}
            cache.save()
    return [None if known[name] is None else np.asarray(known[name], dtype=np.float32) for name in names]


def _check_speakers(clips: list[ClipRecord], embeddings: dict) -> dict:
    """Set each clip's ``speaker_similarity`` (to the median embedding of the voice's *other*
    clips, :func:`engine.speaker.speaker_similarities`) and ``different_speaker``
    (:func:`engine.speaker.speaker_outliers`: below the measured threshold and well below the
    voice's usual similarity); returns report.json's ``speaker``."""
    try:
        from engine import speaker
    except ImportError as error:
        return {"measured": False, "reason": f"speaker embeddings unavailable ({error})"}
    measured = [clip for clip in clips if embeddings.get(clip.audio_file) is not None]
    if len(measured) < 2:
        return {"measured": False, "reason": "fewer than two clips long enough to compare"}
    stack = np.stack([embeddings[clip.audio_file] for clip in measured])
    similarities = speaker.speaker_similarities(stack)
    outliers = set(speaker.speaker_outliers(stack))
    for index, clip in enumerate(measured):
        clip.speaker_similarity = round(float(similarities[index]), 4)
        clip.different_speaker = index in outliers
    return {
        "measured": True,
        "model": "Resemblyzer GE2E (resemblyzer 0.1.4)",
        "threshold": speaker.SAME_SPEAKER_THRESHOLD,
        "clips": len(measured),
        "different_speaker": len(outliers),
    }


def _majority(languages: dict[str, str], speech: dict[str, list]) -> str | None:
    """The language with the most seconds of detected speech (ties: alphabetical)."""
    seconds: dict[str, float] = {}
    for name, code in languages.items():
        seconds[code] = seconds.get(code, 0.0) + sum(end - start for start, end in speech.get(name, []))
    return min(seconds, key=lambda code: (-seconds[code], code)) if seconds else None


def _coverage(speech: dict[str, list], clips: list[ClipRecord], dropped: list[dict]) -> dict:
    """How much of the detected speech is in a clip, and where the rest went."""
    total = covered = 0.0
    uncovered = []
    for name, regions in speech.items():
        spans = sorted((c.start, c.end) for c in clips if c.source == name)
        for start, end in regions:
            total += end - start
            inside = sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans)
            covered += inside
            for a, b in _gaps(start, end, spans):
                if b - a >= UNCOVERED_MIN_SECONDS:
                    reason = _why_uncovered(name, a, b, dropped)
                    uncovered.append({"file": name, "start": round(a, 3), "end": round(b, 3),
                                      "seconds": round(b - a, 3), "reason": reason})  # fmt: skip
    return {
        "speech_seconds": round(total, 3),
        "clip_seconds": round(covered, 3),
        "share": round(covered / total, 4) if total else None,
        "uncovered": uncovered,
    }


def _gaps(start: float, end: float, spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The parts of ``[start, end]`` outside every span (spans sorted by start)."""
    gaps, position = [], start
    for a, b in spans:
        if b <= position or a >= end:
            continue
        if a > position:
            gaps.append((position, a))
        position = max(position, b)
    if position < end:
        gaps.append((position, end))
    return gaps


def _why_uncovered(name: str, start: float, end: float, dropped: list[dict]) -> str:
    """The reason of the dropped stretch that overlaps ``[start, end]`` most, else a default."""
    best, overlap = None, 0.0
    for item in dropped:
        if item.get("file") != name or "start" not in item:
            continue
        shared = min(end, item["end"]) - max(start, item["start"])
        if shared > overlap:
            best, overlap = item["reason"], shared
    return best or "Whisper wrote no words for this speech (noise, laughter, or a language it did not expect)"


def _find_recordings(source_dir: Path, log) -> tuple[list[Path], list[dict]]:
    """Supported recordings in the folder by name, and skip entries for other files."""
    recordings, skipped = [], []
    for path in sorted(source_dir.iterdir()) if source_dir.is_dir() else []:
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in SUPPORTED_EXTENSIONS:
            recordings.append(path)
        else:
            kind = path.suffix or "no extension"
            skipped.append(_skip(path, f"not a supported audio type ({kind})", log))
    return recordings, skipped


def _clip_stems(recordings: list[Path]) -> dict[Path, str]:
    """A safe, unique clip-name stem per recording (``take 1.wav`` → ``take_1``; with
    ``a.wav`` and ``a.mp3`` → ``a`` and ``a_mp3``)."""
    stems: dict[Path, str] = {}
    used: set[str] = set()
    for path in recordings:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("._") or "recording"
        if stem.lower() in used:
            stem = f"{stem}_{path.suffix.lstrip('.').lower()}"
        while stem.lower() in used:
            stem += "_"
        used.add(stem.lower())
        stems[path] = stem
    return stems


def _skip(path: Path, reason: str, log) -> dict:
    log(f"skipped {path.name}: {reason}")
    return {"file": path.name, "reason": reason}


def _clip_record(name, source: Path, source_sha256: str, clip: PlannedClip, samples, raw, segments) -> ClipRecord:
    """report.json's entry for one clip: ``samples`` as saved, ``raw`` the same stretch before
    loudness normalisation, ``segments`` the recording's transcript."""
    top = peak(samples)
    start, end = round(clip.start, 3), round(clip.end, 3)
    fields_ = {
        "audio_file": f"wavs/{name}",
        "key": dataset_edit.clip_key(source_sha256, start, end),
        "split": "train",
        "source": source.name,
        "source_sha256": source_sha256,
        "start": start,
        "end": end,
        "duration": round(samples.numel() / SAMPLE_RATE, 3),
        # Whisper text as is; the CSV writer keeps "|" and line breaks out of it.
        "text": dataset_edit.clean_text(clip.text),
        "peak": round(top, 4),
        "peak_dbfs": round(max(dbfs(top), -120.0), 2),
        "rms_dbfs": round(max(rms_dbfs(samples), -120.0), 2),
        **clip_audio_stats(samples, SAMPLE_RATE, raw),
        "avg_logprob": round(clip.avg_logprob, 4),
        **word_confidence(segments, clip.start, clip.end),
    }
    return ClipRecord(**fields_)


def _install(out_dir: Path, staging: Path, report: DatasetReport) -> None:
    """Swap the new clips in for ``wavs/``, then write the csv files and report.json."""
    wavs, old = out_dir / "wavs", out_dir / f".wavs.old-{os.getpid()}"
    if wavs.exists():
        os.replace(wavs, old)
    os.replace(staging, wavs)
    os.chmod(wavs, 0o755)
    dataset_edit.write_metadata(out_dir, report.to_dict())
    shutil.rmtree(old, ignore_errors=True)
