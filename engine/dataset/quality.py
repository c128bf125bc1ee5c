"""What is worth a listen in a dataset: clip lengths, clipping, loudness, silence at the edges,
and the words Whisper was unsure of.

Prepare measures each clip once (:func:`clip_audio_stats`, :func:`word_confidence`) and keeps
the figures in report.json's ``per_clip``; :func:`quality_report` reads them (measuring clips
of an older report from their wav), flags clips against the thresholds below and counts
clip lengths for a histogram. Nothing here changes a file.
"""

from __future__ import annotations

import math
import statistics

import torch

from engine.dataset import edit as dataset_edit
from engine.dataset.clips import MAX_CLIP_SECONDS
from engine.speech.audio import AudioError, load_audio, rms_dbfs
from engine.speech.transcribe import Segment

CLIPPING_LEVEL = 0.99
"""A sample at or above this share of full scale (-0.09 dBFS) counts as clipped."""

CLIPPING_FLAG_SHARE = 0.001
"""A clip is flagged when more than this share of its samples (0.1 %, 22 per second at
22 050 Hz) are clipped: more than a stray peak, enough to hear as distortion."""

SILENCE_BELOW_RMS_DB = 30.0
"""A 10 ms frame is silent when its RMS level is this many dB below the clip's (a relative
threshold, so the gain of the recording does not matter; on a clip normalised to -20 dBFS it
is -50 dBFS, pydub's default ``silence_thresh``)."""

EDGE_SILENCE_SECONDS = 0.5
"""A clip is flagged when it starts or ends with more silence than this, in seconds (prepare
keeps at most 0.2 s of the pause, so more means Whisper's word times were off)."""

LOUDNESS_OUTLIER_DB = 6.0
"""A clip is flagged when its RMS level is further than this, in dB, from the median clip's."""

LOW_AVG_LOGPROB = -1.0
"""A clip is flagged when Whisper's mean token log-probability is below this: Whisper's own
``logprob_threshold`` for a failed decode (``whisper.transcribe``)."""

LOW_WORD_PROBABILITY = 0.5
"""Words Whisper gave a lower probability than this are listed as unsure."""

MISMATCH_CER = 0.25
"""A clip is flagged "text does not match audio" when the character error rate between its
text and an independent re-transcription of its audio is above this (prepare also leaves such
a clip out of training until the user restores it: ``engine.dataset.checks.MISMATCH_CER``)."""

SPEAKER_SIMILARITY = 0.75
"""A clip is flagged "different speaker?" when prepare found it an outlier
(``engine.speech.speaker.speaker_outliers``: similarity of its speaker embedding to the median of the
voice's other clips below this, and well below the voice's usual similarity); for a report
that records no verdict, when the similarity alone is below this. The value of
``engine.speech.speaker.SAME_SPEAKER_THRESHOLD``, where the measurements behind it are (the same
espeak-ng voice scores 0.79 or more from 1.25 s clips up, another voice at most 0.67)."""

HISTOGRAM_BIN_SECONDS = 1.0
"""Width of a bin of the clip-length histogram, in seconds."""

_FRAME_SECONDS = 0.01


def clip_audio_stats(samples: torch.Tensor, sample_rate: int, raw: torch.Tensor | None = None) -> dict:
    """Clipping and edge-silence figures of one clip.

    Args:
        samples: the clip as saved, 1-D in [-1, 1].
        sample_rate: of ``samples``, in Hz.
        raw: the same stretch before loudness normalisation, where clipping is visible
            (normalisation scales clipped peaks below full scale); default ``samples``.

    Returns:
        ``{"clipping": share 0-1 of ``raw`` samples at or above CLIPPING_LEVEL,
        "leading_silence": seconds, "trailing_silence": seconds}``; silence is measured in
        10 ms frames (:data:`SILENCE_BELOW_RMS_DB`), the whole clip when it is all silent.
    """
    raw = samples if raw is None else raw
    clipping = float((raw.abs() >= CLIPPING_LEVEL).double().mean()) if raw.numel() else 0.0
    frame = max(1, round(sample_rate * _FRAME_SECONDS))
    count = samples.numel() // frame
    duration = samples.numel() / sample_rate
    level = rms_dbfs(samples)
    if count == 0 or not math.isfinite(level):
        return {
            "clipping": round(clipping, 5),
            "leading_silence": round(duration, 3),
            "trailing_silence": round(duration, 3),
        }
    power = samples[: count * frame].double().reshape(count, frame).pow(2).mean(dim=1)
    voiced = torch.nonzero(power > 10 ** ((level - SILENCE_BELOW_RMS_DB) / 10)).flatten()
    if voiced.numel() == 0:
        leading = trailing = duration
    else:
        leading = int(voiced[0]) * frame / sample_rate
        trailing = (samples.numel() - (int(voiced[-1]) + 1) * frame) / sample_rate
    return {
        "clipping": round(clipping, 5),
        "leading_silence": round(leading, 3),
        "trailing_silence": round(trailing, 3),
    }


def word_confidence(segments: list[Segment], start: float, end: float) -> dict:
    """Whisper's word probabilities within ``[start, end]`` seconds of a recording (a word
    belongs to the clip holding its midpoint).

    Returns ``{"min_word_probability": lowest probability 0-1, or None without words,
    "low_words": [word text, …] below LOW_WORD_PROBABILITY, in order]}``.
    """
    words = [word for segment in segments for word in segment.words if start <= (word.start + word.end) / 2 <= end]
    return {
        "min_word_probability": round(min(w.probability for w in words), 4) if words else None,
        "low_words": [w.text.strip() for w in words if w.probability < LOW_WORD_PROBABILITY],
    }


def quality_report(voice: str) -> dict:
    """Flag the clips of ``datasets/<voice>/`` worth a listen, and summarise the dataset.

    Returns a dict:

    * ``voice``; ``clips``, ``included``, ``excluded`` (counts); ``flagged`` (included clips
      with a flag); ``thresholds`` (the constants of this module by name);
    * ``durations``: ``edges`` (seconds, bins of HISTOGRAM_BIN_SECONDS from 0 to at least
      MAX_CLIP_SECONDS), ``counts`` (included clips per bin), ``min``, ``median``, ``max``, ``total`` (seconds; None without clips);
    * ``median_rms_dbfs`` of the included clips (None without clips);
    * ``per_clip``: one dict per clip in table order: ``audio_file``, ``split``, ``text``,
      ``origin`` (as :func:`engine.dataset.edit.apply_edits`), ``duration``,
      ``rms_dbfs``, ``clipping`` (share 0-1), ``leading_silence``, ``trailing_silence``
      (seconds), ``avg_logprob``, ``low_words`` and ``flags``, short texts such as
      ``"clipping 0.4%"``, ``"quiet -8 dB"``, ``"silence at start 0.9 s"``,
      ``"low confidence -1.21"``, ``"unsure: quay, bazaar"``, ``"text does not match audio
      (CER 0.47)"``, ``"different speaker? (similarity 0.61)"``; also ``cer``,
      ``verified_text``, ``auto_excluded`` and ``speaker_similarity`` from prepare;
    * ``categories``: ``{"clipping" | "loudness" | "edge silence" | "low confidence" |
      "text mismatch" | "speaker": [audio_file, …]}``.

    Whisper's flags are left out for a clip whose text was typed (the user has checked it);
    after a re-transcription they come from that transcription.

    Raises:
        engine.paths.InvalidNameError: bad voice name.
        engine.dataset.edit.DatasetEditError: no prepared dataset, or an unreadable
            report.json or edits.json.
    """
    clips = dataset_edit.list_clips(voice)
    rows = [_measure(clip) for clip in clips]
    included = [row for row in rows if row["split"] != "excluded"]
    levels = [row["rms_dbfs"] for row in included if row["rms_dbfs"] is not None]
    median_rms = statistics.median(levels) if levels else None
    categories: dict[str, list[str]] = {
        "clipping": [], "loudness": [], "edge silence": [], "low confidence": [], "text mismatch": [], "speaker": [],
    }  # fmt: skip
    for row in rows:
        row["flags"] = _flags(row, median_rms, categories)
    durations = [row["duration"] for row in included]
    top = max([*durations, MAX_CLIP_SECONDS])  # the same axis for every dataset
    bins = math.ceil(top / HISTOGRAM_BIN_SECONDS)
    edges = [round(i * HISTOGRAM_BIN_SECONDS, 3) for i in range(bins + 1)]
    counts = [0] * bins
    for seconds in durations:
        counts[min(bins - 1, int(seconds // HISTOGRAM_BIN_SECONDS))] += 1
    return {
        "voice": voice,
        "clips": len(rows),
        "included": len(included),
        "excluded": len(rows) - len(included),
        "flagged": sum(bool(row["flags"]) for row in included),
        "thresholds": {
            "clipping_level": CLIPPING_LEVEL,
            "clipping_flag_share": CLIPPING_FLAG_SHARE,
            "silence_below_rms_db": SILENCE_BELOW_RMS_DB,
            "edge_silence_seconds": EDGE_SILENCE_SECONDS,
            "loudness_outlier_db": LOUDNESS_OUTLIER_DB,
            "low_avg_logprob": LOW_AVG_LOGPROB,
            "low_word_probability": LOW_WORD_PROBABILITY,
            "mismatch_cer": MISMATCH_CER,
            "speaker_similarity": SPEAKER_SIMILARITY,
        },
        "durations": {
            "edges": edges,
            "counts": counts,
            "min": min(durations) if durations else None,
            "median": round(statistics.median(durations), 3) if durations else None,
            "max": max(durations) if durations else None,
            "total": round(sum(durations), 3),
        },
        "median_rms_dbfs": None if median_rms is None else round(median_rms, 2),
        "per_clip": rows,
        "categories": categories,
    }


def _measure(clip: dict) -> dict:
    """The figures of one clip: from report.json, else measured in its wav."""
    row = {
        "audio_file": clip["audio_file"],
        "split": clip["split"],
        "text": clip["text"],
        "origin": clip.get("origin", "whisper"),
        "duration": clip["duration"],
        "rms_dbfs": clip.get("rms_dbfs"),
        "clipping": clip.get("clipping"),
        "leading_silence": clip.get("leading_silence"),
        "trailing_silence": clip.get("trailing_silence"),
        "avg_logprob": clip.get("avg_logprob"),
        "low_words": list(clip.get("low_words") or []),
        "cer": clip.get("cer"),
        "verified_text": clip.get("verified_text"),
        "auto_excluded": clip.get("auto_excluded"),
        "speaker_similarity": clip.get("speaker_similarity"),
        "different_speaker": clip.get("different_speaker"),
    }
    if None in (row["rms_dbfs"], row["clipping"], row["leading_silence"], row["trailing_silence"]):
        try:
            rate = 22_050  # the clips' rate (engine.dataset.prepare.SAMPLE_RATE, which imports this module)
            samples = load_audio(clip["path"], rate, min_seconds=0.0, silence_dbfs=-math.inf)
            stats = clip_audio_stats(samples, rate)
            level = rms_dbfs(samples)
            stats["rms_dbfs"] = round(max(level, -120.0), 2)
            row.update({k: v for k, v in stats.items() if row.get(k) is None})
        except AudioError:
            pass  # a missing or broken wav: its figures stay unknown
    again = clip.get("retranscription")
    if again:
        row["avg_logprob"] = again.get("avg_logprob")
        row["low_words"] = [text for text, probability in again.get("words", []) if probability < LOW_WORD_PROBABILITY]
    return row


def _flags(row: dict, median_rms: float | None, categories: dict[str, list[str]]) -> list[str]:
    flags = []

    def flag(category: str, text: str) -> None:
        flags.append(text)
        if row["audio_file"] not in categories[category]:
            categories[category].append(row["audio_file"])

    if (row["clipping"] or 0.0) > CLIPPING_FLAG_SHARE:
        flag("clipping", f"clipping {row['clipping']:.1%}")
    if median_rms is not None and row["rms_dbfs"] is not None:
        difference = row["rms_dbfs"] - median_rms
        if abs(difference) > LOUDNESS_OUTLIER_DB:
            flag("loudness", f"{'quiet' if difference < 0 else 'loud'} {difference:+.0f} dB")
    for edge, name in (("start", "leading_silence"), ("end", "trailing_silence")):
        if (row[name] or 0.0) > EDGE_SILENCE_SECONDS:
            flag("edge silence", f"silence at {edge} {row[name]:.1f} s")
    if row["origin"] == "whisper" and row["cer"] is not None and row["cer"] > MISMATCH_CER:
        flag("text mismatch", f"text does not match audio (CER {row['cer']:.2f})")
    similarity, outlier = row["speaker_similarity"], row["different_speaker"]
    if outlier or (outlier is None and similarity is not None and similarity < SPEAKER_SIMILARITY):
        flag("speaker", f"different speaker? (similarity {row['speaker_similarity']:.2f})")
    if row["origin"] != "manual":
        if row["avg_logprob"] is not None and row["avg_logprob"] < LOW_AVG_LOGPROB:
            flag("low confidence", f"low confidence {row['avg_logprob']:.2f}")
        if row["low_words"]:
            flag(
                "low confidence",
                "unsure: " + ", ".join(row["low_words"][:4]) + (" …" if len(row["low_words"]) > 4 else ""),
            )
    return flags
