"""`fedmia sweep`: points, errors naming the point, reuse of finished points, the outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedmia.cli import app
from fedmia.scenario import ScenarioError
from fedmia.sweep import load_sweep, run_sweep


def _sweep(tmp_path, write_scenario, parameters, **extra):
    base = write_scenario({"federation": {"rounds": 1}}, name="base.yaml")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": base.name, "parameters": parameters, **extra}))
    return path


def test_points_and_errors(tmp_path, write_scenario):
    path = _sweep(tmp_path, write_scenario, {"federation.local_epochs": [1, 2], "seed": [0, 1, 2]})
    spec, points = load_sweep(path)
    assert len(points) == 6
    assert {p[1].federation.local_epochs for p in points} == {1, 2}
    assert points[5][1].name == "s-05"

    bad = _sweep(tmp_path, write_scenario, {"federation.local_epochs": [1, "many"]})
    with pytest.raises(ScenarioError) as caught:
        load_sweep(bad)
    assert "point 1" in str(caught.value) and "federation.local_epochs" in str(caught.value)

    too_many = _sweep(tmp_path, write_scenario, {"a": [1], "b": [2], "c": [3]})
    result = CliRunner().invoke(app, ["sweep", str(too_many)])
    assert result.exit_code == 2 and "expected one or two parameters" in result.stderr


def test_privacy_utility_plot_joins_only_ordered_points(tmp_path):
    """Categorical settings (none, argmax, crop…) are points with interval bars, not a zig-zag;
    an ordered parameter (σ) gets lines."""
    from fedmia.evaluation.schema import check_metrics
    from fedmia.sweep import SweepPoint, _ordered, plot_privacy_utility

    def row(label, value, dice, auc):
        metrics = check_metrics({"scenario": label, "setup": {}, "utility": {"dice": dice, "miou": dice, "rounds": []},
                                 "attacks": {"loss": {"auc": auc, "tpr_at_fpr": {"0.01": 0.1}, "n_members": 10,
                                                      "n_nonmembers": 100,
                                                      "ci": {"auc": [auc - 0.05, auc + 0.05], "level": 0.95,
                                                             "tpr_at_fpr": {"0.01": [0.05, 0.2]}, "method": "b"}}}})
        key = "defenses.dp.noise_multiplier" if isinstance(value, float) else "defenses"
        return SweepPoint(label, {key: value}, metrics, Path("x"))

    sigmas = [row(f"s{v}", v, 0.7 - v / 10, 0.9 - v / 5) for v in (0.5, 1.0, 2.0)]
    kinds = [row(k, value, 0.7, 0.8) for k, value in (("none", {}), ("argmax", {"output": 1}))]
    assert _ordered(sigmas) and not _ordered(kinds)
    for rows, name in ((sigmas, "ordered.png"), (kinds, "points.png")):
        plot_privacy_utility(rows, tmp_path / name, title="t")
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.slow  # a whole sweep run; `fedmia replicate`'s test covers reuse of finished runs
def test_sweep_runs_points_and_reuses_finished_ones(tmp_path, write_scenario, stops_its_processes):
    path = _sweep(tmp_path, write_scenario, {"defenses.output": [None, {"mode": "argmax"}]},
                  labels=["none", "argmax"])
    points = run_sweep(path, tmp_path / "out")
    assert [p.label for p in points] == ["none", "argmax"]
    with open(tmp_path / "out" / "sweep.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 2 and "loss.auc" in table[0] and "dice" in table[0]
    assert (tmp_path / "out" / "privacy_utility.png").stat().st_size > 0
    # Same model, so same Dice; the API differs, so the loss attack's scores differ.
    assert points[0].metrics.utility.dice == points[1].metrics.utility.dice
    stamps = [(tmp_path / "out" / f"point-0{i}" / "metrics.json").stat().st_mtime_ns for i in (0, 1)]
    run_sweep(path, tmp_path / "out")  # everything is finished: nothing runs again
    assert stamps == [(tmp_path / "out" / f"point-0{i}" / "metrics.json").stat().st_mtime_ns for i in (0, 1)]


# slow: tests/test_audit.py replicates (one seed) and reuses a finished run; the across-seed
# summary is tested on metrics without training (tests/test_run_folders.py)
@pytest.mark.slow
def test_replicate_runs_independent_seeds_and_summarises_them(tmp_path, write_scenario, stops_its_processes):
    """`fedmia replicate`: two federations with seeds 0 and 1 (different members and targets),
    a mean and t-interval per figure, and a rerun that reuses both."""
    import json

    from fedmia.replicate import run_replicate
    from fedmia.validation import load_scenario

    scenario = load_scenario(write_scenario({"federation": {"rounds": 1}, "evaluation": {"ood": []}}))
    result = run_replicate(scenario, 2, tmp_path / "rep")
    assert result.seeds == [0, 1] and [r.folder.name for r in result.runs] == ["seed-00", "seed-01"]
    targets = [json.loads((tmp_path / "rep" / f"seed-0{k}" / "ledger.json").read_text())["owner"] for k in (0, 1)]
    assert targets[0] != targets[1]  # independent draws, not the same federation twice
    auc = result.figures["attacks.loss.auc"]
    assert auc.n == 2 and auc.low <= auc.mean <= auc.high and auc.rate
    assert auc.mean == pytest.approx(sum(auc.values) / 2)
    assert "utility.dice" in result.figures
    with open(tmp_path / "rep" / "replicate.csv") as handle:
        assert any(row["figure"] == "attacks.loss.auc" for row in csv.DictReader(handle))
    assert (tmp_path / "rep" / "replicate_roc.png").stat().st_size > 0
    stamp = (tmp_path / "rep" / "seed-01" / "metrics.json").stat().st_mtime_ns
    run_replicate(scenario, 2, tmp_path / "rep")
    assert (tmp_path / "rep" / "seed-01" / "metrics.json").stat().st_mtime_ns == stamp


def test_a_sweep_of_a_multi_site_scenario_is_refused(tmp_path):
    """A multi-site run has membership figures only once the sites' manifests are joined."""
    from conftest import REPO

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": str(REPO / "scenarios" / "multi-site.yaml"),
                                     "parameters": {"federation.lr": [0.001, 0.003]}}))
    result = CliRunner().invoke(app, ["sweep", str(sweep)])
    assert result.exit_code == 2 and "fedmia evaluate --manifests" in result.stderr
