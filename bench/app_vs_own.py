"""The example Flower app's own ClientApp under fedmia's server (`fedmia audit-app`) beside
fedmia's own client on the same data, network and recipe, over seeds.

    python bench/app_vs_own.py OUT [--seeds 3]

Data: two sites (`write_example_audit`, 48 frames each, 24 of each shared with the auditor as
member targets, 100 frames no site has as non-member targets), 64×64. fedmia's own client: one
client per site folder. The app: two SuperNodes over the union of the two folders, which it splits
by a hash of the file name (its own way); the sites' manifests give the membership of both. The
network is the app's `resnet18-unet` (`model: {family: module, factory: segapp.task:ResNetUNet,
head: sigmoid, in_channels: 3}`); 3 rounds × 2 local epochs, batch 8, Adam 0.003 on both sides
(the app trains with BCE + soft Dice, fedmia's client with its recipe's loss). Threat models:
the honest server's black-box and update attacks, and trap weights. Figures: mean and 95%
t-interval across seeds (`fedmia.evaluation.figures.across_seeds`). Every setting is fixed
here, before any run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "examples" / "flower-app"
THREATS = {"honest": ("fedavg", ["loss", "entropy", "modified-entropy", "update-loss-drop", "update-gradient"]),
           "trap-weights": ("trap-weights", ["loss", "update-loss-drop", "trap-weights"])}


def prepare(out: Path) -> tuple[Path, Path]:
    from fedmia.data.sites import write_example_audit, write_manifest

    data = out / "data"
    if not (data / "all").is_dir():
        write_example_audit(data, sites=("a", "b"), per_site=48, shared=24, others=100, population=48, test=16,
                            size=(72, 64))
        for site in ("a", "b"):  # the app's one folder: both sites' frames, names made unique
            for part in ("images", "masks"):
                (data / "all" / part).mkdir(parents=True, exist_ok=True)
                for file in (data / site / part).iterdir():
                    shutil.copyfile(file, data / "all" / part / f"{site}-{file.name}")
            write_manifest(data / site, site, out / "manifests" / f"{site}.json")
    return data, out / "manifests"


def scenario(data: Path, threat: str, seed: int):
    from fedmia.validation import parse_scenario

    strategy, attacks = THREATS[threat]
    return parse_scenario({
        "name": f"app-vs-own-{threat}-seed{seed}", "seed": seed,
        "data": {"dataset": "folder", "image_size": 64, "options": {"channels": 3, "mask_mode": "binary"},
                 "sites": [{"name": s, "path": str(data / s)} for s in ("a", "b")],
                 "auditor": {k: str(data / "auditor" / k) for k in ("targets", "population", "test")}},
        "model": {"family": "module", "factory": "segapp.task:ResNetUNet", "head": "sigmoid", "in_channels": 3},
        "federation": {"clients": 2, "rounds": 3, "local_epochs": 2, "batch_size": 8, "lr": 0.003,
                       "optimizer": "adam"},
        "server": {"strategy": strategy}, "attacks": attacks,
        "evaluation": {"tpr_at_fpr": [0.01, 0.1], "ood": []}}, f"{threat} seed {seed}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(APP))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(APP), os.environ.get("PYTHONPATH")) if p)
    from fedmia.audit_app import audit_app
    from fedmia.evaluation.figures import across_seeds
    from fedmia.evaluation.manifests import evaluate_with_manifests
    from fedmia.evaluation.run import finished_run
    from fedmia.runner import run_scenario

    data, manifests = prepare(args.out)
    results: dict[tuple[str, str], list] = {}
    for threat in THREATS:
        for seed in range(args.seeds):
            point = scenario(data, threat, seed)
            own = args.out / "own" / threat / f"seed-{seed}"
            done = finished_run(own, point)
            if done is None or done.metrics.membership is not None:
                run_scenario(point, own, force=True)
                evaluate_with_manifests(point, own, manifests)
            results.setdefault(("fedmia client", threat), []).append(finished_run(own, point).metrics)
            app = args.out / "app" / threat / f"seed-{seed}"
            if not (app / "completed.json").is_file() or not (app / "ledger.json").is_file():
                audit_app(APP, point, app, supernodes=2, manifests=manifests, force=True,
                          run_config=[f"data-path='{data / 'all'}'", "network='resnet18-unet'", "local-epochs=2",
                                      "lr=0.003", "batch-size=8", "num-server-rounds=3"])
            from fedmia.evaluation.run import load_run

            results.setdefault(("the app", threat), []).append(load_run(app).metrics)
    print(f"| client | threat model | attack | AUC | TPR@1% | TPR@10% | Dice |  ({args.seeds} seeds, "
          "mean [95% t-interval])")
    print("|---|---|---|---|---|---|---|")
    for (who, threat), runs in results.items():
        dice = across_seeds([m.utility.dice for m in runs], rate=True)
        for attack in THREATS[threat][1]:
            rows = [m.attacks.get(attack) for m in runs]
            if any(r is None for r in rows):
                continue

            def cell(values) -> str:
                fig = across_seeds(values, rate=True)
                return "–" if fig is None else f"{fig.mean:.3f} [{fig.low:.3f}, {fig.high:.3f}]"

            print(f"| {who} | {threat} | {attack} | {cell([r.auc for r in rows])} | "
                  f"{cell([r.tpr_at_fpr.get('0.01') for r in rows])} | {cell([r.tpr_at_fpr.get('0.1') for r in rows])} "
                  f"| {dice.mean:.3f} |")


if __name__ == "__main__":
    main()
