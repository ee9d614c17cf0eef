"""Plug-in registries fed by Python entry points — one mechanism for every family.

Each family (datasets, attacks, defenses, strategies, models) keeps one `Registry` bound to an
entry-point group (`fedmia.attacks`, ...). A package — fedmia itself or the user's own — offers a
plug-in with one line in its `pyproject.toml`:

    [project.entry-points."fedmia.attacks"]
    my-attack = "mypkg.my_attack"          # the module that registers it (or "module:object")

and one file: the module, whose decorator (`@register_attack("my-attack")`, ...) registers the
class when it is imported. Names come from the installed packages' metadata, so listing them or
rejecting a misspelt one imports nothing (no torch); a plug-in's module is imported only when a
scenario names it (`get`). fedmia's own plug-ins are registered the same way, in its
`pyproject.toml`: the core names none of them.
"""

from __future__ import annotations

import functools
import importlib
import types
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that no module registered; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} {name!r}; expected one of: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class PluginLoadError(RuntimeError):
    """An entry point that names a plug-in its module does not provide, or a module that fails
    to import; the message names the entry point and its package."""


class PluginConflict(PluginLoadError):
    """Two installed packages offer one name in one group. Refused, not resolved either way: a
    package that registered `loss` in `fedmia.attacks` was imported instead of fedmia's own
    (2026-12-04), so every audit naming `loss` would have reported another attack's figures.
    Preferring fedmia's own would still hide that the user's package meant something else by it;
    the user settles it (uninstall one, or rename the plug-in). A usage problem: exit 2."""

    exit_code = 2


@functools.lru_cache(maxsize=None)
def _scan(group: str) -> tuple[dict[str, metadata.EntryPoint], dict[str, tuple[metadata.EntryPoint, ...]]]:
    found: dict[str, metadata.EntryPoint] = {}
    clashes: dict[str, list[metadata.EntryPoint]] = {}
    for point in metadata.entry_points(group=group):  # one per distribution (importlib dedups names)
        first = found.setdefault(point.name, point)
        if first is not point and distribution_of(first)[0] != distribution_of(point)[0]:
            clashes.setdefault(point.name, [first]).append(point)
    # offers in package order, not sys.path order (which differs between installs: a test once
    # saw them either way round)
    return found, {name: tuple(sorted(points, key=distribution_of)) for name, points in clashes.items()}


def entry_points_of(group: str) -> dict[str, metadata.EntryPoint]:
    """The group's entry points by name (package metadata only: no plug-in is imported). A name
    two packages offer is in `conflicts_of` and refused where it is used."""
    return _scan(group)[0]


entry_points_of.cache_clear = _scan.cache_clear  # a package installed while the process runs (tests)


def conflicts_of(group: str) -> dict[str, tuple[metadata.EntryPoint, ...]]:
    """Names of `group` offered by more than one installed package, with every offer."""
    return _scan(group)[1]


def conflict_message(kind: str, name: str, points: tuple[metadata.EntryPoint, ...]) -> str:
    offers = ", ".join(f"{' '.join(distribution_of(p))} ({p.value})" for p in points)
    return (f"{kind} {name!r} is offered by {len(points)} installed packages: {offers}; a name must mean one "
            f"plug-in: uninstall one of them, or rename the plug-in in its package's entry points")


def distribution_of(point: metadata.EntryPoint) -> tuple[str, str]:
    """(package, version) that offers `point`; ('?', '?') when the metadata does not say."""
    dist = getattr(point, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"] or "?", dist.version or "?"


_REGISTRIES: dict[str, "Registry"] = {}  # group → its registry, once the family's module is imported


def offered(group: str) -> list[str]:
    """Every name a group offers — installed packages' entry points, and plug-ins registered in
    this process by an import (a notebook's, a test's) — without importing any plug-in module."""
    registry = _REGISTRIES.get(group)
    return registry.names() if registry is not None else sorted(entry_points_of(group))


@dataclass(frozen=True)
class Family:
    """One family of plug-ins: its entry-point group, what one is called, and the module that
    holds its registry (imported only when the registry itself is needed)."""

    group: str
    kind: str
    title: str
    home: str

    def registry(self) -> "Registry":
        if self.group not in _REGISTRIES:
            importlib.import_module(self.home)
        return _REGISTRIES[self.group]


FAMILIES = (
    Family("fedmia.datasets", "dataset", "datasets", "fedmia.data.datasets"),
    Family("fedmia.partitioners", "partitioner", "partitioners", "fedmia.data.partition"),
    Family("fedmia.models", "model family", "model families", "fedmia.models"),
    Family("fedmia.strategies", "server strategy", "strategies", "strategies"),
    Family("fedmia.attacks", "attack", "attacks", "fedmia.attacks"),
    Family("fedmia.defenses", "defense", "defenses", "fedmia.defenses"),
    Family("fedmia.ood_sets", "OOD set", "OOD sets", "fedmia.data.ood"),
    Family("fedmia.threat_models", "threat model", "threat models", "fedmia.threat_models"),
)


def family(group: str) -> Family:
    return next(f for f in FAMILIES if f.group == group)


class Registry(Generic[T]):
    """Names → plug-ins of one family. `group`: the entry-point group that offers them."""

    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind
        self.group = group
        self._entries: dict[str, T] = {}
        if group is not None:
            _REGISTRIES[group] = self

    def register(self, name: str, Params: type | None = None) -> Callable[[T], T]:
        """Register a plug-in under `name`. The one contract of every family: a plug-in carries
        its name as `name` and its parameters' pydantic model as `Params` (None: it takes none).
        A class declares `Params` itself (its family's base class gives the default); a function
        (a loader, a partitioner, an OOD set) gets the `Params` passed here."""

        def add(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            entry.name = name
            if not isinstance(entry, type):
                entry.Params = Params
            self._entries[name] = entry
            return entry

        return add

    def _points(self) -> dict[str, metadata.EntryPoint]:
        return entry_points_of(self.group) if self.group else {}

    def get(self, name: str) -> T:
        clash = conflicts_of(self.group).get(name) if self.group else None
        if clash:
            raise PluginConflict(conflict_message(self.kind, name, clash))
        if name in self._entries:
            return self._entries[name]
        point = self._points().get(name)
        if point is None:
            raise UnknownNameError(self.kind, name, self.names())
        try:
            loaded = point.load()  # imports the module; its decorator registers the plug-in
        except Exception as error:  # noqa: BLE001  (a user's module may raise anything on import)
            package = distribution_of(point)[0]
            raise PluginLoadError(f"{self.kind} {name!r} (entry point {point.value!r} of package {package}) "
                                  f"failed to import: {type(error).__name__}: {error}") from error
        if name not in self._entries:
            if isinstance(loaded, types.ModuleType):
                raise PluginLoadError(f"{self.kind} {name!r}: entry point {point.value!r} imported, but the "
                                      f"module registers no {self.kind} named {name!r}")
            self._entries[name] = loaded  # "module:object" without a decorator
        return self._entries[name]

    def names(self) -> list[str]:
        """Every name on offer — registered or named by an installed package — imports nothing."""
        return sorted(set(self._entries) | set(self._points()))

    def package(self, name: str) -> tuple[str, str]:
        """(package, version) offering `name` (from metadata); a plug-in registered only by an
        import (a test's, a notebook's) is ('(registered in-process)', '')."""
        point = self._points().get(name)
        if point is None:
            if name in self._entries:
                return "(registered in-process)", ""
            raise UnknownNameError(self.kind, name, self.names())
        return distribution_of(point)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._points()
