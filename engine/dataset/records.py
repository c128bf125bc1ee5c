"""The records of a prepared dataset: one :class:`ClipRecord` per clip and the
:class:`DatasetReport` that is ``datasets/<voice>/report.json``.

:func:`engine.dataset.prepare.prepare_dataset` makes them; :mod:`engine.dataset.edit` and
:mod:`engine.dataset.quality` read report.json as plain dicts (``to_dict``/``from_dict`` are
the boundary).

The readers of a prepared dataset live here too, below everything that uses them (the
scorer's voice reference among them): :func:`load_clips` (the csv rows) and
:func:`voice_settings` (``prepare.json``, the transcription settings last used).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields

from engine import paths


@dataclass
class ClipRecord:
    """One clip of report.json's ``per_clip``. Times and durations in seconds.

    Made by prepare: ``audio_file`` (``"wavs/<stem>_NNNNN.wav"``), ``key``
    (:func:`engine.dataset.edit.clip_key`), ``source`` (recording file name),
    ``source_sha256``, ``start``/``end`` in the recording, ``duration``, ``text`` (trained on),
    ``language`` (Whisper code of the recording), ``peak`` (0–1), ``peak_dbfs``,
    ``rms_dbfs``, ``clipping`` (share of samples near full scale before normalisation),
    ``leading_silence``/``trailing_silence``, Whisper's ``avg_logprob``,
    ``min_word_probability`` and ``low_words`` (:mod:`engine.dataset.quality`);
    ``verified_text`` (the clip re-transcribed on its own) and ``cer`` (character error rate
    of ``text`` against it, :func:`engine.speech.scoring.character_error_rate`); ``auto_excluded``
    (the reason prepare left the clip out of training, e.g. "text does not match audio
    (CER 0.47)", or None); ``speaker_similarity`` (cosine of the clip's speaker embedding to
    the median one of the voice's other clips, None when unmeasured) and ``different_speaker``
    (:func:`engine.speech.speaker.speaker_outliers` flagged it).

    Set by :func:`engine.dataset.edit.apply_edits`: ``split`` (``"train"``,
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
        (``path``, added by :func:`engine.dataset.edit.list_clips`, for one)."""
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
    and ``unmatched_edits`` the edits whose clip is gone (:func:`engine.dataset.edit.summarise`).
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
