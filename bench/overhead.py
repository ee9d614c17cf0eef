"""fedmia's overhead: an honest federated run vs a plain PyTorch loop doing the same local
training (same clients, records, recipe, rounds) one client after another.

Reports Ray start-up separately, the steady-state ratio per round (fedmia round time / plain
round time) and the whole-run ratio (start-up + every round, against the plain loop's data,
model and rounds, run once before and once after fedmia; imports excluded on both sides), all
measured in this process. With `client_cpus: 1` on 2 cores, two
clients train at once, so the ratio can drop below 1; each client then has one core.

    python bench/overhead.py [scenarios/quickstart.yaml]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedmia.data.plan import build_plan
from fedmia.models import get_weights, scenario_model, set_weights
from fedmia.runner import run_scenario
from fedmia.validation import load_scenario
from fedmia.defenses import defended_recipe
from fedmia.training import train_local


def plain_rounds(scenario, setup: list | None = None) -> list[float]:
    """Seconds per round of the plain loop; `setup` (a list) receives the seconds spent building
    the data and the model before the first round."""
    started = time.perf_counter()
    plan = build_plan(scenario)
    model = scenario_model(scenario, plan.info, seed=scenario.seed)
    recipe = defended_recipe(scenario)
    global_weights = get_weights(model)
    if setup is not None:
        setup.append(time.perf_counter() - started)
    times = []
    for r in range(scenario.federation.rounds):
        start = time.perf_counter()
        replies = []
        for k, records in enumerate(plan.clients):
            set_weights(model, global_weights)
            train_local(model, records, recipe, seed=r * 100 + k, device=torch.device("cpu"))
            replies.append((len(records), get_weights(model)))
        total = sum(n for n, _ in replies)
        global_weights = [sum(n * w[i] for n, w in replies) / total for i in range(len(global_weights))]
        times.append(time.perf_counter() - start)
    return times


def plain_run(scenario) -> tuple[float, list[float]]:
    """(seconds of data + model + every round, seconds per round) of the plain loop, from a cold plan cache."""
    from fedmia.data.plan import _build_plan_cached

    _build_plan_cached.cache_clear()  # the plain loop builds its data itself, as fedmia does
    setup: list[float] = []
    rounds = plain_rounds(scenario, setup)
    return setup[0] + sum(rounds), rounds


def main() -> None:
    scenario = load_scenario(sys.argv[1] if len(sys.argv) > 1 else "scenarios/quickstart.yaml")
    # the plain loop before and after fedmia, against the mean of both: the machine drifts
    # (plain totals differ by up to ~15% within minutes here)
    plain_before, plain = plain_run(scenario)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        metrics = run_scenario(scenario, Path(tmp) / "run").as_json()
        wall = time.perf_counter() - started
        from fedmia.transcript import Transcript

        rounds = [v.round_s for v in Transcript.load(Path(tmp) / "run" / "transcript").rounds]
    plain_after, plain_again = plain_run(scenario)
    plain_total = (plain_before + plain_after) / 2
    steady = rounds[1:] or rounds  # round 1 includes actor warm-up
    plain_steady = (plain[1:] or plain) + (plain_again[1:] or plain_again)
    ratio = statistics.median(steady) / statistics.median(plain_steady)
    timing = metrics["timing"]
    training = timing["startup_s"] + timing["simulation_s"]  # everything up to the trained model
    print(f"scenario {scenario.name}: {scenario.federation.clients} clients, {scenario.federation.rounds} rounds, "
          f"client_cpus {scenario.runtime.client_cpus}, torch threads (plain) {torch.get_num_threads()}")
    print(f"fedmia: wall {wall:.1f} s = start-up {timing['startup_s']:.1f} s + simulation "
          f"{timing['simulation_s']:.1f} s + attacks {timing['attacks_s']:.1f} s + evaluation "
          f"(Ray's stop overlaps the audit)")
    print(f"start-up until every worker trains (Ray, plan, workers' imports, data and model; imports of "
          f"this process excluded): {timing.get('first_training_s', float('nan')):.1f} s")
    print(f"fedmia rounds (s): {', '.join(f'{t:.2f}' for t in rounds)}")
    print(f"plain  rounds (s), before: {', '.join(f'{t:.2f}' for t in plain)}; after: "
          f"{', '.join(f'{t:.2f}' for t in plain_again)}")
    print(f"steady-state ratio fedmia/plain (median of rounds 2..): {ratio:.2f}x")
    print(f"whole federation (start-up + rounds) {training:.1f} s vs plain (data + model + rounds; "
          f"before {plain_before:.1f} s, after {plain_after:.1f} s) {plain_total:.1f} s: {training / plain_total:.2f}x "
          f"({training / max(plain_before, plain_after):.2f}–{training / min(plain_before, plain_after):.2f}x)")
    print(f"whole run with the audit (attacks {timing['attacks_s']:.1f} s, evaluation "
          f"{wall - training - timing['attacks_s']:.1f} s) {wall:.1f} s: {wall / plain_total:.2f}x plain training")


if __name__ == "__main__":
    main()
