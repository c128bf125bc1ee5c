"""Speed and memory switches of the training loop (engine/training/performance.py), on the CPU
with the tiny model: gradient checkpointing computes the same steps, 8-bit AdamW keeps 8-bit
state and resumes exactly, the GPT attends with SDPA, and the log says what runs."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import make_run, train_rows
from safetensors.torch import load_file

from engine import runs
from engine.config import ConfigError, TrainConfig
from engine.training import loop, performance


def _weights(run_dir):
    return load_file(str(runs.latest_complete_checkpoint(run_dir).path / "model.safetensors"))


def _losses(run_dir):
    return [(r["step"], r["loss_text_ce"], r["loss_mel_ce"], r["grad_norm"]) for r in train_rows(run_dir)]


def _tensors(value):
    """Every tensor inside nested dicts, lists and tuples (bitsandbytes nests its quantised state)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def test_gradient_checkpointing_computes_the_same_steps(home, tiny_model):
    plain = make_run("plain", tiny_model, max_steps=3)
    checkpointed = make_run("checkpointed", tiny_model, max_steps=3, gradient_checkpointing=True)
    assert loop.train(plain) == 0 and loop.train(checkpointed) == 0
    assert "gradient checkpointing on" in (checkpointed.parent / "train.log").read_text()
    for a, b in zip(_losses(plain.parent), _losses(checkpointed.parent), strict=True):
        assert a[0] == b[0] and a[1:] == pytest.approx(b[1:], rel=1e-5, abs=1e-6)
    wa, wb = _weights(plain.parent), _weights(checkpointed.parent)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


def test_gradient_checkpointing_is_switched_on_in_the_gpt(tiny_model):
    from engine.models import load_xtts

    gpt = load_xtts(tiny_model, eval=False).gpt
    assert not gpt.gpt.gradient_checkpointing
    performance.enable_gradient_checkpointing(gpt)
    assert gpt.gpt.gradient_checkpointing
    assert performance.attention_kernel(gpt) == "sdpa"  # transformers' scaled_dot_product_attention path


def test_adamw8bit_keeps_8bit_state_and_resumes_exactly(home, tiny_model):
    """4 steps straight == 2 steps, a new run of the loop from the checkpoint, 2 more: the same
    weights bit for bit, with bitsandbytes' 8-bit moments saved and restored."""
    straight = make_run("straight8", tiny_model, max_steps=4, optimizer="adamw8bit")
    assert loop.train(straight) == 0
    assert "optimizer AdamW8bit" in (straight.parent / "train.log").read_text()
    split = make_run("split8", tiny_model, max_steps=2, optimizer="adamw8bit")
    assert loop.train(split) == 0
    data = yaml.safe_load(split.read_text())
    split.write_text(yaml.safe_dump(data | {"max_steps": 4}, sort_keys=False))
    assert loop.train(split) == 0
    a, b = _weights(straight.parent), _weights(split.parent)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(straight.parent) == _losses(split.parent)
    state = torch.load(runs.latest_complete_checkpoint(split.parent).path / "state.pt", weights_only=True)
    assert any(t.dtype == torch.uint8 for t in _tensors(state["optimizer"]["state"])), "no 8-bit moments saved"
    plain = make_run("plain8ref", tiny_model, max_steps=4)
    assert loop.train(plain) == 0
    wp = _weights(plain.parent)
    assert any(not torch.equal(a[k], wp[k]) for k in a), "8-bit AdamW took the same steps as AdamW"


def test_optimizer_setting_is_checked():
    with pytest.raises(ConfigError, match="optimizer: must be one of adamw, adamw8bit"):
        TrainConfig(voice="anna", run="x", optimizer="sgd")
    with pytest.raises(ConfigError, match="gradient_checkpointing: must be true or false"):
        TrainConfig(voice="anna", run="x", gradient_checkpointing=1)


def test_fused_adamw_on_cuda_only():
    param = torch.nn.Parameter(torch.zeros(3))
    cpu = performance.make_optimizer([{"params": [param]}], "adamw", torch.device("cpu"), 1e-3)
    assert not cpu.defaults.get("fused")
    with pytest.raises(performance.PerformanceError, match="must be one of"):
        performance.make_optimizer([{"params": [param]}], "lion", torch.device("cpu"), 1e-3)
