"""`digits-scenes`: real handwritten digits (scikit-learn's 8×8 set) composed into segmentation scenes.

Each scene is a dark, noisy canvas with 1..max_digits upscaled digits at mostly non-overlapping
positions; the mask labels each digit's ink with its class + 1 (0 stays background).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image
from pydantic import Field

from fedmia.data.datasets import DatasetParams, register_dataset, require_image_size
from fedmia.data.records import DatasetInfo, Records, make_ids

NAME = "digits-scenes"
INK_THRESHOLD = 0.4  # upscaled intensity above which a pixel counts as the digit's ink
MAX_OVERLAP = 0.15  # fraction of a digit's box that may overlap an earlier digit's box
PLACEMENT_TRIES = 20


@functools.lru_cache(maxsize=1)
def _digit_bank() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as float32 in [0, 1] (the raw data is 0..16) and their labels."""
    from sklearn.datasets import load_digits  # local import: sklearn is slow to import

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


class DigitsScenesParams(DatasetParams):
    max_digits: int = Field(3, ge=1, description="each scene holds 1..max_digits digits (fewer where the "
                            "canvas is too crowded to place one)")
    noise: float = Field(0.05, ge=0, description="standard deviation of the Gaussian pixel noise added to "
                         "each scene (intensities lie in 0..1)")


@register_dataset(NAME, DigitsScenesParams)
def load_digits_scenes(
    *, records: int, image_size: int, seed: int, options: DigitsScenesParams, rows: np.ndarray | None = None
) -> tuple[Records, DatasetInfo]:
    require_image_size(NAME, image_size, 16)
    max_digits, noise = options.max_digits, options.noise

    digits, labels = _digit_bank()
    rows = np.arange(records) if rows is None else rows
    images = np.empty((len(rows), 1, image_size, image_size), dtype=np.float32)
    masks = np.empty((len(rows), image_size, image_size), dtype=np.uint8)
    # One child seed per record: record i is the same whether 10 or 10 000 records are asked for,
    # and drawing only some rows draws only those.
    for i, row in enumerate(rows):
        # the row-th child of SeedSequence(seed).spawn(records), made directly: spawning every
        # child costs O(records) for each client that loads its few rows
        child = np.random.SeedSequence(seed, spawn_key=(int(row),))
        rng = np.random.default_rng(child)
        images[i, 0], masks[i] = _compose_scene(rng, digits, labels, image_size, max_digits, noise)

    info = DatasetInfo(
        name=NAME, in_channels=1, num_classes=11, class_names=["background"] + [str(d) for d in range(10)]
    )
    return Records(images, masks, make_ids(NAME, records)[rows]), info


def _compose_scene(
    rng: np.random.Generator,
    digits: np.ndarray,
    labels: np.ndarray,
    size: int,
    max_digits: int,
    noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    scene = np.full((size, size), rng.uniform(0.0, 0.1), dtype=np.float32)
    mask = np.zeros((size, size), dtype=np.int64)
    boxes: list[tuple[int, int, int]] = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        side = int(rng.integers(round(size * 0.35), size // 2 + 1))
        spot = _find_spot(rng, side, size, boxes)
        if spot is None:  # canvas too crowded; fewer digits is fine
            continue
        y, x = spot
        boxes.append((y, x, side))
        k = int(rng.integers(len(digits)))
        glyph = np.asarray(Image.fromarray(digits[k]).resize((side, side), Image.BILINEAR))
        # max-compositing keeps an earlier digit visible where boxes overlap slightly.
        region = scene[y : y + side, x : x + side]
        np.maximum(region, glyph * rng.uniform(0.7, 1.0), out=region)
        mask[y : y + side, x : x + side][glyph > INK_THRESHOLD] = labels[k] + 1
    scene += noise * rng.standard_normal(scene.shape).astype(np.float32)
    return np.clip(scene, 0.0, 1.0), mask


def _find_spot(
    rng: np.random.Generator, side: int, size: int, boxes: list[tuple[int, int, int]]
) -> tuple[int, int] | None:
    """A random top-left corner whose box overlaps no earlier box by more than MAX_OVERLAP."""
    for _ in range(PLACEMENT_TRIES):
        y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if all(_overlap(y, x, side, *box) <= MAX_OVERLAP * side * side for box in boxes):
            return y, x
    return None


def _overlap(y1: int, x1: int, s1: int, y2: int, x2: int, s2: int) -> int:
    dy = min(y1 + s1, y2 + s2) - max(y1, y2)
    dx = min(x1 + s1, x2 + s2) - max(x1, x2)
    return max(dy, 0) * max(dx, 0)
