"""The run's budget for optimised fakes follows the run's own training cost."""

from __future__ import annotations

from pathlib import Path


def test_optimised_fakes_cost_about_what_the_run_trained():
    """Without `evaluation.ood_steps`, the fakes' steps follow the run's own training cost: the
    quickstart keeps its 40, a one-round run of 4 × 50 records (the 256² case that sat in its
    evaluation for over 13 minutes) gets 5; a value the user sets is kept."""
    from types import SimpleNamespace

    from fedmia.evaluation.ood import fake_steps
    from fedmia.validation import load_scenario, parse_scenario

    quickstart = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml")
    plan = SimpleNamespace(clients=[range(25)] * 4)
    assert fake_steps(quickstart, plan) == 40  # 4 × 25 records × 12 epochs × 5 rounds / 100 fakes
    raw = quickstart.resolved()
    raw["federation"].update(rounds=1, local_epochs=1)
    one_round = parse_scenario(raw, "one round")
    assert fake_steps(one_round, SimpleNamespace(clients=[range(50)] * 4)) == 5
    raw["evaluation"]["ood_steps"] = 12
    assert fake_steps(parse_scenario(raw, "set"), SimpleNamespace(clients=[range(50)] * 4)) == 12
