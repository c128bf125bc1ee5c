"""The decoder process behind :func:`engine.speech.audio.load_audio`: FFmpeg runs here, not in the app.

A crash inside FFmpeg (a corrupt or hostile file) or a decoder that never returns would take
the web server down with it, and decoding a whole long recording into memory at once peaked at
7.8 GB for 50 minutes of 44.1 kHz stereo. So :mod:`engine.speech.audio` starts this module as its own
process (``python -m engine.speech.audio_worker``), with a timeout, and this process streams the file
frame by frame: each decoded frame is converted to float, downmixed by the mean of its channels,
resampled by FFmpeg's swresample (one streaming resampler for the whole file) and appended to a
raw float32 file that the parent reads. Only a frame or two is ever held here.

It imports only PyAV and numpy (no torch), so it starts in about 0.1 s, and it stays up to
serve one request after another: one JSON object per line on stdin, answered by JSON lines on
stdout (stdout carries nothing else).

Requests:
    ``{"op": "probe", "path": P}`` → ``{"duration": seconds or null}``
    ``{"op": "decode", "path": P, "rate": HZ, "out": FILE, "fault": SPEC or null}`` →
    ``{"opened": true, "duration": seconds or null}`` first, then ``{"decoded": seconds}``
    now and then and once at the end, then ``{"ok": true, "source_rate": HZ, "source_samples": N, "samples": M,
    "peak": amplitude}`` or ``{"error": reason}``. ``FILE`` then holds ``M`` little-endian
    float32 mono samples in [-1, 1] at ``rate`` Hz, ``M = round(N * rate / source_rate)``.

``fault`` is a test hook, documented in :data:`engine.speech.audio.FAULT_ENV`: ``"crash"`` aborts this
process and ``"hang"`` sleeps forever, both after the file has been opened, so tests can check
how the parent copes with a decoder that dies or never returns.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import av
import numpy as np

BATCH_SAMPLES = 1 << 16
"""Downmixed source samples gathered before they go through the resampler (about 1.5 s at
44.1 kHz): fewer, larger resampler calls, still a small buffer."""

PROGRESS_EVERY = 0.5
"""Seconds of wall time between two ``{"decoded": …}`` progress lines."""


def duration(container: av.container.InputContainer) -> float | None:
    """Length in seconds of the first audio stream as the container states it, or None.

    The stream's own duration (in its time base) is preferred; the container's (in
    microseconds, ``av.time_base``) is the fallback. Neither needs decoding; for formats that
    store no length (raw MP3 without a Xing header) FFmpeg estimates it from the bit rate.
    """
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def probe(path: str) -> dict:
    """``{"duration": seconds or None}`` of ``path`` from its metadata (None if it cannot be opened)."""
    try:
        with av.open(path) as container:
            return {"duration": duration(container)}
    except (av.FFmpegError, OSError, ValueError):
        return {"duration": None}


def _mono_float(frame: av.AudioFrame, to_float: av.AudioResampler) -> np.ndarray:
    """One decoded frame as float32 mono: converted to planar float at its own layout and rate
    (swresample, exact for integer PCM: ``s16 / 32768``), then the mean of its channels. The
    mean is done here, not by swresample, whose stereo → mono matrix scales each channel by
    1/√2 (measured: L = 0.8, R = 0 gives 0.566, not 0.4)."""
    parts = [converted.to_ndarray() for converted in to_float.resample(frame)]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    planar = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return planar.mean(axis=0, dtype=np.float32) if planar.shape[0] > 1 else planar[0].astype(np.float32, copy=False)


class _Output:
    """Resamples mono float32 batches to ``rate`` and appends them to a raw float32 file,
    keeping count and peak. ``resampler`` is None when no rate change is needed."""

    def __init__(self, handle, source_rate: int, rate: int):
        self.handle = handle
        self.samples = 0
        self.peak = 0.0
        self.source_rate = source_rate
        self.resampler = None
        if source_rate != rate:
            # Mono float in, mono float out: swresample's default windowed-sinc filter,
            # streaming (its state carries over between calls, so chunk edges leave no seam).
            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)

    def write(self, mono: np.ndarray | None) -> None:
        """Resample and write ``mono`` (1-D float32 at the source rate); None flushes the resampler."""
        if self.resampler is None:
            chunks = [] if mono is None else [mono]
        else:
            frame = None
            if mono is not None:
                frame = av.AudioFrame.from_ndarray(mono[None, :], format="fltp", layout="mono")
                frame.sample_rate = self.source_rate
            chunks = [converted.to_ndarray()[0] for converted in self.resampler.resample(frame)]
        for chunk in chunks:
            chunk = np.clip(chunk, -1.0, 1.0).astype("<f4", copy=False)  # float files may exceed full scale
            if chunk.size:
                self.peak = max(self.peak, float(np.abs(chunk).max()))
            self.handle.write(chunk.tobytes())
            self.samples += chunk.size

    def fit(self, expected: int) -> None:
        """Cut or zero-pad the file to exactly ``expected`` samples (the resampler's own count
        can differ from ``round(source_samples * rate / source_rate)`` by a sample or so)."""
        if self.samples > expected:
            self.handle.truncate(expected * 4)
        elif self.samples < expected:
            self.handle.write(np.zeros(expected - self.samples, dtype="<f4").tobytes())
        self.samples = expected


def _fault(kind: str | None) -> None:
    """The test hook (see the module docstring): die or hang like a broken decoder would."""
    if kind == "crash":
        os.abort()  # SIGABRT on POSIX, exit code 3 on Windows: no Python cleanup, like a segfault
    if kind == "hang":
        while True:
            time.sleep(3600)


def decode(path: str, rate: int, out: str, fault: str | None, send) -> dict:
    """Stream the first audio stream of ``path`` into ``out`` (see the module docstring).

    Returns the final message; ``send`` is called with the intermediate ones (opened, decoded).
    """
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                return {"error": "has no audio stream"}
            send({"opened": True, "duration": duration(container)})
            _fault(fault)
            stream = container.streams.audio[0]
            to_float = av.AudioResampler(format="fltp")
            source_rate = 0
            source_samples = 0
            pending: list[np.ndarray] = []
            pending_samples = 0
            output = None
            last_report = time.monotonic()
            with open(out, "wb") as handle:
                for frame in container.decode(stream):
                    mono = _mono_float(frame, to_float)
                    if not mono.size:
                        continue
                    if not np.isfinite(mono).all():
                        return {"error": "contains non-finite samples (NaN or infinity)"}
                    if output is None:
                        source_rate = frame.sample_rate
                        output = _Output(handle, source_rate, rate)
                    elif frame.sample_rate != source_rate:
                        return {"error": f"changes sample rate mid-stream ({source_rate} → {frame.sample_rate} Hz)"}
                    pending.append(mono)
                    pending_samples += mono.size
                    source_samples += mono.size
                    if pending_samples >= BATCH_SAMPLES:
                        output.write(np.concatenate(pending))
                        pending, pending_samples = [], 0
                        if time.monotonic() - last_report >= PROGRESS_EVERY:
                            send({"decoded": source_samples / source_rate})
                            last_report = time.monotonic()
                if output is None or source_rate <= 0:
                    return {"error": "contains no audio samples"}
                if pending:
                    output.write(np.concatenate(pending))
                output.write(None)
                output.fit(round(source_samples * rate / source_rate))
                send({"decoded": source_samples / source_rate})
    except (av.FFmpegError, OSError, ValueError) as error:
        detail = getattr(error, "strerror", None) or str(error)  # FFmpeg's words, no path
        return {"error": f"cannot be decoded as audio ({detail})"}
    return {
        "ok": True,
        "source_rate": source_rate,
        "source_samples": source_samples,
        "samples": output.samples,
        "peak": output.peak,
    }


def serve(requests=sys.stdin, replies=sys.stdout) -> None:
    """Answer requests, one JSON line each, until ``requests`` ends (the parent closed it or died)."""

    def send(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        if request["op"] == "probe":
            send(probe(request["path"]))
        elif request["op"] == "decode":
            send(decode(request["path"], int(request["rate"]), request["out"], request.get("fault"), send))
        else:
            send({"error": f"unknown request {request['op']!r}"})


if __name__ == "__main__":
    serve()
