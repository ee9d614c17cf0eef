"""Scoring membership-inference attacks and presenting the results (metrics, plots, reports)."""

from fedmia.evaluation.metrics import (
    AttackMetrics,
    false_positive_rate,
    membership_metrics,
    roc_points,
    threshold_at_tpr,
)
from fedmia.evaluation.plots import plot_roc, plot_utility
from fedmia.evaluation.report import render_report, summary_table

__all__ = [
    "AttackMetrics",
    "false_positive_rate",
    "membership_metrics",
    "plot_roc",
    "plot_utility",
    "render_report",
    "roc_points",
    "summary_table",
    "threshold_at_tpr",
]
