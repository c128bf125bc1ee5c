"""XTTS-v2 at full size through the normal commands: time, memory and checkpoint size of each step.

``python -m bench.full_size [--device cpu|cuda] [--size full|tiny] [--clips N] [--check-exact] [--timeout S]
[--json PATH] [--keep]`` (run from the repository root with the project's Python)

In a temporary TIMBRE_HOME, as a user would, each step a ``python -m engine`` child process:

1. ``random-model DIR --size full``: a random model with XTTS-v2's file layout and dimensions
   (:data:`engine.models.RANDOM_MODEL_SIZES`: GPT 30 layers x 1024 x 16 heads, 441 M parameters);
2. ``config bench full --gpus 0 --batch-size 2 --max-steps 2 --epochs 1 --no-evaluate`` on an
   espeak-ng dataset (``bench.train_throughput.write_dataset``; one clip also the voice's
   reference recording);
3. ``train``: 2 optimizer steps at batch 2, then the final save;
4. ``train`` again after ``max_steps: 4`` in train.yaml: resumes from step-0000002 (the step
   counter goes on at 3) for 2 more steps and saves; ``--check-exact`` also trains a second run
   straight to step 4 and compares the weights (``torch.equal``) and the logged losses;
5. ``generate bench SENTENCE --run full --max-seconds 3``: one sentence with the checkpoint.

For each child: wall seconds, peak RSS (``os.wait4``: the child or its largest descendant) and
the peak summed PSS of its process tree (polled, ``bench.train_throughput.run_child``). From
the run folder: the start-up before the first step, each step's seconds, each save's seconds
(a ``checkpoint`` event's time in metrics.jsonl minus the end of the step before it) and the
checkpoint's size on disk (model.safetensors, state.pt). A random model's speech is noise: the
generation figures are its cost, not its quality.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.train_throughput import (
    VOICE,
    ChildRun,
    machine,
    memory,
    print_report,
    require_ok,
    run_child,
    scratch,
    write_dataset,
)

RUN = "full"
SENTENCE = "The quick brown fox jumps over the lazy dog."
STEPS = 2  # optimizer steps before the save, and again after the resume


def engine_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def phase(name: str, argv: list[str], env: dict, logs: Path, timeout: float) -> tuple[dict, ChildRun]:
    """Run one child, fail with the end of its log if it fails; its seconds and memory."""
    print(f"{name}: {shlex.join(argv[1:])}", flush=True)
    run = run_child(argv, env, logs / f"{name}.log", logs / f"{name}.none", timeout)
    require_ok(run, name)
    figures = {
        "seconds": round(run.ended - run.launched, 2),
        "memory": memory(run),
        "cpu_seconds": round(run.cpu_seconds, 1),
        "others_cpu_cores": round(run.others_cpu_cores, 2),
    }
    print(f"  {figures['seconds']:.1f} s, peak RSS {gib(figures['memory']['peak_rss_bytes'])}", flush=True)
    return figures, run


def training_figures(run_dir: Path, run: ChildRun, first_step: int) -> dict:
    """From metrics.jsonl and the checkpoints: start-up, step and save seconds of the steps from
    ``first_step`` on (this process's), and the size of each checkpoint it saved."""
    from engine import runs

    rows, _ = runs.read_metrics(run_dir)
    steps = [r for r in rows if r.get("split") == "train" and r["step"] >= first_step]
    if not steps:
        raise SystemExit(f"{run_dir}: no training step from step {first_step} in metrics.jsonl")
    saves = []
    for event in (r for r in rows if r.get("event") == "checkpoint" and r["step"] >= first_step):
        before = max(r["time"] for r in rows if r.get("split") == "train" and r["step"] == event["step"])
        folder = runs.find_checkpoint(run_dir, runs.checkpoint_name(event["step"])).path
        sizes = {name: (folder / name).stat().st_size for name in ("model.safetensors", "state.pt")}
        saves.append({"step": event["step"], "reason": event["reason"], "seconds": round(event["time"] - before, 2),
                      "bytes": sizes})  # fmt: skip
    ends = [run.launched] + [r["time"] for r in steps]
    ready = logged_at(run_dir, run.launched, "training: ")  # model, data and optimizer ready, resumed
    return {
        "steps": [r["step"] for r in steps],
        "startup_seconds": round(steps[0]["time"] - run.launched, 2),
        "ready_seconds": None if ready is None else round(ready - run.launched, 1),
        "first_step_seconds": None if ready is None else round(steps[0]["time"] - ready, 1),
        "step_seconds": [round(b - a, 2) for a, b in zip(ends[1:-1], ends[2:], strict=True)] or None,
        "losses": [{k: r[k] for k in ("step", "loss_text_ce", "loss_mel_ce", "loss")} for r in steps],
        "saves": saves,
        "after_last_save_seconds": round(run.ended - max(r["time"] for r in rows), 2),
    }


def logged_at(run_dir: Path, since: float, prefix: str) -> float | None:
    """The time (1 s resolution) of the first train.log line from ``since`` on whose text starts
    with ``prefix``; None when there is none (the log's wording changed)."""
    for line in (run_dir / "train.log").read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        if stamp >= int(since) and line[20:].startswith(prefix):
            return stamp
    return None


def set_max_steps(config: Path, max_steps: int) -> None:
    """Edit train.yaml as a user would (it is the run's editable description): ``max_steps``."""
    import dataclasses

    from engine.config import TrainConfig

    config.write_text(dataclasses.replace(TrainConfig.load(config), max_steps=max_steps).to_yaml(), encoding="utf-8")


def compare_weights(a: Path, b: Path) -> bool:
    """Whether two model.safetensors hold the same tensors (``torch.equal`` each), one at a time."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if set(fa.keys()) != set(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def measure(args, workdir: Path) -> dict:
    from engine import models, paths, runs

    home, logs = workdir / "home", workdir / "logs"
    logs.mkdir(parents=True)
    os.environ["TIMBRE_HOME"] = str(home)  # engine.paths in this process reads the same run folders
    env = dict(os.environ, TIMBRE_HOME=str(home), PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    gpus = "1" if args.device == "cuda" else "0"
    phases: dict[str, dict] = {}
    model = workdir / f"model-{args.size}"

    phases["random-model"], _ = phase("random-model", engine_argv("random-model", str(model), "--size", args.size),
                                      env, logs, args.timeout)  # fmt: skip
    model_files = {p.name: p.stat().st_size for p in sorted(model.iterdir())}

    durations = write_dataset(home, args.clips)
    (home / "voices" / VOICE).mkdir(parents=True)
    shutil.copy(home / "datasets" / VOICE / "wavs" / "clip000.wav", home / "voices" / VOICE / "reference.wav")

    def config(run: str, max_steps: int) -> Path:
        argv = engine_argv("config", VOICE, run, "--base-model", str(model), "--gpus", gpus, "--batch-size", "2",
                           "--max-steps", str(max_steps), "--epochs", "1", "--no-evaluate", "--keep-checkpoints", "2")  # fmt: skip
        phases[f"config-{run}"], _ = phase(f"config-{run}", argv, env, logs, args.timeout)
        return paths.run_dir(VOICE, run) / "train.yaml"

    yaml_path = config(RUN, STEPS)
    run_dir = yaml_path.parent
    phases["train"], first = phase("train", engine_argv("train", str(yaml_path)), env, logs, args.timeout)
    phases["train"].update(training_figures(run_dir, first, 1))

    set_max_steps(yaml_path, 2 * STEPS)
    phases["resume"], second = phase("resume", engine_argv("train", str(yaml_path)), env, logs, args.timeout)
    phases["resume"].update(training_figures(run_dir, second, STEPS + 1))
    rows, _ = runs.read_metrics(run_dir)
    steps = [r["step"] for r in rows if r.get("split") == "train"]
    resumed = f"resumed from {runs.checkpoint_name(STEPS)}" in (run_dir / "train.log").read_text()
    if steps != list(range(1, 2 * STEPS + 1)) or not resumed:
        raise SystemExit(
            f"the resume did not go on from step {STEPS}: steps {steps}, 'resumed' in train.log: {resumed}"
        )
    resume = {"steps": steps, "resumed_from": runs.checkpoint_name(STEPS)}

    if args.check_exact:
        straight_yaml = config("straight", 2 * STEPS)
        phases["straight"], third = phase("straight", engine_argv("train", str(straight_yaml)), env, logs, args.timeout)
        phases["straight"].update(training_figures(straight_yaml.parent, third, 1))
        name = runs.checkpoint_name(2 * STEPS)
        same_weights = compare_weights(
            runs.find_checkpoint(run_dir, name).path / "model.safetensors",
            runs.find_checkpoint(straight_yaml.parent, name).path / "model.safetensors",
        )
        split_losses = phases["train"]["losses"] + phases["resume"]["losses"]
        resume.update(exact_weights=same_weights, exact_losses=split_losses == phases["straight"]["losses"])

    out = workdir / "speech.wav"
    argv = engine_argv(
        "generate", VOICE, SENTENCE, "--run", RUN, "--seed", "1", "--max-seconds", "3", "--out", str(out)
    )
    phases["generate"], _ = phase("generate", argv, env, logs, args.timeout)
    meta = json.loads(out.with_suffix(".json").read_text())
    phases["generate"].update(audio_seconds=meta["seconds"], real_time_factor=meta["real_time_factor"],
                              checkpoint=meta["checkpoint"])  # fmt: skip

    config_args = models.load_xtts_config(model).model_args
    vocab = json.loads((model / "vocab.json").read_text(encoding="utf-8"))
    text_tokens = 1 + max([*vocab["model"]["vocab"].values(), *(t["id"] for t in vocab["added_tokens"])])
    return {
        "command": shlex.join(["python", "-m", "bench.full_size", *args.argv]),
        "settings": {
            "device": args.device,
            "size": args.size,
            "clips": args.clips,
            "batch_size": 2,
            "steps": STEPS,
            "gpus": gpus,
        },
        "machine": machine(args.device),
        "model": {
            "layers": config_args.gpt_layers,
            "width": config_args.gpt_n_model_channels,
            "heads": config_args.gpt_n_heads,
            "text_tokens": text_tokens,
            "files": model_files,
        },  # fmt: skip
        "clip_seconds": durations,
        "phases": phases,
        "resume": resume,
    }


def gib(n: int | None) -> str:
    return "-" if not n else f"{n / 2**30:.2f} GiB"


def size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_report(report: dict) -> str:
    lines = [f"{'phase':<18}{'seconds':>9}{'peak RSS':>12}{'tree PSS':>12}{'CPU s':>9}{'others CPU':>12}"]
    for name, p in report["phases"].items():
        mem = p["memory"]
        lines.append(f"{name:<18}{p['seconds']:>9.1f}{gib(mem['peak_rss_bytes']):>12}"
                     f"{gib(mem['peak_tree_pss_bytes']):>12}{p['cpu_seconds']:>9.0f}{p['others_cpu_cores']:>12.2f}")  # fmt: skip
    lines.append("")
    for name in ("train", "resume", "straight"):
        p = report["phases"].get(name)
        if not p:
            continue
        steps = ", ".join(f"{s:.1f}" for s in p["step_seconds"] or [])
        ready = (
            ""
            if p["ready_seconds"] is None
            else (f" (ready to train after {p['ready_seconds']:.0f} s, first step {p['first_step_seconds']:.0f} s)")
        )
        lines.append(f"{name}: steps {p['steps']}, start-up to the end of the first step {p['startup_seconds']:.1f} s"
                     + ready + (f", later steps {steps} s" if steps else ""))  # fmt: skip
        for save in p["saves"]:
            sizes = ", ".join(f"{k} {size(v)}" for k, v in save["bytes"].items())
            lines.append(f"  save of step {save['step']} ({save['reason']}): {save['seconds']:.2f} s; {sizes}")
    resume = report["resume"]
    lines.append(f"resume: from {resume['resumed_from']}, steps logged {resume['steps']}"
                 + (f"; against a straight run: weights equal {resume['exact_weights']}, losses equal "
                    f"{resume['exact_losses']}" if "exact_weights" in resume else ""))  # fmt: skip
    g = report["phases"]["generate"]
    lines.append(f"generate: {g['audio_seconds']:.2f} s of audio (capped at 3 s), RTF {g['real_time_factor']:.2f}, "
                 f"checkpoint {g['checkpoint']}")  # fmt: skip
    m = report["model"]
    lines.append(f"model: GPT {m['layers']} x {m['width']} x {m['heads']} heads, {m['text_tokens']} text tokens; "
                 + ", ".join(f"{k} {size(v)}" for k, v in m["files"].items() if v > 2**20))  # fmt: skip
    c = report["machine"]
    lines.append(f"machine: {c['cpu']}, {c['cpu_threads']} CPU threads, {c['memory_gib']} GiB"
                 + (f", {c['gpu']}" if "gpu" in c else "") + f"; torch {c['torch']}, coqui-tts {c['coqui-tts']}")  # fmt: skip
    lines.append(f"command: {report['command']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.full_size",
        description="The full-size XTTS-v2 through random-model, config, train, resume and generate.",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=["full", "tiny"], default="full", help="tiny: a quick check of this script")
    parser.add_argument("--clips", type=int, default=8, help="espeak-ng clips of the dataset (at least 4)")
    parser.add_argument("--check-exact", action="store_true", help="also train straight to step 4 and compare")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed to each child process")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary TIMBRE_HOME, model and logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.clips < 4:
        raise SystemExit("--clips must be at least 4 (the trainer's min_training_clips)")
    workdir = Path(tempfile.mkdtemp(prefix="timbre-full-size-"))
    print(f"working in {workdir}", flush=True)
    with scratch(workdir, args.keep):
        started = time.time()
        report = measure(args, workdir)
        report["total_seconds"] = round(time.time() - started, 1)
        print_report(format_report(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
