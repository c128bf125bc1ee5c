"""engine.speech.audio: decoding every supported format in a worker process (crash, hang, stereo, length),
validation errors, loudness, WAV writing."""

from __future__ import annotations

import math
import time
import wave

import numpy as np
import pytest
import torch

from engine.speech import audio
from engine.speech.audio import (
    SUPPORTED_EXTENSIONS,
    AudioError,
    audio_duration,
    load_audio,
    loudness_normalise,
    peak,
    rms_dbfs,
    save_wav,
)


def _write_pcm(path, samples: np.ndarray, sample_rate: int) -> None:
    """Write int16 PCM of shape (samples,) or (samples, channels) with the wave module."""
    samples = samples.reshape(len(samples), -1)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(samples.shape[1])
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(np.round(samples * 32767).astype("<i2").tobytes())


def _sine(seconds: float, sample_rate: int, amplitude: float = 0.5, hz: float = 440.0):
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("name", ["market.wav", "morning.flac", "piano.mp3", "river.wav"])
def test_load_audio_decodes_each_recording_to_mono_float(speech_voice, name):
    audio = load_audio(speech_voice.folder / name, 22_050)
    assert audio.dtype == torch.float32 and audio.ndim == 1
    assert 5.0 < audio.numel() / 22_050 < 12.0
    assert audio.abs().max() <= 1.0
    assert rms_dbfs(audio) > -40.0  # speech, not silence


def test_load_audio_resamples_to_the_requested_rate(speech_voice):
    at_22k = load_audio(speech_voice.folder / "market.wav", 22_050)
    at_16k = load_audio(speech_voice.folder / "market.wav", 16_000)
    assert abs(at_16k.numel() - at_22k.numel() * 16_000 / 22_050) <= 1


def test_load_audio_downmixes_by_channel_mean(tmp_path):
    left = _sine(1.0, 16_000, amplitude=0.8)
    _write_pcm(tmp_path / "stereo.wav", np.stack([left, np.zeros_like(left)], axis=1), 16_000)
    audio = load_audio(tmp_path / "stereo.wav", 16_000)
    np.testing.assert_allclose(audio.numpy(), left / 2, atol=2 / 32767)


@pytest.mark.parametrize("suffix", [".m4a", ".ogg"])
def test_load_audio_reads_other_containers(tmp_path, speech_voice, suffix):
    import av

    codec = {".m4a": "aac", ".ogg": "libopus"}[suffix]
    path = tmp_path / f"tone{suffix}"
    rate = 48_000
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(_sine(2.0, rate)[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    audio = load_audio(path, 16_000)
    assert abs(audio.numel() / 16_000 - 2.0) < 0.1
    assert ".m4a" in SUPPORTED_EXTENSIONS and ".ogg" in SUPPORTED_EXTENSIONS


def test_unusable_files_raise_audio_error_naming_file_and_reason(tmp_path, speech_voice):
    (tmp_path / "empty.wav").write_bytes(b"")
    _write_pcm(tmp_path / "short.wav", _sine(0.2, 16_000), 16_000)
    _write_pcm(tmp_path / "silent.wav", np.zeros(16_000, dtype=np.float32), 16_000)
    cases = {
        tmp_path / "missing.wav": "not found",
        tmp_path / "empty.wav": "empty",
        speech_voice.folder / "notes.wav": "cannot be decoded",
        tmp_path / "short.wav": "too short",
        tmp_path / "silent.wav": "silent",
    }
    for path, reason in cases.items():
        with pytest.raises(AudioError) as caught:
            load_audio(path, 16_000)
        assert path.name in str(caught.value) and reason in str(caught.value)
        assert caught.value.path == path and reason in caught.value.reason
        assert isinstance(caught.value, ValueError)


def test_loudness_normalise_reaches_target_rms_without_clipping():
    quiet = torch.from_numpy(_sine(1.0, 16_000, amplitude=0.01))
    assert rms_dbfs(loudness_normalise(quiet, -20.0)) == pytest.approx(-20.0, abs=0.01)

    spiky = torch.zeros(16_000)
    spiky[::1000] = 0.05  # a high crest factor: -20 dBFS RMS would need a peak above 1.0
    out = loudness_normalise(spiky, -20.0, peak_dbfs=-1.0)
    assert peak(out) == pytest.approx(10 ** (-1 / 20), rel=1e-4)
    assert rms_dbfs(out) < -20.0

    silence = torch.zeros(100)
    assert torch.equal(loudness_normalise(silence), silence)


def test_save_wav_writes_16_bit_mono_atomically(tmp_path):
    audio = torch.from_numpy(_sine(0.5, 22_050, amplitude=0.9))
    audio[0], audio[1] = 1.5, -1.5  # clipped, not wrapped
    path = tmp_path / "sub" / "clip.wav"
    save_wav(path, audio, 22_050)
    save_wav(path, audio, 22_050)  # replacing an existing file
    with wave.open(str(path), "rb") as reader:
        assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2)
        assert reader.getframerate() == 22_050 and reader.getnframes() == audio.numel()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    assert pcm[0] == 32767 and pcm[1] == -32767
    np.testing.assert_allclose(pcm[2:] / 32767, audio.numpy()[2:], atol=1 / 32767)
    assert [p.name for p in path.parent.iterdir()] == ["clip.wav"]  # no temp files left
    with pytest.raises(ValueError, match="1-D"):
        save_wav(tmp_path / "stereo.wav", torch.zeros(2, 10), 22_050)


def test_level_helpers():
    assert rms_dbfs(torch.ones(10)) == pytest.approx(0.0)
    assert rms_dbfs(torch.zeros(10)) == -math.inf and rms_dbfs(torch.zeros(0)) == -math.inf
    assert peak(torch.tensor([0.1, -0.7])) == pytest.approx(0.7)


# --- the decoder process ------------------------------------------------------------------------


def _decoder_processes() -> list:
    """This test process's running ``engine.speech.audio_worker`` children."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "engine.speech.audio_worker" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def test_stereo_44k_decodes_to_the_mean_of_its_channels_at_the_requested_rate(tmp_path):
    source_rate, rate, seconds = 44_100, 22_050, 3.0
    t = np.arange(round(seconds * source_rate)) / source_rate
    left, right = 0.6 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t + 1.0)
    _write_pcm(tmp_path / "stereo44.wav", np.stack([left, right], axis=1), source_rate)

    decoded = load_audio(tmp_path / "stereo44.wav", rate).numpy()

    assert decoded.dtype == np.float32 and decoded.shape == (round(seconds * rate),)
    # The reference: the mean of the two channels, sampled directly at the output rate (both
    # tones are far below the output's Nyquist frequency, so resampling must preserve them).
    out_t = np.arange(decoded.size) / rate
    reference = (0.6 * np.sin(2 * np.pi * 440 * out_t) + 0.3 * np.sin(2 * np.pi * 1000 * out_t + 1.0)) / 2
    inner = slice(rate // 10, -rate // 10)  # the filter's edge transients left out
    np.testing.assert_allclose(decoded[inner], reference[inner], atol=2e-3)
    assert np.sqrt(np.mean((decoded[inner] - reference[inner]) ** 2)) < 5e-4


def test_progress_reports_seconds_decoded_ending_with_the_whole_length(tmp_path):
    _write_pcm(tmp_path / "tone.wav", _sine(2.5, 16_000), 16_000)
    seen: list[float] = []
    load_audio(tmp_path / "tone.wav", 22_050, progress=seen.append)
    assert seen and seen[-1] == pytest.approx(2.5) and seen == sorted(seen)


def test_audio_duration_reads_the_container_without_decoding(tmp_path, speech_voice):
    _write_pcm(tmp_path / "tone.wav", _sine(3.25, 44_100), 44_100)
    assert audio_duration(tmp_path / "tone.wav") == pytest.approx(3.25, abs=1e-3)
    assert audio_duration(speech_voice.folder / "morning.flac") == pytest.approx(
        load_audio(speech_voice.folder / "morning.flac", 16_000).numel() / 16_000, abs=0.05
    )
    assert audio_duration(tmp_path / "missing.wav") is None
    assert audio_duration(speech_voice.folder / "notes.wav") is None


def test_decode_timeout_scales_with_duration_and_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv(audio.TIMEOUT_ENV, raising=False)
    assert audio.decode_timeout(0.0) == audio.TIMEOUT_BASE
    two_hours = audio.decode_timeout(7200.0)
    assert two_hours == pytest.approx(audio.TIMEOUT_BASE + 7200 * audio.TIMEOUT_PER_SECOND)
    assert audio.decode_timeout(None, size_bytes=10_000_000) > two_hours  # unknown length: generous
    monkeypatch.setenv(audio.TIMEOUT_ENV, "2.5")
    assert audio.decode_timeout(7200.0) == 2.5
    monkeypatch.setenv(audio.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=audio.TIMEOUT_ENV):
        audio.decode_timeout(1.0)


def test_a_crashing_decoder_costs_only_its_file(tmp_path, monkeypatch):
    _write_pcm(tmp_path / "good.wav", _sine(1.0, 16_000), 16_000)
    _write_pcm(tmp_path / "broken.wav", _sine(1.0, 16_000), 16_000)
    monkeypatch.setenv(audio.FAULT_ENV, "crash:broken*.wav")

    with pytest.raises(AudioError, match="decoder crashed") as caught:
        load_audio(tmp_path / "broken.wav", 16_000)
    assert caught.value.path == tmp_path / "broken.wav"
    assert caught.value.reason.startswith("decoder crashed (")
    # This process and the next file go on; a new decoder replaces the dead one.
    assert load_audio(tmp_path / "good.wav", 16_000).numel() == 16_000
    assert not list(tmp_path.glob("*.f32"))


def test_a_hanging_decoder_times_out_and_is_killed(tmp_path, monkeypatch):
    _write_pcm(tmp_path / "stuck.wav", _sine(1.0, 16_000), 16_000)
    audio.close_decoders()
    monkeypatch.setenv(audio.FAULT_ENV, "hang:stuck.wav")
    monkeypatch.setenv(audio.TIMEOUT_ENV, "1.5")

    started = time.monotonic()
    with pytest.raises(AudioError, match=r"decoding timed out after 1\.5 s"):
        load_audio(tmp_path / "stuck.wav", 16_000)
    assert time.monotonic() - started < 30
    assert _decoder_processes() == []  # the hung worker was killed and reaped

    monkeypatch.delenv(audio.FAULT_ENV)
    assert load_audio(tmp_path / "stuck.wav", 16_000).numel() == 16_000


def test_an_invalid_fault_spec_is_refused(tmp_path, monkeypatch):
    _write_pcm(tmp_path / "tone.wav", _sine(1.0, 16_000), 16_000)
    monkeypatch.setenv(audio.FAULT_ENV, "explode")
    with pytest.raises(ValueError, match=audio.FAULT_ENV):
        load_audio(tmp_path / "tone.wav", 16_000)
