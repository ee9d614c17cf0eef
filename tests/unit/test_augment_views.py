"""The augmentation-aware attack's views: the symmetries the training recipe produces, each once."""

from __future__ import annotations

import numpy as np
import pytest

from fedmia.attacks.augment_aware import symmetry_views


@pytest.mark.parametrize("flips, rot90, count", [(False, False, 1), (True, False, 4), (False, True, 4), (True, True, 8)])
def test_each_symmetry_of_the_recipe_once_the_plain_view_first(flips, rot90, count):
    image = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    views = symmetry_views(flips, rot90)
    assert len(views) == count and views[0][0] == "rot0"
    np.testing.assert_array_equal(views[0][1](image), image)
    seen = {view(image).tobytes() for _, view in views}
    assert len(seen) == count  # no view repeated (rotations and flips together would repeat four)


def test_a_view_moves_images_and_masks_alike():
    image = np.zeros((1, 1, 4, 4), np.float32)
    mask = np.zeros((1, 4, 4), np.int64)
    image[0, 0, 0, 3], mask[0, 0, 3] = 1.0, 1
    for _, view in symmetry_views(True, True):
        moved_image, moved_mask = view(image), view(mask)
        assert np.argwhere(moved_image[0, 0] == 1).tolist() == np.argwhere(moved_mask[0] == 1).tolist()
