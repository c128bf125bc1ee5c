"""Decode, validate, downmix, resample, loudness-normalise and save speech audio.

Audio inside the engine is a 1-D ``torch.float32`` tensor of mono samples in [-1, 1] at a
sample rate the caller names (22 050 Hz for XTTS-v2 clips, 16 000 Hz for Whisper).

Decoding uses PyAV (``av``), which bundles its own FFmpeg, so every format in
:data:`SUPPORTED_EXTENSIONS` decodes with no system FFmpeg. ``torchaudio.load`` is not used:
from torch 2.9 it goes through torchcodec, which needs the system FFmpeg libraries. FFmpeg runs
in a separate decoder process (:mod:`engine.speech.audio_worker`), started here and reused, so a file
that crashes or hangs the decoder costs only that file, and a long recording is decoded in
chunks rather than whole.
"""

from __future__ import annotations

import atexit
import fnmatch
import hashlib
import io
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.errors import TimbreError
from engine.files import write_bytes_atomic

SUPPORTED_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a")

MIN_SECONDS = 0.5
"""Shortest recording :func:`load_audio` accepts, in seconds (shorter is not useful speech)."""

SILENCE_DBFS = -60.0
"""A recording whose peak is below this level (dBFS, 0 = full scale) is treated as silent."""


class AudioError(TimbreError, ValueError):
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


# --- decoding in a worker process -------------------------------------------------------------

TIMEOUT_ENV = "TIMBRE_DECODE_TIMEOUT"
"""Environment variable: seconds one decode may take, overriding :func:`decode_timeout`."""

FAULT_ENV = "TIMBRE_DECODE_FAULT"
"""Environment variable, a test hook: ``crash:PATTERN`` or ``hang:PATTERN`` makes the decoder
process abort, or hang, on files whose name matches the shell pattern (``fnmatch``, e.g.
``crash:broken*.wav``; no pattern means every file). It is read at each :func:`load_audio`
call and passed to the worker, so a test can set it with ``monkeypatch.setenv``; unset, it
costs one dictionary lookup."""

TIMEOUT_BASE = 60.0
"""Seconds every decode is allowed on top of its length-scaled part (process start, opening,
a slow disk, a busy machine)."""

TIMEOUT_PER_SECOND = 0.1
"""Seconds of decoding time allowed per second of audio: the decoder must reach 10× real time.
Measured on a shared 2-core machine (decode + downmix + resample to 22 050 Hz, 44.1 kHz stereo
sources): WAV about 1 470×, AAC 930×, FLAC 770×, MP3 415×, Opus 400× real time
(docs/benchmarks.md), so a slow machine under load has a margin of about 40×."""

UNKNOWN_BYTES_PER_SECOND = 1000
"""When the container states no duration, :func:`decode_timeout` assumes this many bytes of file
per second of audio (8 kbit/s, below any usual speech codec's bit rate), so the estimate is long."""

PROBE_TIMEOUT = 30.0
"""Seconds :func:`audio_duration` waits for the container's metadata."""

MAX_IDLE_WORKERS = 2
"""Decoder processes kept running between calls (each holds about 60 MB); more start when
several threads decode at once, and those beyond this number exit after their file."""

_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the engine package


class _DecoderFailed(Exception):
    """The worker died or ran out of time; ``reason`` is the AudioError reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Worker:
    """One ``python -m engine.speech.audio_worker`` process, used by one caller at a time.

    Replies are read by a thread into a queue, so waiting has a timeout on every platform
    (``select`` on pipes is POSIX only); another thread keeps the tail of its stderr, which a
    crash report quotes.
    """

    def __init__(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "engine.speech.audio_worker"]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env,
        )
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.stderr_tail = ""
        threading.Thread(target=self._read_replies, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_replies(self) -> None:
        with self.process.stdout:  # each reader closes its own pipe at the end
            for line in self.process.stdout:
                self.replies.put(line)
        self.replies.put(None)  # end of output: the process has ended

    def _read_stderr(self) -> None:
        with self.process.stderr:
            for line in self.process.stderr:
                self.stderr_tail = (self.stderr_tail + line)[-2000:]

    def send(self, request: dict) -> None:
        """Write one request line; raises _DecoderFailed when the process is gone."""
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as error:
            raise _DecoderFailed(self._crash_reason()) from error

    def receive(self, deadline: float, limit: float) -> dict:
        """The next reply; raises _DecoderFailed (and kills the process) at ``deadline``
        (``time.monotonic()``) or when the process has died."""
        try:
            line = self.replies.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            self.kill()
            raise _DecoderFailed(f"decoding timed out after {round(limit, 1):g} s") from None
        if line is None:
            raise _DecoderFailed(self._crash_reason())
        try:
            return json.loads(line)
        except ValueError:
            self.kill()
            raise _DecoderFailed(f"decoder crashed (unexpected output {line.strip()[:80]!r})") from None

    def _crash_reason(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "decoder crashed (it stopped answering)"
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        lines = self.stderr_tail.strip().splitlines()
        return f"decoder crashed ({how}{': ' + lines[-1] if lines else ''})"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """End the process now and reap it."""
        self.process.kill()
        self.process.wait()
        self._close_stdin()

    def close(self) -> None:
        """Ask the process to exit (end of its input); kill it if it has not within a second."""
        self._close_stdin()
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_stdin(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:  # a broken pipe while flushing: the process is gone already
            pass


class _WorkerPool:
    """Idle decoder processes kept for the next call. A process forked from this one (a
    DataLoader worker, say) must not share their pipes, so the pool belongs to the process id
    that filled it and a child starts its own."""

    def __init__(self):
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []
        self.owner = os.getpid()
        self.exit_hook = False

    def take(self) -> _Worker:
        if self.owner != os.getpid():  # a forked child: a new lock too (fork may copy it held)
            self.lock, self.idle, self.owner = threading.Lock(), [], os.getpid()
        with self.lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.alive():
                    return worker
            if not self.exit_hook:
                atexit.register(close_decoders)
                self.exit_hook = True
        return _Worker()

    def give_back(self, worker: _Worker) -> None:
        with self.lock:
            if self.owner == os.getpid() and worker.alive() and len(self.idle) < MAX_IDLE_WORKERS:
                self.idle.append(worker)
                return
        worker.close()

    def close_all(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for worker in idle:
            worker.close()


_POOL = _WorkerPool()


def close_decoders() -> None:
    """Stop the idle decoder processes (they also exit by themselves when this process ends).
    The next :func:`load_audio` starts a new one."""
    _POOL.close_all()


def decode_timeout(duration: float | None, size_bytes: int = 0) -> float:
    """Seconds allowed to decode a recording: ``TIMEOUT_BASE + TIMEOUT_PER_SECOND * duration``.

    Args:
        duration: the recording's length in seconds (:func:`audio_duration`), or None when
            unknown; then it is estimated as ``size_bytes / UNKNOWN_BYTES_PER_SECOND``.
        size_bytes: the file's size, used only when ``duration`` is None.

    Returns:
        The limit in seconds; the environment variable ``TIMBRE_DECODE_TIMEOUT`` (seconds)
        replaces it when set.

    Raises:
        ValueError: ``TIMBRE_DECODE_TIMEOUT`` is set but is not a positive number.
    """
    override = os.environ.get(TIMEOUT_ENV, "").strip()
    if override:
        try:
            seconds = float(override)
        except ValueError:
            seconds = -1.0
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {override!r}")
        return seconds
    if duration is None:
        duration = size_bytes / UNKNOWN_BYTES_PER_SECOND
    return TIMEOUT_BASE + TIMEOUT_PER_SECOND * duration


def _fault_for(path: Path) -> str | None:
    """What :data:`FAULT_ENV` asks the worker to do with ``path`` (None: decode normally)."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    kind, _, pattern = spec.partition(":")
    if kind not in ("crash", "hang"):
        raise ValueError(f"{FAULT_ENV} must be crash[:PATTERN] or hang[:PATTERN], got {spec!r}")
    return kind if fnmatch.fnmatch(path.name, pattern or "*") else None


def audio_duration(path: str | os.PathLike) -> float | None:
    """Length of a recording in seconds as its container states it, without decoding it.

    Read in the decoder process (as :func:`load_audio` decodes), within
    :data:`PROBE_TIMEOUT` seconds. For formats that store no length (raw MP3 without a Xing
    header) FFmpeg estimates it from the bit rate, so treat it as an estimate for progress and
    time limits; :func:`load_audio` gives the exact length.

    Returns:
        Seconds (float ≥ 0), or None when the file is missing, cannot be opened, has no audio
        stream, states no length, or the probe crashed or timed out.
    """
    path = Path(path)
    if not path.is_file():
        return None
    worker = _POOL.take()
    try:
        worker.send({"op": "probe", "path": str(path)})
        reply = worker.receive(time.monotonic() + PROBE_TIMEOUT, PROBE_TIMEOUT)
    except _DecoderFailed:
        worker.kill()
        return None
    _POOL.give_back(worker)
    return reply.get("duration")


def _run_decoder(path: Path, sample_rate: int, out: str, progress) -> dict:
    """Have a worker decode ``path`` into ``out``; returns its final reply (``ok`` or ``error``)."""
    fault = _fault_for(path)
    started = time.monotonic()
    fixed = bool(os.environ.get(TIMEOUT_ENV, "").strip())
    limit = decode_timeout(None, path.stat().st_size)  # until the container has stated its length
    worker = _POOL.take()
    try:
        worker.send({"op": "decode", "path": str(path), "rate": int(sample_rate), "out": out, "fault": fault})
        while True:
            reply = worker.receive(started + limit, limit)
            if "opened" in reply:
                if not fixed and reply.get("duration") is not None:
                    limit = decode_timeout(reply["duration"])
            elif "decoded" in reply:
                if progress is not None:
                    progress(reply["decoded"])
            else:
                break
    except _DecoderFailed as failure:
        worker.kill()
        raise AudioError(path, failure.reason) from None
    except BaseException:  # e.g. KeyboardInterrupt or an error in progress(): the worker is mid-file
        worker.kill()
        raise
    _POOL.give_back(worker)
    return reply


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    min_seconds: float = MIN_SECONDS,
    silence_dbfs: float = SILENCE_DBFS,
    *,
    progress: Callable[[float], object] | None = None,
) -> torch.Tensor:
    """Decode a recording to mono float32 at ``sample_rate`` Hz and check it is usable speech.

    FFmpeg runs in a separate process (:mod:`engine.speech.audio_worker`), which streams the file and
    writes the result to a temporary raw file this process reads. A decoder that crashes or
    hangs therefore costs only this file, and memory stays bounded: the worker holds a frame or
    two, this process only the result (4 bytes per output sample: 2 hours at 22 050 Hz is
    635 MB). The worker is killed after :func:`decode_timeout` seconds.

    Args:
        path: a file in any format FFmpeg reads (:data:`SUPPORTED_EXTENSIONS` are the ones the
            app lists); the extension is not checked here.
        sample_rate: output sample rate in Hz.
        min_seconds: reject recordings shorter than this (default :data:`MIN_SECONDS`).
        silence_dbfs: reject recordings whose peak is below this level in dBFS (default
            :data:`SILENCE_DBFS`).
        progress: called about twice a second with the seconds of the recording decoded so
            far, and once at the end with its whole length.

    Returns:
        A 1-D ``torch.float32`` tensor of ``round(duration * sample_rate)`` samples in [-1, 1].
        Channels are downmixed by their mean. Resampling is FFmpeg's swresample with its
        defaults (windowed sinc, Kaiser window, 32 taps per phase, cutoff at 0.97 of the lower
        Nyquist frequency), run as one stream over the whole file, so chunk edges leave no
        seam. Samples outside [-1, 1] (float files) are clipped.

    Raises:
        AudioError: the file is missing, empty, not decodable audio, has non-finite samples,
            is shorter than ``min_seconds``, or is silent; or the decoder crashed ("decoder
            crashed (…)") or ran out of time ("decoding timed out after N s"). The message
            names the file.
        ValueError: ``TIMBRE_DECODE_TIMEOUT`` or ``TIMBRE_DECODE_FAULT`` is set to something invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    fd, out = tempfile.mkstemp(prefix="timbre-decode-", suffix=".f32")
    os.close(fd)
    try:
        result = _run_decoder(path, sample_rate, out, progress)
        if "error" in result:
            raise AudioError(path, result["error"])
        if result["source_samples"] == 0:
            raise AudioError(path, "contains no audio samples")
        seconds = result["source_samples"] / result["source_rate"]
        if seconds < min_seconds:
            raise AudioError(path, f"too short ({seconds:.2f} s, need at least {min_seconds:g} s)")
        level = dbfs(result["peak"])
        if level < silence_dbfs:
            raise AudioError(path, f"silent (peak {level:.1f} dBFS, below {silence_dbfs:g} dBFS)")
        samples = np.fromfile(out, dtype="<f4", count=result["samples"])
    finally:
        Path(out).unlink(missing_ok=True)
    if samples.size != result["samples"]:
        raise AudioError(path, f"decoder crashed (wrote {samples.size} of {result['samples']} samples)")
    return torch.from_numpy(samples.astype(np.float32, copy=False))


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
    """Write mono 16-bit PCM WAV atomically (:func:`engine.files.write_bytes_atomic`).

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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks: the identity of a recording or clip
    (transcript cache, feature cache, conditioning-latent cache). Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
