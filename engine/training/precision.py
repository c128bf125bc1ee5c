"""Mixed precision: which ``precision:`` setting a device can train with, and its autocast dtype.

``fp32`` trains in float32. ``bf16`` and ``fp16`` run the forward pass under
``torch.autocast``: matrix products and convolutions compute in the 16-bit type, while the
master weights, the optimizer state and the reductions autocast keeps in float32 (layer norms,
softmax, cross-entropy) stay float32. bf16 keeps float32's exponent range with 8 bits of
mantissa, so it needs no loss scaling; fp16 has 11 bits of mantissa but overflows above 65504,
so the loop pairs it with ``torch.amp.GradScaler``, which multiplies the loss before the
backward pass, skips an update whose gradients overflowed and halves its scale.
(Micikevicius et al., "Mixed Precision Training", ICLR 2018; PyTorch's "Automatic Mixed
Precision" notes.)

:func:`check_precision` refuses, before anything is loaded, a setting the device cannot run:

* bf16 on a CUDA GPU needs compute capability 8.0 or newer (Ampere: A100, RTX 30xx and later).
  ``torch.cuda.is_bf16_supported()`` alone is not the test: by default it also answers True
  where bf16 is only *emulated* (a T4 or V100 can create bf16 tensors, without bf16 tensor
  cores), so it is asked with ``including_emulation=False``, for the run's own GPU.
* fp16 on the CPU is refused. Measured with torch 2.11 on an AMD EPYC with AVX-512 (and
  AVX512-BF16, but no AVX512-FP16): a 1024 x 1024 matrix product takes 48 ms in float32,
  23 ms under bf16 autocast and 1 895 ms under fp16 autocast; the forward and backward pass
  of one transformer block as wide as XTTS-v2's GPT (1024 channels, 16 heads, 400 tokens)
  760 ms, 352 ms and 15 s. fp16 on the CPU works but is 20 to 40 times slower than fp32
  and 40 to 80 times slower than bf16, which needs no grad scaler. Older torch builds have
  no fp16 CPU autocast at all (they warn that CPU autocast only supports bfloat16 and turn it
  off). bf16 or fp32 is always the better choice there.

Nothing here probes a device at import time.
"""

from __future__ import annotations

import torch

from engine.config import PRECISIONS
from engine.errors import TimbreError

#: The autocast dtype of each ``precision:`` setting (None: no autocast, float32 throughout).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class PrecisionError(TimbreError, ValueError):
    """A ``precision:`` setting this device cannot train with; the message says what to choose."""


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of ``precision`` (``"fp32"``: None, autocast off;
    ``"bf16"``: ``torch.bfloat16``; ``"fp16"``: ``torch.float16``).

    Raises PrecisionError for a setting that is not one of ``engine.config.PRECISIONS``."""
    if precision not in AUTOCAST_DTYPES:
        raise PrecisionError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return AUTOCAST_DTYPES[precision]


def check_precision(precision: str, device: torch.device, bf16_supported: bool | None = None) -> None:
    """Raise PrecisionError unless ``device`` can train with ``precision``.

    ``device`` is the run's training device (``cuda:N`` or ``cpu``). ``bf16_supported`` says
    whether that device runs bf16; None asks torch: on a CUDA GPU, compute capability 8.0 or
    newer (``torch.cuda.is_bf16_supported(including_emulation=False)`` for that GPU; any ROCm
    GPU); on the CPU, yes (CPU autocast runs bf16 on every torch 2.x build, natively on CPUs
    with AVX512-BF16 or AMX); on another device type, whether torch has autocast for it.
    fp16 is refused on the CPU (20 to 40 times slower than fp32 there, measured: see the
    module docstring); fp32 is accepted everywhere. The message names the setting, the device
    (with the GPU's name and compute capability where known) and what to choose instead.
    """
    autocast_dtype(precision)  # an unknown setting is refused first
    if precision == "fp32":
        return
    if precision == "fp16" and device.type == "cpu":
        raise PrecisionError(
            "precision: fp16 on the CPU runs matrix products 20 to 40 times slower than "
            "fp32 (the CPU has no fast float16 arithmetic; some torch builds have no fp16 autocast "
            "on the CPU at all); choose bf16, which needs no grad scaler, or fp32"
        )
    where = describe_device(device)
    if precision == "bf16" and not (_bf16_supported(device) if bf16_supported is None else bf16_supported):
        if device.type == "cuda":
            raise PrecisionError(
                f"precision: bf16 needs a CUDA GPU of compute capability 8.0 or newer (Ampere: A100, "
                f"RTX 30xx and later); {where} is not one; choose fp16 (with a gradient scaler) or fp32"
            )
        raise PrecisionError(f"precision: bf16 is not supported on {where}; choose fp32")
    if device.type not in ("cpu", "cuda") and not torch.amp.is_autocast_available(device.type):
        raise PrecisionError(f"precision: {precision} needs autocast, which torch lacks on {where}; choose fp32")


def describe_device(device: torch.device) -> str:
    """``device`` in words for a message: a CUDA GPU's name and compute capability when CUDA is
    available (``"NVIDIA A100-SXM4-80GB (cuda:0, compute capability 8.0)"``), else ``str(device)``."""
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} (cuda:{index}, compute capability {major}.{minor})"
    return str(device)


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):  # is_bf16_supported asks about the current GPU
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return True
    return torch.amp.is_autocast_available(device.type)
