"""The release gate's verdicts (`fedmia.audit.judge`) and the headline, from rows built by hand."""

from __future__ import annotations

import pytest

from dataclasses import replace

from fedmia import audit
from fedmia.evaluation.figures import Figure


def fig(mean, low, high):
    return Figure(mean, low, high, 3, (mean,) * 3, True, "95% t-interval across seeds")


def _row(threat_model="black-box", mean=0.7, low=0.6, high=0.8, applies=True, defense="scenario"):
    figs = audit.AttackFigures(targets=audit.Targets(100, 1000, []), auc=fig(mean, low, high),
                               tpr={"0.01": fig(0.2, 0.05, 0.35)})
    return audit.AuditRow(threat_model, defense, why_not=None if applies else "SecAgg+ is off",
                          attacks={"loss": figs} if applies else {}, strongest="loss" if applies else None)


@pytest.mark.parametrize("ceiling, on, status", [(0.9, "upper", "pass"), (0.75, "upper", "fail"), (0.75, "point", "pass"),
                                                 (0.7, "point", "pass"), (0.69, "point", "fail")])
def test_a_ceiling_judged_on_the_upper_end_or_on_the_point(ceiling, on, status):
    """The upper end of the interval by default (0.8 here), the mean with `--gate-on point` (0.7);
    a value equal to its ceiling passes."""
    (verdict,) = audit.judge([_row()], {"all": {"auc": ceiling}}, on, seeds=3)
    assert verdict.status == status and verdict.attack == "loss"
    assert verdict.value == (0.8 if on == "upper" else 0.7)


def test_a_threat_model_that_does_not_apply_is_not_judged():
    (verdict,) = audit.judge([_row(applies=False)], {"all": {"auc": 0.5}}, "upper", seeds=3)
    assert verdict.status == "not applicable" and verdict.why == "SecAgg+ is off"


def test_a_threat_models_own_ceiling_overrides_all_and_what_if_rows_are_not_gated():
    rows = [_row(), _row("trap-weights", mean=0.99, low=0.98, high=1.0), _row(defense="argmax", mean=0.99, high=1.0)]
    verdicts = audit.judge(rows, {"all": {"auc": 0.9}, "trap-weights": {"auc": 1.0}}, "upper", seeds=3)
    assert [(v.threat_model, v.status) for v in verdicts] == [("black-box", "pass"), ("trap-weights", "pass")]


def test_a_metric_no_attack_reported_is_said():
    (verdict,) = audit.judge([_row()], {"all": {"balanced_accuracy": 0.6}}, "upper", seeds=3)
    assert verdict.status == "no figure"


def test_the_headline_reads_the_lowest_fpr_level():
    kind, words = audit.headline(_row(), "0.01")
    assert kind == "leaks" and "identifies 20.0% of training patients" in words and "1 false accusation in 100" in words


def test_the_headline_uses_the_lowest_level_its_non_members_support_and_says_a_model_learnt_nothing():
    """With 12 non-members no TPR at 0.1% or 1% FPR is measurable (it once read "identifies 33% at 1
    false accusation in 1,000" on twelve non-members): the AUC is what it can say."""
    row = _row()

    def with_targets(**targets):
        row.attacks["loss"] = replace(row.attacks["loss"], targets=audit.Targets(100, 12, ["0.001", "0.01"], **targets))

    with_targets(low_n_levels=["0.001", "0.01"])
    kind, words = audit.headline(row, "0.001")
    assert kind == "unclear" and "12 non-members are too few to measure one" in words
    with_targets(low_n_levels=["0.001"])
    kind, words = audit.headline(row, "0.001")
    assert kind == "leaks" and "1 false accusation in 100" in words
    row.dice = fig(0.02, 0.0, 0.04)
    assert audit.headline(row, "0.001") == ("na", "the model learnt nothing (Dice 0.02): these figures do not "
                                                  "measure leakage")
