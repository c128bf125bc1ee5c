"""Failures are caught, named and survived: non-finite losses, spikes, fp16 gradient overflows,
out of memory, a kill or an error in the middle of a save, a damaged checkpoint, a full disk,
SIGTERM."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, make_run, train_rows, train_subprocess
from test_precision import LowStartScaler, allow_fp16_on_cpu
from TTS.tts.layers.xtts.gpt import GPT

from engine import runs
from engine.config import TrainConfig
from engine.training import checkpoint as ckpt
from engine.training import loop, reporting
from engine.training.branch import branch_run


def patch_training_forward(monkeypatch, change):
    """Wrap the GPT's forward: ``change(call_number, loss_text, loss_mel, text_inputs)`` may
    alter the training losses or raise; validation (eval mode) is untouched."""
    original = GPT.forward
    calls = {"n": 0}

    def forward(self, text_inputs, *args, **kwargs):
        if not self.training:
            return original(self, text_inputs, *args, **kwargs)
        calls["n"] += 1
        loss_text, loss_mel, logits = original(self, text_inputs, *args, **kwargs)
        loss_text, loss_mel = change(calls["n"], loss_text, loss_mel, text_inputs)
        return loss_text, loss_mel, logits

    monkeypatch.setattr(GPT, "forward", forward)
    return calls


def test_non_finite_updates_are_skipped_then_the_run_stops_as_diverged(home, tiny_model, monkeypatch):
    config = make_run("nan", tiny_model, epochs=6, gradient_accumulation=1)
    patch_training_forward(monkeypatch, lambda n, t, m, x: (t, m * float("nan")) if n > 3 else (t, m))
    assert loop.train(config) == loop.EXIT_DIVERGED
    status = json.loads((config.parent / "status.json").read_text())
    assert status["state"] == "failed" and status["message"].startswith("loss diverged after step 3:")
    assert status["step"] == 3 and status["skipped_steps"] == loop.MAX_CONSECUTIVE_SKIPS, "skips are not steps"
    rows, _ = runs.read_metrics(config.parent)
    skipped = [r for r in rows if r.get("event") == "skipped_step"]
    assert len(skipped) == loop.MAX_CONSECUTIVE_SKIPS and {r["step"] for r in skipped} == {3}
    assert all(math.isfinite(r.get("loss", 0.0)) for r in rows), "metrics.jsonl stays valid JSON"
    good = runs.latest_complete_checkpoint(config.parent)
    assert good is not None and good.step == 3, "the last good checkpoint (end of epoch 1) is kept"
    assert runs.run_status("anna", "nan").hint is not None


def test_loss_spike_is_logged_keeps_last_good_and_branch_lowers_lr(home, tiny_model, monkeypatch):
    config = make_run("spike", tiny_model, epochs=3, gradient_accumulation=1, keep_checkpoints=1)
    patch_training_forward(monkeypatch, lambda n, t, m, x: (t, m * 50) if n == 7 else (t, m))
    assert loop.train(config) == 0
    rows, _ = runs.read_metrics(config.parent)
    spikes = [r for r in rows if r.get("event") == "spike"]
    assert [s["step"] for s in spikes] == [7] and spikes[0]["last_good_step"] == 6
    assert any(r.get("spike") for r in rows if r.get("split") == "train")
    kept = [c.step for c in runs.list_checkpoints(config.parent) if c.complete]
    assert 6 in kept and 9 in kept, "the pre-spike checkpoint survives pruning (keep_checkpoints=1)"
    assert json.loads((config.parent / "status.json").read_text())["last_good_step"] == 6

    new = branch_run("anna", "spike", "spike-lower-lr", checkpoint="step-0000006", learning_rate_factor=0.5)
    branched = TrainConfig.load(new)
    assert branched.learning_rate == pytest.approx(TrainConfig.load(config).learning_rate * 0.5)
    weights = ckpt.load_file(str(runs.find_checkpoint(config.parent, "step-0000006").path / ckpt.MODEL_FILE))
    start = ckpt.load_file(branched.init_weights)
    assert all(torch.equal(weights[k], start[k]) for k in weights)
    with pytest.raises(FileExistsError):
        branch_run("anna", "spike", "spike-lower-lr")


def test_a_skipped_update_is_not_a_step(home, tiny_model, monkeypatch):
    config = make_run("skip-one", tiny_model, epochs=2, gradient_accumulation=1)
    patch_training_forward(monkeypatch, lambda n, t, m, x: (t, m * float("inf")) if n == 2 else (t, m))
    assert loop.train(config) == 0
    rows = train_rows(config.parent)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5], "6 batches, 5 applied updates, numbered without a gap"
    metrics, _ = runs.read_metrics(config.parent)
    skipped = [r for r in metrics if r.get("event") == "skipped_step"]
    assert [(r["step"], r["skipped_steps"]) for r in skipped] == [(1, 1)] and "non-finite" in skipped[0]["reason"]
    status = runs.run_status("anna", "skip-one")
    assert (status.state, status.step, status.skipped_steps) == ("finished", 5, 1)
    assert status.message == "finished at step 5 (1 update(s) skipped)"
    assert [c.step for c in runs.list_checkpoints(config.parent)] == [2, 5], "checkpoints are named by applied updates"
    state = torch.load(runs.latest_complete_checkpoint(config.parent).path / "state.pt", weights_only=True)
    assert (state["step"], state["skipped_steps"]) == (5, 1)


def test_last_good_is_the_checkpoint_before_the_spike_and_stays_protected(home, tiny_model, monkeypatch):
    # 3 steps per epoch, checkpoints at 3, 6, 9, 12, 15. Spike A at steps 5-6 (step-0000006 is
    # saved inside it), spike B at step 8 (the newest checkpoint before it is that one), spike C
    # at step 11 (after the clean step-0000009).
    config = make_run("spikes", tiny_model, epochs=5, gradient_accumulation=1, keep_checkpoints=1, validate_every=0)
    factors = {5: 50, 6: 50, 8: 50, 11: 500}  # the moving average is still high from A and B at step 11
    patch_training_forward(monkeypatch, lambda n, t, m, x: (t, m * factors.get(n, 1)))
    assert loop.train(config) == 0
    rows, _ = runs.read_metrics(config.parent)
    spikes = [(r["step"], r["spike_start"], r["last_good_step"]) for r in rows if r.get("event") == "spike"]
    assert spikes == [(5, 5, 3), (6, 5, 3), (8, 8, 3), (11, 11, 9)], "a checkpoint saved in a spike is never last good"
    kept = [c.step for c in runs.list_checkpoints(config.parent) if c.complete]
    assert kept == [3, 9, 15], "every last-good checkpoint survives pruning (keep_checkpoints=1) to the end of the run"
    state = torch.load(runs.latest_complete_checkpoint(config.parent).path / "state.pt", weights_only=True)
    assert state["last_good_steps"] == [3, 9] and state["spike_checkpoints"] == [6]
    assert runs.run_status("anna", "spikes").last_good_step == 9


def test_too_few_clips_refuses_to_train_naming_the_count(home, tiny_model, tmp_path, monkeypatch):
    one = tmp_path / "one"
    shutil.copytree(home / "datasets" / "anna", one / "datasets" / "solo")
    csv = one / "datasets" / "solo" / "train.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:2]) + "\n")  # the header and one clip
    monkeypatch.setenv("TIMBRE_HOME", str(one))
    config = TrainConfig(voice="solo", run="r", base_model=str(tiny_model), epochs=1, batch_size=1).save_new()
    assert loop.train(config) == loop.EXIT_FAILED
    status = runs.run_status("solo", "r")
    assert status.state == "failed" and "only 1 usable training clip(s)" in status.message
    assert "min_training_clips = 4" in status.message and status.hint and "dataset check" in status.hint
    assert runs.latest_complete_checkpoint(config.parent) is None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_folders_of_dead_savers_are_cleared_complete_ones_recovered(tmp_path):
    folder = tmp_path / "checkpoints"
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, {"step": 1})
    dead, alive = _dead_pid(), os.getppid()  # pytest's parent outlives the test and started before it
    half = folder / f".tmp-step-0000002-{dead}"
    half.mkdir()
    (half / ckpt.MODEL_FILE).write_bytes(b"half written")
    complete = ckpt.save_checkpoint(tmp_path, 3, {"w": torch.ones(1) * 3}, {"step": 3})
    complete.rename(folder / f".old-step-0000003-{dead}")  # killed between the two renames of a re-save
    stale_old = (
        ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, {"step": 1}).parent / f".old-step-0000001-{dead}"
    )
    shutil.copytree(folder / "step-0000001", stale_old)  # its replacement is in place
    busy = folder / f".tmp-step-0000004-{alive}"
    busy.mkdir()
    (folder / ".tmp-step-0000005").mkdir()  # no pid: its writer is long gone
    messages = []
    removed = ckpt.remove_stale_temporaries(tmp_path, log=messages.append)
    expected = [half.name, f".old-step-0000003-{dead}", stale_old.name, ".tmp-step-0000005"]
    assert sorted(p.name for p in removed) == sorted(expected)
    assert sorted(p.name for p in folder.iterdir()) == [busy.name, "step-0000001", "step-0000003"]
    assert ckpt.load_checkpoint(folder / "step-0000003")[1]["step"] == 3, "the complete copy was recovered, not deleted"
    assert any("recovered step-0000003" in m for m in messages)


def test_a_run_start_clears_what_a_kill_during_a_save_left(home, tiny_model):
    config = make_run("killed-save", tiny_model, epochs=1)
    script = (
        "import os, sys, torch; from pathlib import Path; from engine.training import checkpoint as c\n"
        "c.save_checkpoint(Path(sys.argv[1]), 2, {'w': torch.zeros(3)}, {'step': 2},"
        " before_complete=lambda folder: os.kill(os.getpid(), 9))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(config.parent)], cwd=ROOT)
    assert result.returncode == -signal.SIGKILL
    assert list((config.parent / "checkpoints").glob(".tmp-step-0000002-*"))
    assert loop.train(config) == 0
    assert not list((config.parent / "checkpoints").glob(".*")), "no temporary folder is left"
    assert "left by an interrupted save" in (config.parent / "train.log").read_text()


def test_out_of_memory_retries_then_splits_the_micro_batch_and_resume_keeps_it(home, tiny_model, monkeypatch):
    config = make_run("oom", tiny_model, epochs=1, batch_size=2, gradient_accumulation=1)

    def oom_for_pairs(n, t, m, text_inputs):
        if text_inputs.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return t, m

    patch_training_forward(monkeypatch, oom_for_pairs)
    assert loop.train(config) == 0
    rows, _ = runs.read_metrics(config.parent)
    events = [r["event"] for r in rows if "event" in r and r["event"].startswith("oom")]
    assert events == ["oom_retry", "oom_split"]
    state = torch.load(runs.latest_complete_checkpoint(config.parent).path / "state.pt", weights_only=True)
    assert (state["micro_batch_size"], state["gradient_accumulation"]) == (1, 2)
    assert len(train_rows(config.parent)) == 3 and all(math.isfinite(r["loss"]) for r in train_rows(config.parent))

    config.write_text(config.read_text().replace("epochs: 1", "epochs: 2"))
    assert loop.train(config) == 0
    rows, _ = runs.read_metrics(config.parent)
    assert [r["event"] for r in rows if r.get("event", "").startswith("oom")] == events, "resume kept the split"
    assert "1 accumulation" not in (config.parent / "train.log").read_text().split("resumed from")[-1]


def test_fp16_overflow_halves_the_grad_scale_skips_the_update_and_resume_restores_the_scale(
    home, tiny_model, monkeypatch
):
    """An fp16 gradient overflow is the grad scaler's business: the update is skipped and logged
    (not a step, not divergence), and the scale halves. The overflow is injected on batch 3 of
    5: a finite loss whose gradient is made infinite; the scaler starts at 2**12, where this
    model has no overflow of its own (at the default 2**16 its first two batches overflow).
    The scaler's state (scale and growth tracker) is saved in state.pt and restored on resume:
    a run stopped after the overflow and resumed ends with the same scale, growth tracker,
    weights and losses as one not stopped; a fresh scaler would be back at 2**12."""
    allow_fp16_on_cpu(monkeypatch)
    monkeypatch.setattr(torch.amp, "GradScaler", LowStartScaler)
    plan = {"stop_at": None, "run_dir": None}

    def overflow_on_third_batch(n, loss_text, loss_mel, text_inputs):
        if n == 3:
            loss_mel.register_hook(lambda grad: grad * math.inf)
        if n == plan["stop_at"]:
            (plan["run_dir"] / reporting.STOP_FILE).write_text("")  # the Stop button, during batch n
        return loss_text, loss_mel

    calls = patch_training_forward(monkeypatch, overflow_on_third_batch)  # one call per batch below
    settings = dict(epochs=1, batch_size=1, gradient_accumulation=1, precision="fp16", validate_every=0)

    straight = make_run("fp16-straight", tiny_model, **settings)
    assert loop.train(straight) == 0
    metrics, _ = runs.read_metrics(straight.parent)
    overflows = [r for r in metrics if r.get("event") == "skipped_step"]
    assert [(r["epoch"], r["step"], r["skipped_steps"]) for r in overflows] == [(0.6, 2, 1)], "batch 3 of 5 only"
    assert overflows[0]["reason"] == "fp16 gradient overflow (the grad scaler lowers its scale)"
    assert math.isfinite(overflows[0]["loss"])
    assert [r["step"] for r in train_rows(straight.parent)] == [1, 2, 3, 4], "the skipped update is not a step"
    state = torch.load(runs.latest_complete_checkpoint(straight.parent).path / "state.pt", weights_only=True)
    assert state["scaler"]["scale"] == 2.0**11, "halved once, from 2**12"
    assert state["scaler"]["_growth_tracker"] == 2, "reset by the overflow, then batches 4 and 5"
    assert (state["step"], state["skipped_steps"]) == (4, 1)
    assert runs.run_status("anna", "fp16-straight").state == "finished"

    split = make_run("fp16-split", tiny_model, **settings)
    calls["n"], plan["stop_at"], plan["run_dir"] = 0, 4, split.parent
    assert loop.train(split) == 0
    assert runs.run_status("anna", "fp16-split").state == "stopped"
    stopped = torch.load(runs.latest_complete_checkpoint(split.parent).path / "state.pt", weights_only=True)
    assert (stopped["step"], stopped["skipped_steps"]) == (3, 1)
    assert stopped["scaler"]["scale"] == 2.0**11 and stopped["scaler"]["_growth_tracker"] == 1
    plan["stop_at"] = None
    assert loop.train(split) == 0  # resumes from the checkpoint the stop saved
    resumed = torch.load(runs.latest_complete_checkpoint(split.parent).path / "state.pt", weights_only=True)
    assert resumed["scaler"] == state["scaler"], "scale and growth tracker carried across the resume"
    assert (resumed["step"], resumed["skipped_steps"]) == (4, 1)
    comparable = lambda rows: [(r["step"], r["loss"], r["grad_norm"], r["samples"]) for r in rows]  # noqa: E731
    assert comparable(train_rows(split.parent)) == comparable(train_rows(straight.parent))
    a = ckpt.load_file(str(runs.latest_complete_checkpoint(straight.parent).path / ckpt.MODEL_FILE))
    b = ckpt.load_file(str(runs.latest_complete_checkpoint(split.parent).path / ckpt.MODEL_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    weights = {"w": torch.randn(4, 4)}
    first = ckpt.save_checkpoint(tmp_path, 1, weights, {"step": 1})

    def explode(folder: Path):
        raise OSError("disk vanished")

    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(4, 4)}, {"step": 2}, before_complete=explode)
    assert [c.step for c in runs.list_checkpoints(tmp_path)] == [1]
    path, loaded, state = ckpt.load_latest_checkpoint(tmp_path)
    assert path == first and torch.equal(loaded["w"], weights["w"]) and state["step"] == 1


def test_a_kill_in_the_middle_of_a_save_leaves_the_previous_checkpoint_usable(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, {"step": 1})
    script = (
        "import os, sys, torch; from pathlib import Path; from engine.training import checkpoint as c\n"
        "c.save_checkpoint(Path(sys.argv[1]), 2, {'w': torch.zeros(3)}, {'step': 2},"
        " before_complete=lambda folder: os.kill(os.getpid(), 9))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT)
    assert result.returncode == -signal.SIGKILL
    path, loaded, state = ckpt.load_latest_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))


def test_a_damaged_newest_checkpoint_is_moved_aside_not_deleted(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, {"step": 1})
    newest = ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)}, {"step": 2})
    (newest / ckpt.MODEL_FILE).write_bytes(b"garbage")
    messages = []
    path, _, state = ckpt.load_latest_checkpoint(tmp_path, log=messages.append)
    assert state["step"] == 1 and path.name == "step-0000001"
    assert (tmp_path / "checkpoints" / "damaged-step-0000002" / ckpt.MODEL_FILE).read_bytes() == b"garbage"
    assert messages and "damaged" in messages[0]


def test_retention_keeps_newest_and_protected(tmp_path):
    for step in range(1, 6):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.ones(1) * step}, {"step": step})
    ckpt.prune_checkpoints(tmp_path, keep=2, protect={2})
    assert [c.step for c in runs.list_checkpoints(tmp_path)] == [2, 4, 5]


def test_refuses_to_start_without_disk_space_for_the_checkpoints(home, tiny_model, monkeypatch):
    config = make_run("full-disk", tiny_model, epochs=1)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    assert loop.train(config) == loop.EXIT_FAILED
    status = json.loads((config.parent / "status.json").read_text())
    assert "not enough disk space" in status["message"]
    assert (config.parent / "train.yaml").is_file()


def test_sigterm_finishes_the_step_saves_and_exits_zero(home, tiny_model):
    config = make_run("sigterm", tiny_model, epochs=50)
    proc = train_subprocess(config, home)
    deadline = time.time() + 240
    while time.time() < deadline and not train_rows(config.parent):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    status = json.loads((config.parent / "status.json").read_text())
    assert status["state"] == "stopped" and f"stopped at step {status['step']}" in out
    assert runs.latest_complete_checkpoint(config.parent).step == status["step"]
