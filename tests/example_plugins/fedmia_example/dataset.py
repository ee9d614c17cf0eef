"""Example plug-in: a new dataset is this one file (a registered loader)."""

import numpy as np

from fedmia.data.datasets import DATASETS
from fedmia.data.records import DatasetInfo, Records, make_ids


@DATASETS.register("example-squares")
def load_squares(*, records: int, image_size: int, seed: int, options: dict):
    rng = np.random.default_rng(seed)
    images = rng.random((records, 1, image_size, image_size), dtype=np.float32) * 0.3
    masks = np.zeros((records, image_size, image_size), dtype=np.int64)
    for i in range(records):
        top, left = rng.integers(0, image_size // 2, 2)
        masks[i, top : top + image_size // 3, left : left + image_size // 3] = 1
    images[:, 0][masks == 1] += 0.6
    return Records(images, masks, make_ids("squares", records)), DatasetInfo("example-squares", 1, 2, ["bg", "square"])
