"""An augmentation-aware loss attack (`loss-augment`), for models trained with augmentation.

A model trained under flips and 90° rotations fits every view of a training scan it saw, not
only the scan as it is; a plain loss attack queries the plain view alone, and on such a model
it lost 0.285 [0.274, 0.297] of AUC (docs/own-data.md) — an under-estimate, not a defense, if an
adversary who knows the recipe can query the other views (Choquette-Choo et al., ICML 2021,
"Label-Only Membership Inference Attacks": query under the training augmentations and combine).

The views are the federation's own augmentations, which the server knows (it sends the
clients their recipe): with `flips`, the four combinations of left-right and up-down flips; with
`rot90`, the four rotations; with both, the eight symmetries of the square; none, the plain view
only (then this is the `loss` attack). `views: dihedral` queries all eight whatever the recipe.
Each view's mean pixel loss (through the query API, masks transformed alike) is combined by the
`aggregate` fixed in advance — the mean (default) or the minimum — and a low combined loss means
member. The threshold comes from the adversary's population, as for every threshold attack.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedmia.attacks.base import PROBABILITY_FLOOR, AdversaryView, register_attack, summaries_from_probabilities
from fedmia.attacks.threshold import ThresholdAttack
from fedmia.data.records import Records

View = Callable[[np.ndarray], np.ndarray]  # acts on the last two axes (H, W) of images and masks alike


class AugmentAwareParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    views: Literal["recipe", "dihedral"] = Field(
        "recipe", description="recipe: the federation's own augmentations (federation.augment flips / rot90, which "
        "the server sends the clients); dihedral: all eight flips and rotations of the square")
    aggregate: Literal["mean", "min"] = Field("mean", description="how the views' losses combine, fixed in advance")


def symmetry_views(flips: bool, rot90: bool) -> list[tuple[str, View]]:
    """(name, transform) of each view the training augmentations produce; the plain view first."""
    flip_set = [(False, False), (True, False), (False, True), (True, True)] if flips else [(False, False)]
    turns = range(4) if rot90 else range(1)
    seen, views = set(), []
    for k in turns:
        for lr, ud in flip_set:
            probe = _apply(np.arange(16).reshape(4, 4), k, lr, ud)
            key = probe.tobytes()
            if key not in seen:  # rotations and flips together repeat views: each once
                seen.add(key)
                views.append((f"rot{90 * k}" + ("-lr" if lr else "") + ("-ud" if ud else ""),
                              lambda a, k=k, lr=lr, ud=ud: _apply(a, k, lr, ud)))
    return views


def _apply(array: np.ndarray, k: int, lr: bool, ud: bool) -> np.ndarray:
    out = np.rot90(array, k, axes=(-2, -1)) if k else array
    if lr:
        out = out[..., ::-1]
    if ud:
        out = out[..., ::-1, :]
    return np.ascontiguousarray(out)


@register_attack("loss-augment")
class AugmentAwareLoss(ThresholdAttack):
    """The loss attack over the views the federation trained on, combined."""

    assumes = ("its population data (to set a threshold) and the federation's augmentation recipe (sent to the "
               "clients); the released model's outputs")

    Params = AugmentAwareParams

    def views(self, view: AdversaryView) -> list[tuple[str, View]]:
        if self.params.views == "dihedral":
            return symmetry_views(True, True)
        recipe = view.recipe
        return symmetry_views(bool(getattr(recipe, "flips", False)), bool(getattr(recipe, "rot90", False)))

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        floor = PROBABILITY_FLOOR if view.api.hardened else 0.0
        losses = []
        for _, transform in self.views(view):
            images, masks = transform(records.images), transform(records.masks)
            losses.append(summaries_from_probabilities(view.api.query(images), masks, floor=floor)["loss"])
        combined = np.mean(losses, axis=0) if self.params.aggregate == "mean" else np.min(losses, axis=0)
        return -combined
