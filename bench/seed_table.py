"""A `fedmia sweep` over seeds × one other parameter, as one table: per value of that parameter,
each figure's mean over the seeds with a 95% Student-t interval (the interval `fedmia replicate`
reports), and the seeds it rests on.

    python bench/seed_table.py runs/defenses-seeds --figures global-loss.balanced_accuracy \\
        global-loss.auc shadow-type2.balanced_accuracy shadow-type2.auc dice
    python bench/seed_table.py runs/ood-seeds --figures max-softmax.ood.heldout \\
        max-softmax.ood.optimised-fakes max-softmax.ood.permuted max-softmax.ood.scaled \\
        max-softmax.ood.scaled-far max-softmax.ood.other-dataset max-softmax.tpr_at_threshold dice

A figure is ATTACK.KEY (a key of metrics.json's attacks.ATTACK: auc, balanced_accuracy,
tpr_at_threshold, tpr_at_fpr.0.01), ATTACK.ood.SET (the share of that OOD set the attack calls
"member" at its own threshold: metrics.json's `ood`), or dice. Reads each point's scenario.yaml
for its seed and the varied value, and metrics.json through its schema.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from fedmia.evaluation.schema import read_metrics


def t_interval(values: list[float]) -> str:
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return f"{x.mean():.3f}" if len(x) else "—"
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return f"{x.mean():.3f} [{max(x.mean() - half, 0):.3f}, {min(x.mean() + half, 1):.3f}]"


def short(value) -> str:
    """A row's label: a defenses block by its keys (and a `mode`, where it has one)."""
    if isinstance(value, dict):
        if not value:
            return "none"
        return ", ".join(k + (f" {v['mode']}" if isinstance(v, dict) and "mode" in v else "") for k, v in value.items())
    return str(value)


def figure(metrics, raw: dict, name: str) -> float | None:
    if name == "dice":
        return metrics.utility.dice
    attack, _, key = name.partition(".")
    if key.startswith("ood."):
        return (raw.get("ood") or {}).get(attack, {}).get(key[4:])
    row = metrics.attacks.get(attack)
    if row is None:
        return None
    if key.startswith("tpr_at_fpr."):
        return row.tpr_at_fpr.get(key[len("tpr_at_fpr."):])
    return getattr(row, key, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--figures", nargs="+", required=True)
    parser.add_argument("--by", default="defenses", help="the scenario key that varies besides the seed")
    args = parser.parse_args()
    groups: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, list[int]] = {}
    for point in sorted(args.sweep.glob("point-*")):
        if not (point / "completed.json").exists():
            continue  # unfinished: never read as a result
        scenario = yaml.safe_load((point / "scenario.yaml").read_text())
        metrics = read_metrics(point / "metrics.json")
        raw = json.loads((point / "metrics.json").read_text())
        value = short(scenario.get(args.by))
        seeds.setdefault(value, []).append(scenario["seed"])
        for name in args.figures:
            got = figure(metrics, raw, name)
            if got is not None:
                groups.setdefault(value, {}).setdefault(name, []).append(float(got))
    print(f"| {args.by} | seeds | " + " | ".join(args.figures) + " |")
    print("|---|---|" + "---|" * len(args.figures))
    for value, by_figure in groups.items():
        cells = [t_interval(by_figure.get(name, [])) for name in args.figures]
        print(f"| {value} | {','.join(map(str, sorted(seeds[value])))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
