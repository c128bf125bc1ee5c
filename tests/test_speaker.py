"""engine.speech.speaker: Resemblyzer embeddings of real (espeak-ng) speech, the voice's reference, outliers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.speech import speaker
from engine.speech.audio import load_audio

SENTENCES = [
    "Today is a beautiful day and we went to the market to buy some fruit.",
    "The train leaves early in the morning, so please bring a warm coat.",
    "Music helps me relax after a long day at work.",
    "The weather was cold and windy all week long.",
    "Children played in the park near the river until dinner.",
    "My brother likes to read books in the evening by the fire.",
]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def voices(espeak_wav, tmp_path_factory) -> dict[str, list[torch.Tensor]]:
    """16 kHz audio of the sentences in two espeak-ng voices: ``en-us`` (the voice) and
    ``en-us+f3`` (another voice: a female variant, measured at 0.57–0.65 against ``en-us``)."""
    folder = tmp_path_factory.mktemp("speaker")
    return {
        voice: [
            load_audio(espeak_wav(text, folder / f"{voice}-{i}.wav", voice=voice), speaker.SAMPLE_RATE)
            for i, text in enumerate(SENTENCES)
        ]
        for voice in ("en-us", "en-us+f3")
    }


@pytest.fixture(scope="module")
def embeddings(voices) -> dict[str, np.ndarray]:
    return {voice: speaker.embed_many(clips) for voice, clips in voices.items()}


def test_embed_gives_a_unit_256_vector_for_numpy_or_torch(voices):
    clip = voices["en-us"][0]
    from_torch = speaker.embed(clip)
    from_numpy = speaker.embed(clip.numpy())
    assert from_torch.shape == (speaker.EMBEDDING_SIZE,) and from_torch.dtype == np.float32
    assert np.linalg.norm(from_torch) == pytest.approx(1.0, abs=1e-5)
    assert (from_torch >= 0).all()
    np.testing.assert_allclose(from_torch, from_numpy, atol=1e-6)
    # The level is set before embedding: a quieter copy of the clip embeds the same.
    assert speaker.cosine(speaker.embed(clip * 0.1), from_torch) > 0.999


def test_same_voice_clips_are_close_and_another_voice_is_not(embeddings):
    voice, other = embeddings["en-us"], embeddings["en-us+f3"]
    assert voice.shape == (len(SENTENCES), speaker.EMBEDDING_SIZE)
    pairs = [speaker.cosine(voice[i], voice[j]) for i in range(len(voice)) for j in range(i + 1, len(voice))]
    assert min(pairs) > speaker.SAME_SPEAKER_THRESHOLD, pairs

    own = speaker.speaker_similarities(voice)  # each clip against the median of the others
    assert own.min() > 0.85, own
    against = speaker.speaker_similarities(other, speaker.reference_embedding(voice))
    assert against.max() < speaker.SAME_SPEAKER_THRESHOLD, against


def test_a_different_voice_mixed_into_a_voice_is_flagged(embeddings):
    voice, other = embeddings["en-us"], embeddings["en-us+f3"]
    assert speaker.speaker_outliers(voice) == []
    mixed = np.vstack([voice[:3], other[:1], voice[3:]])
    assert speaker.speaker_outliers(mixed) == [3]
    similarity = speaker.speaker_similarities(mixed)
    assert int(np.argmin(similarity)) == 3


def test_too_short_silent_or_malformed_audio_raises(voices):
    clip = voices["en-us"][0]
    short = clip[: round(0.8 * speaker.SAMPLE_RATE)]
    with pytest.raises(ValueError, match=r"too short .* need at least 1\.25 s"):
        speaker.embed(short)
    with pytest.raises(speaker.SpeakerError, match="silent"):
        speaker.embed(torch.zeros(3 * speaker.SAMPLE_RATE))
    with pytest.raises(speaker.SpeakerError, match="1-D"):
        speaker.embed(torch.zeros(2, speaker.SAMPLE_RATE))
    with pytest.raises(speaker.SpeakerError, match="utterance 1: .*too short"):
        speaker.embed_many([clip, short])
    assert speaker.embed_many([]).shape == (0, speaker.EMBEDDING_SIZE)


def test_reference_is_the_normalised_element_wise_median():
    rng = np.random.default_rng(0)
    rows = np.abs(rng.standard_normal((5, speaker.EMBEDDING_SIZE))).astype(np.float32)
    reference = speaker.reference_embedding(rows)
    median = np.median(rows, axis=0)
    np.testing.assert_allclose(reference, median / np.linalg.norm(median), rtol=1e-6)
    # Leave-one-out similarities: each row against the median of the other four.
    expected = [speaker.cosine(rows[i], np.median(np.delete(rows, i, 0), 0)) for i in range(5)]
    np.testing.assert_allclose(speaker.speaker_similarities(rows), expected, rtol=1e-6)
    assert speaker.cosine([1, 0], [0, 2]) == 0.0 and speaker.cosine([1, 1], [2, 2]) == pytest.approx(1.0)
    with pytest.raises(speaker.SpeakerError):
        speaker.reference_embedding(np.zeros((0, speaker.EMBEDDING_SIZE)))


def test_a_voice_whose_clips_all_score_low_is_not_flagged_wholesale():
    # 24 clips that share a direction but are each far from it (similarities of 0.5-0.7, as a
    # noisy recording might give). Without the MAD rule every one of them would be flagged.
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(speaker.EMBEDDING_SIZE)
    rows = shared + 1.2 * rng.standard_normal((24, speaker.EMBEDDING_SIZE))
    similarity = speaker.speaker_similarities(rows)
    assert similarity.max() < speaker.SAME_SPEAKER_THRESHOLD  # every clip is below the absolute bound ...
    assert speaker.speaker_outliers(rows) == []  # ... but none stands out from the others
    assert speaker.speaker_outliers(rows[:2]) == []  # too few clips to have a majority


def test_encoder_is_cached_until_unloaded():
    first = speaker.load_encoder()
    assert speaker.load_encoder() is first
    speaker.unload()
    assert speaker.load_encoder() is not first


def test_importing_and_loading_raise_no_deprecation_warning():
    # scipy.ndimage.morphology warns under scipy 1.17; the module silences that one warning only.
    code = "from engine.speech import speaker; speaker.load_encoder()"
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
