"""Gradient canaries for auditing DP empirically (the clients' side).

`m` canaries are drawn from the scenario's seed: each is one coordinate of the model's trainable
parameters and a fair coin saying whether it is inserted. The audited client treats every
inserted canary as one more training record whose gradient is a Dirac vector — `norm` on its
coordinate, zero elsewhere (Nasr et al. 2023's gradient canaries: the worst case a clipped
record can be). Under DP-SGD a canary joins each Poisson batch with the records' rate q and is
clipped, summed and noised by Opacus like any record; in plain training it joins the shuffled
minibatches. Only the evaluator reads the coins (`fedmia/evaluation/epsilon_lower.py`); the auditor's
scores use the coordinates alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Canaries:
    coordinates: np.ndarray  # (m,) flat indices into the trainable parameters, in named_parameters order
    inserted: np.ndarray  # (m,) bool: the coins (ground truth)
    norm: float

    def present(self) -> np.ndarray:
        """Coordinates of the canaries the audited client actually holds."""
        return self.coordinates[self.inserted]


def draw_canaries(seed: int, count: int, dimension: int, norm: float) -> Canaries:
    rng = np.random.default_rng([seed, 4242, count])
    coordinates = rng.choice(dimension, size=min(count, dimension), replace=False)
    return Canaries(np.sort(coordinates), rng.random(len(coordinates)) < 0.5, float(norm))


def trainable_dimension(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def dirac_sum(params: dict[str, torch.Tensor], coordinates: np.ndarray, value: float) -> dict[str, torch.Tensor]:
    """The summed gradient of the canaries at `coordinates` (distinct: a draw without
    replacement), per parameter tensor: `value` at each coordinate, zero elsewhere. Dense and
    model-sized once, not once per canary: a thousand canaries cost what one does."""
    out, offset = {}, 0
    for name, p in params.items():
        flat = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
        inside = (coordinates >= offset) & (coordinates < offset + p.numel())
        if inside.any():
            flat[torch.as_tensor(coordinates[inside] - offset)] = value
        out[name] = flat.view(p.shape)
        offset += p.numel()
    return out


def add_canary_gradient(params: dict[str, torch.Tensor], coordinates: np.ndarray, norm: float, scale: float) -> None:
    """Plain training: add `scale` × the canaries' summed Dirac gradients to `.grad` (scale =
    1 / batch size, so each canary weighs like one record of the batch)."""
    if len(coordinates) == 0:
        return
    summed = dirac_sum(params, coordinates, norm * scale)
    for name, p in params.items():
        p.grad = summed[name] if p.grad is None else p.grad + summed[name]


def gradient_canaries(scenario, model: torch.nn.Module) -> Canaries | None:
    """The scenario's DP-audit canaries (the same draw on the client and the evaluator)."""
    dp = scenario.defenses.dp
    if dp is None or not dp.audit_canaries:
        return None
    norm = dp.max_grad_norm if dp.mode == "local" else 1.0
    return draw_canaries(scenario.seed, dp.audit_canaries, trainable_dimension(model), norm)
