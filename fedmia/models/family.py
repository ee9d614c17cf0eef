"""The model-family plug-in point: a base class and its registry (entry-point group
`fedmia.models`). A family module imports this, decorates its class, and is named by one entry
point; `fedmia.models` re-exports all of it."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from fedmia.registry import Registry

MODEL_FAMILIES: Registry[type["ModelFamily"]] = Registry("model family", "fedmia.models")


def register_model_family(name: str) -> Callable[[type["ModelFamily"]], type["ModelFamily"]]:
    def add(cls: type[ModelFamily]) -> type[ModelFamily]:
        return MODEL_FAMILIES.register(name)(cls)

    return add


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelFamily:
    """A way to build the federation's network. Subclass, set `Params` (a pydantic model that
    validates `model.options`; None passes them through as a dict) and override `build`, which
    returns an nn.Module mapping (N, in_channels, H, W) to (N, num_classes, H, W) logits. The
    seed is set before `build` is called: draw random weights with torch's global generator."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel] | None] = NoParams

    def build(self, spec, in_channels: int, num_classes: int, options: Any) -> nn.Module:
        raise NotImplementedError
