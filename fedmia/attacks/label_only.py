"""A label-only attack for APIs that return label maps (argmax / top-1): the data-augmentation
attack of Choquette-Choo et al. (ICML 2021), for segmentation.

A model that trained on a scan labels it correctly, and keeps labelling it correctly when the
scan is flipped, shifted by a pixel or two, or lightly noised; a scan it never saw loses pixels
at the lesion's edge under the same small changes. The attack queries each record under a fixed
set of such views and scores it by how much of its label map the API gets right, on average over
the views. Only the predicted labels are read (the argmax of whatever the API returns), so the
score is the same under soft and hard outputs; no reference model is trained.

"Right" is the record's *balanced* pixel accuracy: the mean over the classes present in its mask
of the share of that class's pixels labelled as it. Plain pixel accuracy is dominated by the
background, which every model gets right (the saturation that sinks LiRA's image-mean φ). The
views are fixed in advance, not tuned: the record itself, a horizontal flip, shifts by 1..`shift`
pixels along each axis (compared on the pixels that did not wrap round), and `noise` draws of
Gaussian noise at each of 5% and 10% of the image's own spread. The decision threshold comes from
the adversary's population (the false-alarm rate it accepts), as for every threshold attack.

Measured (lira.yaml's federation, seeds 3-5, argmax outputs; docs/threat-models.md): AUC 0.668
[0.576, 0.760], below the plain label-map error rate (`loss` under argmax, 0.791) in every seed;
the calibrated attacks (RMIA, LiRA) are the label-only attacks that work there.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedmia.attacks.base import AdversaryView, register_attack
from fedmia.attacks.threshold import ThresholdAttack
from fedmia.data.records import Records

NOISE_LEVELS = (0.05, 0.10)  # of each image's own standard deviation


class LabelAugmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shift: int = Field(2, ge=0, le=8, description="largest shift in pixels (each of 1..shift, both ways, both axes)")
    flip: bool = Field(True, description="include the horizontal flip")
    noise: int = Field(2, ge=0, le=16, description="noisy copies at each of 5% and 10% of the image's spread")


def balanced_accuracy(labels: np.ndarray, masks: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per record: mean over the classes present in its mask of the share of that class's
    (valid) pixels labelled as it. labels, masks: (N, H, W); valid: (H, W) or None."""
    valid = np.ones(masks.shape[1:], dtype=bool) if valid is None else valid
    scores = np.zeros(len(masks))
    for i, (label, mask) in enumerate(zip(labels, masks)):
        label, mask = label[valid], mask[valid]
        recalls = [np.mean(label[mask == c] == c) for c in np.unique(mask)]
        scores[i] = np.mean(recalls) if recalls else 0.0
    return scores


def _views(shift: int, flip: bool, noise: int):
    """(name, transform(images, masks, rng) -> (images, masks, valid pixels or None))."""
    views = [("identity", lambda x, y, rng: (x, y, None))]
    if flip:
        views.append(("flip", lambda x, y, rng: (x[..., ::-1].copy(), y[..., ::-1].copy(), None)))
    for d in range(1, shift + 1):
        for axis, along in ((-2, "rows"), (-1, "columns")):
            for sign in (1, -1):
                views.append((f"shift-{along}{sign * d:+d}", _shifted(sign * d, axis)))
    for level in NOISE_LEVELS:
        for k in range(noise):
            views.append((f"noise{level}-{k}", _noised(level)))
    return views


def _shifted(step: int, axis: int):
    def apply(x, y, rng):
        valid = np.ones(y.shape[1:], dtype=bool)
        index = [slice(None)] * 2
        index[axis] = slice(0, step) if step > 0 else slice(step, None)  # what wrapped round
        valid[tuple(index)] = False
        return np.roll(x, step, axis=axis), np.roll(y, step, axis=axis), valid
    return apply


def _noised(level: float):
    def apply(x, y, rng):
        spread = x.std(axis=(1, 2, 3), keepdims=True)
        return (x + level * spread * rng.standard_normal(x.shape)).astype(x.dtype), y, None
    return apply


@register_attack("label-augment")
class LabelAugmentAttack(ThresholdAttack):
    """A threshold attack (its threshold from the population) on the augmented label-map score."""

    assumes = "its population data (to set a threshold); the released model's label maps only"

    Params = LabelAugmentParams

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        rng = np.random.default_rng([view.seed, 2021])  # the same noise for every record set
        scores = []
        for _, transform in _views(self.params.shift, self.params.flip, self.params.noise):
            images, masks, valid = transform(records.images, records.masks, rng)
            labels = view.api.query(images).argmax(1).numpy()
            scores.append(balanced_accuracy(labels, masks, valid))
        return np.mean(scores, axis=0)
