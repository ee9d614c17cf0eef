"""`shapes`: procedural grayscale "organ with lesions" images, plus a per-hospital domain shift.

Default (3 classes): a large textured ellipse ("organ", class 1) holding 0–2 small brighter
ellipses ("lesion", class 2) on a smooth random background. With `binary=True` (2 classes):
1–3 lesions straight on the background. Intensities of the classes overlap through texture and
noise, so a model has to use shape and context, not a single threshold.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydantic import Field

from fedmia.data.datasets import DatasetParams, register_dataset, require_image_size
from fedmia.data.records import DatasetInfo, Records, make_ids

NAME = "shapes"


class ShapesParams(DatasetParams):
    noise: float = Field(0.1, ge=0, description="standard deviation of the Gaussian pixel noise added to "
                         "each image (intensities lie in 0..1)")
    binary: bool = Field(False, description="true: 1-3 lesions on the background (2 classes: background, "
                         "lesion); false: an organ holding 0-2 lesions (3 classes)")


@register_dataset(NAME, ShapesParams)
def load_shapes(*, records: int, image_size: int, seed: int, options: ShapesParams,
                rows: np.ndarray | None = None) -> tuple[Records, DatasetInfo]:
    require_image_size(NAME, image_size, 16)
    noise, binary = options.noise, options.binary

    scene = _lesion_scene if binary else _organ_scene
    rows = np.arange(records) if rows is None else rows
    images = np.empty((len(rows), 1, image_size, image_size), dtype=np.float32)
    masks = np.empty((len(rows), image_size, image_size), dtype=np.uint8)
    # One child seed per record: record i is the same whatever the number of records asked for,
    # and drawing only some rows draws only those.
    for i, row in enumerate(rows):
        # the row-th child of SeedSequence(seed).spawn(records), made directly: spawning every
        # child costs O(records) for each client that loads its few rows
        child = np.random.SeedSequence(seed, spawn_key=(int(row),))
        images[i, 0], masks[i] = scene(np.random.default_rng(child), image_size, noise)

    class_names = ["background", "lesion"] if binary else ["background", "organ", "lesion"]
    info = DatasetInfo(name=NAME, in_channels=1, num_classes=len(class_names), class_names=class_names)
    return Records(images, masks, make_ids(NAME, records)[rows]), info


def _organ_scene(rng: np.random.Generator, size: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    background_level = rng.uniform(0.2, 0.4)
    image = background_level + 0.25 * (_smooth_texture(rng, size) - 0.5)

    center = rng.uniform(0.35, 0.65, size=2) * size
    axes = np.array([rng.uniform(0.22, 0.35), rng.uniform(0.18, 0.3)]) * size
    angle = rng.uniform(0.0, np.pi)
    organ = _ellipse(size, center, axes, angle)
    organ_level = background_level + rng.uniform(0.1, 0.22)
    image = np.where(organ, organ_level + 0.15 * (_smooth_texture(rng, size) - 0.5), image)

    mask = organ.astype(np.int64)
    for _ in range(int(rng.integers(0, 3))):
        # Centre the lesion within 60% of the organ's radii so most of it lies inside the organ.
        radius, phi = 0.6 * np.sqrt(rng.uniform()), rng.uniform(0.0, 2 * np.pi)
        local = radius * axes * np.array([np.cos(phi), np.sin(phi)])
        offset = _rotate(local, angle)
        lesion_axes = np.maximum(rng.uniform(0.05, 0.1, size=2) * size, 1.5)
        lesion = _ellipse(size, center + offset, lesion_axes, rng.uniform(0.0, np.pi)) & organ
        image = np.where(lesion, organ_level + rng.uniform(0.12, 0.25), image)
        mask[lesion] = 2
    return _finish(rng, image, noise), mask


def _lesion_scene(rng: np.random.Generator, size: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    background_level = rng.uniform(0.2, 0.45)
    image = background_level + 0.3 * (_smooth_texture(rng, size) - 0.5)
    mask = np.zeros((size, size), dtype=np.int64)
    for _ in range(int(rng.integers(1, 4))):
        center = rng.uniform(0.15, 0.85, size=2) * size
        axes = np.maximum(rng.uniform(0.06, 0.15, size=2) * size, 1.5)
        lesion = _ellipse(size, center, axes, rng.uniform(0.0, np.pi))
        image = np.where(lesion, background_level + rng.uniform(0.12, 0.25), image)
        mask[lesion] = 1
    return _finish(rng, image, noise), mask


def _finish(rng: np.random.Generator, image: np.ndarray, noise: float) -> np.ndarray:
    # A slight blur softens the step edges, so boundaries are not given away by a single pixel jump.
    image = gaussian_blur(image.astype(np.float32), 0.7)
    image = image + noise * rng.standard_normal(image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _smooth_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two octaves of bilinearly upsampled random grids, in [0, 1]."""
    texture = np.zeros((size, size), dtype=np.float32)
    for cells, weight in ((4, 0.6), (8, 0.4)):
        grid = rng.random((cells, cells)).astype(np.float32)
        texture += weight * np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR))
    return texture


def _ellipse(size: int, center: np.ndarray, axes: np.ndarray, angle: float) -> np.ndarray:
    """Boolean (size, size) mask of a filled ellipse; center and axes are (y, x) in pixels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - center[0], xx - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * dy + sin * dx
    v = -sin * dy + cos * dx
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0


def _rotate(vector: np.ndarray, angle: float) -> np.ndarray:
    # Inverse of the rotation in _ellipse: maps ellipse-local (u, v) back to image (dy, dx).
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([cos * vector[0] - sin * vector[1], sin * vector[0] + cos * vector[1]])


def apply_domain_shift(images: np.ndarray, domain: int, strength: float, seed: int) -> np.ndarray:
    """Make images look as if they came from scanner/hospital number `domain`.

    Each domain gets its own fixed gamma, contrast, blur and noise level, drawn from (seed, domain)
    and scaled by `strength`. Domain 0 is the reference and strength 0 means no shift: both return
    the images unchanged. Works on any array whose last two axes are height and width.
    Returns float32 in [0, 1].
    """
    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    if isinstance(domain, bool) or not isinstance(domain, (int, np.integer)) or domain < 0:
        raise ValueError(f"apply_domain_shift: domain must be an integer >= 0, found {domain!r}")
    if not strength >= 0:
        raise ValueError(f"apply_domain_shift: strength must be >= 0, found {strength!r}")
    if domain == 0 or strength == 0:
        return images.copy()

    rng = np.random.default_rng([seed, domain])

    def signed_magnitude() -> float:
        # At least 0.3 in size, so every non-reference domain visibly differs from domain 0.
        return float(rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0))

    gamma = np.exp(0.5 * strength * signed_magnitude())
    contrast = max(1.0 + 0.4 * strength * signed_magnitude(), 0.1)
    blur_sigma = strength * rng.uniform(0.3, 1.2)
    noise_sigma = strength * rng.uniform(0.01, 0.05)

    shifted = images**gamma
    mean = shifted.mean(axis=(-2, -1), keepdims=True)
    shifted = (shifted - mean) * contrast + mean
    shifted = gaussian_blur(shifted, blur_sigma)
    shifted = shifted + noise_sigma * rng.standard_normal(shifted.shape)
    return np.clip(shifted, 0.0, 1.0).astype(np.float32)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, with edge padding."""
    if sigma <= 0:
        return images
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.asarray(images, dtype=np.float32)
    for axis in (-2, -1):
        moved = np.moveaxis(out, axis, -1)
        padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(radius, radius)], mode="edge")
        n = moved.shape[-1]
        blurred = sum(w * padded[..., j : j + n] for j, w in enumerate(kernel))
        out = np.moveaxis(blurred.astype(np.float32), -1, axis)
    return out
