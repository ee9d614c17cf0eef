"""`fedmia run`: scenario → Flower simulation on Ray → `fedmia.pipeline.finish_run`."""

from __future__ import annotations

import logging
import os
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


def run_scenario(scenario: Scenario, out_dir: Path, *, console: Console | None = None,
                 verbose: bool = False, resume: bool = False, started: float | None = None,
                 supernodes: int | None = None) -> dict:
    """Train the federation in Flower's simulation engine (Ray backend), then finish the run.
    With `resume`, continue from the rounds checkpointed in `out_dir/transcript`: the per-round
    seeds make the result the same as an uninterrupted run's. `started`: the `perf_counter()`
    the run's clock starts from (the CLI passes its process's start, so `wall_s` is what the
    user waits); by default, now. `supernodes`: how many simulated SuperNodes connect (default:
    the scenario's clients; fewer makes the server fail after `runtime.connect_timeout_s`)."""
    from flwr.simulation import run_simulation

    from fedmia.client_app import make_client_app
    from fedmia.server_app import make_server_app

    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    done = prepare_run_folder(out_dir, scenario, resume)
    layout = build_plan(scenario).layout  # fail on data problems here, before Ray starts
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        quiet_library_notices()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    result: dict = {}
    with progress_bar(console) as progress:
        task = progress.add_task("federated rounds", total=scenario.federation.rounds, completed=done)
        server_app = make_server_app(scenario, result=result, checkpoint=out_dir / "transcript",
                                     on_round_end=lambda view: progress.advance(task), resume=resume)
        run_simulation(server_app=server_app, client_app=make_client_app(scenario, layout),
                       num_supernodes=supernodes or scenario.federation.clients,
                       backend_name="ray", backend_config=backend_config(scenario),
                       verbose_logging=verbose)
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


