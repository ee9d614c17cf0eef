"""Label smoothing: clients train on targets smoothed by ε (a training-time calibration that
Hintersdorf et al. find lowers over-confidence). `label_smoothing: 0.1` is shorthand for
`{epsilon: 0.1}`; it enters every local loss, DP-SGD's per-sample loss included."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field

from fedmia.defenses.base import Defense, Params, register_defense


class LabelSmoothingParams(Params):
    epsilon: float = Field(..., ge=0, lt=1, description="weight moved from the true class to all classes")


@register_defense("label_smoothing", acts_on="local loss")
class LabelSmoothing(Defense):
    Params = LabelSmoothingParams

    @classmethod
    def block(cls, raw: Any) -> Any:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return {"epsilon": raw} if raw else None
        return super().block(raw)

    def describe(self) -> str:
        return f"label smoothing {self.params.epsilon}"

    def recipe(self, recipe):
        return dataclasses.replace(recipe, label_smoothing=self.params.epsilon)
