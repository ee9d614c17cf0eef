"""A consortium's own Flower app (examples/flower-app: Message API, a GroupNorm U-Net with one
logit and a fixed RGB input), unchanged: it trains under Flower alone, and fedmia audits its final
model with `model: {family: module, factory: segapp.task:Net, head: sigmoid, in_channels: 3}` —
no adapter, no channels or classes asked of the network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, stops_flwr_run

APP = REPO / "examples" / "flower-app"


# slow: a whole Flower simulation of the app, then a whole audit of its model
@pytest.mark.slow
def test_the_example_flower_app_trains_on_its_own_and_its_network_is_audited(tmp_path):
    from fedmia.data.sites import write_example_audit

    data = write_example_audit(tmp_path / "data", sites=("consortium",), per_site=24, shared=8, others=12,
                               population=16, test=12, size=(72, 64))
    # the app on its own, as its users run it: `flwr run` on Flower's local simulation SuperLink
    bin_dir = str(Path(sys.executable).parent)  # flwr launches `flower-superlink` from PATH
    home = tmp_path / "flwr-home"
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "FLWR_HOME": str(home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    with stops_flwr_run(home):
        trained = subprocess.run(
            [str(Path(bin_dir) / "flwr"), "run", ".", "--stream", "--run-config",
             f"data-path='{data / 'consortium'}' final-model='{tmp_path / 'final_model.pt'}'",
             "--federation-config", "num-supernodes=2"],
            cwd=APP, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0 and (tmp_path / "final_model.pt").is_file(), \
        trained.stdout[-3000:] + trained.stderr[-3000:]
    env = {**env, "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")])}  # the factory
    assert "fedmia" not in (APP / "segapp" / "task.py").read_text().split('"""', 2)[2]  # imports nothing of fedmia

    scenario = {"name": "segapp-model", "seed": 0,
                "data": {"dataset": "folder", "image_size": 64, "options": {"channels": 3, "mask_mode": "binary"},
                         "sites": [{"name": "consortium", "path": str(data / "consortium")}],
                         "auditor": {k: str(data / "auditor" / k) for k in ("targets", "population", "test")}},
                "model": {"family": "module", "factory": "segapp.task:Net", "head": "sigmoid", "in_channels": 3},
                # one client: data.sites counts one folder per client, while the app's two SuperNodes
                # split the one folder by a hash of the file name (describing that is issue 38's)
                "federation": {"clients": 1, "rounds": 3, "local_epochs": 2, "batch_size": 8, "lr": 0.003,
                               "optimizer": "adam"},
                "attacks": ["loss", "entropy"], "evaluation": {"tpr_at_fpr": [0.1], "ood": []}}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(scenario))
    cli = [sys.executable, "-m", "fedmia.cli"]
    listed = subprocess.run([*cli, "manifest", str(data / "consortium"), "--site", "consortium", "--out",
                             str(tmp_path / "manifests" / "consortium.json")], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    audited = subprocess.run([*cli, "audit-model", str(tmp_path / "final_model.pt"), str(tmp_path / "audit.yaml"),
                              "--manifests", str(tmp_path / "manifests"), "--out", str(tmp_path / "run")],
                             env=env, capture_output=True, text=True, timeout=600)
    assert audited.returncode == 0, audited.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["setup"]["targets"] == {"members": 8, "nonmembers": 12}
    assert metrics["utility"]["dice"] > 0.3  # the app's model segments: its one logit read as two classes
    assert 0 <= metrics["attacks"]["loss"]["auc"] <= 1


def test_fedmias_server_strategy_drives_the_unchanged_message_api_app(tmp_path, monkeypatch, stops_its_processes):
    """The example app's ClientApp (Message API: `msg.content["arrays"]` in, `"arrays"` and
    `"metrics"` out), imported as it is, under fedmia's ServerApp in Flower's Ray simulation: a
    strategy that sends each node its own model (here: scaled by the node's rank) reaches each
    node, every reply is recorded, and the round's aggregate is FedAvg's example-weighted mean."""
    import threading

    import numpy as np
    from flwr.simulation import run_simulation
    from pydantic import BaseModel

    from fedmia.data.sites import write_example_audit
    from fedmia.ray_start import backend_config
    from fedmia.server_app import Handover, make_server_app
    from fedmia.validation import parse_scenario
    from strategies import STRATEGIES, register_strategy
    from strategies.fedavg import ObservingFedAvg

    data = write_example_audit(tmp_path / "data", sites=("a", "b"), per_site=6, shared=2, others=2,
                               population=4, test=4, size=(40, 32))
    # the app reads its folder from $SEGAPP_DATA (run_simulation passes no run config); Ray's
    # workers inherit the environment and import the app from the PYTHONPATH
    monkeypatch.setenv("SEGAPP_DATA", str(data / "a"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(APP))

    class NoParams(BaseModel):
        pass

    if "test-per-node" not in STRATEGIES.names():
        @register_strategy("test-per-node", NoParams)
        class PerNode(ObservingFedAvg):
            def tailor(self, server_round, weights, instructions):
                return [(proxy, [w * (1 + 0.5 * k) if w.dtype.kind == "f" else w for w in weights], config)
                        for k, (proxy, config) in enumerate(instructions)]

    scenario = parse_scenario({
        "name": "segapp-message-api", "seed": 0,
        "data": {"dataset": "folder", "image_size": 32, "options": {"channels": 3, "mask_mode": "binary"},
                 "sites": [{"name": s, "path": str(data / s)} for s in ("a", "b")],
                 "auditor": {k: str(data / "auditor" / k) for k in ("targets", "population", "test")}},
        "model": {"family": "module", "factory": "segapp.task:Net", "head": "sigmoid", "in_channels": 3},
        "federation": {"clients": 2, "rounds": 1, "local_epochs": 1, "batch_size": 4},
        "server": {"strategy": "test-per-node"}, "attacks": ["loss"], "evaluation": {"ood": []}}, "test")
    from segapp.client_app import app as client_app  # the app's own, unchanged

    handover = Handover()
    server_app = make_server_app(scenario, result=handover, client_api="message")
    runner = threading.Thread(target=run_simulation, kwargs=dict(
        server_app=server_app, client_app=client_app, num_supernodes=2, backend_name="ray",
        backend_config=backend_config(scenario)), daemon=True)
    runner.start()
    assert handover.ended.wait(600), "the simulation did not end"
    runner.join(120)
    assert handover.error is None, handover.error
    (view,) = handover.transcript.rounds
    assert view.failures == 0 and len(view.replies) == 2, view.failure_messages
    sent = {node: weights for node, weights in view.sent.items()}
    first, second = sorted(sent)
    assert not np.allclose(sent[first][0], sent[second][0])  # each node got its own model
    for reply in view.replies:  # and trained from it: its reply is nearer what it was sent
        mine, other = sent[reply.node_id], sent[second if reply.node_id == first else first]
        assert np.abs(reply.weights[0] - mine[0]).sum() < np.abs(reply.weights[0] - other[0]).sum()
    counts = np.array([r.num_examples for r in view.replies], dtype=float)
    assert counts.sum() == 6  # the app's own partitions of its folder, every record once
    expected = sum(c / counts.sum() * r.weights[0] for c, r in zip(counts, view.replies))
    np.testing.assert_allclose(view.aggregate[0], expected, rtol=1e-5, atol=1e-6)


def _app_scenario(tmp_path, data, factory="segapp.task:Net", attacks=("loss", "update-loss-drop"), **server) -> Path:
    scenario = {"name": "segapp-audit-app", "seed": 0,
                "data": {"dataset": "folder", "image_size": 64, "options": {"channels": 3, "mask_mode": "binary"},
                         "sites": [{"name": "consortium", "path": str(data / "consortium")}],
                         "auditor": {k: str(data / "auditor" / k) for k in ("targets", "population", "test")}},
                "model": {"family": "module", "factory": factory, "head": "sigmoid", "in_channels": 3},
                # one client per site folder; the app's own clients are its SuperNodes (--supernodes)
                "federation": {"clients": 1, "rounds": 1, "local_epochs": 1, "batch_size": 8},
                "server": {"strategy": "fedavg", **server},
                "attacks": list(attacks), "evaluation": {"tpr_at_fpr": [0.1], "ood": []}}
    path = tmp_path / "audit-app.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


@pytest.mark.parametrize("network, strategy, attack", [("unet", "fedavg", "update-loss-drop"),
                                                       ("resnet18-unet", "trap-weights", "trap-weights")])
def test_audit_app_runs_the_apps_own_client_under_fedmias_server(tmp_path, monkeypatch, stops_its_processes,
                                                                 network, strategy, attack):
    """`fedmia audit-app examples/flower-app SCENARIO`: the app's ClientApp from its pyproject,
    its run config with `--run-config` over it, two SuperNodes splitting its folder their own
    way, fedmia's server keeping every reply — the honest one (its GroupNorm U-Net) and trap
    weights (its ResNet-18 U-Net: detectors planted in the app's own encoder); black-box and
    white-box attacks, and the membership figures from the site's manifest."""
    from typer.testing import CliRunner

    from fedmia.cli import app
    from fedmia.data.sites import write_example_audit, write_manifest

    data = write_example_audit(tmp_path / "data", sites=("consortium",), per_site=12, shared=6, others=8,
                               population=8, test=6, size=(72, 64))
    write_manifest(data / "consortium", "consortium", tmp_path / "manifests" / "consortium.json")
    monkeypatch.syspath_prepend(str(APP))  # the scenario's factory (segapp.task:Net)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SEGAPP_DATA", str(tmp_path / "nowhere"))  # only --run-config points at the data
    factory = {"unet": "segapp.task:Net", "resnet18-unet": "segapp.task:ResNetUNet"}[network]
    scenario = _app_scenario(tmp_path, data, factory, ("loss", attack), strategy=strategy)
    result = CliRunner().invoke(app, ["audit-app", str(APP), str(scenario), "--supernodes", "2",
                                      "--run-config", f"data-path='{data / 'consortium'}'", "--run-config",
                                      "local-epochs=1", "--run-config", f"network='{network}'",
                                      "--manifests", str(tmp_path / "manifests"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["setup"]["targets"] == {"members": 6, "nonmembers": 8}
    assert metrics["utility"]["rounds"][0]["clients"] == 2  # both of the app's SuperNodes replied
    assert 0 <= metrics["attacks"][attack]["auc"] <= 1 and 0 <= metrics["attacks"]["loss"]["auc"] <= 1
    assert metrics["setup"]["server"] == strategy
    assert (tmp_path / "run" / "completed.json").is_file()


def test_an_app_fedmia_cannot_run_is_refused_in_one_line_naming_it(tmp_path, monkeypatch):
    """No [tool.flwr.app.components], a clientapp that does not import, a run-config key the app
    does not declare: exit 2, one line naming the app and the cause, no run folder finished."""
    from typer.testing import CliRunner

    from fedmia.cli import app
    from fedmia.data.sites import write_example_audit

    data = write_example_audit(tmp_path / "data", sites=("consortium",), per_site=4, shared=2, others=2,
                               population=2, test=2, size=(72, 64))
    monkeypatch.syspath_prepend(str(APP))  # the scenario's factory
    scenario = _app_scenario(tmp_path, data)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "pyproject.toml").write_text('[project]\nname = "bare"\n')
    broken = tmp_path / "broken"
    shutil.copytree(APP, broken, ignore=shutil.ignore_patterns("__pycache__"))
    text = (broken / "pyproject.toml").read_text().replace("segapp.client_app:app", "segapp.no_such_module:app")
    (broken / "pyproject.toml").write_text(text)
    cases = [([str(bare)], f"{bare / 'pyproject.toml'}: [tool.flwr.app.components] clientapp: missing"),
             ([str(broken)], "app segapp (") , ([str(APP), "--run-config", "epochs=3"],
                                                "app segapp: --run-config 'epochs=3': expected KEY=VALUE with KEY one of")]
    for words, message in cases:
        result = CliRunner().invoke(app, ["audit-app", words[0], str(scenario), *words[1:], "--out",
                                          str(tmp_path / "never")])
        assert result.exit_code == 2 and message in result.stderr, (words, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "never" / "completed.json").exists()
    result = CliRunner().invoke(app, ["audit-app", str(broken), str(scenario), "--out", str(tmp_path / "never")])
    assert "'segapp.no_such_module:app' does not import" in result.stderr


def test_an_app_that_raises_inside_train_fails_the_run_in_one_line(tmp_path, stops_its_processes):
    """At run time (exit 1): what the app raised, after the node's id; the run is not finished."""
    from fedmia.data.sites import write_example_audit

    data = write_example_audit(tmp_path / "data", sites=("consortium",), per_site=4, shared=2, others=2,
                               population=2, test=2, size=(72, 64))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "fedmia.cli", "audit-app", str(APP), str(_app_scenario(tmp_path, data)),
                           "--supernodes", "2", "--run-config", f"data-path='{tmp_path / 'nowhere'}'",
                           "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the app failed: [Errno 2] No such file or directory" in done.stderr and "nowhere" in done.stderr
    assert not (tmp_path / "run" / "completed.json").exists()


def test_fedmia_audit_of_an_app_runs_every_threat_model_that_applies(tmp_path, monkeypatch, stops_its_processes):
    """`fedmia audit SCENARIO --app DIR --manifests M`: one report over the threat models, each
    federation the app's own ClientApp; trap weights do not apply to a network without an
    encoder they recognise, and say so; a second invocation trains nothing."""
    from typer.testing import CliRunner

    from fedmia.cli import app
    from fedmia.data.sites import write_example_audit, write_manifest

    data = write_example_audit(tmp_path / "data", sites=("consortium",), per_site=12, shared=6, others=8,
                               population=8, test=6, size=(72, 64))
    write_manifest(data / "consortium", "consortium", tmp_path / "manifests" / "consortium.json")
    monkeypatch.syspath_prepend(str(APP))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")]))
    words = ["audit", str(_app_scenario(tmp_path, data)), "--seeds", "1", "--out", str(tmp_path / "audit"),
             "--app", str(APP), "--supernodes", "2", "--manifests", str(tmp_path / "manifests"),
             "--run-config", f"data-path='{data / 'consortium'}'", "--run-config", "local-epochs=1"]
    result = CliRunner().invoke(app, words)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    rows = {r["threat_model"]: r for r in report["rows"] if r["defense"] == "scenario"}
    assert rows["black-box"]["applies"] and rows["client-updates"]["applies"]
    assert rows["black-box"]["attacks"]["loss"]["targets"] == {"members": 6, "nonmembers": 8, "levels": ["0.1"],
                                                              "false_positives_allowed": {"0.1": 0},
                                                              "low_n_levels": ["0.1"]}
    assert not rows["trap-weights"]["applies"] and "has no `encoder`" in rows["trap-weights"]["why_not"]
    assert (tmp_path / "audit" / "audit.html").stat().st_size > 10_000
    again = CliRunner().invoke(app, words)
    assert again.exit_code == 0 and "runs: 0 trained, 1 reused" in again.output, again.output


# slow: a whole loopback deployment (SuperLink, two SuperNodes, flwr run), beside a simulation
@pytest.mark.slow
def test_the_app_on_the_deployment_engine_gives_the_figures_of_the_simulation(tmp_path, stops_its_processes):
    """`fedmia deploy-local SCENARIO --app DIR`: the app's folder composed with fedmia's ServerApp,
    one SuperNode per app client (Flower's partition-id / num-partitions), `flwr run` of it with
    the app's run config; after `fedmia evaluate --manifests`, every figure equals the simulated
    run's (`fedmia audit-app`, same scenario and seed; the app seeds its training by partition
    and round)."""
    from fedmia.data.sites import write_example_audit, write_manifest

    data = write_example_audit(tmp_path / "data", sites=("consortium",), per_site=12, shared=6, others=8,
                               population=8, test=6, size=(72, 64))
    write_manifest(data / "consortium", "consortium", tmp_path / "manifests" / "consortium.json")
    scenario = str(_app_scenario(tmp_path, data))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, "-m", "fedmia.cli"]
    app_words = ["--app", str(APP), "--supernodes", "2", "--run-config", f"data-path='{data / 'consortium'}'"]
    simulated = subprocess.run([*cli, "audit-app", str(APP), scenario, *app_words[2:], "--manifests",
                                str(tmp_path / "manifests"), "--out", str(tmp_path / "sim")],
                               env=env, capture_output=True, text=True, timeout=600)
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    deployed = subprocess.run([*cli, "deploy-local", scenario, *app_words, "--out", str(tmp_path / "dep"),
                               "--workdir", str(tmp_path / "work")], env=env, capture_output=True, text=True,
                              timeout=900)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    joined = subprocess.run([*cli, "evaluate", str(tmp_path / "dep"), "--manifests", str(tmp_path / "manifests")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert joined.returncode == 0, joined.stderr[-3000:]
    sim, dep = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("sim", "dep"))
    assert dep["utility"]["rounds"][0]["clients"] == 2
    for figures in (sim, dep):
        figures.pop("timing")
    assert dep == sim
