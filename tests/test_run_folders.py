"""Run folders hold one run and say whether it finished (fedmia/runfolder.py): a second run into
a finished folder is refused and leaves it byte for byte; --force moves the old run aside; a folder
whose run never completed — or completed for another scenario — is never reused or reported."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedmia.io import write_json_atomic, write_text_atomic
from fedmia.pipeline import prepare_run_folder
from fedmia.evaluation.run import finished_run
from fedmia.runfolder import RunFolderError, claim, complete, state
from fedmia.validation import load_scenario

from conftest import REPO

CLI = [sys.executable, "-m", "fedmia.cli"]


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_finished_run(folder: Path, scenario) -> None:
    """What a finished run leaves: its scenario first, results, the completion record last."""
    claim(folder, scenario)
    (folder / "transcript").mkdir()
    write_text_atomic(folder / "transcript" / "index.json", "{}")
    write_json_atomic(folder / "metrics.json", {"scenario": scenario.name, "setup": {}, "attacks": {},
                                                "utility": {"dice": 0.5, "miou": 0.4, "rounds": []}})
    complete(folder, scenario, wall_s=1.0)


def test_second_run_is_refused_and_force_moves_the_old_run_aside(tmp_path, write_scenario):
    scenario = load_scenario(write_scenario())
    folder = tmp_path / "run"
    write_finished_run(folder, scenario)
    before = digests(folder)
    assert state(folder) == "finished" and finished_run(folder, scenario).metrics.utility.dice == 0.5

    with pytest.raises(RunFolderError, match="already holds a finished run.*--force"):
        prepare_run_folder(folder, scenario)
    with pytest.raises(RunFolderError, match="has finished"):
        prepare_run_folder(folder, scenario, resume=True)
    assert digests(folder) == before  # refused: not one byte changed

    moved = claim(folder, scenario, force=True)
    assert moved is not None and moved.name.startswith("run.replaced-")
    assert digests(moved) == before  # kept, whole, beside the new run
    assert state(folder) == "unfinished" and sorted(p.name for p in folder.iterdir()) == ["scenario.yaml"]


def test_a_run_that_did_not_complete_never_reads_as_finished(tmp_path, write_scenario):
    """The stale-figure path of old: a new scenario written beside an older run's metrics.json."""
    scenario = load_scenario(write_scenario())
    other = load_scenario(write_scenario({"seed": 7}, name="other.yaml"))
    folder = tmp_path / "run"
    write_finished_run(folder, scenario)
    assert finished_run(folder, other) is None  # a finished run, but of another scenario
    (folder / "completed.json").unlink()  # results written, completion record not (killed, failed)
    assert state(folder) == "unfinished"
    assert finished_run(folder, scenario) is None


@pytest.mark.parametrize("kind", ["file", "foreign"])
def test_a_file_or_a_folder_that_holds_no_run_is_refused_untouched(tmp_path, write_scenario, kind):
    scenario = write_scenario()
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("not a folder")
        expected = "is a file, not a folder"
    else:
        (target / "transcript").mkdir(parents=True)
        (target / "transcript" / "notes.txt").write_text("someone's work")
        expected = "holds files but no fedmia run"
    before = target.read_bytes() if kind == "file" else digests(target)
    for force in ([], ["--force"]):
        result = subprocess.run([*CLI, "run", str(scenario), "--out", str(target), *force], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert (target.read_bytes() if kind == "file" else digests(target)) == before


def test_yaml_whose_aliases_expand_exponentially_is_refused_at_once(tmp_path):
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(12):  # 9**13 values once expanded, from a 1 KB file
        previous = "a" if i == 0 else f"b{i - 1}"
        lines.append(f"b{i}: &b{i} [{', '.join(['*' + previous] * 9)}]")
    lines.append("name: bomb")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    result = subprocess.run([*CLI, "validate", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"{path}: (yaml): the document expands to more than 200,000 values through "
                                     "its aliases (&anchor / *alias); expected a scenario of ordinary size")


def test_a_ray_address_where_nothing_listens_fails_in_bounded_time_naming_it(tmp_path, write_scenario):
    import socket
    import time

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scenario = write_scenario({"runtime": {"ray_address": f"127.0.0.1:{port}"}})
    started = time.monotonic()
    result = subprocess.run([*CLI, "run", str(scenario), "--out", str(tmp_path / "run")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60  # ray.init alone retried for over two minutes
    assert result.returncode == 2, result.stderr
    assert f"runtime.ray_address: nothing answers at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_local_run_starts_a_ray_of_its_own_and_a_cluster_run_joins_the_cluster(write_scenario):
    """Without `runtime.ray_address`, ray.init gets address "local": with none, it joins the
    cluster a `ray start` left running on the machine, whose resources then refuse num_cpus."""
    from fedmia.ray_start import backend_config

    local = backend_config(load_scenario(write_scenario({"runtime": {"total_cpus": 2}})))["init_args"]
    assert local["address"] == "local" and local["num_cpus"] == 2
    cluster = backend_config(load_scenario(write_scenario({"runtime": {"ray_address": "10.0.0.5:6379"}})))["init_args"]
    assert cluster["address"] == "10.0.0.5:6379" and "num_cpus" not in cluster


def test_metrics_json_has_one_schema_and_a_renamed_figure_fails_loudly(tmp_path):
    from fedmia.evaluation.schema import MetricsError, check_metrics, figures
    from fedmia.replicate import summarise

    row = {"auc": 0.8, "tpr_at_fpr": {"0.01": 0.2}, "balanced_accuracy": 0.7, "n_members": 10, "n_nonmembers": 100}
    metrics = {"scenario": "s", "setup": {}, "utility": {"dice": 0.6, "miou": 0.7, "rounds": []},
               "attacks": {"loss": row}, "privacy": {"epsilon": 3.0, "audit": {"epsilon_lower": 0.5}}}
    found = figures(check_metrics(metrics))
    assert {k: v.value for k, v in found.items()} == {
        "attacks.loss.auc": 0.8, "attacks.loss.tpr_at_fpr.0.01": 0.2, "attacks.loss.balanced_accuracy": 0.7,
        "utility.dice": 0.6, "utility.miou": 0.7, "privacy.epsilon": 3.0, "privacy.audit.epsilon_lower": 0.5}
    # a rate or not, as the figure's definition declares (an ε's interval is not clipped to [0, 1])
    assert [k for k, v in found.items() if not v.rate] == ["privacy.epsilon", "privacy.audit.epsilon_lower"]
    renamed = {**metrics, "attacks": {"loss": {**{k: v for k, v in row.items() if k != "auc"}, "roc_auc": 0.8}}}
    with pytest.raises(MetricsError, match="attacks.loss.auc: Field required"):
        check_metrics(renamed)
    typed = check_metrics(metrics)
    assert summarise([typed, typed])["attacks.loss.auc"].mean == 0.8
    epsilon = summarise([typed, check_metrics({**metrics, "privacy": {"epsilon": 5.0}})])["privacy.epsilon"]
    assert epsilon.high > 1 and not epsilon.rate

    folder = tmp_path / "run"  # compare: a folder whose metrics.json does not follow the schema
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(renamed))
    result = subprocess.run([*CLI, "compare", str(folder), "--out", str(tmp_path / "cmp")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "attacks.loss.auc: Field required" in result.stderr
