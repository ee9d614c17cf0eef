"""One run, end to end: scenario → Flower simulation on Ray → attacks → evaluation → run folder.

The order is the data flow of DESIGN.md and it only goes forward: the attacks get the
adversary's view (transcript, population, targets); the ledger is opened afterwards, by the
evaluator alone.
"""

from __future__ import annotations

import csv
import json
import shutil
import io
import logging
import os
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedmia.attacks import ATTACKS, AdversaryView
from fedmia.attacks.updates import NeedsClientUpdates
from fedmia.data.plan import build_plan
from fedmia.data.records import Records
from fedmia.defenses.laplace import fit_laplace
from fedmia.evaluation.ood import ood_metrics
from fedmia.evaluation.run_metrics import evaluate_run
from fedmia.evaluation import plot_roc, plot_utility, render_report
from fedmia.io import write_json_atomic, write_text_atomic
from fedmia.models import scenario_model
from fedmia.scenario import Scenario
from fedmia.training import TrainRecipe, evaluate_utility, pick_device
from fedmia.transcript import Transcript


def prepare_run_folder(out_dir: Path, scenario: Scenario, resume: bool = False) -> int:
    """Make the run folder; returns how many rounds a resumed run has already checkpointed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        return checkpointed_rounds(out_dir)
    shutil.rmtree(out_dir / "transcript", ignore_errors=True)  # no stale checkpoint of an older run
    write_text_atomic(out_dir / "scenario.yaml", scenario.to_yaml())
    return 0


def checkpointed_rounds(out_dir: Path) -> int:
    index = Path(out_dir) / "transcript" / "index.json"
    if not index.exists():
        return 0
    rounds = json.loads(index.read_text())["rounds"]
    return rounds[-1]["round"] if rounds else 0


def _progress(console: Console | None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False,
                    disable=console is None)


def backend_config(scenario: Scenario) -> dict:
    runtime = scenario.runtime
    cpus = runtime.total_cpus or os.cpu_count() or 1
    if runtime.max_parallel is not None:  # Ray schedules by resources: cap them
        cpus = min(cpus, max(1, int(runtime.max_parallel * runtime.client_cpus)))
    init_args = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if runtime.ray_address:  # an existing cluster brings its own resources
        init_args["address"] = runtime.ray_address
    else:
        init_args["num_cpus"] = cpus
    return {"client_resources": {"num_cpus": runtime.client_cpus, "num_gpus": runtime.client_gpus},
            "init_args": init_args}


def run_scenario(scenario: Scenario, out_dir: Path, *, console: Console | None = None,
                 verbose: bool = False, resume: bool = False) -> dict:
    """Train the federation in Flower's simulation engine (Ray backend), then finish the run.
    With `resume`, continue from the rounds checkpointed in `out_dir/transcript`: the per-round
    seeds make the result the same as an uninterrupted run's."""
    from flwr.simulation import run_simulation

    from fedmia.client_app import make_client_app
    from fedmia.server_app import make_server_app

    started = time.perf_counter()
    out_dir = Path(out_dir)
    done = prepare_run_folder(out_dir, scenario, resume)
    build_plan(scenario)  # fail on data problems here, before Ray starts
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    result: dict = {}
    with _progress(console) as progress:
        task = progress.add_task("federated rounds", total=scenario.federation.rounds, completed=done)
        server_app = make_server_app(scenario, result=result, checkpoint=out_dir / "transcript",
                                     on_round_end=lambda view: progress.advance(task), resume=resume)
        run_simulation(server_app=server_app, client_app=make_client_app(scenario),
                       num_supernodes=scenario.federation.clients,
                       backend_name="ray", backend_config=backend_config(scenario),
                       verbose_logging=verbose)
    if "transcript" not in result:
        raise RuntimeError("the simulation ended without a transcript (see the Flower log above)")
    timing = {"simulation_s": result["simulation_s"],
              "startup_s": time.perf_counter() - started - result["simulation_s"]}
    return finish_run(scenario, result["transcript"], out_dir, timing=timing, console=console,
                      started=started)


def run_attacks(scenario: Scenario, view: AdversaryView, console: Console | None = None) -> dict:
    """Every attack sees the same view and scores every target. No ledger here."""
    outputs = {}
    with _progress(console) as progress:
        task = progress.add_task("attacks", total=len(scenario.attacks))
        for spec in scenario.attacks:
            cls = ATTACKS.get(spec.name)
            attack = cls(cls.Params.model_validate(spec.params()))
            try:
                attack.fit(view)
            except NeedsClientUpdates as reason:  # e.g. update attacks under secure aggregation
                outputs[spec.key] = {"skipped": str(reason)}
                if console is not None:
                    console.print(f"[yellow]skipped {spec.key}[/]: {reason}")
                progress.advance(task)
                continue
            outputs[spec.key] = {"scores": np.asarray(attack.score(view, view.targets), dtype=float),
                                  "threshold": attack.threshold, "attack": attack}
            if hasattr(attack, "attribute"):  # source inference: which client owns each target
                outputs[spec.key]["owners"] = np.asarray(attack.attribute(view, view.targets))
            progress.advance(task)
    return outputs


def adversary_view(scenario: Scenario, transcript: Transcript) -> AdversaryView:
    plan = build_plan(scenario)
    info = plan.info
    return AdversaryView(
        transcript=transcript,
        model_factory=lambda: scenario_model(scenario, info),
        population=plan.population,
        targets=plan.targets,
        num_classes=info.num_classes,
        device=pick_device(scenario.runtime.device),
        population_fpr=scenario.evaluation.threshold_population_fpr,
        output_defense=scenario.defenses.output,
        recipe=TrainRecipe.from_scenario(scenario),
        rounds=scenario.federation.rounds,
        seed=scenario.seed,
        cache_dir=scenario.runtime.cache_dir,
        cache_context={"data": scenario.data.model_dump(mode="json"), "model": scenario.model.model_dump(mode="json")},
    )


def fit_release(scenario: Scenario, plan, view: AdversaryView):
    """What the federation serves instead of the bare final model, if a defense replaces it.
    Fitted on the defenders' side (it may read member records); the attacks get only the module."""
    spec = scenario.defenses.laplace
    if spec is None:
        return None
    records = Records.concat(plan.clients) if spec.fit_on == "members" else plan.public
    return fit_laplace(view.model_with(view.transcript.final), records,
                       prior_precision=spec.prior_precision, device=view.device)


def finish_run(scenario: Scenario, transcript: Transcript, out_dir: Path, *, timing: dict,
               console: Console | None = None, started: float | None = None) -> dict:
    out_dir = Path(out_dir)
    transcript.save(out_dir / "transcript", keep=scenario.runtime.keep_transcript)
    if not any(view.aggregate is not None for view in transcript.rounds):
        failures = [f for view in transcript.rounds for f in view.notes.get("failures", [])]
        raise RuntimeError("no federated round completed (every client failed); first failure: "
                           f"{failures[0] if failures else 'unknown'} — transcript kept in {out_dir / 'transcript'}")

    attacks_started = time.perf_counter()
    plan = build_plan(scenario)
    view = adversary_view(scenario, transcript)
    view.released = fit_release(scenario, plan, view)
    outputs = run_attacks(scenario, view, console)
    timing = {**timing, "attacks_s": time.perf_counter() - attacks_started}

    # ---- evaluation: the only place that reads the ground truth ----
    write_json_atomic(out_dir / "ledger.json", plan.ledger.to_json())
    metrics, curves = evaluate_run(scenario, plan, transcript, outputs)
    if scenario.evaluation.ood:
        metrics.update(ood_metrics(view, plan, outputs, scenario.evaluation.ood,
                                   scenario.evaluation.ood_count, scenario.seed))
    if view.released is not None:  # the defense's utility cost is on what is served
        utility = metrics["utility"]
        utility["global_model"] = {"dice": utility["dice"], "miou": utility["miou"]}
        served = evaluate_utility(view.released, plan.heldout, plan.info.num_classes, view.device)
        utility.update(dice=served["dice"], miou=served["miou"], released="last-layer Laplace")
    timing["wall_s"] = time.perf_counter() - started if started is not None else sum(timing.values())
    metrics["timing"] = timing

    _write_scores(out_dir / "scores.csv", plan.targets.ids, {k: v for k, v in outputs.items() if "scores" in v})
    plot_roc(curves, out_dir / "roc.png", title=f"{scenario.name}: membership inference (log-log ROC)")
    plot_utility(metrics["utility"]["rounds"], out_dir / "utility.png")
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_text_atomic(out_dir / "report.md", render_report(metrics, roc_png="roc.png", utility_png="utility.png"))
    return metrics


def _write_scores(path: Path, ids, outputs: dict) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = list(outputs)
    writer.writerow(["record_id", *names])
    for row, record_id in enumerate(ids):
        writer.writerow([record_id, *(f"{outputs[n]['scores'][row]:.6g}" for n in names)])
    write_text_atomic(path, buffer.getvalue())
