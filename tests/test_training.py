"""The training loop on CPU with the tiny model: exact resume across processes, stop requests,
DDP on two gloo processes, freezing, divergence, the dataset check."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import torch
from helpers import finish, make_run, train_rows, train_subprocess
from safetensors.torch import load_file

from engine import runs
from engine.config import TrainConfig
from engine.training import process


def comparable(rows: list[dict]) -> list[tuple]:
    keys = ("step", "epoch", "loss_text_ce", "loss_mel_ce", "loss", "lr", "grad_norm")
    return [tuple(r[k] for k in keys) + (tuple(r["samples"]),) for r in rows]


def test_resume_is_exact_across_processes(home, tiny_model):
    """7 steps straight == about 3 steps, a Stop that lands inside an accumulation group,
    a new process, and the rest: same weights (torch.equal), losses, samples, LR and steps."""
    straight = make_run("straight", tiny_model, max_steps=7)
    finish(train_subprocess(straight, home))

    split = make_run("split", tiny_model, max_steps=7)
    proc = train_subprocess(split, home)
    deadline = time.time() + 240
    while time.time() < deadline and not any(r["step"] >= 2 for r in train_rows(split.parent)):
        time.sleep(0.05)
    (split.parent / "STOP").write_text("")  # arrives while a step (2 micro-batches) is running
    out = finish(proc)
    stopped_at = json.loads((split.parent / "status.json").read_text())
    assert stopped_at["state"] == "stopped" and f"stopped at step {stopped_at['step']}" in out
    assert 2 <= stopped_at["step"] < 7
    assert runs.latest_complete_checkpoint(split.parent).step == stopped_at["step"]
    assert runs.run_status("anna", "split").state == "stopped"
    finish(train_subprocess(split, home))

    a = load_file(str(runs.find_checkpoint(straight.parent, "step-0000007").path / "model.safetensors"))
    b = load_file(str(runs.find_checkpoint(split.parent, "step-0000007").path / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(train_rows(straight.parent)) == comparable(train_rows(split.parent))
    assert [r["step"] for r in train_rows(split.parent)] == list(range(1, 8))
    val = lambda d: [(r["step"], r["loss"]) for r in runs.read_metrics(d)[0] if r.get("split") == "validation"]  # noqa: E731
    assert val(straight.parent) == val(split.parent) and len(val(straight.parent)) == 2
    state = torch.load(runs.find_checkpoint(split.parent).path / "state.pt", weights_only=True)
    assert state["step"] == 7 and "rng" in state and "scheduler" in state and "optimizer" in state


def test_ddp_two_gloo_processes_match_one_process(home, tiny_model):
    """gpus: 2 on CPU runs under torchrun with gloo: the ranks take disjoint halves of each
    global batch, DDP averages their gradients, and the result equals one process that
    accumulates the same micro-batches."""
    single = make_run("single", tiny_model, epochs=2, batch_size=4, gradient_accumulation=2, gpus=0)
    finish(train_subprocess(single, home))
    ddp = make_run("ddp", tiny_model, epochs=2, batch_size=4, gradient_accumulation=1, gpus=2)
    argv = process.training_argv(TrainConfig.load(ddp), ddp)
    assert "torch.distributed.run" in argv and "--nproc_per_node" in argv
    out = finish(train_subprocess(ddp, home), timeout=400)  # `engine train` relaunches itself under torchrun
    assert "[rank 1]" in out, "a second process trained"
    assert "weights identical on all ranks" in out
    a, b = train_rows(single.parent), train_rows(ddp.parent)
    assert [r["step"] for r in b] == list(range(1, len(b) + 1)), "only rank 0 writes metrics"
    assert [r["samples"] for r in a] == [r["samples"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss_mel_ce"] == pytest.approx(ra["loss_mel_ce"], rel=1e-5)
        assert rb["loss_text_ce"] == pytest.approx(ra["loss_text_ce"], rel=1e-5)
    wa = load_file(str(runs.latest_complete_checkpoint(single.parent).path / "model.safetensors"))
    wb = load_file(str(runs.latest_complete_checkpoint(ddp.parent).path / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4) for k in wa)
    # and training moved the weights at all
    from engine.models import load_xtts

    base = load_xtts(tiny_model, eval=False).gpt.state_dict()
    assert any(not torch.allclose(base[k], wa[k]) for k in wa)


def test_freeze_keeps_parameters_buffers_and_dvae(home, tiny_model):
    from engine.models import load_dvae, load_xtts
    from engine.training import loop
    from engine.training.freezing import freeze_groups

    config = make_run("frozen", tiny_model, epochs=1, freeze=["transformer", "conditioning_encoder", "text_head"])
    dvae_before = {k: v.clone() for k, v in load_dvae(tiny_model).state_dict().items()}
    assert loop.train(config) == 0
    trained = load_file(str(runs.latest_complete_checkpoint(config.parent).path / "model.safetensors"))
    gpt = load_xtts(tiny_model, eval=False).gpt
    base = gpt.state_dict()
    groups = freeze_groups(gpt)
    frozen_names = set()
    for group in ("transformer", "conditioning_encoder", "text_head"):
        for module in groups[group]:
            ids = {id(t) for t in list(module.parameters()) + list(module.buffers())}
            frozen_names |= {k for k, v in gpt.state_dict(keep_vars=True).items() if id(v) in ids}
    assert frozen_names
    for name in frozen_names:
        assert torch.equal(trained[name], base[name]), name
    assert any(not torch.equal(trained[k], base[k]) for k in trained if k not in frozen_names)
    dvae_after = load_dvae(tiny_model).state_dict()
    assert all(torch.equal(dvae_before[k], dvae_after[k]) for k in dvae_before)


def test_dataset_check_names_every_unusable_line(home, tiny_model, tmp_path, monkeypatch):
    wavs = home / "datasets" / "anna" / "wavs"
    (wavs / "broken.wav").write_bytes(b"RIFF not really a wav")
    subprocess.run(
        ["sox", "-n", "-r", "22050", "-c", "1", str(wavs / "long.wav"), "synth", "13", "sine", "300"], check=True
    )
    bad_home = tmp_path / "home"
    (bad_home / "datasets" / "bad").mkdir(parents=True)
    (bad_home / "datasets" / "bad" / "wavs").symlink_to(wavs)
    lines = [
        "wavs/clip0.wav|Çà ☃ ünïcode☃|bad",
        "wavs/clip1.wav|" + "word " * 120 + "|bad",
        "wavs/broken.wav|A broken file.|bad",
        "wavs/long.wav|A clip that is too long.|bad",
        "wavs/missing.wav|No such file.|bad",
    ]
    (bad_home / "datasets" / "bad" / "train.csv").write_text("audio_file|text|speaker_name\n" + "\n".join(lines) + "\n")
    monkeypatch.setenv("TIMBRE_HOME", str(bad_home))
    config = TrainConfig(voice="bad", run="r", base_model=str(tiny_model), epochs=1, batch_size=1).save_new()
    from engine.training import loop

    assert loop.train(config) == loop.EXIT_FAILED
    status = json.loads((config.parent / "status.json").read_text())
    log = (config.parent / "train.log").read_text()
    assert status["state"] == "failed" and "dataset check" in status["message"]
    for needle in ("train.csv:2", "unknown characters", "train.csv:3", "too long", "train.csv:4", "undecodable",
                   "train.csv:6", "missing.wav"):  # fmt: skip
        assert needle in log, needle
    assert "train.csv:5 (long.wav): too long" in log
    assert config.parent.is_dir() and (config.parent / "train.yaml").is_file(), "a failed run keeps its folder"
