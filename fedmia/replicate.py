"""`fedmia replicate FILE --seeds N`: N independent federations of one scenario.

Seed k runs the scenario with `seed: base + k` — a new member draw, partition, initialisation,
client seeds and target list — in `OUT/seed-KK/`. A seed whose folder already holds a finished
run of the identical scenario is reused (the sweep's rule), so an interrupted replication resumes.
Every numeric figure of metrics.json gets its mean over seeds and a 95% Student-t interval
(`replicate.json`, `replicate.csv`); `replicate_roc.png` overlays every seed's ROC per attack.
Two settings differ where their across-seed intervals do not overlap.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmia.evaluation.compare import run_scores
from fedmia.evaluation.metrics import roc_points
from fedmia.evaluation.plots import _new_figure, distinct_colours, finish_roc_axes
from fedmia.evaluation.figures import Figure, across_seeds
from fedmia.evaluation.run import Run
from fedmia.evaluation.schema import RunMetrics, figures
from fedmia.io import save_figure_atomic, write_json_atomic, write_text_atomic
from fedmia.runfolder import completion
from fedmia.scenario import Scenario

def summarise(per_seed: list[RunMetrics], level: float = 0.95) -> dict[str, Figure]:
    """Every figure's mean, standard deviation and Student-t interval across seeds (a rate's
    clipped to [0, 1], as its definition in the schema declares)."""
    series: dict[str, list[float]] = {}
    rates: dict[str, bool] = {}
    for metrics in per_seed:
        for key, value in figures(metrics).items():
            series.setdefault(key, []).append(value.value)
            rates[key] = value.rate
    out = {key: across_seeds(values, rates[key], level) for key, values in series.items()}
    return {key: figure for key, figure in out.items() if figure is not None}


@dataclass(frozen=True)
class Replication:
    """N seeds of one scenario: each seed's run (typed, in memory) and every figure across them."""

    scenario: str
    seeds: list[int]
    runs: list[Run]
    figures: dict[str, Figure]


def run_replicate(scenario: Scenario, seeds: int, out_dir: Path, console=None,
                  manifests: Path | None = None, train=None) -> Replication:
    """`manifests`: the sites' manifests of a multi-site scenario (its seeds change the
    initialisation and the clients' seeds, not the sites' records), joined with each seed's run.
    `train(folder, scenario, console) -> (metrics, how)` trains or reuses one seed: fedmia's own
    federation by default (`sweep.run_or_reuse`), a user's Flower app with `audit_app.AppRuns`."""
    from fedmia.evaluation.manifests import evaluate_with_manifests
    from fedmia.sweep import run_or_reuse

    if scenario.data.multi_site and manifests is None:
        raise ValueError("a multi-site scenario's membership comes from its sites: give --manifests DIR")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_seed, folders, runs = [], [], []
    for k in range(seeds):
        point = scenario.model_copy(update={"seed": scenario.seed + k, "name": f"{scenario.name}-seed{scenario.seed + k}"})
        folder = out_dir / f"seed-{k:02d}"
        if console is not None:
            console.print(f"[bold]seed {point.seed}[/]")
        metrics, how = (train or run_or_reuse)(folder, point, console)
        if console is not None and how != "ran":
            console.print(f"[bold]seed {point.seed}[/] — {how}")
        if scenario.data.multi_site:
            metrics = evaluate_with_manifests(point, folder, manifests)
        per_seed.append(metrics)
        folders.append(folder)
        runs.append(Run(folder, metrics, completion(folder)))
    summary = summarise(per_seed)
    result = Replication(scenario.name, [scenario.seed + k for k in range(seeds)], runs, summary)
    write_json_atomic(out_dir / "replicate.json", {
        "scenario": result.scenario, "seeds": result.seeds, "runs": [str(f) for f in folders],
        "interval": "95% Student t across seeds", "figures": {key: fig.to_json() for key, fig in summary.items()}})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["figure", "mean", "ci_low", "ci_high", "sd", "n", *[f"seed {s}" for s in result.seeds]])
    for key, fig in summary.items():
        writer.writerow([key, repr(fig.mean), repr(fig.low), repr(fig.high), repr(fig.sd), fig.n,
                         *[repr(v) for v in fig.values]])
    write_text_atomic(out_dir / "replicate.csv", buffer.getvalue())
    plot_replicate_roc(folders, out_dir / "replicate_roc.png", title=f"{scenario.name}: {seeds} seeds")
    return result


def plot_replicate_roc(folders: list[Path], path: Path, *, title: str) -> None:
    """Every seed's log-log ROC, one colour per attack."""
    runs = [run_scores(folder) for folder in folders]
    attacks = list(dict.fromkeys(name for _, _, scores in runs for name in scores))
    fig = _new_figure((5.5, 5.0))
    ax = fig.add_subplot()
    floor = 1.0 / max(int((~member).sum()) for _, member, _ in runs)
    for colour, attack in zip(distinct_colours(len(attacks)), attacks):
        for i, (_, member, scores) in enumerate(runs):
            if attack in scores:
                fpr, tpr = roc_points(scores[attack], member)
                ax.plot(np.clip(fpr, floor, 1), np.clip(tpr, floor, 1), color=colour, linewidth=1,
                        alpha=0.8, label=attack if i == 0 else None)
    finish_roc_axes(ax, floor, title + " (one line per seed)")
    save_figure_atomic(fig, path, dpi=150)
