"""The training guarantees for the second family (F5-TTS, tiny random model on CPU): DDP on two
gloo processes equals one process accumulating the same micro-batches; frozen groups keep their
parameters and buffers; the EMA of the weights is saved and resumed exactly; the warm-up schedule;
the non-finite-loss skip. (Exact resume across processes through the CLI: tests/test_f5_flow.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import finish, make_run, train_rows, train_subprocess
from safetensors.torch import load_file

from engine import runs
from engine.config import TrainConfig
from engine.training import loop, process


def f5_run(name: str, model, **overrides):
    settings = dict(family="f5", lr_schedule="warmup_linear", batch_frames=500, max_audio_seconds=30.0,
                    warmup_fraction=0.25, warmup_min_updates=0)  # fmt: skip
    return make_run(name, model, **{**settings, **overrides})


def base_state(model) -> dict[str, torch.Tensor]:
    from engine.models.f5 import files

    return files.load_cfm(model).state_dict()


def test_ddp_two_gloo_processes_match_one_process(module_home, tiny_f5_model):
    single = f5_run("f5-single", tiny_f5_model, epochs=2, batch_frames=400, gradient_accumulation=2, gpus=0)
    finish(train_subprocess(single, module_home))
    ddp = f5_run("f5-ddp", tiny_f5_model, epochs=2, batch_frames=400, gradient_accumulation=1, gpus=2)
    assert "torch.distributed.run" in process.training_argv(TrainConfig.load(ddp), ddp)
    out = finish(train_subprocess(ddp, module_home), timeout=400)
    assert "[rank 1]" in out and "weights identical on all ranks" in out
    a, b = train_rows(single.parent), train_rows(ddp.parent)
    assert len(a) >= 2 and [r["samples"] for r in a] == [r["samples"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss_flow"] == pytest.approx(ra["loss_flow"], rel=1e-5)
    wa = load_file(str(runs.latest_complete_checkpoint(single.parent).path / "model.safetensors"))
    wb = load_file(str(runs.latest_complete_checkpoint(ddp.parent).path / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4) for k in wa)
    base = base_state(tiny_f5_model)
    assert any(not torch.allclose(base[k], wa[k]) for k in wa)


def test_freeze_keeps_parameters_and_buffers(module_home, tiny_f5_model):
    from engine.models.f5 import files
    from engine.models.f5.train import freeze_groups

    frozen = ["text_embedding", "transformer_blocks"]
    config = f5_run("f5-frozen", tiny_f5_model, epochs=2, freeze=frozen)
    assert loop.train(config) == 0
    trained = load_file(str(runs.latest_complete_checkpoint(config.parent).path / "model.safetensors"))
    cfm = files.load_cfm(tiny_f5_model)
    base = cfm.state_dict()
    ids = {id(t) for g in frozen for m in freeze_groups(cfm)[g] for t in [*m.parameters(), *m.buffers()]}
    frozen_names = {k for k, v in cfm.state_dict(keep_vars=True).items() if id(v) in ids}
    assert any("transformer_blocks" in k for k in frozen_names) and any("text_embed" in k for k in frozen_names)
    assert all(torch.equal(trained[k], base[k]) for k in frozen_names)
    assert any(not torch.equal(trained[k], base[k]) for k in trained if k not in frozen_names)


def test_ema_is_saved_and_resumed_exactly(module_home, tiny_f5_model):
    # A schedule that does not depend on the run's length, so that 2 + 2 epochs is the same run as 4.
    straight = f5_run("f5-ema", tiny_f5_model, epochs=4, ema_decay=0.5, lr_schedule="multistep")
    assert loop.train(straight) == 0
    split = f5_run("f5-ema-split", tiny_f5_model, epochs=2, ema_decay=0.5, lr_schedule="multistep")
    assert loop.train(split) == 0
    split.write_text(split.read_text().replace("epochs: 2", "epochs: 4"))  # the same run, longer
    assert loop.train(split) == 0
    last_a, last_b = runs.latest_complete_checkpoint(straight.parent), runs.latest_complete_checkpoint(split.parent)
    assert last_a.step == last_b.step
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(last_a.path / name)), load_file(str(last_b.path / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    raw, ema = load_file(str(last_a.path / "model.safetensors")), load_file(str(last_a.path / "ema.safetensors"))
    assert any(not torch.equal(raw[k], ema[k]) for k in raw), "the EMA lags the raw weights"
    state = torch.load(last_a.path / "state.pt", weights_only=True)
    assert state["ema_updates"] == last_a.step

    # generation speaks with the EMA weights, or with the raw ones when asked
    from engine.generate import synthesis as generate
    from engine.speech.audio import load_audio

    spoken = {
        use_ema: load_audio(generate.generate_speech(
            "anna", "Hello there.", run="f5-ema", log=lambda line: None,
            settings=generate.GenerationSettings(seed=1, nfe_step=4, use_ema=use_ema),
        ), 24000)
        for use_ema in (True, False)
    }  # fmt: skip
    assert spoken[True].numel() > 0 and not torch.equal(spoken[True], spoken[False])


def test_warmup_then_linear_decay(module_home, tiny_f5_model):
    config = f5_run("f5-lr", tiny_f5_model, epochs=4, learning_rate=1e-3)
    assert loop.train(config) == 0
    lrs = [r["lr"] for r in train_rows(config.parent)]
    total = len(lrs)
    warmup = loop.warmup_updates(TrainConfig.load(config), total)
    assert warmup >= 1 and lrs[: warmup + 1] == sorted(lrs[: warmup + 1]), lrs  # rising
    assert lrs[warmup:] == sorted(lrs[warmup:], reverse=True) and lrs[-1] < lrs[warmup], lrs  # falling
    assert max(lrs) <= 1e-3


def test_non_finite_loss_is_skipped_not_counted(module_home, tiny_f5_model, monkeypatch):
    from f5_tts.model import CFM

    real, calls = CFM.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        loss, cond, pred = real(self, *args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), cond, pred

    monkeypatch.setattr(CFM, "forward", forward)
    config = f5_run("f5-nan", tiny_f5_model, epochs=2, gradient_accumulation=1)
    assert loop.train(config) == 0
    status = json.loads((config.parent / "status.json").read_text())
    events = [r for r in runs.read_metrics(config.parent)[0] if r.get("event") == "skipped_step"]
    assert len(events) == 1 and status["skipped_steps"] == 1
    assert [r["step"] for r in train_rows(config.parent)] == list(range(1, status["step"] + 1))
