"""What is trained: the family's freeze groups turned off (parameters and buffers kept
bit-identical), train/eval mode with frozen modules kept in eval, and the AdamW parameter groups."""

from __future__ import annotations

import torch


def freeze_groups(gpt) -> dict[str, list[torch.nn.Module]]:
    """The named module groups of coqui's XTTS GPT (engine.models.xtts.freeze_groups)."""
    from engine.models.xtts import freeze_groups as xtts_groups

    return xtts_groups(gpt)


def apply_freeze(groups: dict[str, list[torch.nn.Module]], names: list[str]) -> list[torch.nn.Module]:
    """Turn off gradients for the named groups (``{name: [modules]}``, the family's
    ``Trainee.freeze_groups``) and return their modules.

    The caller keeps these modules in eval mode (see :func:`set_train_mode`) so dropout and any
    running buffers cannot change them, and leaves their parameters out of the optimizer (so
    weight decay cannot move them either). Raises KeyError for a name not in ``groups``."""
    frozen = [m for name in names for m in groups[name]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def set_train_mode(gpt, frozen: list[torch.nn.Module]) -> None:
    """``gpt.train()`` with the frozen modules put back in eval mode."""
    gpt.train()
    for module in frozen:
        module.eval()


def optimizer_groups(gpt, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only, not on biases, norms or embeddings
    (coqui gpt_trainer ``optimizer_wd_only_on_weights``, after nanoGPT). Frozen parameters are left out."""
    norm_types = (
        torch.nn.LayerNorm,
        torch.nn.GroupNorm,
        torch.nn.BatchNorm1d,
        torch.nn.InstanceNorm1d,
    )
    decay, no_decay = [], []
    seen = set()
    for module in gpt.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if name.endswith("bias") or isinstance(module, (*norm_types, torch.nn.Embedding)):
                no_decay.append(param)
            else:
                decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
