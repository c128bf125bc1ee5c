"""Manual changes to a prepared dataset, kept in ``datasets/<voice>/edits.json`` so that they
survive running prepare again (after adding recordings, say).

The user reviews the clips :func:`engine.dataset.prepare.prepare_dataset` made and may correct a
transcript, exclude a clip (a cough, a misread word) or restore it, or re-transcribe one clip
with another Whisper model. An edit is keyed by what identifies a clip across runs of prepare:
the SHA-256 of its recording and its start and end in that recording, in seconds to the
millisecond (``"<sha256>:<start>:<end>"``, :func:`clip_key`). Prepare reuses an unchanged
recording's cached transcript and cuts it the same way, so its clips get the same keys and the
edits apply again; the clip's file name is no key, since it depends on which other recordings
exist. An edit whose clip is gone (recording deleted, or transcribed again with another model)
stays in the file unused and is counted as ``unmatched_edits``: nothing the user typed is lost.

``edits.json``::

    {"version": 1, "clips": {"<sha256>:<start>:<end>": {
        "audio_file": "wavs/market_00002.wav", "source": "market.wav",   where it was last seen
        "text": "...",              the transcript to train on, when it differs from Whisper's
        "origin": "manual",         who wrote "text": "manual" (typed) or "whisper" (re-transcribed)
        "whisper": {...},           a re-transcription: backend, model, language, avg_logprob, words
        "excluded": true,           left out of train.csv and validation.csv (the wav is kept)
        "updated": "<UTC time>"}}}

train.csv, validation.csv and report.json's ``per_clip`` and counts are derived from the clips
prepare made (report.json, each with Whisper's text in ``whisper_text``) and edits.json
(:func:`apply_edits`, :func:`write_metadata`). A change writes edits.json first, then the derived
files, each atomically (temp file + ``os.replace``): an interrupted save leaves every file
whole, and edits.json, the record of the user's work, is never behind the csv files;
:func:`sync_metadata` rewrites derived files left behind by an interrupted save.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from engine import paths
from engine.errors import TimbreError
from engine.files import write_bytes_atomic
from engine.speech import transcribe
from engine.speech.audio import AudioError, load_audio

EDITS_FILE = "edits.json"
EDITS_VERSION = 1
CSV_HEADER = ("audio_file", "text", "speaker_name")
ORIGINS = ("whisper", "manual")


class DatasetEditError(TimbreError, ValueError):
    """A change that cannot be made: no dataset, no such clip, empty text, unreadable edits.json,
    a failed re-transcription. The message names the file."""


class DatasetBusyError(DatasetEditError):
    """Another process holds the dataset folder's lock (a prepare run or an edit)."""


# --- keys, edits.json, the lock -----------------------------------------------------------------


def clip_key(source_sha256: str, start: float, end: float) -> str:
    """The key of a clip in edits.json: ``"<recording sha256>:<start>:<end>"``, times in
    seconds with three decimals (as report.json rounds them)."""
    return f"{source_sha256}:{start:.3f}:{end:.3f}"


def load_edits(voice: str) -> dict[str, dict]:
    """The edits of ``datasets/<voice>/edits.json`` by clip key; {} when there is no file.

    Raises:
        engine.paths.InvalidNameError: bad voice name.
        DatasetEditError: the file exists but is not a readable edits file (it is never
            overwritten then: the message asks the user to fix or move it).
    """
    path = paths.dataset_dir(voice) / EDITS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != EDITS_VERSION or not isinstance(data.get("clips"), dict):
            raise ValueError(f"expected version {EDITS_VERSION} with a 'clips' object")
        return {str(k): dict(v) for k, v in data["clips"].items()}
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise DatasetEditError(
            f"{path}: cannot be read ({error}); fix or move the file, the edits in it are not applied"
        ) from error


def save_edits(voice: str, edits: dict[str, dict]) -> Path:
    """Write ``edits`` as ``datasets/<voice>/edits.json`` atomically; returns its path."""
    payload = {"version": EDITS_VERSION, "clips": dict(sorted(edits.items()))}
    text = json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
    return write_bytes_atomic(paths.dataset_dir(voice) / EDITS_FILE, text.encode("utf-8"))


@contextlib.contextmanager
def dataset_lock(out_dir: Path):
    """Hold an exclusive lock on ``out_dir/.lock`` while writing the dataset's files, so that a
    prepare run and an edit (or two of either) never interleave.

    ``fcntl.flock`` (released by the OS when the process ends, so never stale); where there
    is no fcntl (Windows) the lock is skipped. Raises DatasetBusyError when it is held.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise DatasetBusyError(f"{out_dir.name}: another dataset run is in progress") from error
        yield  # the lock goes with the file handle


# --- deriving the csv files ------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """A transcript as the csv files hold it: ``|`` (the column separator) and line breaks
    become spaces, runs of white space one space, no space at the ends."""
    return " ".join(str(text or "").replace("|", " ").split())


def apply_edits(
    per_clip: list[dict], edits: dict[str, dict], validation_fraction: float | None, seed: int
) -> list[dict]:
    """The clips with the edits applied and the train/validation split assigned.

    Args:
        per_clip: report.json's clips (each with ``key``, ``audio_file``, ``text`` and, once
            edited, ``whisper_text``); not changed.
        edits: :func:`load_edits`.
        validation_fraction, seed: as given to prepare (see :func:`assign_splits`); a
            fraction of None (a report from before prepare recorded it) keeps each clip's
            split as recorded (``recorded_split``), so that looking at an old dataset never
            reshuffles it.

    Returns:
        New dicts: Whisper's transcript in ``whisper_text``, the one to train on in ``text``,
        ``origin`` (``"whisper"``, ``"manual"``, or ``"retranscribed"``), ``excluded`` (bool),
        ``split`` (``"train"``, ``"validation"`` or ``"excluded"``) and, after a
        re-transcription, its details in ``retranscription``.
    """
    clips = []
    for old in per_clip:
        clip = {k: v for k, v in old.items() if k != "retranscription"}
        clip["whisper_text"] = old.get("whisper_text") or old.get("text", "")
        edit = edits.get(old.get("key", ""), {})
        clip["text"] = edit.get("text") or clip["whisper_text"]
        clip["origin"] = "whisper"
        if edit.get("text"):
            clip["origin"] = "retranscribed" if edit.get("origin") == "whisper" else "manual"
        if edit.get("whisper"):
            clip["retranscription"] = edit["whisper"]
        # A clip prepare left out by itself (``auto_excluded``: its text does not match its
        # audio) stays out until the user restores it or types its text.
        automatic = bool(old.get("auto_excluded")) and clip["origin"] != "manual"
        clip["excluded"] = bool(edit["excluded"]) if "excluded" in edit else automatic
        clips.append(clip)
    if validation_fraction is not None:
        assign_splits(clips, validation_fraction, seed)
        return clips
    for clip in clips:
        if clip.get("recorded_split") not in ("train", "validation"):
            clip["recorded_split"] = clip.get("split") if clip.get("split") == "validation" else "train"
        clip["split"] = "excluded" if clip["excluded"] else clip["recorded_split"]
    return clips


def assign_splits(clips: list[dict], validation_fraction: float, seed: int) -> None:
    """Set each clip's ``split`` in place: ``"excluded"`` for excluded clips, ``"validation"``
    for a seeded share of the others, ``"train"`` for the rest.

    Clips are ranked by ``sha256("<seed>:<key>")`` (``key``, else ``audio_file``). Of ``n``
    clips, excluded ones included, the ``min(n - 1, max(1, round(fraction * n)))`` lowest
    are the validation share (when ``n >= 2`` and ``fraction > 0``); those of them not
    excluded are for validation. So excluding or restoring a clip never moves another clip
    between train and validation: an excluded validation clip leaves a gap, it is not filled
    with a training clip. Only when that leaves no validation clip at all (and at least two
    clips are included) does the lowest-ranked training clip cross, so that validation loss
    can still be measured. A clip keeps its split when recordings are added, except the ones
    that cross when the size of the share changes.
    """
    included = [clip for clip in clips if not clip.get("excluded")]
    n_validation = 0
    if len(clips) >= 2 and validation_fraction > 0:
        n_validation = min(len(clips) - 1, max(1, round(validation_fraction * len(clips))))

    def rank(clip: dict) -> str:
        name = clip.get("key") or clip["audio_file"]
        return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()

    share = {id(clip) for clip in sorted(clips, key=rank)[:n_validation]}
    validation = {id(clip) for clip in included if id(clip) in share}
    if n_validation and not validation and len(included) >= 2:
        validation = {id(min(included, key=rank))}
    if len(validation) >= len(included):  # keep at least one clip to train on
        validation = {id(clip) for clip in sorted(included, key=rank)[: len(included) - 1]}
    for clip in clips:
        if clip.get("excluded"):
            clip["split"] = "excluded"
        else:
            clip["split"] = "validation" if id(clip) in validation else "train"


def summarise(per_clip: list[dict], edits: dict[str, dict]) -> dict:
    """Counts for report.json: ``clips`` (all, on disk), ``train``, ``validation``,
    ``excluded``, ``edited`` (clips whose text the user saved or had re-transcribed),
    ``unmatched_edits`` (edits whose clip no longer exists) and ``total_seconds`` (of the
    train and validation clips)."""
    keys = {clip.get("key") for clip in per_clip}
    return {
        "clips": len(per_clip),
        "train": sum(c["split"] == "train" for c in per_clip),
        "validation": sum(c["split"] == "validation" for c in per_clip),
        "excluded": sum(c["split"] == "excluded" for c in per_clip),
        "edited": sum(c.get("origin", "whisper") != "whisper" for c in per_clip),
        "unmatched_edits": sum(key not in keys for key in edits),
        "total_seconds": round(sum(c["duration"] for c in per_clip if c["split"] != "excluded"), 3),
    }


def metadata_files(report: dict) -> dict[str, bytes]:
    """The bytes of train.csv, validation.csv and report.json for a report whose ``per_clip``
    already has the edits applied (:func:`apply_edits`)."""
    files = {}
    for split in ("train", "validation"):
        rows = [c for c in report["per_clip"] if c["split"] == split]
        files[f"{split}.csv"] = _csv_bytes(rows, report["voice"])
    files["report.json"] = (json.dumps(report, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    return files


def write_metadata(out_dir: Path, report: dict) -> list[str]:
    """Write the files of :func:`metadata_files` into ``out_dir`` (csv files first, report.json
    last), each atomically, skipping those whose bytes are already right. Returns the names
    written. The caller holds :func:`dataset_lock`."""
    written = []
    for name, data in metadata_files(report).items():
        path = out_dir / name
        try:
            if path.read_bytes() == data:
                continue
        except OSError:
            pass
        write_bytes_atomic(path, data)
        written.append(name)
    return written


def _csv_bytes(rows: list[dict], voice: str) -> bytes:
    # No csv quoting: engine.training.data reads with quoting=csv.QUOTE_NONE, so a quoted
    # field ('"He said ""hi"""') would be trained on with its quotes doubled. Unquoted, a text
    # holding '"' reads back as typed there, and in coqui's "coqui" formatter (csv.DictReader)
    # too unless the text starts with '"'. clean_text keeps "|" and line breaks out.
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="|", lineterminator="\n", quoting=csv.QUOTE_NONE, quotechar=None)
    writer.writerow(CSV_HEADER)
    writer.writerows((row["audio_file"], clean_text(row["text"]), voice) for row in rows)
    return buffer.getvalue().encode("utf-8")


# --- reading and changing a dataset --------------------------------------------------------------


def read_report(voice: str) -> dict:
    """``datasets/<voice>/report.json`` with the edits applied to its ``per_clip`` (so it is
    current even if a save was interrupted before report.json was rewritten).

    Raises:
        engine.paths.InvalidNameError: bad voice name.
        DatasetEditError: no report.json (no dataset, or one not made by prepare), or it or
            edits.json cannot be read; the message names the file.
    """
    path = paths.dataset_dir(voice) / "report.json"
    if not path.is_file():
        raise DatasetEditError(f"{voice} has no prepared dataset ({path} is missing): transcribe its recordings first")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        per_clip = list(report["per_clip"])
        missing = [n for n, c in enumerate(per_clip) if not {"audio_file", "duration", "text"} <= c.keys()]
        if missing:
            raise KeyError(f"clip {missing[0]} lacks audio_file, duration or text")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetEditError(f"{path}: not a readable dataset report ({error}); transcribe again") from error
    _fill_keys(voice, per_clip)
    edits = load_edits(voice)
    fraction, seed = _split_settings(report)
    report["per_clip"] = apply_edits(per_clip, edits, fraction, seed)
    report.update(summarise(report["per_clip"], edits))
    return report


def list_clips(voice: str) -> list[dict]:
    """Every clip of the voice's dataset, excluded ones too, in report.json order (by
    recording, then time), edits applied (fields as :func:`apply_edits` returns them, plus
    ``path``, the wav's absolute path as text). Raises as :func:`read_report`."""
    folder = paths.dataset_dir(voice)
    return [{**clip, "path": str(folder / clip["audio_file"])} for clip in read_report(voice)["per_clip"]]


def edit_text(voice: str, audio_file: str, text: str) -> dict:
    """Train ``audio_file`` (``"wavs/<name>.wav"``) on ``text`` instead of Whisper's transcript.

    ``text`` is cleaned (:func:`clean_text`) and kept even when it equals Whisper's: saving
    is the user's check of the transcript (the quality report then drops Whisper's
    low-confidence flags); :func:`revert_text` goes back to Whisper's. Returns the clip as :func:`list_clips` lists it. Raises DatasetEditError for an unknown
    clip or a text with no letter or digit (exclude the clip instead), DatasetBusyError while
    prepare runs.
    """
    text = clean_text(text)
    if not any(ch.isalnum() for ch in text):
        raise DatasetEditError(f"{audio_file}: the transcript is empty; exclude the clip instead")

    def change(edit: dict, clip: dict) -> None:
        edit.pop("whisper", None)
        edit.update(text=text, origin="manual")

    return _change(voice, audio_file, change)


def revert_text(voice: str, audio_file: str) -> dict:
    """Train ``audio_file`` on Whisper's transcript from prepare again (drops a typed or
    re-transcribed text). Returns the clip; raises as :func:`edit_text`."""

    def change(edit: dict, clip: dict) -> None:
        for name in ("text", "origin", "whisper"):
            edit.pop(name, None)

    return _change(voice, audio_file, change)


def set_excluded(voice: str, audio_file: str, excluded: bool = True) -> dict:
    """Leave ``audio_file`` out of train.csv and validation.csv (``excluded=True``; its wav
    stays in ``wavs/``) or put it back (False). Returns the clip; raises as :func:`edit_text`."""

    def change(edit: dict, clip: dict) -> None:
        if excluded:
            edit["excluded"] = True
        elif clip.get("auto_excluded"):
            edit["excluded"] = False  # restored: overrides prepare's own exclusion
        else:
            edit.pop("excluded", None)

    return _change(voice, audio_file, change)


def retranscribe_clip(
    voice: str,
    audio_file: str,
    backend: str = "faster-whisper",
    whisper_model: str | None = None,
    language: str | None = "en",
    device: str = "auto",
) -> dict:
    """Transcribe the clip ``audio_file`` alone and train on that text from now on.

    Args:
        voice, audio_file: the clip (``"wavs/<name>.wav"``).
        backend, whisper_model, language, device: as for :func:`engine.speech.transcribe.transcribe`
            (None or ``"auto"`` language: detected).

    Returns:
        The clip as :func:`list_clips` lists it; ``retranscription`` holds the backend, model,
        language, ``avg_logprob`` (mean token log-probability, word-weighted over segments),
        ``words`` (``[text, probability]`` pairs) and ``seconds_taken``.

    Raises:
        engine.speech.transcribe.TranscriptionError: unknown backend.
        DatasetEditError: unknown clip, unreadable wav, a model that cannot be loaded, a failed
            transcription or one with no words (the clip's text is then unchanged).
        DatasetBusyError: while prepare runs.
    """
    language = None if language in (None, "", "auto") else language
    model = transcribe.resolve_model(backend, whisper_model)
    clip = _find_clip(read_report(voice)["per_clip"], audio_file)
    try:
        audio = load_audio(paths.dataset_dir(voice) / clip["audio_file"], transcribe.SAMPLE_RATE, min_seconds=0.1)
    except AudioError as error:
        raise DatasetEditError(f"{clip['audio_file']}: {error.reason}") from error
    try:
        transcribe.load_model(backend, model, device)
    except Exception as error:  # the backends raise many kinds
        raise DatasetEditError(
            f"cannot load the {backend} model {model!r} ({type(error).__name__}: {error})"
        ) from error
    started = time.perf_counter()
    try:
        segments = transcribe.transcribe(audio.numpy(), backend, model, language, device)
    except Exception as error:  # one bad clip: reported with the backend's own words
        raise DatasetEditError(f"{audio_file}: transcription failed ({type(error).__name__}: {error})") from error
    text = clean_text(" ".join(segment.text for segment in segments))
    if not any(ch.isalnum() for ch in text):
        raise DatasetEditError(f"{audio_file}: {backend} {Path(model).name} heard no words; the text is unchanged")
    words = [word for segment in segments for word in segment.words]
    weights = [max(1, len(segment.words)) for segment in segments]
    avg_logprob = sum(s.avg_logprob * w for s, w in zip(segments, weights, strict=True)) / sum(weights)
    whisper = {
        "backend": backend,
        "model": model,
        "language": language,
        "avg_logprob": round(avg_logprob, 4),
        "words": [[word.text.strip(), round(word.probability, 4)] for word in words],
        "seconds_taken": round(time.perf_counter() - started, 3),
    }

    def change(edit: dict, found: dict) -> None:
        edit.update(text=text, origin="whisper", whisper=whisper)

    return _change(voice, audio_file, change)


def sync_metadata(voice: str) -> list[str]:
    """Rewrite train.csv, validation.csv and report.json where they lag behind edits.json
    (a save interrupted after edits.json was written). Returns the names rewritten; [] when
    all are current, there is no prepared dataset, or prepare is running. Raises
    DatasetEditError for an unreadable report.json or edits.json."""
    out_dir = paths.dataset_dir(voice)
    if not (out_dir / "report.json").is_file():
        return []
    try:
        with dataset_lock(out_dir):
            return write_metadata(out_dir, read_report(voice))
    except DatasetBusyError:
        return []


def _change(voice: str, audio_file: str, change: Callable[[dict, dict], None]) -> dict:
    """Apply ``change(edit entry, clip)`` to the clip's entry in edits.json under the lock,
    save edits.json, then the derived files; returns the clip as :func:`list_clips` gives it."""
    out_dir = paths.dataset_dir(voice)
    with dataset_lock(out_dir):
        report = read_report(voice)
        clip = _find_clip(report["per_clip"], audio_file)
        edits = load_edits(voice)
        edit = dict(edits.get(clip["key"], {}))
        change(edit, clip)
        edit = {k: v for k, v in edit.items() if k not in ("audio_file", "source", "updated")}
        if edit:
            place = {"audio_file": clip["audio_file"], "source": clip.get("source", "")}
            edits[clip["key"]] = {**place, **edit, "updated": datetime.now(UTC).isoformat(timespec="seconds")}
        else:
            edits.pop(clip["key"], None)
        save_edits(voice, edits)
        fraction, seed = _split_settings(report)
        report["per_clip"] = apply_edits(report["per_clip"], edits, fraction, seed)
        report.update(summarise(report["per_clip"], edits))
        write_metadata(out_dir, report)
    changed = _find_clip(report["per_clip"], clip["audio_file"])
    return {**changed, "path": str(out_dir / changed["audio_file"])}


def _find_clip(per_clip: list[dict], audio_file: str) -> dict:
    for clip in per_clip:
        if clip["audio_file"] == audio_file:
            return clip
    raise DatasetEditError(f"no clip {audio_file!r} in the dataset")


def _split_settings(report: dict) -> tuple[float | None, int]:
    """The report's validation fraction (None in a report from before it was recorded) and seed."""
    fraction = report.get("validation_fraction")
    return None if fraction is None else float(fraction), int(report.get("seed") or 0)


def _fill_keys(voice: str, per_clip: list[dict]) -> None:
    """Give clips of a report written before clips had keys their key, from the recording's
    current hash (or its name, if it is gone)."""
    hashes: dict[str, str] = {}
    for clip in per_clip:
        if clip.get("key"):
            continue
        source = clip.get("source", "")
        if source not in hashes:
            path = paths.voice_dir(voice) / source
            hashes[source] = transcribe.file_sha256(path) if source and path.is_file() else f"file:{source}"
        clip["key"] = clip_key(hashes[source], clip.get("start", 0.0), clip.get("end", 0.0))
