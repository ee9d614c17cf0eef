"""The dataset registry and its front door, `load_dataset`.

Each dataset module registers a loader with `@register_dataset(name, Params)`: `Params` is the
pydantic model of its options (a `DatasetParams`: unknown keys and wrong types are refused, every
field described — `fedmia describe NAME` and the generated reference list them). A loader is
called as `loader(records=..., image_size=..., seed=..., options=...)` and returns
`(Records, DatasetInfo)`; `options` is the scenario's `data.options` validated into an instance
of its `Params`. A loader registered with plain `@DATASETS.register(name)` declares no model
(`Params` None) and gets `options` as a dict, to check itself.
A loader that can read part of its pool cheaply also takes `rows=` (positions in the
`records`-long pool, in the order wanted): a client then loads only its own records. Loaders
without it still work — `load_dataset` loads the pool and takes the rows.
Each loader's package offers it with an entry point in the `fedmia.datasets` group; the module is
imported when a scenario names it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from fedmia.data.records import DatasetInfo, Records
from fedmia.registry import Registry

Loader = Callable[..., "tuple[Records, DatasetInfo]"]

DATASETS: Registry[Loader] = Registry("dataset", "fedmia.datasets")


class DatasetParams(BaseModel):
    """Base of a dataset's options model. Strict, as YAML writes them: `true` is no integer and
    "3" no number; an unknown key is refused (a typo fails loudly)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def register_dataset(name: str, params: type[BaseModel]) -> Callable[[Loader], Loader]:
    """Register a loader under `name` whose options are validated by `params` (kept as `loader.Params`)."""

    def add(loader: Loader) -> Loader:
        return DATASETS.register(name, params)(loader)

    return add


def dataset_options(name: str, params: type[BaseModel], options: dict) -> BaseModel:
    """`options` validated by dataset `name`'s `params` model; ValueError naming each bad option."""
    try:
        return params.model_validate(options)
    except ValidationError as error:
        from fedmia.scenario import describe_pydantic_error

        problems = []
        for detail in error.errors():
            key = ".".join(map(str, detail["loc"]))
            if detail["type"] == "extra_forbidden":
                problems.append(f"unknown option {key!r}; expected some of: {', '.join(params.model_fields)}")
            else:
                problems.append("{}: {}".format(*describe_pydantic_error(detail)))
        raise ValueError(f"{name}: " + "; ".join(problems)) from None


def load_dataset(
    name: str, *, records: int, image_size: int, seed: int, options: dict | None = None,
    rows: np.ndarray | None = None,
) -> tuple[Records, DatasetInfo]:
    """Load `records` records of dataset `name` at `image_size`×`image_size` — or, with `rows`,
    only those records of that pool (the same arrays as the pool's `subset(rows)`).

    `options` reach the loader validated by its `Params` (a model instance), or as a dict for a
    loader without one. Raises UnknownNameError for an unregistered name and ValueError for bad
    arguments or options.
    """
    loader = DATASETS.get(name)
    int_option(name, "records", records, minimum=1)
    int_option(name, "image_size", image_size, minimum=1)
    int_option(name, "seed", seed, minimum=0)  # numpy seed sequences reject negative seeds
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"{name}: options must be a dict, found {type(options).__name__}")
    params = getattr(loader, "Params", None)
    options = dict(options or {}) if params is None else dataset_options(name, params, options or {})
    kwargs = {"records": records, "image_size": image_size, "seed": seed, "options": options}
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= records):
            raise ValueError(f"{name}: rows must lie in 0..{records - 1}")
        if "rows" in inspect.signature(loader).parameters:
            data, info = loader(**kwargs, rows=rows)
        else:
            data, info = loader(**kwargs)
            data = data.subset(rows)
    else:
        data, info = loader(**kwargs)
    # Cheap consistency check: a loader bug here would surface much later as a shape error in training.
    if data.images.shape[1] != info.in_channels or len(info.class_names) != info.num_classes:
        raise RuntimeError(f"{name}: loader returned records inconsistent with its DatasetInfo")
    return data, info


def int_option(dataset: str, key: str, value: Any, *, minimum: int) -> int:
    # bool is an int subclass, but `max_digits=True` is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{dataset}: {key} must be an integer >= {minimum}, found {value!r}")
    return int(value)


def require_image_size(dataset: str, image_size: int, minimum: int) -> None:
    if image_size < minimum:
        raise ValueError(f"{dataset}: image_size must be >= {minimum}, found {image_size}")


def resize_images(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of float images (N, C, H, W), one plane at a time through PIL's float mode."""
    if images.shape[2:] == (height, width):
        return images.astype(np.float32, copy=True)
    out = np.empty(images.shape[:2] + (height, width), dtype=np.float32)
    for n in range(images.shape[0]):
        for c in range(images.shape[1]):
            # A float32 array becomes a PIL "F" image, which resizes without 8-bit quantisation.
            plane = Image.fromarray(np.ascontiguousarray(images[n, c], dtype=np.float32))
            out[n, c] = np.asarray(plane.resize((width, height), Image.BILINEAR))
    return np.clip(out, 0.0, 1.0)


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of class masks (N, H, W), so no new class values are invented."""
    if masks.shape[1:] == (height, width):
        return masks.copy()
    out = np.empty((masks.shape[0], height, width), dtype=masks.dtype)
    for n in range(masks.shape[0]):
        plane = Image.fromarray(np.ascontiguousarray(masks[n], dtype=np.int32))  # mode "I"
        out[n] = np.asarray(plane.resize((width, height), Image.NEAREST))
    return out

