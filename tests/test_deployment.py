"""Flower's deployment engine on loopback: a SuperLink and two SuperNodes as separate processes,
`flwr run` of the app, plain and with TLS + SuperNode authentication; every process stopped by
PID."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fedmia.deploy import LocalDeployment, local_deployment, self_signed_certificates, supernode_keys
from fedmia.processes import alive


# TLS alone is a subset of "tls+auth" (same certificates, same transport); one run covers both.
# The insecure transport differs only in flags (checked against compose.yml below).
# Slow, as every whole deployment here (`pytest -m slow`).
@pytest.mark.slow
@pytest.mark.parametrize("security", ["insecure", "tls+auth"])
def test_loopback_deployment_runs_a_scenario(write_scenario, tmp_path, stops_its_processes, security):
    scenario = write_scenario()
    out = tmp_path / "run"
    tls_dir = self_signed_certificates(tmp_path / "certs") if security != "insecure" else None
    with local_deployment(2, tmp_path / "deploy", tls_dir, auth=security == "tls+auth") as deployment:
        if security == "tls+auth":  # a SuperNode whose key nobody registered is turned away
            stranger = deployment.spawn_supernode(0, supernode_keys(tmp_path / "stranger", "key"), "stranger.log")
            assert stranger.wait(timeout=120) != 0
            assert "Failed to activate" in (tmp_path / "deploy" / "stranger.log").read_text()
        result = deployment.run(scenario, out, timeout=300)
        started = [p.pid for p in deployment.processes]
        assert len(started) == 3 + (security == "tls+auth")  # SuperLink + 2 SuperNodes (+ the stranger)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not [pid for pid in started if alive(pid)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["utility"]["rounds"][0]["clients"] == 2
    assert set(metrics["attacks"]) == {"loss", "entropy", "confidence", "modified-entropy"}
    partitions = {r["metrics"]["partition-id"] for r in json.loads((out / "transcript" / "index.json").read_text())["rounds"][0]["replies"]}
    assert partitions == {0, 1}  # each SuperNode trained its own --node-config partition


def multi_site_scenario(tmp_path: Path):
    """scenarios/multi-site.yaml as shipped, on a synthetic audit in `tmp_path`, shrunk in
    counts, image size and rounds only."""
    import yaml

    from conftest import REPO
    from fedmia.data.sites import write_example_audit
    from fedmia.scenario import Scenario

    data = write_example_audit(tmp_path / "data", per_site=8, shared=3, others=6, population=8, test=6,
                               size=(40, 36))
    raw = yaml.safe_load((REPO / "scenarios" / "multi-site.yaml").read_text())
    raw["data"]["image_size"] = 32
    for site in raw["data"]["sites"]:
        site["path"] = str(data / site["name"])
    raw["data"]["auditor"] = {k: str(data / "auditor" / k) for k in ("targets", "population", "test")}
    raw["federation"].update(rounds=1, local_epochs=1, batch_size=4)
    raw["evaluation"].update(ood_count=3)
    return Scenario.model_validate(raw), data


# slow (with the two-SuperNode loopback tests above): the deployment engine's
# processes, TLS and SuperNode authentication end to end; the default run keeps what it reads and
# writes (the compose file, node configs, manifests) and the simulation engine's whole runs
@pytest.mark.slow
def test_multi_site_audit_on_loopback_matches_its_simulation(tmp_path, stops_its_processes):
    """Three SuperNodes, each reading only its own folder (its node config names it), TLS and
    SuperNode authentication on; the sites' manifests give the ground truth to `fedmia evaluate`,
    and the figures equal those of the same federation simulated with the same data and seed."""
    from typer.testing import CliRunner

    from fedmia.cli import app
    from fedmia.deploy import site_node_configs, submit
    from fedmia.runner import run_scenario

    scenario, data = multi_site_scenario(tmp_path)
    runner = CliRunner()
    for site in scenario.data.sites:  # each site writes its manifest on its own machine
        result = runner.invoke(app, ["manifest", site.path, "--site", site.name,
                                     "--out", str(tmp_path / "manifests" / f"{site.name}.json")])
        assert result.exit_code == 0, result.output

    tls_dir = self_signed_certificates(tmp_path / "certs")
    deployed_scenario = scenario.with_absolute_paths(keep_site_paths=False)  # the server never sees them
    with local_deployment(3, tmp_path / "deploy", tls_dir, auth=True,
                          node_configs=site_node_configs(scenario)) as deployment:
        stranger = deployment.spawn_supernode(0, supernode_keys(tmp_path / "stranger", "key"), "stranger.log")
        assert stranger.wait(timeout=120) != 0  # an unregistered key is turned away
        # the deployed run (in Flower's processes) and the simulated one (here) at the same time:
        # most of each is process start-up, which overlaps well on two cores
        box: dict = {}
        auditor = threading.Thread(target=lambda: box.update(  # what `fedmia deploy` does
            result=submit(deployed_scenario, tmp_path / "deployed", f"127.0.0.1:{deployment.superlink_port}",
                          tls_dir / "ca.crt", timeout=400)))
        auditor.start()
        simulated = run_scenario(scenario, tmp_path / "sim").as_json()
        auditor.join()
        result = box["result"]
        started = [p.pid for p in deployment.processes]
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not [pid for pid in started if alive(pid)]
    assert simulated["attacks"] == {} and "pending" in simulated["membership"]  # no ground truth yet
    assert not (tmp_path / "sim" / "ledger.json").exists()
    assert (tmp_path / "deployed" / "metrics.json").exists(), result.stdout[-3000:]
    assert "path: null" in (tmp_path / "deployed" / "scenario.yaml").read_text()

    evaluated = {}
    for run in ("sim", "deployed"):
        result = runner.invoke(app, ["evaluate", str(tmp_path / run), "--manifests", str(tmp_path / "manifests")])
        assert result.exit_code == 0, result.output
        evaluated[run] = json.loads((tmp_path / run / "metrics.json").read_text())
    sim, dep = evaluated["sim"], evaluated["deployed"]
    assert sim["setup"]["targets"] == {"members": 9, "nonmembers": 6}  # 3 shared by each site, 6 from nowhere
    assert sim["ground_truth"]["records_per_site"] == {"hospital-a": 8, "hospital-b": 8, "hospital-c": 8}
    assert set(sim["attacks"]) == {"loss", "entropy", "modified-entropy"}
    for key in ("attacks", "utility", "setup", "ood", "ood_at_tpr50", "ground_truth"):
        assert dep[key] == sim[key], key
    replies = json.loads((tmp_path / "deployed" / "transcript" / "index.json").read_text())["rounds"][0]["replies"]
    assert sorted((r["metrics"]["partition-id"], r["num_examples"]) for r in replies) == [(0, 8), (1, 8), (2, 8)]

    # the federation's last model saved as a plain state dict and audited as a model trained
    # elsewhere (`fedmia audit-model`): the same figures
    import torch

    from fedmia.models import build_model, set_weights
    from fedmia.transcript import Transcript

    model = build_model(scenario.model, in_channels=3, num_classes=2)
    set_weights(model, Transcript.load(tmp_path / "sim" / "transcript").final)
    torch.save(model.state_dict(), tmp_path / "final.pt")
    result = runner.invoke(app, ["audit-model", str(tmp_path / "final.pt"), str(tmp_path / "sim" / "scenario.yaml"),
                                 "--manifests", str(tmp_path / "manifests"), "--out", str(tmp_path / "model-audit")])
    assert result.exit_code == 0, result.output
    audited = json.loads((tmp_path / "model-audit" / "metrics.json").read_text())
    for key in ("attacks", "ood", "ood_at_tpr50", "ground_truth"):
        assert audited[key] == sim[key], key
    assert audited["utility"]["dice"] == sim["utility"]["dice"]


# slow: the same refusal through Ray's workers (tests/test_plugins.py) is in
# the default run
@pytest.mark.slow
def test_a_supernode_without_the_users_plug_ins_stops_the_run_naming_them(
        example_plugins, write_scenario, tmp_path, stops_its_processes, monkeypatch):
    """The example package (dataset, partitioner, strategy, defense, attack, OOD set) on a
    loopback deployment where site 0's machine has it and site 1's does not: the ServerApp and
    site 0's ClientApp run its plug-ins, site 1's ClientApp refuses, naming them and itself, and
    the server fails the run with that line — no client trains without the defense, and the
    folder never reads as finished. (The package's whole run, attacks and OOD set included:
    tests/test_plugins.py through Ray.)"""
    import os

    from fedmia.runfolder import state
    from test_plugins import EXAMPLE

    # an earlier in-process Ray run may have put every sys.path entry, the package's too, there
    without = os.pathsep.join(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                              if p and p != str(example_plugins))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(example_plugins), without) if p))
    scenario = write_scenario(EXAMPLE)
    deployment = LocalDeployment(2, tmp_path / "deploy")
    deployment.node_envs = {1: {**deployment.env, "PYTHONPATH": without}}  # site 1 lacks the package
    try:
        deployment.start()
        refused = deployment.run(scenario, tmp_path / "run", timeout=300)
    finally:
        deployment.stop()
    assert not [p.pid for p in deployment.processes if alive(p.pid)]
    said = refused.stdout + refused.stderr
    assert "cannot resolve the plug-ins the scenario names" in said and "example-flip" in said, said[-3000:]
    assert "site/partition 1" in said and "site/partition 0" not in said
    assert state(tmp_path / "run") != "finished"
    site_0 = (tmp_path / "deploy" / "supernode-0.log").read_text()
    assert "cannot resolve" not in site_0 and "Traceback" not in site_0  # site 0 trained with the plug-ins


def test_a_relative_workdir_still_points_every_flower_process_at_its_certificates(tmp_path, monkeypatch):
    """`fedmia deploy-local`'s default workdir is relative (`runs/deploy`), and every Flower
    process runs with the workdir as its cwd: relative certificate paths there pointed nowhere
    (the SuperLink exited: "--ssl-ca-certfile does not point to a file")."""
    monkeypatch.chdir(tmp_path)
    certs = self_signed_certificates(Path("runs/deploy/certs"))
    deployment = LocalDeployment(2, Path("runs/deploy"), certs, auth=True)
    for role in ("superlink", "supernode"):
        paths = [Path(arg) for arg in deployment._security(role) if not arg.startswith("--")]
        assert paths and all(p.is_absolute() and p.is_file() for p in paths), (role, paths)
    assert Path(deployment.env["FLWR_HOME"]).is_absolute()
    assert deployment.workdir == tmp_path / "runs" / "deploy"


def test_compose_file_matches_the_tested_loopback_setup(tmp_path):
    """No Docker engine here: the compose file uses Flower's images of the installed version and
    the flags of the loopback deployment tested above (TLS, SuperNode authentication, one node
    config per site), each site's folder mounted into its own ClientApp container only, and the
    credentials script's files are the ones it mounts."""
    from importlib.metadata import version

    import yaml
    from cryptography import x509

    from conftest import REPO
    from fedmia.deploy import LocalDeployment, write_credentials
    from fedmia.validation import load_scenario

    services = yaml.safe_load((REPO / "docker" / "compose.yml").read_text())["services"]
    flwr = version("flwr")
    sites = [site.name for site in load_scenario(REPO / "scenarios" / "multi-site.yaml").data.sites]
    tested = LocalDeployment(len(sites), tmp_path, tmp_path / "certs", auth=True)

    def flags(command: list[str]) -> set[str]:
        return {arg for arg in command if arg.startswith("--")}

    # compose runs each app in its own container (--isolation process); otherwise the same flags
    link = services["superlink"]
    assert link["image"] == f"flwr/superlink:{flwr}"
    assert flags(link["command"]) == flags(tested.superlink_command()) | {"--isolation"}
    assert link["command"][link["command"].index("--isolation") + 1] == "process"
    serverapp = services["superexec-serverapp"]["command"]
    assert serverapp[serverapp.index("--runtime-api-address") + 1] == f"superlink:{link['command'][link['command'].index('--port') + 1]}"
    for k, site in enumerate(sites):
        node = services[f"supernode-{site}"]
        command = node["command"]
        assert node["image"] == f"flwr/supernode:{flwr}"
        assert flags(command) == flags(tested.supernode_command(k, Path("key"))) | {"--isolation"}
        assert command[command.index("--node-config") + 1] == f"site='{site}' data-path='/data/scans'"
        assert command[command.index("--auth-supernode-private-key") + 1] == f"/credentials/keys/{site}"
        app = services[f"clientapp-{site}"]
        assert app["command"][app["command"].index("--runtime-api-address") + 1] == f"supernode-{site}:9094"
        assert f"../data/multi-site/{site}:/data/scans:ro" in app["volumes"]
        assert site in services["register"]["command"][0]  # its key is registered before it joins
    scans = [v for svc in services.values() for v in svc.get("volumes", []) if ":/data/scans" in v]
    assert len(scans) == len(set(scans)) == len(sites)  # one folder per site, mounted once
    assert not any("hospital" in v for v in services["superexec-serverapp"]["volumes"])
    auditor = services["auditor"]["command"]
    assert auditor[0] == "deploy" and load_scenario(REPO / auditor[1]).data.multi_site

    dockerfile = (REPO / "docker" / "app.Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={flwr}" in dockerfile and "FROM flwr/superexec:${FLWR_VERSION}" in dockerfile
    assert dockerfile.index("pip install .") < dockerfile.index("COPY --chown=app:app fedmia")  # deps cached
    # the SuperExec's task poll as the tested loopback deployment sets it
    from fedmia.deploy import TASK_POLL_INTERVAL

    assert f"FLWR_SUPEREXEC_TASK_POLL_INTERVAL={TASK_POLL_INTERVAL}" in dockerfile
    assert tested.env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == TASK_POLL_INTERVAL
    assert {".git", ".venv", "runs", "data", "docker/credentials"} <= set((REPO / ".dockerignore").read_text().split())

    script = (REPO / "docker" / "credentials.sh").read_text()
    assert "fedmia credentials credentials --host superlink" in script
    folder = write_credentials(tmp_path / "credentials", sites, ("superlink", "localhost", "127.0.0.1"))
    mounted = {"ca.crt", "server.pem", "server.key", *(f"keys/{s}" for s in sites), *(f"keys/{s}.pub" for s in sites)}
    assert all((folder / name).is_file() for name in mounted)
    certificate = x509.load_pem_x509_certificate((folder / "server.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "superlink" in names.get_values_for_type(x509.DNSName)


def test_deploy_needs_a_transport_and_evaluate_a_multi_site_run(tmp_path):
    from typer.testing import CliRunner

    from conftest import REPO
    from fedmia.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["deploy", str(REPO / "scenarios" / "multi-site.yaml"), "--superlink", "a:9093"])
    assert result.exit_code == 2 and "--root-certificates CA_FILE (TLS) or --insecure" in result.stderr
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--manifests", str(tmp_path)])
    assert result.exit_code == 2 and "not a fedmia run folder" in result.stderr
