"""After the federation: view → release → attacks → evaluation → run folder.

Both `fedmia run` (fedmia/runner.py) and the `flwr run` ServerApp (fedmia/server_app.py) call
`finish_run`; nothing here imports either. The order is the data flow of DESIGN.md and it only
goes forward: the attacks get the adversary's view (transcript, query API, population,
targets); the ledger is opened afterwards, by the evaluator alone.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedmia.attacks import ATTACKS, AdversaryView, AttackResult, QueryAPI
from fedmia.attacks.updates import NeedsClientUpdates
from fedmia.data.federation import sealed
from fedmia.data.plan import build_plan
from fedmia.defenses import active, defended_recipe
from fedmia.defenses.base import LOCAL_STAGES
from fedmia.evaluation.manifests import ADVERSARY_OUTPUT
from fedmia.evaluation.ood import fake_steps, ood_scores
from fedmia.evaluation.run_metrics import OODScored, evaluate_run
from fedmia.evaluation.schema import RunMetrics
from fedmia.evaluation import plot_roc, plot_utility, render_report
from fedmia.io import write_json_atomic, write_text_atomic
from fedmia.local import local_training
from fedmia.plugins import plugins_used
from fedmia.runfolder import claim, complete
from fedmia.models import scenario_model, set_weights
from fedmia.scenario import Scenario
from fedmia.training import available_cpus, pick_device
from fedmia.transcript import Transcript


def prepare_run_folder(out_dir: Path, scenario: Scenario, resume: bool = False, force: bool = False) -> int:
    """Claim the run folder (`fedmia.runfolder.claim`: a folder holding another or a finished run
    is refused unless `force` moves it aside); returns how many rounds a resumed run has already
    checkpointed."""
    claim(out_dir, scenario, resume=resume, force=force)
    return checkpointed_rounds(out_dir) if resume else 0


def checkpointed_rounds(out_dir: Path) -> int:
    index = Path(out_dir) / "transcript" / "index.json"
    if not index.exists():
        return 0
    rounds = json.loads(index.read_text())["rounds"]
    return rounds[-1]["round"] if rounds else 0


def progress_bar(console: Console | None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False,
                    disable=console is None)


def run_attacks(scenario: Scenario, view: AdversaryView, console: Console | None = None) -> dict[str, AttackResult]:
    """Every attack sees the same view and scores every target. No ledger here. Black-box
    attacks get the view without the transcript: the served model only through `view.api`."""
    results: dict[str, AttackResult] = {}
    black_box = view.black_box()
    with progress_bar(console) as progress, sealed("the attacks"):
        task = progress.add_task("attacks", total=len(scenario.attacks))
        for spec in scenario.attacks:
            cls = ATTACKS.get(spec.name)
            attack = cls(cls.Params.model_validate(spec.params()))
            progress.update(task, description=f"attacks: {spec.key}")
            view.report = black_box.report = lambda text, key=spec.key: progress.update(
                task, description=f"attacks: {key}: {text}")
            seen = view if attack.access == "white-box" else black_box
            try:
                attack.fit(seen)
                results[spec.key] = attack.result(seen)
            except NeedsClientUpdates as reason:  # e.g. update attacks under secure aggregation
                results[spec.key] = AttackResult(skipped=str(reason))
                if console is not None:
                    console.print(f"[yellow]skipped {spec.key}[/]: {reason}")
            progress.advance(task)
        progress.update(task, description="attacks")
    view.report = black_box.report = lambda text: None
    return results


def adversary_view(scenario: Scenario, transcript: Transcript, served=None) -> AdversaryView:
    """The adversary's view; `served` is the model behind the query API (default: the final
    global model of the transcript)."""
    plan = build_plan(scenario)
    info = plan.info
    device = pick_device(scenario.runtime.device)
    if served is None:
        served = final_model(scenario, transcript)
    recipe = defended_recipe(scenario)
    public = plan.public  # records every client shares (min-max's reference set, distillation's transfer set)
    return AdversaryView(
        transcript=transcript,
        model_factory=lambda: scenario_model(scenario, info),
        population=plan.population,
        targets=plan.targets,
        num_classes=info.num_classes,
        device=device,
        api=QueryAPI(served, [d for d in active(scenario) if d.acts_on == "query"], device=device),
        population_fpr=scenario.evaluation.threshold_population_fpr,
        recipe=recipe,
        rounds=scenario.federation.rounds,
        clients=scenario.clients_per_round,
        local_training=lambda model, records, seed: local_training(
            scenario, model, records, recipe, seed=seed, device=device, public=public),
        local_defenses=sorted(f"{d.name}:{d.params.model_dump_json()}" for d in active(scenario)
                              if d.acts_on in LOCAL_STAGES),
        seed=scenario.seed,
        cache_dir=scenario.runtime.cache_dir,
        train_workers=train_workers(scenario.runtime, device),
        cache_context={"data": scenario.data.model_dump(mode="json"), "model": scenario.model.model_dump(mode="json")},
    )


def train_workers(runtime, device) -> int:
    """`runtime.train_workers`, or the CPUs this process may use (one model each), 1 on a GPU."""
    if runtime.train_workers is not None:
        return runtime.train_workers
    if device.type != "cpu":
        return 1
    return available_cpus()


def final_model(scenario: Scenario, transcript: Transcript):
    model = scenario_model(scenario, build_plan(scenario).info)
    set_weights(model, transcript.final)
    return model.to(pick_device(scenario.runtime.device)).eval()


def fit_release(scenario: Scenario, plan, model):
    """What the federation serves instead of the bare final model, if a defense acting on the
    release replaces it. Fitted on the defenders' side (it may read member records); the attacks
    get only its query API. Returns (served module, its name) or None."""
    device = pick_device(scenario.runtime.device)
    return next((served for defense in active(scenario) if (served := defense.release(model, plan, device))), None)


# the phases of a run that add up to its wall time (with `other_s`, what none of them covers);
# first_training_s overlaps simulation_s and is not one of them
PHASES = ("startup_s", "simulation_s", "attacks_s", "ood_s", "evaluation_s")


def finish_run(scenario: Scenario, transcript: Transcript, out_dir: Path, *, timing: dict,
               console: Console | None = None, started: float | None = None, client: str | None = None) -> RunMetrics:
    out_dir = Path(out_dir)
    # every reply stays on disk until the attacks and the evaluation have read it; the
    # scenario's `keep_transcript` prunes at the end
    transcript.save(out_dir / "transcript", keep="all")
    if not any(view.aggregate is not None for view in transcript.rounds):
        failures = [f for view in transcript.rounds for f in view.failure_messages]
        raise RuntimeError("no federated round completed (every client failed); first failure: "
                           f"{failures[0] if failures else 'unknown'} — transcript kept in {out_dir / 'transcript'}")

    attacks_started = time.perf_counter()
    plan = build_plan(scenario)
    bare = final_model(scenario, transcript)
    release = fit_release(scenario, plan, bare)
    served = release[0] if release else bare
    view = adversary_view(scenario, transcript, served)
    results = run_attacks(scenario, view, console)
    timing = {**timing, "attacks_s": time.perf_counter() - attacks_started}

    scored, sizes, steps = {}, {}, None
    ood_started = time.perf_counter()
    if scenario.evaluation.ood:
        with progress_bar(console) as progress:  # optimised fakes take a while: show the sets
            task = progress.add_task("OOD sets", total=len(scenario.evaluation.ood))
            def report(name: str, done: bool) -> None:
                progress.update(task, advance=int(done), description=f"OOD sets: {name}{'' if done else ' …'}")

            steps = fake_steps(scenario, plan)
            scored, sizes = ood_scores(served, plan, results, scenario.evaluation.ood,
                                       scenario.evaluation.ood_count, scenario.seed, device=view.device,
                                       report=report, steps=steps)

    timing["ood_s"] = time.perf_counter() - ood_started  # it was most of the quickstart's wall time, unreported
    evaluation_started = time.perf_counter()
    # ---- evaluation: the only place that reads the ground truth ----
    evaluation = evaluate_run(scenario, plan, transcript, results,
                              ood=OODScored(scored, sizes, steps) if scenario.evaluation.ood else None,
                              served=(served, release[1], view.device) if release is not None else None,
                              client=client)
    if plan.ledger is not None:
        write_json_atomic(out_dir / "ledger.json", plan.ledger.to_json())
    else:  # a multi-site audit: what `fedmia evaluate --manifests` joins with the sites' ground truth
        output = adversary_output(scenario, results, scored, sizes)
        if scenario.evaluation.ood:
            output["ood_fake_steps"] = steps
        write_json_atomic(out_dir / ADVERSARY_OUTPUT, output)
    write_scores(out_dir / "scores.csv", plan.targets.ids, {k: r.scores for k, r in results.items() if r.scores is not None})
    plot_roc(evaluation.curves, out_dir / "roc.png", title=f"{scenario.name}: membership inference (log-log ROC)")
    plot_utility(evaluation.rounds, out_dir / "utility.png")
    if scenario.runtime.keep_transcript != "all":
        transcript.save(out_dir / "transcript", keep=scenario.runtime.keep_transcript)
    # last, so that it covers everything but writing these two files
    timing["evaluation_s"] = time.perf_counter() - evaluation_started
    timing["wall_s"] = (time.perf_counter() - started if started is not None
                        else sum(v for k, v in timing.items() if k != "first_training_s"))  # it overlaps the rounds
    # the phases add up to the wall time: what none of them covers (interpreter and imports
    # before the clock's first phase, Ray's stop, writing the transcript) is said, not hidden
    phases = sum(v for k, v in timing.items() if k in PHASES)
    timing["other_s"] = max(0.0, timing["wall_s"] - phases)
    metrics = evaluation.metrics(timing)  # built once, complete
    write_json_atomic(out_dir / "metrics.json", metrics.as_json())
    write_text_atomic(out_dir / "report.md", render_report(metrics.as_json(), roc_png="roc.png", utility_png="utility.png"))
    complete(out_dir, scenario, wall_s=timing["wall_s"], plugins=plugins_used(scenario))  # last: only now does the folder read as finished
    return metrics


def adversary_output(scenario: Scenario, results: dict[str, AttackResult], scored: dict, sizes: dict) -> dict:
    """What the attacks decided beyond their scores (thresholds, owners, skips), their scores on
    the OOD sets, and each target's file digest: with scores.csv, all the evaluator needs once
    the sites' manifests arrive. No ground truth is in it."""
    from fedmia.data.sites import target_digests

    return {
        "attacks": {name: {"threshold": r.threshold, "scope_client": r.scope_client, "skipped": r.skipped,
                           "chosen": r.chosen,  # settings chosen on the adversary's own data
                           "owners": None if r.owners is None else np.asarray(r.owners).tolist()}
                    for name, r in results.items()},
        "ood_scores": {a: {k: v.tolist() for k, v in by_set.items()} for a, by_set in scored.items()},
        "ood_sets": sizes,
        "target_digests": target_digests(scenario),
    }


def write_scores(path: Path, ids, scores: dict[str, np.ndarray]) -> None:
    """Per-target scores at full precision (repr round-trips a float64): every figure in
    metrics.json can be re-derived from this file and ledger.json."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = list(scores)
    writer.writerow(["record_id", *names])
    for row, record_id in enumerate(ids):
        writer.writerow([record_id, *(repr(float(scores[n][row])) for n in names)])
    write_text_atomic(path, buffer.getvalue())
