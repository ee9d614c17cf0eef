"""The in-memory form every dataset loader returns: images, per-pixel masks and stable ids."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np

_TOKENS = itertools.count()


def _smallest_integer(masks: np.ndarray) -> np.ndarray:
    """Masks as the smallest integer type that holds their values (uint8 for < 256 classes)."""
    if masks.size == 0:
        return masks.astype(np.uint8)
    if not np.issubdtype(masks.dtype, np.integer):
        if not np.array_equal(masks, np.round(masks)):
            raise ValueError("Records: masks must hold integer class indices")
        masks = masks.astype(np.int64)
    smallest = np.promote_types(np.min_scalar_type(int(masks.min())), np.min_scalar_type(int(masks.max())))
    return masks.astype(smallest, copy=False)


# eq=False: the generated __eq__ would compare arrays elementwise and raise on `==`.
@dataclass(frozen=True, eq=False)
class Records:
    images: np.ndarray  # float32 (N, C, H, W), values in [0, 1]
    masks: np.ndarray  # (N, H, W) class index per pixel, 0 = background; the smallest integer
    # type that holds them (uint8 below 256 classes: an eighth of int64's memory) — `.long()` at use
    ids: np.ndarray  # object (N,) of str, e.g. "shapes:00012"
    # Which record group each record belongs to (int64 (N,)), or None: every record its own.
    # A group is what membership is about when several records come from one source — the
    # slices of one scan (one patient) in the `folder` dataset's NIfTI layout. Its value is the
    # group's position in the dataset's pool, the unit of `records=` and `rows=` for such a
    # dataset; the plan (fedmia/data/plan.py) never splits a group.
    groups: np.ndarray | None = None
    # Names this object for caches, never reused (an `id()` is, once the object is freed): a
    # cache keyed by id returned another set's figures (fedmia/attacks/base.py `cache_token`).
    token: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", (os.getpid(), next(_TOKENS)))
        # Coerce dtypes once here so every consumer can rely on them (frozen, hence __setattr__).
        images = np.asarray(self.images, dtype=np.float32)
        masks = _smallest_integer(np.asarray(self.masks))
        ids = np.asarray(self.ids, dtype=object)
        if images.ndim != 4:
            raise ValueError(f"Records: images must be (N, C, H, W), found shape {images.shape}")
        if masks.ndim != 3:
            raise ValueError(f"Records: masks must be (N, H, W), found shape {masks.shape}")
        if ids.ndim != 1:
            raise ValueError(f"Records: ids must be (N,), found shape {ids.shape}")
        if not (len(images) == len(masks) == len(ids)):
            raise ValueError(
                f"Records: length mismatch: {len(images)} images, {len(masks)} masks, {len(ids)} ids"
            )
        if images.shape[2:] != masks.shape[1:]:
            raise ValueError(
                f"Records: image size {images.shape[2:]} differs from mask size {masks.shape[1:]}"
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "ids", ids)
        if self.groups is not None:
            groups = np.asarray(self.groups, dtype=np.int64)
            if groups.shape != ids.shape:
                raise ValueError(f"Records: groups must be (N,) like ids, found shape {groups.shape}")
            object.__setattr__(self, "groups", groups)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray | list[int]) -> Records:
        idx = np.asarray(index)
        # Boolean masks index as they are; an empty list arrives as float64 and needs the cast.
        if idx.dtype != bool:
            idx = idx.astype(np.int64)
        groups = None if self.groups is None else self.groups[idx]
        return Records(self.images[idx], self.masks[idx], self.ids[idx], groups)

    @staticmethod
    def concat(parts: list[Records]) -> Records:
        if not parts:
            raise ValueError("Records.concat: need at least one part")
        grouped = [p.groups is not None for p in parts]
        if any(grouped) and not all(grouped):
            raise ValueError("Records.concat: some parts have record groups and some do not")
        return Records(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.masks for p in parts]),
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.groups for p in parts]) if all(grouped) else None,
        )

    def dominant_class(self) -> np.ndarray:
        """Most frequent foreground class per record (0 if the mask is all background).

        Ties go to the lower class index, so the result is deterministic.
        """
        n = len(self)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        masks = np.maximum(self.masks, 0)  # treat any negative "ignore" label as background
        k = int(masks.max()) + 1
        # One bincount over all records at once: offset record i's classes by i * k.
        flat = masks.reshape(n, -1) + (np.arange(n, dtype=np.int64) * k)[:, None]
        counts = np.bincount(flat.ravel(), minlength=n * k).reshape(n, k)
        counts[:, 0] = 0  # background never dominates
        dominant = counts.argmax(axis=1)
        dominant[counts.max(axis=1) == 0] = 0
        return dominant.astype(np.int64)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    num_classes: int  # including background
    class_names: list[str]


def make_ids(prefix: str, count: int, start: int = 0) -> np.ndarray:
    """Ids of the form f"{prefix}:{i:05d}".

    An object array rather than numpy's fixed-width str, so assigning a longer id never truncates it.
    """
    return np.array([f"{prefix}:{i:05d}" for i in range(start, start + count)], dtype=object)
