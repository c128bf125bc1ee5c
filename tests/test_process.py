"""engine.training.process: start, stop, refusal and crash recording with a fake trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from engine import paths, runs
from engine.config import TrainConfig
from engine.training import process

# A stand-in for `python -m engine train train.yaml`: follows the run-folder contract.
FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path

    mode, config = sys.argv[1], Path(sys.argv[2])
    run = config.parent
    stop = []

    def status(state, **fields):
        tmp = run / ".status.json.tmp"
        tmp.write_text(json.dumps({"state": state, "pid": os.getpid(), **fields}))
        os.replace(tmp, run / "status.json")

    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    if mode == "env":
        keys = ("TIMBRE_HOME", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES", "EXTRA")
        info = {k: os.environ.get(k) for k in keys}
        info["cwd"] = os.getcwd()
        (run / "env.json").write_text(json.dumps(info))
    status("running", step=0, total_steps=1000)
    print("fake trainer up", flush=True)
    if mode == "crash":
        print("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
        sys.exit(3)
    step = 0
    while step < 1000:
        step += 1
        with open(run / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "split": "train", "time": time.time()}) + "\\n")
        time.sleep(0.01)
        if stop or (run / "STOP").exists():
            how = "signal" if stop else "file"
            ckpt = run / "checkpoints" / f"step-{step:07d}"
            ckpt.mkdir(parents=True)
            (ckpt / "COMPLETE").write_text("")
            status("stopped", step=step, message=f"stopped at step {step} ({how})", exit_code=0)
            sys.exit(0)
    sys.exit(5)
    """
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMBRE_HOME", str(tmp_path / "home"))
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    yield tmp_path / "home"
    # never leave a fake trainer behind, whatever a test did
    for pid_file in (tmp_path / "home").glob("training/*/*/train.pid"):
        process.kill_training(pid_file.parent)
        process.wait_for_exit(pid_file.parent, 5)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Set the fake trainer's mode: replaces process.training_argv."""

    def use(mode="normal"):
        script = str(tmp_path / "fake_trainer.py")

        def argv(config, config_path=None):
            return [sys.executable, script, mode, str(config_path)]

        monkeypatch.setattr(process, "training_argv", argv)

    use()
    return use


def make_run(run="r1", **fields):
    return TrainConfig(voice="alice", run=run, **fields).save_new()


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def reported_running(run_dir):
    status = runs.read_status(run_dir) or {}
    return status.get("message") != "starting" and status.get("state") == "running"


def test_training_argv():
    one = TrainConfig(voice="a", run="r", gpus=1)
    argv = process.training_argv(one, "/x/train.yaml")
    assert argv == [sys.executable, "-m", "engine", "train", "/x/train.yaml"]
    assert process.training_argv(one)[-1] == str(one.run_dir() / "train.yaml")
    two = TrainConfig(voice="a", run="r", gpus=[1, 3])
    argv = process.training_argv(two, "/x/train.yaml")
    assert argv[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    assert argv[7:] == ["engine", "train", "/x/train.yaml"]


def test_start_then_stop(home, fake):
    config_path = make_run()
    run_dir = config_path.parent
    (run_dir / "STOP").write_text("stale")
    pid = process.start_training(config_path)

    record = json.loads((run_dir / "train.pid").read_text())
    assert record["pid"] == pid and record["gpus"] == [0] and record["argv"][-1] == str(config_path)
    assert not (run_dir / "STOP").exists()
    assert process.running_pid(run_dir) == pid
    assert runs.run_status("alice", "r1").state == "running"
    wait_until(lambda: reported_running(run_dir))

    assert process.stop_training(run_dir, timeout=10) is True
    assert process.wait_for_exit(run_dir, 10) == 0
    status = runs.run_status("alice", "r1")
    assert status.state == "stopped", status
    assert status.latest_checkpoint == status.step and status.exit_code == 0
    assert not (run_dir / "train.pid").exists()
    assert process.running_pid(run_dir) is None
    assert process.stop_training(run_dir) is False
    assert "fake trainer up" in (run_dir / "process.log").read_text()


def test_stop_right_after_start_is_clean(home, fake):
    config_path = make_run()
    process.start_training(config_path)
    assert process.stop_training(config_path.parent, timeout=10) is True
    assert process.wait_for_exit(config_path.parent, 10) == 0
    assert runs.run_status("alice", "r1").state == "stopped"


def test_stop_file_alone_stops_the_trainer(home, fake):
    fake("ignore-term")
    config_path = make_run()
    process.start_training(config_path)
    wait_until(lambda: reported_running(config_path.parent))
    process.stop_training(config_path.parent)
    assert process.wait_for_exit(config_path.parent, 10) == 0
    assert "(file)" in runs.run_status("alice", "r1").message


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM is POSIX only")
def test_stop_sends_sigterm(home, fake, monkeypatch):
    config_path = make_run()
    process.start_training(config_path)
    wait_until(lambda: reported_running(config_path.parent))
    monkeypatch.setattr(process, "write_text_atomic", lambda *a, **k: None)  # no STOP file
    process.stop_training(config_path.parent)
    assert process.wait_for_exit(config_path.parent, 10) == 0
    assert "(signal)" in runs.run_status("alice", "r1").message


def test_second_start_is_refused(home, fake):
    config_path = make_run()
    pid = process.start_training(config_path)
    with pytest.raises(process.TrainingAlreadyRunning, match=f"already training \\(pid {pid}\\)"):
        process.start_training(config_path)
    process.stop_training(config_path.parent, timeout=10)


def test_same_gpu_is_refused_other_gpu_allowed(home, fake):
    first = make_run("a", gpus=[0])
    second = make_run("b", gpus=[0, 1], batch_size=4)
    third = make_run("c", gpus=[1])
    process.start_training(first)
    with pytest.raises(process.TrainingAlreadyRunning, match="GPU 0 already used by run 'a'"):
        process.start_training(second)
    process.start_training(third)
    for path in (first, third):
        process.stop_training(path.parent)
    for path in (first, third):
        assert process.wait_for_exit(path.parent, 10) == 0


def test_crash_is_recorded_as_failed(home, fake):
    fake("crash")
    config_path = make_run()
    process.start_training(config_path)
    assert process.wait_for_exit(config_path.parent, 10) == 3
    raw = runs.read_status(config_path.parent)
    assert raw["state"] == "failed" and raw["exit_code"] == 3
    assert "exited with code 3" in raw["message"] and "CUDA out of memory" in raw["message"]
    status = runs.run_status("alice", "r1")
    assert status.state == "failed" and status.exit_code == 3
    assert "ran out of memory" in status.hint
    assert not (config_path.parent / "train.pid").exists()

    fake("normal")  # a failed run can be started again
    process.start_training(config_path)
    process.stop_training(config_path.parent, timeout=10)
    assert runs.run_status("alice", "r1").state == "stopped"


def test_failure_before_first_report_is_recorded(home, fake, monkeypatch):
    config_path = make_run()
    (config_path.parent / "status.json").write_text(json.dumps({"state": "stopped", "step": 7}))
    monkeypatch.setattr(process, "training_argv", lambda c, p=None: [sys.executable, "-c", "raise SystemExit(2)"])
    process.start_training(config_path)
    assert process.wait_for_exit(config_path.parent, 10) == 2
    status = runs.run_status("alice", "r1")
    assert (status.state, status.exit_code, status.step) == ("failed", 2, 7)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX only")
def test_kill_training(home, fake):
    fake("ignore-term")
    config_path = make_run()
    process.start_training(config_path)
    wait_until(lambda: reported_running(config_path.parent))
    assert process.kill_training(config_path.parent) is True
    assert process.wait_for_exit(config_path.parent, 10) == -signal.SIGKILL
    status = runs.run_status("alice", "r1")
    assert status.state == "failed" and "SIGKILL" in status.message
    assert "killed" in status.hint


def test_environment_and_cwd(home, fake):
    fake("env")
    config_path = make_run(gpus=[2, 3])
    process.start_training(config_path, extra_env={"EXTRA": "yes"})
    wait_until(lambda: (config_path.parent / "env.json").exists())
    process.stop_training(config_path.parent, timeout=10)
    env = json.loads((config_path.parent / "env.json").read_text())
    assert env == {
        "TIMBRE_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "2,3",
        "EXTRA": "yes",
        "cwd": str(paths.PROJECT_ROOT),
    }


def test_reattach_watches_a_trainer_from_an_earlier_app(home, tmp_path, monkeypatch):
    monkeypatch.setattr(process, "_REATTACH_POLL_S", 0.05)
    config_path = make_run()
    run_dir = config_path.parent
    script = str(tmp_path / "fake_trainer.py")
    proc = subprocess.Popen([sys.executable, script, "ignore-term", str(config_path)], start_new_session=True)
    try:
        record = {"pid": proc.pid, "started": runs.now_iso(), "argv": [], "gpus": []}
        (run_dir / "train.pid").write_text(json.dumps(record))
        wait_until(lambda: reported_running(run_dir))
        assert process.reattach() == [run_dir.resolve()]
        assert process.running_pid(run_dir) == proc.pid
        proc.kill()
        wait_until(lambda: not (run_dir / "train.pid").exists())
    finally:
        proc.kill()
        proc.wait()
    status = runs.run_status("alice", "r1")
    assert status.state == "failed" and "ended without reporting" in status.message


def test_reattach_cleans_up_a_dead_trainer(home):
    config_path = make_run()
    run_dir = config_path.parent
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run_dir / "train.pid").write_text(json.dumps({"pid": gone.pid, "started": runs.now_iso()}))
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "step": 4}))
    assert process.reattach() == []
    assert not (run_dir / "train.pid").exists()
    assert runs.read_status(run_dir)["state"] == "failed"
