"""`fedmia run`: scenario → Flower simulation on Ray → `fedmia.pipeline.finish_run`."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

from rich.console import Console

from fedmia.data.plan import build_plan
from fedmia.pipeline import finish_run, prepare_run_folder, progress_bar
from fedmia.scenario import Scenario


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


class _DropNotice(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def quiet_library_notices() -> None:
    """A run's terminal output is its progress, table and folder. Two library notices open every
    run and say nothing about it: Flower's deprecation of `run_simulation` (we call it on
    purpose: it is the simulation engine's in-process entry point; `flwr run` drives the same
    apps, tests/test_simulation.py) and Ray's FutureWarning about accelerator variables (raised
    in this process by `ray.init`). `--verbose` shows everything."""
    flwr_logger = logging.getLogger("flwr")
    if not any(isinstance(f, _DropNotice) for f in flwr_logger.filters):
        flwr_logger.addFilter(_DropNotice("The `run_simulation` function is deprecated"))
    # a warning filter, not RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0: that would let GPU-less actors
    # see the GPUs (and `device: auto` pick one)
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)


def plan_while_ray_starts(scenario: Scenario):
    """Build the federation's plan while Ray starts, on the other core: Flower's backend would
    start Ray only once the simulation runs (~2.5 s), after the plan (~0.5–1 s for the
    quickstart) — measured 4.4 s one after the other, 3.0 s together. Flower leaves an
    initialised Ray as it is and stops it at the end; we start it with the arguments it would
    use (ours, plus this process's `sys.path` for the workers). A plan that fails stops Ray
    before the error propagates."""
    import threading

    import ray

    built: dict = {}

    def build() -> None:
        try:
            built["plan"] = build_plan(scenario)
        except BaseException as error:  # handed to the main thread below
            built["error"] = error

    worker = threading.Thread(target=build, name="fedmia-plan")
    worker.start()
    started_ray = False
    try:
        if not ray.is_initialized():
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
                     **backend_config(scenario)["init_args"])
            started_ray = True
    finally:
        worker.join()
        if "error" in built and started_ray:
            ray.shutdown()
    if "error" in built:
        raise built["error"]
    return built["plan"]


def run_scenario(scenario: Scenario, out_dir: Path, *, console: Console | None = None,
                 verbose: bool = False, resume: bool = False, started: float | None = None,
                 supernodes: int | None = None) -> dict:
    """Train the federation in Flower's simulation engine (Ray backend), then finish the run.
    With `resume`, continue from the rounds checkpointed in `out_dir/transcript`: the per-round
    seeds make the result the same as an uninterrupted run's. `started`: the `perf_counter()`
    the run's clock starts from (the CLI passes its process's start, so `wall_s` is what the
    user waits); by default, now. `supernodes`: how many simulated SuperNodes connect (default:
    the scenario's clients; fewer makes the server fail after `runtime.connect_timeout_s`)."""
    import ray
    from flwr.simulation import run_simulation

    from fedmia.client_app import make_client_app
    from fedmia.server_app import make_server_app

    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    done = prepare_run_folder(out_dir, scenario, resume)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        quiet_library_notices()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    layout = plan_while_ray_starts(scenario).layout  # data problems fail here, before any round

    result: dict = {}
    with progress_bar(console) as progress:
        task = progress.add_task("federated rounds", total=scenario.federation.rounds, completed=done)
        server_app = make_server_app(scenario, result=result, checkpoint=out_dir / "transcript",
                                     on_round_end=lambda view: progress.advance(task), resume=resume)
        try:
            run_simulation(server_app=server_app, client_app=make_client_app(scenario, layout),
                           num_supernodes=supernodes or scenario.federation.clients,
                           backend_name="ray", backend_config=backend_config(scenario),
                           verbose_logging=verbose)
        finally:
            if ray.is_initialized():  # Flower stops Ray at the end; this covers a simulation that raised first
                ray.shutdown()
    if "error" in result:
        raise result["error"]
    if "transcript" not in result:
        raise RuntimeError("the simulation ended without a transcript (see the Flower log above)")
    timing = {"simulation_s": result["simulation_s"],
              "startup_s": time.perf_counter() - started - result["simulation_s"]}
    warmups = [r.metrics["worker-warmup-s"] for v in result["transcript"].rounds for r in v.replies
               if "worker-warmup-s" in r.metrics]
    if warmups:  # inside the first round(s): Ray workers booting, importing torch/smp, building the model
        timing["worker_warmup_s"] = round(max(warmups), 2)
    return finish_run(scenario, result["transcript"], out_dir, timing=timing, console=console,
                      started=started)


