"""Which checkpoint sounds like the voice: every checkpoint of a run speaks the run's held-out
sentences and is scored (:class:`engine.speech.scoring.Scorer`: WER/CER with Whisper, speaker
similarity SECS, pace), against the base model's zero-shot scores on the same sentences,
seeds and references; the best checkpoint is chosen by one rule (:func:`choose_best`).

Files, in ``training/<voice>/<run>/eval/``:

- ``baseline/`` and ``step-NNNNNNN/``: the WAVs (``00.wav``, ``01.wav`` …, 24 kHz) and
  ``scores.json`` (:func:`evaluate_checkpoint`), written last, so a folder without it is
  unfinished;
- ``summary.json``: every scored checkpoint in step order, the ``baseline`` and the ``best``
  (:func:`update_summary`);
- ``evaluator.pid`` and ``evaluate.log``: the background evaluator (:func:`follow`).

While a run trains, the trainer starts one evaluator process at its first save
(:func:`start_evaluator`); it scores each new checkpoint, oldest first, and leaves once the
trainer has exited and nothing is left to score. Why a process of its own beside the trainer:
the trainer never waits for scoring. On a GPU it shares the trainer's GPU, so the scores of a
checkpoint arrive while the run goes on, only when enough memory is free after the trainer has
reserved its own (the first save comes after at least one epoch, when the trainer's caching
allocator holds its peak); otherwise it waits and scores everything once the run has ended.
A trainer on the CPU needs every core: scoring beside it slowed its steps 1.3 to 5 times in
``bench/eval_cost.py`` on 2 cores, even at the lowest CPU priority, so then the evaluator
waits for the run to end (and for a resumed run to end again). It always runs at the lowest
CPU priority (``SCHED_IDLE`` on Linux, ``engine.cli``). The trainer does not prune a checkpoint the live evaluator has not scored yet, nor the
best one (:func:`protected_steps`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import paths, runs
from engine.errors import TimbreError
from engine.files import write_bytes_atomic
from engine.speech.scoring import CER_ABSOLUTE as CER_ABSOLUTE  # re-exported: part of choose_best's rule

EVAL_DIR = runs.EVAL_DIR
SUMMARY_FILE = runs.EVAL_SUMMARY
SCORES_FILE = "scores.json"
BASELINE = "baseline"
PID_FILE = "evaluator.pid"
LOG_FILE = "evaluate.log"

CER_FACTOR = 1.5
"""A checkpoint may be the best only if its median CER is at most this multiple of the base
model's (or under :data:`CER_ABSOLUTE`): fine-tuning must not cost intelligibility."""


POLL_SECONDS = 2.0
"""How often the background evaluator looks for new checkpoints."""

GPU_MEMORY_NEEDED = 6 * 2**30
"""Free GPU memory (bytes) the evaluator wants before it shares the trainer's GPU: XTTS-v2 in
fp32 (about 1.9 GB of weights) with its activations, and a Whisper model (small: 0.5 GB in
fp16, large-v3: 3 GB), with room to spare."""

MIN_SECONDS_CAP = 4.0
SECONDS_CAP_FACTOR = 2.5
DEFAULT_CHARS_PER_SECOND = 14.0
"""Each sentence may speak for at most ``max(MIN_SECONDS_CAP, SECONDS_CAP_FACTOR × its
characters / the voice's characters per second)`` seconds (14 characters per second, a typical
English reading pace, when the dataset gives none): a babbling tail is cut and still counted
(its pace is flagged) without spending a model's full 28 s on it."""


class EvaluationError(TimbreError, ValueError):
    """A run or checkpoint that cannot be evaluated; the message names it and the reason."""


@dataclass(frozen=True)
class EvalPlan:
    """What stays fixed across a run's evaluation: the sentences, their seeds, the language and
    the Whisper model. Two scores are comparable when their plans' :meth:`setup` are equal."""

    voice: str
    run: str
    sentences: tuple[str, ...]
    seed: int
    language: str
    backend: str | None
    whisper_model: str | None
    base_model: str

    @property
    def run_dir(self) -> Path:
        return paths.run_dir(self.voice, self.run)

    def setup(self, scorer=None) -> dict:
        data = {"sentences": list(self.sentences), "seed": self.seed, "language": self.language}
        if scorer is not None:
            data |= {"backend": scorer.backend, "whisper_model": scorer.whisper_model}
        return data


def plan_run(voice: str, run: str, sentences: int | None = None, backend: str | None = None,
             whisper_model: str | None = None) -> EvalPlan:  # fmt: skip
    """The :class:`EvalPlan` of a run from its train.yaml: its ``eval_sentences`` (or the
    language's defaults, none from the training text), the first ``sentences`` of them when
    given, ``eval_seed``, and the Whisper backend/model given here, else ``eval_backend`` /
    ``eval_whisper_model``, else (None) the voice's. Raises EvaluationError (no such run, bad
    count) or ConfigError (a bad train.yaml)."""
    from engine.config import TrainConfig, dataset_texts
    from engine.eval_sentences import default_sentences

    config_path = paths.run_dir(voice, run) / "train.yaml"
    if not config_path.is_file():
        raise EvaluationError(f"voice {voice!r} has no run {run!r} ({config_path} is missing)")
    cfg = TrainConfig.load(config_path)
    chosen = list(cfg.eval_sentences) or default_sentences(
        cfg.language, exclude=[text for _, text in dataset_texts(paths.dataset_dir(voice))]
    )
    if sentences is not None:
        if not 1 <= sentences <= len(chosen):
            raise EvaluationError(
                f"--sentences must be between 1 and {len(chosen)} (the run's sentences), got {sentences}"
            )
        chosen = chosen[:sentences]
    return EvalPlan(
        voice, run, tuple(chosen), cfg.eval_seed, cfg.language, backend or cfg.eval_backend or None,
        whisper_model or cfg.eval_whisper_model or None, str(cfg.base_model_dir()),
    )  # fmt: skip


# --------------------------------------------------------------------------- reading results


def eval_dir(run_dir: str | os.PathLike, name: str | None = None) -> Path:
    """``<run>/eval/`` or, with ``name`` (``baseline`` or ``step-NNNNNNN``), its folder there."""
    base = Path(run_dir) / EVAL_DIR
    return base / name if name else base


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_scores(run_dir: str | os.PathLike, name: str) -> dict | None:
    """``eval/<name>/scores.json`` as a dict, or None when it is missing or unreadable."""
    return _read_json(eval_dir(run_dir, name) / SCORES_FILE)


def read_summary(run_dir: str | os.PathLike) -> dict:
    """``eval/summary.json`` as a dict; ``{}`` when the run has none yet."""
    return _read_json(eval_dir(run_dir) / SUMMARY_FILE) or {}


def _write_json(path: Path, data: dict) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- the best checkpoint


def aggregate(rows: list[dict]) -> dict:
    """A checkpoint's scores from its per-sentence rows: ``wer``, ``cer`` and ``secs``,
    ``secs_xtts`` are means over the sentences (as Seed-TTS reports them; SECS over the
    sentences that could be embedded, None when none could), ``wer_median`` and
    ``cer_median`` medians (the best rule uses ``cer_median``, which one garbled sentence moves
    less), ``cps_ratio`` the median pace ratio, ``flagged`` the sentences with a flag out of
    ``sentences``."""

    def mean(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.fmean(values), 4) if values else None

    def median(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    return {
        "wer": mean("wer"), "cer": mean("cer"), "secs": mean("secs"), "secs_xtts": mean("secs_xtts"),
        "wer_median": median("wer"), "cer_median": median("cer"), "cps_ratio": median("cps_ratio"),
        "flagged": sum(1 for r in rows if r.get("flags")), "sentences": len(rows),
    }  # fmt: skip


def choose_best(baseline: dict | None, scored: list[dict]) -> tuple[dict | None, str]:
    """The best checkpoint and why, by the rule: among checkpoints whose median CER is at most
    :data:`CER_FACTOR` × the baseline's (or under :data:`CER_ABSOLUTE`), the highest SECS; ties
    go to the earlier step. When none of those has a Resemblyzer SECS (speech too short or
    not speech-like to embed), XTTS's own speaker-encoder SECS decides instead, and the result
    says so (``"by": "secs_xtts"``).

    Args:
        baseline: the base model's aggregate scores (needs ``cer_median``), or None.
        scored: each checkpoint's aggregate scores with ``name`` and ``step``.

    Returns:
        (``{"name", "step", "by", "secs", "cer_median"}`` or None, a sentence saying why).
    """
    if baseline is None or baseline.get("cer_median") is None:
        return None, "the base model has not been scored yet"
    limit = CER_FACTOR * baseline["cer_median"]
    eligible = [
        s for s in sorted(scored, key=lambda s: s["step"])
        if s.get("cer_median") is not None and (s["cer_median"] <= limit or s["cer_median"] < CER_ABSOLUTE)
    ]  # fmt: skip
    if not eligible:
        return None, (
            f"no checkpoint keeps its median CER within {CER_FACTOR:g}x the base model's "
            f"({baseline['cer_median']:.3f}) or under {CER_ABSOLUTE:g}"
        )
    for key in ("secs", "secs_xtts"):
        candidates = [s for s in eligible if s.get(key) is not None]
        if candidates:
            best = candidates[0]
            for s in candidates[1:]:
                if s[key] > best[key]:  # strictly higher: a tie stays with the earlier step
                    best = s
            why = (
                f"highest {'SECS' if key == 'secs' else 'SECS of the XTTS speaker encoder (no Resemblyzer SECS)'} "
                f"({best[key]:.3f}) among {len(eligible)} checkpoint(s) with median CER within "
                f"{CER_FACTOR:g}x the base model's or under {CER_ABSOLUTE:g}"
            )
            entry = {"name": best["name"], "step": best["step"], "by": key, key: best[key]}
            return entry | {"cer_median": best["cer_median"]}, why
    return None, "no eligible checkpoint has a speaker similarity"


def update_summary(run_dir: str | os.PathLike) -> dict:
    """Rebuild ``eval/summary.json`` from the scores.json files and return it.

    ``checkpoints``: every scored checkpoint in step order (aggregates, ``exists`` whether its
    checkpoint folder is still there, ``comparable`` whether it was scored with the
    baseline's sentences, seeds and Whisper model). ``baseline``: the base model's
    aggregates. ``best``/``best_reason``: :func:`choose_best` over the comparable checkpoints
    that still exist.
    """
    run_dir = Path(run_dir)
    base_scores = read_scores(run_dir, BASELINE)
    setup = base_scores.get("setup") if base_scores else None
    existing = {c.name for c in runs.list_checkpoints(run_dir) if c.complete}
    rows = []
    folder = eval_dir(run_dir)
    for path in sorted(folder.glob("step-*/" + SCORES_FILE)) if folder.is_dir() else []:
        scores = _read_json(path)
        if not scores or not isinstance(scores.get("step"), int):
            continue
        rows.append({
            "name": scores["name"], "step": scores["step"], **scores.get("aggregate", {}),
            "seconds_per_sentence": scores.get("timing", {}).get("seconds_per_sentence"),
            "exists": scores["name"] in existing, "comparable": setup is not None and scores.get("setup") == setup,
        })  # fmt: skip
    baseline = base_scores.get("aggregate") if base_scores else None
    best, reason = choose_best(baseline, [r for r in rows if r["exists"] and r["comparable"]])
    summary = {
        "baseline": baseline, "checkpoints": sorted(rows, key=lambda r: r["step"]), "best": best,
        "best_reason": reason, "setup": setup, "rule": (
            f"among checkpoints whose median CER is at most {CER_FACTOR:g}x the base model's (or under "
            f"{CER_ABSOLUTE:g}), the highest SECS; ties to the earlier step"
        ), "updated": runs.now_iso(),
    }  # fmt: skip
    previous = read_summary(run_dir)
    for key in ("error", "evaluator"):
        if key in previous:
            summary[key] = previous[key]
    _write_json(folder / SUMMARY_FILE, summary)
    return summary


def record_error(run_dir: str | os.PathLike, message: str | None) -> None:
    """Note in summary.json why evaluation cannot go on (None clears the note)."""
    summary = read_summary(run_dir)
    if message is None:
        summary.pop("error", None)
    else:
        summary["error"] = message
    _write_json(eval_dir(run_dir) / SUMMARY_FILE, summary)


# --------------------------------------------------------------------------- scoring checkpoints


def seconds_cap(text: str, language: str, chars_per_second: float | None) -> float:
    """Longest speech (seconds) a sentence may take in evaluation (see :data:`MIN_SECONDS_CAP`)."""
    from engine.speech.scoring import normalise

    rate = chars_per_second or DEFAULT_CHARS_PER_SECOND
    return round(max(MIN_SECONDS_CAP, SECONDS_CAP_FACTOR * len(normalise(text, language)) / rate), 2)


class Evaluator:
    """Loads once what scoring a run needs (the XTTS model, the Whisper model, the voice's
    references) and scores checkpoints with it.

    Args:
        plan: the run's :class:`EvalPlan`.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` for both XTTS and Whisper.

    Raises as :class:`engine.speech.scoring.Scorer`, and ConditioningError when the voice has no
    usable reference recording.
    """

    def __init__(self, plan: EvalPlan, device: str = "auto", log=print):
        from engine.generate import conditioning
        from engine.generate.synthesis import make_synthesizer
        from engine.speech.scoring import Scorer

        self.plan, self.log = plan, log
        self.scorer = Scorer(plan.voice, plan.language, plan.backend, plan.whisper_model, device, log)
        torch_device = None if device == "auto" else device
        self.synthesizer = make_synthesizer(plan.base_model, device=torch_device)  # the run's family
        self.references = conditioning.resolve_references(plan.voice, None)

    def setup(self) -> dict:
        return self.plan.setup(self.scorer)

    def evaluate(self, name: str) -> dict:
        """Score ``name`` (:data:`BASELINE` or a complete ``step-NNNNNNN`` of the run) and write
        ``eval/<name>/``; returns its scores.json. Scores already written with the same
        :meth:`setup` are returned as they are. Raises EvaluationError for a missing or
        incomplete checkpoint."""
        import torch
        import torchaudio.functional as F

        from engine import models
        from engine.generate import conditioning, weights
        from engine.generate.synthesis import GenerationSettings

        plan, run_dir = self.plan, self.plan.run_dir
        setup = self.setup()
        done = read_scores(run_dir, name)
        if done is not None and done.get("setup") == setup:
            return done
        started = time.perf_counter()
        try:
            if name == BASELINE:
                resolved = weights.resolve_model(plan.voice, weights.BASE_MODEL, base_model=plan.base_model)
                step = None
            else:
                resolved = weights.resolve_model(plan.voice, plan.run, name, base_model=plan.base_model)
                step = runs.find_checkpoint(run_dir, name).step
        except (weights.GenerationError, FileNotFoundError, ValueError) as error:
            raise EvaluationError(f"cannot evaluate {name} of run {plan.run!r}: {error}") from None
        self.synthesizer.load(resolved, log=self.log)
        cache = paths.output_dir(plan.voice) / conditioning.LATENTS_DIR
        latents = self.synthesizer.conditioning([r.path for r in self.references], cache_dir=cache, log=self.log)
        load_seconds = time.perf_counter() - started
        folder = eval_dir(run_dir, name)
        folder.mkdir(parents=True, exist_ok=True)
        rows, generate_total, score_total = [], 0.0, 0.0
        rate = self.scorer.reference.chars_per_second
        for index, text in enumerate(plan.sentences):
            settings = GenerationSettings(seed=plan.seed + index, max_seconds=seconds_cap(text, plan.language, rate))
            began = time.perf_counter()
            wav = self.synthesizer.synthesize(text, latents, settings, plan.language).float().cpu()
            generated = time.perf_counter() - began
            wav_name = f"{index:02d}.wav"
            from engine.speech.audio import save_wav

            save_wav(folder / wav_name, wav, models.OUTPUT_SAMPLE_RATE)
            began = time.perf_counter()
            audio_16k = F.resample(wav, models.OUTPUT_SAMPLE_RATE, 16_000).numpy()
            with torch.inference_mode():
                row = self.scorer.score(audio_16k, text, xtts_model=self.synthesizer.model)
            scored = time.perf_counter() - began
            generate_total, score_total = generate_total + generated, score_total + scored
            rows.append({
                "index": index, "text": text, "wav": wav_name, "seed": settings.seed,
                "max_seconds": settings.max_seconds, **row,
                "generate_seconds": round(generated, 3), "score_seconds": round(scored, 3),
            })  # fmt: skip
            self.log(f"{name} sentence {index + 1}/{len(plan.sentences)}: CER {row['cer']:.3f}  SECS {row['secs']}")
        total = time.perf_counter() - started
        scores = {
            "name": name, "step": step, "setup": setup, "aggregate": aggregate(rows), "sentences": rows,
            "wer": None, "cer": None, "secs": None,
            "settings": asdict(GenerationSettings()) | {"seed": plan.seed, "max_seconds": "per sentence"},
            "scorer": self.scorer.describe(), "weights": str(resolved.gpt or resolved.model_dir),
            "timing": {
                "load_seconds": round(load_seconds, 3), "generate_seconds": round(generate_total, 3),
                "score_seconds": round(score_total, 3), "total_seconds": round(total, 3),
                "seconds_per_sentence": round(total / max(1, len(rows)), 3),
            },
            "created": runs.now_iso(),
        }  # fmt: skip
        scores.update({k: scores["aggregate"][k] for k in ("wer", "cer", "secs")})
        _write_json(folder / SCORES_FILE, scores)
        update_summary(run_dir)
        return scores


def _checkpoint_names(run_dir: Path, which: str) -> list[str]:
    complete = [c.name for c in runs.list_checkpoints(run_dir) if c.complete]
    if which == "all":
        return complete
    if which in ("latest", runs.BEST):
        try:
            return [runs.find_checkpoint(run_dir, which).name]
        except (FileNotFoundError, ValueError) as error:
            raise EvaluationError(str(error)) from None
    names = [n.strip() for n in which.split(",") if n.strip()]
    missing = [n for n in names if n not in complete]
    if missing or not names:
        raise EvaluationError(
            f"--checkpoints: no complete checkpoint {', '.join(missing) or repr(which)} in {run_dir / runs.CHECKPOINTS}; "
            f"have {', '.join(complete) or 'none'} (or use latest, best, all)"
        )
    return names


def evaluate_run(voice: str, run: str, checkpoints: str = "latest", sentences: int | None = None,
                 whisper_model: str | None = None, backend: str | None = None, device: str = "auto",
                 log=print) -> dict:  # fmt: skip
    """Score the base model (once per setup) and the chosen checkpoints of a run; returns the
    updated summary.json.

    Args:
        checkpoints: ``"latest"``, ``"best"``, ``"all"``, or comma-separated ``step-NNNNNNN`` names.
        sentences: score only the first N of the run's evaluation sentences.
        whisper_model, backend: Whisper model (name or path) and backend; None: the run's
            ``eval_*`` settings, else the voice's dataset settings.

    Raises EvaluationError (unknown run or checkpoint, bad count), and the errors of
    :class:`Evaluator`.
    """
    plan = plan_run(voice, run, sentences, backend, whisper_model)
    names = _checkpoint_names(plan.run_dir, checkpoints)
    evaluator = Evaluator(plan, device, log)
    for name in [BASELINE, *names]:
        evaluator.evaluate(name)
    return update_summary(plan.run_dir)


# --------------------------------------------------------------------------- the background evaluator


def pending_checkpoints(run_dir: str | os.PathLike, setup: dict | None) -> list[str]:
    """Complete checkpoints without scores for ``setup`` (any scores when None), oldest first."""
    pending = []
    for info in runs.list_checkpoints(run_dir):
        scores = read_scores(run_dir, info.name) if info.complete else {}
        if info.complete and (scores is None or (setup is not None and scores.get("setup") != setup)):
            pending.append(info.name)
    return pending


def evaluator_pid(run_dir: str | os.PathLike) -> int | None:
    """The pid of the run's live background evaluator, or None."""
    info = _read_json(eval_dir(run_dir) / PID_FILE)
    pid = info.get("pid") if info else None
    return pid if runs.is_pid_alive(pid) and runs.process_started_by(pid, info.get("started")) else None


def protected_steps(run_dir: str | os.PathLike) -> set[int]:
    """Checkpoint steps that pruning must spare for evaluation: the best, and while a
    background evaluator is scoring, every complete checkpoint it has not scored yet. While it
    waits for a CPU trainer to end (``"waiting"`` in its pid file, :func:`mark_waiting`), the
    trainer prunes as it would without one, so disk use stays at ``keep_checkpoints``: a CPU
    run has the checkpoints it keeps scored, not every one."""
    steps = set()
    best = read_summary(run_dir).get("best")
    if isinstance(best, dict) and isinstance(best.get("step"), int):
        steps.add(best["step"])
    info = _read_json(eval_dir(run_dir) / PID_FILE) or {}
    if evaluator_pid(run_dir) is not None and not info.get("waiting"):
        steps |= {int(n.split("-")[1]) for n in pending_checkpoints(run_dir, None)}
    return steps


def mark_waiting(run_dir: str | os.PathLike, waiting: bool) -> None:
    """Record in the evaluator's pid file whether it is waiting for a CPU trainer to end
    (:func:`protected_steps`); only the evaluator whose pid the file names writes it."""
    path = eval_dir(run_dir) / PID_FILE
    info = _read_json(path)
    if info is not None and info.get("pid") == os.getpid():
        _write_json(path, info | {"waiting": waiting})


def start_evaluator(voice: str, run: str, trainer_pid: int | None = None, waiting: bool = False) -> int:
    """Start the background evaluator of a run (``python -m engine evaluate VOICE RUN --follow
    PID``) unless one is alive; returns its pid. Output goes to ``eval/evaluate.log``.
    ``waiting``: the trainer runs on the CPU, so the evaluator starts out waiting for it to end
    (:func:`protected_steps`), recorded before it is even running."""
    run_dir = paths.run_dir(voice, run)
    alive = evaluator_pid(run_dir)
    if alive is not None:
        return alive
    folder = eval_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "engine", "evaluate", voice, run, "--follow", str(trainer_pid or os.getpid())]
    session = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
    started = runs.now_iso()
    with (folder / LOG_FILE).open("ab") as log:
        log.write(f"\n=== {started} start: {subprocess.list2cmdline(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, cwd=paths.PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, **session)  # fmt: skip
    _write_json(folder / PID_FILE, {"pid": proc.pid, "started": started, "trainer": trainer_pid, "waiting": waiting})
    return proc.pid


def _gpu_free_bytes() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def follow(voice: str, run: str, trainer_pid: int, whisper_model: str | None = None, backend: str | None = None,
           log=print) -> int:  # fmt: skip
    """The background evaluator: score the baseline, then each checkpoint as it appears,
    until the trainer ``trainer_pid`` has exited and nothing is left; then prune as the
    trainer would have (keeping ``keep_checkpoints`` and the protected ones). Returns 0, or 1
    when evaluation cannot run (the reason is in summary.json ``error`` and the log).

    Whisper models are never downloaded here: a model that is not on disk stops the evaluator
    with a message (the dataset step or ``engine evaluate`` downloads it)."""
    from engine.config import TrainConfig
    from engine.speech import transcribe
    from engine.speech.scoring import whisper_choice

    run_dir = paths.run_dir(voice, run)
    cfg = TrainConfig.load(run_dir / "train.yaml")

    def trainer_alive() -> bool:  # the trainer that started us, or one resumed meanwhile
        return runs.is_pid_alive(trainer_pid) or runs.live_trainer_pid(run_dir) is not None

    try:
        plan = plan_run(voice, run, None, backend, whisper_model)
        plan_backend, model = whisper_choice(voice, plan.backend, plan.whisper_model)
        if not transcribe.is_model_local(plan_backend, model):
            raise EvaluationError(
                f"Whisper model {model!r} ({plan_backend}) is not on this machine and the evaluator does not download; "
                "prepare the dataset with it, set eval_whisper_model, or run `python -m engine evaluate`"
            )
        device = "cpu"
        if cfg.gpus != 0 and _gpu_free_bytes() is not None:
            while trainer_alive() and (_gpu_free_bytes() or 0) < GPU_MEMORY_NEEDED:
                log(f"waiting: {(_gpu_free_bytes() or 0) / 2**30:.1f} GiB free on the GPU, scoring needs "
                    f"{GPU_MEMORY_NEEDED / 2**30:.0f} GiB; checkpoints are scored when the run ends")  # fmt: skip
                time.sleep(30)
            device = "cuda"
        elif trainer_alive():
            log("the trainer runs on the CPU: checkpoints are scored once it has ended (scoring beside it "
                "slowed its steps 3-5x in bench/eval_cost.py)")  # fmt: skip
        wait_for_cpu_trainer = device == "cpu" and trainer_alive()
        mark_waiting(run_dir, wait_for_cpu_trainer)
        while wait_for_cpu_trainer and trainer_alive():
            time.sleep(POLL_SECONDS)
        mark_waiting(run_dir, False)
        evaluator = Evaluator(plan, device, log)
        record_error(run_dir, None)
        evaluator.evaluate(BASELINE)
        setup = evaluator.setup()
        while True:
            pending = pending_checkpoints(run_dir, setup)
            if pending and device == "cpu" and trainer_alive():  # resumed meanwhile: the CPU is its again
                mark_waiting(run_dir, True)
                while trainer_alive():
                    time.sleep(POLL_SECONDS)
                mark_waiting(run_dir, False)
                continue
            if pending:
                try:
                    evaluator.evaluate(pending[0])
                except EvaluationError as error:  # pruned meanwhile (the evaluator died and came back)
                    log(f"skipped: {error}")
                continue
            if not trainer_alive():
                break
            time.sleep(POLL_SECONDS)
    except Exception as error:  # noqa: BLE001 - the reason must reach the UI, whatever it is
        log(f"evaluation failed: {type(error).__name__}: {error}")
        record_error(run_dir, f"{type(error).__name__}: {error}")
        return 1
    finally:
        (eval_dir(run_dir) / PID_FILE).unlink(missing_ok=True)
    from engine.training.checkpoint import prune_checkpoints, read_retention

    keep, protect = read_retention(run_dir, cfg.keep_checkpoints)
    for path in prune_checkpoints(run_dir, keep, protect=protect):
        log(f"pruned {path.name} (scored)")
    summary = update_summary(run_dir)
    log(f"done: best {summary['best']['name'] if summary.get('best') else 'none'} ({summary['best_reason']})")
    return 0
