"""Checkpoint scoring (engine/speech/scoring.py's Scorer, engine/training/evaluation.py): the scorer on real
espeak-ng speech with the real tiny.en Whisper, the best-checkpoint rule, pruning that spares
what evaluation needs, and the whole flow with the tiny XTTS model: a run saving 3 checkpoints,
all scored by the background evaluator, a summary with baseline and best, and generation
with ``--checkpoint best``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from generate_helpers import copy_home
from helpers import ROOT, finish, make_run, train_subprocess

from engine import runs
from engine.config import ConfigError, TrainConfig, new_run_config
from engine.speech import audio
from engine.training import evaluation

SAME_TEXTS = [
    "The cat sat on the warm mat by the door.",
    "A small boat drifted slowly down the river.",
    "Please bring me a glass of cold water.",
    "He painted the fence green last summer.",
]
SENTENCE = "Our neighbours grow tomatoes in their garden."
GERMAN = "Unsere Nachbarn bauen Tomaten in ihrem Garten an."


@pytest.fixture
def own_home(dataset_home, tmp_path, monkeypatch):
    """A copy of dataset_home (datasets/anna/, voices/anna/) for a test that writes runs and
    outputs, so that the shared one stays as other test files expect it."""
    home = copy_home(dataset_home, tmp_path / "home")
    monkeypatch.setenv("TIMBRE_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def ria(tmp_path_factory, espeak_wav):
    """A TIMBRE_HOME with datasets/ria/: four en-us clips, two of them held out."""
    home = tmp_path_factory.mktemp("ria-home")
    folder = home / "datasets" / "ria"
    rows = []
    for i, text in enumerate(SAME_TEXTS):
        espeak_wav(text, folder / "wavs" / f"c{i}.wav", voice="en-us", speed=160)
        rows.append(f"wavs/c{i}.wav|{text}|ria")
    header = "audio_file|text|speaker_name\n"
    (folder / "train.csv").write_text(header + "\n".join(rows[:2]) + "\n")
    (folder / "validation.csv").write_text(header + "\n".join(rows[2:]) + "\n")
    return home


@pytest.fixture(scope="module")
def scorer(ria, faster_whisper_model_path):
    from engine.speech.scoring import Scorer

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIMBRE_HOME", str(ria))
        yield Scorer("ria", "en", "faster-whisper", faster_whisper_model_path, device="cpu")


def _speech(espeak_wav, tmp_path, text, voice):
    path = espeak_wav(text, tmp_path / f"{voice.replace('+', '_')}-{abs(hash(text))}.wav", voice=voice, speed=160)
    return audio.load_audio(path, 16_000).numpy()


def test_scorer_separates_voices_and_texts_on_real_speech(scorer, espeak_wav, tmp_path):
    """SECS against the held-out clips separates the same espeak-ng voice from another English
    voice (en-us+f3) and a German one (de+f4) with a margin; the right text gives a low WER,
    a wrong one a high WER. Plain ``de`` is not used as "another voice": espeak-ng's German
    voice is the same formant speaker as en-us with another accent, and Resemblyzer hears it
    so (measured 0.82-0.84 against this reference, en-us itself 0.84-0.88)."""
    assert scorer.reference.source == "validation" and len(scorer.reference.clips) == 2
    same = [scorer.score(_speech(espeak_wav, tmp_path, t, "en-us"), t) for t in (SENTENCE, SAME_TEXTS[0])]
    other = scorer.score(_speech(espeak_wav, tmp_path, SENTENCE, "en-us+f3"), SENTENCE)
    german = scorer.score(_speech(espeak_wav, tmp_path, GERMAN, "de+f4"))
    lowest_same = min(r["secs"] for r in same)
    assert lowest_same > 0.8, same
    assert lowest_same - max(other["secs"], german["secs"]) > 0.12, (same, other, german)
    for row in same:
        assert row["wer"] <= 0.25 and row["cer"] <= 0.15, row
        assert row["flags"] == [] and 0.7 < row["cps_ratio"] < 1.4, row
    wrong = scorer.score(
        _speech(espeak_wav, tmp_path, SENTENCE, "en-us"), "Seven green parrots argue loudly about breakfast."
    )
    assert wrong["wer"] >= 0.8 and wrong["cer"] >= 0.5, wrong
    assert "transcript" not in german and german["secs"] is not None


def test_scorer_flags_truncated_and_babbling_speech(scorer, espeak_wav, tmp_path):
    """Duration sanity: the same sentence cut to a third reads as rushed, and one followed by
    twice as much other speech reads as a babbling tail (characters per second against the
    dataset's median)."""
    speech = _speech(espeak_wav, tmp_path, SENTENCE, "en-us")
    cut = scorer.score(speech[: speech.size // 3], SENTENCE)
    assert cut["cps_ratio"] > 2 and cut["flags"] == ["truncated or rushed"], cut
    tail = np.concatenate([speech, *[_speech(espeak_wav, tmp_path, t, "en-us") for t in SAME_TEXTS[:3]]])
    babbling = scorer.score(tail, SENTENCE)
    assert babbling["cps_ratio"] < 0.5 and babbling["flags"] == ["too slow or a babbling tail"], babbling
    silent = scorer.score(np.zeros(16_000, dtype=np.float32), SENTENCE)
    assert silent["secs"] is None and "silent" in silent["secs_error"]
    assert silent["flags"] == ["no speech heard"] and silent["cer"] == 1.0


def test_score_cli_prints_one_json_object(ria, espeak_wav, tmp_path, faster_whisper_model_path):
    wav = espeak_wav(SENTENCE, tmp_path / "take.wav", voice="en-us", speed=160)
    env = dict(os.environ, TIMBRE_HOME=str(ria))
    argv = [sys.executable, "-m", "engine", "score", "ria", str(wav), "--whisper-model", faster_whisper_model_path]
    plain = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    row = json.loads(plain.stdout)
    assert row["secs"] > 0.8 and "wer" not in row
    texted = subprocess.run([*argv, "--text", SENTENCE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    row = json.loads(texted.stdout)
    assert row["wer"] <= 0.25 and row["whisper_model"] == faster_whisper_model_path


def _row(step, cer, secs, secs_xtts=0.5):
    return {"name": runs.checkpoint_name(step), "step": step, "cer_median": cer, "secs": secs, "secs_xtts": secs_xtts}


def test_best_rule():
    baseline = {"cer_median": 0.2}
    rows = [_row(2, 0.25, 0.80), _row(4, 0.31, 0.95), _row(6, 0.29, 0.85), _row(8, 0.05, 0.80)]
    best, why = evaluation.choose_best(baseline, rows)
    assert best["name"] == "step-0000006" and best["by"] == "secs", why  # step 4 breaks the CER bound (0.31 > 0.30)
    tied, _ = evaluation.choose_best(baseline, [_row(2, 0.1, 0.9), _row(3, 0.1, 0.9)])
    assert tied["step"] == 2  # a tie goes to the earlier step
    low_baseline = {"cer_median": 0.0}
    best, _ = evaluation.choose_best(low_baseline, [_row(2, 0.09, 0.7), _row(3, 0.11, 0.99)])
    assert best["step"] == 2  # under 0.1 absolute counts even when the baseline is perfect
    xtts, why = evaluation.choose_best(baseline, [_row(2, 0.2, None, 0.4), _row(3, 0.2, None, 0.6)])
    assert xtts["step"] == 3 and xtts["by"] == "secs_xtts" and "XTTS" in why
    none, why = evaluation.choose_best(baseline, [_row(2, 0.9, 0.99)])
    assert none is None and "within 1.5x" in why
    assert evaluation.choose_best(None, rows)[0] is None


def _fake_checkpoint(run_dir, step):
    folder = run_dir / "checkpoints" / runs.checkpoint_name(step)
    folder.mkdir(parents=True)
    (folder / "COMPLETE").write_text("")


def _fake_scores(run_dir, name, step, cer, secs):
    folder = evaluation.eval_dir(run_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    scores = {"name": name, "step": step, "setup": {"s": 1}, "aggregate": {"cer_median": cer, "secs": secs}}
    (folder / "scores.json").write_text(json.dumps(scores))


def test_pruning_spares_the_best_and_what_the_live_evaluator_has_not_scored(timbre_home):
    from engine.training.checkpoint import prune_checkpoints, read_retention

    run_dir = timbre_home / "training" / "v" / "r"
    for step in (1, 2, 3, 4, 5):
        _fake_checkpoint(run_dir, step)
    _fake_scores(run_dir, "baseline", None, 0.2, 0.7)
    for step, secs in ((1, 0.6), (2, 0.9), (3, 0.7)):
        _fake_scores(run_dir, runs.checkpoint_name(step), step, 0.2, secs)
    summary = evaluation.update_summary(run_dir)
    assert summary["best"]["step"] == 2 and runs.find_checkpoint(run_dir, "best").step == 2
    pid_file = evaluation.eval_dir(run_dir) / evaluation.PID_FILE
    pid_file.write_text(json.dumps({"pid": os.getpid(), "started": runs.now_iso()}))  # this process plays the evaluator
    assert evaluation.protected_steps(run_dir) == {2, 4, 5}
    removed = prune_checkpoints(run_dir, keep=1, protect={1})
    assert sorted(p.name for p in removed) == ["step-0000003"]
    assert read_retention(run_dir, 9) == (1, {1})
    pid_file.write_text(json.dumps({"pid": os.getpid(), "started": runs.now_iso(), "waiting": False}))
    evaluation.mark_waiting(run_dir, True)  # waiting for a CPU trainer to end: it prunes as usual
    assert evaluation.protected_steps(run_dir) == {2}
    evaluation.mark_waiting(run_dir, False)
    assert evaluation.protected_steps(run_dir) == {2, 4, 5}
    pid_file.unlink()  # no live evaluator: unscored checkpoints are no longer kept back
    removed = prune_checkpoints(run_dir, keep=1, protect={1})
    assert sorted(p.name for p in removed) == ["step-0000004"]
    assert [c.step for c in runs.list_checkpoints(run_dir)] == [1, 2, 5]


def test_best_is_refused_with_the_reason_until_there_is_one(timbre_home):
    run_dir = timbre_home / "training" / "v" / "r"
    _fake_checkpoint(run_dir, 1)
    with pytest.raises(FileNotFoundError, match="no best checkpoint: no checkpoint is scored yet"):
        runs.find_checkpoint(run_dir, "best")
    _fake_scores(run_dir, "baseline", None, 0.1, 0.7)
    _fake_scores(run_dir, "step-0000001", 1, 0.9, 0.9)
    evaluation.update_summary(run_dir)
    with pytest.raises(FileNotFoundError, match="within 1.5x the base model's"):
        runs.find_checkpoint(run_dir, "best")


def test_eval_sentences_in_the_config(own_home):
    home = own_home
    config = new_run_config("anna", "fresh")
    assert len(config.eval_sentences) == 8 and config.evaluate
    texts = {line.split("|")[1] for line in (home / "datasets/anna/train.csv").read_text().splitlines()[1:]}
    assert not texts & set(config.eval_sentences)
    with pytest.raises(ConfigError, match="eval_sentences"):
        TrainConfig(voice="anna", run="x", eval_sentences=["fine", "   "])
    with pytest.raises(ConfigError, match="evaluate: must be true or false"):
        TrainConfig(voice="anna", run="x", evaluate="yes")
    sentences = home / "mine.txt"
    sentences.write_text("First one here.\n\n  Second one?  \n", encoding="utf-8")
    from engine.cli import main

    assert main(["config", "anna", "by-hand", "--no-evaluate", "--eval-sentences", str(sentences)]) == 0
    written = TrainConfig.load(home / "training/anna/by-hand/train.yaml")
    assert written.eval_sentences == ["First one here.", "Second one?"] and not written.evaluate


def test_every_checkpoint_scored_then_best_generates(own_home, tiny_model, faster_whisper_model_path):
    """A run on the CPU saving 3 checkpoints and keeping them: the background evaluator the
    trainer starts waits for it to end (the CPU is the trainer's), then scores the base model
    and all three; the summary names the best by the rule, pruning afterwards to 1 checkpoint
    keeps the best, and the best generates."""
    from engine.generate.synthesis import generate_speech

    config = make_run(
        "scored", tiny_model, epochs=3, keep_checkpoints=3, evaluate=True, eval_whisper_model=faster_whisper_model_path,
        eval_backend="faster-whisper", eval_sentences=["Hello there.", "Good morning to you all."],
    )  # fmt: skip
    run_dir = config.parent
    out = finish(train_subprocess(config, own_home))
    assert "scoring checkpoints in the background" in out
    deadline = time.monotonic() + 400
    while evaluation.evaluator_pid(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(1)
    log = (run_dir / "eval" / "evaluate.log").read_text()
    assert evaluation.evaluator_pid(run_dir) is None, log[-3000:]
    summary = evaluation.read_summary(run_dir)
    assert "error" not in summary, summary["error"]
    scored = [c["name"] for c in summary["checkpoints"]]
    rows, _ = runs.read_metrics(run_dir)
    saved = [runs.checkpoint_name(r["step"]) for r in rows if r.get("event") == "checkpoint"]
    assert len(saved) == 3 and scored == saved, log[-3000:]
    baseline = evaluation.read_scores(run_dir, "baseline")
    assert baseline["step"] is None and summary["baseline"] == baseline["aggregate"]
    for name in ["baseline", *scored]:
        scores = evaluation.read_scores(run_dir, name)
        assert [r["text"] for r in scores["sentences"]] == ["Hello there.", "Good morning to you all."]
        assert [r["seed"] for r in scores["sentences"]] == [1234, 1235]
        assert scores["setup"] == baseline["setup"] and scores["timing"]["seconds_per_sentence"] > 0
        for row in scores["sentences"]:
            assert (run_dir / "eval" / name / row["wav"]).stat().st_size > 1000
            assert row["cer"] is not None and row["secs_xtts"] is not None
    rows = [c | {"name": c["name"]} for c in summary["checkpoints"]]
    expected, _ = evaluation.choose_best(summary["baseline"], rows)
    assert summary["best"] == expected and summary["best"] is not None
    assert "the trainer runs on the CPU" in log  # it waited, then scored
    from engine.training.checkpoint import prune_checkpoints

    prune_checkpoints(run_dir, keep=1)  # as a run keeping 1 checkpoint would: the best stays
    left = [c.name for c in runs.list_checkpoints(run_dir)]
    assert summary["best"]["name"] in left and saved[-1] in left and len(left) <= 2, left
    wav = generate_speech("anna", "Hi.", run="scored", checkpoint="best", base_model=tiny_model)
    assert json.loads(wav.with_suffix(".json").read_text())["checkpoint"] == summary["best"]["name"]
    from engine.generate.export import export_model

    with zipfile.ZipFile(export_model("anna", "scored", checkpoint="best", base_model=tiny_model)) as archive:
        card = archive.read("MODEL_CARD.md").decode()
    assert summary["best"]["name"] in card and "## Scores" in card and "the run's best checkpoint" in card
    # `engine evaluate` reuses what is scored and prints the summary
    argv = [sys.executable, "-m", "engine", "evaluate", "anna", "scored", "--checkpoints", "best"]
    done = subprocess.run(argv, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["best"] == summary["best"]


def test_a_cpu_run_keeps_its_checkpoint_limit_while_the_evaluator_waits(
    own_home, tiny_model, faster_whisper_model_path
):
    """The evaluator of a CPU run marks itself waiting, so the trainer prunes to
    keep_checkpoints as without one; afterwards the checkpoints kept are the ones scored."""
    config = make_run(
        "bounded", tiny_model, epochs=3, keep_checkpoints=1, evaluate=True, eval_whisper_model=faster_whisper_model_path,
        eval_backend="faster-whisper", eval_sentences=["Hello there."],
    )  # fmt: skip
    run_dir = config.parent
    finish(train_subprocess(config, own_home))
    assert len(runs.list_checkpoints(run_dir)) <= 2  # the newest and the best by validation, as without scoring
    deadline = time.monotonic() + 300
    while evaluation.evaluator_pid(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(1)
    summary = evaluation.read_summary(run_dir)
    assert "error" not in summary, summary
    kept = {c.name for c in runs.list_checkpoints(run_dir)}
    assert {c["name"] for c in summary["checkpoints"]} == kept and summary["best"]["name"] in kept
