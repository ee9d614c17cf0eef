"""The `module` model family: any nn.Module from a factory the scenario names.

    model: {family: module, factory: "mypkg.nets:make_net", options: {width: 16}}

`make_net(in_channels=..., num_classes=..., **options)` returns a network mapping (N, C, H, W)
images to (N, K, H, W) logits; a factory that does not take `in_channels` or `num_classes`
(`Net()`) is called without them, its fixed input and output declared by `model.in_channels` and
`model.head` (sigmoid: one logit channel). The factory's package must be importable wherever the model is
built — the driver, every Ray worker, every SuperNode (install it, or put it on PYTHONPATH) —
which is why a network used more than once is better registered as a family of its own
(`@register_model_family`, one entry-point line): `fedmia list` then names it.
"""

from __future__ import annotations

import importlib

from torch import nn

from fedmia.models.family import ModelFamily, register_model_family


def resolve_factory(text: str | None):
    """The callable 'package.module:name' names; ValueError (a `model.factory` problem) if not."""
    if not text or ":" not in text:
        raise ValueError(f"model.factory: expected 'package.module:callable' with family module, found {text!r}")
    module_name, _, attribute = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001  (a user's module may raise anything on import)
        raise ValueError(f"model.factory: module {module_name!r} failed to import ({type(error).__name__}: "
                         f"{error}); expected a package installed or on PYTHONPATH") from None
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"model.factory: module {module_name!r} has no {attribute!r}")
    if not callable(factory):
        raise ValueError(f"model.factory: {text!r} is a {type(factory).__name__}, expected a callable")
    return factory


@register_model_family("module")
class ModuleFamily(ModelFamily):
    """Any nn.Module: `model.factory` ('package.module:callable') called with in_channels,
    num_classes and `model.options` as keyword arguments."""

    Params = None  # the factory's keyword arguments, passed as they are

    def build(self, spec, in_channels: int, num_classes: int, options) -> nn.Module:
        factory = resolve_factory(spec.factory)
        offered = {"in_channels": in_channels, "num_classes": num_classes}
        kwargs = {**{k: v for k, v in offered.items() if _takes(factory, k)}, **options}
        try:
            return factory(**kwargs)
        except TypeError as error:
            raise ValueError(f"model.options: {spec.factory} does not take these keyword arguments "
                             f"({', '.join(kwargs) or 'none'}): {error}") from None


def _takes(factory, name: str) -> bool:
    """Whether `factory` accepts keyword `name` (by name or through **kwargs). A network with a
    fixed input and head (`Net()`, as `flwr new` writes one) is called with neither channels nor
    classes: `model.in_channels` and `model.head` describe it instead."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: offer both, as before
        return True
    return any(p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.kind == p.VAR_KEYWORD
               for p in parameters)
