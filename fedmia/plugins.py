"""Which plug-ins a scenario names, and a check that a process runs the same ones.

Every process of a run — the driver, each Ray worker, each site's SuperNode — resolves the
plug-ins the scenario names from its own installed packages. The server sends the clients a
manifest (`plugin_manifest`: package and version of each plug-in a client runs); a client that
lacks one, or has it at another version, refuses with `PluginMissing` naming the plug-in and
itself, and the server stops the run with that message (strategies/fedavg.py) — a client never
trains without a defense the scenario names.
"""

from __future__ import annotations

from fedmia.registry import distribution_of, entry_points_of
from fedmia.scenario import Scenario


def named_plugins(scenario: Scenario) -> list[tuple[str, str, str, str]]:
    """(key path, entry-point group, family, name) of every plug-in the scenario names."""
    named = [("data.dataset", "fedmia.datasets", "dataset", scenario.data.dataset),
             ("model.family", "fedmia.models", "model family", scenario.model.family),
             ("server.strategy", "fedmia.strategies", "server strategy", scenario.server.strategy),
             ("data.partition.kind", "fedmia.partitioners", "partitioner", scenario.data.partition.kind)]
    named += [(f"attacks.{i}.name", "fedmia.attacks", "attack", spec.name) for i, spec in enumerate(scenario.attacks)]
    named += [(f"defenses.{key}", "fedmia.defenses", "defense", key) for key in scenario.defenses.root]
    named += [(f"evaluation.ood.{i}", "fedmia.ood_sets", "OOD set", name) for i, name in enumerate(scenario.evaluation.ood)]
    return named


class PluginMissing(RuntimeError):
    """A process (a Ray worker, a site's SuperNode) cannot resolve a plug-in the scenario names,
    or resolves it at another version than the server: the run stops, naming both. Its message
    starts with MARK, which the server looks for among a round's failures."""


MARK = "cannot resolve the plug-ins the scenario names"  # no quote: Flower may repr() the message
# the families a client runs (a client builds the plan: it partitions the members itself)
CLIENT_GROUPS = ("fedmia.datasets", "fedmia.models", "fedmia.defenses", "fedmia.partitioners")


def plugin_manifest(scenario: Scenario) -> dict[str, list[str]]:
    """'group/name' → [package, version] of every plug-in a client runs, as this process resolves
    them (from metadata): what the server sends, so that every client checks it runs the same."""
    manifest = {}
    for _, group, _, name in named_plugins(scenario):
        point = entry_points_of(group).get(name) if group in CLIENT_GROUPS else None
        if point is not None:  # plug-ins registered in-process only travel with the pickled scenario
            manifest[f"{group}/{name}"] = list(distribution_of(point))
    return manifest


def plugins_used(scenario: Scenario) -> list[dict[str, str]]:
    """Every plug-in the scenario names, with the package and version that offered it here: what
    the completion record and the audit report's reproducibility section list."""
    from fedmia.registry import family

    used = []
    for _, group, kind, name in named_plugins(scenario):
        registry = family(group).registry()
        package, version = registry.package(name) if name in registry else ("?", "?")
        entry = {"family": kind, "name": name, "package": package, "version": version}
        if entry not in used:
            used.append(entry)
    return used


def check_plugin_manifest(manifest: dict[str, list[str]], here: str) -> None:
    """Raise PluginMissing when this process lacks a plug-in of `manifest` or has it at another
    version; `here` names this process (a site, a partition)."""
    wrong = []
    for key, (package, version) in sorted(manifest.items()):
        group, _, name = key.partition("/")
        point = entry_points_of(group).get(name)
        if point is None:
            wrong.append(f"{key} ({package} {version} on the server) is not installed here")
        elif tuple(distribution_of(point)) != (package, version):
            found = " ".join(distribution_of(point))
            wrong.append(f"{key} is {found} here, {package} {version} on the server")
    if wrong:
        raise PluginMissing(f"{here} {MARK}: " + "; ".join(wrong))


def refusal_in(message: str) -> str | None:
    """A client's refusal (PluginMissing) found in a failure message as Flower reports it (a Ray
    error's text, maybe repr()-escaped), as one clean line; None if there is none."""
    import re

    if MARK not in message:
        return None
    found = re.search(r"((?:site/partition \S+: )?[^\n]*?" + re.escape(MARK) + r"[^\n]*)", message.replace("\\'", "'"))
    line = found.group(1) if found else message
    line = line.split("PluginMissing: ")[-1].split("Message: ")[-1]
    return line.rstrip("'\">) ").strip()


def failure_texts(failures) -> list[str]:
    """Each failure of a round as text: an exception (simulation) or the error a client's reply
    carries (deployment)."""
    return [str(f if isinstance(f, BaseException) else f[1].status.message) for f in failures]


def stop_if_refused(server_round: int, messages: list[str]) -> None:
    """Raise PluginMissing when a client of this round refused for want of a plug-in: a client
    that would train without a named defense stops the run, naming it. `messages` whole: the
    refusal starts the client's message, which a long list of missing plug-ins makes long."""
    refused = [r for r in map(refusal_in, messages) if r]
    if refused:
        raise PluginMissing(f"round {server_round}: {refused[0]}")


def where() -> str:
    """This process, as a refusal names it: its host and pid (a client adds its site or partition)."""
    import os
    import socket

    return f"{socket.gethostname()} (pid {os.getpid()})"


def plugin_parameters(group: str, name: str) -> tuple[str, str, list[tuple[str, str, str, str]]]:
    """(package, docstring, [(parameter, type, default, description)]) of a plug-in — what
    `fedmia describe` shows; imports the plug-in's module."""
    import inspect

    from fedmia.registry import family

    registry = family(group).registry()
    entry = registry.get(name)
    params = entry.Params  # every family's one contract (fedmia/registry.py)
    package = " ".join(p for p in registry.package(name) if p)
    rows = []
    for field_name, field in (params.model_fields.items() if params is not None else []):
        plain = isinstance(field.annotation, type) and not getattr(field.annotation, "__args__", None)
        annotation = field.annotation.__name__ if plain else str(field.annotation).replace("typing.", "")
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((field_name, annotation, default, field.description or ""))
    return package, " ".join((inspect.getdoc(entry) or "").split()), rows
