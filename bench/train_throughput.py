"""Training throughput: our loop against coqui's stock XTTS-v2 recipe, on the same data.

``python -m bench.train_throughput [--device cpu|cuda] [--model tiny|full] [--steps N]
[--batch-size B] [--clips N] [--warmup W] [--threads T] [--json PATH] [--keep]``
(run from the repository root with the project's Python)

In one temporary TIMBRE_HOME it writes a random model with the XTTS-v2 file layout (``tiny``:
2 layers x 64 wide x 4 heads; ``full``: XTTS-v2's 30 x 1024 x 16, sensible on a GPU only) and
an espeak-ng dataset of clips of about 1–8 s, then measures, with the same model, clips and
batch size (no gradient accumulation):

1. **our loop** — ``python -m engine train`` (through ``bench/engine_loop.py``, which adds the
   peak GPU memory) on features cached beforehand; the one-off caching is timed on its own;
2. **coqui's recipe** — ``trainer.Trainer`` + ``GPTTrainer`` built as
   ``recipes/ljspeech/xtts_v2/train_gpt_xtts.py`` (``bench/coqui_recipe.py``), which loads the
   audio and computes conditioning mels and DVAE codes on every step (timed apart as well).
   Importing coqui's XTTS dataset module sets torch to 1 thread, so without ``--threads`` the
   two loops compute with different thread counts on a CPU; ``--threads T`` gives every loop T
   (OMP_NUM_THREADS, and coqui's reset undone). On a small or shared CPU machine ``--threads 1``
   is the steady, like-for-like comparison: two threads on two busy cores stall each other;
3. **padding**: the mean share of padded audio-code positions per micro-batch of our
   duration-bucketed plan (``data.epoch_batches``) against random batches of the same clips,
   and in the batches coqui's run actually drew.

Throughput is steady state: the step-end timestamps (metrics.jsonl ``time`` for ours, an
``on_train_step_end`` callback for coqui) after the first ``--warmup`` steps, so process start,
model loading and the first steps' allocations are excluded (start-up to the first step is
shown apart). Peak memory is the child's peak RSS (``os.wait4``: the largest single process of
its tree) and the peak summed PSS of the process tree (polled; counts DataLoader workers once
each, shared pages split), and on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
VOICE = "bench"
SAMPLE_RATE = 22050  # engine.models.SAMPLE_RATE: the GPT's audio rate
CODE_STRIDE = 1024  # engine.models.CODE_STRIDE: samples per DVAE code
SEED = 1234
#: Epochs of the batch plan averaged for the padding figures.
PADDING_EPOCHS = 10
#: espeak-ng speaking rate (words per minute); 2–26 words then last about 1–8 s.
ESPEAK_SPEED = 160
WORDS = (
    "the cat sat on a warm mat by door small boat drifted slowly down river while children watched "
    "from bank and waved please bring me glass of cold water he painted fence green last summer our "
    "neighbours grow tomatoes in their garden library closes early sundays music helps relax after "
    "long day weather was windy all week train leaves morning with good map"
).split()


# --------------------------------------------------------------------------------------------
# Inputs: dataset and model


def sentences(count: int, seed: int = SEED) -> list[str]:
    """``count`` sentences from 2 to 26 words (evenly spread), in a seeded shuffled order."""
    rng = random.Random(seed)
    lengths = [round(2 + 24 * i / max(1, count - 1)) for i in range(count)]
    rng.shuffle(lengths)
    texts = []
    for n in lengths:
        words = [rng.choice(WORDS) for _ in range(n)]
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as fh:
        return fh.getnframes() / fh.getframerate()


def write_dataset(home: Path, clips: int) -> list[float]:
    """``datasets/bench/{wavs/, train.csv}`` spoken by espeak-ng; returns the clip durations (s)
    in train.csv order."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = home / "datasets" / VOICE
    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    rows, durations = [], []
    for i, text in enumerate(sentences(clips)):
        wav = folder / "wavs" / f"clip{i:03d}.wav"
        subprocess.run(["espeak-ng", "-s", str(ESPEAK_SPEED), "-w", str(wav), text], check=True, capture_output=True)
        rows.append(f"wavs/{wav.name}|{text}|{VOICE}")
        durations.append(wav_seconds(wav))
    (folder / "train.csv").write_text("audio_file|text|speaker_name\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return durations


def write_model(directory: Path, size: str) -> Path:
    """A random model with the XTTS-v2 file layout: ``tiny`` (2/64/4) or ``full`` (XTTS-v2's
    30/1024/16 with its 6681 text tokens), :func:`engine.models.write_random_model`."""
    from engine.models import write_random_model

    return write_random_model(directory, size)


# --------------------------------------------------------------------------------------------
# Padding


def code_count(samples: int) -> int:
    """DVAE codes of a clip of ``samples`` samples at 22.05 kHz (``Sample.codes`` length)."""
    return math.ceil(samples / CODE_STRIDE)


def clip_samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


def mean_padding(batches: list[list[int]]) -> float:
    """Mean of ``data.padding_fraction`` over batches given as their clips' code counts (one
    micro-batch per batch: no gradient accumulation)."""
    import torch

    from engine.training import data

    return statistics.fmean(
        data.padding_fraction([SimpleNamespace(codes=torch.empty(n)) for n in batch]) for batch in batches
    )


def batch_codes(batches: list[list[int]], durations: list[float]) -> list[list[int]]:
    """Batches of clip indices → batches of code counts."""
    return [[code_count(clip_samples(durations[i])) for i in batch] for batch in batches]


def random_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Seeded shuffle cut into consecutive batches, padded like ``epoch_batches`` (no bucketing)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    total = math.ceil(n / batch_size) * batch_size
    while len(order) < total:
        order += order[: total - len(order)]
    return [order[k : k + batch_size] for k in range(0, total, batch_size)]


def padding_figures(durations: list[float], batch_size: int) -> dict:
    """Our plan's and random batching's mean padding over PADDING_EPOCHS epochs."""
    from engine.training import data

    ours = [b for e in range(PADDING_EPOCHS) for b in data.epoch_batches(durations, batch_size, SEED, e)]
    shuffled = [b for e in range(PADDING_EPOCHS) for b in random_batches(len(durations), batch_size, SEED, e)]
    return {
        "bucketed": mean_padding(batch_codes(ours, durations)),
        "random": mean_padding(batch_codes(shuffled, durations)),
        "epochs": PADDING_EPOCHS,
    }


# --------------------------------------------------------------------------------------------
# Running a child and measuring it


@dataclass
class ChildRun:
    """A finished child process: exit code, wall times and peak memory."""

    exit_code: int
    launched: float  # time.time() at launch
    ended: float
    peak_rss_kib: int  # os.wait4: max RSS of the child and its largest descendant
    peak_tree_pss_bytes: int  # polled sum over the process tree
    cpu_seconds: float  # user + system time of the child and the descendants it reaped
    others_cpu_cores: float  # mean CPU cores busy with other processes while it ran (contention)
    log: Path
    result: dict = field(default_factory=dict)  # the child's own JSON


def _tree_pss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def _busy_cpu_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (not idle, not waiting for I/O)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def run_child(argv: list[str], env: dict, log: Path, result: Path, timeout: float) -> ChildRun:
    """Run ``argv`` (cwd: the repository root) with its output in ``log``; poll its tree's PSS
    every 0.2 s; reap it with ``os.wait4`` for its peak RSS and CPU time. The machine's busy CPU
    time minus the child's gives the other processes' load (this machine may be shared)."""
    peak = [0]
    busy_before = _busy_cpu_seconds()
    launched = time.time()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_pss(proc.pid))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            done.set()
            poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    ended = time.time()
    cpu = usage.ru_utime + usage.ru_stime
    others = max(0.0, _busy_cpu_seconds() - busy_before - cpu) / max(ended - launched, 1e-9)
    child_result = json.loads(result.read_text()) if result.is_file() else {}
    return ChildRun(proc.returncode, launched, ended, usage.ru_maxrss, peak[0], cpu, others, log, child_result)


@contextlib.contextmanager
def scratch(workdir: Path, keep: bool, where: str = ""):
    """Run a benchmark inside ``workdir``: removed afterwards, kept (and named, with ``where``)
    with ``--keep`` or when the benchmark failed."""
    ok = False
    try:
        yield
        ok = True
    finally:
        if keep or not ok:
            print(f"\nkept {workdir}{where}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def print_report(text: str, report: dict, json_path: Path | None) -> None:
    """Print a benchmark's formatted report, and write ``report`` as JSON to ``json_path`` if given."""
    print()
    print(text)
    if json_path:
        json_path.write_text(json.dumps(report, indent=1) + "\n")


def require_ok(run: ChildRun, what: str) -> None:
    if run.exit_code != 0:
        tail = run.log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{what} failed (exit {run.exit_code}); the end of {run.log}:\n{tail}")


def steady_state(step_ends: list[float], batch_sizes: list[int], audio_seconds: list[float], warmup: int) -> dict:
    """Throughput over the steps after ``warmup``: step k's time is its end minus step k-1's end."""
    intervals = [b - a for a, b in zip(step_ends[warmup - 1 : -1], step_ends[warmup:], strict=True)]
    span = step_ends[-1] - step_ends[warmup - 1]
    return {
        "steps_timed": len(intervals),
        "samples_per_second": sum(batch_sizes[warmup:]) / span,
        "audio_seconds_per_second": sum(audio_seconds[warmup:]) / span,
        "median_step_seconds": statistics.median(intervals),
    }


# --------------------------------------------------------------------------------------------
# The two loops


def measure_ours(model_dir: Path, args, env: dict, durations: list[float], logs: Path) -> dict:
    from engine.config import TrainConfig

    steps_per_epoch = math.ceil(len(durations) / args.batch_size)
    epochs = math.ceil(args.steps / steps_per_epoch)
    config = TrainConfig(
        voice=VOICE, run="ours", base_model=str(model_dir), epochs=epochs, max_steps=args.steps,
        batch_size=args.batch_size, gradient_accumulation=1, validate_every=0, save_every=epochs,
        keep_checkpoints=1, gpus=1 if args.device == "cuda" else 0, seed=SEED, precision=args.precision,
        evaluate=False,
    ).save_new()  # fmt: skip
    python = [sys.executable, "-m", "bench.engine_loop"]
    cache = run_child([*python, "cache", str(config), str(logs / "cache.json")], env, logs / "cache.log",
                      logs / "cache.json", args.timeout)  # fmt: skip
    require_ok(cache, "feature caching")
    if cache.result["clips"] != len(durations):  # metrics rows index the usable clips, in csv order
        raise SystemExit(f"the dataset check kept {cache.result['clips']} of {len(durations)} clips: "
                         + "; ".join(cache.result["problems"]))  # fmt: skip
    train = run_child([*python, "train", str(config), str(logs / "ours.json")], env, logs / "ours.log",
                      logs / "ours.json", args.timeout)  # fmt: skip
    require_ok(train, "our loop")
    rows = [json.loads(line) for line in (config.parent / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train"]
    if len(rows) != args.steps:
        raise SystemExit(f"our loop logged {len(rows)} training steps, expected {args.steps}")
    figures = steady_state(
        [r["time"] for r in rows],
        [len(r["samples"]) for r in rows],
        [sum(durations[i] for i in r["samples"]) for r in rows],
        args.warmup,
    )
    figures["loop_reported_samples_per_second_median"] = statistics.median(
        r["samples_per_second"] for r in rows[args.warmup :]
    )
    figures.update(
        startup_seconds=rows[0]["time"] - train.launched,
        memory=memory(train),
        machine_load=contention(train),
        padding=mean_padding(batch_codes([r["samples"] for r in rows], durations)),
    )
    figures["torch_threads"] = train.result.get("torch_threads")
    figures["caching"] = {
        "seconds": cache.result["seconds"],
        "clips": cache.result["clips"],
        "computed": cache.result["computed"],
        "process_seconds": cache.ended - cache.launched,
        "memory": memory(cache),
    }
    return figures


def measure_coqui(model_dir: Path, args, env: dict, logs: Path, threads: int) -> dict:
    name = f"coqui-threads{threads}"
    result = logs / f"{name}.json"
    argv = [
        sys.executable, "-m", "bench.coqui_recipe", "--model", str(model_dir),
        "--dataset", str(Path(env["TIMBRE_HOME"]) / "datasets" / VOICE), "--output", str(logs / name),
        "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--device", args.device,
        "--threads", str(threads), "--result", str(result), "--precision", args.precision,
    ]  # fmt: skip
    run = run_child(argv, env, logs / f"{name}.log", result, args.timeout)
    require_ok(run, "coqui's recipe")
    out = run.result
    wav_lengths = out["wav_lengths"][: args.steps]
    figures = steady_state(
        out["step_ends"],
        [len(b) for b in wav_lengths],
        [sum(b) / SAMPLE_RATE for b in wav_lengths],
        args.warmup,
    )
    figures.update(
        startup_seconds=out["step_ends"][0] - run.launched,
        memory=memory(run),
        machine_load=contention(run),
        torch_threads=out["torch_threads"],
        torch_threads_coqui=out["torch_threads_coqui"],
        num_loader_workers=out["num_loader_workers"],
        audio_loader=out["audio_loader"],
        padding=mean_padding([[code_count(n) for n in batch] for batch in wav_lengths]),
        feature_seconds_median=statistics.median(out["feature_seconds"][args.warmup : args.steps]),
    )
    return figures


def contention(run: ChildRun) -> dict:
    return {"cpu_seconds": run.cpu_seconds, "others_cpu_cores": run.others_cpu_cores}


def memory(run: ChildRun) -> dict:
    figures = {"peak_rss_bytes": run.peak_rss_kib * 1024, "peak_tree_pss_bytes": run.peak_tree_pss_bytes}
    if "cuda_max_allocated_bytes" in run.result:
        figures["cuda_max_allocated_bytes"] = run.result["cuda_max_allocated_bytes"]
    return figures


# --------------------------------------------------------------------------------------------
# Report


def machine(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_threads": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "coqui-tts": importlib.metadata.version("coqui-tts"),
        "coqui-tts-trainer": importlib.metadata.version("coqui-tts-trainer"),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _gib(n: int | None) -> str:
    return "-" if not n else f"{n / 2**30:.2f} GiB"


def format_report(report: dict) -> str:
    header = ("loop", "samples/s", "audio s/s", "median step", "start-up", "peak RSS", "tree PSS", "GPU peak",
              "padding", "threads", "others' CPU")  # fmt: skip
    rows = []
    for name, r in report["loops"].items():
        mem = r["memory"]
        rows.append(
            (
                name,
                f"{r['samples_per_second']:.2f}",
                f"{r['audio_seconds_per_second']:.1f}",
                f"{r['median_step_seconds']:.3f} s",
                f"{r['startup_seconds']:.1f} s",
                _gib(mem["peak_rss_bytes"]),
                _gib(mem["peak_tree_pss_bytes"]),
                _gib(mem.get("cuda_max_allocated_bytes")),
                f"{r['padding']:.3f}",
                str(r["torch_threads"]),
                f"{r['machine_load']['others_cpu_cores']:.2f} cores",
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *map(line, rows)]
    busiest = max(r["machine_load"]["others_cpu_cores"] for r in report["loops"].values())
    if busiest > 0.25:
        out.append(
            f"warning: other processes kept up to {busiest:.2f} CPU cores busy during a measurement "
            f"({report['machine']['cpu_threads']} in all); CPU timings from a shared machine are noisy"
        )
    ours = report["loops"]["ours"]
    caching = ours["caching"]
    pad = report["padding"]
    m = report["machine"]
    s = report["settings"]
    durations = report["clip_seconds"]
    out += [
        "",
        f"feature caching (ours, once per dataset): {caching['seconds']:.1f} s for {caching['clips']} clips "
        f"({caching['computed']} computed); process {caching['process_seconds']:.1f} s, "
        f"peak RSS {_gib(caching['memory']['peak_rss_bytes'])}",
        f"padding over {pad['epochs']} epochs of micro-batches: bucketed (ours) {pad['bucketed']:.3f}, "
        f"random batches {pad['random']:.3f}",
        f"steady state: steps {s['warmup'] + 1}-{s['steps']} of {s['steps']}, batch {s['batch_size']}, "
        f"{len(durations)} clips of {min(durations):.1f}-{max(durations):.1f} s ({sum(durations):.0f} s), "
        f"model {s['model']}, device {s['device']}",
        *(
            f"{name}: conditioning mels + DVAE codes {r['feature_seconds_median']:.3f} s of the median step "
            f"(ours reads them from the cache); {r['num_loader_workers']} DataLoader workers"
            for name, r in report["loops"].items()
            if name != "ours"
        ),
        f"coqui audio loading: {report['loops'][next(k for k in report['loops'] if k != 'ours')]['audio_loader']}",
        f"machine: {m['cpu']}, {m['cpu_threads']} CPU threads, {m['memory_gib']} GiB"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; Python {m['python']}, torch {m['torch']}, coqui-tts {m['coqui-tts']}, "
        f"coqui-tts-trainer {m['coqui-tts-trainer']}",
        f"command: {report['command']}",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_throughput", description="Training throughput: our loop vs coqui's recipe."
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny", help="full: XTTS-v2 sizes (GPU)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per loop")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="both loops' autocast")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the throughput")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for every loop (OMP_NUM_THREADS; coqui's reset to 1 undone); "
        "0: each as it runs by itself (ours: torch's default; coqui: 1)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each child process")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary TIMBRE_HOME and logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.steps < args.warmup + 2 or args.warmup < 1:
        raise SystemExit("need --warmup >= 1 and --steps >= warmup + 2")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")

    workdir = Path(tempfile.mkdtemp(prefix="timbre-bench-"))
    home, logs = workdir / "home", workdir / "logs"
    logs.mkdir(parents=True)
    os.environ["TIMBRE_HOME"] = str(home)
    env = dict(os.environ, TIMBRE_HOME=str(home), PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with scratch(workdir, args.keep, f" (logs in {logs})"):
        started = time.time()
        print(f"writing the {args.model} model and {args.clips} espeak-ng clips in {workdir}", flush=True)
        model_dir = write_model(workdir / f"model-{args.model}", args.model)
        durations = write_dataset(home, args.clips)
        report = {
            "command": shlex.join(["python", "-m", "bench.train_throughput", *argv]),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine(args.device),
            "clip_seconds": durations,
            "padding": padding_figures(durations, args.batch_size),
            "loops": {},
        }
        print("our loop: caching features, then training", flush=True)
        report["loops"]["ours"] = measure_ours(model_dir, args, env, durations, logs)
        if args.threads == 1 or (not args.threads and report["machine"]["torch_threads"] == 1):
            name = "coqui recipe (1 thread = as shipped)"
        else:
            name = f"coqui recipe ({args.threads} threads)" if args.threads else "coqui recipe (as shipped: 1 thread)"
        print(f"{name}: training", flush=True)
        report["loops"][name] = measure_coqui(model_dir, args, env, logs, args.threads)
        report["total_seconds"] = time.time() - started
        print_report(format_report(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
