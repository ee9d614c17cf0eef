"""Black-box attacks: real smp model, real training; they work, never touch the ledger, and see the
served model only through its query API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.data.plan import build_plan
from fedmia.evaluation import membership_metrics
from fedmia.models import build_model, get_weights
from fedmia.attacks.base import QueryAPI
from fedmia.pipeline import adversary_view, run_attacks
from fedmia.validation import load_scenario
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
    results = run_attacks(scenario, view)
    is_member = plan.ledger.is_member(plan.targets.ids)
    assert is_member.sum() == 16 and (~is_member).sum() == 16
    auc = membership_metrics(results["loss"].scores, is_member).auc
    assert auc > 0.75, auc
    for name, result in results.items():
        assert result.scores.shape == (32,) and np.isfinite(result.scores).all(), name
        # threshold from the population alone: ~10% of population records score above it
        population_scores = result.attack.score(result.view, plan.population)
        assert np.mean(population_scores >= result.threshold) == pytest.approx(0.1, abs=0.1)


def test_the_adversary_cannot_read_the_ledger(overfit_setup):
    """By type: what attacks and strategies get holds no ledger and no client records. At run
    time: the ledger refuses every read while the attacks run (and while the rounds run:
    fedmia/server_app.py), so every attack and strategy any run exercises is checked."""
    import dataclasses

    from fedmia.attacks.base import Attack, register_attack
    from fedmia.data.federation import FederationPlan, GroundTruthRead, MembershipLedger
    from fedmia.data.knowledge import AdversaryKnowledge, adversary_knowledge

    scenario, plan, transcript = overfit_setup
    view = adversary_view(scenario, transcript)
    knowledge = adversary_knowledge(scenario)
    for holder in (view, knowledge):
        assert not any(isinstance(v, (MembershipLedger, FederationPlan)) for v in vars(holder).values())
    assert {f.name for f in dataclasses.fields(AdversaryKnowledge)} == {"info", "population", "targets"}
    assert set(knowledge.targets.ids) == set(plan.targets.ids)  # its list, not whether each is a member

    @register_attack("test-peeks-at-the-ledger")
    class Peek(Attack):
        def fit(self, view) -> None:
            self.threshold = None

        def score(self, view, records):
            return build_plan(scenario).ledger.is_member(records.ids).astype(float)  # what it must not do

    peeking = scenario.model_copy(update={"attacks": [type(scenario.attacks[0])(name="test-peeks-at-the-ledger")]})
    with pytest.raises(GroundTruthRead, match="read during the attacks"):
        run_attacks(peeking, view)
    assert plan.ledger.is_member(plan.targets.ids).sum() == 16  # the evaluator, afterwards, may


def test_quantile_regression_separates_memorised_members_at_its_own_false_alarm_rate(overfit_setup):
    """QMIA: no reference model; its margin ranks members first, and a positive margin (its
    decision) calls about α of the population members — the rate it was built for."""
    scenario, plan, transcript = overfit_setup
    qmia = scenario.model_copy(update={"attacks": [type(scenario.attacks[0])(name="qmia")]})
    view = adversary_view(qmia, transcript)
    result = run_attacks(qmia, view)["qmia"]
    is_member = plan.ledger.is_member(plan.targets.ids)
    assert membership_metrics(result.scores, is_member).auc > 0.75
    assert result.threshold == 0.0
    nonmembers = result.scores[~is_member]
    assert np.mean(nonmembers > 0) <= 0.4  # held-out non-members: near α = 0.1, far from a coin


def test_label_only_augmentation_attack_reads_labels_only_and_separates_memorised_members(overfit_setup):
    """label-augment: the same scores whether the API returns probabilities or label maps (it
    reads the argmax only), members of a memorising model ranked first; balanced accuracy
    weighs the lesion like the background, and shifted views are scored on unwrapped pixels."""
    from fedmia.attacks.label_only import _views, balanced_accuracy
    from fedmia.defenses import DEFENSES

    masks = np.zeros((1, 4, 4), dtype=int)
    masks[0, 0, 0] = 1
    labels = np.zeros_like(masks)  # background right, the one lesion pixel wrong
    assert balanced_accuracy(labels, masks)[0] == pytest.approx(0.5)  # plain accuracy: 15/16
    valid = np.ones((4, 4), dtype=bool)
    valid[0, 0] = False
    assert balanced_accuracy(labels, masks, valid)[0] == 1.0
    x, y = np.arange(16.0).reshape(1, 1, 4, 4), np.arange(16).reshape(1, 4, 4)
    views = dict(_views(1, True, 1))
    assert len(views) == 1 + 1 + 4 + 2
    shifted_x, shifted_y, valid = views["shift-rows+1"](x, y, None)
    assert shifted_y[0, 1, 0] == y[0, 0, 0] and not valid[0].any() and valid[1:].all()

    scenario, plan, transcript = overfit_setup
    spec = type(scenario.attacks[0])(name="label-augment")
    soft = scenario.model_copy(update={"attacks": [spec]})
    hard = soft.model_copy(update={"defenses": type(soft.defenses)({"output": DEFENSES.get("output").Params(mode="argmax")})})
    soft_result = run_attacks(soft, adversary_view(soft, transcript))["label-augment"]
    hard_result = run_attacks(hard, adversary_view(hard, transcript))["label-augment"]
    np.testing.assert_array_equal(soft_result.scores, hard_result.scores)
    is_member = plan.ledger.is_member(plan.targets.ids)
    assert membership_metrics(hard_result.scores, is_member).auc > 0.75
    assert np.ptp(hard_result.scores) > 0 and hard_result.threshold is not None


def test_loss_augment_is_the_loss_attack_without_augmentation_and_reads_every_view_with_it(overfit_setup):
    """loss-augment: with no augmentation in the recipe its one view is the plain one (the loss
    attack's scores exactly); `views: dihedral` queries all eight views (on this model, trained
    without augmentation, the rotated views are ones it never fitted: no better than chance —
    which is why the default follows the recipe; bench/augment_aware.yaml measures it with one)."""
    from fedmia.attacks import ATTACKS

    scenario, plan, transcript = overfit_setup
    spec = type(scenario.attacks[0])
    plain = scenario.model_copy(update={"attacks": [spec(name="loss"), spec(name="loss-augment")]})
    results = run_attacks(plain, adversary_view(plain, transcript))
    np.testing.assert_allclose(results["loss-augment"].scores, results["loss"].scores)
    view = adversary_view(plain, transcript)
    attack = ATTACKS.get("loss-augment")(ATTACKS.get("loss-augment").Params(views="dihedral"))
    assert len(attack.views(view)) == 8
    attack.fit(view)
    scores = attack.score(view, plan.targets)
    assert scores.shape == (len(plan.targets),) and np.isfinite(scores).all() and attack.threshold is not None
    assert not np.allclose(scores, results["loss"].scores)  # the other seven views count


BLACK_BOX = [{"name": n} for n in ("loss", "entropy", "confidence", "max-softmax", "modified-entropy", "qmia",
                                   "label-augment")] + [
    {"name": n, "models": 2, "epochs": 2} for n in
    ("lira-online", "lira-offline", "rmia", "rmia-online", "shadow-type1", "shadow-type2", "shadow-lossmap", "global-loss", "salem")]


def _guarded_view(scenario, transcript, monkeypatch):
    """A view whose served model raises if it runs outside `QueryAPI.query`, like the ledger guard."""
    view = adversary_view(scenario, transcript)
    inside = {"depth": 0}
    original = QueryAPI.query

    def tracked(self, images):
        inside["depth"] += 1
        try:
            return original(self, images)
        finally:
            inside["depth"] -= 1

    def guard(_module, _inputs):
        if inside["depth"] == 0:
            raise AssertionError("an attack ran the served model outside its query API")

    monkeypatch.setattr(QueryAPI, "query", tracked)
    served = view.api._QueryAPI__served
    served.register_forward_pre_hook(guard)
    return view, served


def test_black_box_attacks_see_the_served_model_only_through_its_query_api(overfit_setup, monkeypatch, tmp_path):
    scenario, plan, transcript = overfit_setup
    scenario = scenario.model_copy(update={
        "attacks": [type(scenario.attacks[0])(**spec) for spec in BLACK_BOX],
        "runtime": scenario.runtime.model_copy(update={"cache_dir": str(tmp_path / "cache")})})
    view, served = _guarded_view(scenario, transcript, monkeypatch)
    results = run_attacks(scenario, view)
    assert set(results) == {spec["name"] for spec in BLACK_BOX}
    assert all(r.skipped is None and r.view.transcript is None for r in results.values())
    assert view.api.queries > 0
    # The guard bites: a bypass — running the served module directly — fails.
    with pytest.raises(AssertionError, match="outside its query API"):
        served(torch.as_tensor(plan.targets.images[:2]))


def test_query_stage_defenses_reach_reference_attacks(overfit_setup, tmp_path, example_plugins):
    """Every query-stage defense acts through its hook, which QueryAPI calls: under argmax
    outputs LiRA and RMIA see label maps, and under the example package's own query-stage
    defense (a plug-in fedmia's core has never heard of) coarse scores — their scores change."""
    from fedmia.defenses import DEFENSES
    from fedmia.defenses.output import OutputParams

    scenario, plan, transcript = overfit_setup
    specs = [type(scenario.attacks[0])(**spec) for spec in BLACK_BOX if spec["name"] in ("lira-online", "rmia")]
    runtime = scenario.runtime.model_copy(update={"cache_dir": str(tmp_path / "cache")})
    plain = scenario.model_copy(update={"attacks": specs, "runtime": runtime})
    coarse = DEFENSES.get("example-coarse-scores").Params(decimals=1)
    plain_results = run_attacks(plain, adversary_view(plain, transcript))
    for block in ({"output": OutputParams(mode="argmax")}, {"example-coarse-scores": coarse}):
        defended = plain.model_copy(update={"defenses": type(plain.defenses)(block)})
        results = run_attacks(defended, adversary_view(defended, transcript))
        for name in ("lira-online", "rmia"):
            assert not np.allclose(plain_results[name].scores, results[name].scores), (block, name)


def test_update_gradient_batched_cosines_equal_the_one_at_a_time_ones(overfit_setup, monkeypatch):
    """update-gradient takes per-record gradients with torch.func in batches, once for every
    client sent the same model; the cosines are the record-by-record autograd ones, client by
    client (float32 rounding apart)."""
    import fedmia.attacks.updates as updates

    scenario, plan, transcript = overfit_setup
    view = adversary_view(scenario, transcript)
    sent = transcript.initial
    rng = np.random.default_rng(0)
    returned = [transcript.rounds[0].aggregate,
                [w + rng.normal(0, 1e-3, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w for w in sent]]
    batched = updates.UpdateGradient._cosines(view, plan.targets, sent, returned)
    assert batched.shape == (len(plan.targets), 2)
    for k, weights in enumerate(returned):  # one client at a time: the same column
        np.testing.assert_allclose(batched[:, k], updates.UpdateGradient._cosines(view, plan.targets, sent, [weights])[:, 0],
                                   atol=1e-5)

    def refuse(*_args, **_kwargs):
        raise RuntimeError("vmap refused")  # what a model torch.func cannot vmap raises

    monkeypatch.setattr(updates, "_batched_cosines", refuse)
    one_at_a_time = updates.UpdateGradient._cosines(view, plan.targets, sent, returned)
    np.testing.assert_allclose(batched, one_at_a_time, atol=1e-5)
    assert np.ptp(batched) > 1e-3  # not a constant: the records' gradients differ


def test_federated_reference_models_train_as_the_federation_does(overfit_setup, tmp_path):
    """`training: federated`: a reference model's records are split over the clients a round
    samples, each round every client runs the protocol's own local training from the global
    model, and the global model is the example-weighted mean of their replies; cached under a
    key of its own (not the centrally trained model's)."""
    import dataclasses

    from fedmia.attacks.reference_models import ReferenceModels, federated_training

    scenario, plan, transcript = overfit_setup
    base = adversary_view(scenario, transcript)
    calls = []

    def local(model, records, seed):
        base.local_training(model, records, seed)
        calls.append((set(records.ids), len(records), get_weights(model)))

    view = dataclasses.replace(base, clients=3, rounds=2, local_training=local, cache_dir=str(tmp_path))
    records = plan.population
    model = view.model_factory()
    final = federated_training(local, 3, 2, model, records, seed=5)
    assert len(calls) == 6  # 2 rounds x 3 clients
    last = calls[3:]
    assert set().union(*(ids for ids, _, _ in last)) == set(records.ids)
    assert sum(n for _, n, _ in last) == len(records)  # disjoint parts covering the records
    share = np.array([n for _, n, _ in last], dtype=np.float64) / len(records)
    for i, array in enumerate(final):
        if array.dtype.kind == "f":
            expected = sum(w * weights[i].astype(np.float64) for w, (_, _, weights) in zip(share, last))
            np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-6)

    federated, central = ReferenceModels(view, 2, None, "federated"), ReferenceModels(view, 2, None, "central")
    assert federated.key(0) != central.key(0)
    calls.clear()
    first = federated.weights(0)
    assert len(calls) == 6 and federated.trained == 1
    again = ReferenceModels(view, 2, None, "federated").weights(0)  # from the cache: no training
    assert len(calls) == 6 and all(np.array_equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("defense", [{"minmax": {"weight": 1.0}}, {"distillation": {"temperature": 2.0}}])
def test_the_adversarys_simulated_clients_train_with_the_public_records_their_defenses_need(
        defense, write_scenario):
    """Min-max and distillation train on `data.public`, which every client shares: a federated
    reference model's simulated clients must get it too (they failed on a missing set before)."""
    scenario = load_scenario(write_scenario({"data": {"public": 4}, "defenses": defense}))
    plan = build_plan(scenario)
    model = build_model(scenario.model, plan.info.in_channels, plan.info.num_classes, seed=0)
    view = adversary_view(scenario, Transcript([], get_weights(model)), served=model)
    before = get_weights(model)
    view.local_training(model, plan.population.subset(range(6)), 0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, get_weights(model)))


def test_reference_models_train_in_worker_processes_as_they_would_in_this_one(overfit_setup, tmp_path, monkeypatch):
    """`runtime.train_workers`: the models missing from the cache train side by side in worker
    processes, each cached under its usual key, and each is the
    model this process trains for that key (one torch thread on both sides). Models this small
    train in this process unless the size rule is lifted, as here."""
    import dataclasses
    import os

    from fedmia.attacks import reference_models as reference
    from fedmia.attacks.reference_models import ReferenceModels

    scenario, plan, transcript = overfit_setup
    tiny = ReferenceModels(dataclasses.replace(adversary_view(scenario, transcript), train_workers=2,
                                               cache_dir=str(tmp_path / "tiny")), 2, 1, "central")
    tiny.train_missing()
    assert tiny.trained == 0  # too small to pay for a worker's start
    monkeypatch.setattr(reference, "PARALLEL_MIN_PIXEL_PASSES", 0)
    short = scenario.model_copy(update={"federation": scenario.federation.model_copy(update={"local_epochs": 1})})
    base = adversary_view(short, transcript)
    threads = torch.get_num_threads()
    for training, count in (("federated", 2),):  # the job with the most to carry: the local training too
        parallel = ReferenceModels(dataclasses.replace(base, train_workers=2, cache_dir=str(tmp_path / training / "p"),
                                                       clients=2, rounds=2), count, 1, training)
        parallel.train_missing()
        assert parallel.trained == count and all(parallel.path(i).exists() for i in range(count))
        assert not hasattr(parallel, "_stats")  # nothing trained in this process...
        assert torch.get_num_threads() == threads  # ...nor did it change its threads
        one = ReferenceModels(dataclasses.replace(base, train_workers=1, cache_dir=str(tmp_path / training / "s"),
                                                  clients=2, rounds=2), count, 1, training)
        one.train_missing()
        assert one.trained == 0  # one worker: nothing up front, weights() trains on demand
        torch.set_num_threads(1)
        try:
            for index in range(count):
                assert one.key(index) == parallel.key(index)
                for a, b in zip(one.weights(index), parallel.weights(index)):
                    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        finally:
            torch.set_num_threads(threads)
        assert one.trained == count and len(os.listdir(tmp_path / training / "s" / "reference")) == count


def test_lira_aggregation_is_chosen_by_rehearsal_on_the_adversarys_own_models(overfit_setup, tmp_path):
    """`aggregation: auto`: reference model 0 plays the target, the others are the references;
    the aggregation that separates model 0's own training records best is kept (reported in
    `chosen`), and the attack then scores exactly as with that aggregation fixed in advance. The
    rehearsal runs under the ledger guard (run_attacks), so it cannot have read membership. The
    reference-model cache: shared, reused, and deterministic when cold."""
    from sklearn.metrics import roc_auc_score

    from fedmia.attacks.reference import _mean_lira

    scenario, plan, transcript = overfit_setup
    runtime = scenario.runtime.model_copy(update={"cache_dir": str(tmp_path / "cache")})
    spec = type(scenario.attacks[0])
    specs = [spec(name=name, label=f"{name}-{aggregation}", models=4, epochs=2, aggregation=aggregation)
             for name in ("lira-online", "lira-offline") for aggregation in ("auto", "mean", "pixel-sum")]
    chosen_run = scenario.model_copy(update={"attacks": specs, "runtime": runtime})
    results = run_attacks(chosen_run, adversary_view(chosen_run, transcript))
    for name in ("lira-online", "lira-offline"):
        auto = results[f"{name}-auto"]
        aucs = auto.chosen["rehearsal_auc"]
        assert set(aucs) == {"mean", "pixel-sum"} and all(0 <= a <= 1 for a in aucs.values())
        assert auto.chosen["aggregation"] == max(aucs, key=lambda k: (aucs[k], k == "mean"))
        np.testing.assert_allclose(auto.scores, results[f"{name}-{auto.chosen['aggregation']}"].scores)
        assert results[f"{name}-mean"].chosen is None  # fixed in advance: nothing chosen
    # one set of reference models, shared by every attack, trained once; a rerun on a warm cache
    # trains none, a cold cache elsewhere retrains the same models: the same scores every time
    assert len({id(r.attack.refs) for r in results.values()}) == 1
    assert results["lira-online-auto"].attack.refs.trained == 4
    assert len(list((tmp_path / "cache" / "reference").glob("*.npz"))) == 4
    for cache, trained in (("cache", 0), ("cold", 4)):
        rerun = chosen_run.model_copy(update={"runtime": runtime.model_copy(update={"cache_dir": str(tmp_path / cache)})})
        again = run_attacks(rerun, adversary_view(rerun, transcript))
        assert again["lira-online-auto"].attack.refs.trained == trained
        for key, result in results.items():
            np.testing.assert_allclose(again[key].scores, result.scores)
    # the rehearsal's mean-aggregation AUC, recomputed by hand: model 0 against models 1-3
    attack = results["lira-online-auto"].attack
    refs = attack.refs
    phi = attack.phi - refs.centres()[:, None]
    shared = True  # 3 reference models: one shared variance (LiRA's rule below 64)
    by_hand = _mean_lira(phi[0], phi[1:], refs.inclusion[1:], np.arange(len(refs.pool)), True, shared)
    assert results["lira-online-auto"].chosen["rehearsal_auc"]["mean"] == pytest.approx(
        roc_auc_score(refs.inclusion[0], by_hand))


def test_online_rmia_takes_p_x_over_every_reference_model_in_and_out(overfit_setup, tmp_path, write_scenario):
    """rmia-online: P(x) is the mean over all reference models (each pool record is IN half of
    them), no offline correction `a`; the same shared models as offline RMIA, so no training."""
    from fedmia.scenario import ScenarioError

    scenario, plan, transcript = overfit_setup
    runtime = scenario.runtime.model_copy(update={"cache_dir": str(tmp_path / "cache")})
    spec = type(scenario.attacks[0])
    run = scenario.model_copy(update={"runtime": runtime, "attacks": [
        spec(name=name, models=4, epochs=2) for name in ("rmia", "rmia-online")]})
    results = run_attacks(run, adversary_view(run, transcript))
    online, offline = results["rmia-online"].attack, results["rmia"].attack
    assert online.refs is offline.refs and online.refs.trained == 4 and online.a is None
    assert online.refs.inclusion.mean(0).tolist() == [0.5] * len(online.refs.pool)  # the IN/OUT design
    # by hand: the fraction of population records z with LR(x)/LR(z) >= 1, P(.) the all-model mean
    p_ref = online.prob.mean(0)
    n_pop = len(plan.population)
    cols = online._columns(plan.targets)
    _, p_target = online._target_phi(adversary_view(run, transcript), plan.targets)
    ratio_x = p_target / np.array([p_ref[c] if c >= 0 else p_ref.mean() for c in cols])
    ratio_z = online.population_p / p_ref[:n_pop]
    by_hand = (ratio_x[:, None] / ratio_z[None, :] >= 1.0).mean(1) + 1e-6 * np.log(ratio_x)
    np.testing.assert_allclose(results["rmia-online"].scores, by_hand, rtol=1e-9)
    assert not np.allclose(results["rmia-online"].scores, results["rmia"].scores)
    is_member = plan.ledger.is_member(plan.targets.ids)
    assert membership_metrics(results["rmia-online"].scores, is_member).auc > 0.6
    with pytest.raises(ScenarioError, match="rmia-online averages over the IN and OUT"):
        load_scenario(write_scenario({"attacks": [{"name": "rmia-online", "a": 0.3}]}))
