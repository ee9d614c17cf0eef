"""A consortium's own Flower app (examples/flower-app: Message API, a GroupNorm U-Net with one
logit and a fixed RGB input), unchanged: it trains under Flower alone, and fedmia audits its final
model with `model: {family: module, factory: segapp.task:Net, head: sigmoid, in_channels: 3}` —
no adapter, no channels or classes asked of the network."""

from __future__ import annotations

import json
import os
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
