"""Decode, validate, downmix, resample, loudness-normalise and save speech audio.

Audio inside the engine is a 1-D ``torch.float32`` tensor of mono samples in [-1, 1] at a
sample rate the caller names (22 050 Hz for XTTS-v2 clips, 16 000 Hz for Whisper).

Decoding uses PyAV (``av``), which bundles its own FFmpeg, so every format in
:data:`SUPPORTED_EXTENSIONS` decodes with no system FFmpeg. ``torchaudio.load`` is not used:
from torch 2.9 it goes through torchcodec, which needs the system FFmpeg libraries.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import wave
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio.functional as AF

SUPPORTED_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a")

MIN_SECONDS = 0.5
"""Shortest recording :func:`load_audio` accepts, in seconds (shorter is not useful speech)."""

SILENCE_DBFS = -60.0
"""A recording whose peak is below this level (dBFS, 0 = full scale) is treated as silent."""


class AudioError(ValueError):
    """A file that cannot be used as speech audio; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


def dbfs(amplitude: float) -> float:
    """An amplitude (1.0 = full scale) in dBFS, ``20 * log10(amplitude)``; -inf for 0."""
    return 20.0 * math.log10(amplitude) if amplitude > 0 else -math.inf


def rms_dbfs(audio: torch.Tensor) -> float:
    """Root-mean-square level of ``audio`` (1-D, [-1, 1]) in dBFS; -inf for silence or no samples."""
    if audio.numel() == 0:
        return -math.inf
    return dbfs(float(torch.sqrt(torch.mean(audio.double() ** 2))))


def peak(audio: torch.Tensor) -> float:
    """Largest absolute sample of ``audio`` (1.0 = full scale); 0.0 when it has no samples."""
    return float(audio.abs().max()) if audio.numel() else 0.0


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of ``path`` to float32 ``(channels, samples)`` and its rate."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "has no audio stream")
            stream = container.streams.audio[0]
            # Convert every frame to planar float at the stream's own layout and rate; the
            # downmix and resampling are done afterwards, where their behaviour is documented.
            resampler = av.AudioResampler(format="fltp")
            chunks: list[np.ndarray] = []
            rate = 0
            for frame in container.decode(stream):
                rate = frame.sample_rate or rate
                for converted in resampler.resample(frame):
                    chunks.append(converted.to_ndarray())
            for converted in resampler.resample(None):
                chunks.append(converted.to_ndarray())
    except AudioError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        detail = getattr(error, "strerror", None) or str(error)  # FFmpeg's words, no path
        raise AudioError(path, f"cannot be decoded as audio ({detail})") from error
    if not chunks or rate <= 0:
        raise AudioError(path, "contains no audio samples")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    min_seconds: float = MIN_SECONDS,
    silence_dbfs: float = SILENCE_DBFS,
) -> torch.Tensor:
    """Decode a recording to mono float32 at ``sample_rate`` Hz and check it is usable speech.

    Args:
        path: a file in any format FFmpeg reads (:data:`SUPPORTED_EXTENSIONS` are the ones the
            app lists); the extension is not checked here.
        sample_rate: output sample rate in Hz.
        min_seconds: reject recordings shorter than this (default :data:`MIN_SECONDS`).
        silence_dbfs: reject recordings whose peak is below this level in dBFS (default
            :data:`SILENCE_DBFS`).

    Returns:
        A 1-D ``torch.float32`` tensor of ``round(duration * sample_rate)`` samples in [-1, 1].
        Channels are downmixed by their mean; resampling is ``torchaudio.functional.resample``
        (windowed sinc, its defaults). Samples outside [-1, 1] (float files) are clipped.

    Raises:
        AudioError: the file is missing, empty, not decodable audio, has non-finite samples,
            is shorter than ``min_seconds``, or is silent. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    samples, source_rate = _decode(path)
    if samples.shape[1] == 0:
        raise AudioError(path, "contains no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(path, "contains non-finite samples (NaN or infinity)")
    seconds = samples.shape[1] / source_rate
    if seconds < min_seconds:
        raise AudioError(path, f"too short ({seconds:.2f} s, need at least {min_seconds:g} s)")
    audio = torch.from_numpy(samples).mean(dim=0)
    if source_rate != sample_rate:
        audio = AF.resample(audio, source_rate, sample_rate)
    audio = audio.clamp(-1.0, 1.0).contiguous()
    level = dbfs(peak(audio))
    if level < silence_dbfs:
        raise AudioError(path, f"silent (peak {level:.1f} dBFS, below {silence_dbfs:g} dBFS)")
    return audio


def loudness_normalise(audio: torch.Tensor, target_dbfs: float = -20.0, peak_dbfs: float = -1.0) -> torch.Tensor:
    """Scale ``audio`` so its RMS level is ``target_dbfs``, without letting its peak pass ``peak_dbfs``.

    One gain for the whole signal: ``10 ** ((target_dbfs - rms_dbfs) / 20)``, lowered when it
    would lift the peak above ``peak_dbfs`` (so nothing clips; the result is then quieter than
    the target). RMS, not perceptual loudness (LUFS): for one speaker's speech the two agree to
    within a few dB, and RMS needs no filter. -20 dBFS RMS is a common level for read-speech
    corpora (LJSpeech averages about -22 dBFS); -1 dBFS peak is the usual headroom.

    Args:
        audio: 1-D float tensor in [-1, 1] (any sample rate).
        target_dbfs: wanted RMS level in dBFS.
        peak_dbfs: highest allowed peak in dBFS.

    Returns:
        A new tensor of the same shape and dtype; silence (RMS of 0) is returned unchanged.
    """
    level = rms_dbfs(audio)
    if not math.isfinite(level):
        return audio.clone()
    gain = 10.0 ** ((target_dbfs - level) / 20.0)
    top = peak(audio)
    limit = 10.0 ** (peak_dbfs / 20.0)
    if top * gain > limit:
        gain = limit / top
    return audio * gain


def save_wav(path: str | os.PathLike, audio: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write mono 16-bit PCM WAV atomically (see :func:`write_bytes_atomic`).

    Args:
        path: destination; parent folders are created.
        audio: 1-D float samples in [-1, 1] (torch tensor or numpy array); values outside
            are clipped, then scaled by 32767 and rounded.
        sample_rate: sample rate in Hz written in the header.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``audio`` is not 1-D.
    """
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"save_wav expects 1-D mono audio, got shape {tuple(audio.shape)}")
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(int(sample_rate))
        writer.writeframes(pcm.tobytes())
    return write_bytes_atomic(path, buffer.getvalue())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part.

    The bytes go to a temp file in the same folder (same file system), which is made ``0644``
    and renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows). Parent folders
    are created. No fsync: this protects against a crashed or killed process, not power loss.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks: the identity of a recording or clip
    (transcript cache, feature cache, conditioning-latent cache). Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
