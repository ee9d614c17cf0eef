"""`folder`: a user's own scans on disk — 2-D images with masks, or NIfTI volumes with labels.

Two layouts, told apart by the files' suffixes:
  2-D      `<path>/images/a.jpg` ↔ `<path>/masks/a.png`, matched by stem (subfolder names are the
           options `images` and `masks`). Any format PIL opens: 8-bit, 16-bit greyscale PNG/TIFF,
           RGB. Masks are binary (pixel > 127 is foreground, as in Kvasir-SEG or ISIC; in a mask saved
           as 0/1, 1 is), hold class indices (`mask_mode: index`), or are colour-coded (`palette`).
  volumes  the Medical Segmentation Decathlon's `<path>/imagesTr/liver_0.nii.gz` ↔
           `<path>/labelsTr/liver_0.nii.gz` (set `images: imagesTr, masks: labelsTr`): `*.nii` or
           `*.nii.gz` with equal names, cut into 2-D slices along `axis` (0, 1 or 2; default 2).
           `slices`: `all` (default), `foreground` (only slices whose label has foreground; a scan
           without any keeps its middle slice, so every patient has a record) or an integer k
           (every k-th slice, from the first). A 4-D image (several MR sequences) needs
           `modality`: the index along its last axis. Labels are class indices (`mask_mode:
           binary` makes every label > 0 foreground).

In the volume layout a record is a slice, but the member is the patient: the loader tags each
slice with its scan (`Records.groups`), `records=` and `rows=` count scans (so `data.members`,
`heldout`, `population` are numbers of scans), and the plan (fedmia/data/plan.py) draws whole
scans — one scan's slices never sit with two clients, nor on both sides of the member line.
Each target is one slice drawn from a target scan; the ledger gives every slice its scan's owner.

Intensities. `window: [lo, hi]` maps raw values lo..hi to 0..1, clipped (a CT HU window such
as [-100, 400]); `window: percentile` does the same between each image's 1st and 99th
percentile, `window: {percentile: [p_lo, p_hi]}` between other percentiles. For a volume "each
image" is the whole scan, so its slices stay comparable (one window per scan, not one per
slice). Without `window`, 8-bit images are divided by 255, and 16-bit, float images and volumes
take `window: percentile`: their raw range says nothing about where the anatomy lies.

Colour masks. `palette: {"#000000": 0, "#ff0000": 1}` maps each mask colour to a class (quote
the keys in YAML: `#` starts a comment). A colour the palette lacks is an error naming the file,
the colour and its first pixel: a JPEG-compressed colour mask, whose edges blur into new
colours, cannot be read this way. Class values above 1 need `mask_mode: index`; `num_classes`
defaults to the palette's largest class + 1.

Every file's problem is named before any training (the plan reads the folder when the scenario
is validated): a file that does not open, an image without its mask or label, a mask that does
not cover its image, a label volume whose shape differs from its scan's.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from fedmia.data.datasets import register_dataset, resize_images, resize_masks
from fedmia.data.folder_options import (NAME, PERCENTILE, PERCENTILE_SAMPLE, VOLUME_OPTIONS, FolderParams,
                                        checked_options, folder_params)
from fedmia.data.records import DatasetInfo, Records

VOLUME_SUFFIXES = (".nii.gz", ".nii")


@register_dataset(NAME, FolderParams)
def load_folder(*, records: int, image_size: int, seed: int, options: FolderParams,
                rows: np.ndarray | None = None) -> tuple[Records, DatasetInfo]:
    del seed  # files on disk are already fixed; nothing to draw
    params = folder_params(options)
    opts = checked_options(params)
    pairs = folder_pairs(params)
    root = Path(opts["path"]).expanduser()
    volumes = is_volume(pairs[0][1])
    _check_layout_options(params.model_fields_set, opts, volumes, root)
    if len(pairs) < records:
        if volumes:
            raise ValueError(
                f"{NAME}: '{root}' has {len(pairs)} image/label volumes, but {records} records were asked "
                "for (with NIfTI volumes a record of data.members, heldout, population is a scan)"
            )
        raise ValueError(
            f"{NAME}: '{root}' has {len(pairs)} image/mask pairs, but {records} records were asked for"
        )
    pairs = pairs[:records]
    if volumes:
        return _load_volumes(pairs, opts, image_size, rows)
    if rows is not None:  # a client: only its own files are opened
        pairs = [pairs[row] for row in rows]

    channels, mask_mode, window, palette = opts["channels"], opts["mask_mode"], opts["window"], opts["palette"]
    for _, image_path, mask_path in pairs:  # every file's problem, named, before any training
        check_pair(image_path, mask_path)
    images = np.zeros((len(pairs), channels, image_size, image_size), dtype=np.float32)
    # index masks may be 16-bit PNGs; Records narrows to the smallest type that holds them
    masks = np.zeros((len(pairs), image_size, image_size), dtype=np.uint8 if mask_mode == "binary" else np.int32)
    for i, (_, image_path, mask_path) in enumerate(pairs):  # filled in place: no second copy
        images[i] = _read_image(image_path, channels, image_size, window)
        masks[i] = (_read_palette_mask(mask_path, palette, image_size) if palette is not None
                    else _read_mask(mask_path, mask_mode, image_size))
    if rows is None and len(masks) and not masks.any():  # the whole folder (a client's share may lack it)
        raise ValueError(f"{NAME}: none of the {len(masks)} masks in '{root}' has any foreground "
                         + ("(mask_mode binary: a pixel > 127, or 1 in a 0/1 mask)" if mask_mode == "binary"
                            else "(a class index > 0)") + "; expected masks that mark what to segment")
    ids = np.array([f"{NAME}:{stem}" for stem, _, _ in pairs], dtype=object)
    info = _info(masks, opts, [mask for _, _, mask in pairs])
    return Records(images, masks, ids), info


def apply_window(values: np.ndarray, window: tuple[str, float, float] | None) -> np.ndarray:
    """Raw intensities → [0, 1] through the window (percentiles taken over all of `values`)."""
    kind, lo, hi = window or ("percentile", *PERCENTILE)
    values = np.asarray(values, dtype=np.float32)
    if kind == "percentile":  # on at most ~4 M evenly spaced values: a CT scan has 150 M
        sample = values.ravel()[:: max(1, values.size // PERCENTILE_SAMPLE)]
        lo, hi = (float(v) for v in np.percentile(sample, [lo, hi]))
    if not hi > lo:  # a constant image: nothing to stretch
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32, copy=False)


def _check_layout_options(given_keys: set[str], opts: dict, volumes: bool, root: Path) -> None:
    if volumes and opts["palette"] is not None:
        raise ValueError(f"{NAME}: palette reads colour-coded 2-D masks, but '{root / opts['masks']}' holds "
                         "NIfTI label volumes (class indices already); remove it")
    given = [key for key in VOLUME_OPTIONS if key in given_keys]
    if not volumes and given:
        raise ValueError(f"{NAME}: option(s) {', '.join(given)} slice NIfTI volumes, but "
                         f"'{root / opts['images']}' holds 2-D images; remove them")


def _info(masks: np.ndarray, opts: dict, mask_paths: list[Path]) -> DatasetInfo:
    """Classes from the options (binary: 2; a palette: its largest class + 1) or, for index
    masks, from the largest class found; a mask above `num_classes` is named."""
    num_classes, palette = opts["num_classes"], opts["palette"]
    if opts["mask_mode"] == "binary":
        num_classes = 2
    else:
        largest = int(masks.max()) if len(masks) else 0
        if num_classes is None:
            declared = max(palette.values()) if palette else 0
            num_classes = max(largest + 1, declared + 1, 2)  # at least background + one class
        elif largest >= num_classes:
            culprit = mask_paths[int(np.argmax(masks.reshape(len(masks), -1).max(axis=1)))]
            raise ValueError(
                f"{NAME}: mask '{culprit}' holds class {largest}, but num_classes is {num_classes}"
            )
    if opts["mask_mode"] == "binary":
        class_names = ["background", "foreground"]
    else:
        class_names = ["background"] + [f"class{c}" for c in range(1, num_classes)]
    return DatasetInfo(name=NAME, in_channels=opts["channels"], num_classes=num_classes, class_names=class_names)


def folder_pairs(options: FolderParams | dict) -> list[tuple[str, Path, Path]]:
    """(stem, image path, mask path) of every record in the folder `options` name, in the
    order the loader reads them (sorted by stem). In the volume layout each is a scan and its
    label volume (the stem without `.nii.gz`). `options`: a FolderParams, or a dict of options."""
    params = folder_params(options)
    if params.path is None:
        raise ValueError(f"{NAME}: option 'path' is required")
    root = Path(params.path).expanduser()
    if root.is_file():
        raise ValueError(f"{NAME}: path '{root}' is a file; expected a folder holding images/ and masks/ "
                         "(or imagesTr/ and labelsTr/ of NIfTI volumes)")
    if not root.is_dir():
        raise ValueError(f"{NAME}: path '{root}' does not exist")
    if params.listing is not None:
        return _listed_pairs(root, params.listing)
    return _pair_files(root, params.images, params.masks, skip_unpaired=params.unpaired == "skip")


def unpaired_images(options: FolderParams | dict) -> list[Path]:
    """Images without their mask or label, by name (what `unpaired: skip` leaves out)."""
    params = folder_params(options)
    root = Path(params.path).expanduser()
    images = _files_by_stem(root / params.images, "images", root)
    masks = _files_by_stem(root / params.masks, "masks", root)
    return [images[stem] for stem in sorted(images) if stem not in masks]


def _listed_pairs(root: Path, listing: str) -> list[tuple[str, Path, Path]]:
    """The pairs a Decathlon `dataset.json` lists under "training" ({"image": "./imagesTr/a.nii.gz",
    "label": "./labelsTr/a.nii.gz"}), sorted by stem; a listed file that is missing is named."""
    import json

    path = root / listing
    try:
        entries = json.loads(path.read_text())["training"]
        listed = [(root / str(e["image"]), root / str(e["label"])) for e in entries]
    except FileNotFoundError:
        raise ValueError(f"{NAME}: listing '{path}' does not exist") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{NAME}: listing '{path}': expected JSON with a 'training' list of {{\"image\": ..., "
                         f"\"label\": ...}} paths relative to the folder ({type(error).__name__}: {error})") from None
    pairs = []
    for image, label in listed:
        for role, file in (("image", image), ("label", label)):
            if not file.is_file():
                raise ValueError(f"{NAME}: listing '{path}' names {role} '{file}', which does not exist")
        pairs.append((_volume_stem(image.name) if is_volume(image) else image.stem, image, label))
    if not pairs:
        raise ValueError(f"{NAME}: listing '{path}' lists no training pairs")
    return sorted(pairs)


def is_volume(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _volume_stem(name: str) -> str:
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _pair_files(root: Path, images_name: str, masks_name: str, *,
                skip_unpaired: bool = False) -> list[tuple[str, Path, Path]]:
    """(stem, image path, mask path) for every image, sorted by stem; every image needs a mask
    (or, with `skip_unpaired`, one without is left out)."""
    images = _files_by_stem(root / images_name, "images", root)
    masks = _files_by_stem(root / masks_name, "masks", root)
    if not images:
        raise ValueError(f"{NAME}: no images found in '{root / images_name}' (expected images PIL opens, "
                         "or NIfTI volumes *.nii / *.nii.gz)")
    kinds = {is_volume(path) for path in images.values()}
    if len(kinds) > 1:
        raise ValueError(f"{NAME}: '{root / images_name}' mixes NIfTI volumes and 2-D images; "
                         "expected one kind per folder")
    volumes = kinds.pop()
    what = "label" if volumes else "mask"
    pairs = []
    for stem in sorted(images):
        if stem not in masks and skip_unpaired:
            continue
        if stem not in masks:
            looked = f"'{stem}.nii.gz' or '{stem}.nii'" if volumes else f"a file named '{stem}.*'"
            raise ValueError(
                f"{NAME}: image '{images[stem].name}' has no {what} in '{root / masks_name}' "
                f"(looked for {looked}): {images[stem]}; or set the option unpaired: skip"
            )
        if is_volume(masks[stem]) != volumes:
            raise ValueError(f"{NAME}: image '{images[stem]}' and its {what} '{masks[stem]}' are not both "
                             "NIfTI volumes or both 2-D images")
        pairs.append((stem, images[stem], masks[stem]))
    if not pairs:
        raise ValueError(f"{NAME}: no image in '{root / images_name}' has its {what} in '{root / masks_name}'")
    return pairs


def _files_by_stem(folder: Path, role: str, root: Path) -> dict[str, Path]:
    if not folder.is_dir():
        hint = ""
        if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
            hint = ("; this looks like the Medical Segmentation Decathlon layout: "
                    "set options images: imagesTr and masks: labelsTr")
        raise ValueError(f"{NAME}: {role} folder '{folder}' does not exist{hint}")
    readable = set(Image.registered_extensions())  # suffixes PIL can open, e.g. ".png", ".jpg"
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.name.startswith(".") or not file.is_file():  # also macOS's "._liver_0.nii.gz"
            continue
        if is_volume(file):
            stem = _volume_stem(file.name)
        elif file.suffix.lower() in readable:
            stem = file.stem
        else:
            continue
        if stem in found:  # a.jpg and a.png: which one is meant?
            raise ValueError(
                f"{NAME}: two {role} share the name '{stem}': '{found[stem].name}', '{file.name}'"
            )
        found[stem] = file
    return found


def check_pair(image_path: Path, mask_path: Path) -> None:
    """Both files open (as images, or as NIfTI volumes: their headers), and the mask covers its
    image pixel for pixel (a label volume, its scan voxel for voxel)."""
    if is_volume(image_path):
        shapes = [volume_header(image_path, "image").shape, volume_header(mask_path, "label").shape]
        if len(shapes[0]) not in (3, 4):
            raise ValueError(f"{NAME}: image '{image_path}' has shape {shapes[0]}; expected a 3-D volume "
                             "(or 4-D: one volume per modality)")
        if tuple(shapes[1][3:]) not in ((), (1,)) or shapes[1][:3] != shapes[0][:3]:
            raise ValueError(f"{NAME}: label '{mask_path}' has shape {shapes[1]} but its image '{image_path}' "
                             f"has {shapes[0]}; expected the same 3-D shape")
        return
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


# what a corrupt, truncated or mislabelled NIfTI file raises from nibabel, gzip or numpy
_VOLUME_ERRORS = (OSError, EOFError, ValueError, zlib.error, struct.error, MemoryError)


def volume_header(path: Path, role: str):
    """The NIfTI image at `path` with only its header read; a file nibabel cannot open is named."""
    import nibabel

    try:
        return nibabel.load(str(path))
    except (nibabel.filebasedimages.ImageFileError, *_VOLUME_ERRORS) as error:
        raise ValueError(f"{NAME}: {role} '{path}' cannot be read as a NIfTI volume ({error})") from None


def read_volume(path: Path, role: str) -> np.ndarray:
    """The voxels of the NIfTI file at `path` (scaled as its header says); a corrupt or truncated
    file is named."""
    volume = volume_header(path, role)
    try:
        return np.asanyarray(volume.dataobj)
    except _VOLUME_ERRORS as error:
        raise ValueError(f"{NAME}: {role} '{path}' cannot be read as a NIfTI volume ({error})") from None


def _load_volumes(pairs: list[tuple[str, Path, Path]], opts: dict, image_size: int,
                  rows: np.ndarray | None) -> tuple[Records, DatasetInfo]:
    """The slices of the scans at `rows` (default: all), scan after scan, each tagged with its
    scan's pool row (`Records.groups`)."""
    wanted = list(range(len(pairs))) if rows is None else [int(r) for r in rows]
    for row in wanted:  # every file's problem, named, before any data is read
        check_pair(pairs[row][1], pairs[row][2])
    images, masks, ids, groups = [], [], [], []
    for row in wanted:
        stem, image_path, label_path = pairs[row]
        image, label = _read_volume_pair(image_path, label_path, opts)
        keep = _kept_slices(label, opts["slices"])
        planes = apply_window(image, opts["window"])[keep][:, None]  # window over the whole scan
        planes = resize_images(planes, image_size, image_size)
        if opts["channels"] == 3:
            planes = np.repeat(planes, 3, axis=1)
        images.append(planes)
        masks.append(resize_masks(label[keep].astype(np.int32), image_size, image_size))
        ids += [f"{NAME}:{stem}/{k:04d}" for k in keep.tolist()]
        groups += [row] * len(keep)
    masks_all = np.concatenate(masks) if masks else np.zeros((0, image_size, image_size), dtype=np.int32)
    if opts["mask_mode"] == "binary":
        masks_all = (masks_all > 0).astype(np.uint8)
    images_all = (np.concatenate(images) if images
                  else np.zeros((0, opts["channels"], image_size, image_size), dtype=np.float32))
    label_of_slice = [pairs[row][2] for row in groups]
    info = _info(masks_all, opts, label_of_slice)
    return Records(images_all, masks_all, np.array(ids, dtype=object), np.array(groups, dtype=np.int64)), info


def _read_volume_pair(image_path: Path, label_path: Path, opts: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image, label), both moved so that axis 0 is the slicing axis; the label as integers."""
    image = read_volume(image_path, "image")
    modality = opts["modality"]
    if image.ndim == 4:
        if modality is None:
            raise ValueError(f"{NAME}: image '{image_path}' is 4-D {image.shape} (one volume per modality); "
                             "set option modality to the index of the one to read")
        if modality >= image.shape[3]:
            raise ValueError(f"{NAME}: image '{image_path}' has {image.shape[3]} modalities, "
                             f"but modality is {modality}")
        image = image[..., modality]
    label = read_volume(label_path, "label")
    label = label.reshape(label.shape[:3])  # a trailing axis of 1, as some tools write
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise ValueError(f"{NAME}: label '{label_path}' holds non-integer values; "
                             "expected class indices (0 = background)")
    if label.size and label.min() < 0:
        raise ValueError(f"{NAME}: label '{label_path}' holds class {int(label.min())}; "
                         "expected class indices >= 0")
    axis = opts["axis"]
    return np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0), np.moveaxis(label.astype(np.int64), axis, 0)


def _kept_slices(label: np.ndarray, slices) -> np.ndarray:
    """Indices along the slicing axis (axis 0 of `label`) that become records."""
    count = label.shape[0]
    if slices == "all":
        return np.arange(count)
    if slices == "foreground":
        found = np.flatnonzero(label.reshape(count, -1).max(axis=1) > 0)
        return found if found.size else np.array([count // 2])  # a patient without lesion is still one
    return np.arange(0, count, int(slices))


def _read_image(path: Path, channels: int, size: int, window=None) -> np.ndarray:
    """(channels, size, size) in [0, 1]. 8-bit images without a window are divided by 255;
    16-bit and float images (and any with a window) go through `apply_window` first."""
    with Image.open(path) as image:
        high_bit = image.mode in ("I", "F") or image.mode.startswith("I;16")
        if window is None and not high_bit:
            image = image.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
            return array[None] if channels == 1 else array.transpose(2, 0, 1)
        if high_bit:
            array = np.asarray(image).astype(np.float32)
        else:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    planes = apply_window(array, window)
    planes = planes[None] if planes.ndim == 2 else planes.transpose(2, 0, 1)
    if channels == 3 and planes.shape[0] == 1:
        planes = np.repeat(planes, 3, axis=0)
    return resize_images(planes[None], size, size)[0]


def _read_palette_mask(path: Path, palette: dict[int, int], size: int) -> np.ndarray:
    """Class indices of a colour-coded mask; a colour the palette lacks is named with its first
    pixel (row by row from the top left)."""
    with Image.open(path) as mask:
        rgb = np.asarray(mask.convert("RGB")).astype(np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    unknown = [c for c in colours.tolist() if c not in palette]
    if unknown:
        first = int(np.argmax(np.isin(packed, unknown).ravel()))
        y, x = divmod(first, packed.shape[1])
        known = ", ".join(f"#{c:06x}" for c in sorted(palette))
        raise ValueError(f"{NAME}: mask '{path}' has colour #{int(packed[y, x]):06x} at pixel (x={x}, y={y}), "
                         f"which the palette does not map ({len(unknown)} such colour(s)); expected one of {known}")
    classes = np.array([palette[c] for c in colours.tolist()], dtype=np.int32)[inverse.reshape(packed.shape)]
    return resize_masks(classes[None], size, size)[0]


def _read_mask(path: Path, mode: str, size: int) -> np.ndarray:
    with Image.open(path) as mask:
        if mode == "binary":
            array = np.asarray(mask.convert("L").resize((size, size), Image.NEAREST))
            # A mask saved as 0/1 (not 0/255) held no pixel > 127 and was read as empty: the
            # run trained and reported on nothing. Its foreground is 1.
            return (array >= 1 if array.max() <= 1 else array > 127).astype(np.int64)
        # Class indices: keep the raw values (a palette image's indices, not its colours).
        if mask.mode in ("RGB", "RGBA"):
            rgb = np.asarray(mask.convert("RGB"))
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise ValueError(
                    f"{NAME}: index mask '{path}' is in colour; save class indices as a grayscale or "
                    "palette image, or map its colours to classes with the option palette"
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
