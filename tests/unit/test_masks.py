"""Masks read from a user's folder: a 0/1 binary mask is foreground where it is 1, and a folder
whose masks hold no foreground at all is refused rather than trained on."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedmia.data.folder import load_folder


def _folder(root, masks: list[np.ndarray]):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k, mask in enumerate(masks):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "images" / f"s{k}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"s{k}.png")
    return root


def _square(value: int) -> np.ndarray:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 4:10] = value
    return mask


@pytest.mark.parametrize("foreground", [1, 255])
def test_binary_masks_stored_as_0_1_or_0_255_read_the_same(tmp_path, foreground):
    """`mask_mode: binary` on masks whose foreground is 1 read every mask as background."""
    root = _folder(tmp_path / "scans", [_square(foreground) for _ in range(4)])
    records, info = load_folder(records=4, image_size=16, seed=0, options={"path": str(root), "mask_mode": "binary"})
    assert info.num_classes == 2
    assert all(int(m.sum()) == 36 for m in records.masks)  # the 6x6 square, in every mask


def test_a_folder_whose_masks_hold_no_foreground_is_refused(tmp_path):
    root = _folder(tmp_path / "scans", [np.zeros((16, 16), np.uint8) for _ in range(3)])
    with pytest.raises(ValueError, match=r"none of the 3 masks in .* has any foreground"):
        load_folder(records=3, image_size=16, seed=0, options={"path": str(root)})
