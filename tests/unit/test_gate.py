"""The release gate's file, checked at load: no training, no Ray."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO, TINY
from fedmia import audit
from fedmia.scenario import ScenarioError
from fedmia.validation import parse_scenario


@pytest.fixture(scope="module")
def scenario():
    return parse_scenario(TINY, "tiny")


@pytest.mark.parametrize("text, key", [("all: {auc: 60}\n", "all.auc"),
                                       ("black-box: {tpr_at_fpr.0.01: 1.5}\n", "black-box.tpr_at_fpr.0.01"),
                                       ("all: {balanced_accuracy: -0.1}\n", "all.balanced_accuracy")])
def test_a_ceiling_outside_what_its_metric_can_take_is_refused_naming_the_key(tmp_path, scenario, text, key):
    """`auc: 60` (meant: 0.60) was accepted and passed every release."""
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        audit.load_gate(path, scenario)
    line = " ".join(caught.value.lines())
    assert f"{path}: {key}: a ceiling is a fraction in [0, 1]" in line and "write 0.6 for 60%" in line


def test_ceilings_on_the_range_ends_load(tmp_path, scenario):
    path = tmp_path / "gate.yaml"
    path.write_text("all: {auc: 1.0, balanced_accuracy: 0}\ntrap-weights: {tpr_at_fpr.0.001: 0.01}\n")
    assert audit.load_gate(path, scenario) == {"all": {"auc": 1.0, "balanced_accuracy": 0.0},
                                               "trap-weights": {"tpr_at_fpr.0.001": 0.01}}


def test_the_docs_hold_the_gate_files_schema_and_it_refuses_what_load_gate_refuses():
    import jsonschema

    written = json.loads((REPO / "docs" / "gate.schema.json").read_text())
    assert written == audit.gate_json_schema(), (
        "docs/gate.schema.json differs from fedmia.audit.gate_json_schema(); regenerate it")
    jsonschema.validate(yaml.safe_load("all: {auc: 0.6}"), written)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load("all: {auc: 60}"), written)
