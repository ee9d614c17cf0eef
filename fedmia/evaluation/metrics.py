"""Membership-inference metrics.

Convention throughout: a *higher* score means "more likely a member". Attacks whose natural
statistic runs the other way (e.g. loss) negate it before calling into this module.

Non-finite scores: attacks can produce NaN (0/0 in a likelihood ratio) or ±inf (log of 0).
For ranking, NaN and -inf are treated as the least member-like value and +inf as the most
member-like: before the ROC computations they are replaced by (min finite score - 1) and
(max finite score + 1) respectively, which preserves the order of all finite scores. For
thresholding (``score >= threshold``) NaN counts as -inf, the same ranking.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "AttackMetrics",
    "membership_metrics",
    "roc_points",
    "false_positive_rate",
    "threshold_at_tpr",
]

# fp / n_negatives is a float division; without slack a point lying exactly on a requested FPR
# level (e.g. 1/100 vs 0.01) could be excluded by rounding.
_FPR_TOLERANCE = 1e-12


@dataclass
class AttackMetrics:
    auc: float
    tpr_at_fpr: dict[str, float]  # keys are str(fpr) for each requested level, e.g. "0.001"
    balanced_accuracy: float | None  # at the attack's own threshold; None if it gave none
    n_members: int
    n_nonmembers: int

    def to_dict(self) -> dict:
        return asdict(self)


def _as_scores(scores: Iterable[float]) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        arr = arr.ravel()
    return arr


def _finite_scores(scores: np.ndarray) -> np.ndarray:
    """Replace non-finite scores by finite stand-ins that keep the ranking (see module docstring)."""
    finite = np.isfinite(scores)
    if finite.all():
        return scores
    lo = scores[finite].min() - 1.0 if finite.any() else -1.0
    hi = scores[finite].max() + 1.0 if finite.any() else 1.0
    out = scores.copy()
    out[np.isnan(scores) | (scores == -np.inf)] = lo
    out[scores == np.inf] = hi
    return out


def _as_labels(is_member: Iterable, n: int) -> np.ndarray:
    labels = np.asarray(is_member).ravel()
    if labels.shape[0] != n:
        raise ValueError(f"scores and is_member differ in length: {n} vs {labels.shape[0]}")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("is_member must contain only booleans or 0/1")
        labels = labels.astype(bool)
    return labels


def _validated(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    """Scores (raw, float64) and boolean labels, checked to contain both classes."""
    s = _as_scores(scores)
    y = _as_labels(is_member, s.shape[0])
    n_members = int(y.sum())
    if n_members == 0 or n_members == y.shape[0]:
        raise ValueError(
            f"membership metrics need members and non-members; got {n_members} members "
            f"and {y.shape[0] - n_members} non-members"
        )
    return s, y


def _predict_member(scores: np.ndarray, threshold: float) -> np.ndarray:
    # NaN >= t is False already; mapping NaN to -inf only matters for threshold == -inf,
    # where "everything is a member" should include NaN too.
    return np.where(np.isnan(scores), -np.inf, scores) >= threshold


def roc_points(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve as (fpr, tpr), starting at (0, 0) and keeping every threshold.

    ``drop_intermediate=False`` because a dropped collinear point can be exactly the best point
    below a requested FPR level.
    """
    s, y = _validated(scores, is_member)
    fpr, tpr, _ = roc_curve(y, _finite_scores(s), drop_intermediate=False)
    return fpr, tpr


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    ok = fpr <= level + _FPR_TOLERANCE
    return float(tpr[ok].max()) if ok.any() else 0.0


def membership_metrics(
    scores: np.ndarray,
    is_member: np.ndarray,
    *,
    fpr_levels: Iterable[float] = (0.001, 0.01),
    threshold: float | None = None,
) -> AttackMetrics:
    """AUC, TPR at fixed low FPRs and (optionally) balanced accuracy at ``threshold``.

    TPR at level f is the largest TPR among ROC points with FPR <= f. With fewer than 1/f
    non-members this means "TPR with zero false positives", not an estimate at f.
    """
    s, y = _validated(scores, is_member)
    clean = _finite_scores(s)
    auc = float(roc_auc_score(y, clean))
    fpr, tpr, _ = roc_curve(y, clean, drop_intermediate=False)
    tpr_at_fpr = {str(float(f)): _tpr_at(fpr, tpr, float(f)) for f in fpr_levels}

    balanced_accuracy = None
    if threshold is not None:
        if math.isnan(threshold):
            raise ValueError("threshold is NaN")
        predicted = _predict_member(s, threshold)
        tpr_t = float(predicted[y].mean())
        tnr_t = float((~predicted[~y]).mean())
        balanced_accuracy = (tpr_t + tnr_t) / 2.0

    n_members = int(y.sum())
    return AttackMetrics(
        auc=auc,
        tpr_at_fpr=tpr_at_fpr,
        balanced_accuracy=balanced_accuracy,
        n_members=n_members,
        n_nonmembers=int(y.shape[0] - n_members),
    )


def false_positive_rate(scores_nonmembers: np.ndarray, threshold: float) -> float:
    """Fraction of (known) non-members flagged as members, i.e. with score >= ``threshold``.

    Used for out-of-distribution sets: a calibrated threshold should not fire on inputs that
    were never near the training data.
    """
    s = _as_scores(scores_nonmembers)
    if s.size == 0:
        raise ValueError("no scores given")
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    return float(_predict_member(s, threshold).mean())


def threshold_at_tpr(scores: np.ndarray, is_member: np.ndarray, tpr: float) -> float:
    """The strictest threshold whose TPR on the members reaches ``tpr``.

    Lowering a threshold only raises TPR (and FPR), so this is the *largest* t with
    mean(member_scores >= t) >= tpr: the k-th highest member score, k = ceil(tpr * n_members).
    It is the threshold with the lowest FPR among those reaching ``tpr``. The result may be
    -inf if the needed member scores are -inf or NaN.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s, y = _validated(scores, is_member)
    members = np.where(np.isnan(s[y]), -np.inf, s[y])
    members = np.sort(members)[::-1]
    # Subtract a hair before ceil so that e.g. 0.95 * 100 = 95.00000000000001 asks for 95, not 96.
    k = max(1, math.ceil(tpr * members.size - 1e-9))
    return float(members[k - 1])
