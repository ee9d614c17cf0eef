"""Pure pieces of this round's work: stop signals, the timeline stamps, the init split, NIfTI
targets in a multi-site plan, a plug-in name offered twice."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from fedmia.data.records import Records


def test_each_stop_signal_has_its_exit_code_and_the_resume_hint():
    from fedmia.stopping import Stopped, resume_with, stop_line

    resume_with("fedmia run --resume runs/x")
    assert stop_line(Stopped(signal.SIGTERM)) == ("fedmia: stopped by SIGTERM; fedmia run --resume runs/x", 143)
    assert stop_line(Stopped(signal.SIGHUP))[1] == 129
    assert stop_line(KeyboardInterrupt()) == ("fedmia: stopped by Ctrl-C; fedmia run --resume runs/x", 130)
    assert issubclass(Stopped, BaseException) and not issubclass(Stopped, Exception)  # no `except Exception` eats it


def test_timeline_stamps_only_when_asked(tmp_path, monkeypatch):
    from fedmia.timeline import mark

    monkeypatch.delenv("FEDMIA_TIMELINE", raising=False)
    mark("nothing")
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("FEDMIA_TIMELINE", str(tmp_path / "stamps"))
    mark("fit-begin", site="a", round=2)
    (line,) = next((tmp_path / "stamps").iterdir()).read_text().splitlines()
    stamp = json.loads(line)
    assert stamp["stage"] == "fit-begin" and stamp["site"] == "a" and stamp["round"] == 2 and stamp["t"] > 0


@pytest.mark.parametrize("units", [3, 8, 15, 40])
def test_init_splits_every_unit_once(units):
    from fedmia.init_scenario import _split

    members, heldout, population, clients = _split(units)
    assert members + heldout + population == units and min(members, heldout, population) >= 1
    assert 1 <= clients <= min(4, members)


def test_a_nifti_target_list_keeps_one_slice_per_scan_and_a_slice_is_its_scans_member():
    from fedmia.data.sites import ledger_from_manifests, one_slice_per_scan, scan_of

    ids = [f"folder:case_{s:03d}/{k:04d}" for s in range(3) for k in range(4)]
    records = Records(np.zeros((12, 1, 4, 4), np.float32), np.zeros((12, 4, 4), np.uint8), np.array(ids, object),
                      np.repeat(np.arange(3), 4))
    picked = one_slice_per_scan(records, seed=0)
    assert sorted(scan_of(i) for i in picked.ids) == ["folder:case_000", "folder:case_001", "folder:case_002"]
    digests = {"folder:case_000": "d0", "folder:case_001": "d1", "folder:case_002": "d2"}
    ledger = ledger_from_manifests(digests, {"d1": 0}, picked.ids)
    assert [ledger[i] for i in picked.ids if scan_of(i) == "folder:case_001"] == [0]
    assert sum(v == 0 for v in ledger.values()) == 1


def test_a_plugin_name_two_distributions_offer_is_a_conflict_naming_both(tmp_path, monkeypatch):
    from fedmia.registry import PluginConflict, Registry, conflicts_of, entry_points_of

    site = tmp_path / "site"
    for name in ("alpha", "beta"):
        info = site / f"{name}_pkg-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-pkg\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[fedmia.test-group]\nshared = {name}_pkg\nonly-{name} = {name}_pkg\n")
    monkeypatch.syspath_prepend(str(site))
    entry_points_of.cache_clear()
    try:
        clash = conflicts_of("fedmia.test-group")
        assert list(clash) == ["shared"] and {p.dist.metadata["Name"] for p in clash["shared"]} == {"alpha-pkg", "beta-pkg"}
        with pytest.raises(PluginConflict, match=r"thing 'shared' is offered by 2 installed packages: ") as caught:
            Registry("thing", "fedmia.test-group").get("shared")
        assert caught.value.exit_code == 2
        assert "alpha-pkg 1.0 (alpha_pkg)" in str(caught.value) and "beta-pkg 1.0 (beta_pkg)" in str(caught.value)
    finally:
        from fedmia.registry import _REGISTRIES

        _REGISTRIES.pop("fedmia.test-group", None)
        monkeypatch.undo()
        entry_points_of.cache_clear()


def test_a_run_lists_every_plug_in_it_names_with_package_and_version():
    from conftest import TINY
    from fedmia.plugins import plugins_used
    from fedmia.validation import parse_scenario

    used = plugins_used(parse_scenario(TINY, "tiny"))
    named = {(u["family"], u["name"]) for u in used}
    assert {("dataset", "shapes"), ("model family", "smp"), ("server strategy", "fedavg"),
            ("partitioner", "iid"), ("attack", "loss")} <= named
    assert all(u["package"] == "fedmia" and u["version"] for u in used)


@pytest.mark.parametrize("problems, hint", [
    (["tensor segmentation_head.0.weight: expected shape (2, 16, 3, 3), found (1, 16, 3, 3)"], "model.head: sigmoid"),
    (["tensor decoder.blocks.0.conv1.0.weight: expected shape (64, 192, 3, 3), found (256, 768, 3, 3)"],
     "decoder_channels [256, 128, 64, 32, 16]"),
    (["2 missing tensor(s): a, b"], "")])
def test_a_misfit_hint_names_the_likely_description(problems, hint):
    from fedmia.models import misfit_hint

    assert (hint in misfit_hint(problems)) if hint else misfit_hint(problems) == ""


@pytest.mark.parametrize("level, words", [("0.001", "1 false accusation in 1,000"), ("0.01", "1 false accusation in 100"),
                                          ("0.03", "a false-positive rate of 3%")])
def test_fpr_levels_in_words(level, words):
    from fedmia.audit.verdict import level_words

    assert level_words(level) == words


def test_the_trap_threat_model_knows_the_clients_check():
    """Under receive-check the audit's trap-weights adversary is the one that knows it: its server
    plants detectors that pass a check of the scenario's own min_open; the report then counts the
    check as tested against an adaptive adversary, and a defense with no adaptive adversary not."""
    from conftest import TINY, deep_update
    from fedmia.audit import untested_defenses
    from fedmia.threat_models import THREAT_MODELS
    from fedmia.validation import parse_scenario

    checked = parse_scenario(deep_update(TINY, {"defenses": {"receive-check": {"min_open": 0.004}}}), "tiny")
    for name in ("trap-weights", "secagg-isolation"):
        assert THREAT_MODELS.get(name)().derive(checked)["server"]["evade_min_open"] == 0.004
    assert "evade_min_open" not in THREAT_MODELS.get("trap-weights")().derive(parse_scenario(TINY, "tiny"))["server"]
    assert untested_defenses(checked) == []
    thresholded = parse_scenario(deep_update(TINY, {"federation": {"clients": 3},
                                                    "defenses": {"thresholded-secagg": {"min_clients": 2}}}), "tiny")
    assert THREAT_MODELS.get("trap-weights")().derive(thresholded)["server"]["helpers"] == 1  # t - 1
    cropped = parse_scenario(deep_update(TINY, {"defenses": {"crop": {"size": 12}}}), "tiny")
    assert untested_defenses(cropped) == ["crop"]
