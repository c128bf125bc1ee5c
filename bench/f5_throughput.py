"""F5-TTS training throughput: our loop against f5_tts's own ``Trainer``, same model and data.

``python -m bench.f5_throughput [--epochs N] [--batch-frames F] [--clips N] [--warmup W]
[--threads T] [--f5-data raw,mel] [--f5-workers K] [--json PATH] [--keep]``
(run from the repository root with the project's Python)

In one temporary TIMBRE_HOME it writes the tiny random F5-TTS v1 model
(``engine.models.get_family("f5").write_random_model``: DiT 2 layers x 64 wide) and an espeak-ng
dataset (``bench.train_throughput.write_dataset``), then trains the same CFM weights on the same
clips for the same number of epochs, with batches of up to ``--batch-frames`` mel frames, lr
1e-5, gradient norm clipped to 1.0, no gradient accumulation, in separate child processes:

1. **ours** — ``python -m engine train`` (through ``bench/engine_loop.py``) with ``family: f5``,
   validation and checkpoint scoring off, on mel spectrograms cached beforehand (the one-off
   caching is timed on its own, ``python -m bench.f5_throughput child cache ...``);
2. **f5_tts's Trainer** — ``f5_tts.model.Trainer`` driven as ``f5_tts/train/finetune_cli.py``
   drives it (``batch_size_type="frame"``, ``max_samples`` 64, ``resumable_with_seed``), over
   ``f5_tts.model.dataset.CustomDataset`` on an in-memory ``datasets.Dataset`` of
   ``audio_path`` / ``text`` (``convert_char_to_pinyin`` tokens, as F5's prepare_csv_wavs.py
   stores them) / ``duration`` rows (``python -m bench.f5_throughput child f5 ...``). ``raw``:
   the audio is loaded and its mel computed on every step (finetune_cli's default
   ``audio_type="raw"``); ``mel``: the rows carry our cached mels (``preprocessed_mel=True``,
   F5's ``audio_type="mel"``), so only the loops differ. Logger off, no checkpoint during the
   run (the final ``model_last.pt`` is written after the last timed step and timed apart). Its
   DataLoader has ``persistent_workers=True`` hard-coded, which torch refuses with 0 workers
   (``ValueError: persistent_workers option needs num_workers > 0``), so it gets
   ``--f5-workers`` (default 1; finetune_cli uses ``train``'s default, 16). Its EMA
   (``ema_pytorch.EMA``, update every 10 steps after 100) is always on; ours is off (the F5
   recipe's default).

Throughput is steady state: step-end timestamps (metrics.jsonl ``time`` for ours; for F5's
Trainer a wrapper of its EMA update, called once per update right after ``optimizer.step``)
after the first ``--warmup`` updates, so process start, model loading and the first steps are
excluded. Clips per update come from metrics.jsonl ``samples`` (ours) and from a wrapper of
``CFM.forward`` (F5). Peak memory is the child's peak RSS (``os.wait4``: the largest single
process of its tree) and the peak summed PSS of the process tree (polled; counts F5's DataLoader
worker). ``--threads`` sets torch's CPU threads for both (OMP_NUM_THREADS and, in F5's child,
``torch.set_num_threads``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.train_throughput import (
    SEED,
    VOICE,
    ChildRun,
    print_report,
    require_ok,
    run_child,
    scratch,
    steady_state,
    write_dataset,
)

#: f5_tts's mel frames: 24 kHz, hop 256 (engine.models.f5.files.MEL_SPEC).
SAMPLE_RATE = 24000
HOP_LENGTH = 256
LEARNING_RATE = 1e-5  # the F5 recipe's (finetune_cli.py)
MAX_GRAD_NORM = 1.0
MAX_SAMPLES = 64  # finetune_cli.py's --max_samples default: clips per batch at most
F5_DATA = ("raw", "mel")


# --------------------------------------------------------------------------------------------
# Children (run in their own processes so that each has its own peak RSS)


def cache_mels(model_dir: Path, dataset: Path) -> dict:
    """Fill ``<dataset>/cache/`` with F5's mel spectrograms of train.csv, as our loop's start does
    (``engine.models.f5.train.prepare_samples`` with a ``MelCache``); returns time and counts."""
    from engine.models.f5 import files
    from engine.models.f5.train import MelCache, prepare_samples
    from engine.training.data import read_metadata

    started = time.perf_counter()
    mels = MelCache(dataset / "cache")
    samples, problems = prepare_samples(read_metadata(dataset / "train.csv"), files.read_vocab(model_dir), mels,
                                        0.3, 30.0)  # fmt: skip
    return {"seconds": time.perf_counter() - started, "clips": len(samples), "computed": mels.misses,
            "problems": problems}  # fmt: skip


def f5_rows(model_dir: Path, dataset: Path, data: str) -> list[dict]:
    """The rows F5's prepare_csv_wavs.py writes (``audio_path``, ``text`` as
    ``convert_char_to_pinyin`` tokens, ``duration`` in s of the file), plus ``mel_spec``
    ((100, frames) lists, our cached mels) when ``data == "mel"``."""
    import soundfile

    from engine.models.f5.train import MelCache, text_tokens
    from engine.training.data import read_metadata

    mels = MelCache(dataset / "cache") if data == "mel" else None
    rows = []
    for clip in read_metadata(dataset / "train.csv"):
        row = {"audio_path": str(clip.audio_path), "text": text_tokens(clip.text),
               "duration": soundfile.info(str(clip.audio_path)).duration}  # fmt: skip
        if mels is not None:
            row["mel_spec"] = mels.features(clip.audio_path)["mel"].T.tolist()
        rows.append(row)
    return rows


def train_f5(args: argparse.Namespace) -> dict:
    """Train with ``f5_tts.model.Trainer`` (see the module docstring); returns its step-end times,
    clips and frames per update, and what the process saw (threads, workers)."""
    import torch

    torch.set_num_threads(args.threads)
    from f5_tts.model import CFM, Trainer
    from f5_tts.model.dataset import CustomDataset

    from datasets import Dataset
    from engine.models.f5 import files

    rows = f5_rows(args.model, args.dataset, args.data)
    train_set = CustomDataset(Dataset.from_list(rows), durations=[r["duration"] for r in rows],
                              preprocessed_mel=args.data == "mel", **files.MEL_SPEC)  # fmt: skip
    model = files.load_cfm(args.model)  # the same weights our loop starts from
    model.train()
    out: dict = {"step_ends": [], "clips": [], "frames": [], "torch_threads": None}
    forward = CFM.forward

    def timed_ema_update() -> None:  # once per optimizer update, after step/scheduler/zero_grad
        ema_update()
        out["step_ends"].append(time.time())

    def counted_forward(self, inp, text, *, lens=None, **kwargs):
        out["clips"].append(int(inp.shape[0]))
        out["frames"].append(int(lens.sum()) if lens is not None else int(inp.shape[0] * inp.shape[1]))
        out["torch_threads"] = out["torch_threads"] or torch.get_num_threads()
        return forward(self, inp, text, lens=lens, **kwargs)

    CFM.forward = counted_forward  # before the Trainer, in case accelerate wraps the bound forward
    trainer = Trainer(
        model, args.epochs, LEARNING_RATE, num_warmup_updates=1, save_per_updates=10**9,
        keep_last_n_checkpoints=0, checkpoint_path=str(args.output), batch_size_per_gpu=args.batch_frames,
        batch_size_type="frame", max_samples=MAX_SAMPLES, grad_accumulation_steps=1, max_grad_norm=MAX_GRAD_NORM,
        logger=None, log_samples=False,
    )  # fmt: skip
    ema_update = trainer.ema_model.update
    trainer.ema_model.update = timed_ema_update
    out["train_called"] = time.time()
    trainer.train(train_set, num_workers=args.workers, resumable_with_seed=SEED)
    out["train_returned"] = time.time()  # the last step end to here: the final model_last.pt
    out.update(num_workers=args.workers, batches_per_epoch=len(out["clips"]) // args.epochs,
               accelerate=importlib.metadata.version("accelerate"))  # fmt: skip
    return out


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.f5_throughput child")
    parser.add_argument("what", choices=["cache", "f5"])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--output", type=Path, default=None, help="f5: its checkpoint folder")
    parser.add_argument("--data", choices=F5_DATA, default="raw")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-frames", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    result = cache_mels(args.model, args.dataset) if args.what == "cache" else train_f5(args)
    args.result.write_text(json.dumps(result, indent=1) + "\n")
    return 0


# --------------------------------------------------------------------------------------------
# Measuring the loops


def epoch_seconds(step_ends: list[float], steps_per_epoch: int) -> list[float]:
    """Wall seconds of epochs 2..N: the end of each epoch's last update minus the previous one's."""
    ends = step_ends[steps_per_epoch - 1 :: steps_per_epoch]
    return [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]


def summarise(run: ChildRun, step_ends: list[float], clips: list[int], frames: list[int], epochs: int,
              warmup: int) -> dict:  # fmt: skip
    """Steady-state throughput, epoch times, start-up and memory of one finished loop."""
    figures = steady_state(step_ends, clips, [f * HOP_LENGTH / SAMPLE_RATE for f in frames], warmup)
    per_epoch = len(step_ends) // epochs
    epoch_times = epoch_seconds(step_ends, per_epoch)
    figures.update(
        updates=len(step_ends),
        updates_per_epoch=per_epoch,
        clips_per_epoch=sum(clips) // epochs,
        epoch_seconds=epoch_times,
        epoch_seconds_median=statistics.median(epoch_times) if epoch_times else None,
        startup_seconds=step_ends[0] - run.launched,
        train_seconds=step_ends[-1] - run.launched,
        process_seconds=run.ended - run.launched,
        whole_run_samples_per_second=sum(clips) / (step_ends[-1] - run.launched),
        memory={"peak_rss_bytes": run.peak_rss_kib * 1024, "peak_tree_pss_bytes": run.peak_tree_pss_bytes},
        machine_load={"cpu_seconds": run.cpu_seconds, "others_cpu_cores": run.others_cpu_cores},
    )
    return figures


def child_argv(what: str, model_dir: Path, dataset: Path, result: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.f5_throughput", "child", what, "--model", str(model_dir),
            "--dataset", str(dataset), "--result", str(result), *extra]  # fmt: skip


def measure_ours(model_dir: Path, args, env: dict, logs: Path) -> dict:
    from engine.config import new_run_config

    dataset = Path(env["TIMBRE_HOME"]) / "datasets" / VOICE
    cache = run_child(child_argv("cache", model_dir, dataset, logs / "cache.json"), env, logs / "cache.log",
                      logs / "cache.json", args.timeout)  # fmt: skip
    require_ok(cache, "mel caching")
    if cache.result["clips"] != args.clips:  # metrics rows index the usable clips, in csv order
        raise SystemExit(f"the dataset check kept {cache.result['clips']} of {args.clips} clips: "
                         + "; ".join(cache.result["problems"]))  # fmt: skip
    config = new_run_config(
        VOICE, "ours", family="f5", base_model=str(model_dir), language="en", epochs=args.epochs,
        batch_frames=args.batch_frames, gradient_accumulation=1, learning_rate=LEARNING_RATE,
        max_grad_norm=MAX_GRAD_NORM, validate_every=0, save_every=args.epochs, keep_checkpoints=1, gpus=0,
        seed=SEED, evaluate=False,
    ).save_new()  # fmt: skip
    argv = [sys.executable, "-m", "bench.engine_loop", "train", str(config), str(logs / "ours.json")]
    train = run_child(argv, env, logs / "ours.log", logs / "ours.json", args.timeout)
    require_ok(train, "our loop")
    rows = [json.loads(line) for line in (config.parent / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train"]
    mel_frames = [int(m["mel"].shape[0]) for m in cache_features(dataset)]
    figures = summarise(train, [r["time"] for r in rows], [len(r["samples"]) for r in rows],
                        [sum(mel_frames[i] for i in r["samples"]) for r in rows], args.epochs, args.warmup)  # fmt: skip
    figures["loop_reported_samples_per_second_median"] = statistics.median(
        r["samples_per_second"] for r in rows[args.warmup :]
    )
    figures["torch_threads"] = train.result.get("torch_threads")
    figures["data"] = "mels cached beforehand"
    figures["caching"] = {"seconds": cache.result["seconds"], "clips": cache.result["clips"],
                          "computed": cache.result["computed"], "process_seconds": cache.ended - cache.launched}  # fmt: skip
    return figures


def cache_features(dataset: Path) -> list[dict]:
    """The cached ``{"mel", "samples"}`` of train.csv's clips, in csv order (all cached by now)."""
    from engine.models.f5.train import MelCache
    from engine.training.data import read_metadata

    mels = MelCache(dataset / "cache")
    return [mels.features(clip.audio_path) for clip in read_metadata(dataset / "train.csv")]


def measure_f5(model_dir: Path, args, env: dict, logs: Path, data: str) -> dict:
    dataset = Path(env["TIMBRE_HOME"]) / "datasets" / VOICE
    name = f"f5-{data}"
    result = logs / f"{name}.json"
    argv = child_argv("f5", model_dir, dataset, result, "--output", str(logs / f"{name}-ckpts"), "--data", data,
                      "--epochs", str(args.epochs), "--batch-frames", str(args.batch_frames),
                      "--threads", str(args.threads), "--workers", str(args.f5_workers))  # fmt: skip
    run = run_child(argv, env, logs / f"{name}.log", result, args.timeout)
    require_ok(run, f"f5_tts's Trainer ({data})")
    out = run.result
    if len(out["step_ends"]) != len(out["clips"]):
        raise SystemExit(f"{name}: {len(out['step_ends'])} updates timed but {len(out['clips'])} forward passes")
    figures = summarise(run, out["step_ends"], out["clips"], out["frames"], args.epochs, args.warmup)
    figures.update(
        torch_threads=out["torch_threads"],
        num_loader_workers=out["num_workers"],
        final_save_seconds=out["train_returned"] - out["step_ends"][-1],
        data="audio loaded + mel computed per step" if data == "raw" else "our cached mels (preprocessed_mel)",
    )
    return figures


# --------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    import platform

    import psutil
    import torch

    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cpu_threads": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        **{pkg: importlib.metadata.version(pkg) for pkg in ("torch", "f5-tts", "accelerate", "ema-pytorch")},
    }


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def format_report(report: dict) -> str:
    header = ("loop", "samples/s", "audio s/s", "median step", "updates", "epoch s", "start-up", "peak RSS",
              "tree PSS", "threads", "others' CPU")  # fmt: skip
    rows = []
    for name, r in report["loops"].items():
        epoch = "-" if r["epoch_seconds_median"] is None else f"{r['epoch_seconds_median']:.2f} s"
        rows.append((name, f"{r['samples_per_second']:.1f}", f"{r['audio_seconds_per_second']:.1f}",
                     f"{r['median_step_seconds']:.3f} s", f"{r['updates']} ({r['updates_per_epoch']}/epoch)", epoch,
                     f"{r['startup_seconds']:.1f} s", _gib(r["memory"]["peak_rss_bytes"]),
                     _gib(r["memory"]["peak_tree_pss_bytes"]), str(r["torch_threads"]),
                     f"{r['machine_load']['others_cpu_cores']:.2f} cores"))  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *map(line, rows), ""]
    busiest = max(r["machine_load"]["others_cpu_cores"] for r in report["loops"].values())
    if busiest > 0.25:
        out.append(f"warning: other processes kept up to {busiest:.2f} CPU cores busy during a measurement "
                   f"({report['machine']['cpu_threads']} in all); CPU timings from a shared machine are noisy")  # fmt: skip
    ours = report["loops"]["ours"]
    out.append(f"ours: loop-reported samples/s (metrics.jsonl, median after warm-up) "
               f"{ours['loop_reported_samples_per_second_median']:.1f}; mel caching once per dataset "
               f"{ours['caching']['seconds']:.2f} s for {ours['caching']['clips']} clips")  # fmt: skip
    for name, r in report["loops"].items():
        extra = "" if name == "ours" else (f"; {r['num_loader_workers']} DataLoader worker(s); final model_last.pt "
                                           f"{r['final_save_seconds']:.2f} s (not timed)")  # fmt: skip
        out.append(f"{name}: {r['data']}; whole run incl. start-up {r['whole_run_samples_per_second']:.1f} "
                   f"samples/s, {r['train_seconds']:.1f} s to the last update, process {r['process_seconds']:.1f} s, "
                   f"{r['clips_per_epoch']} clips/epoch{extra}")  # fmt: skip
    s, m, durations = report["settings"], report["machine"], report["clip_seconds"]
    out += [
        f"steady state: updates {s['warmup'] + 1}-N of {s['epochs']} epochs, batches of up to {s['batch_frames']} "
        f"mel frames, {len(durations)} clips of {min(durations):.1f}-{max(durations):.1f} s "
        f"({sum(durations):.0f} s), tiny F5-TTS (DiT 2 x 64), CPU",
        f"machine: {m['cpu']}, {m['cpu_threads']} CPU threads, {m['memory_gib']} GiB"
        + (f", {m['gpu']}" if m["gpu"] else "")
        + f"; Python {m['python']}, torch {m['torch']}, f5-tts {m['f5-tts']}, accelerate {m['accelerate']}, "
        f"ema-pytorch {m['ema-pytorch']}",
        f"command: {report['command']}",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.f5_throughput", description="F5-TTS training throughput: our loop vs f5_tts's Trainer."
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs per loop")
    parser.add_argument("--batch-frames", type=int, default=1200, help="mel frames per batch at most (both loops)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2, help="first updates left out of the throughput")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for every loop")
    parser.add_argument("--f5-data", default="raw,mel", help="f5_tts Trainer runs: raw (mels per step), mel, or both")
    parser.add_argument("--f5-workers", type=int, default=1, help="DataLoader workers of F5's Trainer (at least 1)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to each child process")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary TIMBRE_HOME and logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child_main(argv[1:])
    args = build_parser().parse_args(argv)
    f5_data = [d for d in args.f5_data.split(",") if d]
    if not set(f5_data) <= set(F5_DATA) or args.warmup < 1 or args.f5_workers < 1 or args.threads < 1:
        raise SystemExit("need --f5-data from raw,mel, --warmup >= 1, --f5-workers >= 1, --threads >= 1")

    workdir = Path(tempfile.mkdtemp(prefix="timbre-f5-bench-"))
    home, logs = workdir / "home", workdir / "logs"
    logs.mkdir(parents=True)
    os.environ["TIMBRE_HOME"] = str(home)
    offline = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env = dict(os.environ, TIMBRE_HOME=str(home), PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS=str(args.threads), **offline)  # fmt: skip
    with scratch(workdir, args.keep, f" (logs in {logs})"):
        from engine.models import get_family

        print(f"writing the tiny F5-TTS model and {args.clips} espeak-ng clips in {workdir}", flush=True)
        model_dir = get_family("f5").write_random_model(workdir / "model-f5-tiny", "tiny")
        durations = write_dataset(home, args.clips)
        (home / "datasets" / VOICE / "validation.csv").write_text("audio_file|text|speaker_name\n", encoding="utf-8")
        report = {
            "command": shlex.join(["python", "-m", "bench.f5_throughput", *argv]),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine(),
            "clip_seconds": durations,
            "loops": {},
        }
        print("our loop: caching mels, then training", flush=True)
        report["loops"]["ours"] = measure_ours(model_dir, args, env, logs)
        for data in f5_data:
            print(f"f5_tts Trainer ({data}): training", flush=True)
            report["loops"][f"f5 Trainer ({data})"] = measure_f5(model_dir, args, env, logs, data)
        print_report(format_report(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
