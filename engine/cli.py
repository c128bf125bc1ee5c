"""The ``python -m engine`` commands (a contract: tests and users depend on them).

Thin: parse, call the engine, print. The engine's own errors (``engine.errors.TimbreError``) and
file-system errors become one ``error: …`` line and a non-zero exit; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from engine.config import FIELD_HELP, ConfigError, TrainConfig, new_run_config
from engine.errors import TimbreError

#: The GenerationSettings fields that ``generate`` takes as options, with their argparse types.
GENERATION_OPTIONS = {
    "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float, "length_penalty": float,
    "speed": float, "seed": int, "max_seconds": float, "split_sentences": bool, "nfe_step": int,
    "cfg_strength": float, "sway_sampling_coef": float, "use_ema": bool,
}  # fmt: skip


def _milestones(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones must be whole epochs separated by commas, got {text!r}") from None


def _gpus(text: str) -> int | list[int]:
    try:
        return [int(x) for x in text.split(",")] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus takes a count or device ids like 0,1; got {text!r}") from None


class _GenerationHelpFormatter(argparse.HelpFormatter):
    """Shows ``generate``'s sampling options with GenerationSettings' own help texts
    (``engine.generate.synthesis.GENERATION_HELP``), read only when help is printed: engine.generate.synthesis
    loads torch, which the other commands (``evaluate --follow`` renices first) must not pay."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest in GENERATION_OPTIONS:
            from engine.generate.synthesis import GENERATION_HELP

            return GENERATION_HELP[action.dest].replace("%", "%%")
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="Timbre: voice fine-tuning (XTTS-v2, F5-TTS v1)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    family_help = "model family: xtts (XTTS-v2 file layout) or f5 (F5-TTS v1 layout with a Vocos vocoder)"

    p = sub.add_parser("tiny-model", help="write a tiny random model with a family's file layout")
    p.add_argument("directory", type=Path)
    p.add_argument("--family", default="xtts", choices=["xtts", "f5"], help=family_help)

    p = sub.add_parser(
        "random-model", help="write a random model with a family's file layout (tiny, or the released full size)"
    )
    p.add_argument("directory", type=Path)
    p.add_argument("--family", default="xtts", choices=["xtts", "f5"], help=family_help)
    p.add_argument(
        "--size",
        default="tiny",
        choices=["tiny", "full"],
        help="tiny: a few layers, 64 wide (tests); full: the released dimensions (XTTS-v2: GPT 30 x 1024 x 16, "
        "a 1.9 GB model.pth; F5-TTS v1 Base: DiT 22 x 1024 x 16, 1.35 GB)",
    )
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("prepare", help="transcribe voices/VOICE/ into datasets/VOICE/")
    p.add_argument("voice")
    p.add_argument(
        "--backend",
        default="faster-whisper",
        choices=["faster-whisper", "openai-whisper"],
    )
    p.add_argument("--whisper-model", default=None, help="Whisper model name or local path")
    p.add_argument(
        "--language",
        default="auto",
        help="spoken language code (en, es, fr, …) or auto: detected per recording (needs a multilingual model)",
    )
    p.add_argument("--validation-fraction", type=float, default=0.15)

    p = sub.add_parser("config", help="write training/VOICE/RUN/train.yaml")
    p.add_argument("voice")
    p.add_argument("run")
    options = {
        "base_model": str, "epochs": int, "learning_rate": float, "text_loss_weight": float,
        "mel_loss_weight": float, "milestones": _milestones, "gamma": float, "batch_size": int,
        "gradient_accumulation": int, "validate_every": int, "save_every": int, "gpus": _gpus, "seed": int,
        "keep_checkpoints": int, "max_steps": int, "precision": str, "language": str, "init_weights": str,
        "eval_seed": int, "eval_backend": str, "eval_whisper_model": str, "family": str, "lr_schedule": str,
        "warmup_fraction": float, "warmup_min_updates": int, "batch_frames": int, "ema_decay": float,
        "weight_decay": float, "max_grad_norm": float, "min_audio_seconds": float, "max_audio_seconds": float,
        "optimizer": str,
    }  # fmt: skip
    for name, kind in options.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            help=FIELD_HELP[name],
        )
    p.add_argument(
        "--freeze",
        type=lambda s: [x for x in s.split(",") if x],
        default=None,
        help=FIELD_HELP["freeze"],
    )
    p.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=None, help=FIELD_HELP["evaluate"])
    p.add_argument(
        "--eval-sentences",
        type=Path,
        default=None,
        help="a UTF-8 text file with one evaluation sentence per line (default: 8 in the run's language)",
    )

    p = sub.add_parser(
        "branch", help="start a new run from a checkpoint's weights (e.g. the last good one before a spike)"
    )
    p.add_argument("voice")
    p.add_argument("run", help="the run whose checkpoint to start from")
    p.add_argument("new_run")
    p.add_argument("--checkpoint", default="latest", help="latest or step-NNNNNNN")
    p.add_argument("--learning-rate-factor", type=float, default=0.5, help="new learning rate = old x this")

    p = sub.add_parser("export", help="pack a run's checkpoint into a zip that coqui-tts's Xtts loads")
    p.add_argument("voice")
    p.add_argument("run")
    p.add_argument("--checkpoint", default="latest", help="latest, best (the best scored) or step-NNNNNNN")
    p.add_argument("--out", type=Path, default=None, help="zip path (default outputs/VOICE/exports/…)")

    p = sub.add_parser("import", help="unpack an exported zip into models/imported/NAME/")
    p.add_argument("zip", type=Path)
    p.add_argument("name")

    p = sub.add_parser("train", help="train (or resume) the run described by a train.yaml")
    p.add_argument("config", type=Path)

    p = sub.add_parser("generate", help="speak TEXT in VOICE's voice", formatter_class=_GenerationHelpFormatter)
    p.add_argument("voice")
    p.add_argument("text")
    p.add_argument("--run", default=None, help="a run of the voice; omitted: the base model")
    p.add_argument("--checkpoint", default="latest", help="latest, best (the best scored) or step-NNNNNNN")
    p.add_argument("--base-model", default=None)
    p.add_argument("--language", default=None, help="default: the run's language, else the dataset's, else en")
    for name, kind in GENERATION_OPTIONS.items():
        # help: a stand-in; _GenerationHelpFormatter prints GenerationSettings' text for the field.
        flag = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=name, **flag)
    p.add_argument(
        "--candidates",
        type=int,
        default=1,
        help="speak the text N times (1 to 16) with seeds seed, seed+1, ...; prints every path",
    )
    p.add_argument("--out", type=Path, default=None, help="the WAV to write (one candidate only)")

    p = sub.add_parser(
        "evaluate",
        help="score a run's checkpoints (WER/CER, SECS) against the base model; writes training/VOICE/RUN/eval/",
    )
    p.add_argument("voice")
    p.add_argument("run")
    p.add_argument("--checkpoints", default="latest", help="latest, best, all, or step-NNNNNNN[,step-NNNNNNN...]")
    p.add_argument("--sentences", type=int, default=None, help="score only the first N evaluation sentences")
    p.add_argument("--whisper-model", default=None, help="Whisper model name or local path (default: the voice's)")
    p.add_argument("--backend", default=None, choices=["faster-whisper", "openai-whisper"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--follow", type=int, default=None, metavar="PID", help=argparse.SUPPRESS)

    p = sub.add_parser("score", help="score a recording: SECS against VOICE's dataset clips, WER/CER with --text")
    p.add_argument("voice")
    p.add_argument("audio", type=Path)
    p.add_argument("--text", default=None, help="what the recording should say")
    p.add_argument("--language", default=None, help="default: the dataset's language")
    p.add_argument("--whisper-model", default=None, help="Whisper model name or local path (default: the voice's)")
    p.add_argument("--backend", default=None, choices=["faster-whisper", "openai-whisper"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def _yield_cpu() -> str:
    """Make this process (the background evaluator) run only on CPU time the trainer leaves.

    Linux: the ``SCHED_IDLE`` policy, inherited by every thread started after, so the kernel
    runs it only on an otherwise idle core and preempts it at once for the trainer. Measured
    with ``python -m bench.eval_cost`` on 2 cores: ``nice 10`` still slowed the trainer's
    steps 5x, since torch's OpenMP threads wait at every parallel region for a thread that the
    evaluator's time slices had pushed off its core. Elsewhere: the lowest ``nice`` priority."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass
    if hasattr(os, "nice"):
        os.nice(19)
        return "nice 19"
    return "normal"


def _wait_for_cpu_trainer(voice: str, run: str, pid: int) -> None:
    """The background evaluator of a run trained on the CPU starts scoring once its trainer has
    ended (engine.training.evaluation says why); it waits here, before importing torch, so that even
    its imports leave the cores to the trainer."""
    import time

    from engine import paths, runs

    run_dir = paths.run_dir(voice, run)
    try:
        on_cpu = TrainConfig.load(run_dir / "train.yaml").gpus == 0
    except (ConfigError, OSError):
        return
    waiting = on_cpu and (runs.is_pid_alive(pid) or runs.live_trainer_pid(run_dir) is not None)
    if not waiting:
        return
    print("the trainer runs on the CPU: the checkpoints it keeps are scored once it has ended", flush=True)
    while runs.is_pid_alive(pid) or runs.live_trainer_pid(run_dir) is not None:
        time.sleep(2.0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except (TimbreError, OSError) as exc:  # anything else is a bug: its traceback is printed
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.command in ("tiny-model", "random-model"):
        from engine.models import get_family

        family = get_family(args.family)
        size, seed = getattr(args, "size", "tiny"), getattr(args, "seed", 0)
        folder = family.write_random_model(args.directory, size, seed)
        print(f"wrote a {size} random {family.title}-layout model to {folder}")
        return 0
    if args.command == "prepare":
        from engine.dataset.prepare import prepare_command

        return prepare_command(
            args.voice, backend=args.backend, whisper_model=args.whisper_model,
            language=args.language, validation_fraction=args.validation_fraction,
        )  # fmt: skip
    if args.command == "config":
        values = {k: v for k, v in vars(args).items() if k not in ("command",) and v is not None}
        if "eval_sentences" in values:
            lines = values["eval_sentences"].read_text(encoding="utf-8").splitlines()
            values["eval_sentences"] = [line.strip() for line in lines if line.strip()]
        try:
            config = new_run_config(**values)  # no --language: the dataset's language
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {config.save_new()}")
        return 0
    if args.command == "branch":
        from engine.training.branch import branch_run

        path = branch_run(args.voice, args.run, args.new_run, args.checkpoint, args.learning_rate_factor)
        print(f"wrote {path}")
        return 0
    if args.command == "export":
        from engine.generate.export import export_model

        print(export_model(args.voice, args.run, checkpoint=args.checkpoint, out=args.out))
        return 0
    if args.command == "import":
        from engine.generate.export import import_model

        print(import_model(args.zip, args.name))
        return 0
    if args.command == "train":
        from engine.training.loop import train

        if not args.config.is_file():
            print(f"error: {args.config}: no such train.yaml", file=sys.stderr)
            return 1
        config = TrainConfig.load(args.config)
        if config.world_size() > 1 and "WORLD_SIZE" not in os.environ:
            # Several GPUs: run the same command under torchrun, as the app's launcher does.
            import subprocess

            from engine.training.process import training_argv

            env = dict(os.environ)
            if isinstance(config.gpus, list):
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, config.gpus))
            return subprocess.run(training_argv(config, args.config.resolve()), env=env).returncode
        if isinstance(config.gpus, list) and "WORLD_SIZE" not in os.environ:
            # One GPU named by id (gpus: [2]): make it this process's cuda:0, as the app's launcher
            # does, before anything touches CUDA (the background evaluator inherits it too).
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, config.gpus))
        code = train(args.config)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # A torchrun worker whose run is saved and whose process group is destroyed: leave
            # without the interpreter's teardown. gloo's threads could still abort it there
            # ("terminate called without an active exception", 1 run in CI even after the
            # barrier), which torchrun reports as a failed job although nothing was lost.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    if args.command == "generate":
        return _generate(args)
    if args.command == "evaluate":
        if args.follow is not None:
            _yield_cpu()  # before the heavy imports, which would slow the trainer too
            _wait_for_cpu_trainer(args.voice, args.run, args.follow)
        from engine.training import evaluation

        if args.follow is not None:
            return evaluation.follow(args.voice, args.run, args.follow, args.whisper_model, args.backend)
        summary = evaluation.evaluate_run(
            args.voice, args.run, args.checkpoints, args.sentences, args.whisper_model, args.backend, args.device,
            log=lambda line: print(line, file=sys.stderr),
        )  # fmt: skip
        print(json.dumps(summary, indent=1, ensure_ascii=False))
        return 0
    if args.command == "score":
        from engine import languages
        from engine.speech import audio
        from engine.speech.scoring import Scorer

        language = args.language or languages.default_language(args.voice)
        scorer = Scorer(args.voice, language, args.backend, args.whisper_model, args.device,
                        log=lambda line: print(line, file=sys.stderr))  # fmt: skip
        row = scorer.score(audio.load_audio(args.audio, 16_000).numpy(), args.text)
        print(
            json.dumps({"audio": str(args.audio), "voice": args.voice, **row, **scorer.describe()}, ensure_ascii=False)
        )
        return 0
    raise AssertionError(args.command)


def _generate(args) -> int:
    """``generate``: the settings from their options (a bad value is named by its option), then one
    output (``--out`` allowed) or ``--candidates N`` outputs; prints each path."""
    from engine.generate.synthesis import (
        GenerationError,
        GenerationSettings,
        default_language,
        generate_candidates,
        generate_speech,
    )

    values = {name: getattr(args, name) for name in GENERATION_OPTIONS if getattr(args, name) is not None}
    try:
        settings = GenerationSettings(**values)
    except GenerationError as exc:
        # GenerationSettings names the field ("top_p must be in (0, 1], got 2.0"); name the option.
        field = next((name for name in values if str(exc).startswith(name)), None)
        option = f"--{field.replace('_', '-')}: " if field else ""
        print(f"error: {option}{exc}", file=sys.stderr)
        return 2
    if not 1 <= args.candidates <= 16:
        print(f"error: --candidates must be between 1 and 16, got {args.candidates}", file=sys.stderr)
        return 2
    if args.candidates > 1 and args.out is not None:
        print("error: --out names one file; with --candidates the outputs go to outputs/VOICE/", file=sys.stderr)
        return 2
    common = dict(
        run=args.run, checkpoint=args.checkpoint, base_model=args.base_model, settings=settings,
        language=args.language or default_language(args.voice, args.run),
    )  # fmt: skip
    if args.candidates > 1:
        outputs = generate_candidates(args.voice, args.text, candidates=args.candidates, **common)
    else:
        outputs = [generate_speech(args.voice, args.text, out=args.out, **common)]
    for path in outputs:
        print(path)
    return 0
