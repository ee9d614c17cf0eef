"""Repair's threshold against the trap that knows it (issue: defenses judged against adversaries
who know them).

For each `min_open` of `receive-check` (action: repair), over the same seeds:

- the adaptive trap (`scenarios/active-trap-adaptive.yaml`, its server told that `min_open`):
  TPR@1% FPR, AUC and Dice;
- an honest server with the same check: Dice — what the check costs a federation nobody
  attacks — against an honest server without it (paired by seed);

and the plain trap (`scenarios/active-trap-defended.yaml`) against the default check. Means over
seeds with 95% Student-t intervals; differences paired by seed.

    python bench/adaptive_trap.py --seeds 3 --out runs/adaptive-trap [--min-open 0.001 0.004 0.016 0.064]

Every setting here is fixed in advance (the thresholds are a grid, the adaptive server's margin
its default); the ledgers are read only to report.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from paired_seeds import fmt, t_interval  # noqa: E402


def variant(base: str, name: str, *, strategy: dict | None, min_open: float | None, lean: bool) -> dict:
    raw = yaml.safe_load((REPO / "scenarios" / base).read_text())
    raw = copy.deepcopy(raw)
    raw["name"] = name
    raw["server"] = strategy or {"strategy": "fedavg"}
    raw["defenses"] = {} if min_open is None else {"receive-check": {"action": "repair", "min_open": min_open}}
    if lean:  # Dice only: one cheap attack, no OOD sets
        raw["attacks"] = ["loss"]
        raw.setdefault("evaluation", {})["ood"] = []
    return raw


def replicate(raw: dict, seeds: int, out: Path) -> list[dict]:
    folder = out / raw["name"]
    path = out / f"{raw['name']}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    if not all((folder / f"seed-{k:02d}" / "metrics.json").exists() for k in range(seeds)):
        subprocess.run([sys.executable, "-m", "fedmia.cli", "replicate", str(path), "--seeds", str(seeds),
                        "--out", str(folder)], check=True, cwd=REPO)
    return [json.loads((folder / f"seed-{k:02d}" / "metrics.json").read_text()) for k in range(seeds)]


def rate(values: list[float]) -> str:
    """Mean [95% t-interval] of a rate, the interval clipped to [0, 1]."""
    mean, low, high = t_interval(values)
    return fmt(mean, max(low, 0.0), min(high, 1.0))


def trap(metrics: dict, key: str) -> float:
    figures = metrics["attacks"]["trap-weights"]
    return figures["auc"] if key == "auc" else figures["tpr_at_fpr"]["0.01"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/adaptive-trap"))
    parser.add_argument("--min-open", type=float, nargs="+", default=[0.001, 0.004, 0.016, 0.064])
    args = parser.parse_args()

    honest = replicate(variant("active-trap-adaptive.yaml", "honest-nocheck", strategy=None, min_open=None, lean=True),
                       args.seeds, args.out)
    plain = replicate(variant("active-trap-defended.yaml", "plain-trap-repair-0.001",
                              strategy={"strategy": "trap-weights"}, min_open=0.001, lean=False), args.seeds, args.out)
    base_dice = [m["utility"]["dice"] for m in honest]
    print(f"honest server, no check: Dice {rate(base_dice)}")
    print(f"plain trap vs repair (min_open 0.001): TPR@1% {rate([trap(m, 'tpr') for m in plain])}, "
          f"AUC {rate([trap(m, 'auc') for m in plain])}")
    print("| min_open | adaptive trap TPR@1% | adaptive trap AUC | Dice under it | honest + check: Dice | "
          "check's Dice cost (honest, paired) |")
    print("|---|---|---|---|---|---|")
    for min_open in args.min_open:
        tag = f"{min_open:g}"
        attacked = replicate(variant("active-trap-adaptive.yaml", f"adaptive-repair-{tag}",
                                     strategy={"strategy": "trap-weights", "evade_min_open": min_open},
                                     min_open=min_open, lean=False), args.seeds, args.out)
        checked = replicate(variant("active-trap-adaptive.yaml", f"honest-repair-{tag}", strategy=None,
                                    min_open=min_open, lean=True), args.seeds, args.out)
        dice = [m["utility"]["dice"] for m in checked]
        cost = [b - d for b, d in zip(base_dice, dice)]
        print(f"| {tag} | {rate([trap(m, 'tpr') for m in attacked])} | {rate([trap(m, 'auc') for m in attacked])} "
              f"| {rate([m['utility']['dice'] for m in attacked])} | {rate(dice)} "
              f"| {fmt(*t_interval(cost), signed=True)} |")


if __name__ == "__main__":
    main()
