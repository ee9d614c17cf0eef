"""The `folder` dataset's options: what they mean, their defaults, and their parsing (`window`
into a tuple, `palette` into {packed RGB: class}). The loader is `fedmia/data/folder.py`; the
options are apart so that sites, `fedmia init` and the loader read one definition."""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from fedmia.data.datasets import DatasetParams, dataset_options

NAME = "folder"
VOLUME_OPTIONS = ("axis", "slices", "modality")  # mean something for NIfTI volumes only
PERCENTILE = (1.0, 99.0)  # `window: percentile`, and the default for 16-bit images and volumes
PERCENTILE_SAMPLE = 4_000_000


class FolderParams(DatasetParams):
    """The `folder` options. `window` and `palette` keep the form the scenario writes; `checked_options`
    parses them. Cross-checks read the fields above them (mask_mode before num_classes before palette)."""

    path: str | None = Field(None, description="the folder holding the images and masks subfolders (required; "
                             "`~` is expanded); with data.sites each site and the auditor name their own instead")
    images: str = Field("images", description="subfolder of path holding the images: 2-D files PIL opens, or "
                        "NIfTI volumes *.nii / *.nii.gz (the Medical Segmentation Decathlon's: imagesTr)")
    masks: str = Field("masks", description="subfolder of path holding each image's mask or label volume, "
                       "matched by file stem (the Decathlon's: labelsTr)")
    listing: str | None = Field(None, description="a Decathlon-style dataset.json in path whose 'training' list "
                                "names the image/label pairs to read (other files are ignored); default: pair the "
                                "subfolders' files by name")
    unpaired: Literal["refuse", "skip"] = Field("refuse", description="an image without its mask or label: refuse "
                                                "(named, before anything runs) or skip (left out; `fedmia init` writes "
                                                "skip and names each one)")
    channels: Literal[1, 3] = Field(3, description="image channels the model sees: 1 (greyscale) or 3 (RGB); "
                                    "images are converted to it")
    mask_mode: Literal["binary", "index"] = Field(
        "binary", description="binary: a 2-D mask's pixel > 127 (in a 0/1 mask: 1; a label volume's value > 0) is foreground, 2 "
        "classes; index: mask values are class indices")
    num_classes: int | None = Field(None, ge=2, description="classes including background, with mask_mode index "
                                    "(binary has 2); default: the largest class found, or the palette's, + 1")
    window: list[float] | Literal["percentile"] | dict[Literal["percentile"], list[float]] | None = Field(
        None, description="intensities to 0..1: a pair of raw values such as [-100, 400] (a CT HU window) maps that "
        "range, clipped; percentile: each image's (a volume's: each scan's) 1st..99th percentile; {percentile: "
        "[2, 98]}: other percentiles. Default: 8-bit images / 255; 16-bit, float images and volumes: percentile")
    palette: dict[str, int] | None = Field(
        None, description="colour-coded 2-D masks: {\"#rrggbb\": class} for every colour they hold (quote the "
        "keys in YAML); classes above 1 need mask_mode index")
    axis: Literal[0, 1, 2] = Field(2, description="volumes only: the axis the scans are cut into 2-D slices along")
    slices: Literal["all", "foreground"] | int = Field(
        "all", description="volumes only: all; foreground (slices whose label has foreground; a scan without any "
        "keeps its middle slice); or an integer k >= 1 (every k-th slice, from the first)")
    modality: int | None = Field(None, ge=0, description="4-D volumes (several MR sequences) only, and required "
                                 "there: the index along the last axis that is read")

    @field_validator("channels", "axis", mode="before")
    @classmethod
    def _integer_choice(cls, value, info: ValidationInfo):
        choices = {"channels": (1, 3), "axis": (0, 1, 2)}[info.field_name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in choices:
            what = " (the volume axis to slice along)" if info.field_name == "axis" else ""
            raise ValueError(f"expected {', '.join(map(str, choices[:-1]))} or {choices[-1]}{what}")
        return int(value)

    @field_validator("num_classes")
    @classmethod
    def _binary_has_two(cls, value, info: ValidationInfo):
        if value is not None and info.data.get("mask_mode") == "binary" and value != 2:
            raise ValueError("mask_mode 'binary' has 2 classes")
        return value

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value):
        parsed = parse_window(value)
        if parsed is None or value == "percentile":
            return value
        kind, lo, hi = parsed
        return [lo, hi] if kind == "raw" else {"percentile": [lo, hi]}

    @field_validator("palette", mode="before")
    @classmethod
    def _palette(cls, value, info: ValidationInfo):
        palette = parse_palette(value)
        if not palette:
            return value
        largest, num_classes = max(palette.values()), info.data.get("num_classes")
        if info.data.get("mask_mode") == "binary" and largest > 1:
            raise ValueError(f"maps a colour to class {largest}, but mask_mode 'binary' has classes 0 and 1; "
                             "set mask_mode: index")
        if num_classes is not None and largest >= num_classes:
            raise ValueError(f"maps a colour to class {largest}, but num_classes is {num_classes}")
        return {colour: int(klass) for colour, klass in value.items()}

    @field_validator("slices", mode="before")
    @classmethod
    def _slices(cls, value):
        if value in ("all", "foreground"):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError("expected 'all', 'foreground' or an integer k >= 1 (every k-th slice)")
        return int(value)


# every option's default, for reading the scenario's options without a folder (fedmia/data/sites.py)
DEFAULTS = FolderParams().model_dump()


def folder_params(options: FolderParams | dict) -> FolderParams:
    """`options` as a FolderParams; a dict (a site's, `fedmia init`'s) is validated, and a bad
    option is a ValueError naming it."""
    return options if isinstance(options, FolderParams) else dataset_options(NAME, FolderParams, options)


def checked_options(options: FolderParams | dict) -> dict:
    """The folder options as a dict, every default filled in and every option checked (by
    FolderParams); `window` and `palette` come back parsed (a tuple, a {packed RGB: class} dict)."""
    params = folder_params(options)
    return {**params.model_dump(), "window": parse_window(params.window), "palette": parse_palette(params.palette)}


def parse_window(value) -> tuple[str, float, float] | None:
    """("raw", lo, hi) or ("percentile", p_lo, p_hi) from the `window` option (None: none given);
    ValueError (what is expected) for any other value."""
    if value is None:
        return None
    expected = ("expected [lo, hi] (raw intensities, lo < hi), 'percentile' or "
                "{percentile: [p_lo, p_hi]} with 0 <= p_lo < p_hi <= 100")
    kind, pair = "raw", value
    if value == "percentile":
        kind, pair = "percentile", PERCENTILE
    elif isinstance(value, dict):
        if set(value) != {"percentile"}:
            raise ValueError(expected)
        kind, pair = "percentile", value["percentile"]
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in pair)):
        raise ValueError(expected)
    lo, hi = float(pair[0]), float(pair[1])
    if not lo < hi or (kind == "percentile" and not 0 <= lo < hi <= 100):
        raise ValueError(expected)
    return kind, lo, hi


def parse_palette(value) -> dict[int, int] | None:
    """{packed 0xRRGGBB: class} from `palette: {"#rrggbb": class}` (None: no palette); ValueError
    (what is wrong) for any other value."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ValueError("expected a mapping of colours '#rrggbb' to classes")
    palette: dict[int, int] = {}
    for colour, klass in value.items():
        if not isinstance(colour, str) or not re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            raise ValueError(f"colour {colour!r}: expected '#rrggbb' (hex, quoted in YAML)")
        if isinstance(klass, bool) or not isinstance(klass, (int, np.integer)) or klass < 0:
            raise ValueError(f"class of {colour}: expected an integer >= 0")
        packed = int(colour[1:], 16)
        if packed in palette:
            raise ValueError(f"colour {colour} appears twice")
        palette[packed] = int(klass)
    return palette
