"""Attack against attack, paired by seed and by target, over a `fedmia replicate` folder.

For every attack named: its AUC and TPR@1% FPR as a mean over seeds with a 95% Student-t
interval, and its difference to a baseline attack (default `loss`) on the same targets — per
seed a paired stratified bootstrap (`fedmia.evaluation.metrics.paired_difference`), across
seeds the mean difference with a 95% t-interval. "Beats the baseline" means the across-seed
interval of the difference lies above 0; the per-seed column says in how many seeds the
paired bootstrap alone separates the two. `--pair A B` adds B − A for any two attacks (e.g. the
same attack with federated vs central reference models).

    fedmia replicate /tmp/lira-seeds.yaml --seeds 3 --out runs/lira-seeds
    python bench/paired_seeds.py runs/lira-seeds --attacks rmia qmia lira-online-auto --pair lira-online-auto lira-online-federated

This reads each seed's ledger: it is an evaluation, run after the attacks, never a way to set
them (every attack's settings are fixed in the scenario or chosen on the adversary's data).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy import stats

from fedmia.evaluation.compare import run_scores
from fedmia.evaluation.metrics import membership_metrics, paired_difference


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def fmt(mean: float, low: float, high: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{mean:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def compare(runs: list, a: str, b: str, level: float) -> dict:
    """b − a per seed (paired bootstrap on the same targets) and across seeds."""
    per_seed = [paired_difference(scores[b], scores[a], member, fpr_level=level, seed=k)
                for k, (_, member, scores) in enumerate(runs)]
    out = {}
    for key in ("auc", "tpr"):
        diffs = [d[key]["difference"] for d in per_seed]
        mean, low, high = t_interval(diffs)
        out[key] = {"mean": mean, "ci": (low, high), "per_seed": diffs,
                    "significant_seeds": sum(d[key]["significant"] for d in per_seed)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a fedmia replicate folder (seed-00, seed-01, ...)")
    parser.add_argument("--attacks", nargs="+", required=True)
    parser.add_argument("--baseline", default="loss")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"))
    parser.add_argument("--fpr", type=float, default=0.01)
    args = parser.parse_args()
    # seed-NN only: a rerun moves a changed seed aside as seed-NN.replaced-DATE, which is not a seed
    folders = sorted(p for p in args.folder.glob("seed-*") if p.name[5:].isdigit() and (p / "scores.csv").exists())
    runs = [run_scores(f) for f in folders]
    print(f"{len(runs)} seeds ({', '.join(f.name for f in folders)}); mean [95% t-interval across seeds]; "
          f"vs {args.baseline}: paired by target within a seed, by seed across seeds\n")
    print(f"| attack | AUC | TPR@{args.fpr:g} | ΔAUC vs {args.baseline} | seeds significant | "
          f"ΔTPR vs {args.baseline} | seeds significant |")
    print("|---|---|---|---|---|---|---|")
    for name in [args.baseline, *args.attacks]:
        rows = [membership_metrics(scores[name], member, fpr_levels=(args.fpr,)) for _, member, scores in runs]
        auc = t_interval([r.auc for r in rows])
        tpr = t_interval([r.tpr_at_fpr[f"{args.fpr:g}"] for r in rows])
        clip = lambda m, lo, hi: (m, max(lo, 0.0), min(hi, 1.0))  # rates: the t-interval clipped to [0, 1]
        cells = [name, fmt(*clip(*auc)), fmt(*clip(*tpr))]
        if name == args.baseline:
            cells += ["—", "—", "—", "—"]
        else:
            d = compare(runs, args.baseline, name, args.fpr)
            cells += [fmt(d["auc"]["mean"], *d["auc"]["ci"], signed=True), f"{d['auc']['significant_seeds']}/{len(runs)}",
                      fmt(d["tpr"]["mean"], *d["tpr"]["ci"], signed=True), f"{d['tpr']['significant_seeds']}/{len(runs)}"]
        print("| " + " | ".join(cells) + " |")
    for a, b in args.pair:
        d = compare(runs, a, b, args.fpr)
        print(f"\n{b} − {a}: ΔAUC {fmt(d['auc']['mean'], *d['auc']['ci'], signed=True)} "
              f"(per seed {', '.join(f'{v:+.3f}' for v in d['auc']['per_seed'])}; paired bootstrap significant in "
              f"{d['auc']['significant_seeds']}/{len(runs)}), ΔTPR@{args.fpr:g} {fmt(d['tpr']['mean'], *d['tpr']['ci'], signed=True)} "
              f"(per seed {', '.join(f'{v:+.3f}' for v in d['tpr']['per_seed'])})")


if __name__ == "__main__":
    main()
