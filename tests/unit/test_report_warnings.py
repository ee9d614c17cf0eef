"""What a run's report and terminal table say before any figure: a model that learnt nothing."""

from __future__ import annotations

from fedmia.evaluation.report import learnt_nothing, render_report, summary_table


def _metrics(dice: float) -> dict:
    return {"scenario": "s", "utility": {"dice": dice, "miou": 0.5, "rounds": []},
            "attacks": {"loss": {"auc": 0.63, "tpr_at_fpr": {"0.1": 0.0}}}}


def test_a_model_that_learnt_nothing_is_said_first():
    """init's first scenario once trained a model with Dice 0.000 and reported AUC 0.63, TPR 0.00,
    which reads as "safe"."""
    warning = learnt_nothing(_metrics(0.0))
    assert warning.startswith("the model learnt nothing (Dice 0.00): the figures below do not measure leakage")
    report = render_report(_metrics(0.0), roc_png=None, utility_png=None)
    assert report.index("learnt nothing") < report.index("AUC") if "AUC" in report else "learnt nothing" in report
    assert "learnt nothing" in summary_table(_metrics(0.0)).title
    assert learnt_nothing(_metrics(0.7)) is None and "learnt nothing" not in render_report(_metrics(0.7), roc_png=None,
                                                                                           utility_png=None)
