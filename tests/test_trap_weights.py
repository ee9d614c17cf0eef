"""Trap weights: planted detectors move under local training iff their target is trained on —
in plain PyTorch, in a real Flower simulation (per-client replies, and SecAgg+ with isolation),
and the receive-side check refuses a trapped model but not an honest one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.attacks.trap import TrapAttackParams, detector_movement
from fedmia.data.plan import build_plan
from fedmia.defenses.base import ModelRefused
from fedmia.defenses.receive_check import ReceiveCheck, ReceiveCheckParams
from fedmia.local import LocalRun
from fedmia.models import get_weights, scenario_model, set_weights
from fedmia.runner import run_scenario
from fedmia.training import TrainRecipe, train_local
from fedmia.transcript import Transcript
from fedmia.validation import load_scenario
from strategies.trap_weights import TrapParams, plant_detectors, readout_params

CPU = torch.device("cpu")
# 32x32 scans, a depth-2 ResNet-18 encoder: 2 residual blocks, 128 detector slots.
TRAP = {"data": {"image_size": 32, "options": {"binary": True, "noise": 0.15},
                 "members": 24, "heldout": 24, "population": 48},
        # the decoder these tests were calibrated on (fedmia's default before smp's own widths)
        "model": {"encoder_depth": 2, "decoder_channels": [64, 32]},
        "federation": {"clients": 3, "rounds": 2, "local_epochs": 2, "batch_size": 4},
        "evaluation": {"targets": {"members": 24, "nonmembers": 24}, "ood": []}}


def _trained_global(write_scenario):
    """The TRAP scenario, its plan, and a global model trained on the population: what a trap
    server plants its detectors in."""
    scenario = load_scenario(write_scenario(TRAP))
    plan = build_plan(scenario)
    model = scenario_model(scenario, plan.info, seed=0)
    train_local(model, plan.population, TrainRecipe(2, 4, 0.003), seed=0, device=CPU)
    return scenario, plan, model


def _moved(before, after, names, table) -> dict[str, float]:
    index = {n: i for i, n in enumerate(names)}
    update = [a.astype(np.float64) - b for a, b in zip(after, before)]
    return {rid: detector_movement(update, index, e["block"], e["channel"]) for e in table for rid in e["ids"]}


def test_a_detector_moves_iff_its_target_is_trained_on(write_scenario):
    scenario, plan, model = _trained_global(write_scenario)
    table = plant_detectors(model, plan.targets, plan.population, 4, TrapParams(), CPU)
    assert len(table) == len(plan.targets) and all(len(e["ids"]) == 1 for e in table)
    names = list(model.state_dict())
    sent = get_weights(model)
    client = plan.clients[0]
    for optimizer in ("adam", "sgd"):
        set_weights(model, sent)
        train_local(model, client, TrainRecipe(2, 4, 0.003, optimizer=optimizer), seed=1, device=CPU)
        moved = _moved(sent, get_weights(model), names, table)
        present = {str(i) for i in client.ids}
        hits = [moved[r] > 0 for r in moved if r in present]
        false = [r for r in moved if r not in present and moved[r] > 0]
        assert np.mean(hits) >= 0.75, (optimizer, hits)
        assert len(false) <= 1, (optimizer, false)  # absent: exactly zero change, one drift allowed
        if optimizer == "adam":  # Adam normalises the gain away: every hit clears the attack's tolerance
            assert min(moved[r] for r in moved if r in present and moved[r] > 0) > TrapAttackParams().tolerance


def test_receive_check_refuses_a_model_whose_units_answer_to_a_few_of_its_records(write_scenario):
    scenario, plan, model = _trained_global(write_scenario)
    honest = get_weights(model)
    # 8 records x 64 positions per client here: a detector open on one position opens on 0.2% of
    # them, so the threshold is 1% (the default 0.1% suits clients with > 1,000 positions)
    check = ReceiveCheck(ReceiveCheckParams(min_open=0.01))
    strict = ReceiveCheck(ReceiveCheckParams(min_open=0.01, flag_shut=True))
    mine, others = plan.clients[0], plan.clients[1]

    def inspect(defense, client):
        defense.inspect(LocalRun(scenario, model, client, TrainRecipe(1, 4, 0.003), 0, CPU))

    inspect(check, mine)
    inspect(strict, mine)  # honest: every ReLU channel opens on its share of the client's data
    plant_detectors(model, others, plan.population, 4, TrapParams(), CPU)  # traps for client 1's records
    with pytest.raises(ModelRefused, match="receive-check refused"):
        inspect(check, others)  # its own records open the detectors, each on a position or two
    inspect(check, mine)  # none of client 0's records opens one: nothing of its data would leak
    with pytest.raises(ModelRefused):
        inspect(strict, mine)  # `flag_shut` also refuses units that open for nothing
    set_weights(model, honest)


def test_receive_check_repair_trains_with_the_detectors_switched_off(write_scenario):
    """`action: repair`: the client trains on a trapped model with the flagged channels closed:
    every detector of its own records stays exactly where the server put it (the trap reads
    "not trained on"), the rest of the network trains, and the hooks are gone afterwards."""
    scenario, plan, model = _trained_global(write_scenario)
    client = plan.clients[1]
    table = plant_detectors(model, client, plan.population, 4, TrapParams(), CPU)
    names, sent = list(model.state_dict()), get_weights(model)

    plain = LocalRun(scenario, model, client, TrainRecipe(2, 4, 0.003), 1, CPU)
    plain.train()
    assert max(_moved(sent, get_weights(model), names, table).values()) > TrapAttackParams().tolerance

    set_weights(model, sent)
    repair = ReceiveCheck(ReceiveCheckParams(min_open=0.01, action="repair"))
    stats = LocalRun(scenario, model, client, TrainRecipe(2, 4, 0.003), 1, CPU, defenses=[repair]).train()
    assert stats["repaired"] >= len(table) and "refused" not in stats
    assert max(_moved(sent, get_weights(model), names, table).values()) == 0.0
    trained = [n for n, a, b in zip(names, get_weights(model), sent) if n.startswith("decoder") and not np.array_equal(a, b)]
    assert trained  # the federation keeps training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_server_that_knows_repair_plants_detectors_it_lets_through(write_scenario):
    """`evade_min_open`: each detector opens on enough positions of its own target that the
    client's check (same min_open) lets it through where the target is, and finds it shut or
    closes it where the target is not: under repair the adaptive trap still reads membership,
    which the plain trap does not (the test above)."""
    scenario, plan, model = _trained_global(write_scenario)
    client = plan.clients[1]
    params = TrapParams(evade_min_open=0.01, client_records=len(client))
    table = plant_detectors(model, plan.targets, plan.population, 4, params, CPU, client_records=len(client))
    # 8 records x 64 positions at the first block: 1% of them is 5.12, so each target opens on 6
    assert {e["opens"] for e in table} == {6}
    names, sent = list(model.state_dict()), get_weights(model)
    repair = ReceiveCheck(ReceiveCheckParams(min_open=0.01, action="repair"))
    LocalRun(scenario, model, client, TrainRecipe(2, 4, 0.003), 1, CPU, defenses=[repair]).train()
    moved = _moved(sent, get_weights(model), names, table)
    tolerance = TrapAttackParams().tolerance
    present = {str(i) for i in client.ids}
    hits = np.mean([moved[r] > tolerance for r in moved if r in present])
    false = np.mean([moved[r] > tolerance for r in moved if r not in present])
    assert hits >= 0.5 and false <= 0.2, (hits, false)


# Both slow: tests/test_audit.py runs the trap-weights threat model through a real federation
# (strategy, detectors, trap attack), and the units' behaviour is tested above without Ray.
@pytest.mark.parametrize("secure", [pytest.param(False, marks=pytest.mark.slow),
                                    pytest.param(True, marks=pytest.mark.slow)])
def test_trap_weights_in_a_flower_simulation(write_scenario, tmp_path, stops_its_processes, secure):
    extra = {"server": {"strategy": "trap-weights", **({"isolate_client": 1} if secure else {})},
             "attacks": ["trap-weights"]}
    if secure:
        extra["defenses"] = {"secagg": True}
    scenario = load_scenario(write_scenario({**TRAP, **extra}))
    metrics = run_scenario(scenario, tmp_path / "run").as_json()
    transcript = Transcript.load(tmp_path / "run" / "transcript")
    plan = build_plan(scenario)
    owner = {str(r): k for k, c in enumerate(plan.clients) for r in c.ids}
    names = transcript.weight_names
    for view in transcript.rounds:
        assert view.notes.attacked == "trap-weights"
        table = view.notes.details["detectors"]
        if not secure:  # every client's reply: its own detectors move, nobody else's
            for reply in view.replies:
                k = reply.metrics["partition-id"]
                moved = _moved(view.sent[reply.node_id], reply.weights, names, table)
                hits = [moved[r] > 0 for r in moved if owner.get(r) == k]
                false = [r for r in moved if owner.get(r) != k and moved[r] > 0]
                assert np.mean(hits) >= 0.6 and len(false) <= 1, (view.round, k, hits, false)
        # after the round the detectors are gone: pre-attack conv1, zero residual gain
        for block in {e["block"] for e in table}:
            assert not view.aggregate[names.index(f"{block}.bn2.weight")].any()
            before = transcript.global_before(view.round)
            assert np.array_equal(view.aggregate[names.index(f"{block}.conv1.weight")],
                                  before[names.index(f"{block}.conv1.weight")])
    row = metrics["attacks"]["trap-weights"]
    if secure:
        # round 2 armed client 1 alone; non-target nodes got the detectors disarmed
        last = transcript.rounds[-1]
        assert last.notes.target_client == 1
        armed = last.sent[last.notes.target_node]
        for node, sent in last.sent.items():
            if node != last.notes.target_node:
                assert any(not np.array_equal(a, b) for a, b in zip(armed, sent))
        assert "client 1" in row["scope"]
    assert row["auc"] >= 0.85, row
    if not secure:
        assert metrics["source_inference"]["accuracy"] >= 0.6, metrics["source_inference"]


def test_trap_weights_settings_are_checked_before_the_run(write_scenario):
    from typer.testing import CliRunner

    from fedmia.cli import app

    bad = write_scenario({**TRAP, "server": {"strategy": "trap-weights", "isolate_client": 7,
                                            "attack_rounds": [5], "helpers": 5},
                          "model": {"encoder": "mobilenet_v2", "encoder_depth": 2}})
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for where in ("server.isolate_client", "server.attack_rounds", "server.helpers", "model.encoder"):
        assert where in text, text


def test_a_server_that_knows_t_has_helpers_move_every_detector(write_scenario):
    """Against thresholded secure aggregation with t = 2, one helper client is sent every detector
    held open (`helpers: 1`): it changes every detector coordinate, so a detector's coordinates
    are released iff its target's client moved them too — the release itself reads membership
    for every other client's records, and stays shut for non-members. No sybil: one model per
    client, as the isolation server already sends."""
    from fedmia.defenses.thresholded_secagg import thresholded_mean
    from strategies.trap_weights import HELD_OPEN, disarm

    scenario, plan, model = _trained_global(write_scenario)
    table = plant_detectors(model, plan.targets, plan.population, 4, TrapParams(), CPU)
    names, armed = list(model.state_dict()), get_weights(model)
    held = disarm(armed, names, table, HELD_OPEN)
    updates, counts = [], []
    for k, client in enumerate(plan.clients):
        sent = held if k == 0 else armed  # client 0 helps
        set_weights(model, sent)
        train_local(model, client, TrainRecipe(2, 4, 0.003), seed=k, device=CPU)
        updates.append([a.astype(np.float64) - b.astype(np.float64) for a, b in zip(get_weights(model), sent)])
        counts.append(len(client))
    released, _ = thresholded_mean(updates, counts, min_clients=2)
    index = {n: i for i, n in enumerate(names)}
    moved = {rid: detector_movement(released, index, e["block"], e["channel"]) for e in table for rid in e["ids"]}
    tolerance = TrapAttackParams().tolerance
    readable = {str(r) for c in plan.clients[1:] for r in c.ids}
    members = {str(r) for c in plan.clients for r in c.ids}
    assert np.mean([moved[r] > tolerance for r in readable]) >= 0.75  # released: helper + owner
    assert np.mean([moved[r] > tolerance for r in moved if r not in members]) <= 0.1  # the helper alone: withheld


def test_thresholded_secure_aggregation_hides_what_one_client_alone_moved(write_scenario):
    """The ideal functionality releases a coordinate of the mean update only where >= t clients
    changed it: the sum of three clients' updates shows every member's detector moving, the
    thresholded release shows none, and the dense coordinates every client trains pass as the
    plain mean. Through the strategy hook, every FitRes then carries the released mean."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    from fedmia.defenses.thresholded_secagg import ThresholdedParams, ThresholdedSecAgg, thresholded_mean
    from fedmia.scenario import ScenarioError

    scenario, plan, model = _trained_global(write_scenario)
    table = plant_detectors(model, plan.targets, plan.population, 4, TrapParams(), CPU)
    names, sent = list(model.state_dict()), get_weights(model)
    updates, counts = [], []
    for k, client in enumerate(plan.clients):
        set_weights(model, sent)
        train_local(model, client, TrainRecipe(2, 4, 0.003), seed=k, device=CPU)
        updates.append([a.astype(np.float64) - b.astype(np.float64) for a, b in zip(get_weights(model), sent)])
        counts.append(len(client))
    plain, _ = thresholded_mean(updates, counts, min_clients=1)
    released, withheld = thresholded_mean(updates, counts, min_clients=2)
    index = {n: i for i, n in enumerate(names)}
    members = {str(r) for c in plan.clients for r in c.ids}
    tolerance = TrapAttackParams().tolerance

    def moved(update):
        return {rid: detector_movement(update, index, e["block"], e["channel"]) for e in table for rid in e["ids"]}

    in_sum, in_release = moved(plain), moved(released)
    assert np.mean([in_sum[r] > tolerance for r in in_sum if r in members]) >= 0.75  # the sum shows them
    assert max(in_release.values()) == 0.0  # the thresholded release shows none
    head = index["segmentation_head.0.weight"]  # trained by every client: released as the mean
    np.testing.assert_allclose(released[head], plain[head])
    assert 0 < withheld < 0.2, withheld

    # the hook: each FitRes carries the released mean and the share withheld, then FedAvg aggregates
    seen = {}

    class Strategy:
        def aggregate_fit(self, server_round, results, failures):
            seen["results"] = results
            return None, {}

    defense = ThresholdedSecAgg(ThresholdedParams(min_clients=2))
    strategy = defense.wrap_strategy(Strategy(), scenario)
    results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(u), n, {"partition-id": k}))
               for k, (u, n) in enumerate(zip(updates, counts))]
    strategy.aggregate_fit(1, results, [])
    for _, fit_res in seen["results"]:
        for got, want in zip(parameters_to_ndarrays(fit_res.parameters), released):
            np.testing.assert_array_equal(got, want)
        assert fit_res.metrics["withheld-share"] == pytest.approx(withheld)
    # validation: it simulates its own secure sum, so SecAgg+ beside it is refused; t above the round's clients too
    for defenses, message in (({"thresholded-secagg": {}, "secagg": True}, "does not compose with defenses.secagg"),
                              ({"thresholded-secagg": {"min_clients": 4}}, "nothing would ever be released")):
        with pytest.raises(ScenarioError, match=message):
            load_scenario(write_scenario({**TRAP, "defenses": defenses}))
