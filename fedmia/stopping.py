"""A scheduler's stop (SIGTERM), a closed terminal (SIGHUP) and Ctrl-C, handled alike.

Slurm, Kubernetes and systemd stop a job with SIGTERM. Ray's `ray.init` installs a SIGTERM
handler of its own in the driver (`sys.exit(15)`), whose SystemExit left Flower's thread
running while the interpreter tore down: the run died by SIGABRT (exit 134) with a core-dump
notice. Here SIGTERM and SIGHUP raise `Stopped` in the main thread, where Ctrl-C's
KeyboardInterrupt lands too: each command's wait stops what it started (Ray, a deployment's
processes), by PID, and `fedmia.cli.main` prints one line saying how to go on and exits with
128 + the signal's number (143, 129; 130 for Ctrl-C). Light on purpose: no torch, no flwr.
"""

from __future__ import annotations

import signal
import threading

CAUGHT = (signal.SIGTERM, signal.SIGHUP)
_how_to_resume = "run the same command again: what finished is kept and reused"


class Stopped(BaseException):
    """A stop signal turned into an exception (a BaseException, like KeyboardInterrupt: no
    `except Exception` swallows it)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise(signum, frame) -> None:
    raise Stopped(signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP raise `Stopped` in the main thread. Call it again after `ray.init`,
    which replaces the SIGTERM handler (only the main thread may set one: elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        for signum in CAUGHT:
            signal.signal(signum, _raise)


def resume_with(hint: str) -> None:
    """What the stop line tells the user to do next (e.g. `fedmia run --resume runs/x`)."""
    global _how_to_resume
    _how_to_resume = hint


def stop_line(error: BaseException) -> tuple[str, int]:
    """The one line printed for a stop, and the exit code (128 + the signal's number)."""
    signum = error.signum if isinstance(error, Stopped) else signal.SIGINT
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    return f"fedmia: stopped by {name}; {_how_to_resume}", 128 + int(signum)
