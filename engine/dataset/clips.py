"""Where to cut a transcribed recording into training clips.

A sentence ends at a word ending in ``. ! ?``. Sentences are merged into one clip until it
reaches :data:`TARGET_CLIP_SECONDS`, never past :data:`MAX_CLIP_SECONDS`; a longer sentence is
split between words at its longest inner pause. Each cut lies in the pause between two words,
at its quietest 10 ms, with at most :data:`PAD_SECONDS` of the pause kept on either side, so no
word is cut. Where the voice activity detector (VAD) found silence between two words, that
silence is the pause: Whisper's word times can be a tenth of a second off, Silero VAD's
regions are measured on the audio itself. (Coqui's ``xtts_ft_demo`` formatter cuts each
sentence with a 0.2 s buffer at the pause midpoint.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from engine.speech.transcribe import Segment, Word, gaps

MIN_CLIP_SECONDS = 0.5
"""Shortest clip kept, in seconds: a short utterance such as "Hello world" (0.5–1 s) is still
a clean example of the voice (:data:`engine.speech.audio.MIN_SECONDS` is the same floor for a whole
recording)."""

MAX_CLIP_SECONDS = 11.5
"""Longest clip, in seconds: XTTS-v2's GPT trainer drops audio longer than
``max_wav_length`` = 255 995 samples, 11.6 s at 22 050 Hz (coqui ``GPTArgs``)."""

TARGET_CLIP_SECONDS = 8.0
"""A clip takes no more sentences once it is this long, in seconds (LJSpeech, the usual
single-speaker reference, has clips of 1–10 s)."""

PAD_SECONDS = 0.2
"""Pause kept before the first and after the last word of a clip, in seconds, when the
pause is that long: Whisper's word times can be a tenth of a second off (0.2 s as in coqui's demo)."""

MAX_PAUSE_SECONDS = 2.0
"""Sentences further apart than this, in seconds, are never merged into one clip."""

_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’»)\]]*$")
_PHRASE_END = re.compile(r"[,;:—–][\"'”’»)\]]*$")


@dataclass(frozen=True)
class PlannedClip:
    """A stretch of a recording to save as one clip. Times in seconds."""

    start: float
    end: float
    text: str
    avg_logprob: float


@dataclass(frozen=True)
class _Span:
    """A word (or a whole segment Whisper gave no words for): never cut inside."""

    start: float
    end: float
    text: str
    logprob: float
    rank: int  # 2: ends a sentence; 1: ends a phrase or a segment; 0: neither


def plan_clips(
    segments: list[Segment],
    audio: torch.Tensor,
    sample_rate: int,
    min_seconds: float = MIN_CLIP_SECONDS,
    max_seconds: float = MAX_CLIP_SECONDS,
    speech: list[tuple[float, float]] | None = None,
) -> tuple[list[PlannedClip], list[dict]]:
    """Decide where to cut one recording into clips (rules in the module docstring).

    Args:
        segments: Whisper output for the recording (times in seconds).
        audio: the recording, 1-D; gives its length and the quietest cut points.
        sample_rate: of ``audio``, in Hz.
        min_seconds, max_seconds: clip length bounds, in seconds.
        speech: the recording's speech regions from the VAD (``[(start, end), …]`` seconds,
            :func:`engine.speech.transcribe.detect_speech`); the silences between them are the pauses
            where cuts go. None: pauses come from the word times alone.

    Returns:
        ``(clips, dropped)``: clips in time order, each within the bounds with text that
        holds a letter or digit; ``dropped`` has ``{"start", "end", "text", "reason"}`` per
        stretch of speech that made no clip (too short, no usable text, no speech).
    """
    duration = audio.numel() / sample_rate
    spans, dropped = _spans(segments, duration)
    silences = gaps(0.0, duration, sorted(speech)) if speech is not None else []
    pauses = [_pause(spans[k], spans[k + 1], silences) for k in range(len(spans) - 1)]

    def length(i: int, j: int) -> float:  # seconds of spans[i:j] with padding
        return spans[j - 1].end - spans[i].start + 2 * PAD_SECONDS

    sentences, begin = [], 0
    for i, span in enumerate(spans):
        if span.rank == 2 or i == len(spans) - 1:
            sentences += _split_long(spans, pauses, begin, i + 1, max_seconds, min_seconds, length)
            begin = i + 1

    groups: list[list[int]] = []  # [first span, end span) per clip
    for i, j in sentences:
        fits = bool(groups) and (
            length(groups[-1][0], j) <= max_seconds and spans[i].start - spans[i - 1].end <= MAX_PAUSE_SECONDS
        )
        short = length(*groups[-1]) < TARGET_CLIP_SECONDS if groups else False
        if fits and (short or length(i, j) < min_seconds):
            groups[-1][1] = j  # merge: the clip is still short, or the sentence is
        else:
            groups.append([i, j])

    clips = []
    for i, j in groups:
        start, end = spans[i].start - PAD_SECONDS, spans[j - 1].end + PAD_SECONDS
        if i > 0:  # the clip starts at the quiet point or PAD before the speech, whichever is later
            low, high = pauses[i - 1]
            onset = min(spans[i].start, high)  # the VAD's speech onset when Whisper's word time is late
            start = max(_quiet_point(low, high, audio, sample_rate), onset - PAD_SECONDS)
        if j < len(spans):
            low, high = pauses[j - 1]
            offset = max(spans[j - 1].end, low)
            end = min(_quiet_point(low, high, audio, sample_rate), offset + PAD_SECONDS)
        start, end = max(0.0, start), min(duration, end)
        text = " ".join("".join(span.text for span in spans[i:j]).split())
        if not any(ch.isalnum() for ch in text):
            reason = "no usable text in the transcript"
        elif end - start < min_seconds:
            reason = f"shorter than {min_seconds:g} s ({end - start:.2f} s)"
        elif end - start > max_seconds:
            reason = f"one word longer than {max_seconds:g} s (bad timestamps?)"
        else:
            logprob = sum(span.logprob for span in spans[i:j]) / (j - i)
            clips.append(PlannedClip(start, end, text, logprob))
            continue
        dropped.append({"start": round(start, 3), "end": round(end, 3), "text": text,
                        "reason": reason})  # fmt: skip
    return clips, dropped


def _spans(segments, duration: float) -> tuple[list[_Span], list[dict]]:
    """The words of the speech segments in time order, clamped to the audio."""
    spans: list[_Span] = []
    dropped = []
    for segment in segments:
        # Whisper's own test for silence (transcribe(): no_speech_threshold=0.6,
        # logprob_threshold=-1.0).
        if segment.no_speech_prob > 0.6 and segment.avg_logprob < -1.0:
            dropped.append({"start": segment.start, "end": segment.end,
                            "text": segment.text.strip(), "reason": "no speech"})  # fmt: skip
            continue
        words = segment.words or [Word(segment.start, segment.end, segment.text, 0.0)]
        for index, word in enumerate(words):
            start = min(max(word.start, spans[-1].end if spans else 0.0), duration)
            end = min(max(word.end, start), duration)
            stripped = word.text.strip()
            rank = 2 if _SENTENCE_END.search(stripped) else 0
            if not rank and (_PHRASE_END.search(stripped) or index == len(words) - 1):
                rank = 1
            spans.append(_Span(start, end, word.text, segment.avg_logprob, rank))
    return spans, dropped


def _pause(before: _Span, after: _Span, silences: list[tuple[float, float]]) -> tuple[float, float]:
    """The pause between two words, ``(start, end)`` in seconds: the longest VAD silence
    lying between the middles of the two words (so a word time that is a little off does not
    hide it), else the gap between the word times (empty when they touch)."""
    low, high = (before.start + before.end) / 2, (after.start + after.end) / 2
    best = (before.end, max(before.end, after.start))
    for start, end in silences:
        inside = (max(start, low), min(end, high))
        if inside[1] - inside[0] > best[1] - best[0]:
            best = inside
    return best


def _split_long(spans, pauses, i, j, max_seconds, min_seconds, length) -> list[tuple[int, int]]:
    """Split ``spans[i:j]`` between words until each part fits ``max_seconds``: at the
    longest pause among the cuts that leave both parts ≥ ``min_seconds``, then at a phrase
    end, then nearest the middle. Returns ``[(first, end), …]`` span ranges."""
    if j - i < 2 or length(i, j) <= max_seconds:
        return [(i, j)]
    middle = (spans[i].start + spans[j - 1].end) / 2

    def score(k: int) -> tuple:  # cut after spans[k]
        both_long = min(length(i, k + 1), length(k + 1, j)) >= min_seconds
        pause = round(pauses[k][1] - pauses[k][0], 2)  # 10 ms: equal pauses tie
        return (both_long, pause, spans[k].rank, -abs(spans[k].end - middle))

    k = max(range(i, j - 1), key=score)
    return _split_long(spans, pauses, i, k + 1, max_seconds, min_seconds, length) + _split_long(
        spans, pauses, k + 1, j, max_seconds, min_seconds, length
    )


def _quiet_point(after: float, before: float, audio: torch.Tensor, sample_rate: int) -> float:
    """The centre of the quietest 10 ms frame between two words (times in seconds)."""
    low, high = min(after, before), max(after, before)
    frame = max(1, sample_rate // 100)
    first, last = int(low * sample_rate), int(high * sample_rate)
    if last - first < 2 * frame:
        return (low + high) / 2
    frames = audio[first : first + (last - first) // frame * frame].reshape(-1, frame)
    quietest = int(frames.pow(2).mean(dim=1).argmin())
    return (first + quietest * frame + frame / 2) / sample_rate
