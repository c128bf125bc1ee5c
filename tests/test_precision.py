"""engine/training/precision.py: which ``precision:`` each device may train with (no GPU needed:
CUDA devices are faked), and, on the CPU with the tiny model, that bf16 and fp16 steps really
compute in their 16-bit type while the master weights stay float32."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch
from helpers import make_run, train_rows
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers.pytorch_utils import Conv1D

from engine import runs
from engine.config import PRECISIONS
from engine.training import loop, precision
from engine.training.precision import PrecisionError, autocast_dtype, check_precision

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)
#: The layers whose matrix products autocast runs in the 16-bit type (the GPT-2 blocks use
#: transformers' Conv1D; the conditioning encoder Conv1d; the heads Linear).
MATMUL_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, Conv1D)


def allow_fp16_on_cpu(monkeypatch) -> None:
    """Lift :func:`check_precision`'s refusal of fp16 on the CPU (slow there, not wrong), so a
    test runs on the CPU the fp16 code path a GPU runs: float16 autocast and the grad scaler."""
    original = precision.check_precision

    def check(setting: str, device: torch.device, bf16_supported: bool | None = None) -> None:
        if (setting, device.type) != ("fp16", "cpu"):
            original(setting, device, bf16_supported)

    monkeypatch.setattr(precision, "check_precision", check)
    monkeypatch.setattr(loop, "check_precision", check, raising=False)


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    """Make torch.cuda describe one GPU without touching a driver. ``is_bf16_supported`` answers
    as torch does on that GPU: True from compute capability 8.0, and below it True only when
    emulation counts (its default)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: capability >= (8, 0) or including_emulation
    )


# --- what each device may run ------------------------------------------------------------------


def test_autocast_dtype_of_each_setting():
    assert [autocast_dtype(p) for p in PRECISIONS] == [None, torch.bfloat16, torch.float16]
    with pytest.raises(PrecisionError, match="precision: must be one of fp32, bf16, fp16, got 'fp8'"):
        autocast_dtype("fp8")
    with pytest.raises(PrecisionError, match="got 'fp8'"):
        check_precision("fp8", CPU)


def test_fp32_runs_everywhere_bf16_on_the_cpu_and_fp16_on_a_gpu():
    for device in (CPU, GPU):
        check_precision("fp32", device, bf16_supported=False)
    check_precision("bf16", CPU)
    check_precision("bf16", GPU, bf16_supported=True)
    check_precision("fp16", GPU, bf16_supported=False)


def test_bf16_on_a_gpu_without_bf16_is_refused_naming_the_setting_device_and_choices():
    with pytest.raises(PrecisionError) as refused:
        check_precision("bf16", GPU, bf16_supported=False)
    message = str(refused.value)
    assert isinstance(refused.value, ValueError)
    assert message.startswith("precision: bf16 needs a CUDA GPU of compute capability 8.0 or newer (Ampere")
    assert "cuda:0 is not one" in message and "choose fp16 (with a gradient scaler) or fp32" in message


def test_a_gpu_that_only_emulates_bf16_is_refused_by_name(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    assert torch.cuda.is_bf16_supported(), "torch's default answer counts emulation: not the test to use"
    with pytest.raises(PrecisionError, match=r"Tesla T4 \(cuda:0, compute capability 7\.5\) is not one; choose fp16"):
        check_precision("bf16", GPU)
    check_precision("fp16", GPU)

    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    check_precision("bf16", GPU)


def test_fp16_on_the_cpu_is_refused_pointing_to_bf16():
    with pytest.raises(PrecisionError) as refused:
        check_precision("fp16", CPU)
    message = str(refused.value)
    assert message.startswith("precision: fp16 on the CPU runs matrix products 20 to 40 times slower than fp32")
    assert message.endswith("choose bf16, which needs no grad scaler, or fp32")


def test_bf16_where_the_caller_knows_the_device_lacks_it_is_refused():
    with pytest.raises(PrecisionError, match="precision: bf16 is not supported on cpu; choose fp32"):
        check_precision("bf16", CPU, bf16_supported=False)


@pytest.mark.skipif(
    not hasattr(loop, "precision") and not hasattr(loop, "check_precision"),
    reason="engine/training/loop.py does not call check_precision yet",
)
def test_the_trainer_refuses_fp16_on_the_cpu_before_training(home, tiny_model):
    config = make_run("fp16-cpu", tiny_model, max_steps=1, precision="fp16")
    assert loop.train(config) == loop.EXIT_FAILED
    status = runs.run_status("anna", "fp16-cpu")
    assert status.state == "failed" and "precision: fp16 on the CPU" in status.message
    assert not train_rows(config.parent) and runs.latest_complete_checkpoint(config.parent) is None


# --- what mixed precision computes ----------------------------------------------------------------


class LowStartScaler(torch.amp.GradScaler):
    """The loop's GradScaler, starting at 2**12 instead of 2**16. At 2**16 this tiny model's
    first two fp16 batches overflow (the scaler skips them and halves its scale, by design),
    so an fp16 run would start on another batch than an fp32 one, and an injected overflow
    would mix with its own. At 2**12 it neither overflows nor underflows (measured: the same
    gradient error from 2**8 to 2**15; at 2**3 one tensor loses 9 % to underflow)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("init_scale", 2.0**12)
        super().__init__(*args, **kwargs)


@dataclass
class OneStep:
    """One optimizer update of a run, from the tiny model's initial weights."""

    loss: float  # of the first batch, from metrics.jsonl
    samples: list[int]
    grads: list[torch.Tensor]  # the (unscaled) gradients the optimizer applied, in parameter order
    weights: dict[str, torch.Tensor]  # model.safetensors after the update
    layer_dtypes: set[torch.dtype]  # output dtypes of the GPT's matrix-product layers in training


def one_step(run: str, tiny_model, setting: str) -> OneStep:
    grads: list[torch.Tensor] = []
    layer_dtypes: set[torch.dtype] = set()

    def before_update(optimizer, args, kwargs):
        if not grads:
            grads.extend(
                p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            )

    def layer_output(module, inputs, output):
        if module.training and isinstance(module, MATMUL_LAYERS):  # the DVAE runs in eval mode
            layer_dtypes.add(output.dtype)

    hooks = [
        register_optimizer_step_pre_hook(before_update),
        torch.nn.modules.module.register_module_forward_hook(layer_output),
    ]
    try:
        config = make_run(run, tiny_model, max_steps=1, epochs=1, precision=setting, validate_every=0)
        assert loop.train(config) == 0
    finally:
        for hook in hooks:
            hook.remove()
    (row,) = train_rows(config.parent)
    weights = load_file(str(runs.latest_complete_checkpoint(config.parent).path / "model.safetensors"))
    return OneStep(row["loss"], row["samples"], grads, weights, layer_dtypes)


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors together (L2)."""
    assert len(a) == len(b)
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


def test_bf16_and_fp16_steps_compute_in_their_dtype_and_keep_float32_master_weights(home, tiny_model, monkeypatch):
    """One update from the same weights on the same batch in fp32, bf16 and fp16: the GPT's
    matrix products run in the 16-bit type, so the gradients differ from fp32 by a fraction of
    that type's machine epsilon (2**-7 for bf16's 8 significant bits, 2**-10 for fp16's 11),
    about 8 times more for bf16; the saved weights are float32 and moved by the same order."""
    allow_fp16_on_cpu(monkeypatch)
    monkeypatch.setattr(torch.amp, "GradScaler", LowStartScaler)
    lr = 1e-3  # make_run's learning rate
    fp32 = one_step("fp32", tiny_model, "fp32")
    again = one_step("fp32-again", tiny_model, "fp32")
    assert fp32.layer_dtypes == {torch.float32}
    assert all(torch.equal(a, b) for a, b in zip(again.grads, fp32.grads, strict=True))
    assert all(torch.equal(again.weights[k], fp32.weights[k]) for k in fp32.weights), "any difference is the dtype's"

    grad_error = {}
    for setting, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        run = one_step(setting, tiny_model, setting)
        eps = torch.finfo(dtype).eps
        assert run.layer_dtypes == {dtype}, f"{setting}: the GPT's matrix products run in {dtype}"
        assert run.samples == fp32.samples, "the same batch"
        grad_error[setting] = relative_difference(run.grads, fp32.grads)
        assert eps / 20 < grad_error[setting] < eps, (setting, grad_error[setting], eps)
        assert 0 < abs(run.loss - fp32.loss) / fp32.loss < eps, "the loss is computed in the 16-bit type too"

        assert {w.dtype for w in run.weights.values()} == {torch.float32}, "master weights stay float32"
        moved = torch.cat([(run.weights[k] - fp32.weights[k]).abs().flatten() for k in fp32.weights])
        # AdamW's first update moves each weight by about lr * sign(gradient): two runs differ by
        # up to 2 * lr where a small gradient component changes sign, elsewhere by rounding.
        assert moved.max() <= 2 * lr * 1.001
        assert eps / 20 < moved.mean() / lr < eps, (setting, moved.mean().item() / lr, eps)
    assert 3 < grad_error["bf16"] / grad_error["fp16"] < 24, f"3 more mantissa bits, about 8x: {grad_error}"
