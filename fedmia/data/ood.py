"""Non-member sets whose false-positive rate the evaluator reports: held-out records and sets
far from the data, to measure how often an attack flags strangers as members.

A set is a plug-in of the `fedmia.ood_sets` entry-point group (`evaluation.ood` names them): one
function registered with `@register_ood_set(name)` that turns an `OODRequest` into
`(images, masks)` shaped like the reference (same channels and size), or into whole `Records`
(a set of real records keeps their ids). Masks stay meaningful where the kind allows, so
loss-based attacks can still score them. The evaluator names no set: it asks for each one the
scenario lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fedmia.data.datasets import load_dataset, resize_images, resize_masks
from fedmia.data.records import DatasetInfo, Records, make_ids
from fedmia.registry import Registry

SCALE_FACTOR = 3.0  # `scaled`: brightness blown up until most structure saturates
# `scaled-far`: as Hintersdorf et al. scale, far outside the data range and not clipped — the
# regime where ReLU networks grow over-confident. Fixed in advance (not tuned on any run): an
# image fed without its /255, the mistake a pipeline makes with 8-bit data.
FAR_SCALE_FACTOR = 255.0


@dataclass(frozen=True)
class OODRequest:
    """What a set is made from. `reference`: the held-out records (never trained on);
    `spare`: those of them that are not targets; `model`/`device`: the served model, for sets
    made against it (None where the caller has none); `steps`: `evaluation.ood_steps`."""

    reference: Records
    info: DatasetInfo
    count: int
    seed: int
    rng: np.random.Generator
    spare: Records | None = None
    model: Any = None
    device: Any = None
    steps: int = 40


# A maker: OODRequest -> (images, masks) or Records.
Maker = Callable[[OODRequest], "tuple[np.ndarray, np.ndarray] | Records"]
OOD_SETS: Registry[Maker] = Registry("OOD set", "fedmia.ood_sets")
register_ood_set = OOD_SETS.register


def make_ood_set(kind: str, reference: Records, info: DatasetInfo, *, count: int, seed: int,
                 spare: Records | None = None, model: Any = None, device: Any = None, steps: int = 40) -> Records:
    """The set `kind` (`count` records shaped like `reference`), ids f"ood-{kind}:{i:05d}" unless
    the set is made of real records."""
    maker = OOD_SETS.get(kind)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"ood: count must be an integer >= 1, found {count!r}")
    if len(reference) == 0:
        raise ValueError("ood: the reference records are empty")
    request = OODRequest(reference, info, int(count), seed, np.random.default_rng(seed),
                         spare if spare is not None else reference, model, device, steps)
    made = maker(request)
    if isinstance(made, Records):
        return made
    images, masks = made
    if images.shape[1:] != reference.images.shape[1:]:
        raise RuntimeError(f"OOD set {kind!r} made images of shape {images.shape[1:]}, "
                           f"expected {reference.images.shape[1:]} like the reference")
    return Records(images, masks, make_ids(f"ood-{kind}", len(images)))


def _pick(reference: Records, count: int, rng: np.random.Generator) -> Records:
    """`count` reference records, without repeats unless more are asked for than exist."""
    replace = count > len(reference)
    return reference.subset(rng.choice(len(reference), size=count, replace=replace))


@register_ood_set("heldout")
def _heldout(request: OODRequest) -> Records:
    """In-distribution non-members that are not targets: the reference row of the table."""
    return request.spare.subset(np.arange(min(request.count, len(request.spare))))


@register_ood_set("noise")
def _noise(request: OODRequest):
    """Uniform noise images with all-background masks."""
    rng, count = request.rng, request.count
    _, c, h, w = request.reference.images.shape
    images = rng.random((count, c, h, w), dtype=np.float32)
    return images, np.zeros((count, h, w), dtype=np.int64)  # noise holds no object: all background


@register_ood_set("other-dataset")
def _other_dataset(request: OODRequest):
    """Records of another procedural dataset (shapes, or digits-scenes for shapes), resized."""
    info, count, seed = request.info, request.count, request.seed
    _, c, h, w = request.reference.images.shape
    other_name = "digits-scenes" if info.name == "shapes" else "shapes"
    # Procedural datasets need at least 16 px; generate at least that, then resize to the reference.
    other, _ = load_dataset(other_name, records=count, image_size=max(16, h, w), seed=seed)
    images = resize_images(other.images, h, w)
    masks = resize_masks(other.masks, h, w)
    if c != images.shape[1]:  # the procedural sets are grayscale
        images = np.repeat(images, c, axis=1) if images.shape[1] == 1 else images.mean(axis=1, keepdims=True)
    # Clip rather than zero the foreign classes, so foreground stays foreground (e.g. binary references).
    return images, np.minimum(masks, info.num_classes - 1)


@register_ood_set("scaled")
def _scaled(request: OODRequest):
    """Held-out records with their brightness multiplied by 3, clipped to [0, 1]."""
    picked = _pick(request.reference, request.count, request.rng)
    return np.clip(picked.images * SCALE_FACTOR, 0.0, 1.0), picked.masks.copy()


@register_ood_set("scaled-far")
def _scaled_far(request: OODRequest):
    """Held-out records with their intensities multiplied by 255, not clipped: far outside [0, 1]."""
    picked = _pick(request.reference, request.count, request.rng)
    return (picked.images * FAR_SCALE_FACTOR).astype(picked.images.dtype), picked.masks.copy()


@register_ood_set("permuted")
def _permuted(request: OODRequest):
    """Held-out records with their pixels (and mask) shuffled: same histogram, no structure."""
    rng = request.rng
    picked = _pick(request.reference, request.count, rng)
    n, c, h, w = picked.images.shape
    images = picked.images.reshape(n, c, h * w).copy()
    masks = picked.masks.reshape(n, h * w).copy()
    for i in range(n):
        # Same permutation for every channel and the mask, so each pixel keeps its label.
        order = rng.permutation(h * w)
        images[i] = images[i][:, order]
        masks[i] = masks[i][order]
    return images.reshape(n, c, h, w), masks.reshape(n, h, w)

