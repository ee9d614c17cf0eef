"""Output hardening: what a deployed model's query API returns (He et al., Segmentations-Leak).

Black-box attacks query the final global model through this API; white-box attacks (the
server's own weights and updates) are unaffected. Under `argmax` only the predicted label map
leaves the API, so every score-based attack becomes a label-only one.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fedmia.defenses.base import Defense, Params, register_defense


class OutputParams(Params):
    """What the model's query API returns to a black-box adversary (He et al.'s defenses)."""

    mode: Literal["argmax", "topk", "temperature", "gaussian"] = Field(
        description="argmax: the label map only; topk: the k largest scores per pixel; temperature: "
        "softened probabilities; gaussian: probabilities plus noise")
    k: int = Field(1, ge=1, description="topk: how many per-pixel scores survive")
    temperature: float = Field(1.0, gt=0, description="temperature: softmax(logits / T)")
    sigma: float = Field(0.1, ge=0, description="gaussian: std of noise added to probabilities")


@register_defense("output", acts_on="query")
class OutputHardening(Defense):
    Params = OutputParams
    # label maps (argmax, top-k) are what label-only attacks read: label-augment scores a record by
    # its label map under flips, shifts and noise (Choquette-Choo et al. 2021)
    adaptive_attacks = ("label-augment",)

    def describe(self) -> str:
        return f"output: {self.params.mode}"

    def postprocess(self, probs: torch.Tensor, logits: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        # from the logits, as a deployed API computes its answer (temperature needs them)
        return api_probabilities(logits, self.params, generator)


def api_probabilities(logits: torch.Tensor, spec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-pixel class probabilities (N, C, H, W) as the API would return them."""
    if spec is None:
        return torch.softmax(logits, dim=1)
    if spec.mode == "temperature":
        return torch.softmax(logits / spec.temperature, dim=1)
    probs = torch.softmax(logits, dim=1)
    if spec.mode == "argmax":
        return torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    if spec.mode == "topk":
        k = min(spec.k, probs.shape[1])
        top = probs.topk(k, dim=1)
        kept = torch.zeros_like(probs).scatter_(1, top.indices, top.values)
        return kept / kept.sum(1, keepdim=True)
    if spec.mode == "gaussian":
        noise = torch.randn(probs.shape, generator=generator, dtype=probs.dtype) * spec.sigma
        noisy = (probs + noise.to(probs.device)).clamp_min(0)
        return noisy / noisy.sum(1, keepdim=True).clamp_min(1e-12)
    raise ValueError(f"unknown output defense {spec.mode!r}")
