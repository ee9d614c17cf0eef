"""Defenses: DP-SGD's per-sample gradients and its one-run check, output hardening, and real Ray
runs with local DP, central DP, SecAgg+ (with a dropout). The accountants: tests/unit/test_accountants.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from fedmia.attacks.base import PROBABILITY_FLOOR, QueryAPI, summaries_from_probabilities
from fedmia.data.datasets import load_dataset
from fedmia.defenses.dp import to_dp_compatible, train_local_dp
from fedmia.defenses.output import api_probabilities
from fedmia.models import build_model, get_weights
from fedmia.runner import run_scenario
from fedmia.defenses.output import OutputHardening, OutputParams as OutputSpec
from fedmia.scenario import ModelSpec
from fedmia.validation import load_scenario
from fedmia.transcript import Transcript


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v2"])
def test_per_sample_gradients_match_one_at_a_time(encoder):
    model = to_dp_compatible(build_model(ModelSpec(encoder=encoder, encoder_depth=3), 1, 2, seed=0))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    records, _ = load_dataset("shapes", records=3, image_size=32, seed=0, options={"binary": True})
    x, y = torch.as_tensor(records.images), torch.as_tensor(records.masks).long()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss_of_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    batched = vmap(grad(loss_of_one), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(batched[name][i], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v2"])
def test_dp_sgd_trains_resnet_and_mobilenet_encoders(encoder):
    model = to_dp_compatible(build_model(ModelSpec(encoder=encoder, encoder_depth=3), 1, 2, seed=0))
    records, _ = load_dataset("shapes", records=8, image_size=32, seed=0, options={"binary": True})
    before = get_weights(model)
    stats = train_local_dp(model, records, epochs=1, batch_size=4, lr=0.01, optimizer_name="sgd",
                           noise_multiplier=1.0, max_grad_norm=1.0, seed=0, device=torch.device("cpu"))
    assert stats["dp-steps"] == 2 and stats["dp-sample-rate"] == 0.5
    assert math.isfinite(stats["train-loss"])
    assert not all(np.array_equal(a, b) for a, b in zip(before, get_weights(model)))


def test_output_hardening_turns_scores_label_only():
    logits = torch.tensor([[[[3.0, -1.0]], [[0.0, 2.0]]]])  # (1, C=2, 1, 2): pixel 0 -> class 0, pixel 1 -> class 1
    hard = api_probabilities(logits, OutputSpec(mode="argmax"))
    assert torch.equal(hard, torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]]))
    top = api_probabilities(torch.randn(2, 4, 3, 3), OutputSpec(mode="topk", k=2))
    assert ((top > 0).sum(1) == 2).all() and torch.allclose(top.sum(1), torch.ones(2, 3, 3))
    soft = api_probabilities(logits, OutputSpec(mode="temperature", temperature=10.0))
    assert soft.max() < torch.softmax(logits, 1).max()
    noisy = api_probabilities(logits, OutputSpec(mode="gaussian", sigma=0.3), torch.Generator().manual_seed(0))
    assert torch.allclose(noisy.sum(1), torch.ones(1, 1, 2)) and (noisy >= 0).all()

    # Under argmax the loss attack's statistic is -log(1e-6) times the share of wrong pixels.
    records, _ = load_dataset("shapes", records=4, image_size=16, seed=0, options={"binary": True})
    model = build_model(ModelSpec(encoder_depth=2), 1, 2, seed=0).eval()
    api = QueryAPI(model, [OutputHardening(OutputSpec(mode="argmax"))], device=torch.device("cpu"))
    stats = summaries_from_probabilities(api.query(records.images), records.masks, floor=PROBABILITY_FLOOR)
    with torch.no_grad():
        wrong = (model(torch.as_tensor(records.images)).argmax(1) != torch.as_tensor(records.masks)).float()
    np.testing.assert_allclose(stats["loss"], -math.log(1e-6) * wrong.flatten(1).mean(1).numpy(), rtol=1e-5)


SMALL = {"data": {"members": 18, "heldout": 12, "population": 12},
         "federation": {"clients": 3, "rounds": 2, "local_epochs": 1}}


def _with(**extra):
    out = {k: dict(v) for k, v in SMALL.items()}
    out.update(extra)
    return out


def test_local_dp_run_reports_epsilon_per_client(write_scenario, tmp_path, stops_its_processes):
    scenario = load_scenario(write_scenario(_with(defenses={"dp": {"mode": "local", "target_epsilon": 8.0}},
                                                  federation={**SMALL["federation"], "clients": 2})))
    metrics = run_scenario(scenario, tmp_path / "run").as_json()
    privacy = metrics["privacy"]
    assert privacy["mode"] == "local" and set(privacy["per_client"]) == {"0", "1"}
    # The noise was solved for ε = 8 with Opacus's RDP accountant; every client took part in every
    # round. The headline is the tightest of three accountants, each a valid bound.
    assert privacy["accountants"]["opacus_rdp"] == pytest.approx(8.0, rel=0.05)
    assert set(privacy["accountants"]) == {"opacus_rdp", "dp_accounting_rdp", "dp_accounting_pld"}
    assert privacy["epsilon"] == min(privacy["accountants"].values())
    assert privacy["epsilon"] == max(c["epsilon"] for c in privacy["per_client"].values())
    audit = privacy["audit"]  # gradient canaries in client 0's DP-SGD, one-run lower bound
    assert audit["canaries"] == 1000 and audit["observed"] == "audited client's update"
    assert 0 <= audit["epsilon_lower"] <= audit["epsilon_accountant"]
    names = Transcript.load(tmp_path / "run" / "transcript").weight_names
    assert not any("running_var" in n for n in names)  # GroupNorm, not BatchNorm
    assert "local DP" in metrics["setup"]["defenses"]


# slow: central DP's accounting is checked by hand below in the default run
@pytest.mark.slow
def test_central_dp_noises_the_released_model(write_scenario, tmp_path, stops_its_processes):
    """Central DP with adaptive clipping (Flower's wrapper; fixed clipping is the same wrapper
    without the norm's update): the released model is noised, and the clipping norm — state a
    resumed run must continue from — is kept per round and picked up by a resumed strategy."""
    scenario = load_scenario(write_scenario(_with(
        defenses={"dp": {"mode": "central", "noise_multiplier": 1.0, "clipping_norm": 0.5, "clipping": "adaptive",
                         "clipped_count_stddev": 1.0}})))
    metrics = run_scenario(scenario, tmp_path / "run").as_json()
    privacy = metrics["privacy"]
    assert privacy["mode"] == "central" and math.isfinite(privacy["epsilon"])
    assert privacy["epsilon"] == min(privacy["accountants"].values()) and privacy["released_rounds"] == 2
    assert privacy["audit"]["observed"] == "released aggregate"
    assert privacy["audit"]["epsilon_lower"] <= privacy["epsilon"]
    last = Transcript.load(tmp_path / "run" / "transcript").rounds[-1]
    sent = next(iter(last.sent.values()))
    update = [a - s for a, s in zip(last.aggregate, sent)]
    mean_reply_update = last.observed_update  # what the clipped replies averaged to, before noise
    assert not all(np.allclose(a, b) for a, b in zip(update, mean_reply_update))

    from fedmia.server_app import make_strategy

    saved = Transcript.load(tmp_path / "run" / "transcript")
    norms = [view.state.clipping_norm for view in saved.rounds]
    assert all(n is not None and n > 0 for n in norms) and norms[0] != 0.5  # adapted after round 1
    saved.rounds = saved.rounds[:1]  # as if killed after round 1: the resumed wrapper starts from its norm
    assert make_strategy(scenario, resume_from=saved).clipping_norm == norms[0]


# slow: SecAgg+ runs in the default run under the isolation attack
# (tests/test_adversarial_server.py)
@pytest.mark.slow
def test_secagg_matches_plain_training_and_survives_a_dropout(write_scenario, tmp_path, stops_its_processes):
    plain = load_scenario(write_scenario(_with(), name="plain.yaml"))
    secure = load_scenario(write_scenario(_with(defenses={"secagg": True},
                                                faults={"crash": [{"round": 2, "client": 2}]}), name="secure.yaml"))
    run_scenario(plain, tmp_path / "plain")
    run_scenario(secure, tmp_path / "secure")
    a = Transcript.load(tmp_path / "plain" / "transcript")
    b = Transcript.load(tmp_path / "secure" / "transcript")
    # Round 1: same clients, same received weights, same seeds: only SecAgg+'s quantisation differs.
    # Each client's n_k/max_weight-scaled update is rounded to a grid of step 2*clip/Q, so the mean
    # update is off by at most K steps rescaled by max_weight/sum(n), per element.
    upd_plain = np.concatenate([u.ravel() for u in a.rounds[0].observed_update])
    upd_secure = np.concatenate([u.ravel() for u in b.rounds[0].observed_update])
    spec = secure.defenses.secagg
    total = sum(r.num_examples for r in b.rounds[0].replies)
    bound = 3 * (2 * spec.clipping_range / spec.quantization_range) * spec.max_weight / total
    assert np.abs(upd_secure - upd_plain).max() <= bound
    assert np.linalg.norm(upd_secure - upd_plain) / np.linalg.norm(upd_plain) < 0.01
    # Round 2: client 2 crashed; the secure round completed with the two others.
    second = b.rounds[1]
    assert second.failures >= 1 and len(second.replies) == 2 and second.aggregate is not None
    assert any("injected crash" in f for f in second.failure_messages)


def _audited_dp_sgd(noise_used: float, noise_claimed: float, canaries: int = 200) -> dict:
    """One client's DP-SGD through Opacus with gradient canaries; the audit's lower bound against
    the accountants' ε for the noise the run *claims* to use."""
    from fedmia.defenses.canaries import draw_canaries, trainable_dimension
    from fedmia.evaluation.epsilon_lower import epsilon_check, canary_scores
    from fedmia.evaluation.privacy import local_epsilons
    from fedmia.models import weight_names
    from fedmia.transcript import Reply, RoundView

    model = to_dp_compatible(build_model(ModelSpec(encoder="resnet18", encoder_depth=2), 1, 2, seed=0))
    records, _ = load_dataset("shapes", records=16, image_size=16, seed=0, options={"binary": True})
    drawn = draw_canaries(0, canaries, trainable_dimension(model), norm=1.0)
    before = get_weights(model)
    stats = train_local_dp(model, records, epochs=4, batch_size=8, lr=0.05, optimizer_name="sgd",
                           noise_multiplier=noise_used, max_grad_norm=1.0, seed=0, device=torch.device("cpu"),
                           momentum=0.0, canaries=drawn.present(), canary_norm=drawn.norm)
    names = weight_names(model)
    transcript = Transcript(names, before)
    transcript.rounds.append(RoundView(1, sent={7: before}, aggregate=get_weights(model),
                                       replies=[Reply(7, 16, {"partition-id": 0}, get_weights(model))]))
    trainable = [names.index(n) for n, p in model.named_parameters() if p.requires_grad]
    scores, source = canary_scores(transcript, trainable, drawn.coordinates, partition=0)
    history = [(noise_claimed, stats["dp-sample-rate"], stats["dp-steps"])]
    return epsilon_check(scores, drawn.inserted, 1e-5, lambda d: min(local_epsilons(history, d).values()), source)


def test_one_run_audit_respects_the_accountant_and_catches_noise_at_the_wrong_scale():
    honest = _audited_dp_sgd(noise_used=4.0, noise_claimed=4.0)
    assert honest["observed"] == "audited client's update"
    assert honest["epsilon_lower"] <= honest["epsilon_accountant"] and honest["consistent"], honest
    assert [t["delta"] for t in honest["tests"]] == pytest.approx([1e-5, 1e-7, 1e-9, 1e-11])
    # A bug that applies 1/100 of the noise the accountant was told about: the canaries stand out
    # and the lower bound exceeds the claimed ε.
    broken = _audited_dp_sgd(noise_used=0.04, noise_claimed=4.0)
    assert broken["epsilon_lower"] > broken["epsilon_accountant"], broken
    assert broken["correct"] >= 0.95 * broken["guesses"] and not broken["consistent"]
    assert broken["gap"] < 1  # the accountant claims less than the run is shown to spend


def test_dp_sgd_honours_label_smoothing_weight_decay_and_crop(write_scenario):
    """DP + label smoothing + weight decay + crop compose: the client's DP-SGD run uses each (the
    same seed and noise otherwise), where it used to drop the first two silently."""
    from fedmia.data.plan import build_plan
    from fedmia.local import client_recipe, local_training
    from fedmia.models import scenario_model

    def trained(defenses: dict, weight_decay: float = 0.0):
        scenario = load_scenario(write_scenario({"federation": {"weight_decay": weight_decay, "local_epochs": 2},
                                                 "defenses": {"dp": {"mode": "local", "noise_multiplier": 0.5,
                                                                     "audit_canaries": 0}, **defenses}},
                                                name=f"s{len(defenses)}{weight_decay}.yaml"))
        plan = build_plan(scenario)
        model = scenario_model(scenario, plan.info, seed=0)
        local_training(scenario, model, plan.clients[0], client_recipe(scenario, {}), seed=1,
                       device=torch.device("cpu"), partition=0)
        return np.concatenate([w.ravel() for w in get_weights(model)])

    plain = trained({})
    for changed in (trained({"label_smoothing": 0.2}), trained({}, weight_decay=0.1), trained({"crop": {"size": 8}})):
        assert not np.allclose(plain, changed)
