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
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "AttackMetrics",
    "membership_metrics",
    "roc_points",
    "false_positive_rate",
    "threshold_at_tpr",
    "bootstrap_intervals",
    "paired_difference",
    "roc_band",
    "false_positives_allowed",
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
    # per level: how many non-members may score above the threshold (FPR strictly below f)
    false_positives_allowed: dict[str, int] = field(default_factory=dict)
    # levels whose figure rests on fewer than 10 allowed false positives (n_nonmembers < 10/f)
    low_n_levels: list[str] = field(default_factory=list)
    ci: dict | None = None  # 95% intervals: {"auc": [lo, hi], "tpr_at_fpr": {...}, "method": ...}
    # members called "member" at the attack's own threshold (Hintersdorf et al.'s recall); None if no threshold
    tpr_at_threshold: float | None = None

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


def false_positives_allowed(level: float, n_nonmembers: int) -> int:
    """The most false positives a threshold may admit at FPR strictly below `level`: the
    largest k with k / n < level (the LiRA paper's convention, `fpr < level`)."""
    return max(0, math.ceil(level * n_nonmembers - _FPR_TOLERANCE) - 1)


def _tpr_below(members: np.ndarray, nonmembers_desc: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """TPR at the best threshold admitting at most `allowed` false positives (array of k's):
    members scoring strictly above the (k+1)-th highest non-member; every member if k >= n0."""
    members = np.sort(members)
    n0 = len(nonmembers_desc)
    cut = nonmembers_desc[np.minimum(allowed, n0 - 1)]
    above = len(members) - np.searchsorted(members, cut, side="right")
    return np.where(allowed >= n0, 1.0, above / len(members))


def _auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member > non-member) + ½ P(tie): the Mann-Whitney form of the ROC AUC."""
    ordered = np.sort(nonmembers)
    below = np.searchsorted(ordered, members, side="left")
    ties = np.searchsorted(ordered, members, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(members) * len(nonmembers)))


def bootstrap_intervals(scores, is_member, *, fpr_levels: Iterable[float] = (0.001, 0.01),
                        threshold: float | None = None, draws: int = 2000, level: float = 0.95,
                        seed: int = 0) -> dict:
    """Percentile intervals from a bootstrap over targets, stratified by membership (members and
    non-members resampled separately, so every draw keeps both counts), seeded."""
    s, y = _validated(scores, is_member)
    clean = _finite_scores(s)
    pos, neg = clean[y], clean[~y]
    levels = [float(f) for f in fpr_levels]
    allowed = np.array([false_positives_allowed(f, len(neg)) for f in levels])
    rng = np.random.default_rng(seed)
    aucs, tprs, bas = np.empty(draws), np.empty((draws, len(levels))), np.empty(draws)
    for b in range(draws):
        p = pos[rng.integers(0, len(pos), len(pos))]
        n = neg[rng.integers(0, len(neg), len(neg))]
        aucs[b] = _auc(p, n)
        tprs[b] = _tpr_below(p, np.sort(n)[::-1], allowed)
        if threshold is not None:
            bas[b] = ((p >= threshold).mean() + (n < threshold).mean()) / 2
    tail = (1 - level) / 2 * 100

    def interval(values):
        lo, hi = np.percentile(values, [tail, 100 - tail])
        return [float(lo), float(hi)]

    ci = {"auc": interval(aucs),
          "tpr_at_fpr": {str(f): interval(tprs[:, i]) for i, f in enumerate(levels)},
          "balanced_accuracy": interval(bas) if threshold is not None else None,
          "method": "stratified bootstrap over targets, percentile", "draws": draws, "level": level}
    return ci


def membership_metrics(
    scores: np.ndarray,
    is_member: np.ndarray,
    *,
    fpr_levels: Iterable[float] = (0.001, 0.01),
    threshold: float | None = None,
    intervals: bool = False,
    seed: int = 0,
) -> AttackMetrics:
    """AUC, TPR at fixed low FPRs and (optionally) balanced accuracy at ``threshold``.

    TPR at level f is the largest TPR among thresholds whose FPR is *strictly below* f (the LiRA
    paper's convention): with n non-members it allows ceil(f·n) − 1 false positives, so with
    fewer than 1/f non-members it is the TPR at zero false positives. With ``intervals``, 95%
    stratified-bootstrap intervals are attached (``ci``).
    """
    s, y = _validated(scores, is_member)
    clean = _finite_scores(s)
    pos, neg = clean[y], clean[~y]
    auc = float(roc_auc_score(y, clean))
    levels = [float(f) for f in fpr_levels]
    allowed = {str(f): false_positives_allowed(f, len(neg)) for f in levels}
    tprs = _tpr_below(pos, np.sort(neg)[::-1], np.array(list(allowed.values()), dtype=int))
    tpr_at_fpr = {key: float(t) for key, t in zip(allowed, tprs)}

    balanced_accuracy = tpr_t = None
    if threshold is not None:
        if math.isnan(threshold):
            raise ValueError("threshold is NaN")
        predicted = _predict_member(s, threshold)
        tpr_t = float(predicted[y].mean())
        tnr_t = float((~predicted[~y]).mean())
        balanced_accuracy = (tpr_t + tnr_t) / 2.0

    n_members = int(y.sum())
    n_nonmembers = int(y.shape[0] - n_members)
    return AttackMetrics(
        auc=auc,
        tpr_at_fpr=tpr_at_fpr,
        balanced_accuracy=balanced_accuracy,
        tpr_at_threshold=tpr_t,
        n_members=n_members,
        n_nonmembers=n_nonmembers,
        false_positives_allowed=allowed,
        low_n_levels=[str(f) for f in levels if n_nonmembers < 10 / f - 1e-9],
        ci=bootstrap_intervals(s, y, fpr_levels=levels, threshold=threshold, seed=seed) if intervals else None,
    )


def paired_difference(scores_a, scores_b, is_member, *, fpr_level: float = 0.01, draws: int = 2000,
                      level: float = 0.95, seed: int = 0) -> dict:
    """A − B on the same targets: AUC and TPR@fpr_level differences with a paired, stratified
    bootstrap (the same resampled targets score both attacks)."""
    a, y = _validated(scores_a, is_member)
    b, _ = _validated(scores_b, is_member)
    a, b = _finite_scores(a), _finite_scores(b)
    members, nonmembers = np.flatnonzero(y), np.flatnonzero(~y)
    allowed = np.array([false_positives_allowed(fpr_level, len(nonmembers))])
    rng = np.random.default_rng(seed)
    d_auc, d_tpr = np.empty(draws), np.empty(draws)
    for i in range(draws):
        p = members[rng.integers(0, len(members), len(members))]
        n = nonmembers[rng.integers(0, len(nonmembers), len(nonmembers))]
        d_auc[i] = _auc(a[p], a[n]) - _auc(b[p], b[n])
        d_tpr[i] = (_tpr_below(a[p], np.sort(a[n])[::-1], allowed) - _tpr_below(b[p], np.sort(b[n])[::-1], allowed))[0]
    tail = (1 - level) / 2 * 100
    out = {}
    for name, values, point in (("auc", d_auc, _auc(a[y], a[~y]) - _auc(b[y], b[~y])),
                                ("tpr", d_tpr, float((_tpr_below(a[y], np.sort(a[~y])[::-1], allowed)
                                                      - _tpr_below(b[y], np.sort(b[~y])[::-1], allowed))[0]))):
        lo, hi = np.percentile(values, [tail, 100 - tail])
        out[name] = {"difference": float(point), "ci": [float(lo), float(hi)], "significant": bool(lo > 0 or hi < 0)}
    out.update(method="paired stratified bootstrap", draws=draws, level=level, fpr_level=fpr_level)
    return out


def roc_band(scores, is_member, fpr_grid: np.ndarray, *, draws: int = 200, level: float = 0.95,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise bootstrap band of TPR (FPR strictly below each grid value), for ROC plots."""
    s, y = _validated(scores, is_member)
    clean = _finite_scores(s)
    pos, neg = clean[y], clean[~y]
    allowed = np.array([false_positives_allowed(f, len(neg)) for f in fpr_grid])
    rng = np.random.default_rng(seed)
    curves = np.stack([_tpr_below(pos[rng.integers(0, len(pos), len(pos))],
                                  np.sort(neg[rng.integers(0, len(neg), len(neg))])[::-1], allowed)
                       for _ in range(draws)])
    tail = (1 - level) / 2 * 100
    return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)


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
