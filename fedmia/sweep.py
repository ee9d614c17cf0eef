"""`fedmia sweep FILE`: one base scenario, one or two parameters varied, a privacy–utility table.

Sweep file:
    name: sweep-dp
    base: dp-local.yaml                 # relative to the sweep file
    set: {defenses.dp.mode: local}      # optional fixed overrides (dotted keys)
    parameters:                         # one or two dotted keys, each with its values
      defenses.dp.noise_multiplier: [0.5, 1.0, 2.0]

Every point is a full run in `OUT/point-NN/`. A point whose folder already holds a finished run
of the identical resolved scenario is reused, not rerun — so an interrupted sweep resumes and
a widened sweep only runs what is new.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedmia.evaluation.plots import _new_figure
from fedmia.evaluation.schema import RunMetrics
from fedmia.io import save_figure_atomic, write_text_atomic
from fedmia.scenario import Scenario, ScenarioError, read_yaml
from fedmia.validation import parse_scenario


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base: str
    set: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, list[Any]]
    labels: list[str] | None = Field(None, description="one label per point, in order (default: the values)")

    @field_validator("parameters")
    @classmethod
    def _one_or_two(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not 1 <= len(value) <= 2:
            raise ValueError(f"expected one or two parameters, found {len(value)}")
        for key, values in value.items():
            if not values:
                raise ValueError(f"{key}: expected at least one value")
        return value


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = copy.deepcopy(value)


def load_sweep(path: Path) -> tuple[SweepSpec, list[tuple[dict, Scenario]]]:
    """The sweep and its points (parameter values, validated scenario), or a ScenarioError."""
    source = str(path)
    try:
        spec = SweepSpec.model_validate(read_yaml(path))  # the one checked reader (duplicate keys, UTF-8)
    except ValidationError as error:
        raise ScenarioError(source, [(".".join(map(str, e["loc"])) or "(top level)", e["msg"]) for e in error.errors()]) from None
    base_path = Path(path).parent / spec.base
    if not base_path.is_file():
        raise ScenarioError(source, [("base", f"expected a scenario file, found no file at {base_path}")])
    base = read_yaml(base_path)
    keys = list(spec.parameters)
    points = []
    for i, values in enumerate(itertools.product(*spec.parameters.values())):
        raw_point = copy.deepcopy(base)
        for key, value in spec.set.items():
            set_dotted(raw_point, key, value)
        assignment = dict(zip(keys, values))
        for key, value in assignment.items():
            set_dotted(raw_point, key, value)
        raw_point["name"] = f"{spec.name}-{i:02d}"
        try:
            scenario = parse_scenario(raw_point, f"{source} (point {i}: {assignment})")
        except ScenarioError as error:
            raise error from None
        points.append((assignment, scenario))
    if spec.labels is not None and len(spec.labels) != len(points):
        raise ScenarioError(source, [("labels", f"expected {len(points)} labels, found {len(spec.labels)}")])
    return spec, points


def run_or_reuse(folder: Path, scenario: Scenario, console=None) -> tuple[RunMetrics, str]:
    """A point's metrics: reused when `folder` holds a finished run of exactly `scenario` (its
    completion record says so), resumed when it holds that scenario's unfinished run, else run
    anew — a run of another scenario there is moved aside, never reported. Returns (metrics,
    'reused' | 'resumed' | 'ran')."""
    from fedmia.evaluation.run import finished_run
    from fedmia.runfolder import state
    from fedmia.runner import run_scenario
    from fedmia.scenario import read_yaml

    finished = finished_run(folder, scenario)
    if finished is not None:
        return finished.metrics, "reused"
    resume = False
    if state(folder) == "unfinished":
        try:
            resume = read_yaml(folder / "scenario.yaml") == scenario.resolved()
        except ScenarioError:
            resume = False
    return run_scenario(scenario, folder, console=console, resume=resume, force=not resume), (
        "resumed" if resume else "ran")


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: its label, the values it set, and its run's typed figures."""

    label: str
    assignment: dict[str, Any]
    metrics: RunMetrics
    folder: Path

    @property
    def epsilon(self) -> float | None:
        return self.metrics.privacy.epsilon if self.metrics.privacy else None

    def figure(self, attack: str, metric: str) -> tuple[float | None, list | None]:
        """(value, 95% interval) of an attack's `auc` or TPR at 1% FPR (`tpr@1%`)."""
        m = self.metrics.attacks[attack]
        if metric == "auc":
            return m.auc, m.ci.auc if m.ci else None
        return m.tpr_at_fpr.get("0.01"), m.ci.tpr_at_fpr.get("0.01") if m.ci else None

    def csv_row(self) -> dict:
        """One line of sweep.csv: the label, the swept values, utility, ε, then each attack's
        AUC and TPR at 1% FPR with their intervals (JSON) — column names are the table's."""
        row = {"label": self.label,
               **{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in self.assignment.items()},
               "dice": self.metrics.utility.dice, "miou": self.metrics.utility.miou, "epsilon": self.epsilon,
               "run": str(self.folder)}
        for attack in self.metrics.attacks:
            for metric in ("auc", "tpr@1%"):
                value, interval = self.figure(attack, metric)
                row[f"{attack}.{metric}"] = value
                row[f"{attack}.{metric}.ci"] = json.dumps(interval) if interval else None
        return row


def run_sweep(path: Path, out_dir: Path, console=None) -> list[SweepPoint]:
    spec, points = load_sweep(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    swept = []
    done: dict[str, RunMetrics] = {}
    for i, (assignment, scenario) in enumerate(points):
        folder = out_dir / f"point-{i:02d}"
        key = json.dumps({**scenario.resolved(), "name": None}, sort_keys=True)
        if key in done:  # the same resolved scenario as an earlier point (names aside)
            metrics, how = done[key], "same as an earlier point"
        else:
            if console is not None:
                console.print(f"[bold]point {i}[/]: {assignment}")
            metrics, how = run_or_reuse(folder, scenario, console)
        if console is not None and how != "ran":
            console.print(f"[bold]point {i}[/]: {assignment} — {how}")
        done[key] = metrics
        label = spec.labels[i] if spec.labels else ", ".join(f"{k.split('.')[-1]}={v}" for k, v in assignment.items())
        swept.append(SweepPoint(label, assignment, metrics, folder))
    _write_csv(out_dir / "sweep.csv", [point.csv_row() for point in swept])
    plot_privacy_utility(swept, out_dir / "privacy_utility.png", title=spec.name)
    return swept


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _ordered(points: list[SweepPoint]) -> bool:
    """Lines join points only along one numeric swept parameter (σ, ε): categorical points
    (none, argmax, crop, DP…) have no order, and a line through them would mean nothing."""
    swept = list(points[0].assignment)
    return len(swept) == 1 and all(isinstance(p.assignment.get(swept[0]), (int, float))
                                   and not isinstance(p.assignment.get(swept[0]), bool) for p in points)


def plot_privacy_utility(points: list[SweepPoint], path: Path, *, title: str) -> None:
    """x: Dice; y: each attack's TPR@1% FPR (left) and AUC (right) with 95% interval bars;
    points labelled (ε); lines only when the swept parameter is ordered."""
    from fedmia.evaluation.plots import distinct_colours

    attacks = sorted({a for p in points for a in p.metrics.attacks})
    ordered = _ordered(points)
    colours = dict(zip(attacks, distinct_colours(len(attacks))))
    fig = _new_figure((11.0, 5.0))
    for ax, metric, name in ((fig.add_subplot(1, 2, 1), "tpr@1%", "TPR at 1% FPR"),
                             (fig.add_subplot(1, 2, 2), "auc", "ROC AUC")):
        for attack in attacks:
            shown = [(p, *p.figure(attack, metric)) for p in points if attack in p.metrics.attacks]
            shown = [(p, v, ci) for p, v, ci in shown if v is not None]
            if not shown:
                continue
            x = [p.metrics.utility.dice for p, _, _ in shown]
            y = [v for _, v, _ in shown]
            cis = [ci if ci else [v, v] for _, v, ci in shown]
            errors = [[max(0.0, v - lo) for v, (lo, _) in zip(y, cis)], [max(0.0, hi - v) for v, (_, hi) in zip(y, cis)]]
            ax.errorbar(x, y, yerr=errors, fmt="o-" if ordered else "o", color=colours[attack], label=attack,
                        capsize=3, markersize=4, linewidth=1)
        for i, p in enumerate(points):  # one label per point, above its strongest attack, staggered
            values = [v for a in attacks if a in p.metrics.attacks and (v := p.figure(a, metric)[0]) is not None]
            if values:
                eps = p.epsilon
                text = p.label + (f" (ε={eps:.3g})" if isinstance(eps, (int, float)) and math.isfinite(eps) else "")
                ax.annotate(text, (p.metrics.utility.dice, max(values)), fontsize=7, xytext=(4, 6 + 8 * (i % 3)),
                            textcoords="offset points", arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
        ax.set_xlabel("Dice on held-out data (utility)")
        ax.set_ylabel(name + " (95% interval)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: privacy vs utility" + ("" if ordered else " (unordered settings: points only)"))
    save_figure_atomic(fig, path, dpi=120)
