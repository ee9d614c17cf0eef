"""The architecture as a contract: layers without back-edges (import-linter), one plug-in point
per family (an example of each is one file of tests/example_plugins, a package of its own
registered by entry points), and defenses that compose or are
rejected by validation — every pair."""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, TINY, deep_update


def test_no_module_imports_one_above_it():
    """pyproject.toml's import-linter contract: the DESIGN.md data flow only goes down."""
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0


def test_every_module_is_short_enough_to_read_whole():
    """Modules of one idea each: none of fedmia/ or strategies/ over 500 lines (the audit, the CLI,
    the folder loader and the reference attacks were split when they grew past it)."""
    long = {str(p.relative_to(REPO)): n for p in [*(REPO / "fedmia").rglob("*.py"), *(REPO / "strategies").rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_no_import_circle_not_even_for_type_checking():
    """No module of fedmia/ or strategies/ reaches itself through its imports — module-level,
    function-level and `TYPE_CHECKING` ones alike (grimp, import-linter's graph). The plan's types
    once named their builders for type checking only (federation ↔ plan ↔ sites)."""
    import grimp

    graph = grimp.build_graph("fedmia", "strategies")
    circles = sorted((module, imported) for module in graph.modules
                     for imported in graph.find_modules_directly_imported_by(module)
                     if graph.chain_exists(importer=imported, imported=module))
    assert not circles, circles


@pytest.fixture(scope="module")
def plugins(example_plugins):
    """The example package's modules, as the registries import them when a scenario names them."""
    from fedmia.attacks import ATTACKS
    from fedmia.data.datasets import DATASETS
    from fedmia.defenses import DEFENSES
    import strategies

    for registry, name in ((ATTACKS, "example-median-pixel-loss"), (DATASETS, "example-squares"),
                           (DEFENSES, "example-flip"), (strategies.STRATEGIES, "example-scaled-broadcast")):
        assert name in registry.names() and registry.package(name) == ("fedmia-example-plugins", "0.3.0")
    from fedmia.data.ood import OOD_SETS
    from fedmia.data.partition import PARTITIONERS

    for registry, name in ((OOD_SETS, "example-inverted"), (PARTITIONERS, "example-round-robin")):
        assert name in registry.names() and registry.package(name) == ("fedmia-example-plugins", "0.3.0")
    return {name: importlib.import_module(f"fedmia_example.{name}") for name in ("attack", "strategy", "dataset", "defense")}


def test_a_new_attack_strategy_dataset_defense_partitioner_and_ood_set_are_one_file_each(plugins, tmp_path):
    from fedmia.data.plan import build_plan
    from fedmia.local import client_recipe, local_training
    from fedmia.models import get_weights, scenario_model
    from fedmia.pipeline import adversary_view, run_attacks
    from fedmia.server_app import make_strategy
    from fedmia.transcript import RoundView, Transcript
    from fedmia.validation import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(deep_update(TINY, {
        "data": {"dataset": "example-squares", "options": {}, "partition": {"kind": "example-round-robin"}},
        "server": {"strategy": "example-scaled-broadcast", "factor": 0.5},
        "defenses": {"example-flip": {"probability": 1.0}},
        "attacks": ["loss", "example-median-pixel-loss"]})))
    scenario = load_scenario(path)
    plan = build_plan(scenario)
    assert plan.info.name == "example-squares" and [len(c) for c in plan.clients] == [6, 6]  # round robin
    from fedmia.data.ood import make_ood_set

    inverted = make_ood_set("example-inverted", plan.heldout, plan.info, count=3, seed=0)
    assert list(inverted.ids) == ["ood-example-inverted:00000", "ood-example-inverted:00001", "ood-example-inverted:00002"]
    assert inverted.images.shape[1:] == plan.heldout.images.shape[1:] and inverted.images.min() >= 0
    strategy = make_strategy(scenario)
    assert type(strategy).name == "example-scaled-broadcast" and strategy.params.factor == 0.5
    model = scenario_model(scenario, plan.info, seed=0)
    initial = get_weights(model)
    before = plugins["defense"].HorizontalFlip.calls
    local_training(scenario, model, plan.clients[0], client_recipe(scenario, {}), seed=0,
                   device=torch.device("cpu"), partition=0)
    assert plugins["defense"].HorizontalFlip.calls > before  # the hook ran in the client's loop
    transcript = Transcript(list(model.state_dict()), initial)
    transcript.rounds.append(RoundView(1, aggregate=get_weights(model)))
    results = run_attacks(scenario, adversary_view(scenario, transcript))
    assert results["example-median-pixel-loss"].scores.shape == (len(plan.targets),)
    from fedmia.evaluation.run_metrics import describe_defenses

    assert describe_defenses(scenario) == "flip (p 1.0)"


# Minimal valid blocks: every registered defense, DP in both modes.
BLOCKS = {
    "secagg": True,
    "dp:local": {"mode": "local", "noise_multiplier": 1.0, "audit_canaries": 4},
    "dp:central": {"mode": "central", "noise_multiplier": 1.0, "audit_canaries": 4},
    "output": {"mode": "argmax"},
    "label_smoothing": 0.1,
    "laplace": {"prior_precision": 1.0},
    "crop": {"size": 8},
    "mixup": {"alpha": 0.4},
    "minmax": {"weight": 1.0},
    "distillation": {"temperature": 2.0},
    "receive-check": True,
    "thresholded-secagg": {"min_clients": 2},
}
PAIRS = list(itertools.combinations(BLOCKS, 2))
# The expected outcome of every pair, written out (DESIGN.md's table): these are refused, every
# other pair trains. A legal pair wrongly refused fails the test, and so does a refused one let in.
REFUSED = {frozenset(pair) for pair in [
    ("secagg", "dp:central"),  # central DP clips and noises the updates SecAgg+ hides from the server
    ("dp:local", "mixup"), ("dp:local", "minmax"), ("dp:local", "distillation"),  # not per-record
    ("distillation", "crop"), ("distillation", "mixup"), ("distillation", "minmax"),  # it replaces the loop
    # the simulated thresholded sum decides what the server's aggregation sees, as these two do
    ("thresholded-secagg", "secagg"), ("thresholded-secagg", "dp:central"),
]}


def test_every_registered_defense_has_a_block_here():
    from fedmia.defenses import DEFENSES

    shipped = {name for name in DEFENSES.names() if not name.startswith("example-")}
    assert shipped == {k.split(":")[0] for k in BLOCKS}


@pytest.mark.parametrize("first, second", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_each_pair_of_defenses_composes_or_is_rejected_by_name(first, second, tmp_path):
    """Pairs in REFUSED are rejected naming both keys; every other pair is accepted and runs a
    client's local training (the federated server side of SecAgg+ and central DP is exercised by
    tests/test_defenses.py)."""
    from fedmia.data.plan import build_plan
    from fedmia.local import client_recipe, local_training
    from fedmia.models import get_weights, scenario_model
    from fedmia.scenario import ScenarioError
    from fedmia.validation import load_scenario

    if {first, second} == {"dp:local", "dp:central"}:
        pytest.skip("one dp block per scenario")
    defenses = {k.split(":")[0]: BLOCKS[k] for k in (first, second)}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(deep_update(TINY, {
        "data": {"public": 4, "members": 12, "heldout": 12}, "federation": {"clients": 3},
        "defenses": defenses})))
    if frozenset((first, second)) in REFUSED:
        with pytest.raises(ScenarioError) as refused:
            load_scenario(path)
        keys = [k.split(":")[0] for k in (first, second)]
        assert all(f"defenses.{k}" in str(refused.value) for k in keys), str(refused.value)
        return
    scenario = load_scenario(path)  # a pair that composes must be accepted
    plan = build_plan(scenario)
    model = scenario_model(scenario, plan.info, seed=0)
    before = get_weights(model)
    recipe = client_recipe(scenario, {})
    stats = local_training(scenario, model, plan.clients[0], recipe, seed=0, device=torch.device("cpu"),
                           public=plan.public, partition=0)
    assert np.isfinite(stats["train-loss"])
    assert any(not np.array_equal(a, b) for a, b in zip(before, get_weights(model)))
