"""Tests for fedmia.io and fedmia.evaluation: metrics with hand-computed values, reports, plots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fedmia.evaluation import (
    AttackMetrics,
    false_positive_rate,
    membership_metrics,
    plot_roc,
    plot_utility,
    render_report,
    roc_points,
    summary_table,
    threshold_at_tpr,
)
from fedmia.evaluation.metrics import bootstrap_intervals, paired_difference
from fedmia.io import save_figure_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def labels(n_members: int, n_nonmembers: int) -> np.ndarray:
    return np.r_[np.ones(n_members, bool), np.zeros(n_nonmembers, bool)]


# --------------------------------------------------------------------------------------------
# metrics


def test_perfect_separation():
    scores = np.r_[np.linspace(10, 20, 50), np.linspace(0, 5, 50)]
    m = membership_metrics(scores, labels(50, 50), fpr_levels=(0.001, 0.01, 0.1))
    assert m.auc == 1.0
    assert m.tpr_at_fpr == {"0.001": 1.0, "0.01": 1.0, "0.1": 1.0}
    assert (m.n_members, m.n_nonmembers) == (50, 50)
    assert m.balanced_accuracy is None  # no threshold given


def test_reversed_scores_give_auc_zero():
    scores = np.r_[np.linspace(0, 5, 30), np.linspace(10, 20, 40)]
    m = membership_metrics(scores, labels(30, 40))
    assert m.auc == 0.0
    assert m.tpr_at_fpr == {"0.001": 0.0, "0.01": 0.0}


def test_random_scores_are_near_chance():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=2000)
    is_member = rng.permutation(labels(1000, 1000))
    m = membership_metrics(scores, is_member)
    assert abs(m.auc - 0.5) < 0.05
    assert m.tpr_at_fpr["0.01"] < 0.05


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """100 non-members scored 0..99 and 10 members with known ranks.

    Three members beat every non-member (TPR 0.3 at zero false positives); two more sit
    between the 2nd-highest (98) and the highest (99) non-member, so allowing exactly one
    false positive reaches TPR 0.5 — an FPR of 1%, which counts only at a level above 1%
    (FPR strictly below the level, the LiRA paper's convention).
    """
    members = np.array([102.0, 101.0, 100.5, 98.7, 98.5, 70.0, 60.0, 30.0, 20.0, 10.0])
    nonmembers = np.arange(100, dtype=float)
    return np.r_[members, nonmembers], labels(10, 100)


def test_tpr_at_low_fpr_known_exactly():
    scores, is_member = hand_case()
    m = membership_metrics(scores, is_member, fpr_levels=(0.001, 0.01, 0.02, 0.03))
    assert m.tpr_at_fpr["0.001"] == pytest.approx(0.3)
    assert m.tpr_at_fpr["0.01"] == pytest.approx(0.3)  # FPR < 1% of 100: no false positive allowed
    assert m.tpr_at_fpr["0.02"] == pytest.approx(0.5)  # one false positive (99): 98.5 and 98.7 join
    # Two false positives (98, 99) admit nothing more: the next member is at 70.
    assert m.tpr_at_fpr["0.03"] == pytest.approx(0.5)
    assert m.false_positives_allowed == {"0.001": 0, "0.01": 0, "0.02": 1, "0.03": 2}
    assert m.low_n_levels == ["0.001", "0.01", "0.02", "0.03"]  # 100 < 10/f for every level


def test_tpr_matches_the_lira_reference_convention():
    """TPR at f = tpr[where(fpr < f)[-1]] on sklearn's ROC, as the LiRA paper's code reads it."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(3)
    for n0 in (100, 250, 1000):
        scores = np.r_[rng.normal(1, 1, 150), rng.normal(0, 1, n0)]
        is_member = labels(150, n0)
        fpr, tpr, _ = roc_curve(is_member, scores)
        m = membership_metrics(scores, is_member, fpr_levels=(0.001, 0.01, 0.05))
        for level in (0.001, 0.01, 0.05):
            assert m.tpr_at_fpr[str(level)] == pytest.approx(tpr[np.where(fpr < level)[0][-1]])


def test_bootstrap_intervals_cover_and_shrink():
    """The 95% interval contains the point estimate, is seeded, and narrows with more targets;
    over repeated draws of data it covers the true AUC about 95% of the time."""
    from scipy.stats import norm as gaussian

    rng = np.random.default_rng(0)
    true_auc = gaussian.cdf(0.5 / np.sqrt(2))
    small = np.r_[rng.normal(0.5, 1, 100), rng.normal(0, 1, 100)]
    m = membership_metrics(small, labels(100, 100), intervals=True)
    assert m.ci["auc"][0] <= m.auc <= m.ci["auc"][1]
    assert m.ci == membership_metrics(small, labels(100, 100), intervals=True).ci  # seeded
    big = np.r_[rng.normal(0.5, 1, 1000), rng.normal(0, 1, 1000)]
    wide = m.ci["auc"][1] - m.ci["auc"][0]
    narrow = np.diff(membership_metrics(big, labels(1000, 1000), intervals=True).ci["auc"])[0]
    assert narrow < wide / 2
    covered = 0
    for trial in range(40):
        r = np.random.default_rng(100 + trial)
        s = np.r_[r.normal(0.5, 1, 150), r.normal(0, 1, 150)]
        lo, hi = bootstrap_intervals(s, labels(150, 150), draws=400, seed=trial)["auc"]
        covered += lo <= true_auc <= hi
    assert covered >= 33  # ~95% of 40; a broken interval (e.g. unstratified ties) falls far below


def test_paired_difference_detects_a_real_gap_and_not_noise():
    rng = np.random.default_rng(2)
    y = labels(300, 300)
    base = np.r_[rng.normal(0.3, 1, 300), rng.normal(0, 1, 300)]
    better = base + np.r_[np.full(300, 0.8), np.zeros(300)]
    assert paired_difference(better, base, y)["auc"]["significant"]
    jitter = base + rng.normal(0, 0.01, 600)
    assert not paired_difference(jitter, base, y)["auc"]["significant"]


def test_balanced_accuracy_by_hand():
    scores, is_member = hand_case()
    # Threshold 50 (inclusive): members >= 50 are 7 of 10 -> TPR 0.7;
    # non-members 50..99 (50 of 100) are flagged -> TNR 0.5; balanced accuracy 0.6.
    m = membership_metrics(scores, is_member, threshold=50.0)
    assert m.balanced_accuracy == pytest.approx(0.6)
    assert m.tpr_at_threshold == pytest.approx(0.7)  # the members' recall at that threshold
    # Just above 50 the non-member at exactly 50 is no longer flagged: TNR 0.51.
    m = membership_metrics(scores, is_member, threshold=50.5)
    assert m.balanced_accuracy == pytest.approx((0.7 + 0.51) / 2)


def test_auc_matches_pairwise_definition():
    scores, is_member = hand_case()
    pos, neg = scores[is_member], scores[~is_member]
    pairwise = np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :])
    assert membership_metrics(scores, is_member).auc == pytest.approx(pairwise)


def test_non_finite_scores_rank_lowest_or_highest():
    # +inf ranks above every finite score; NaN and -inf below. Separation stays perfect.
    scores = np.array([np.inf, 5.0, 3.0, np.nan, -np.inf, 1.0, 2.0])
    is_member = np.array([1, 1, 1, 0, 0, 0, 0])
    m = membership_metrics(scores, is_member, threshold=3.0)
    assert m.auc == 1.0
    assert m.balanced_accuracy == 1.0
    fpr, tpr = roc_points(scores, is_member)
    assert np.isfinite(fpr).all() and np.isfinite(tpr).all()

    # A member with a NaN score counts as the least member-like sample.
    m = membership_metrics(np.array([np.nan, 0.0]), np.array([True, False]))
    assert m.auc == 0.0


def test_all_non_finite_scores_are_a_tie():
    m = membership_metrics(np.array([np.nan, -np.inf, np.nan, -np.inf]), np.array([1, 1, 0, 0]))
    assert m.auc == 0.5


def test_single_class_raises():
    with pytest.raises(ValueError, match="members and non-members"):
        membership_metrics(np.arange(5.0), np.ones(5, bool))
    with pytest.raises(ValueError):
        roc_points(np.arange(5.0), np.zeros(5, bool))


def test_mismatched_lengths_and_bad_labels_raise():
    with pytest.raises(ValueError, match="length"):
        membership_metrics(np.arange(5.0), labels(2, 2))
    with pytest.raises(ValueError, match="0/1"):
        membership_metrics(np.arange(3.0), np.array([0, 1, 2]))


def test_roc_points_span_zero_to_one():
    scores, is_member = hand_case()
    fpr, tpr = roc_points(scores, is_member)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_false_positive_rate():
    assert false_positive_rate(np.array([1.0, 2.0, 3.0, 4.0, np.nan]), 3.0) == pytest.approx(0.4)
    assert false_positive_rate(np.array([1.0, 2.0]), 10.0) == 0.0
    with pytest.raises(ValueError):
        false_positive_rate(np.array([]), 0.0)


def test_threshold_at_tpr():
    member_scores = np.arange(1.0, 11.0)  # 1..10
    scores = np.r_[member_scores, np.zeros(5)]
    is_member = labels(10, 5)
    assert threshold_at_tpr(scores, is_member, 0.5) == 6.0  # 6..10 are half the members
    assert threshold_at_tpr(scores, is_member, 0.55) == 5.0  # 5.5 members -> need 6
    assert threshold_at_tpr(scores, is_member, 1.0) == 1.0

    # 0.95 * 100 is 95.00000000000001 in floating point; must still ask for 95 members.
    scores = np.r_[np.arange(100.0), np.zeros(3)]
    t = threshold_at_tpr(scores, labels(100, 3), 0.95)
    assert t == 5.0
    assert np.mean(np.arange(100.0) >= t) == pytest.approx(0.95)
    with pytest.raises(ValueError):
        threshold_at_tpr(scores, labels(100, 3), 0.0)


def test_threshold_at_tpr_round_trips_through_metrics():
    scores, is_member = hand_case()
    t = threshold_at_tpr(scores, is_member, 0.5)
    assert t == 98.5
    m = membership_metrics(scores, is_member, threshold=t)
    # TPR 0.5, one false positive (99) of 100 -> TNR 0.99.
    assert m.balanced_accuracy == pytest.approx((0.5 + 0.99) / 2)


def test_attack_metrics_to_dict_is_json_ready():
    m = membership_metrics(*hand_case(), threshold=50.0, intervals=True)
    d = m.to_dict()
    assert set(d) == {"auc", "tpr_at_fpr", "balanced_accuracy", "n_members", "n_nonmembers",
                      "false_positives_allowed", "low_n_levels", "ci", "tpr_at_threshold"}
    assert set(d["ci"]["tpr_at_fpr"]) == set(d["tpr_at_fpr"]) and d["ci"]["level"] == 0.95
    assert json.loads(json.dumps(d)) == d
    assert isinstance(m, AttackMetrics)


# --------------------------------------------------------------------------------------------
# atomic writes


def test_json_round_trips_numpy_and_leaves_no_temp_files(tmp_path: Path):
    path = tmp_path / "out" / "metrics.json"  # parent is created on demand
    obj = {
        "f32": np.float32(0.25),
        "f64": np.float64(1.5),
        "i64": np.int64(7),
        "flag": np.bool_(True),
        "arr": np.array([[1, 2], [3, 4]]),
        "nan": float("nan"),
        "nan_arr": np.array([1.0, np.nan, np.inf]),
        np.int64(3): "numpy key",
        "path": Path("a/b.png"),
    }
    write_json_atomic(path, obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "f32": 0.25,
        "f64": 1.5,
        "i64": 7,
        "flag": True,
        "arr": [[1, 2], [3, 4]],
        "nan": None,
        "nan_arr": [1.0, None, None],
        "3": "numpy key",
        "path": "a/b.png",
    }
    assert list(text.splitlines())[1].startswith("  ")  # indent=2
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_text_and_bytes_overwrite(tmp_path: Path):
    path = tmp_path / "a.txt"
    write_text_atomic(path, "first")
    write_text_atomic(path, "second ✓")
    assert path.read_text(encoding="utf-8") == "second ✓"
    write_bytes_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path: Path):
    path = tmp_path / "fig.png"
    write_bytes_atomic(path, b"old")

    class BrokenFigure:
        def savefig(self, fname, **kwargs):
            Path(fname).write_bytes(b"half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_figure_atomic(BrokenFigure(), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]

    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


# --------------------------------------------------------------------------------------------
# plots


def test_plot_roc_writes_png(tmp_path: Path):
    scores, is_member = hand_case()
    rng = np.random.default_rng(1)
    curves = {
        "loss": (scores, is_member),
        "random": (rng.normal(size=200), labels(100, 100)),
    }
    for loglog in (True, False):
        path = tmp_path / f"roc_{loglog}.png"
        plot_roc(curves, path, title="ROC", loglog=loglog)
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roc_False.png", "roc_True.png"]


def test_plot_utility_writes_png(tmp_path: Path):
    path = tmp_path / "utility.png"
    plot_utility([{"round": r, "dice": 0.1 * r, "miou": 0.08 * r} for r in range(1, 6)], path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    plot_utility([], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


# --------------------------------------------------------------------------------------------
# report


def example_metrics() -> dict:
    return {
        "scenario": "quickstart",
        "description": "Four clients on synthetic shapes",
        "timing": {"wall_s": 12.3456, "simulation_s": 10.0, "attacks_s": 2.0},
        "utility": {
            "dice": 0.5,
            "miou": 0.4,
            "rounds": [{"round": 1, "dice": 0.1234, "miou": 0.1}, {"round": 2, "dice": 0.5, "miou": 0.4}],
        },
        "attacks": {
            "loss": {"auc": 0.7, "tpr_at_fpr": {"0.001": 0.0, "0.01": 0.05}, "balanced_accuracy": 0.6,
                     "n_members": 50, "n_nonmembers": 50},
            "lira_offline": {"auc": 0.81234, "tpr_at_fpr": {"0.001": 0.02, "0.01": 0.125},
                             "balanced_accuracy": None, "n_members": 50, "n_nonmembers": 50},
        },
        "setup": {"dataset": "shapes", "clients": 4, "rounds": 5, "model": "Unet/resnet18",
                  "server": "fedavg", "defenses": "none"},
        "privacy": {"epsilon": 8.0, "delta": 1e-5},
        "ood": {"loss": {"fpr": 0.25, "threshold": 1.5}, "lira_offline": {"fpr": 0.5}},
        "notes": ["cannot render a list"],
    }


def test_report_contains_attacks_numbers_and_sections():
    md = render_report(example_metrics(), roc_png="roc.png", utility_png="/abs/run/utility.png")
    assert md.startswith("# ") and "quickstart" in md.splitlines()[0]
    assert "dataset **shapes**, 4 clients, 5 federated rounds" in md.lower()
    assert "Four clients on synthetic shapes." in md
    assert "Wall time 12.346 s" in md
    # Attack table: one row per attack with 3-decimal numbers, columns in order of FPR level.
    assert "| Attack | AUC | TPR@0.1% FPR | TPR@1% FPR | Balanced accuracy | Members / non-members |" in md
    assert "| loss | 0.700 | 0.000 | 0.050 | 0.600 | 50 / 50 |" in md
    assert "| lira_offline | 0.812 | 0.020 | 0.125 | n/a | 50 / 50 |" in md
    # Utility: final numbers and per-round table.
    assert "Dice **0.500**, mIoU **0.400**" in md
    assert "| 1 | 0.123 | 0.100 |" in md
    # Images linked by relative names.
    assert "![ROC curves](roc.png)" in md
    assert "(utility.png)" in md and "/abs/run" not in md
    # Generic sections for keys added later.
    assert "## Privacy" in md and "| epsilon | 8.000 |" in md and "1.000e-05" in md
    assert "## OOD" in md and "| loss | 0.250 | 1.500 |" in md and "| lira_offline | 0.500 | n/a |" in md
    assert "cannot render" not in md
    # Reading guide with the actual n and warnings for both levels (50 < 100 and 50 < 1000).
    assert "## How to read this" in md
    assert "used 50 non-members" in md
    assert "TPR@0.1% FPR needs at least 1000 non-members" in md
    assert "TPR@1% FPR needs at least 100 non-members" in md


def test_report_without_warning_when_enough_nonmembers():
    metrics = example_metrics()
    for m in metrics["attacks"].values():
        m["n_nonmembers"] = 1000
    md = render_report(metrics, roc_png=None, utility_png=None)
    assert "Warning" not in md
    assert "used 1000 non-members" in md
    assert "![" not in md


def test_report_tolerates_minimal_metrics():
    md = render_report({"scenario": "empty"}, roc_png=None, utility_png=None)
    assert "No attacks were run." in md and "No utility was recorded." in md


def test_summary_table():
    table = summary_table(example_metrics())
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(table)
    text = console.export_text()
    assert [c.header for c in table.columns] == ["Attack", "AUC", "TPR@1%", "TPR@0.1%", "Bal. acc"]
    assert "loss" in text and "lira_offline" in text
    assert "0.70" in text and "0.05" in text and "0.81" in text and "0.12" in text  # compact: two decimals
    assert "Dice 0.500" in text and "mIoU 0.400" in text
    assert table.row_count == 2


def test_the_summary_table_fits_an_80_column_terminal():
    """Every attack name whole and every figure with its interval on one line, at 80 columns."""
    from rich.console import Console

    from fedmia.evaluation import summary_table

    row = {"auc": 1.0, "tpr_at_fpr": {"0.001": 0.25, "0.01": 0.25}, "balanced_accuracy": 0.542,
           "low_n_levels": ["0.001", "0.01"], "false_positives_allowed": {"0.001": 0, "0.01": 9},
           "ci": {"auc": [0.95, 1.0], "tpr_at_fpr": {"0.001": [0.08, 0.58], "0.01": [0.08, 0.58]},
                  "balanced_accuracy": [0.5, 0.62]}}
    names = ["loss", "entropy", "confidence", "modified-entropy", "update-loss-drop"]
    metrics = {"scenario": "quickstart", "utility": {"dice": 0.709, "miou": 0.755}, "attacks": {n: row for n in names}}
    console = Console(width=80, record=True)
    console.print(summary_table(metrics))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    for name in names:
        assert sum(line.startswith(name + " ") for line in lines) == 1
        assert any(line.startswith(name) and "1.00 .95–1.00" in line and line.endswith("0.54 .50–.62")
                   for line in lines)


