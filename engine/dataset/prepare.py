"""Turn a voice's recordings into an XTTS-v2 fine-tuning dataset.

``voices/<voice>/*`` → ``datasets/<voice>/``::

    wavs/<stem>_00001.wav   22 050 Hz mono 16-bit clips of 0.5–11.5 s, cut in the pauses between
                            sentences (VAD + word timestamps)
    train.csv               coqui's "coqui" formatter: ``audio_file|text|speaker_name``
    validation.csv          the same, a seeded random share of the clips
    transcription.json      per recording: speech regions (VAD), language, Whisper's segments
                            and each clip's re-transcription (engine.speech.transcribe.TranscriptCache),
                            so a re-run transcribes only new or changed recordings
    prepare.json            the voice's transcription settings (backend, model, language)
    report.json             counts, durations, skipped files with reasons, per-clip statistics
    edits.json              the user's changes (engine.dataset.edit): typed transcripts and
                            excluded clips, applied again by every run to the clips that remain

Every file is written atomically (temp file + ``os.replace``); the clips go to a new folder
that replaces ``wavs/`` only once all of them exist, so a failed or interrupted run leaves
the previous dataset whole.

Where to cut is :func:`engine.dataset.clips.plan_clips`; the per-clip quality figures are
:mod:`engine.dataset.quality`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torchaudio.functional as AF

from engine import languages, paths
from engine.dataset import checks as dataset_checks
from engine.dataset import edit as dataset_edit
from engine.dataset.checks import HALLUCINATIONS as HALLUCINATIONS  # re-exported: the checks' thresholds
from engine.dataset.checks import MISMATCH_CER as MISMATCH_CER
from engine.dataset.checks import SILENCE_BELOW_MEDIAN_DB as SILENCE_BELOW_MEDIAN_DB
from engine.dataset.clips import PlannedClip, plan_clips
from engine.dataset.quality import clip_audio_stats, word_confidence
from engine.dataset.records import VOICE_SETTINGS_FILE, ClipRecord, DatasetReport
from engine.dataset.records import load_clips as load_clips  # re-exported: the dataset's readers
from engine.dataset.records import voice_settings as voice_settings
from engine.errors import TimbreError
from engine.files import write_bytes_atomic
from engine.speech import transcribe
from engine.speech.audio import (
    SUPPORTED_EXTENSIONS,
    AudioError,
    audio_duration,
    dbfs,
    load_audio,
    loudness_normalise,
    peak,
    rms_dbfs,
    save_wav,
)

SAMPLE_RATE = 22_050
"""Clip sample rate in Hz: XTTS-v2's GPT/DVAE rate (``XttsAudioConfig.sample_rate``)."""

CSV_HEADER = dataset_edit.CSV_HEADER

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


class DatasetError(TimbreError, ValueError):
    """No dataset could be made. ``skipped`` lists ``{"file", "reason"}`` per unusable file."""

    def __init__(self, message: str, skipped: list[dict] | None = None):
        super().__init__(message)
        self.skipped = list(skipped or [])


DETECTABLE_LANGUAGES = [languages.to_whisper(code) for code in languages.CODES]
"""Auto-detection chooses among the 17 languages XTTS-v2 can learn (as Whisper codes): a
voice in any other language cannot be trained, and on synthetic or accented speech Whisper's
top guess is sometimes a language no one spoke (espeak-ng's French is heard as Thai by the
base model, with French the likeliest of the 17)."""


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

    Recordings are the files of :data:`engine.speech.audio.SUPPORTED_EXTENSIONS` in the voice
    folder, by name. Each is decoded at 22 050 Hz in a worker process
    (:func:`engine.speech.audio.load_audio`), RMS-normalised to -20 dBFS
    (:func:`engine.speech.audio.loudness_normalise`), and then, unless ``transcription.json`` holds
    it already: its speech regions are found by Silero VAD, its language detected (with
    ``language="auto"``), and the speech transcribed deterministically
    (:mod:`engine.speech.transcribe`). It is cut between sentences, in the pauses
    (:func:`engine.dataset.clips.plan_clips`). Every clip is transcribed again on its own and its
    text compared with that (CER, :data:`MISMATCH_CER`), and its speaker embedding compared
    with the voice's (:mod:`engine.speech.speaker`). Silence and Whisper's silence phrases never
    become clips (:data:`SILENCE_BELOW_MEDIAN_DB`, :data:`HALLUCINATIONS`). The edits of
    ``edits.json`` (:mod:`engine.dataset.edit`) are applied to the clips whose recording and
    times they name. The same recordings, settings and model give the same files.

    Args:
        voice: voice name (checked by :func:`engine.paths.check_name`).
        backend: ``"faster-whisper"`` or ``"openai-whisper"``.
        whisper_model: model name or local path; None: :data:`transcribe.DEFAULT_MODELS`.
        language: spoken language (a Whisper code such as ``"es"``); None or ``"auto"``
            detects it per recording with a multilingual model (an English-only model is
            English).
        validation_fraction: share of clips for validation, 0 ≤ f < 1 (see
            :func:`engine.dataset.edit.assign_splits`).
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
        engine.speech.transcribe.TranscriptionError: unknown backend, unknown language, or a
            language other than English with an English-only model (nothing is written).
        DatasetError: ``validation_fraction`` outside [0, 1), no recordings, the Whisper model cannot be loaded, no clip was made,
            edits.json cannot be read, or another run holds the dataset; the message lists
            each file's reason and the old dataset is kept.
    """
    started = time.perf_counter()
    progress = progress or _no_progress
    voice = paths.check_name(voice, "voice name")
    source_dir, out_dir = paths.voice_dir(voice), paths.dataset_dir(voice)
    if not 0.0 <= validation_fraction < 1.0:
        raise DatasetError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
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
    with contextlib.suppress(Exception):  # only a note: a model that cannot load stops the run later, with its reason
        log(f"transcribing with {transcribe.runtime(backend, model, device)[2]}")
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
    except TimbreError as error:  # DatasetError, InvalidNameError, TranscriptionError, ...
        error_log(f"error: {error}")
        return 1
    return 0


def save_voice_settings(voice: str, backend: str, whisper_model: str | None, language: str) -> None:
    """Remember the transcription settings of a voice (see :func:`voice_settings`)."""
    data = {"backend": backend, "whisper_model": whisper_model or "", "language": language}
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    write_bytes_atomic(paths.dataset_dir(voice) / VOICE_SETTINGS_FILE, text.encode("utf-8"))


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
            speech_levels += dataset_checks.speech_levels(audio, details["speech"], SAMPLE_RATE)
            planned, file_dropped = plan_clips(segments, audio, SAMPLE_RATE, speech=details["speech"])
            planned, hallucinated = dataset_checks.drop_hallucinations(planned)
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
                dataset_checks.check_text(record, heard)
                clips.append(record)
                embeddings[record.audio_file] = vector
            if not planned:
                reasons = sorted({d["reason"] for d in file_dropped + hallucinated}) or ["no speech"]
                skipped.append(_skip(path, "no usable clip: " + "; ".join(reasons), log))
            meter.end(path)
        progress(1.0, "writing the dataset")
        kept, silent = dataset_checks.drop_silent(clips, speech_levels)
        kept_ids = {id(clip) for clip in kept}
        for clip in clips:
            if id(clip) not in kept_ids:  # silence: its wav goes too
                (staging / Path(clip.audio_file).name).unlink(missing_ok=True)
        clips = kept
        dropped += silent
        speaker = dataset_checks.check_speakers(clips, embeddings)
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
            language=dataset_checks.majority_language(languages, speech) or whisper.language,
            requested_language=whisper.language or "auto",
            languages=languages,
            coverage=dataset_checks.coverage(speech, clips, dropped),
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
    """:func:`engine.dataset.edit.dataset_lock` (so a run and an edit never interleave),
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
    code = languages.to_whisper(TO_LANGUAGE_CODE.get(code, code))
    if code not in LANGUAGES:
        raise transcribe.TranscriptionError(
            f"language {language!r} is not one Whisper knows; use a code such as en, es, fr or auto"
        )
    return code


class _Progress:
    """Turns per-file stages into ``progress(fraction done, description)``: in seconds of
    audio, or in files when the length of a recording is unknown."""

    def __init__(self, progress: Progress, durations: dict[Path, float | None]):
        known = all(durations.values())
        self.progress = progress
        self.seconds = {path: (seconds if known else 1.0) for path, seconds in durations.items()}
        self.unit = "s of audio" if known else "files"
        self.total = sum(self.seconds.values()) or 1.0
        self.done = 0.0
        self.path: Path | None = None

    def begin(self, path: Path) -> None:
        self.path = path
        self.update("decoding", 0.0)

    def update(self, stage: str, share: float) -> None:
        """``share`` (0–1) of the current file is done; ``stage`` names what runs now."""
        done = self.done + share * self.seconds[self.path]
        self.progress(
            min(done / self.total, 1.0), f"{stage} {self.path.name} ({done:.0f} of {self.total:.0f} {self.unit})"
        )

    def end(self, path: Path) -> None:
        self.done += self.seconds[path]


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
    spans = [(clip.start, clip.end) for clip in planned]

    def check(missing: list[int]) -> list[str]:
        _load_whisper(whisper.backend, whisper.model, whisper.device)
        chosen = [spans[i] for i in missing]
        return transcribe.transcribe_spans(audio_16k, chosen, whisper.backend, whisper.model, language, whisper.device)

    return cache.per_clip(key, "verified", _clip_names(planned), check)


def _embeddings(audio_16k: np.ndarray, planned: list[PlannedClip], cache, key: str) -> list:
    """Each planned clip's speaker embedding (:func:`engine.speech.speaker.embed`, a ``(256,)``
    array), None where it cannot be made (too short or silent: remembered as such; no
    encoder installed: not remembered); kept in the transcript cache beside the checks."""

    def embed(missing: list[int]) -> list:
        from engine.speech import speaker

        vectors = []
        for i in missing:
            first, last = (round(t * transcribe.SAMPLE_RATE) for t in (planned[i].start, planned[i].end))
            try:
                vectors.append([round(float(x), 5) for x in speaker.embed(audio_16k[first:last])])
            except ValueError:  # too short or silent
                vectors.append(None)
        return vectors

    try:
        stored = cache.per_clip(key, "embeddings", _clip_names(planned), embed)
    except (ImportError, OSError):  # resemblyzer missing or broken
        return [None] * len(planned)
    return [None if vector is None else np.asarray(vector, dtype=np.float32) for vector in stored]


def _clip_names(planned: list[PlannedClip]) -> list[str]:
    """A clip's name in the transcript cache: ``"<start>:<end>"`` in its recording."""
    return [f"{clip.start:.3f}:{clip.end:.3f}" for clip in planned]


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
