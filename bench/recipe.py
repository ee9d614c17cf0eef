"""Does the training recipe change leakage? The quickstart federation with (a) today's recipe
(cross-entropy, no augmentation, constant learning rate), (b) each other `federation.loss`
(dice+ce, dice, focal), (c) a cosine learning-rate schedule, (d) `federation.augment: {flips: true,
rot90: true}`, each over three seeds; the `loss` attack's AUC and the final Dice,
as mean and 95% t-interval across seeds (the same interval `fedmia replicate` reports), and each
variant's paired difference from today's recipe (same seed: same data, partition and initial
model; only the recipe differs), mean and 95% t-interval of the per-seed differences.

    python bench/recipe.py [scenarios/quickstart.yaml] [--seeds 3] [--out runs/bench-recipe]

About 30 minutes on 2 cores (eighteen federations; OOD sets off, only the `loss` attack). Each run
keeps its folder under --out; a second call reuses a run only where its completion record
matches the scenario (`fedmia.sweep.run_or_reuse`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from scipy import stats

from fedmia.sweep import run_or_reuse
from fedmia.validation import load_scenario, parse_scenario

# label: (run-folder slug, scenario changes); the slugs name the runs, so a second call reuses them
VARIANTS = {
    "today (ce)": ("today", {}),
    "loss: dice+ce": ("loss", {"federation": {"loss": "dice+ce"}}),
    "loss: dice": ("dice", {"federation": {"loss": "dice"}}),
    "loss: focal": ("focal", {"federation": {"loss": "focal"}}),
    "lr_schedule: cosine": ("cosine", {"federation": {"lr_schedule": {"kind": "cosine"}}}),
    "augment: flips + rot90": ("augment", {"federation": {"augment": {"flips": True, "rot90": True}}}),
}


def merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean across seeds (nan bounds for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="scenarios/quickstart.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-recipe"))
    args = parser.parse_args()
    base = load_scenario(args.scenario).resolved()
    rows = []
    for label, (slug, changes) in VARIANTS.items():
        auc, dice = [], []
        for seed in range(args.seeds):
            raw = merged(base, {**changes, "seed": seed, "attacks": [{"name": "loss"}],
                                "evaluation": {"ood": []}})
            raw["name"] = f"{base['name']}-{slug}-{seed}"
            scenario = parse_scenario(raw, f"{args.scenario} ({label}, seed {seed})")
            metrics, _ = run_or_reuse(args.out / raw["name"], scenario)
            auc.append(metrics.attacks["loss"].auc)
            dice.append(metrics.utility.dice)
            print(f"{label}, seed {seed}: loss AUC {auc[-1]:.3f}, Dice {dice[-1]:.3f}", file=sys.stderr)
        rows.append((label, auc, dice))
    print(f"| recipe | `loss` AUC | Dice | ΔAUC vs today (paired) | ΔDice vs today (paired) |"
          f"  ({args.seeds} seeds, mean [95% t-interval])")
    print("|---|---|---|---|---|")
    _, base_auc, base_dice = rows[0]
    for label, auc, dice in rows:
        cells = [label, cell(t_interval(auc)), cell(t_interval(dice))]
        if auc is base_auc:
            cells += ["—", "—"]
        else:
            cells += [cell(t_interval([a - b for a, b in zip(auc, base_auc)]), signed=True),
                      cell(t_interval([d - b for d, b in zip(dice, base_dice)]), signed=True)]
        print("| " + " | ".join(cells) + " |")


def cell(interval: tuple[float, float, float], signed: bool = False) -> str:
    mean, low, high = interval
    form = "{:+.3f}" if signed else "{:.3f}"
    return f"{form.format(mean)} [{form.format(low)}, {form.format(high)}]"


if __name__ == "__main__":
    main()
