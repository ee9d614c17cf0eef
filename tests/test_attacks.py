"""Threshold attacks: real smp model, real training; they work and never touch the ledger."""

from __future__ import annotations

import numpy as np
import pytest

from fedmia.attacks import ATTACKS
from fedmia.data.plan import MembershipLedger, build_plan
from fedmia.evaluation import membership_metrics
from fedmia.models import build_model, get_weights
from fedmia.runner import adversary_view, run_attacks
from fedmia.scenario import load_scenario
from fedmia.training import TrainRecipe, pick_device, train_local
from fedmia.transcript import RoundView, Transcript


@pytest.fixture(scope="module")
def overfit_setup(tmp_path_factory):
    """One 'client' holding all members, trained to memorise them (no Flower needed here)."""
    import yaml
    from conftest import TINY, deep_update

    path = tmp_path_factory.mktemp("s") / "s.yaml"
    path.write_text(yaml.safe_dump(deep_update(TINY, {
        "data": {"members": 16, "heldout": 16, "population": 24, "options": {"noise": 0.3}},
        "federation": {"clients": 1}})))
    scenario = load_scenario(path)
    plan = build_plan(scenario)
    model = build_model(scenario.model, plan.info.in_channels, plan.info.num_classes, seed=0)
    initial = get_weights(model)
    train_local(model, plan.clients[0], TrainRecipe(epochs=40, batch_size=4, lr=0.003), seed=0, device=pick_device("cpu"))
    transcript = Transcript([], initial)
    transcript.rounds.append(RoundView(1, aggregate=get_weights(model)))
    return scenario, plan, transcript


def test_loss_attack_separates_memorised_members(overfit_setup):
    scenario, plan, transcript = overfit_setup
    view = adversary_view(scenario, transcript)
    outputs = run_attacks(scenario, view)
    is_member = plan.ledger.is_member(plan.targets.ids)
    assert is_member.sum() == 16 and (~is_member).sum() == 16
    auc = membership_metrics(outputs["loss"]["scores"], is_member).auc
    assert auc > 0.75, auc
    for name, out in outputs.items():
        assert out["scores"].shape == (32,) and np.isfinite(out["scores"]).all(), name
        # threshold from the population alone: ~10% of population records score above it
        population_scores = out["attack"].score(view, plan.population)
        assert np.mean(population_scores >= out["threshold"]) == pytest.approx(0.1, abs=0.1)


def test_attacks_never_read_the_ledger(overfit_setup, monkeypatch):
    scenario, plan, transcript = overfit_setup
    view = adversary_view(scenario, transcript)
    assert not any(isinstance(v, MembershipLedger) for v in vars(view).values())

    def forbidden(*_args, **_kwargs):
        raise AssertionError("an attack read the membership ledger")

    monkeypatch.setattr(MembershipLedger, "is_member", forbidden)
    monkeypatch.setattr(MembershipLedger, "client_of", forbidden)
    monkeypatch.setattr(MembershipLedger, "__getattribute__", lambda self, name: forbidden())
    for name in ATTACKS.names():
        if name not in scenario.attack_names:
            continue
        attack = ATTACKS.get(name)()
        attack.fit(view)
        attack.score(view, view.targets)
