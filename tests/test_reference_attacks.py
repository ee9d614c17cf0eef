"""LiRA / RMIA / shadow attacks on a real (tiny) federation; the reference-model cache; OOD."""

from __future__ import annotations

import pytest

from fedmia.pipeline import finish_run
from fedmia.runner import run_scenario
from fedmia.transcript import Transcript
from fedmia.validation import load_scenario

ATTACKS = [{"name": n, "models": 4, "epochs": 2} for n in
           ("lira-online", "lira-offline", "rmia", "shadow-type1", "shadow-type2", "shadow-lossmap",
            "global-loss", "salem")]


# slow: the reference attacks, their shared models and their cache are tested
# without Ray in tests/test_attacks.py
@pytest.mark.slow
def test_reference_attacks_cache_and_ood(write_scenario, tmp_path, stops_its_processes, monkeypatch):
    from fedmia.attacks import reference_models as reference

    trained = []
    original = reference.ReferenceModels.weights

    def counting(self, index):
        before = self.trained
        weights = original(self, index)
        if self.trained > before:
            trained.append(index)
        return weights

    monkeypatch.setattr(reference.ReferenceModels, "weights", counting)
    scenario = load_scenario(write_scenario({
        "attacks": ["loss"] + ATTACKS,
        "runtime": {"cache_dir": str(tmp_path / "cache")},
        "evaluation": {"ood_count": 8, "ood": ["heldout", "noise", "other-dataset", "scaled", "permuted",
                                               "optimised-fakes"]}}))
    metrics = run_scenario(scenario, tmp_path / "first").as_json()
    assert sorted(trained) == [0, 1, 2, 3]  # four reference models, each trained once, shared by all
    assert len(list((tmp_path / "cache" / "reference").glob("*.npz"))) == 4
    for spec in ATTACKS:
        m = metrics["attacks"][spec["name"]]
        assert 0 <= m["auc"] <= 1 and m["n_members"] > 0
    # every attack has an OOD row for every set; those with a threshold also at that threshold
    assert set(metrics["ood_at_tpr50"]) == {"loss", *(a["name"] for a in ATTACKS)}
    for rates in metrics["ood_at_tpr50"].values():
        assert set(rates) == {"heldout", "noise", "other-dataset", "scaled", "permuted", "optimised-fakes"}
        assert all(0 <= v <= 1 for v in rates.values())
    assert "loss" in metrics["ood"] and "lira-online" not in metrics["ood"]

    # Reruns of the attacks on the same transcript (the federation is not what is cached).
    transcript = Transcript.load(tmp_path / "first" / "transcript")
    trained.clear()
    again = finish_run(scenario, transcript, tmp_path / "second", timing={}).as_json()
    assert trained == []  # warm cache: no reference model trained
    for spec in ATTACKS:
        assert again["attacks"][spec["name"]]["auc"] == pytest.approx(metrics["attacks"][spec["name"]]["auc"])

    # a cold cache elsewhere retrains the same reference models: same scores, run to run
    trained.clear()
    cold = scenario.model_copy(update={"runtime": scenario.runtime.model_copy(update={"cache_dir": str(tmp_path / "cold")})})
    third = finish_run(cold, transcript, tmp_path / "third", timing={}).as_json()
    assert sorted(trained) == [0, 1, 2, 3]
    for spec in ATTACKS:
        assert third["attacks"][spec["name"]]["auc"] == pytest.approx(metrics["attacks"][spec["name"]]["auc"])
