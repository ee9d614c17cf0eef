"""One plug-in mechanism for every family: entry points (fedmia's own plug-ins included), names
from package metadata, modules imported only when named, every process resolving every plug-in
it runs — or the run stops, naming it."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time
from importlib.metadata import entry_points

import pytest

from conftest import REPO

# each family's group → the modules (packages: every module in them) where fedmia's own live
FAMILIES = {"fedmia.attacks": ["fedmia.attacks"], "fedmia.defenses": ["fedmia.defenses"],
            "fedmia.strategies": ["strategies"], "fedmia.datasets": ["fedmia.data"],
            "fedmia.partitioners": ["fedmia.data"], "fedmia.models": ["fedmia.models"],
            "fedmia.ood_sets": ["fedmia.data", "fedmia.evaluation"], "fedmia.threat_models": ["fedmia.threat_models"]}


def test_every_family_is_tested():
    from fedmia.registry import FAMILIES as DECLARED

    assert {f.group for f in DECLARED} == set(FAMILIES)


@pytest.mark.parametrize("group", list(FAMILIES))
def test_every_built_in_plug_in_is_an_entry_point_of_fedmia(group):
    """Import every module of the family's package: what registers itself there is exactly what
    fedmia's metadata offers in the group (nothing registered by an import line only)."""
    from fedmia.registry import _REGISTRIES

    from fedmia.registry import FAMILIES as DECLARED

    assert group in {f.group for f in DECLARED}
    for home in FAMILIES[group]:
        package = importlib.import_module(home)
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            importlib.import_module(f"{package.__name__}.{module.name}")
    registered = {name for name, entry in _REGISTRIES[group]._entries.items()
                  if getattr(entry, "cls", entry).__module__.startswith(("fedmia.", "strategies."))}
    ours = {point.name for point in entry_points(group=group) if point.dist.metadata["Name"] == "fedmia"}
    assert registered and registered == ours


def test_a_misspelt_plug_in_is_rejected_in_under_a_second_without_torch(write_scenario):
    path = write_scenario({"attacks": ["loss", "lossy"]})
    probe = ("import sys, time\nfrom fedmia.scenario import ScenarioError\nfrom fedmia.validation import load_scenario\n"
             "t = time.perf_counter()\ntry:\n    load_scenario(sys.argv[1])\nexcept ScenarioError as e:\n"
             "    print(e)\nprint(round(time.perf_counter() - t, 3), 'torch' in sys.modules, 'fedmia.attacks' in sys.modules)")
    # the child sees the plug-ins this process sees (a user's package on sys.path included)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60,
                            env=env)
    *message, timing = result.stdout.strip().splitlines()
    assert message == [f"{path}: attacks.1.name: unknown attack 'lossy'; expected one of: " + ", ".join(
        sorted({p.name for p in entry_points(group="fedmia.attacks")}))]
    seconds, torch_imported, attacks_imported = timing.split()
    assert float(seconds) < 1.0 and torch_imported == "False" and attacks_imported == "False"
    started = time.monotonic()  # and the command as a user types it, process start included
    cli = subprocess.run([sys.executable, "-m", "fedmia.cli", "validate", str(path)], capture_output=True, text=True,
                         env=env)
    assert cli.returncode == 2 and "unknown attack 'lossy'" in cli.stderr
    assert time.monotonic() - started < 5.0


def test_no_import_cycle_among_fedmias_and_strategies_modules_packages_included():
    import grimp

    graph = grimp.build_graph("fedmia", "strategies", exclude_type_checking_imports=True)  # type-only: no runtime cycle
    modules = sorted(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & set(modules) for m in modules}
    # explicit imports, a package's __init__ included (grimp names it by the package); the
    # implicit "a child's import runs its package's __init__ first" is Python's, not a cycle we wrote
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in modules:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_list_shows_each_plug_in_with_its_package(example_plugins):
    from typer.testing import CliRunner

    from fedmia.cli import app

    result = CliRunner().invoke(app, ["list"])  # in this process: the package is on its sys.path
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "example-median-pixel-loss (fedmia-example-plugins 0.3.0)" in text
    assert "trap-weights, update-gradient, update-loss-drop (fedmia 0.1.0)" in text
    assert "example-coarse-scores, example-flip (fedmia-example-plugins 0.3.0)" in text


EXAMPLE = {"data": {"dataset": "example-squares", "options": {}, "partition": {"kind": "example-round-robin"}},
           "evaluation": {"ood": ["heldout", "example-inverted"], "ood_count": 4},
           "server": {"strategy": "example-scaled-broadcast", "factor": 1.0},
           "defenses": {"example-flip": {"probability": 1.0}},
           "attacks": ["loss", "example-median-pixel-loss"]}


def test_a_users_own_package_runs_through_ray_and_a_worker_without_it_stops_the_run(
        example_plugins, write_scenario, tmp_path, stops_its_processes):
    """The example package's dataset, strategy, defense and attack in a real Ray simulation;
    then the same run with Ray's workers started without the package: the first client to build
    the scenario refuses, naming the defense and itself, and the server stops the run with it —
    no client trains without the defense, and the folder never reads as finished."""
    from fedmia.plugins import PluginMissing
    from fedmia.runfolder import state
    from fedmia.runner import run_scenario
    from fedmia.transcript import Transcript
    from fedmia.validation import load_scenario

    scenario = load_scenario(write_scenario(EXAMPLE))
    metrics = run_scenario(scenario, tmp_path / "with").as_json()
    assert metrics["setup"]["defenses"] == "flip (p 1.0)"
    assert set(metrics["attacks"]) == {"loss", "example-median-pixel-loss"}
    assert metrics["ood_sets"] == {"heldout": 4, "example-inverted": 4}
    assert Transcript.load(tmp_path / "with" / "transcript").rounds[0].notes.attacked == "example-scaled-broadcast"
    assert json.loads(Transcript.load(tmp_path / "with" / "transcript").rounds[0].config.popitem()[1]["plugins"]) == {
        "fedmia.datasets/example-squares": ["fedmia-example-plugins", "0.3.0"],
        "fedmia.models/smp": ["fedmia", "0.1.0"],
        "fedmia.defenses/example-flip": ["fedmia-example-plugins", "0.3.0"],
        "fedmia.partitioners/example-round-robin": ["fedmia-example-plugins", "0.3.0"]}

    import os

    # Ray's workers take their PYTHONPATH from sys.path and the environment (which the first run set)
    saved = os.environ.get("PYTHONPATH")
    sys.path.remove(str(example_plugins))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (saved or "").split(os.pathsep) if p != str(example_plugins))
    try:
        with pytest.raises(PluginMissing) as refused:
            run_scenario(scenario, tmp_path / "without")
    finally:
        sys.path.insert(0, str(example_plugins))
        os.environ.pop("PYTHONPATH") if saved is None else os.environ.update(PYTHONPATH=saved)
    message = str(refused.value)
    assert message.startswith("round 1: ") and "cannot resolve the plug-ins the scenario names" in message
    assert "unknown defense 'example-flip'" in message and "site/partition" in message
    assert state(tmp_path / "without") == "unfinished"


def test_no_module_outside_the_defenses_reads_a_named_defense_block():
    """The core names no plug-in: defenses act through their stage's hooks (query, recipe, norm,
    aggregation, accounting), so no module outside fedmia/defenses/ reads `.defenses.<key>`."""
    import re

    from fedmia.defenses import DEFENSES

    keys = "|".join(re.escape(k) for k in DEFENSES.names())
    pattern = re.compile(rf"\.defenses\.(?:{keys})\b|defenses\.root\[|\.defenses\.get\(")
    offenders = []
    for path in [*(REPO / "fedmia").rglob("*.py"), *(REPO / "strategies").rglob("*.py")]:
        if "defenses" in path.relative_to(REPO).parts[:2]:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if pattern.search(code) and not code.strip().startswith(('"', "'", "`")):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_a_name_two_packages_offer_is_refused_where_it_is_used_and_marked_in_list(write_scenario, tmp_path):
    """A second distribution registering `loss` in `fedmia.attacks` was imported instead of fedmia's
    own (2026-12-04): every audit naming `loss` would have reported another attack's figures. Now
    a scenario naming it is refused (exit 2, both packages named) and `fedmia list` marks it; a
    scenario not naming it is unaffected."""
    site = tmp_path / "site"
    (site / "rogue_attacks").mkdir(parents=True)
    (site / "rogue_attacks" / "__init__.py").write_text("raise RuntimeError('must never be imported')\n")
    info = site / "rogue_attacks-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rogue-attacks\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[fedmia.attacks]\nloss = rogue_attacks\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *(p for p in sys.path if p)])}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedmia.cli", *args], capture_output=True, text=True,
                              timeout=120, env=env, cwd=REPO)

    refused = cli("validate", str(write_scenario({"attacks": ["loss", "entropy"]})))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = " ".join(refused.stderr.split())
    assert "attack 'loss' is offered by 2 installed packages" in line
    assert "fedmia 0.1.0 (fedmia.attacks.threshold)" in line and "rogue-attacks 1.2 (rogue_attacks)" in line
    assert "must never be imported" not in refused.stderr and "Traceback" not in refused.stderr
    assert cli("validate", str(write_scenario({"attacks": ["entropy"]}, name="other.yaml"))).returncode == 0
    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    text = " ".join(listed.stdout.split())
    assert "loss (CONFLICT)" in text and "conflict: attacks 'loss' is offered by fedmia 0.1.0, rogue-attacks 1.2" in text

    # the same refusal where a plug-in is resolved by name in code (no validation in between)
    probe = ("from fedmia.attacks import ATTACKS\nfrom fedmia.registry import PluginConflict\n"
             "try:\n    ATTACKS.get('loss')\nexcept PluginConflict as e:\n    print('refused', e.exit_code)\n")
    resolved = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert resolved.stdout.strip() == "refused 2", resolved.stdout + resolved.stderr
