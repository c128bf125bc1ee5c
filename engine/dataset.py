"""Turn a voice's recordings into an XTTS-v2 fine-tuning dataset.

``voices/<voice>/*`` → ``datasets/<voice>/``::

    wavs/<stem>_00001.wav   22 050 Hz mono 16-bit clips of 1–11.5 s, cut between sentences
    train.csv               coqui's "coqui" formatter: ``audio_file|text|speaker_name``
    validation.csv          the same, a seeded random share of the clips
    transcription.json      Whisper output per recording (engine.transcribe.TranscriptCache),
                            so a re-run transcribes only new or changed recordings
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
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torchaudio.functional as AF

from engine import dataset_edit, paths, transcribe
from engine.audio import (
    SUPPORTED_EXTENSIONS,
    AudioError,
    dbfs,
    load_audio,
    loudness_normalise,
    peak,
    rms_dbfs,
    save_wav,
)
from engine.clips import PlannedClip, plan_clips
from engine.dataset_quality import clip_audio_stats, word_confidence

SAMPLE_RATE = 22_050
"""Clip sample rate in Hz: XTTS-v2's GPT/DVAE rate (``XttsAudioConfig.sample_rate``)."""

CSV_HEADER = dataset_edit.CSV_HEADER

Progress = Callable[[float, str], None]


class DatasetError(ValueError):
    """No dataset could be made. ``skipped`` lists ``{"file", "reason"}`` per unusable file."""

    def __init__(self, message: str, skipped: list[dict] | None = None):
        super().__init__(message)
        self.skipped = list(skipped or [])


@dataclass
class DatasetReport:
    """What :func:`prepare_dataset` made; :meth:`to_dict` is ``report.json``.

    Durations in seconds. ``clips`` counts every clip in ``wavs/``; ``train`` and
    ``validation`` those in the csv files, ``excluded`` those the user left out;
    ``total_seconds`` is the speech in the csv files; ``edited`` counts clips whose text the
    user saved or had re-transcribed, and ``unmatched_edits`` the edits whose clip is gone
    (:func:`engine.dataset_edit.summarise`). ``skipped``: ``{"file", "reason"}`` per unusable
    recording. ``dropped``: ``{"file", "start", "end", "text", "reason"}`` per stretch of a
    usable recording that made no clip. ``per_clip``: one dict per clip with ``audio_file``,
    ``key`` (:func:`engine.dataset_edit.clip_key`), ``split`` (``"train"``,
    ``"validation"``, ``"excluded"``), ``source``, ``source_sha256``, ``start``, ``end``,
    ``duration``, ``text`` (trained on), ``whisper_text``, ``origin``, ``excluded``, ``peak``
    (0–1), ``peak_dbfs``, ``rms_dbfs``, ``clipping`` (share of samples near full scale before
    normalisation), ``leading_silence``, ``trailing_silence`` (seconds), Whisper's
    ``avg_logprob``, ``min_word_probability`` and ``low_words``
    (:mod:`engine.dataset_quality`).
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
    per_clip: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_dataset(
    voice: str,
    backend: str = "faster-whisper",
    whisper_model: str | None = None,
    language: str | None = "en",
    validation_fraction: float = 0.15,
    seed: int = 0,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    device: str = "auto",
) -> DatasetReport:
    """Transcribe ``voices/<voice>/`` and write the dataset ``datasets/<voice>/``.

    Recordings are the files of :data:`engine.audio.SUPPORTED_EXTENSIONS` in the voice
    folder, by name. Each is decoded at 22 050 Hz, RMS-normalised to -20 dBFS
    (:func:`engine.audio.loudness_normalise`), transcribed (or read from
    ``transcription.json``) and cut between sentences (:func:`engine.clips.plan_clips`).
    The edits of ``edits.json`` (:mod:`engine.dataset_edit`) are applied to the clips whose
    recording and times they name: typed transcripts replace Whisper's, excluded clips are
    saved and reported but left out of the csv files.

    Args:
        voice: voice name (checked by :func:`engine.paths.check_name`).
        backend: ``"faster-whisper"`` or ``"openai-whisper"``.
        whisper_model: model name or local path; None: :data:`transcribe.DEFAULT_MODELS`.
        language: spoken language code; None or ``"auto"`` lets Whisper detect it.
        validation_fraction: share of clips for validation, 0 ≤ f < 1; with ≥ 2 included
            clips and f > 0 at least one clip, and at most all but one, is for validation.
        seed: seed of the train/validation split (:func:`engine.dataset_edit.assign_splits`:
            a clip keeps its split when recordings are added).
        progress: optional ``progress(fraction 0–1, description)``.
        log: gets one line per skipped file and a summary.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``, for Whisper.

    Returns:
        The :class:`DatasetReport` also saved as ``report.json``.

    Raises:
        engine.paths.InvalidNameError: bad voice name.
        engine.transcribe.TranscriptionError: unknown backend.
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
    language = None if language in (None, "", "auto") else language
    model = _resolve_model(backend, whisper_model)
    recordings, skipped = _find_recordings(source_dir, log)
    if not recordings:
        kinds = ", ".join(SUPPORTED_EXTENSIONS)
        raise DatasetError(f"no recordings ({kinds}) in {source_dir}", skipped)

    out_dir.mkdir(parents=True, exist_ok=True)
    whisper = _Whisper(backend, model, language, device)
    with _exclusive(out_dir):
        split = (validation_fraction, seed)
        report = _make_dataset(voice, recordings, skipped, whisper, split, progress, log, started)
    excluded = f", {report.excluded} excluded" if report.excluded else ""
    log(
        f"{voice}: {report.clips} clips ({report.train} train, {report.validation} "
        f"validation{excluded}), {report.total_seconds:.1f} s of speech from "
        f"{report.audio_seconds:.1f} s of recordings; {len(skipped)} skipped; "
        f"took {report.seconds_taken:.1f} s"
    )
    return report


def prepare_command(
    voice: str,
    backend: str = "faster-whisper",
    whisper_model: str | None = None,
    language: str | None = "en",
    validation_fraction: float = 0.15,
    seed: int = 0,
    log: Callable[[str], None] = print,
    error_log: Callable[[str], None] | None = None,
) -> int:
    """``python -m engine prepare VOICE …``: run :func:`prepare_dataset`; an exit status.

    Returns 0 when at least one clip was made; 1 after writing ``error: <reason>`` to
    ``error_log`` (default: standard error) when the voice name, backend, model, arguments
    or recordings are bad. Skipped files and the summary go to ``log``.
    """
    error_log = error_log or (lambda line: print(line, file=sys.stderr))
    try:
        prepare_dataset(
            voice,
            backend=backend,
            whisper_model=whisper_model,
            language=language,
            validation_fraction=validation_fraction,
            seed=seed,
            log=log,
        )
    except ValueError as error:  # DatasetError, InvalidNameError, TranscriptionError
        error_log(f"error: {error}")
        return 1
    return 0


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
    clips: list[dict] = []
    dropped: list[dict] = []
    counts = {"audio": 0.0, "transcription": 0.0, "transcribed": 0, "reused": 0}
    try:
        for index, path in enumerate(recordings):
            progress(index / len(recordings), f"{path.name} ({index + 1}/{len(recordings)})")
            try:
                audio = load_audio(path, SAMPLE_RATE)
                key = cache.key(hashes[path], whisper.backend, whisper.model, whisper.language)
                segments = _segments(path, audio, whisper, cache, key, counts)
            except (AudioError, _Unusable) as error:
                skipped.append(_skip(path, getattr(error, "reason", str(error)), log))
                continue
            counts["audio"] += audio.numel() / SAMPLE_RATE
            raw, audio = audio, loudness_normalise(audio)
            planned, file_dropped = plan_clips(segments, audio, SAMPLE_RATE)
            dropped += [{"file": path.name, **item} for item in file_dropped]
            if not planned:
                reasons = sorted({d["reason"] for d in file_dropped}) or ["no speech"]
                skipped.append(_skip(path, "no usable clip: " + "; ".join(reasons), log))
            for number, clip in enumerate(planned, start=1):
                name = f"{stems[path]}_{number:05d}.wav"
                first = round(clip.start * SAMPLE_RATE)  # the length rounded once: ≥ 1 s stays ≥ 1 s
                stretch = slice(first, first + round((clip.end - clip.start) * SAMPLE_RATE))
                save_wav(staging / name, audio[stretch], SAMPLE_RATE)
                clips.append(_clip_stats(name, path, hashes[path], clip, audio[stretch], raw[stretch], segments))
        progress(1.0, "writing the dataset")
        if not clips:
            lines = [f"no clips could be made from the recordings in {paths.voice_dir(voice)}:"]
            lines += [f"  {entry['file']}: {entry['reason']}" for entry in skipped]
            raise DatasetError("\n".join(lines), skipped)
        clips = dataset_edit.apply_edits(clips, edits, *split)
        report = DatasetReport(
            voice=voice,
            **dataset_edit.summarise(clips, edits),
            audio_seconds=round(counts["audio"], 3),
            recordings=len(recordings),
            transcribed=counts["transcribed"],
            reused=counts["reused"],
            skipped=skipped,
            dropped=dropped,
            backend=whisper.backend,
            model=whisper.model,
            language=whisper.language,
            sample_rate=SAMPLE_RATE,
            validation_fraction=split[0],
            seed=split[1],
            seconds_taken=round(time.perf_counter() - started, 3),
            transcription_seconds=round(counts["transcription"], 3),
            created=_now(),
            per_clip=clips,
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


def _segments(path, audio, whisper: _Whisper, cache, key: str, counts: dict):
    """The recording's transcript from the cache, else from Whisper (then cached)."""
    segments = cache.get(key)
    if segments is not None:
        counts["reused"] += 1
        return segments
    backend, model = whisper.backend, whisper.model
    try:  # load first, so that a missing model stops the run instead of skipping files
        transcribe.load_model(backend, model, whisper.device)
    except Exception as error:  # the backends raise many kinds
        reason = f"{type(error).__name__}: {error}"
        raise DatasetError(f"cannot load the {backend} model {model!r} ({reason})") from error
    started = time.perf_counter()
    audio_16k = AF.resample(audio, SAMPLE_RATE, transcribe.SAMPLE_RATE).numpy()
    try:
        segments = transcribe.transcribe(audio_16k, backend, model, whisper.language, whisper.device)
    except Exception as error:  # one bad file must not stop the rest
        raise _Unusable(f"transcription failed ({type(error).__name__}: {error})") from error
    seconds = time.perf_counter() - started
    counts["transcribed"] += 1
    counts["transcription"] += seconds
    cache.put(
        key, segments, file=path.name, audio_seconds=round(audio.numel() / SAMPLE_RATE, 3),
        seconds_taken=round(seconds, 3), transcribed_at=_now(),
    )  # fmt: skip
    return segments


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


def _clip_stats(name, source: Path, source_sha256: str, clip: PlannedClip, samples, raw, segments) -> dict:
    """report.json's entry for one clip: ``samples`` as saved, ``raw`` the same stretch before
    loudness normalisation, ``segments`` the recording's transcript."""
    top = peak(samples)
    start, end = round(clip.start, 3), round(clip.end, 3)
    return {
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


def _install(out_dir: Path, staging: Path, report: DatasetReport) -> None:
    """Swap the new clips in for ``wavs/``, then write the csv files and report.json."""
    wavs, old = out_dir / "wavs", out_dir / f".wavs.old-{os.getpid()}"
    if wavs.exists():
        os.replace(wavs, old)
    os.replace(staging, wavs)
    os.chmod(wavs, 0o755)
    dataset_edit.write_metadata(out_dir, report.to_dict())
    shutil.rmtree(old, ignore_errors=True)
