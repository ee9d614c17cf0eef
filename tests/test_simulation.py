"""The real path: Flower's simulation engine on the Ray backend, and `flwr run` of the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedmia.data.plan import build_plan
from fedmia.runner import run_scenario
from fedmia.validation import load_scenario
from fedmia.transcript import Transcript

from conftest import REPO, alive, child_pids, stop_pids, stops_flwr_run


def check_run_folder(folder: Path, scenario) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["scenario"] == scenario.name
    assert set(metrics["timing"]) >= {"wall_s", "simulation_s", "attacks_s"}
    assert metrics["timing"]["wall_s"] >= metrics["timing"]["simulation_s"] > 0
    # the phases add up to the wall time (the OOD sets, once most of the quickstart's wall time, included)
    from fedmia.pipeline import PHASES

    timing = metrics["timing"]
    assert {"ood_s", "evaluation_s", "other_s"} <= set(timing)
    assert abs(sum(timing.get(k, 0.0) for k in (*PHASES, "other_s")) - timing["wall_s"]) < 1e-6
    completed = json.loads((folder / "completed.json").read_text())  # every plug-in, with its package
    assert {(p["family"], p["name"]) for p in completed["plugins"]} >= {("attack", a) for a in scenario.attack_names}
    assert all(p["package"] and p["version"] for p in completed["plugins"])
    assert len(metrics["utility"]["rounds"]) == scenario.federation.rounds
    assert 0 <= metrics["utility"]["dice"] <= 1
    plan = build_plan(scenario)
    for name in scenario.attack_names:
        m = metrics["attacks"][name]
        assert 0 <= m["auc"] <= 1 and set(m["tpr_at_fpr"]) == {"0.001", "0.01"}
        assert m["n_members"] + m["n_nonmembers"] == len(plan.targets)
    for name in ("scenario.yaml", "report.md", "roc.png", "utility.png", "scores.csv", "ledger.json"):
        assert (folder / name).stat().st_size > 0, name
    score_ids = [line.split(",")[0] for line in (folder / "scores.csv").read_text().splitlines()[1:]]
    assert score_ids == list(plan.targets.ids)
    assert load_scenario(folder / "scenario.yaml").resolved() == scenario.resolved()
    return metrics


def test_ray_simulation_two_clients_records_a_transcript(write_scenario, tmp_path, stops_its_processes):
    # keep_transcript: final over two rounds (with one round it would equal `all`): the update
    # attack reads every round's replies, then the run folder keeps only the last round's
    # federated_evaluation: sampled — the clients' own figures of each round's model are recorded
    scenario = load_scenario(write_scenario({"federation": {"rounds": 2, "federated_evaluation": "sampled"},
                                             "runtime": {"keep_transcript": "final"},
                                             "attacks": ["loss", "entropy", "update-loss-drop"]}))
    metrics = run_scenario(scenario, tmp_path / "run").as_json()
    check_run_folder(tmp_path / "run", scenario)
    assert metrics["utility"]["rounds"][-1]["clients"] == 2
    for row in metrics["utility"]["rounds"]:
        federated = row["federated"]
        assert federated["clients"] == 2 and federated["failures"] == 0
        assert 0 <= federated["dice"] <= 1 and federated["loss"] > 0
    assert metrics["attacks"]["update-loss-drop"]["n_members"] > 0  # it read the replies before the pruning

    transcript = Transcript.load(tmp_path / "run" / "transcript")
    assert len(transcript.rounds) == 2
    first, second = transcript.rounds
    # the checkpoint of round 1 was written after its evaluation, with it
    assert first.federated_evaluation == metrics["utility"]["rounds"][0]["federated"]
    assert all(r.weights is None for r in first.replies) and len(first.replies) == 2  # metadata kept
    assert all(r.weights is not None for r in second.replies)
    assert first.aggregate is not None and second.aggregate is not None
    # every client got the previous global model and replied with its own, different, weights
    assert len(first.sent) == 2 and len(first.replies) == 2
    for node, weights in second.sent.items():
        assert all(np.array_equal(a, b) for a, b in zip(weights, first.aggregate))
    replies = [r.weights for r in second.replies]
    assert not all(np.array_equal(a, b) for a, b in zip(*replies))
    assert sorted(r.metrics["partition-id"] for r in second.replies) == [0, 1]
    # FedAvg: the aggregate is the example-weighted mean of the replies
    n = np.array([r.num_examples for r in second.replies], dtype=float)
    expected = sum(w * r.weights[0] for w, r in zip(n / n.sum(), second.replies))
    np.testing.assert_allclose(second.aggregate[0], expected, rtol=1e-5, atol=1e-6)
    assert {"local-epochs", "lr", "server-round"} <= set(second.config[next(iter(second.config))])
    # Ray was shut down by the run itself: nothing of ours is left behind
    assert not [p for p in child_pids() if alive(p) and "ray" in Path(f"/proc/{p}/cmdline").read_text()]


# slow: the multi-site loopback test (tests/test_deployment.py) runs the same app through `flwr run`
@pytest.mark.slow
def test_flwr_run_runs_the_same_app(write_scenario, tmp_path):
    """`flwr run .` on the local simulation SuperLink; every process it starts is stopped by PID."""
    scenario_path = write_scenario()
    out = tmp_path / "flwr-run"
    bin_dir = str(Path(sys.executable).parent)  # flwr launches `flower-superlink` from PATH
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "FLWR_HOME": str(tmp_path / "flwr-home"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    flwr = Path(sys.executable).parent / "flwr"
    with stops_flwr_run(tmp_path / "flwr-home"):
        proc = subprocess.run(
            [str(flwr), "run", ".", "--stream",
             "--run-config", f"scenario='{scenario_path}' out='{out}'",
             "--federation-config", "num-supernodes=2"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_run_folder(out, load_scenario(scenario_path))


# slow: the multi-site loopback test runs folder data (RGB, simulated and deployed) by default;
# bench/kvasir.py runs this file full size
@pytest.mark.slow
def test_kvasir_folder_scenario_runs_end_to_end_on_a_small_folder(tmp_path, stops_its_processes):
    """The hospital-sized scenario file as shipped (folder data, RGB, Unet/ResNet-34 depth 5,
    bounded OOD sets), shrunk only in counts and image size; bench/kvasir.py runs it full size."""
    import yaml

    from fedmia.data.folder import write_example_folder
    from fedmia.scenario import Scenario

    raw = yaml.safe_load((REPO / "scenarios" / "kvasir-folder.yaml").read_text())
    write_example_folder(tmp_path / "scans", 20, size=(48, 40))
    raw["data"].update(image_size=32, members=8, heldout=6, population=6)  # 32: depth 5's smallest
    raw["data"]["options"]["path"] = str(tmp_path / "scans")
    raw["federation"].update(rounds=1, batch_size=4)
    raw["evaluation"].update(targets={"members": 4, "nonmembers": 4}, ood_count=3, ood_steps=2)
    scenario = Scenario.model_validate(raw)
    assert (scenario.model.encoder, scenario.model.encoder_depth, scenario.data.options["channels"]) == ("resnet34", 5, 3)
    metrics = run_scenario(scenario, tmp_path / "run").as_json()
    assert metrics["ood_sets"] == {"heldout": 3, "noise": 3, "scaled": 3, "optimised-fakes": 3}
    assert set(metrics["attacks"]) == {"loss", "entropy", "modified-entropy"}
    assert 0 <= metrics["utility"]["dice"] <= 1
    # keep_transcript: final — the replies went after the attacks read them
    transcript = Transcript.load(tmp_path / "run" / "transcript")
    assert all(r.weights is not None for r in transcript.rounds[-1].replies)


def test_too_few_supernodes_fail_within_the_timeout_naming_the_numbers(write_scenario, tmp_path, stops_its_processes):
    import time

    from fedmia.server_app import ClientsMissing

    scenario = load_scenario(write_scenario({"runtime": {"connect_timeout_s": 2}}))
    started = time.monotonic()
    with pytest.raises(ClientsMissing, match=r"needs 2 clients .* but 1 SuperNode\(s\) connected within 2 s"):
        run_scenario(scenario, tmp_path / "run", supernodes=1)
    assert time.monotonic() - started < 60  # Flower's client manager alone would wait a day


def test_client_crash_prob_crashes_that_share_of_clients_the_same_way_every_run(write_scenario):
    """`faults.client_crash_prob`: each (round, client) draws once from the scenario's seed — the
    share of crashes is the probability, and a rerun (or a resumed run) crashes the same ones.
    The crash itself takes the path of the planned crashes that the resume and SecAgg+ tests run."""
    from fedmia.client_train import InjectedCrash, inject_faults

    def crashes(probability: float, seed: int = 0) -> list[bool]:
        scenario = load_scenario(write_scenario({"seed": seed, "faults": {"client_crash_prob": probability}}))
        out = []
        for server_round in range(1, 301):
            for client in range(2):
                try:
                    inject_faults(scenario, server_round, client)
                    out.append(False)
                except InjectedCrash as crash:
                    assert f"client {client} in round {server_round}" in str(crash)
                    out.append(True)
        return out

    drawn = crashes(0.3)
    assert abs(np.mean(drawn) - 0.3) < 0.07  # 600 draws: the binomial's 99.9% band is about ±0.06
    assert crashes(0.3) == drawn and crashes(0.3, seed=1) != drawn
    assert not any(crashes(0.0)) and all(crashes(1.0))


def test_run_simulation_is_called_by_one_adapter_only():
    """Flower deprecates `run_simulation`; fedmia/runner.py holds the one call (README says why).
    A user's own app runs through Flower's `_run_simulation` (its run config reaches the app's
    clients only there, in flwr 1.41): fedmia/audit_app.py holds that one call."""
    def callers(call: str) -> list[str]:
        return sorted(path.relative_to(REPO).as_posix()
                      for folder in ("fedmia", "strategies", "bench", "tests")
                      for path in (REPO / folder).rglob("*.py")
                      if call in path.read_text().replace("_" + call, "") and path.name != "test_simulation.py")

    assert callers("run_simulation(") == ["fedmia/runner.py"]
    assert callers("_run_simulation(") == ["fedmia/audit_app.py"]


@pytest.mark.slow  # ~1 min: a second Ray node; `pytest -m slow` runs it
def test_clients_run_on_both_nodes_of_a_two_node_ray_cluster(write_scenario, tmp_path, stops_its_processes):
    """runtime.ray_address joins a running cluster (here two nodes on one machine, each with one
    CPU, so that two clients at once must use both): its clients are placed on both nodes."""
    import ray
    from ray.cluster_utils import Cluster

    # the nodes on the machine's own address, as `ray start` would: given 127.0.0.1:PORT, `ray.init`
    # rewrites it to that address, where a head bound to 127.0.0.1 does not answer (measured)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        scenario = load_scenario(write_scenario({
            "federation": {"rounds": 2}, "attacks": ["loss"],
            "runtime": {"ray_address": cluster.address, "client_cpus": 1}}))
        run_scenario(scenario, tmp_path / "run")
        nodes = {r.metrics["ray-node"] for v in Transcript.load(tmp_path / "run" / "transcript").rounds
                 for r in v.replies if "ray-node" in r.metrics}
        assert len(nodes) == 2, nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()  # stops the processes it started, by PID
