"""The typed results path without a run: figures across seeds, the schema's declared rates, the
one reader of a run folder, audit rows that round-trip, and the plug-in contract."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import BaseModel
from scipy import stats

from fedmia.evaluation.figures import ACROSS_SEEDS, NO_INTERVAL, OVER_TARGETS, across_seeds, figure_of, of_one_run
from fedmia.evaluation.schema import check_metrics, figures

METRICS = {"scenario": "s", "setup": {}, "utility": {"dice": 0.6, "miou": 0.7, "rounds": []},
           "attacks": {"loss": {"auc": 0.8, "tpr_at_fpr": {"0.01": 0.2}, "n_members": 10, "n_nonmembers": 100,
                                "ci": {"auc": [0.7, 0.9], "tpr_at_fpr": {"0.01": [0.1, 0.3]}, "level": 0.95,
                                       "method": "bootstrap"}}}}


def test_a_t_interval_across_seeds_by_hand_and_a_rate_clipped_to_zero_one():
    values = [0.9, 0.95, 0.99]
    fig = across_seeds(values, rate=True)
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert fig.mean == pytest.approx(mean) and fig.sd == pytest.approx(sd) and fig.n == 3
    assert fig.low == pytest.approx(mean - half) and fig.high == 1.0  # mean + half > 1: clipped
    assert fig.interval == ACROSS_SEEDS and fig.values == tuple(values)
    epsilon = across_seeds([2.0, 4.0], rate=False)
    assert epsilon.low < 0 and epsilon.high > 4  # not a rate: not clipped


def test_seeds_without_the_figure_are_left_out_and_none_at_all_is_no_figure():
    fig = across_seeds([0.5, None, float("nan"), 0.7], rate=True)
    assert fig.n == 2 and fig.mean == pytest.approx(0.6)
    assert fig.values[:2] == (0.5, None) and math.isnan(fig.values[2])  # every seed's value, as it was
    assert across_seeds([None, float("nan")], rate=True) is None
    assert across_seeds([0.4], rate=True).high == 1.0  # one seed: no interval across seeds (infinite, clipped)


def test_one_seed_carries_the_runs_bootstrap_interval_or_says_it_has_none():
    assert (of_one_run(0.8, [0.7, 0.9]).low, of_one_run(0.8, [0.7, 0.9]).interval) == (0.7, OVER_TARGETS)
    assert of_one_run(0.8, None).interval == NO_INTERVAL and of_one_run(0.8, None).high is None
    assert of_one_run(None, [0.1, 0.2]) is None
    assert figure_of([0.8], [[0.7, 0.9]]).interval == OVER_TARGETS
    assert figure_of([0.8, 0.6], None).interval == ACROSS_SEEDS


def test_the_schema_declares_which_figures_are_rates():
    raw = {**METRICS, "privacy": {"epsilon": 3.0, "audit": {"epsilon_lower": 0.5, "epsilon_accountant": 3.1}},
           "isolation": {"cosine": -0.2, "auc_isolated": 0.9}}
    declared = {k: v.rate for k, v in figures(check_metrics(raw)).items()}
    assert not declared["privacy.epsilon"] and not declared["privacy.audit.epsilon_lower"]
    assert not declared["isolation.cosine"] and declared["isolation.auc_isolated"] and declared["attacks.loss.auc"]


def test_metrics_json_round_trips_with_the_keys_the_run_set():
    typed = check_metrics({**METRICS, "plugin_figure": {"x": 1}})
    assert typed.as_json()["plugin_figure"] == {"x": 1} and "privacy" not in typed.as_json()
    assert check_metrics(json.loads(json.dumps(typed.as_json()))).attacks["loss"].ci.auc == [0.7, 0.9]


def test_the_one_reader_names_the_file_and_key_of_a_bad_run_folder(tmp_path):
    from fedmia.evaluation.run import load_run
    from fedmia.runfolder import RunFolderError

    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    run = load_run(tmp_path)
    assert run.metrics.attacks["loss"].auc == 0.8 and run.completion is None and run.label == "s"
    (tmp_path / "metrics.json").write_text(json.dumps({**METRICS, "utility": {"dice": 0.6}}))
    with pytest.raises(RunFolderError, match=r"metrics.json: utility.miou: Field required"):
        load_run(tmp_path)
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        load_run(tmp_path)


def test_audit_rows_are_built_from_typed_runs_and_round_trip():
    from fedmia.audit.summary import AuditRow, attack_figures

    seeds = [check_metrics(METRICS), check_metrics({**METRICS, "attacks": {"loss": {**METRICS["attacks"]["loss"],
                                                                                      "auc": 0.6}}})]
    figs = attack_figures("loss", seeds, ["0.01"])
    assert figs.auc.mean == pytest.approx(0.7) and figs.auc.interval == ACROSS_SEEDS
    assert figs.targets.members == 10 and figs.metric("tpr_at_fpr.0.01") is figs.tpr["0.01"]
    assert attack_figures("rmia", seeds, ["0.01"]) is None
    one = attack_figures("loss", seeds[:1], ["0.01"])
    assert (one.auc.low, one.auc.high, one.auc.interval) == (0.7, 0.9, OVER_TARGETS)
    row = AuditRow("black-box", "scenario", attacks={"loss": figs}, strongest="loss", dice=figs.auc)
    again = AuditRow.from_json(json.loads(json.dumps(row.to_json())))
    assert again == row and again.best.auc.mean == pytest.approx(0.7)


def test_every_plug_in_carries_its_name_and_params_as_registered():
    """One contract across families: `name` and `Params` (None for a function that takes none)."""
    from fedmia.registry import Registry

    registry = Registry("thing")

    class Options(BaseModel):
        size: int = 1

    @registry.register("with-options", Options)
    def loader():
        return None

    @registry.register("plain")
    def partitioner():
        return None

    @registry.register("a-class")
    class Thing:
        Params = Options

    assert (loader.name, loader.Params) == ("with-options", Options)
    assert (partitioner.name, partitioner.Params) == ("plain", None)
    assert (Thing.name, Thing.Params) == ("a-class", Options)  # a class declares its own Params
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("plain")(lambda: None)
