"""A model without BatchNorm: what per-sample gradients (local DP-SGD) and clipped whole updates
(central DP) need. Not a plug-in: the model factory applies it when the scenario's `model.norm`
says `group`, or says `auto` and an active defense declares `needs_group_norm`."""

from __future__ import annotations

from torch import nn


def to_dp_compatible(model: nn.Module) -> nn.Module:
    """BatchNorm → GroupNorm (Opacus's own fix), and nothing in place on hooked outputs."""
    from opacus.validators import ModuleValidator  # opacus is imported where used: it pulls in
    # scipy.stats (~1 s per process), which every Ray worker would pay in runs without DP
    model = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"model cannot be trained with DP-SGD: {errors[0]}")
    return model
