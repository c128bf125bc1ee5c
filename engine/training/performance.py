"""Speed and memory switches of the training loop: TF32 matmuls, the optimizer (fused AdamW,
or 8-bit AdamW from bitsandbytes), gradient checkpointing of the GPT blocks, and the attention
kernel the GPT uses. Each is a train.yaml setting (engine/config.py) or decided from the
device, and :func:`describe` says in the log what a run uses.
"""

from __future__ import annotations

import torch

from engine.config import OPTIMIZERS
from engine.errors import TimbreError


class PerformanceError(TimbreError, ValueError):
    """A speed or memory setting this machine cannot honour; the message says what to choose."""


def configure_backends(device: torch.device, tf32: bool) -> None:
    """Allow TF32 in CUDA matmuls and cuDNN convolutions when ``tf32`` (Ampere and newer run
    fp32 matmuls on tensor cores with a 10-bit mantissa; PyTorch's own recommendation for
    training, "TensorFloat-32 (TF32) on Ampere (and later) devices" in its CUDA semantics
    notes). No effect on the CPU or under bf16/fp16 autocast, whose matmuls are 16-bit anyway."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def make_optimizer(groups: list[dict], name: str, device: torch.device, lr: float) -> torch.optim.Optimizer:
    """The optimizer of a run, with the XTTS-v2 recipe's AdamW settings (betas 0.9/0.96, eps 1e-8).

    ``"adamw"``: ``torch.optim.AdamW``, fused (one CUDA kernel for all parameters) on a GPU, the
    default ``foreach`` implementation on the CPU. ``"adamw8bit"``: bitsandbytes' ``AdamW8bit``
    (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", 2022): both moments in 8
    bits, block-wise quantised, about a quarter of AdamW's optimizer memory (tensors under 4096
    elements keep 32-bit state, bitsandbytes' ``min_8bit_size``). Raises PerformanceError for
    an unknown name or when bitsandbytes is not installed.
    """
    betas, eps = (0.9, 0.96), 1e-8
    if name == "adamw":
        fused = device.type == "cuda"
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise PerformanceError(
                f"optimizer: adamw8bit needs the bitsandbytes package ({error}); install it or choose adamw"
            ) from None
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps)
    raise PerformanceError(f"optimizer: must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def enable_gradient_checkpointing(gpt) -> None:
    """Recompute the activations of the GPT's transformer blocks in the backward pass instead of
    keeping them (transformers' ``activation_checkpointing_enable``, non-reentrant
    ``torch.utils.checkpoint``, so frozen blocks and inputs without gradients work). Memory for
    activations falls from one set per block to one block's; each step computes the forward
    pass about twice.

    XTTS feeds the transformer ``inputs_embeds`` (its token embedding ``wte`` is deleted), so
    the model is told so first: otherwise transformers would hook ``wte`` to make the inputs
    require gradients, and fail."""
    gpt.gpt.main_input_name = "inputs_embeds"
    gpt.gpt.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def attention_kernel(gpt) -> str:
    """The attention implementation the GPT's transformer runs (transformers' ``_attn_implementation``:
    ``"sdpa"`` is ``torch.nn.functional.scaled_dot_product_attention``, which picks flash or
    memory-efficient kernels on a GPU; ``"eager"`` the plain matmul-softmax)."""
    inner = getattr(gpt, "gpt", None)
    if inner is None or not hasattr(inner, "config"):
        return "the family's own"  # not a transformers model (F5-TTS's DiT uses SDPA itself)
    return str(getattr(inner.config, "_attn_implementation", None) or "eager")


def describe(optimizer: torch.optim.Optimizer, gpt, device: torch.device, checkpointing: bool) -> str:
    """One log line: the optimizer (and whether fused), the attention kernel, checkpointing, TF32."""
    name = type(optimizer).__name__
    if getattr(optimizer, "defaults", {}).get("fused"):
        name += " (fused)"
    parts = [f"optimizer {name}", f"attention {attention_kernel(gpt)}",
             f"gradient checkpointing {'on' if checkpointing else 'off'}"]  # fmt: skip
    if device.type == "cuda":
        parts.append(f"TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    return ", ".join(parts)
