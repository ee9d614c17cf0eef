"""`metrics.json`'s one schema: what a run writes and what `replicate`, `compare`, `evaluate`,
`audit` and the reports read.

A figure that every reader relies on is a required, typed field here: renaming it in the
evaluator fails the write (`finish_run` validates before writing) and every test that runs a
federation, instead of silently dropping a column from a table. Sections only some runs have
(privacy, source inference, isolation, OOD rates) are optional; extra keys are allowed so that
a plug-in can add its own figures. NaN is written as null, hence the optional floats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedmia.defenses.report import EpsilonCheck, Privacy  # noqa: F401  (metrics.json's `privacy`)
from fedmia.evaluation.figures import Value

Rate = float | None  # null where a figure is undefined (NaN on write)


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class AttackIntervals(Open):
    auc: list[Rate] = Field(description="95% interval of the AUC")
    tpr_at_fpr: dict[str, list[Rate]] = Field(description="95% interval of TPR at each FPR level")
    balanced_accuracy: list[Rate] | None = Field(None, description="95% interval of the balanced accuracy")
    level: float = Field(description="confidence level (0.95)")
    method: str = Field(description="how the intervals were computed")


class AttackMetrics(Open):
    auc: Rate = Field(description="ROC AUC over the targets")
    tpr_at_fpr: dict[str, Rate] = Field(description="TPR at FPR strictly below each level")
    balanced_accuracy: Rate = Field(None, description="at the adversary's own threshold, if it set one")
    tpr_at_threshold: Rate = Field(None, description="share of member targets called member at that threshold")
    n_members: int = Field(description="member targets scored")
    n_nonmembers: int = Field(description="non-member targets scored")
    false_positives_allowed: dict[str, int] = Field(default_factory=dict, description="per level")
    low_n_levels: list[str] = Field(default_factory=list, description="levels resting on < 10 false positives")
    ci: AttackIntervals | None = Field(None, description="95% intervals")
    chosen: dict[str, Any] | None = Field(None, description="settings the attack chose from the adversary's "
                                          "own models and records (never the ledger), e.g. RMIA's a")


class Utility(Open):
    dice: Rate = Field(description="held-out Dice of what is served")
    miou: Rate = Field(description="held-out mIoU of what is served")
    rounds: list[dict[str, Any]] = Field(description="per round: dice, miou, clients, failures, ...")


class SourceInference(Open):
    accuracy: Rate = Field(description="share of member targets whose owner was named")
    chance: float = Field(description="1 / clients")


class RunMetrics(Open):
    scenario: str = Field(description="the scenario's name")
    setup: dict[str, Any] = Field(description="what was run: data, clients, model, server, defenses")
    utility: Utility
    attacks: dict[str, AttackMetrics] = Field(description="membership figures per attack (empty: pending)")
    timing: dict[str, float] = Field(default_factory=dict, description="seconds: wall_s, simulation_s, ...")
    privacy: Privacy | None = None
    source_inference: SourceInference | None = None
    isolation: dict[str, Any] | None = None
    description: str = Field("", description="the scenario's free text")
    skipped_attacks: dict[str, str] = Field(default_factory=dict, description="attack → why it gave no figure")
    ood: dict[str, dict[str, Rate]] | None = Field(None, description="attack → OOD set → share called member "
                                                   "at the attack's own threshold")
    ood_at_tpr50: dict[str, dict[str, Rate]] | None = Field(None, description="the same at the threshold that "
                                                            "catches half the member targets")
    membership: str | None = Field(None, description="a multi-site run's pending ground truth, in words")

    def as_json(self) -> dict:
        """metrics.json's content: the keys the run set, NaN kept (written as null)."""
        return self.model_dump(mode="json", exclude_unset=True)


class MetricsError(ValueError):
    """A metrics.json that does not follow the schema (a usage problem: exit 2)."""

    exit_code = 2


def check_metrics(metrics: dict, where: str = "metrics.json") -> RunMetrics:
    try:
        return RunMetrics.model_validate(metrics)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise MetricsError(f"{where}: {key}: {first['msg']} (metrics.json's schema: fedmia/evaluation/schema.py)") from None


def read_metrics(path: Path) -> RunMetrics:
    """A run's metrics.json, checked against the schema; MetricsError names the file and key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise MetricsError(f"{path}: missing (not a finished run folder)") from None
    except (OSError, ValueError) as error:
        raise MetricsError(f"{path}: not readable JSON ({error})") from None
    return check_metrics(raw, str(path))


def figures(metrics: RunMetrics) -> dict[str, Value]:
    """Every replicable number of one run, labelled as replicate.json lists it, each declared a
    rate in [0, 1] or not here, where it is defined. Typed reads: a renamed field fails
    validation, not here. Labels are for tables; readers take the typed fields."""
    out: dict[str, Value] = {}
    for name, attack in metrics.attacks.items():
        out[f"attacks.{name}.auc"] = Value(attack.auc)
        for level, tpr in attack.tpr_at_fpr.items():
            out[f"attacks.{name}.tpr_at_fpr.{level}"] = Value(tpr)
        out[f"attacks.{name}.balanced_accuracy"] = Value(attack.balanced_accuracy)
        out[f"attacks.{name}.tpr_at_threshold"] = Value(attack.tpr_at_threshold)
    out["utility.dice"], out["utility.miou"] = Value(metrics.utility.dice), Value(metrics.utility.miou)
    if metrics.privacy is not None:
        out["privacy.epsilon"] = Value(metrics.privacy.epsilon, rate=False)
        check = metrics.privacy.audit
        if check is not None:  # the lower bound and the accountant's ε at the δ it was tested at
            out["privacy.audit.epsilon_lower"] = Value(check.epsilon_lower, rate=False)
            out["privacy.audit.epsilon_accountant"] = Value(check.epsilon_accountant, rate=False)
    if metrics.source_inference is not None:
        out["source_inference.accuracy"] = Value(metrics.source_inference.accuracy)
    if metrics.isolation is not None:
        out["isolation.cosine"] = Value(metrics.isolation.get("cosine"), rate=False)  # in [-1, 1]
        out["isolation.auc_isolated"] = Value(metrics.isolation.get("auc_isolated"))
    # NaN and ±inf are kept (replicate lists every seed's value, and averages the finite ones)
    return {k: v for k, v in out.items() if isinstance(v.value, (int, float)) and not isinstance(v.value, bool)}
