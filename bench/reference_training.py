"""Reference models with a cold cache: one after another in the run's process (the way every
audit trained them before `runtime.train_workers`) against side by side in worker processes, in
the same run, on the same scenario, seed and cache keys.

    python bench/reference_training.py scenarios/lira.yaml --models 4

Trains `--models` reference models (the scenario's recipe; `--training federated` for the
federated ones) twice, each time into a fresh cache: `train_workers: 1` (in this process, torch
on every core), then `train_workers` = the CPUs (one torch thread each). Prints both wall times,
their ratio, that the two caches hold the same keys, and how far apart the two sets of models
are where it matters to the attacks: each model's image-mean φ on the adversary's pool (its
population and targets), which LiRA and RMIA read. Thread counts change floating-point
reduction order, so the models agree closely, not bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedmia.attacks.reference_models import ReferenceModels
from fedmia.data.plan import build_plan
from fedmia.models import scenario_model
from fedmia.pipeline import adversary_view
from fedmia.training import available_cpus
from fedmia.validation import load_scenario


def train(view, models: int, training: str, workers: int, cache: Path) -> tuple[float, ReferenceModels]:
    refs = ReferenceModels(dataclasses.replace(view, train_workers=workers, cache_dir=str(cache)), models, None,
                           training)
    start = time.perf_counter()
    refs.train_missing()
    for index in range(models):  # with one worker, this is where they train
        refs.weights(index)
    return time.perf_counter() - start, refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--training", choices=("central", "federated"), default="central")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    served = scenario_model(scenario, build_plan(scenario).info)  # unused: no attack runs here
    view = adversary_view(scenario, None, served=served)
    view.report = lambda text: print(f"  {text}", flush=True)
    cpus = available_cpus()
    with tempfile.TemporaryDirectory() as root:
        print(f"{args.scenario}: {args.models} {args.training} reference models, cold cache, {cpus} CPUs")
        sequential, one = train(view, args.models, args.training, 1, Path(root) / "sequential")
        print(f"one after another (torch threads: {torch.get_num_threads()}): {sequential:.1f} s")
        parallel, side = train(view, args.models, args.training, cpus, Path(root) / "parallel")
        print(f"{cpus} worker processes, one thread each: {parallel:.1f} s")
        keys = sorted(p.name for p in (Path(root) / "sequential" / "reference").glob("*.npz"))
        same = keys == sorted(p.name for p in (Path(root) / "parallel" / "reference").glob("*.npz"))
        phi_one, phi_side = one.statistics()[0], side.statistics()[0]
        print(f"speed-up: {sequential / parallel:.2f}x; same cache keys: {same} ({len(keys)} files); "
              f"image-mean phi, max |difference| {np.abs(phi_one - phi_side).max():.2e} "
              f"(spread across records: std {phi_one.std():.2f})")


if __name__ == "__main__":
    main()
