"""Ray for a simulation, started beside the other start-up work.

`ray.init` takes ~2.5–4 s on 2 cores, most of it waiting for Ray's own processes (GCS, raylet)
to come up on the other core; meanwhile the driver's other start-up work runs on a thread:
`fedmia run` imports torch/smp and validates the scenario (~5 s), `run_scenario` builds the
plan. Flower leaves an initialised Ray as it is and stops it at the end. Light on purpose (no
torch, no flwr): the CLI imports it before anything heavy.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import Callable, TypeVar

from fedmia.scenario import Scenario
from fedmia.stopping import again_after_ray_init

T = TypeVar("T")


def backend_config(scenario: Scenario) -> dict:
    """Flower's Ray backend settings for a scenario (also the `ray.init` arguments below)."""
    runtime = scenario.runtime
    cpus = runtime.total_cpus or os.cpu_count() or 1
    if runtime.max_parallel is not None:  # Ray schedules by resources: cap them
        cpus = min(cpus, max(1, int(runtime.max_parallel * runtime.client_cpus)))
    init_args = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if runtime.ray_address:  # an existing cluster brings its own resources
        init_args["address"] = runtime.ray_address
    else:
        # "local": a Ray of this run's own. Without an address ray.init joins the cluster a
        # `ray start` left running on this machine, which then refuses num_cpus
        init_args.update(address="local", num_cpus=cpus)
    return {"client_resources": {"num_cpus": runtime.client_cpus, "num_gpus": runtime.client_gpus},
            "init_args": init_args}


class RayAddressError(ValueError):
    """`runtime.ray_address` names a place where no Ray head answers (a usage problem: exit 2)."""

    exit_code = 2


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail within `timeout` naming the address when nothing listens at `runtime.ray_address`
    (HOST:PORT): `ray.init` would otherwise retry its GCS connection for minutes (measured: over
    2 min on an address where nothing listens). 'auto' is Ray's own lookup, which fails at once."""
    import socket

    if not address or address == "auto" or address.startswith(("ray://", "local")):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayAddressError(f"runtime.ray_address: expected 'auto' or HOST:PORT, found {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RayAddressError(f"runtime.ray_address: nothing answers at {address} ({reason}, waited up to "
                              f"{timeout:g} s); expected a running Ray head there (`ray start --head`)") from None


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


def beside_ray_start(scenario: Scenario, work: Callable[[], T]) -> T:
    """Run `work` on a thread while Ray starts here, with the arguments Flower's backend would
    use (ours, plus this process's `sys.path` for the workers); Ray is left running for Flower,
    or stopped if `work` raises (its error then propagates). Ray starts on the calling (main)
    thread: a driver initialised on a thread that then ends loses its connection to Ray's GCS
    (measured: the first call after it hangs 60 s, then the process exits)."""
    import ray

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    done: dict = {}

    def run() -> None:
        try:
            done["result"] = work()
        except BaseException as error:  # handed to the calling thread below
            done["error"] = error

    thread = threading.Thread(target=run, name="fedmia-beside-ray")
    thread.start()
    started = False
    try:
        if not ray.is_initialized():
            # Workers find our code through PYTHONPATH in the environment they inherit, as
            # Flower's backend also sets it, but not through a job `runtime_env`: with one, Ray
            # starts no worker until the first actor; without, it prestarts one per CPU now, so
            # their boot (~0.8 s each) overlaps the work beside instead of round 1 (measured)
            inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
            os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in [*sys.path, *inherited] if p))
            init_args = backend_config(scenario)["init_args"]
            if scenario.runtime.ray_address:  # a running cluster's workers do not inherit this environment
                check_ray_address(init_args["address"])
                init_args["runtime_env"] = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}}
            ray.init(**init_args)
            again_after_ray_init()  # ray.init replaced the CLI's SIGTERM handler (fedmia.stopping)
            started = True
    finally:
        thread.join()
        if "error" in done and started:
            ray.shutdown()
    if "error" in done:
        raise done["error"]
    return done["result"]
