"""Accountants and the empirical check of ε, against closed forms and the paper's own values:
pure maths, no training."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp
from scipy.stats import norm

from fedmia.defenses.dp import noise_for_budget
from fedmia.defenses.dp_accounting import epsilon_spent


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Balle & Wang (2018): a mu-GDP Gaussian mechanism is (eps, delta)-DP exactly when
    delta = Phi(-eps/mu + mu/2) - e^eps * Phi(-eps/mu - mu/2). Solved for eps by bisection."""
    def delta_of(eps):
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


def test_rdp_accountant_against_the_gaussian_mechanism_in_closed_form():
    sigma, steps, delta = 2.0, 16, 1e-5
    orders = [2.0, 4.0, 8.0, 32.0]
    # Mironov (2017): the Gaussian mechanism has RDP alpha / (2 sigma^2) at order alpha; T steps add.
    np.testing.assert_allclose(compute_rdp(q=1.0, noise_multiplier=sigma, steps=steps, orders=orders),
                               [steps * a / (2 * sigma**2) for a in orders], rtol=1e-9)
    # T full-batch steps = one Gaussian mechanism with mu = sqrt(T)/sigma (a known exact epsilon);
    # RDP is an upper bound, and a tight one here.
    exact = exact_gaussian_epsilon(math.sqrt(steps) / sigma, delta)
    ours = epsilon_spent([(sigma, 1.0, steps)], delta)
    assert exact <= ours <= 1.25 * exact, (exact, ours)
    # composing per-round histories equals accounting all steps at once
    assert epsilon_spent([(sigma, 1.0, 6), (sigma, 1.0, 10)], delta) == pytest.approx(ours)
    assert epsilon_spent([(0.0, 0.5, 3)], delta) == math.inf


def test_noise_for_a_target_epsilon_spends_that_epsilon():
    q, steps, delta = 0.25, 120, 1e-3
    sigma = noise_for_budget(3.0, delta, q, steps)
    assert epsilon_spent([(sigma, q, steps)], delta) == pytest.approx(3.0, rel=0.02)


def test_the_empirical_bound_has_power_where_the_accountant_allows_it():
    """dp-local's audit as the issue found it: 100 canaries, all 50 guesses right, tested only at
    δ = 0.004, bounded ε below by 1.25. A thousand canaries (the default now) tested at four δ
    fixed in advance, Bonferroni-corrected, bound it by more than 3× that."""
    from fedmia.evaluation.epsilon_lower import epsilon_check, one_run_epsilon_lower

    assert one_run_epsilon_lower(100, 50, 50, 0.004) == pytest.approx(1.254, abs=1e-3)
    inserted = np.arange(1000) % 2 == 0
    perfect = np.where(inserted, 1.0, -1.0) + np.linspace(0, 0.1, 1000)  # every guess right
    result = epsilon_check(perfect, inserted, 0.004, lambda d: 15.0 + math.log(0.004 / d), "test")
    assert result["correct"] == result["guesses"] == 500
    assert result["epsilon_lower"] > 3 * 1.254 and result["delta"] < 0.004
    assert result["gap"] == pytest.approx(result["epsilon_accountant"] / result["epsilon_lower"])
    assert result["tests"][0]["epsilon_lower"] == 0.0  # at δ = 0.004, 2mδ = 8 swamps the test


def test_one_run_bound_matches_the_paper():
    """Steinke, Nasr & Jagielski (2023), Appendix D: m = r = 100, v = 75, δ = 0 gives ε ≥ 0.702;
    with every guess right the bound has the closed form −ln(β^(−1/r) − 1)."""
    from fedmia.evaluation.epsilon_lower import one_run_epsilon_lower

    assert one_run_epsilon_lower(100, 100, 75, 0.0) == pytest.approx(0.70221, abs=1e-4)
    assert one_run_epsilon_lower(16, 16, 16, 0.0) == pytest.approx(-math.log(0.05 ** (-1 / 16) - 1), abs=1e-6)
    assert one_run_epsilon_lower(100, 100, 50, 1e-5) == 0.0  # chance-level guessing proves nothing


def test_central_dp_accounting_on_hand_checked_cases():
    """Everyone sampled, one round: the replace-one Gaussian mechanism with multiplier σ/2 in closed
    form (Balle & Wang) bounds every accountant from below, PLD within 2%; sampling 2 of 4
    (without replacement) amplifies RDP; a round not released costs nothing."""
    from fedmia.evaluation.privacy import central_epsilons

    sigma, delta = 2.0, 1e-5
    everyone = central_epsilons(sigma, clients=4, sampled=4, rounds=1, delta=delta)
    exact = exact_gaussian_epsilon(1 / (sigma / 2), delta)
    assert all(eps >= exact - 1e-6 for eps in everyone.values()), (everyone, exact)
    assert everyone["dp_accounting_pld"] == pytest.approx(exact, rel=0.02)
    half = central_epsilons(sigma, clients=4, sampled=2, rounds=1, delta=delta)
    assert half["dp_accounting_rdp_wor"] < everyone["dp_accounting_rdp_wor"]
    assert half["opacus_rdp"] == everyone["opacus_rdp"]  # no amplification claimed there
    assert central_epsilons(sigma, 4, 2, 0, delta)["dp_accounting_pld"] == 0.0
