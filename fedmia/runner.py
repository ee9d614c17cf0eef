"""`fedmia run`: scenario → Flower simulation on Ray → `fedmia.pipeline.finish_run`."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from rich.console import Console

from fedmia.data.plan import build_plan
from fedmia.pipeline import finish_run, prepare_run_folder, progress_bar
from fedmia.ray_start import backend_config, beside_ray_start, quiet_library_notices
from fedmia.scenario import Scenario
from fedmia.stopping import process_ends_on_stop


def plan_while_ray_starts(scenario: Scenario):
    """The federation's plan, built while Ray starts (unless the caller started it already, as
    the CLI does): measured 4.4 s one after the other, 3.0 s together on the quickstart."""
    return beside_ray_start(scenario, lambda: build_plan(scenario))


def flower_in_background(result, **simulation) -> threading.Thread:
    """Flower's `run_simulation` on a thread. Once the server app has ended (`result.ended`, a
    `fedmia.server_app.Handover`),
    the transcript is complete and the audit can start while Flower stops its actors and Ray
    (~1.8 s from the last round to `ray.shutdown()` returning, measured on the quickstart), which
    takes no core; the caller joins the thread before it returns, so no Ray outlives a run. An
    error of the simulation lands in `result.flower_error`."""
    import ray
    from flwr.simulation import run_simulation

    def target() -> None:
        try:
            run_simulation(**simulation)
        except BaseException as error:  # raised in the caller's thread, after the join
            result.flower_error = error
        finally:
            if ray.is_initialized():  # Flower stops Ray at the end; this covers a simulation that raised first
                ray.shutdown()
            result.ended.set()  # also when the server app never ran

    # daemon: an interrupted run (Ctrl-C in the caller's wait, which stops Ray itself) does not
    # hang on this thread at exit
    thread = threading.Thread(target=target, name="fedmia-flower", daemon=True)
    thread.start()
    return thread


def run_scenario(scenario: Scenario, out_dir: Path, *, console: Console | None = None,
                 verbose: bool = False, resume: bool = False, started: float | None = None,
                 supernodes: int | None = None, force: bool = False) -> dict:
    """Train the federation in Flower's simulation engine (Ray backend), then finish the run.
    With `resume`, continue from the rounds checkpointed in `out_dir/transcript`: the per-round
    seeds make the result the same as an uninterrupted run's. `started`: the `perf_counter()`
    the run's clock starts from (the CLI passes its process's start, so `wall_s` is what the
    user waits); by default, now. `supernodes`: how many simulated SuperNodes connect (default:
    the scenario's clients; fewer makes the server fail after `runtime.connect_timeout_s`).
    `force`: a folder holding another run gets it moved aside (`fedmia.runfolder.claim`)."""
    import ray

    from fedmia.client_app import make_client_app
    from fedmia.server_app import Handover, make_server_app

    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    done = prepare_run_folder(out_dir, scenario, resume, force)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        quiet_library_notices()
    layout = plan_while_ray_starts(scenario).layout  # data problems fail here, before any round

    result = Handover()
    with progress_bar(console) as progress:
        task = progress.add_task("federated rounds", total=scenario.federation.rounds, completed=done)
        server_app = make_server_app(scenario, result=result, checkpoint=out_dir / "transcript",
                                     on_round_end=lambda view: progress.advance(task), resume=resume)
        flower = flower_in_background(
            result, server_app=server_app, client_app=make_client_app(scenario, layout),
            num_supernodes=supernodes or scenario.federation.clients, backend_name="ray",
            backend_config=backend_config(scenario), verbose_logging=verbose)
        try:
            result.ended.wait()  # the server app's end: the transcript is complete
        except BaseException:  # Ctrl-C, SIGTERM land here, not in Flower's thread: stop Ray ourselves
            # Flower's thread then sees its actors die and logs each as an error with a traceback;
            # the stop is ours and said in one line (fedmia.stopping), so its logger is silenced first
            logging.getLogger("flwr").disabled = True
            if not process_ends_on_stop():  # the CLI's Ray goes with its process (fedmia.stopping)
                ray.shutdown()  # (the rounds done so far are checkpointed: `fedmia run --resume`)
            raise
    try:
        if result.transcript is None:
            flower.join()  # a failed simulation: its own error first
            raise result.error or result.flower_error or RuntimeError(
                "the simulation ended without a transcript (see the Flower log above)")
        # start-up: up to the server app's first round (imports, Ray, plan, Flower's set-up); Ray's
        # stop overlaps the audit, inside wall_s
        timing = {"simulation_s": result.simulation_s, "startup_s": result.federation_started - started}
        # the start-up the user waits before every worker trains: imports, Ray, plan, each
        # worker's imports, data and model (inside round 1); only this process's rounds (resume)
        process_started_at = time.time() - (time.perf_counter() - started)
        stamps = [r.metrics["first-fit-at"] for v in result.transcript.rounds for r in v.replies
                  if r.metrics.get("first-fit-at", 0) >= process_started_at]
        if stamps:
            timing["first_training_s"] = round(max(stamps) - process_started_at, 2)
        metrics = finish_run(scenario, result.transcript, out_dir, timing=timing, console=console,
                             started=started)
    finally:
        flower.join()  # Ray is stopped before we return
    if result.flower_error is not None:
        raise result.flower_error
    return metrics


def audit_trained_model(scenario: Scenario, checkpoint: Path, out_dir: Path, *, manifests: Path | None = None,
                        console: Console | None = None, force: bool = False) -> dict:
    """Audit a model trained outside fedmia: `checkpoint` (a state dict, or an smp
    `save_pretrained` folder) is the released model, as if it were a federation's last global
    model. `scenario` is a multi-site one (`data.sites`, `data.auditor`): the auditor's folders
    give the targets, the population and the test set; `model` the architecture the checkpoint
    fits; `federation` the recipe reference and shadow models train with. Every black-box
    attack, the OOD sets and utility run as after a simulated federation, into the same run
    folder; attacks that read client updates are skipped (there are none). With `manifests`
    (one per site: the records the model trained on, `fedmia manifest`), the membership figures
    follow at once, as `fedmia evaluate` would join them."""
    from fedmia.evaluation.manifests import evaluate_with_manifests
    from fedmia.models import get_weights, scenario_model, weight_names
    from fedmia.transcript import RoundView, Transcript

    from fedmia.scenario import ScenarioError
    from fedmia.validation import parse_scenario

    started = time.perf_counter()
    if not scenario.data.multi_site or scenario.data.auditor is None:
        raise ScenarioError("<audit-model>", [("data.auditor", "auditing a trained model reads the auditor's "
                                               "folders: expected data.sites and data.auditor (targets, "
                                               "population, test), as `fedmia init` writes them")])
    raw = scenario.resolved()
    raw["model"]["init"] = str(Path(checkpoint).resolve())
    # validated again with the checkpoint as the model's weights: a misfit names the tensor
    audited = parse_scenario(raw, f"{checkpoint} (model.init of {scenario.name})")
    if manifests is not None:  # a manifest problem stops the audit before it starts
        from fedmia.data.sites import read_manifests

        read_manifests(Path(manifests), [site.name for site in audited.data.sites])
    out_dir = Path(out_dir)
    # the checkpoint against the data's channels and classes, before a file is written or a
    # finished run moved aside: a misfit (a sigmoid head not declared, say) cost a good run
    try:
        model = scenario_model(audited, build_plan(audited).info)  # holds the checkpoint's weights
    except ValueError as error:
        raise ScenarioError(f"{checkpoint} (model.init of {scenario.name})", [("model", str(error))]) from None
    prepare_run_folder(out_dir, audited, force=force)
    weights = get_weights(model)
    transcript = Transcript(weight_names(model), weights)
    transcript.rounds.append(RoundView(1, aggregate=[w.copy() for w in weights]))  # the release, no replies
    metrics = finish_run(audited, transcript, out_dir, timing={"simulation_s": 0.0}, console=console,
                         started=started)
    if manifests is not None:
        metrics = evaluate_with_manifests(audited, out_dir, manifests)
    return metrics
