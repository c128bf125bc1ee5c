"""The checks prepare makes on a voice's clips once they are cut and transcribed twice: text
against audio (CER), silence and Whisper's silence phrases, another speaker, the language of
the voice, and how much of the detected speech ended up in a clip.

Pure functions over :class:`engine.dataset.records.ClipRecord` lists and plain data; the
Whisper passes and the speaker embeddings themselves are made by :mod:`engine.dataset.prepare`.
"""

from __future__ import annotations

import statistics

import numpy as np

from engine.dataset import edit as dataset_edit
from engine.dataset import quality as dataset_quality
from engine.dataset.clips import PlannedClip
from engine.dataset.records import ClipRecord
from engine.speech import scoring
from engine.speech.audio import rms_dbfs
from engine.speech.transcribe import gaps

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
"""Texts Whisper writes for silence or noise (normalised by :func:`engine.speech.scoring.normalise`
with the basic normaliser): the "you" and "Thank you for watching" of YouTube subtitles, the
credit lines of subtitle communities. Found in Whisper's issue tracker and in the Seed-TTS and
WhisperX hallucination lists; a clip whose whole text is one of these is not kept."""

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


def check_text(record: ClipRecord, heard: str) -> None:
    """Record the re-transcription and its CER; leave the clip out of training when the two
    disagree by more than :data:`MISMATCH_CER`."""
    record.verified_text = dataset_edit.clean_text(heard)
    record.cer = round(scoring.character_error_rate(record.text, heard, record.language), 4)
    if record.cer > MISMATCH_CER:
        record.auto_excluded = f"text does not match audio (CER {record.cer:.2f})"


def drop_hallucinations(planned: list[PlannedClip]) -> tuple[list[PlannedClip], list[dict]]:
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


def speech_levels(audio, speech: list, sample_rate: int) -> list[float]:
    """RMS level (dBFS) of each speech region (``[(start, end)]`` seconds) of ``audio``
    (1-D, ``sample_rate`` Hz)."""
    levels = []
    for start, end in speech:
        level = rms_dbfs(audio[round(start * sample_rate) : round(end * sample_rate)])
        if level > -120.0:
            levels.append(level)
    return levels


def drop_silent(clips: list[ClipRecord], speech_levels: list[float]) -> tuple[list[ClipRecord], list[dict]]:
    """Split off the clips more than :data:`SILENCE_BELOW_MEDIAN_DB` below the voice's median
    level: returns the rest and a ``dropped`` entry (file, start, end, text, reason) for each
    (the caller removes their wavs). The voice's level is the median of ``speech_levels``
    (RMS of the speech regions the VAD found, speech by definition, so a handful of silent
    clips cannot drag it down), else of the clips."""
    levels = speech_levels or [clip.rms_dbfs for clip in clips if clip.rms_dbfs is not None]
    if not levels:
        return clips, []
    median = statistics.median(levels)
    kept, dropped = [], []
    for clip in clips:
        if clip.rms_dbfs is not None and clip.rms_dbfs < median - SILENCE_BELOW_MEDIAN_DB:
            reason = f"silence: RMS {clip.rms_dbfs:.0f} dBFS, {median - clip.rms_dbfs:.0f} dB below the voice's median"
            dropped.append(
                {"file": clip.source, "start": clip.start, "end": clip.end, "text": clip.text, "reason": reason}
            )
        else:
            kept.append(clip)
    return kept, dropped


def check_speakers(clips: list[ClipRecord], embeddings: dict) -> dict:
    """Set each clip's ``speaker_similarity`` (to the median embedding of the voice's *other*
    clips, :func:`engine.speech.speaker.speaker_similarities`) and ``different_speaker``
    (:func:`engine.speech.speaker.speaker_outliers`: below the measured threshold and well below the
    voice's usual similarity); returns report.json's ``speaker``."""
    try:
        from engine.speech import speaker
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


def majority_language(languages: dict[str, str], speech: dict[str, list]) -> str | None:
    """The language with the most seconds of detected speech (ties: alphabetical)."""
    seconds: dict[str, float] = {}
    for name, code in languages.items():
        seconds[code] = seconds.get(code, 0.0) + sum(end - start for start, end in speech.get(name, []))
    return min(seconds, key=lambda code: (-seconds[code], code)) if seconds else None


def coverage(speech: dict[str, list], clips: list[ClipRecord], dropped: list[dict]) -> dict:
    """How much of the detected speech is in a clip, and where the rest went."""
    total = covered = 0.0
    uncovered = []
    for name, regions in speech.items():
        spans = sorted((c.start, c.end) for c in clips if c.source == name)
        for start, end in regions:
            total += end - start
            inside = sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans)
            covered += inside
            for a, b in gaps(start, end, spans):
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
