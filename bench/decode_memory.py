"""Peak memory of decoding a long recording: ``engine.speech.audio.load_audio`` on hours of 44.1 kHz stereo.

``python -m bench.decode_memory [--minutes M] [--rate HZ] [--dir DIR] [--keep]``
(run from the repository root with the project's Python; Linux: it reads ``/proc``)

It writes a synthetic 16-bit 44.1 kHz stereo WAV of ``--minutes`` (default 120: 1.27 GB) in
1-second blocks, so the bench itself stays small, then decodes it with
``load_audio(path, --rate)`` (default 22 050 Hz, the clips' rate) and prints:

- the parent's peak RSS (``VmHWM`` in ``/proc/self/status``) and its RSS before decoding
  (torch and numpy imported): the difference is what decoding cost this process, which holds
  only the mono result (4 bytes per output sample);
- the decoder worker's peak RSS, ``VmHWM`` of its ``/proc/PID/status`` read after the decode
  while it waits for the next file. Not ``getrusage(RUSAGE_CHILDREN)``: Linux carries the
  parent's high-water mark into a child's ``ru_maxrss`` across ``exec``, so that would report the
  parent's size;
- seconds taken and the speed in multiples of real time, the figure
  ``engine.speech.audio.TIMEOUT_PER_SECOND`` is sized against.

The signal: a harmonic "voice" (150 Hz fundamental and 12 harmonics, amplitude-modulated at a
syllable rate of 4 Hz) in the left channel, the same voice a little delayed plus noise in the
right, so the downmix is not trivial. The goal in issue 7: under 1.5 GB in any one process for
2 hours.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import psutil

from engine.speech import audio

SOURCE_RATE = 44_100
BLOCK_SECONDS = 1


def peak_rss(pid: int | str = "self") -> int:
    """Peak resident set size of a process in bytes (``VmHWM``, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def decoder_pids() -> list[int]:
    """Process ids of this process's running ``engine.speech.audio_worker`` children."""
    return [p.pid for p in psutil.Process().children() if "engine.speech.audio_worker" in " ".join(p.cmdline())]


def write_long_wav(path: Path, minutes: float) -> int:
    """Write ``minutes`` of 16-bit stereo at 44.1 kHz to ``path``; returns the frame count."""
    total = round(minutes * 60 * SOURCE_RATE)
    rng = np.random.default_rng(0)
    harmonics = np.arange(1, 13)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(SOURCE_RATE)
        for start in range(0, total, BLOCK_SECONDS * SOURCE_RATE):
            n = min(BLOCK_SECONDS * SOURCE_RATE, total - start)
            t = (start + np.arange(n)) / SOURCE_RATE
            envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2 / 4
            voice = (np.sin(2 * np.pi * 150 * np.outer(t, harmonics)) / harmonics).sum(axis=1) * envelope * 0.3
            left = voice
            right = 0.7 * np.roll(voice, 20) + 0.01 * rng.standard_normal(n)
            pcm = np.round(np.clip(np.stack([left, right], axis=1), -1, 1) * 32767).astype("<i2")
            writer.writeframes(pcm.tobytes())
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=120.0, help="length of the recording (default 120)")
    parser.add_argument("--rate", type=int, default=22_050, help="output sample rate in Hz (default 22050)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the WAV (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the WAV afterwards")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="decode-memory-", dir=args.dir))
    path = folder / "long.wav"
    started = time.perf_counter()
    frames = write_long_wav(path, args.minutes)
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB, {frames / SOURCE_RATE / 60:.1f} min of "
          f"{SOURCE_RATE} Hz stereo) in {time.perf_counter() - started:.1f} s")  # fmt: skip

    try:
        audio.close_decoders()
        before = psutil.Process().memory_info().rss
        duration = audio.audio_duration(path)
        started = time.perf_counter()
        decoded = audio.load_audio(path, args.rate)
        seconds = time.perf_counter() - started
        parent_peak = peak_rss()
        (worker,) = decoder_pids()  # the one worker that probed and decoded, now idle
        worker_peak = peak_rss(worker)
        audio.close_decoders()
        expected = round(frames * args.rate / SOURCE_RATE)
        assert decoded.numel() == expected, (decoded.numel(), expected)
        result_bytes = decoded.numel() * decoded.element_size()
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            folder.rmdir()

    gib = 2**30
    print(f"audio_duration: {duration:.1f} s; decoded {decoded.numel()} samples at {args.rate} Hz "
          f"({result_bytes / gib:.2f} GiB of float32)")  # fmt: skip
    print(f"decode + downmix + resample: {seconds:.1f} s ({frames / SOURCE_RATE / seconds:.0f}x real time)")
    print(f"parent peak RSS: {parent_peak / gib:.2f} GiB (before decoding: {before / gib:.2f} GiB)")
    print(f"worker peak RSS: {worker_peak / gib:.3f} GiB")
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
