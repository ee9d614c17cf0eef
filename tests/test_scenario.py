"""Scenario parsing and every error path of `fedmia validate` / `fedmia run` (exit 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedmia.cli import app
from fedmia.scenario import ScenarioError
from fedmia.validation import load_scenario
from fedmia.sweep import load_sweep

from conftest import REPO, alive, child_pids

runner = CliRunner()


def test_shipped_scenarios_validate():
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "parameters" in raw:  # a sweep file: every point must validate
            spec, points = load_sweep(path)
            assert len(points) >= 2, path
            continue
        load_scenario(path)


def test_defaults_are_filled_in(write_scenario):
    scenario = load_scenario(write_scenario({}))
    resolved = scenario.resolved()
    assert resolved["federation"]["lr"] == 0.01
    assert resolved["evaluation"]["tpr_at_fpr"] == [0.001, 0.01]
    assert scenario.clients_per_round == 2


@pytest.mark.parametrize(
    "changes, raw, where, expected",
    [
        (None, "name: x\ndata: {dataset: shapes\n", "line", "YAML syntax error"),
        ({"federation": {"rounds": "many"}}, None, "federation.rounds", "valid integer"),
        ({"federation": {"roundz": 3}}, None, "federation.roundz", "unknown key"),
        ({"data": {"dataset": "imagenet"}}, None, "data.dataset", "unknown dataset 'imagenet'"),
        ({"model": {"arch": "Transformer9000"}}, None, "model.arch", "unknown model architecture"),
        ({"model": {"encoder": "resnet9000"}}, None, "model.encoder", "unknown smp encoder"),
        ({"attacks": ["loss", "telepathy"]}, None, "attacks.1.name", "unknown attack 'telepathy'"),
        ({"server": {"strategy": "evil"}}, None, "server.strategy", "unknown server strategy"),
        ({"server": {"nonsense": 1}}, None, "server.nonsense", "unknown key"),
        ({"federation": {"clients": 50}}, None, "federation.clients", "cannot share 12 member records"),
        ({"federation": {"clients_per_round": 3}}, None, "federation.clients_per_round", "at most"),
        ({"evaluation": {"targets": {"members": 99}}}, None, "evaluation.targets.members", "at most"),
        ({"evaluation": {"tpr_at_fpr": [0.5, 2.0]}}, None, "evaluation.tpr_at_fpr", "(0, 1)"),
        ({"data": {"image_size": 18}}, None, "data.image_size", "multiple of"),
        ({"model": {"arch": "FPN", "encoder_depth": 3}, "data": {"image_size": 16}}, None, "model", "expected the input size"),
        (None, "- just\n- a list\n", "(top level)", "expected a mapping"),
        (None, "name: x\nseed: 1\nseed: 2\n", "line 3", "duplicate key 'seed' (first on line 2)"),
        ({"faults": {"crash": [{"round": 1, "client": 7}]}}, None, "faults.crash.0.client", "below federation.clients"),
        ({"faults": {"crash": [{"round": 9, "client": 0}]}}, None, "faults.crash.0.round", "1..federation.rounds"),
        ({"defenses": {"firewall": True}}, None, "defenses.firewall", "unknown defense 'firewall'"),
        ({"data": {"members": 4_000_000, "image_size": 512}}, None, "data", "more than this machine's"),
        ({"defenses": {"dp": {"mode": "local", "noise_multiplier": 1.0, "sigma": 2}}}, None,
         "defenses.dp.sigma", "unknown key"),
        ({"defenses": {"dp": {"mode": "central", "noise_multiplier": 1.0, "engine": "torch.func"}}}, None,
         "defenses.dp.engine", "expected auto in central mode"),
        ({"defenses": {"dp": {"mode": "central", "noise_multiplier": 1.0, "clipping": "adaptive"}}}, None,
         "defenses.dp.clipped_count_stddev", "needs a clipped-count noise std above 0.5; found 0.1"),
        ({"model": {"arch": "Linknet", "encoder_depth": 5}, "data": {"image_size": 32},
          "defenses": {"dp": {"mode": "local", "noise_multiplier": 1.0, "engine": "bookkeeping"}}}, None,
         "defenses.dp.engine", "ConvTranspose2d"),
    ],
)
def test_validate_errors_name_file_key_and_exit_2(write_scenario, changes, raw, where, expected):
    path = write_scenario(changes, raw=raw)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {where}"), text
    assert expected in text

    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: {where}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("changes, where", [
    ({"federation": {"roundz": 3}}, "federation.roundz"),  # the schema: Ray never starts
    ({"attacks": ["loss", "telepathy"]}, "attacks.1.name"),  # a plug-in: found while Ray starts
])
def test_run_rejects_bad_input_with_exit_2_and_stops_the_ray_it_started(write_scenario, tmp_path, changes, where,
                                                                         stops_its_processes):
    """`fedmia run` starts Ray beside its validation (fedmia.ray_start); a file that fails there
    exits 2 with the same message as `fedmia validate`, and leaves no Ray running."""
    import ray

    path = write_scenario(changes)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert f"{path}: {where}" in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not ray.is_initialized()
    assert not [p for p in child_pids() if alive(p) and "ray" in Path(f"/proc/{p}/cmdline").read_text()]
    assert not (tmp_path / "run").exists()


def test_a_file_that_is_not_utf8_text_is_a_usage_error(tmp_path):
    path = tmp_path / "scan.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x00binary")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"{path}: (file): expected UTF-8 text, found byte 0xff at offset 8" in result.stderr


def test_a_schema_error_is_rejected_without_importing_torch_or_flwr(write_scenario):
    """`fedmia validate` on a typo stays cheap: the schema alone rejects it (< 2 s; bench-free)."""
    path = write_scenario({"federaton": {"rounds": 3}})
    code = ("import sys; from typer.testing import CliRunner; from fedmia.cli import app; "
            f"r = CliRunner().invoke(app, ['validate', {str(path)!r}]); "
            "print(r.exit_code, 'torch' in sys.modules, 'flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["2", "False", "False"], out.stdout + out.stderr


def test_missing_file_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: (file): cannot be read" in result.stderr


def test_console_script_reports_without_traceback(write_scenario):
    """The installed `fedmia` entry point, as a user runs it."""
    path = write_scenario({"federation": {"clients": "four"}})
    proc = subprocess.run([sys.executable, "-m", "fedmia.cli", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{path}: federation.clients:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_data_problem_at_run_time_is_a_usage_error(write_scenario, tmp_path):
    path = write_scenario()
    raw = yaml.safe_load(path.read_text())
    raw["data"].update(dataset="folder", options={"path": str(tmp_path / "absent")})
    path.write_text(yaml.safe_dump(raw))
    for command in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "run")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert f"{path}: data: folder: path" in result.stderr and "absent" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
    import ray

    assert not ray.is_initialized()  # started beside the checks, stopped on the data problem


def test_a_worker_rebuilds_the_shipped_scenario_without_importing_attacks(write_scenario):
    """A Ray worker rebuilds the shipped scenario (`scenario_from_canonical`) before its first
    fit: the defense blocks come back validated, and no attack, strategy, scipy or
    scikit-learn is imported for it (that cost each worker ~1.3 s of warm-up)."""
    scenario = load_scenario(write_scenario({"defenses": {"dp": {"mode": "local", "noise_multiplier": 1.5}}}))
    code = ("import sys; import fedmia.client_app; from fedmia.validation import scenario_from_canonical; "
            "s = scenario_from_canonical(sys.stdin.read()); "
            "print(type(s.defenses.root['dp']).__name__, s.defenses.root['dp'].noise_multiplier, "
            "*(m in sys.modules for m in ('fedmia.attacks', 'strategies', 'scipy', 'sklearn')))")
    out = subprocess.run([sys.executable, "-c", code], input=scenario.canonical(), capture_output=True,
                         text=True, cwd=REPO)
    assert out.stdout.split() == ["DPParams", "1.5", "False", "False", "False", "False"], out.stdout + out.stderr


def test_process_age_counts_from_the_process_start():
    """`fedmia run` starts its clock with the process (imports included) via fedmia.io.process_age."""
    code = "import time; time.sleep(1.0); from fedmia.io import process_age; print(process_age())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    age = float(out.stdout.strip())
    assert 1.0 <= age < 60, age


MULTI_SITE = {
    "name": "sites", "seed": 0,
    "data": {"dataset": "folder", "image_size": 16, "options": {"channels": 3},
             "sites": [{"name": "a"}, {"name": "b"}], "auditor": {"targets": "t", "population": "p", "test": "x"}},
    "model": {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 2},
    "federation": {"clients": 2, "rounds": 1},
}


@pytest.mark.parametrize("changes, where, expected", [
    ({"data": {"members": 40}}, "data.members", "has no meaning with data.sites"),
    ({"data": {"partition": {"kind": "dirichlet"}}}, "data.partition", "has no meaning with data.sites"),
    ({"federation": {"clients": 3}}, "federation.clients", "one client per site in data.sites (2), found 3"),
    ({"data": {"dataset": "shapes"}}, "data.dataset", "expected 'folder'"),
    ({"data": {"auditor": None}}, "data.auditor", "required with data.sites"),
    ({"data": {"sites": [{"name": "a"}, {"name": "a"}]}}, "data.sites.1.name", "named once"),
    ({"data": {"sites": [{"name": "a b"}, {"name": "b"}]}}, "data.sites.0.name", "pattern"),
    ({"data": {"options": {"mask_mode": "index"}}}, "data.options.num_classes", "agree on the classes"),
    ({"data": {"options": {"path": "/scans"}}}, "data.options.path", "each site has its own folder"),
    ({"evaluation": {"targets": {"members": 5}}}, "evaluation.targets", "the sites' to tell"),
    ({"defenses": {"laplace": {"fit_on": "members"}}}, "defenses.laplace.fit_on", "never holds"),
])
def test_multi_site_scenario_problems_name_the_key(write_scenario, changes, where, expected):
    from conftest import deep_update

    path = write_scenario(raw=yaml.safe_dump(deep_update(MULTI_SITE, changes)))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert f"{path}: {where}" in str(caught.value) and expected in str(caught.value), str(caught.value)


def test_a_multi_site_run_folder_scenario_reloads(tmp_path, write_scenario):
    """A run folder's scenario.yaml spells out every default; it must load again (resume, evaluate)."""
    scenario = load_scenario(write_scenario(raw=yaml.safe_dump(MULTI_SITE)))
    saved = tmp_path / "saved.yaml"
    saved.write_text(scenario.to_yaml())
    assert load_scenario(saved).resolved() == scenario.resolved()
    absolute = scenario.with_absolute_paths(tmp_path, keep_site_paths=False)
    assert absolute.data.auditor.targets == str(tmp_path / "t") and absolute.data.sites[0].path is None


def test_simulating_sites_without_their_folders_is_a_usage_error(write_scenario):
    path = write_scenario(raw=yaml.safe_dump(MULTI_SITE))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"{path}: data" in result.stderr
