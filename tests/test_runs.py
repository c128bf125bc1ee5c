"""engine.runs: checkpoints, metrics tailing, status and the state of fake run folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from engine import paths, runs
from engine.config import TrainConfig


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMBRE_HOME", str(tmp_path))
    return tmp_path


def make_run(voice="alice", run="r1"):
    return TrainConfig(voice=voice, run=run).save_new().parent


def add_checkpoint(run_dir, step, complete=True):
    path = run_dir / "checkpoints" / runs.checkpoint_name(step)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"")
    if complete:
        (path / "COMPLETE").write_text("")
    return path


def write_status(run_dir, **status):
    (run_dir / "status.json").write_text(json.dumps(status))


def write_pid(run_dir, pid, started=None):
    record = {"pid": pid, "started": started or runs.now_iso(), "argv": [], "gpus": []}
    (run_dir / "train.pid").write_text(json.dumps(record))


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_name():
    assert runs.checkpoint_name(42) == "step-0000042"
    assert runs.checkpoint_name(12345678) == "step-12345678"
    with pytest.raises(ValueError):
        runs.checkpoint_name(-1)


def test_list_checkpoints_sorted_ignores_temp_and_junk(home):
    run_dir = make_run()
    add_checkpoint(run_dir, 200)
    add_checkpoint(run_dir, 50)
    add_checkpoint(run_dir, 300, complete=False)
    (run_dir / "checkpoints" / ".step-0000400.tmp").mkdir()
    (run_dir / "checkpoints" / "best").mkdir()
    (run_dir / "checkpoints" / "step-12").mkdir()
    (run_dir / "checkpoints" / "step-0000500").write_text("a file, not a folder")

    found = runs.list_checkpoints(run_dir)
    assert [(c.step, c.complete) for c in found] == [(50, True), (200, True), (300, False)]
    assert found[0].path == run_dir / "checkpoints" / "step-0000050"
    assert runs.latest_complete_checkpoint(run_dir).step == 200


def test_no_checkpoints(home):
    run_dir = make_run()
    assert runs.list_checkpoints(run_dir) == []
    assert runs.latest_complete_checkpoint(run_dir) is None
    with pytest.raises(FileNotFoundError, match="'r1' of voice 'alice'"):
        runs.find_checkpoint(run_dir, "latest")


def test_find_checkpoint(home):
    run_dir = make_run()
    add_checkpoint(run_dir, 10)
    add_checkpoint(run_dir, 20, complete=False)
    assert runs.find_checkpoint(run_dir).step == 10
    assert runs.find_checkpoint(run_dir, "step-0000010").path.name == "step-0000010"
    with pytest.raises(FileNotFoundError, match="incomplete"):
        runs.find_checkpoint(run_dir, "step-0000020")
    with pytest.raises(FileNotFoundError, match="no checkpoint step-0000030"):
        runs.find_checkpoint(run_dir, "step-0000030")
    with pytest.raises(ValueError, match="latest"):
        runs.find_checkpoint(run_dir, "../../etc")


# --------------------------------------------------------------------------- metrics


def test_read_metrics_tails_complete_lines_only(home):
    run_dir = make_run()
    path = run_dir / "metrics.jsonl"
    assert runs.read_metrics(run_dir) == ([], 0)

    row1 = json.dumps({"step": 1, "split": "train", "loss": 2.0})
    row2 = json.dumps({"step": 2, "split": "train", "loss": 1.5})
    half = '{"step": 3, "split": "tr'
    path.write_text(f"{row1}\n{row2}\n{half}")
    rows, offset = runs.read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert offset == len(f"{row1}\n{row2}\n".encode())

    # nothing new: same offset, no rows; the half line is left alone
    assert runs.read_metrics(run_dir, offset) == ([], offset)

    with path.open("a") as fh:
        fh.write('ain", "loss": 1.2}\n')
    rows, offset2 = runs.read_metrics(run_dir, offset)
    assert rows == [{"step": 3, "split": "train", "loss": 1.2}]
    assert offset2 == path.stat().st_size


def test_read_metrics_skips_corrupt_lines(home):
    run_dir = make_run()
    lines = [
        json.dumps({"step": 1}),
        "not json at all",
        "[1, 2, 3]",
        "",
        json.dumps({"step": 2, "event": "checkpoint"}),
    ]
    (run_dir / "metrics.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    rows, offset = runs.read_metrics(run_dir)
    assert rows == [{"step": 1}, {"step": 2, "event": "checkpoint"}]
    assert offset == (run_dir / "metrics.jsonl").stat().st_size


def test_read_metrics_restarts_when_file_shrinks(home):
    run_dir = make_run()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 9}) + "\n")
    rows, offset = runs.read_metrics(run_dir, offset=10_000)
    assert rows == [{"step": 9}]


# --------------------------------------------------------------------------- logs


def test_log_tail_prefers_train_log(home):
    run_dir = make_run()
    assert runs.log_tail(run_dir) == ""
    (run_dir / "process.log").write_text("p1\np2\n")
    assert runs.log_tail(run_dir) == "p1\np2"
    (run_dir / "train.log").write_text("".join(f"line {i}\n" for i in range(100)))
    tail = runs.log_tail(run_dir, lines=3)
    assert tail == "line 97\nline 98\nline 99"


def test_log_tail_keeps_last_progress_redraw(home):
    run_dir = make_run()
    (run_dir / "process.log").write_text("start\n 10%\r 50%\r100%\ndone\n")
    assert runs.log_tail(run_dir) == "start\n100%\ndone"


# --------------------------------------------------------------------------- pids


def test_is_pid_alive():
    assert runs.is_pid_alive(os.getpid())
    assert not runs.is_pid_alive(dead_pid())
    assert not runs.is_pid_alive(0)
    assert not runs.is_pid_alive(-5)
    assert not runs.is_pid_alive(None)


def test_zombie_counts_as_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while runs.is_pid_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not runs.is_pid_alive(proc.pid)  # exited, not yet reaped: a zombie
    finally:
        proc.wait()


def test_reused_pid_does_not_count(home):
    run_dir = make_run()
    write_pid(run_dir, os.getpid(), started="2001-01-01T00:00:00+00:00")
    assert runs.live_trainer_pid(run_dir) is None
    write_pid(run_dir, os.getpid())
    assert runs.live_trainer_pid(run_dir) == os.getpid()


# --------------------------------------------------------------------------- run status


def test_new_run(home):
    make_run()
    status = runs.run_status("alice", "r1")
    assert status.state == "new"
    assert (status.voice, status.run, status.step, status.checkpoints) == ("alice", "r1", 0, 0)
    assert status.latest_checkpoint is None and status.pid is None


def test_missing_run_raises(home):
    with pytest.raises(FileNotFoundError, match="'nope' of voice 'alice'"):
        runs.run_status("alice", "nope")
    with pytest.raises(paths.InvalidNameError):
        runs.run_status("../x", "r1")


def test_running_with_eta(home):
    run_dir = make_run()
    write_pid(run_dir, os.getpid())
    write_status(run_dir, state="running", step=8, epoch=1, total_steps=100)
    t0 = 1.8e9
    with (run_dir / "metrics.jsonl").open("w") as fh:
        for step in range(1, 11):
            row = {"step": step, "epoch": 1, "split": "train", "loss": 1.0, "time": t0 + 0.5 * step}
            fh.write(json.dumps({**row, "samples_per_second": 8.0}) + "\n")
        fh.write(json.dumps({"step": 10, "event": "checkpoint"}) + "\n")
        fh.write('{"step": 11, "spl')
    status = runs.run_status("alice", "r1")
    assert status.state == "running"
    assert status.pid == os.getpid()
    assert status.step == 10  # the metrics are ahead of status.json
    assert status.total_steps == 100
    assert status.samples_per_second == pytest.approx(8.0)
    assert status.eta_seconds == pytest.approx(90 * 0.5)


def test_eta_from_samples_per_second_without_wall_clock(home):
    run_dir = make_run()  # batch_size 4 by default
    write_pid(run_dir, os.getpid())
    write_status(run_dir, state="running", step=10, total_steps=30)
    rows = [{"step": s, "split": "train", "samples_per_second": 2.0, "time": 0.1} for s in (9, 10)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert runs.run_status("alice", "r1").eta_seconds == pytest.approx(20 * 4 / 2.0)


def test_stop_requested_message(home):
    run_dir = make_run()
    write_pid(run_dir, os.getpid())
    (run_dir / "STOP").write_text("")
    status = runs.run_status("alice", "r1")
    assert status.state == "running" and "stop requested" in status.message


def test_finished_needs_complete_checkpoint(home):
    run_dir = make_run()
    write_status(run_dir, state="finished", step=100, total_steps=100, exit_code=0)
    add_checkpoint(run_dir, 100, complete=False)
    status = runs.run_status("alice", "r1")
    assert status.state == "failed"
    assert "marked finished but no complete checkpoint" in status.message

    (run_dir / "checkpoints" / "step-0000100" / "COMPLETE").write_text("")
    status = runs.run_status("alice", "r1")
    assert status.state == "finished"
    assert status.latest_checkpoint == 100 and status.checkpoints == 1
    assert status.eta_seconds is None


def test_stopped(home):
    run_dir = make_run()
    add_checkpoint(run_dir, 40)
    write_status(run_dir, state="stopped", step=40, epoch=2, message="stopped at step 40", exit_code=0)
    status = runs.run_status("alice", "r1")
    assert (status.state, status.step, status.epoch, status.latest_checkpoint) == ("stopped", 40, 2, 40)
    assert status.exit_code == 0 and status.message == "stopped at step 40"


def test_status_running_but_process_gone(home):
    run_dir = make_run()
    write_status(run_dir, state="running", step=5, pid=dead_pid())
    status = runs.run_status("alice", "r1")
    assert status.state == "failed"
    assert "ended without reporting" in status.message
    assert status.pid is None


def test_stale_pid_file_without_status(home):
    run_dir = make_run()
    write_pid(run_dir, dead_pid())
    assert runs.run_status("alice", "r1").state == "failed"


def test_failed_with_hint_from_log(home):
    run_dir = make_run()
    write_status(run_dir, state="failed", step=3, exit_code=1, message="training process exited with code 1")
    (run_dir / "process.log").write_text(
        "Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    )
    status = runs.run_status("alice", "r1")
    assert status.state == "failed" and status.exit_code == 1
    assert "ran out of memory" in status.hint


def test_garbled_status_json_is_not_a_crash(home):
    run_dir = make_run()
    (run_dir / "status.json").write_text("{not json")
    assert runs.read_status(run_dir) is None
    assert runs.run_status("alice", "r1").state == "new"
    write_status(run_dir, state="dancing")
    assert runs.run_status("alice", "r1").state == "failed"


def test_write_status_is_atomic_and_validated(home):
    run_dir = make_run()
    written = runs.write_status(run_dir, {"state": "stopped", "step": 3})
    assert runs.read_status(run_dir) == written and "updated" in written
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="state"):
        runs.write_status(run_dir, {"state": "new"})


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB", "memory"),
        ("engine.models.BaseModelError: XTTS-v2 base model missing in /m: dvae.pth", "base-model"),
        ("FileNotFoundError: [Errno 2] No such file or directory: '/m/model.pth'", "base-model"),
        ("engine.dataset.prepare.DatasetError: no usable clips", "dataset"),
        ("dataset check failed: 3 clips longer than max_audio_seconds", "dataset"),
        ("loss diverged at step 120 (nan)", "diverged"),
        ("non-finite loss at step 7", "diverged"),
        ("OSError: [Errno 28] No space left on device", "disk"),
        ("training process exited with code -9 (killed by SIGKILL)", "killed"),
    ],
)
def test_hint_for_failure(text, word):
    assert word in runs.hint_for_failure(text)


def test_no_hint_for_unknown_failure():
    assert runs.hint_for_failure("") is None
    assert runs.hint_for_failure("ValueError: something odd") is None
    assert runs.hint_for_failure("loaded base model from /m/model.pth") is None


def test_list_run_statuses(home):
    make_run(run="a")
    run_dir = make_run(run="b")
    add_checkpoint(run_dir, 5)
    write_status(run_dir, state="finished", step=5)
    (home / "training" / "alice" / "not-a-run").mkdir()
    statuses = runs.list_run_statuses("alice")
    assert [(s.run, s.state) for s in statuses] == [("a", "new"), ("b", "finished")]
    assert runs.list_run_statuses("bob") == []


def test_failure_excerpt_prefers_the_traceback(home):
    run_dir = make_run()
    assert runs.failure_excerpt(run_dir) == ""
    (run_dir / "process.log").write_text("=== start\nKilled\n")
    assert runs.failure_excerpt(run_dir) == "=== start\nKilled"
    lines = [f"  frame {i}" for i in range(20)]
    (run_dir / "train.log").write_text(
        "step 1\ntraining failed:\nTraceback (most recent call last):\n" + "\n".join(lines) + "\nValueError: bad\n"
    )
    excerpt = runs.failure_excerpt(run_dir, lines=5)
    assert excerpt.splitlines() == ["  frame 16", "  frame 17", "  frame 18", "  frame 19", "ValueError: bad"]
    write_status(run_dir, state="failed", step=1, exit_code=1, message="ValueError: bad")
    assert "ValueError: bad" in runs.run_status("alice", "r1").failure_lines


def test_status_epoch_progress_and_last_good_step(home):
    run_dir = make_run()
    add_checkpoint(run_dir, 3)
    write_status(run_dir, state="stopped", step=5, epoch=1.25, message="stopped at step 5")
    status = runs.run_status("alice", "r1")
    assert (status.epoch, status.epoch_progress, status.epochs, status.last_good_step) == (1, 1.25, 10, None)
    spike = {"event": "spike", "step": 4, "epoch": 1.0, "loss": 9.0, "last_good_step": 3}
    (run_dir / "metrics.jsonl").write_text(json.dumps(spike) + "\n")
    assert runs.run_status("alice", "r1").last_good_step == 3
    spike["last_good_step"] = 2  # pruned since: nothing to start from
    (run_dir / "metrics.jsonl").write_text(json.dumps(spike) + "\n")
    assert runs.run_status("alice", "r1").last_good_step is None
