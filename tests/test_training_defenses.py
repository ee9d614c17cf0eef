"""Training-time defenses (crop, mix-up, min-max adversarial regularisation, distillation) and
the last-layer Laplace release: the pieces on tiny data, and one real federated run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedmia.data.datasets import load_dataset
from fedmia.data.plan import PUBLIC, build_plan
from fedmia.defenses.laplace import fit_laplace
from fedmia.defenses.crop import random_crops
from fedmia.local import LocalRun
from fedmia.models import build_model, get_weights
from fedmia.runner import run_scenario
from fedmia.defenses import DEFENSES
from fedmia.scenario import ModelSpec, ScenarioError
from fedmia.validation import load_scenario
from fedmia.training import TrainRecipe

RECIPE = TrainRecipe(epochs=1, batch_size=4, lr=1e-3)


def train_with(model, records, recipe, defenses: dict, *, public=None):
    """A client's local run with the given defense blocks (the ClientApp's own loop)."""
    active = [DEFENSES.get(k)(DEFENSES.get(k).Params.model_validate(v)) for k, v in defenses.items()]
    return LocalRun(None, model, records, recipe, 0, torch.device("cpu"), public, defenses=active).train()


def tiny():
    records, _ = load_dataset("shapes", records=12, image_size=16, seed=0, options={"binary": True})
    return records.subset(list(range(8))), records.subset(list(range(8, 12)))


def test_random_crops_keep_image_and_mask_aligned():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    y = x[:, 0].long()  # the mask is the image: any misalignment shows
    xs, ys = random_crops(x, y, 4, np.random.default_rng(0))
    assert xs.shape == (2, 1, 4, 4) and ys.shape == (2, 4, 4)
    assert torch.equal(xs[:, 0].long(), ys)
    for i in range(2):  # each crop is a contiguous window of its own image
        corner = int(xs[i, 0, 0, 0])
        top, left = divmod(corner - i * 64, 8)
        assert torch.equal(xs[i, 0], x[i, 0, top : top + 4, left : left + 4])


@pytest.mark.parametrize("defenses", [
    {"crop": {"size": 8}}, {"mixup": {"alpha": 0.4}}, {"minmax": {"weight": 1.0}},
    {"distillation": {"temperature": 2.0}},
])
def test_each_training_defense_trains(defenses):
    private, public = tiny()
    model = build_model(ModelSpec(encoder_depth=2), in_channels=private.images.shape[1], num_classes=2)
    before = get_weights(model)
    stats = train_with(model, private, RECIPE, defenses, public=public)
    assert np.isfinite(stats["train-loss"])
    assert any(not np.allclose(a, b) for a, b in zip(before, get_weights(model)))


def test_minmax_penalty_changes_the_update():
    """The inline attack's gain enters the loss: weight 0 and weight 5 give different models."""
    private, public = tiny()
    weights = []
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        model = build_model(ModelSpec(encoder_depth=2), in_channels=private.images.shape[1], num_classes=2)
        train_with(model, private, RECIPE, {"minmax": {"weight": weight}}, public=public)
        weights.append(get_weights(model))
    assert any(not np.allclose(a, b) for a, b in zip(*weights))


def trained_tiny_model():
    private, public = tiny()
    torch.manual_seed(0)
    model = build_model(ModelSpec(encoder_depth=2), in_channels=private.images.shape[1], num_classes=2)
    train_with(model, private, TrainRecipe(epochs=5, batch_size=4, lr=3e-3), {})
    return model.eval(), private


def test_laplace_release_shrinks_logits_most_far_from_the_fitted_data():
    model, private = trained_tiny_model()
    released = fit_laplace(model, private, prior_precision=1.0, device=torch.device("cpu"))
    x = torch.as_tensor(private.images)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 6 - 3
    with torch.no_grad():
        shrink = {}
        for name, inputs in (("fitted", x), ("noise", noise)):
            plain, served = model(inputs), released(inputs)
            assert torch.all(torch.sign(served) == torch.sign(plain))  # probit scaling keeps the sign
            assert torch.all(served.abs() <= plain.abs() + 1e-6)
            shrink[name] = float((served.abs() / plain.abs().clamp_min(1e-6)).mean())
    assert shrink["noise"] < shrink["fitted"] < 1.0


def test_laplace_with_a_strong_prior_is_the_point_estimate():
    model, private = trained_tiny_model()
    released = fit_laplace(model, private, prior_precision=1e12, device=torch.device("cpu"))
    x = torch.as_tensor(private.images)
    with torch.no_grad():
        assert torch.allclose(released(x), model(x), rtol=1e-4, atol=1e-5)


def test_public_records_are_disjoint_and_never_targets(write_scenario):
    scenario = load_scenario(write_scenario({"data": {"public": 6}}))
    plan = build_plan(scenario)
    assert len(plan.public) == 6
    public = set(plan.public.ids)
    assert not public & set(plan.targets.ids) and not public & set(plan.population.ids)
    assert all(plan.ledger.owner[r] == PUBLIC for r in public)
    # without public records the plan is what it always was
    plain = build_plan(load_scenario(write_scenario({}, name="plain.yaml")))
    assert plain.public is None


@pytest.mark.parametrize("changes, where", [
    ({"defenses": {"minmax": {}}}, "defenses.minmax: needs public reference records"),
    ({"defenses": {"crop": {"size": 10}}}, "defenses.crop.size: expected a multiple of 2**encoder_depth = 4"),
    ({"data": {"public": 4}, "defenses": {"distillation": {}, "mixup": {}}},
     "defenses.distillation: does not compose with defenses.mixup: the student"),
    ({"defenses": {"mixup": {}, "dp": {"mode": "local", "noise_multiplier": 1.0}}},
     "defenses.mixup: does not compose with defenses.dp"),
])
def test_training_defense_problems_are_named(write_scenario, changes, where):
    with pytest.raises(ScenarioError) as error:
        load_scenario(write_scenario(changes))
    assert where in str(error.value)


# slow: each defense's local training runs above and in tests/test_architecture.py's pair table;
# the federated run adds no server-side difference for these client-side defenses
@pytest.mark.slow
def test_federated_run_with_crop_mixup_and_minmax(write_scenario, tmp_path, stops_its_processes):
    scenario = load_scenario(write_scenario({
        "data": {"public": 8},
        "defenses": {"crop": {"size": 12}, "mixup": {"alpha": 0.4}, "minmax": {"weight": 1.0},
                     "laplace": {"fit_on": "public"}},
    }))
    metrics = run_scenario(scenario, tmp_path / "run").as_json()
    assert 0 <= metrics["attacks"]["loss"]["auc"] <= 1
    assert metrics["utility"]["released"] == "last-layer Laplace"
    assert 0 <= metrics["utility"]["global_model"]["dice"] <= 1
    assert "Served model (last-layer Laplace)" in (tmp_path / "run" / "report.md").read_text()
    ledger = json.loads((tmp_path / "run" / "ledger.json").read_text())["owner"]
    assert sum(owner == PUBLIC for owner in ledger.values()) == 8
