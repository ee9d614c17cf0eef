"""Empirical lower bound on ε from one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

The run carried m gradient canaries, each inserted into the audited client's training with a
fair coin (`fedmia/defenses/canaries.py`). The auditor scores every canary from what it observes —
the audited client's update when the server sees it, else the released aggregate — as the
movement of the canary's coordinate against its gradient, summed over rounds (under central DP
only the released models count: that is what central DP protects). It guesses
"inserted" for the k₊ highest scores and "absent" for the k₋ lowest (k₊ = k₋ = m/4, fixed in
advance) and abstains on the rest. If training is (ε, δ)-DP, the number of correct guesses v
out of r satisfies (their Theorem 5.2 / Corollary 5.4)

    P[W ≥ v] ≤ f_ε(v) + 2mδ · max_{i=1..v} (f_ε(v−i) − f_ε(v)) / i,   f_ε(v) = P[Bin(r, e^ε/(1+e^ε)) ≥ v],

so every ε whose bound falls below β is rejected: ε_lower = sup{ε : p(ε) < β}. A lower bound
above the accountant's ε (at the same δ) means the noise or the accounting is wrong.

Where the test has power: the 2mδ term swamps it when δ is near 1/(2m) (at the accountant's
default δ = 1/(10 n) and a thousand canaries it does), while the accountant's ε grows only slowly
as δ shrinks. So the test runs at the accountant's δ and at 10⁻², 10⁻⁴ and 10⁻⁶ of it (fixed in
advance), each at β = 0.05 / 4 (Bonferroni: all four bounds hold together with 95% confidence),
and reports the δ where the bound comes closest to the accountant's ε there, and the gap: the
audit rules out an accounting error larger than that factor.
Written here rather than imported: no maintained package we depend on implements the (ε, δ)
one-run test.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import binom

GUESS_FRACTION = 0.25  # k₊ = k₋ = m/4: fixed before any score is seen
DELTA_SCALES = (1.0, 1e-2, 1e-4, 1e-6)  # δ tested: the accountant's, and these fractions of it
CONFIDENCE = 0.95


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    q = math.exp(epsilon) / (1 + math.exp(epsilon)) if epsilon < 700 else 1.0
    tail = binom.sf(np.arange(v, -1, -1) - 1, r, q)  # f(v), f(v−1), …, f(0)
    f_v = tail[0]
    if v == 0:
        return 1.0
    slack = max((tail[i] - f_v) / i for i in range(1, v + 1))
    return float(min(1.0, f_v + 2 * m * delta * slack))


def one_run_epsilon_lower(m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    """sup{ε ≥ 0 : p(ε) < β}, by doubling then bisection (the conservative end)."""
    if one_run_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    high = 1.0
    while one_run_p_value(m, r, v, high, delta) < beta and high < 64:
        high *= 2
    low = 0.0
    for _ in range(50):
        mid = (low + high) / 2
        if one_run_p_value(m, r, v, mid, delta) < beta:
            low = mid
        else:
            high = mid
    return low


def guesses(scores: np.ndarray, inserted: np.ndarray) -> tuple[int, int]:
    """(r, v): guesses made and guesses right, at k₊ = k₋ = floor(m · GUESS_FRACTION)."""
    k = max(1, int(len(scores) * GUESS_FRACTION))
    order = np.argsort(scores, kind="stable")
    right = int(inserted[order[-k:]].sum()) + int((~inserted[order[:k]]).sum())
    return 2 * k, right


def canary_scores(transcript, trainable_positions: list[int], coordinates: np.ndarray, partition: int,
                  replies: bool = True) -> tuple[np.ndarray, str]:
    """Per canary: minus the movement of its coordinate, summed over rounds, in the audited
    client's update if the server saw it (and `replies`: local DP protects what leaves the
    client), else in the released model (central DP protects only what is released)."""
    sizes = [transcript.initial[i].size for i in trainable_positions]
    offsets = np.cumsum([0, *sizes])
    block = np.searchsorted(offsets, coordinates, side="right") - 1
    local = coordinates - offsets[block]
    scores, source = np.zeros(len(coordinates)), "released aggregate"
    for view in transcript.rounds:
        if view.aggregate is None:
            continue
        reply = next((r for r in view.replies if r.metrics.get("partition-id") == partition), None)
        if replies and reply is not None and reply.weights is not None:
            before, after, source = view.sent[reply.node_id], reply.weights, "audited client's update"
        else:
            before, after = transcript.global_before(view.round), view.aggregate
        for b, i in enumerate(trainable_positions):
            here = block == b
            if here.any():
                moved = np.asarray(after[i], dtype=np.float64).ravel()[local[here]] - \
                    np.asarray(before[i], dtype=np.float64).ravel()[local[here]]
                scores[here] -= moved
    return scores, source


def epsilon_check(scores: np.ndarray, inserted: np.ndarray, delta: float, epsilon_at: Callable[[float], float],
                  source: str) -> dict:
    """The one-run test at each δ of `DELTA_SCALES` × `delta` (`epsilon_at(δ)`: the accountant's
    ε there); the headline figures are those at the δ where the bound is tightest against it."""
    r, v = guesses(scores, inserted)
    beta = (1 - CONFIDENCE) / len(DELTA_SCALES)
    tests = []
    for scale in DELTA_SCALES:
        d = delta * scale
        tests.append({"delta": d, "epsilon_lower": one_run_epsilon_lower(len(scores), r, v, d, beta),
                      "epsilon_accountant": float(epsilon_at(d))})

    def tightness(test: dict) -> float:
        accountant = test["epsilon_accountant"]
        return test["epsilon_lower"] / accountant if 0 < accountant < math.inf else 0.0

    best = max(tests, key=tightness)  # the first (the accountant's own δ) on ties, e.g. all zero
    gap = best["epsilon_accountant"] / best["epsilon_lower"] if best["epsilon_lower"] > 0 else math.inf
    return {"epsilon_lower": best["epsilon_lower"], "epsilon_accountant": best["epsilon_accountant"],
            "delta": best["delta"], "gap": gap, "confidence": CONFIDENCE, "canaries": int(len(scores)),
            "inserted": int(inserted.sum()), "guesses": r, "correct": v, "observed": source,
            "consistent": all(t["epsilon_lower"] <= t["epsilon_accountant"] for t in tests),
            "tests": tests,
            "method": (f"one-run audit (Steinke, Nasr & Jagielski 2023), gradient canaries, k+ = k- = m/4, "
                       f"at {len(DELTA_SCALES)} δ fixed in advance (Bonferroni, {CONFIDENCE:.0%} jointly)")}
