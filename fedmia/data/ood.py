"""Out-of-distribution non-member sets, to measure how often an attack flags strangers as members.

Every kind returns Records shaped like the reference (same channels and size) with ids
f"ood-{kind}:{i:05d}". Masks stay meaningful where the kind allows, so loss-based attacks can
still score them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fedmia.data.datasets import load_dataset, resize_images, resize_masks
from fedmia.data.records import DatasetInfo, Records, make_ids
from fedmia.registry import Registry

OOD_KINDS = ("noise", "other-dataset", "scaled", "permuted")
SCALE_FACTOR = 3.0  # `scaled`: brightness blown up until most structure saturates

# A maker: (reference, info, count, rng, seed) -> (images, masks).
Maker = Callable[[Records, DatasetInfo, int, np.random.Generator, int], "tuple[np.ndarray, np.ndarray]"]
_MAKERS: Registry[Maker] = Registry("ood kind")


def make_ood_set(kind: str, reference: Records, info: DatasetInfo, *, count: int, seed: int) -> Records:
    maker = _MAKERS.get(kind)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"ood: count must be an integer >= 1, found {count!r}")
    if len(reference) == 0:
        raise ValueError("ood: the reference records are empty")
    images, masks = maker(reference, info, int(count), np.random.default_rng(seed), seed)
    return Records(images, masks, make_ids(f"ood-{kind}", int(count)))


def _pick(reference: Records, count: int, rng: np.random.Generator) -> Records:
    """`count` reference records, without repeats unless more are asked for than exist."""
    replace = count > len(reference)
    return reference.subset(rng.choice(len(reference), size=count, replace=replace))


@_MAKERS.register("noise")
def _noise(reference: Records, info: DatasetInfo, count: int, rng: np.random.Generator, seed: int):
    _, c, h, w = reference.images.shape
    images = rng.random((count, c, h, w), dtype=np.float32)
    return images, np.zeros((count, h, w), dtype=np.int64)  # noise holds no object: all background


@_MAKERS.register("other-dataset")
def _other_dataset(reference: Records, info: DatasetInfo, count: int, rng: np.random.Generator, seed: int):
    _, c, h, w = reference.images.shape
    other_name = "digits-scenes" if info.name == "shapes" else "shapes"
    # Procedural datasets need at least 16 px; generate at least that, then resize to the reference.
    other, _ = load_dataset(other_name, records=count, image_size=max(16, h, w), seed=seed)
    images = resize_images(other.images, h, w)
    masks = resize_masks(other.masks, h, w)
    if c != images.shape[1]:  # the procedural sets are grayscale
        images = np.repeat(images, c, axis=1) if images.shape[1] == 1 else images.mean(axis=1, keepdims=True)
    # Clip rather than zero the foreign classes, so foreground stays foreground (e.g. binary references).
    return images, np.minimum(masks, info.num_classes - 1)


@_MAKERS.register("scaled")
def _scaled(reference: Records, info: DatasetInfo, count: int, rng: np.random.Generator, seed: int):
    picked = _pick(reference, count, rng)
    return np.clip(picked.images * SCALE_FACTOR, 0.0, 1.0), picked.masks.copy()


@_MAKERS.register("permuted")
def _permuted(reference: Records, info: DatasetInfo, count: int, rng: np.random.Generator, seed: int):
    picked = _pick(reference, count, rng)
    n, c, h, w = picked.images.shape
    images = picked.images.reshape(n, c, h * w).copy()
    masks = picked.masks.reshape(n, h * w).copy()
    for i in range(n):
        # Same permutation for every channel and the mask, so each pixel keeps its label.
        order = rng.permutation(h * w)
        images[i] = images[i][:, order]
        masks[i] = masks[i][order]
    return images.reshape(n, c, h, w), masks.reshape(n, h, w)


assert tuple(sorted(OOD_KINDS)) == tuple(_MAKERS.names()), "OOD_KINDS and the registered makers disagree"
