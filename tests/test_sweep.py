"""`fedmia sweep`: points, errors naming the point, reuse of finished points, the outputs."""

from __future__ import annotations

import csv

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


def test_sweep_runs_points_and_reuses_finished_ones(tmp_path, write_scenario, stops_its_processes):
    path = _sweep(tmp_path, write_scenario, {"defenses.output": [None, {"mode": "argmax"}]},
                  labels=["none", "argmax"])
    rows = run_sweep(path, tmp_path / "out")
    assert [r["label"] for r in rows] == ["none", "argmax"]
    with open(tmp_path / "out" / "sweep.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 2 and "loss.auc" in table[0] and "dice" in table[0]
    assert (tmp_path / "out" / "privacy_utility.png").stat().st_size > 0
    # Same model, so same Dice; the API differs, so the loss attack's scores differ.
    assert rows[0]["dice"] == rows[1]["dice"]
    stamps = [(tmp_path / "out" / f"point-0{i}" / "metrics.json").stat().st_mtime_ns for i in (0, 1)]
    run_sweep(path, tmp_path / "out")  # everything is finished: nothing runs again
    assert stamps == [(tmp_path / "out" / f"point-0{i}" / "metrics.json").stat().st_mtime_ns for i in (0, 1)]
