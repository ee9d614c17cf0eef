"""`folder`: a user's own images and masks on disk, matched by file stem.

Layout: `<path>/images/a.jpg` ↔ `<path>/masks/a.png` (subfolder names are options). Masks are
either binary (pixel > 127 is foreground, as in Kvasir-SEG or ISIC) or hold class indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fedmia.data.datasets import DATASETS, int_option, read_options
from fedmia.data.records import DatasetInfo, Records

NAME = "folder"
DEFAULTS = {
    "path": None,
    "images": "images",
    "masks": "masks",
    "channels": 3,
    "mask_mode": "binary",
    "num_classes": None,
}


@DATASETS.register(NAME)
def load_folder(*, records: int, image_size: int, seed: int, options: dict,
                rows: np.ndarray | None = None) -> tuple[Records, DatasetInfo]:
    del seed  # files on disk are already fixed; nothing to draw
    opts = read_options(NAME, options, DEFAULTS)
    channels = opts["channels"]
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels not in (1, 3):
        raise ValueError(f"{NAME}: channels must be 1 or 3, found {channels!r}")
    mask_mode = opts["mask_mode"]
    if mask_mode not in ("binary", "index"):
        raise ValueError(f"{NAME}: mask_mode must be 'binary' or 'index', found {mask_mode!r}")
    num_classes = opts["num_classes"]
    if num_classes is not None:
        num_classes = int_option(NAME, "num_classes", num_classes, minimum=2)
        if mask_mode == "binary" and num_classes != 2:
            raise ValueError(f"{NAME}: mask_mode 'binary' has 2 classes, found num_classes={num_classes}")

    pairs = folder_pairs(opts)
    root = Path(opts["path"]).expanduser()
    if len(pairs) < records:
        raise ValueError(
            f"{NAME}: '{root}' has {len(pairs)} image/mask pairs, but {records} records were asked for"
        )
    pairs = pairs[:records]
    if rows is not None:  # a client: only its own files are opened
        pairs = [pairs[row] for row in rows]

    for _, image_path, mask_path in pairs:  # every file's problem, named, before any training
        check_pair(image_path, mask_path)
    images = np.zeros((len(pairs), channels, image_size, image_size), dtype=np.float32)
    # index masks may be 16-bit PNGs; Records narrows to the smallest type that holds them
    masks = np.zeros((len(pairs), image_size, image_size), dtype=np.uint8 if mask_mode == "binary" else np.int32)
    for i, (_, image_path, mask_path) in enumerate(pairs):  # filled in place: no second copy
        images[i] = _read_image(image_path, channels, image_size)
        masks[i] = _read_mask(mask_path, mask_mode, image_size)
    if mask_mode == "binary":
        num_classes = 2
    else:
        largest = int(masks.max()) if len(masks) else 0
        if num_classes is None:
            num_classes = max(largest + 1, 2)  # at least background + one class
        elif largest >= num_classes:
            culprit = pairs[int(np.argmax(masks.reshape(len(masks), -1).max(axis=1)))][2]
            raise ValueError(
                f"{NAME}: mask '{culprit}' holds class {largest}, but num_classes is {num_classes}"
            )

    if mask_mode == "binary":
        class_names = ["background", "foreground"]
    else:
        class_names = ["background"] + [f"class{c}" for c in range(1, num_classes)]
    ids = np.array([f"{NAME}:{stem}" for stem, _, _ in pairs], dtype=object)
    info = DatasetInfo(name=NAME, in_channels=channels, num_classes=num_classes, class_names=class_names)
    return Records(images, masks, ids), info


def folder_pairs(options: dict) -> list[tuple[str, Path, Path]]:
    """(stem, image path, mask path) of every record in the folder `options` name, in the
    order the loader reads them (sorted by stem)."""
    opts = read_options(NAME, options, DEFAULTS)
    if opts["path"] is None:
        raise ValueError(f"{NAME}: option 'path' is required")
    root = Path(opts["path"]).expanduser()
    if not root.is_dir():
        raise ValueError(f"{NAME}: path '{root}' does not exist")
    return _pair_files(root, opts["images"], opts["masks"])


def _pair_files(root: Path, images_name: str, masks_name: str) -> list[tuple[str, Path, Path]]:
    """(stem, image path, mask path) for every image, sorted by stem; every image needs a mask."""
    images = _files_by_stem(root / images_name, "images")
    masks = _files_by_stem(root / masks_name, "masks")
    if not images:
        raise ValueError(f"{NAME}: no images found in '{root / images_name}'")
    pairs = []
    for stem in sorted(images):
        if stem not in masks:
            raise ValueError(
                f"{NAME}: image '{images[stem].name}' has no mask in '{root / masks_name}' "
                f"(looked for a file named '{stem}.*')"
            )
        pairs.append((stem, images[stem], masks[stem]))
    return pairs


def _files_by_stem(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"{NAME}: {role} folder '{folder}' does not exist")
    readable = set(Image.registered_extensions())  # suffixes PIL can open, e.g. ".png", ".jpg"
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.name.startswith(".") or not file.is_file() or file.suffix.lower() not in readable:
            continue
        if file.stem in found:  # a.jpg and a.png: which one is meant?
            raise ValueError(
                f"{NAME}: two {role} share the name '{file.stem}': '{found[file.stem].name}', '{file.name}'"
            )
        found[file.stem] = file
    return found


def check_pair(image_path: Path, mask_path: Path) -> None:
    """Both files open as images, and the mask covers its image pixel for pixel."""
    sizes = []
    for role, path in (("image", image_path), ("mask", mask_path)):
        try:
            with Image.open(path) as opened:
                opened.verify()
                sizes.append(opened.size)
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:
            raise ValueError(f"{NAME}: {role} '{path}' cannot be read as an image ({error})") from None
    if sizes[0] != sizes[1]:
        raise ValueError(f"{NAME}: mask '{mask_path}' is {sizes[1][0]}x{sizes[1][1]} but its image "
                         f"'{image_path}' is {sizes[0][0]}x{sizes[0][1]}; expected the same size")


def _read_image(path: Path, channels: int, size: int) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _read_mask(path: Path, mode: str, size: int) -> np.ndarray:
    with Image.open(path) as mask:
        if mode == "binary":
            mask = mask.convert("L").resize((size, size), Image.NEAREST)
            return (np.asarray(mask) > 127).astype(np.int64)
        # Class indices: keep the raw values (a palette image's indices, not its colours).
        if mask.mode in ("RGB", "RGBA"):
            rgb = np.asarray(mask.convert("RGB"))
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise ValueError(
                    f"{NAME}: index mask '{path}' is in colour; "
                    "save class indices as a grayscale or palette image"
                )
            mask = mask.convert("L")
        mask = mask.resize((size, size), Image.NEAREST)
        array = np.asarray(mask).astype(np.int64)
    if array.ndim != 2 or array.min() < 0:
        raise ValueError(
            f"{NAME}: index mask '{path}' must be a single channel of non-negative class indices"
        )
    return array


def write_example_folder(root: Path, count: int, *, size: tuple[int, int] = (332, 287), seed: int = 0) -> Path:
    """Write `count` synthetic colonoscopy-like frames laid out as Kvasir-SEG ships them
    (`images/*.jpg`, `masks/*.jpg`, binary masks as JPEG): reddish mucosa texture, one or two
    brighter polyps. For trying `scenarios/kvasir-folder.yaml` and for the tests and benchmarks
    — nothing here is downloaded."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(count)):
        rng = np.random.default_rng(child)
        coarse = rng.random((9, 9, 3)).astype(np.float32)
        texture = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC),
                             dtype=np.float32) / 255.0
        image = np.array([0.55, 0.25, 0.2], dtype=np.float32) + 0.25 * (texture - 0.5)
        mask = np.zeros((height, width), dtype=bool)
        for _ in range(int(rng.integers(1, 3))):
            cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
            ry, rx = rng.uniform(0.06, 0.2) * height, rng.uniform(0.06, 0.2) * width
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image[mask] += np.array([0.2, 0.15, 0.1], dtype=np.float32) * rng.uniform(0.6, 1.2)
        image += 0.04 * rng.standard_normal(image.shape).astype(np.float32)
        frame = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(frame).save(root / "images" / f"frame{i:04d}.jpg", quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"frame{i:04d}.jpg", quality=90)
    return root
