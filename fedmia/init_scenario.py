"""`fedmia init DATA_DIR`: a first audit scenario for a folder of your own scans.

`inspect_folder` looks at the folder the way the `folder` dataset will read it (the same pairing
rules, so a missing mask or a broken file is named here already) and says what it holds;
`write_scenario` turns that into a scenario YAML with a split, a model and a short training
recipe that `fedmia validate` accepts — a small first audit, to be grown once it runs.
`write_example_volumes` writes synthetic NIfTI scans in the Decathlon layout, to try all this
without data of one's own. Nothing here trains or imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedmia.data.folder import folder_pairs, is_volume, unpaired_images

VOLUME_LAYOUT = ("imagesTr", "labelsTr")  # the Medical Segmentation Decathlon's names
IMAGE_LAYOUT = ("images", "masks")
MAX_COLOURS = 64  # more distinct mask colours than this is no colour code (JPEG edges, photos)
FIRST_AUDIT_SIZE = 128  # largest image_size a first audit uses: it trains on CPUs in minutes
MANY_SLICES = 2000  # above this, a first audit keeps only the slices with foreground
LISTING = "dataset.json"  # the Medical Segmentation Decathlon's list of image/label pairs
LEVELS = (0.001, 0.01, 0.1)
CT_WINDOW = (-160, 240)  # Hounsfield units: the abdominal soft-tissue window (width 400, level 40)  # TPR at these FPRs where the non-member targets allow ten false positives


def _layout(root: Path) -> tuple[str, str]:
    for images, masks in (VOLUME_LAYOUT, IMAGE_LAYOUT):
        if (root / images).is_dir() and (root / masks).is_dir():
            return images, masks
    raise ValueError(f"{root}: expected the subfolders imagesTr/ and labelsTr/ (NIfTI volumes, as the Medical "
                     "Segmentation Decathlon ships them) or images/ and masks/ (2-D images, matched by name)")


def inspect_folder(path: str | Path) -> dict:
    """What the folder at `path` holds, as the `folder` dataset will read it:

    layout ("volumes" or "images"), images / masks (the subfolder names), count (records: 2-D
    images, or slices of all volumes), volumes (scans; None for 2-D), sizes ({"min": [w, h],
    "max": [w, h]} of the images or slices), channels (1 or 3), high_bit (16-bit or float
    intensities, which need a window), mask_mode ("binary" or "index"), classes (the class
    indices found), palette ({"#rrggbb": class} for colour-coded masks, else None), modalities
    (of 4-D volumes, else None) and foreground_slices (volumes: slices whose label has
    foreground). Raises ValueError naming the file for a folder the dataset could not read.
    """
    root = Path(path).expanduser()
    if root.is_file():
        raise ValueError(f"{root}: is a file; expected a folder of scans")
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    images, masks = _layout(root)
    options: dict = {"path": str(root), "images": images, "masks": masks}
    unpaired: list[str] = []
    if (root / LISTING).is_file():  # the Decathlon's own list of valid pairs: stray files never read
        options["listing"] = LISTING
        listed = {image.name for _, image, _ in folder_pairs(options)}
        unpaired = [str(path) for path in unpaired_images(options) if path.name not in listed]  # named, not read
    else:
        unpaired = [str(path) for path in unpaired_images(options)]
        if unpaired:  # skipped and named, not a stop: one scan without its label is common
            options["unpaired"] = "skip"
    pairs = folder_pairs(options)
    found = _inspect_volumes(pairs) if is_volume(pairs[0][1]) else _inspect_images(pairs)
    return {"path": str(root.resolve()), "images": images, "masks": masks, "listing": options.get("listing"),
            "unpaired": unpaired, "modality": _listed_modality(root), **found}


def _listed_modality(root: Path) -> str | None:
    """The scans' modality as a Decathlon dataset.json names it ({"modality": {"0": "CT"}}), if any."""
    import json

    try:
        modality = json.loads((root / LISTING).read_text()).get("modality")
    except (OSError, ValueError, AttributeError):
        return None
    values = [str(v) for v in modality.values()] if isinstance(modality, dict) else []
    return values[0] if values else None


def _inspect_volumes(pairs) -> dict:
    """Headers of the scans, and every label volume read (classes, slices with foreground);
    the scans' intensities are left to the loader."""
    from fedmia.data.folder import check_pair, read_volume

    sizes, classes, slices, foreground, modalities = [], set(), 0, 0, None
    for _, image_path, label_path in pairs:
        check_pair(image_path, label_path)  # both headers read, shapes compared
        label = read_volume(label_path, "label")
        label = label.reshape(label.shape[:3])
        if len(image_shape := _volume_shape(image_path)) == 4:  # several MR sequences
            modalities = image_shape[3]
        sizes.append((label.shape[1], label.shape[0]))  # a slice along axis 2, as (width, height)
        classes.update(int(c) for c in np.unique(label).tolist())
        slices += label.shape[2]
        foreground += int((label.reshape(-1, label.shape[2]).max(axis=0) > 0).sum())
    return {"layout": "volumes", "count": slices, "volumes": len(pairs),
            "sizes": {"min": np.min(sizes, axis=0).tolist(), "max": np.max(sizes, axis=0).tolist()},
            "channels": 1, "high_bit": True, "mask_mode": "binary" if max(classes) <= 1 else "index",
            "classes": sorted(classes), "palette": None, "modalities": modalities,
            "foreground_slices": foreground}


def _volume_shape(path: Path) -> tuple[int, ...]:
    from fedmia.data.folder import volume_header

    return tuple(volume_header(path, "image").shape)


GREY_MODES = ("1", "L", "LA", "I", "F")


def _is_high_bit(mode: str) -> bool:
    return mode in ("I", "F") or mode.startswith("I;16")


def _inspect_images(pairs) -> dict:
    from PIL import Image

    from fedmia.data.folder import check_pair

    sizes, channels, high_bit = [], 1, False
    grey_values: set[int] = set()  # of single-channel masks
    colour_pixels: dict[int, int] = {}  # packed RGB -> pixels, over the masks stored as RGB or palette
    coloured = False
    for _, image_path, mask_path in pairs:
        check_pair(image_path, mask_path)
        with Image.open(image_path) as image:
            sizes.append(image.size)
            high_bit |= _is_high_bit(image.mode)
            if image.mode == "P":
                channels = max(channels, 3 if _coloured(np.asarray(image.convert("RGB"))) else 1)
            elif image.mode not in GREY_MODES and not _is_high_bit(image.mode):
                channels = 3
        with Image.open(mask_path) as mask:
            rgb = np.asarray(mask.convert("RGB")).astype(np.int32) if mask.mode in ("RGB", "RGBA", "P") else None
            if rgb is not None and _coloured(rgb):
                coloured = True
                packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
                found, counts = np.unique(packed, return_counts=True)
                for colour, count in zip(found.tolist(), counts.tolist()):
                    colour_pixels[colour] = colour_pixels.get(colour, 0) + count
                if len(colour_pixels) > MAX_COLOURS:
                    raise ValueError(f"{mask_path}: the colour masks hold more than {MAX_COLOURS} colours; expected "
                                     "a colour code, one colour per class (JPEG-compressed colour masks blur into "
                                     "new colours: save masks as PNG)")
            elif rgb is not None:  # grey stored as RGB (Kvasir-SEG's JPEG masks): the loader reads it as L
                grey_values.update(np.unique(rgb[..., 1]).tolist())
            else:
                grey_values.update(int(v) for v in np.unique(np.asarray(mask)).tolist())
    info = {"layout": "images", "count": len(pairs), "volumes": None,
            "sizes": {"min": np.min(sizes, axis=0).tolist(), "max": np.max(sizes, axis=0).tolist()},
            "channels": channels, "high_bit": bool(high_bit), "modalities": None, "foreground_slices": None}
    if coloured:
        palette = _palette(colour_pixels, grey_values)
        top = max(palette.values())
        return {**info, "mask_mode": "binary" if top <= 1 else "index", "classes": list(range(top + 1)),
                "palette": palette}
    largest = max(grey_values) if grey_values else 0
    if largest > 127:  # 0/255 masks (or JPEG-compressed ones): the loader's threshold at 127
        return {**info, "mask_mode": "binary", "classes": [0, 1], "palette": None}
    return {**info, "mask_mode": "index", "classes": sorted(grey_values), "palette": None}


def _coloured(rgb: np.ndarray) -> bool:
    """A colour code, not grey: some pixel's channels differ by more than JPEG noise on grey."""
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return bool((spread > 32).any())


def _palette(colour_pixels: dict[int, int], grey_values: set[int]) -> dict[str, int]:
    """{"#rrggbb": class}: black — else the commonest colour — is background (0), the other
    colours classes 1, 2, ... in hex order. Grey single-channel masks among colour ones read
    their values as grey colours."""
    colours = dict(colour_pixels)
    for value in grey_values:
        colours.setdefault((value << 16) | (value << 8) | value, 0)
    background = 0 if 0 in colours else max(colours, key=lambda c: (colours[c], -c))
    others = sorted(c for c in colours if c != background)
    return {f"#{background:06x}": 0, **{f"#{c:06x}": k for k, c in enumerate(others, start=1)}}


def _split(units: int) -> tuple[int, int, int, int]:
    """(members, heldout, population, clients) for `units` records or scans: 40% members, 30%
    held out (non-member targets and the utility test set), the rest the adversary's population;
    up to 4 clients with at least two members each where the data allow."""
    if units < 3:
        raise ValueError(f"{units} record(s): an audit needs at least 3 (members, held-out non-members and "
                         "the adversary's population are disjoint)")
    members = max(1, round(0.4 * units))
    heldout = max(1, round(0.3 * units))
    population = units - members - heldout
    if population < 1:
        members -= 1
        population = 1
    clients = min(4, members, max(2, members // 2))
    return members, heldout, population, clients


def _image_size(sizes: dict) -> int:
    """The largest power of two within the smallest image side, 16 to FIRST_AUDIT_SIZE."""
    side = min(sizes["min"])
    size = 16
    while size * 2 <= min(side, FIRST_AUDIT_SIZE):
        size *= 2
    return size


def _name(root: Path) -> str:
    return re.sub(r"[^a-z0-9]+", "-", root.name.lower()).strip("-") or "my-audit"


def scenario_for(info: dict) -> tuple[dict, list[str]]:
    """(the scenario as a dict, comment lines on why) for a folder `inspect_folder` described."""
    volumes = info["layout"] == "volumes"
    units = info["volumes"] if volumes else info["count"]
    members, heldout, population, clients = _split(units)
    size = _image_size(info["sizes"])
    root = Path(info["path"])
    unit = "scans" if volumes else "images"
    why = [f"{info['count']} {'slices of ' + str(units) + ' scans' if volumes else 'images'} in {root}",
           f"split by {unit}: {members} members over {clients} clients, {heldout} held out, "
           f"{population} for the adversary's population"]
    options: dict = {"path": str(root), "images": info["images"], "masks": info["masks"],
                     "channels": info["channels"], "mask_mode": info["mask_mode"]}
    if info.get("listing"):
        options["listing"] = info["listing"]
        why.append(f"the pairs {info['listing']} lists under 'training' (other files are not read)")
    if info.get("unpaired") and info.get("listing"):
        why.append(f"{len(info['unpaired'])} image(s) without a {'label' if volumes else 'mask'}, not listed and not "
                   "read: " + ", ".join(Path(p).name for p in info["unpaired"][:10])
                   + (" ..." if len(info["unpaired"]) > 10 else ""))
    elif info.get("unpaired"):
        options["unpaired"] = "skip"
        why.append(f"{len(info['unpaired'])} image(s) without a {'label' if volumes else 'mask'}, skipped: "
                   + ", ".join(Path(p).name for p in info["unpaired"][:10]) + (" ..." if len(info["unpaired"]) > 10 else ""))
    if info["mask_mode"] == "index":
        options["num_classes"] = max(max(info["classes"]) + 1, 2)
    if info["palette"]:
        options["palette"] = info["palette"]
        why.append(f"colour-coded masks: {len(info['palette'])} colours mapped to classes (check the palette)")
    if info["high_bit"] and str(info.get("modality") or "").upper() == "CT":
        options["window"] = list(CT_WINDOW)
        why.append(f"CT (dataset.json's modality): Hounsfield units windowed to {list(CT_WINDOW)}, the abdominal "
                   "soft-tissue window (W400/L40); a per-scan percentile window clips bright lesions into the body")
    elif info["high_bit"]:
        options["window"] = "percentile"
        why.append("16-bit or float intensities: window 'percentile' maps each "
                   f"{'scan' if volumes else 'image'}'s 1st-99th percentile to 0..1 (for CT, a HU window such "
                   "as [-160, 240] is better)")
    if volumes:
        options["axis"] = 2
        if info["modalities"]:
            options["modality"] = 0
            why.append(f"4-D scans with {info['modalities']} modalities: modality 0 is read")
        if info["count"] > MANY_SLICES:
            options["slices"] = "foreground"
            why.append(f"{info['count']} slices: only those with foreground ({info['foreground_slices']}) are kept")
        why.append("a patient is the member: each scan's slices stay with one client; one slice per scan is a target")
    why.append("recipe: 5 rounds of 5 local epochs, Adam 0.003, Dice + cross-entropy: enough for a model to "
               "segment; set it to how you train (reference and shadow models follow it)")
    why.append(f"image_size {size}: a power of two within the smallest image (at most {FIRST_AUDIT_SIZE} "
               "for a first audit)")
    # every member and every held-out record (scan) a target, where a first audit has few of them
    levels = [f for f in LEVELS if heldout * f >= 10]  # ten false positives allowed, or no figure
    if not levels:
        levels = [next((f for f in (0.1, 0.2, 0.5) if heldout * f >= 1), 0.5)]
        why.append(f"{heldout} non-member targets: too few for a TPR at a low FPR (it needs 10/FPR); TPR at "
                   f"{levels[0]:g} FPR allows {int(heldout * levels[0])} false positive(s): read the AUC and its interval")
    scenario = {
        "name": _name(root),
        "description": f"first audit of {root.name}: {clients} clients, FedAvg, black-box attacks on the final model",
        "seed": 0,
        "data": {"dataset": "folder", "image_size": size, "options": options,
                 "members": members, "heldout": heldout, "population": population, "partition": {"kind": "iid"}},
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 3},
        # enough training that the model segments (a first audit of a model that learnt nothing measures
        # nothing); Dice + cross-entropy because lesions are a few percent of the pixels
        "federation": {"clients": clients, "rounds": 5, "local_epochs": 5, "batch_size": 8, "lr": 0.003,
                       "optimizer": "adam", "loss": "dice+ce"},
        "server": {"strategy": "fedavg"},
        "attacks": ["loss", "modified-entropy", "confidence", "entropy"],
        "evaluation": {"tpr_at_fpr": levels, "ood": [], "targets": {"members": members, "nonmembers": heldout}},
        "runtime": {"keep_transcript": "final"},
    }
    return scenario, why


def write_scenario(path: str | Path, out: str | Path, *, overwrite: bool = False) -> tuple[str, list[str]]:
    """Inspect the folder at `path`, write a first audit scenario for it to `out`; return the
    YAML text and the commands to run next. An existing `out` is kept unless `overwrite`."""
    import yaml

    from fedmia.io import write_text_atomic

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or remove it")
    scenario, why = scenario_for(inspect_folder(path))
    header = ["# Written by `fedmia init`: a small first audit of your own scans.", *(f"# {line}" for line in why),
              "# Grow it once it runs: more rounds and local epochs (memorisation), evaluation.ood, defenses."]
    text = "\n".join(header) + "\n" + yaml.safe_dump(scenario, sort_keys=False, default_flow_style=None, width=100)
    write_text_atomic(out, text)
    return text, [f"fedmia validate {out}", f"fedmia run {out} --out runs/{scenario['name']}"]


def write_example_volumes(path: str | Path, volumes: int = 12, size: tuple[int, int, int] = (32, 32, 8),
                          seed: int = 0) -> Path:
    """Write `volumes` synthetic CT-like scans in the Decathlon layout (`imagesTr/case_000.nii.gz`,
    `labelsTr/case_000.nii.gz`, int16 Hounsfield-like intensities, one lesion each labelled 1):
    air around a soft-tissue body (~40 HU) with a brighter lesion (~120 HU) on some slices.
    For trying `fedmia init` and for the tests — nothing here is downloaded."""
    import nibabel

    root = Path(path)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    nx, ny, nz = size
    xx, yy, zz = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    affine = np.diag([1.0, 1.0, 2.5, 1.0])  # 1 mm in-plane, 2.5 mm slices
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(volumes)):
        rng = np.random.default_rng(child)
        body = ((xx - nx / 2) / (0.42 * nx)) ** 2 + ((yy - ny / 2) / (0.36 * ny)) ** 2 <= 1
        image = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, size)
        centre = rng.uniform([0.3 * nx, 0.3 * ny, 0.25 * nz], [0.7 * nx, 0.7 * ny, 0.75 * nz])
        radius = rng.uniform([0.08 * nx, 0.08 * ny, 0.15 * nz], [0.18 * nx, 0.18 * ny, 0.3 * nz])
        lesion = (((xx - centre[0]) / radius[0]) ** 2 + ((yy - centre[1]) / radius[1]) ** 2
                  + ((zz - centre[2]) / radius[2]) ** 2) <= 1
        image[lesion] += rng.uniform(60, 100)
        name = f"case_{i:03d}.nii.gz"
        nibabel.save(nibabel.Nifti1Image(np.round(image).astype(np.int16), affine), str(root / "imagesTr" / name))
        nibabel.save(nibabel.Nifti1Image(lesion.astype(np.uint8), affine), str(root / "labelsTr" / name))
    return root


# ---------------------------------------------------------------- a model trained outside fedmia

SPLIT = {"trainer": 0.5, "outside": 0.2, "population": 0.15, "test": 0.15}  # of the records (scans)


def write_model_audit(path: str | Path, out: str | Path, layout: str | Path | None = None, *,
                      overwrite: bool = False) -> tuple[str, list[str]]:
    """`fedmia init DATA --for-model`: the layout and scenario `fedmia audit-model` reads, for a
    model not yet trained. DATA's records (scans, for NIfTI) are split once, seeded: half to
    `LAYOUT/sites/trainer` (what the model trains on), the rest to the auditor's folders —
    `auditor/targets` (every trainer record, byte for byte, and as many never trained on),
    `auditor/population`, `auditor/test`. Files are hard-linked where the file system allows,
    else copied; DATA is not changed. The scenario's model is a plain smp.Unet (resnet18,
    encoder_depth 5, smp's decoder; `head: sigmoid` for binary masks, smp's classes=1) — edit it
    to describe yours. Returns the YAML text and the commands to run next."""
    import os
    import shutil

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or remove it")
    info = inspect_folder(path)
    base, why = scenario_for(info)
    options = {k: v for k, v in base["data"]["options"].items() if k not in ("path", "images", "masks", "listing",
                                                                            "unpaired")}
    pairs = folder_pairs({"path": info["path"], "images": info["images"], "masks": info["masks"],
                          **({"listing": info["listing"]} if info.get("listing") else {}),
                          **({"unpaired": "skip"} if info.get("unpaired") else {})})
    if len(pairs) < 8:
        raise ValueError(f"{len(pairs)} records: a trained model's audit splits them four ways (training, "
                         "non-member targets, population, test); expected at least 8")
    root = Path(layout) if layout is not None else out.parent / f"{base['name']}-audit"
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root}: already exists; choose another layout folder or remove it")
    order = np.random.default_rng(0).permutation(len(pairs))
    counts = {k: max(1, int(round(v * len(pairs)))) for k, v in SPLIT.items()}
    counts["trainer"] = len(pairs) - counts["outside"] - counts["population"] - counts["test"]
    parts, start = {}, 0
    for name, count in counts.items():
        parts[name] = [pairs[i] for i in order[start:start + count]]
        start += count

    def place(chosen, folder: Path) -> None:
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for _, image, mask in chosen:
            for source, sub in ((image, "images"), (mask, "masks")):
                target = folder / sub / source.name
                if target.exists():
                    target.unlink()
                try:
                    os.link(source, target)
                except OSError:  # another file system: a copy, byte for byte
                    shutil.copyfile(source, target)

    trainer = root / "sites" / "trainer"
    place(parts["trainer"], trainer)
    place(parts["trainer"] + parts["outside"], root / "auditor" / "targets")
    place(parts["population"], root / "auditor" / "population")
    place(parts["test"], root / "auditor" / "test")
    unit = "scans" if info["layout"] == "volumes" else "images"
    members, outside = len(parts["trainer"]), len(parts["outside"])
    note = (f"# {root}: sites/trainer ({members} {unit}: train on these only), auditor/targets (those {members} "
            f"and {outside} never trained on), auditor/population ({len(parts['population'])}), "
            f"auditor/test ({len(parts['test'])})")
    text, commands = write_layout_scenario(root, out, overwrite=True, options=options, name=base["name"] + "-model",
                                           recipe=base["federation"], why=[note, *(f"# {line}" for line in why
                                                                                  if not line.startswith("split by"))],
                                           nonmembers=outside)
    return text, [f"# train your model on {trainer} (images/, masks/) and save its state dict as trained.pt", *commands]


def is_site_layout(path: str | Path) -> bool:
    """A folder laid out for a multi-site audit: `sites/<name>/` per site and the auditor's
    `auditor/targets`, `auditor/population`, `auditor/test` (what `init --for-model` writes)."""
    root = Path(path).expanduser()
    return (root / "sites").is_dir() and all((root / "auditor" / k).is_dir() for k in ("targets", "population", "test"))


def write_layout_scenario(path: str | Path, out: str | Path, *, overwrite: bool = False, options: dict | None = None,
                          name: str | None = None, recipe: dict | None = None, why: list[str] | None = None,
                          nonmembers: int | None = None) -> tuple[str, list[str]]:
    """The multi-site scenario for a sites/auditor layout (`is_site_layout`): one client per site
    folder, the auditor's folders, a plain smp.Unet described as its library builds it
    (`head: sigmoid` for binary masks, smp's classes=1) — what `fedmia audit-model` and a
    simulated multi-site `fedmia run` read. The folder options come from the first site."""
    import yaml

    from fedmia.io import write_text_atomic

    root = Path(path).expanduser().resolve()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or remove it")
    sites = sorted(p for p in (root / "sites").iterdir() if p.is_dir() and not p.name.startswith("."))
    if not sites:
        raise ValueError(f"{root / 'sites'}: no site folder (expected sites/<name>/ with images/ and masks/)")
    info = inspect_folder(sites[0])
    base, lines = scenario_for(info)
    if options is None:
        options = {k: v for k, v in base["data"]["options"].items() if k not in ("path", "listing", "unpaired")}
        if options.get("images") == "images" and options.get("masks") == "masks":
            options = {k: v for k, v in options.items() if k not in ("images", "masks")}
    targets = len(list((root / "auditor" / "targets" / options.get("images", "images")).iterdir()))
    outside = nonmembers or max(1, targets // 2)  # members are unknown until the sites' manifests
    levels = [f for f in LEVELS if outside * f >= 10] or [next((f for f in (0.1, 0.2, 0.5) if outside * f >= 1), 0.5)]
    binary = info["mask_mode"] == "binary"
    scenario = {
        "name": name or _name(root),
        "description": f"audit of a model trained at {len(sites)} site(s) ({', '.join(s.name for s in sites)})",
        "seed": 0,
        "data": {"dataset": "folder", "image_size": base["data"]["image_size"], "options": options,
                 "sites": [{"name": site.name, "path": str(site)} for site in sites],
                 "auditor": {k: str(root / "auditor" / k) for k in ("targets", "population", "test")}},
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 5, **({"head": "sigmoid"} if binary else {})},
        "federation": {**(recipe or base["federation"]), "clients": len(sites)},
        "attacks": base["attacks"],
        "evaluation": {"tpr_at_fpr": levels, "ood": []},
    }
    header = ["# Written by `fedmia init`: audit a model trained at the site folders below, outside fedmia.",
              *(why if why is not None else [f"# {line}" for line in lines if not line.startswith("split by")]),
              "# model: a plain smp.Unet(encoder_name='resnet18'" + (", classes=1) (sigmoid head)" if binary else ")")
              + "; describe yours (encoder_depth, decoder_channels, head, normalize): docs/own-data.md",
              "# federation: the recipe the model was trained with (reference and shadow models follow it)",
              "# images reach the model as float32 in [0, 1], channels first (model.normalize if it was trained on "
              "normalised inputs)"]
    text = "\n".join(header) + "\n" + yaml.safe_dump(scenario, sort_keys=False, default_flow_style=None, width=100)
    write_text_atomic(out, text)
    manifests = out.parent / "manifests"
    return text, [*(f"fedmia manifest {site} --site {site.name} --out {manifests / (site.name + '.json')}"
                    for site in sites),
                  f"fedmia audit-model trained.pt {out} --manifests {manifests}"]
