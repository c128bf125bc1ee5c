"""engine.speech.transcribe: both Whisper backends on real speech, errors, the transcript cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.speech import transcribe
from engine.speech.audio import load_audio
from engine.speech.transcribe import Segment, TranscriptCache, TranscriptionError, Word


@pytest.fixture(scope="module")
def market_audio(speech_voice):
    """(16 kHz samples, spoken text) of one espeak-ng recording."""
    audio = load_audio(speech_voice.folder / "market.wav", transcribe.SAMPLE_RATE).numpy()
    return audio, speech_voice.texts["market.wav"]


def test_faster_whisper_recognises_speech_with_word_times(market_audio, faster_whisper_model_path, word_error_rate):
    audio, text = market_audio
    segments = transcribe.transcribe(audio, "faster-whisper", faster_whisper_model_path)
    assert segments and all(isinstance(s, Segment) for s in segments)
    hypothesis = " ".join(s.text for s in segments)
    assert word_error_rate(text, hypothesis) < 0.3, hypothesis
    duration = len(audio) / transcribe.SAMPLE_RATE
    words = [w for s in segments for w in s.words]
    assert len(words) >= 15 and all(isinstance(w, Word) for w in words)
    for segment in segments:
        assert 0.0 <= segment.start <= segment.end <= duration + 0.5
        assert segment.avg_logprob <= 0.0 and 0.0 <= segment.no_speech_prob <= 1.0
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert all(w.start <= w.end and 0.0 <= w.probability <= 1.0 for w in words)


def test_openai_whisper_loads_a_checkpoint_file_and_returns_segments(market_audio, tiny_openai_whisper_checkpoint):
    audio, _ = market_audio
    segments = transcribe.transcribe(
        audio, "openai-whisper", tiny_openai_whisper_checkpoint, language="en", device="cpu"
    )
    assert isinstance(segments, list)
    assert all(isinstance(s, Segment) for s in segments)  # random weights: the text is junk


def test_models_are_loaded_once_and_can_be_unloaded(tiny_openai_whisper_checkpoint):
    first = transcribe.load_model("openai-whisper", tiny_openai_whisper_checkpoint, "cpu")
    assert transcribe.load_model("openai-whisper", tiny_openai_whisper_checkpoint, "cpu") is first
    transcribe.unload_models()
    assert transcribe.load_model("openai-whisper", tiny_openai_whisper_checkpoint, "cpu") is not first


def test_bad_arguments_raise_transcription_error():
    with pytest.raises(TranscriptionError, match="unknown transcription backend 'whisperx'"):
        transcribe.transcribe(np.zeros(16_000, dtype=np.float32), backend="whisperx")
    with pytest.raises(TranscriptionError, match="1-D"):
        transcribe.transcribe(np.zeros((2, 16_000), dtype=np.float32))


def test_resolve_model_defaults_and_paths(tmp_path):
    assert transcribe.resolve_model("faster-whisper", None) == "small"
    assert transcribe.resolve_model("openai-whisper", "tiny.en") == "tiny.en"
    assert transcribe.resolve_model("openai-whisper", str(tmp_path)) == str(tmp_path.resolve())
    assert set(transcribe.BACKENDS) == {"faster-whisper", "openai-whisper"}


def test_transcript_cache_round_trip(tmp_path):
    path = tmp_path / "transcription.json"
    segments = [Segment(0.0, 1.5, " Hello there.", [Word(0.0, 0.6, " Hello", 0.9)], -0.2, 0.01)]
    cache = TranscriptCache(path)
    key = cache.key("abc", "faster-whisper", "tiny", None)
    assert key == "abc:faster-whisper:tiny:auto" and cache.get(key) is None
    cache.put(key, segments, file="a.wav", seconds_taken=0.5)
    assert TranscriptCache(path).get(key) == segments
    assert json.loads(path.read_text())["entries"][key]["file"] == "a.wav"

    cache.keep_only({"other"})
    cache.save()
    assert TranscriptCache(path).entries == {}

    path.write_text("{not json")
    assert TranscriptCache(path).entries == {}  # unreadable: transcribe again


def test_auto_device_falls_back_to_cpu_when_the_gpu_cannot_be_used(
    market_audio, faster_whisper_model_path, monkeypatch, word_error_rate
):
    """This machine has no usable CUDA: a reported GPU must not break transcription."""
    import ctranslate2

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    transcribe.unload_models()
    audio, text = market_audio
    try:
        segments = transcribe.transcribe(audio, "faster-whisper", faster_whisper_model_path, device="auto")
    finally:
        transcribe.unload_models()
    assert word_error_rate(text, " ".join(s.text for s in segments)) < 0.3


def test_runtime_falls_back_to_openai_whisper_on_the_gpu(monkeypatch):
    """When CTranslate2 sees a GPU but cannot use it (its CUDA 12 libraries missing), a model
    openai-whisper knows runs there on the GPU; a CTranslate2 folder goes to the CPU. Simulated:
    this machine has no GPU."""
    import ctranslate2
    import torch

    from engine.speech import transcribe

    def no_cuda_libraries(model, device):
        raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(transcribe, "_faster_whisper_model", no_cuda_libraries)
    transcribe.runtime.cache_clear()
    try:
        backend, device, why = transcribe.runtime("faster-whisper", "small")
        assert (backend, device) == ("openai-whisper", "cuda") and "libcublas.so.12" in why
        backend, device, why = transcribe.runtime("faster-whisper", "/models/my-ct2-folder")
        assert (backend, device) == ("faster-whisper", "cpu") and "cannot use the GPU" in why
        assert transcribe.runtime("openai-whisper", "small")[:2] == ("openai-whisper", "cuda")
        assert transcribe.runtime("faster-whisper", "small", "cpu")[:2] == ("faster-whisper", "cpu")
    finally:
        transcribe.runtime.cache_clear()


def test_runtime_without_a_gpu_is_the_cpu():
    from engine.speech import transcribe

    transcribe.runtime.cache_clear()
    assert transcribe.runtime("faster-whisper", "small")[:2] == ("faster-whisper", "cpu")
    assert transcribe.preload_cuda12_libraries() == []  # the nvidia-cublas-cu12 wheel is a GPU-machine install
