"""A scheduler's stop (SIGTERM), a closed terminal (SIGHUP) and Ctrl-C, handled alike.

Slurm, Kubernetes and systemd stop a job with SIGTERM. Ray's `ray.init` installs a SIGTERM
handler of its own in the driver (`sys.exit(15)`), whose SystemExit left Flower's thread
running while the interpreter tore down: the run died by SIGABRT (exit 134) with a core-dump
notice. Here SIGTERM and SIGHUP raise `Stopped` in the main thread, where Ctrl-C's
KeyboardInterrupt lands too: a deployment's wait stops its SuperLink and SuperNodes, and
`fedmia.cli.main` prints one line saying how to go on, kills what is left below it (Ray's
node) by PID and exits with 128 + the signal's number (143, 129; 130 for Ctrl-C). Light on
purpose: no torch, no flwr.
"""

from __future__ import annotations

import os
import signal
import threading

# SIGINT too: typer turns a KeyboardInterrupt into a plain exit code 130 (no line, nothing
# stopped), which a `Stopped` passes through untouched
CAUGHT = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_how_to_resume = "run the same command again: what finished is kept and reused"
_installed = False  # by the CLI: a stop then ends this process


class Stopped(BaseException):
    """A stop signal turned into an exception (a BaseException, like KeyboardInterrupt: no
    `except Exception` swallows it)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise(signum, frame) -> None:
    raise Stopped(signum)


def stop_on_signals() -> None:
    """For `fedmia.cli.main`, whose stop ends the process at once (one line,
    `stop_what_is_left`, `os._exit`): SIGTERM, SIGHUP and SIGINT raise `Stopped` in the main
    thread. Only the main thread may set a handler: elsewhere a no-op."""
    global _installed
    if threading.current_thread() is threading.main_thread():
        for signum in CAUGHT:
            signal.signal(signum, _raise)
        _installed = True


def again_after_ray_init() -> None:
    """`ray.init` replaces the SIGTERM handler with its own `sys.exit`: put ours back, where the
    CLI installed them (a library caller keeps its own)."""
    if _installed:
        stop_on_signals()


def process_ends_on_stop() -> bool:
    """Whether a stop ends this process at once (the CLI). A command then leaves Ray running
    instead of stopping it from the main thread while Flower's thread still waits on it: a Ray
    call after `ray.shutdown()` makes Ray's C++ core end the whole process with exit 1 (seen in
    CI: once in five clean-clone runs), before the stop's line and exit code."""
    return _installed


def stop_what_is_left() -> None:
    """SIGKILL every process below this one, by PID, just before this one exits. Ray's node
    processes would die with their parent anyway (Ray sets `PR_SET_PDEATHSIG` on Linux), but
    its dashboard and runtime-env agents, the raylet's children, outlived it by more than 10 s
    (they report the raylet's death to a GCS that is gone). A deployment's processes were
    already stopped, gently, by their command."""
    from fedmia.processes import descendants, kill_now

    kill_now(descendants(os.getpid()))


def resume_with(hint: str) -> None:
    """What the stop line tells the user to do next (e.g. `fedmia run --resume runs/x`)."""
    global _how_to_resume
    _how_to_resume = hint


def stop_line(error: BaseException) -> tuple[str, int]:
    """The one line printed for a stop, and the exit code (128 + the signal's number)."""
    signum = error.signum if isinstance(error, Stopped) else signal.SIGINT
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    return f"fedmia: stopped by {name}; {_how_to_resume}", 128 + int(signum)
