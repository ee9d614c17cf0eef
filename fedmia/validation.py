"""Checks a scenario against the plug-in registries, and the front door that loads one.

`fedmia/scenario.py` is the schema alone; here the names it holds as strings meet the
registries (datasets, architectures, strategies, attacks, defenses), each plug-in's own
parameter model validates its block, defenses check their own cross-conditions and which other
defenses they do not compose with, and the federation plan is checked for what can be carried
out. The registries are imported inside `plugin_problems`, so a file the schema already rejects
(a typo, a wrong type, bad YAML) costs no torch or flwr import (`fedmia validate` < 2 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedmia.plugins import MARK, PluginMissing, named_plugins, where  # noqa: F401  (re-exported)
from fedmia.scenario import Scenario, ScenarioError, describe_pydantic_error, parse_schema, read_yaml


def plan_problems(scenario: Scenario) -> list[tuple[str, str]]:
    """Cross-checks of the schema's own fields (no plug-in needed)."""
    data, fed = scenario.data, scenario.federation
    if data.multi_site:
        problems = _site_problems(scenario)
    elif fed.clients > data.members:
        problems = [("federation.clients", f"{fed.clients} clients cannot share {data.members} member records "
                     "(data.members); expected at most one client per record")]
    else:
        problems = []
    if scenario.clients_per_round > fed.clients:
        problems.append(("federation.clients_per_round",
                         f"expected at most federation.clients ({fed.clients}), found {scenario.clients_per_round}"))
    targets = scenario.evaluation.targets
    if data.multi_site:
        pass  # the auditor's target folder is the target list; its members are the sites' secret
    elif targets.members is not None and targets.members > data.members:
        problems.append(("evaluation.targets.members",
                         f"expected at most data.members ({data.members}), found {targets.members}"))
    nonmembers = targets.nonmembers or targets.members
    if nonmembers is not None and nonmembers > data.heldout:
        problems.append(("evaluation.targets.nonmembers",
                         f"expected at most data.heldout ({data.heldout}), found {nonmembers}"))
    model = scenario.model
    if model.decoder_channels is not None and len(model.decoder_channels) != model.encoder_depth:
        problems.append(("model.decoder_channels", f"expected one entry per encoder stage ({model.encoder_depth}), "
                         f"found {len(model.decoder_channels)}"))
    if data.image_size % (2 ** model.encoder_depth) != 0:
        problems.append(("data.image_size", f"expected a multiple of 2**encoder_depth = {2 ** model.encoder_depth}, "
                         f"found {data.image_size}"))
    memory = None if data.multi_site else _memory_problem(scenario)  # folders are sized when read
    if memory:
        problems.append(memory)
    names = scenario.attack_names
    if len(set(names)) != len(names):
        problems.append(("attacks", f"each attack may appear once (give repeats a `label`), found {names}"))
    for i, crash in enumerate(scenario.faults.crash):  # planned faults must name what exists
        if crash.client >= fed.clients:
            problems.append((f"faults.crash.{i}.client", f"expected a partition-id below federation.clients "
                             f"({fed.clients}), found {crash.client}"))
        if crash.round > fed.rounds:
            problems.append((f"faults.crash.{i}.round", f"expected a round in 1..federation.rounds ({fed.rounds}), "
                             f"found {crash.round}"))
    return problems


# one pool's counts and its synthetic split mean nothing when the records are the sites' own
_POOL_ONLY = ("members", "heldout", "population", "public", "partition", "domain_shift")


def _site_problems(scenario: Scenario) -> list[tuple[str, str]]:
    """A multi-site audit: one `folder` per site, the auditor's folders, one client per site."""
    data, fed = scenario.data, scenario.federation
    problems: list[tuple[str, str]] = []
    if data.dataset != "folder":
        problems.append(("data.dataset", f"data.sites reads each site's own folder: expected 'folder', "
                         f"found {data.dataset!r}"))
    if data.auditor is None:
        problems.append(("data.auditor", "required with data.sites: the folders the auditor holds "
                         "(targets, population, test)"))
    if "path" in data.options:
        problems.append(("data.options.path", "with data.sites each site has its own folder "
                         "(data.sites.N.path, or its SuperNode's data-path) and the auditor its own (data.auditor)"))
    defaults = type(data)()
    for key in _POOL_ONLY:
        if getattr(data, key) != getattr(defaults, key):  # a saved run's scenario.yaml spells out defaults
            problems.append((f"data.{key}", f"has no meaning with data.sites (the sites' folders are the "
                             f"members; the auditor's folders the rest): leave it out, found {getattr(data, key)!r}"))
    if data.options.get("mask_mode") == "index" and data.options.get("num_classes") is None:
        problems.append(("data.options.num_classes", "required with data.sites and mask_mode 'index': "
                         "every site and the auditor must agree on the classes"))
    names = [site.name for site in data.sites]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append((f"data.sites.{i}.name", f"each site is named once, found {name!r} twice"))
    if fed.clients != len(names):
        problems.append(("federation.clients", f"expected one client per site in data.sites ({len(names)}), "
                         f"found {fed.clients}"))
    targets = scenario.evaluation.targets
    if targets.members is not None or targets.nonmembers is not None:
        problems.append(("evaluation.targets", "with data.sites the targets are the files in "
                         "data.auditor.targets (their membership is the sites' to tell); remove it"))
    return problems


def _memory_problem(scenario: Scenario) -> tuple[str, str] | None:
    """The record pool (float32 images, at most 3 channels, and one-byte masks) must fit in this
    machine's memory: a run that would swap or be killed hours in is refused up front."""
    import os

    data = scenario.data
    records = data.members + data.heldout + data.population + data.public
    needed = records * data.image_size ** 2 * (3 * 4 + 1)
    try:
        available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    if needed > available:
        return ("data", f"{records} records of {data.image_size}x{data.image_size} need about "
                f"{needed / 2**30:.1f} GiB in memory, more than this machine's {available / 2**30:.1f} GiB; "
                "expected fewer records or a smaller data.image_size")
    return None


def _params_problems(model: type, raw: Any, where: str) -> tuple[Any, list[tuple[str, str]]]:
    try:
        return model.model_validate(raw), []
    except ValidationError as error:
        return None, [(f"{where}.{w}" if w != "(top level)" else where, what)
                      for w, what in (describe_pydantic_error(e) for e in error.errors())]


def defense_block_problems(scenario: Scenario) -> list[tuple[str, str]]:
    """Each defense block checked against its plug-in's parameters; the validated ones replace
    the raw blocks in `scenario` (a defense is built from them)."""
    from fedmia.defenses import DEFENSES
    from fedmia.registry import PluginLoadError, UnknownNameError

    problems: list[tuple[str, str]] = []
    validated: dict[str, Any] = {}
    for key, raw in scenario.defenses.root.items():
        try:
            cls = DEFENSES.get(key)
        except (UnknownNameError, PluginLoadError) as error:
            problems.append((f"defenses.{key}", str(error)))
            continue
        block = cls.block(raw)
        if block is None:
            continue
        params, found = _params_problems(cls.Params, block, f"defenses.{key}")
        problems += found
        if params is not None:
            validated[key] = params
    scenario.defenses.root = validated
    return problems


def name_problems(scenario: Scenario) -> list[tuple[str, str]]:
    """Names no installed package offers — from package metadata alone, so a misspelt plug-in
    is rejected without importing any plug-in module (or torch)."""
    from fedmia.registry import UnknownNameError, conflict_message, conflicts_of, offered

    problems = []
    for where, group, kind, name in named_plugins(scenario):
        if name not in offered(group):
            problems.append((where, str(UnknownNameError(kind, name, offered(group)))))
        elif name in conflicts_of(group):  # two packages, one name: never resolved silently
            problems.append((where, conflict_message(kind, name, conflicts_of(group)[name])))
    return problems


def plugin_problems(scenario: Scenario) -> list[tuple[str, str]]:
    """Registered names, each plug-in's parameters, the defenses' own checks and conflicts, and
    a probe build of the model. Validated defense blocks replace the raw ones in `scenario`."""
    unknown = name_problems(scenario)
    if unknown:  # nothing imported for a file that names what no package offers
        return unknown
    from fedmia import attacks, models
    from fedmia.data import datasets
    from fedmia.defenses import DEFENSES
    from fedmia.defenses.base import LOCAL_STAGES
    from fedmia.registry import PluginLoadError, UnknownNameError
    import strategies

    problems: list[tuple[str, str]] = []

    def check(where: str, fn) -> bool:
        try:
            fn()
            return True
        except (UnknownNameError, ValueError, PluginLoadError) as error:
            problems.append((where, str(error)))
            return False

    if check("data.dataset", lambda: datasets.DATASETS.get(scenario.data.dataset)):
        options_model = getattr(datasets.DATASETS.get(scenario.data.dataset), "Params", None)
        if options_model is not None:  # a loader without one checks its options itself, when it loads
            problems += _params_problems(options_model, scenario.data.options, "data.options")[1]
    ok = check("model.arch", lambda: models.check_architecture(scenario.model.arch))
    ok &= check("model.encoder", lambda: models.check_encoder(scenario.model.encoder))
    probe: list = []  # the probe model, for the defenses' model checks below
    if ok:  # a probe build catches depth/architecture combinations smp cannot shape
        check("model", lambda: probe.append(models.build_model(scenario.model, in_channels=1, num_classes=2)))
    if check("server.strategy", lambda: strategies.STRATEGIES.get(scenario.server.strategy)):
        entry = strategies.STRATEGIES.get(scenario.server.strategy)
        params, found = _params_problems(entry.Params, scenario.server.params(), "server")
        problems += found
        if params is not None:  # the strategy's own cross-checks
            problems += entry.problems(scenario, params)
    for i, spec in enumerate(scenario.attacks):
        if check(f"attacks.{i}.name", lambda name=spec.name: attacks.ATTACKS.get(name)):
            problems += _params_problems(attacks.ATTACKS.get(spec.name).Params, spec.params(), f"attacks.{i}")[1]

    problems += defense_block_problems(scenario)
    if any(w.startswith("defenses") for w, _ in problems):
        return problems
    validated = scenario.defenses.root
    active = {key: DEFENSES.get(key)(params) for key, params in validated.items()}
    for key, defense in active.items():
        problems += defense.problems(scenario)
        if probe:
            problems += defense.model_problems(probe[0])
        for other, why in defense.conflicts.items():
            # `conflicts` are between ways of training locally: a listed defense acting on the
            # server's side (central DP's aggregation) leaves the clients' training alone
            if other in active and active[other].acts_on in LOCAL_STAGES and defense.acts_on in LOCAL_STAGES:
                problems.append((f"defenses.{key}", f"does not compose with defenses.{other}: {why}"))
    return problems


def validate(scenario: Scenario, source: str = "<scenario>") -> Scenario:
    problems = plan_problems(scenario) + plugin_problems(scenario)
    if problems:
        raise ScenarioError(source, problems)
    return scenario


def parse_scenario(raw: Any, source: str = "<scenario>") -> Scenario:
    """Validate an already-parsed YAML document: schema first, then the plug-ins."""
    scenario = parse_schema(raw, source)
    problems = plan_problems(scenario)
    if problems:  # no plug-in import for a plan that cannot work anyway
        raise ScenarioError(source, problems)
    return validate(scenario, source)


def load_scenario(path: str | Path) -> Scenario:
    return parse_scenario(read_yaml(path), str(path))


def scenario_from_run_config(run_config, client: bool = False) -> Scenario:
    """The scenario of a `flwr run`: sent whole (`scenario-b64`, by `fedmia deploy`), else the
    file at `scenario`, read where the app runs (`client`: by a ClientApp, which refuses what it
    cannot resolve)."""
    import base64

    encoded = str(run_config.get("scenario-b64", "") or "")
    if encoded:
        return scenario_from_canonical(base64.b64decode(encoded).decode("utf-8"))
    return (client_scenario_file if client else load_scenario)(str(run_config["scenario"]))


def encode_for_run_config(scenario: Scenario) -> str:
    import base64

    return base64.b64encode(scenario.canonical().encode("utf-8")).decode("ascii")


def scenario_from_canonical(canonical: str) -> Scenario:
    """A scenario shipped as `Scenario.canonical()` text (to clients, caches): text a validated
    scenario wrote, so only its defense blocks come back as their validated models. Not the
    whole `plugin_problems`: that imports every attack and strategy (scipy, scikit-learn,
    matplotlib) and builds a probe model — ~1.3 s in each Ray worker's start, before its first fit."""
    scenario = Scenario.model_validate_json(canonical)
    refuse_missing(client_name_problems(scenario))
    # a defense this process cannot resolve is never dropped: the client would train without it
    refuse_missing(defense_block_problems(scenario))
    return scenario


def client_name_problems(scenario: Scenario) -> list[tuple[str, str]]:
    """Names of the plug-ins a client runs (dataset, partitioner, model family, defenses) that
    this process's packages do not offer (metadata only)."""
    from fedmia.plugins import CLIENT_GROUPS
    from fedmia.registry import UnknownNameError, offered

    return [(where_, str(UnknownNameError(kind, name, offered(group))))
            for where_, group, kind, name in named_plugins(scenario)
            if group in CLIENT_GROUPS and name not in offered(group)]


def refuse_missing(problems: list[tuple[str, str]]) -> None:
    """A client's refusal: PluginMissing naming every plug-in this process lacks."""
    if problems:
        raise PluginMissing(f"{where()} {MARK}: " + "; ".join(f"{key}: {what}" for key, what in problems))


def client_scenario_file(path: str | Path) -> Scenario:
    """A `flwr run` of a file, read by a client: a plug-in the file names that this process
    lacks is a refusal (the server resolved it), not a scenario error."""
    scenario = parse_schema(read_yaml(path), str(path))
    refuse_missing(client_name_problems(scenario))
    return validate(scenario, str(path))
