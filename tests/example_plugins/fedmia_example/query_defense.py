"""Example plug-in: a query-stage defense is this one file — the API rounds every score it returns."""

import torch
from pydantic import Field

from fedmia.defenses.base import Defense, Params, register_defense


class CoarseParams(Params):
    decimals: int = Field(1, ge=0, le=6, description="decimal places each returned probability keeps")


@register_defense("example-coarse-scores", acts_on="query")
class CoarseScores(Defense):
    """The query API returns probabilities rounded to a few decimals (renormalised per pixel)."""

    Params = CoarseParams

    def describe(self) -> str:
        return f"coarse scores ({self.params.decimals} decimals)"

    def postprocess(self, probs: torch.Tensor, logits: torch.Tensor, generator=None) -> torch.Tensor:
        rounded = torch.round(probs * 10**self.params.decimals) / 10**self.params.decimals
        return rounded / rounded.sum(1, keepdim=True).clamp_min(1e-12)
