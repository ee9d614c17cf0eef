"""The release gate's file: `THREAT-MODEL or all: {METRIC: CEILING}`, parsed and checked
against the scenario (ceilings are fractions; metrics and threat models exist)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, RootModel, ValidationError, WithJsonSchema

from fedmia.scenario import Scenario, ScenarioError, describe_pydantic_error, read_yaml


def _a_fraction(value: float) -> float:
    """Every gated metric (AUC, balanced accuracy, a TPR) lies in [0, 1]: `auc: 60` (meant: 0.60)
    would pass every release, so a ceiling outside that range is refused, not clipped."""
    if not 0.0 <= value <= 1.0:
        raise ValueError("a ceiling is a fraction in [0, 1], as every gated metric (AUC, balanced accuracy, "
                         "TPR) is: write 0.6 for 60%")
    return value


Ceiling = Annotated[float, AfterValidator(_a_fraction),
                    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1,
                                    "description": "the most the metric may reach (a fraction in [0, 1])"})]


class GateSpec(RootModel[dict[str, dict[str, Ceiling]]]):
    """`THREAT-MODEL or all: {METRIC: CEILING}`; metric names as in metrics.json's attack rows
    (`auc`, `balanced_accuracy`, `tpr_at_fpr.0.001`)."""


def gate_json_schema() -> dict:
    """The gate file's JSON Schema (docs/gate.schema.json, held to this by tests/test_docs.py)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **GateSpec.model_json_schema(),
            "title": "fedmia release gate",
            "description": "THREAT-MODEL or all: {METRIC: CEILING}. Metrics: auc, balanced_accuracy, "
                           "tpr_at_fpr.LEVEL (the scenario's evaluation.tpr_at_fpr levels)."}


def load_gate(path: Path, scenario: Scenario) -> dict[str, dict[str, float]]:
    """The gate's ceilings, or a ScenarioError naming FILE: key: what was expected."""
    from fedmia.threat_models import ATTACK_METRICS, THREAT_MODELS

    source = str(path)
    try:
        spec = GateSpec.model_validate(read_yaml(path))
    except ValidationError as error:
        raise ScenarioError(source, [describe_pydantic_error(e) for e in error.errors()]) from None
    levels = [str(f) for f in scenario.evaluation.tpr_at_fpr]
    metrics = [*ATTACK_METRICS, *(f"tpr_at_fpr.{level}" for level in levels)]
    known = ["all", *THREAT_MODELS.names()]
    problems = []
    for model, ceilings in spec.root.items():
        if model not in known:
            problems.append((model, f"unknown threat model; expected one of: {', '.join(known)}"))
        if not ceilings:
            problems.append((model, "expected at least one METRIC: CEILING"))
        for metric in ceilings:
            if metric not in metrics:
                problems.append((f"{model}.{metric}", f"unknown metric; expected one of: {', '.join(metrics)} "
                                 f"(the TPR levels are the scenario's evaluation.tpr_at_fpr)"))
    if not spec.root:
        problems.append(("(top level)", "expected THREAT-MODEL or all: {METRIC: CEILING}"))
    if problems:
        raise ScenarioError(source, problems)
    return spec.root
