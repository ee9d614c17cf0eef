"""Faults and resume: a run killed with SIGKILL mid-round continues with `fedmia run --resume`
and ends exactly where an uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmia.cli import app

from fedmia.evaluation.run import finished_run
from fedmia.runfolder import state
from fedmia.transcript import Transcript
from fedmia.validation import load_scenario

from conftest import REPO, alive, child_pids, stop_pids

FEDMIA = [sys.executable, "-c", "from fedmia.cli import app; app()"]

FAULTY = {
    "federation": {"clients": 3, "rounds": 2},
    # client 1 crashes in round 1 (the round completes with the others); every client takes a
    # moment, so that the kill below lands inside a round, not between two
    "faults": {"crash": [{"round": 1, "client": 1}], "client_delay_s": 0.75},
    "attacks": ["loss", "update-loss-drop"],
}


def fedmia(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.Popen([*FEDMIA, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def checkpointed(folder: Path) -> int:
    index = folder / "transcript" / "index.json"
    if not index.exists():
        return 0
    return len(json.loads(index.read_text())["rounds"])


def test_killed_run_resumes_to_the_uninterrupted_result(write_scenario, tmp_path, stops_its_processes):
    scenario = write_scenario(FAULTY)
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    process = fedmia("run", str(scenario), "--out", str(killed))
    # the uninterrupted twin meanwhile (its own Ray instance): the killed run's clients wait
    # `client_delay_s` each round, which leaves a core to spare
    uninterrupted_run = fedmia("run", str(scenario), "--out", str(whole))
    deadline = time.monotonic() + 240
    # the event: round 1's checkpoint on disk (polled: a file is the only channel to the run). Round
    # 2, the last, is then in flight — its clients each wait client_delay_s — when the kill lands
    while checkpointed(killed) < 1:
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "round 1 never finished"
        time.sleep(0.2)
    family = child_pids(process.pid)  # Ray's processes: orphaned by the kill, stopped by PID below
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stop_pids({p for p in family if alive(p)})
    assert checkpointed(killed) < 2 and not (killed / "metrics.json").exists()
    parsed = load_scenario(scenario)
    # what sweep, replicate and deploy ask: never a finished run
    assert state(killed) == "unfinished" and finished_run(killed, parsed) is None

    resuming = fedmia("run", "--resume", str(killed))
    finish(resuming)
    finish(uninterrupted_run)

    resumed, uninterrupted = Transcript.load(killed / "transcript"), Transcript.load(whole / "transcript")
    assert [v.round for v in resumed.rounds] == [1, 2]
    for a, b in zip(resumed.final, uninterrupted.final):
        np.testing.assert_array_equal(a, b)
    # the injected crash was recorded and the round went on with the two other clients
    first = resumed.rounds[0]
    assert first.failures == 1 and any("injected crash" in f for f in first.failure_messages)
    assert len(first.replies) == 2

    metrics = [json.loads((f / "metrics.json").read_text()) for f in (killed, whole)]
    assert metrics[0]["utility"]["rounds"] == metrics[1]["utility"]["rounds"]
    for name in ("loss", "update-loss-drop"):
        assert metrics[0]["attacks"][name]["auc"] == metrics[1]["attacks"][name]["auc"]
    assert finished_run(killed, parsed).metrics.as_json() == metrics[0]  # finished now, by its completion record

    # fedmia compare on the two: the same targets, so a paired test; the same figures, no difference
    # (in this process: the CLI's own start-up is tested elsewhere)
    compared = CliRunner().invoke(app, ["compare", str(killed), str(whole), "--out", str(tmp_path / "cmp")])
    assert compared.exit_code == 0, compared.output[-2000:]
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    second = [r for r in rows if r["vs_first"] is not None]
    assert {r["attack"] for r in second} == {"loss", "update-loss-drop"}
    for row in second:
        assert row["vs_first"]["method"] == "paired bootstrap on the same targets"
        assert row["vs_first"]["auc"]["difference"] == 0.0
    assert "update-loss-drop" in (tmp_path / "cmp" / "compare.md").read_text()
    assert (tmp_path / "cmp" / "compare_roc.png").stat().st_size > 0

    # a second run into a finished run folder: refused before anything starts, not a byte changed
    before = {p: p.read_bytes() for p in whole.rglob("*") if p.is_file()}
    again = CliRunner().invoke(app, ["run", str(scenario), "--out", str(whole)])
    assert again.exit_code == 2 and "already holds a finished run" in again.output, again.output[-2000:]
    assert {p: p.read_bytes() for p in whole.rglob("*") if p.is_file()} == before


def test_resume_refuses_what_it_cannot_continue(write_scenario, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    # in this process (the CLI's own start-up and exit codes are tested through a subprocess above)
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--resume", str(empty)])
    assert result.exit_code == 2
    assert "not a fedmia run folder (no scenario.yaml" in result.stderr
    (empty / "scenario.yaml").write_text(write_scenario().read_text())
    other = write_scenario({"seed": 5}, name="other.yaml")
    result = runner.invoke(app, ["run", str(other), "--resume", str(empty)])
    assert result.exit_code == 2 and "differs from the scenario" in result.stderr
    # a truncated checkpoint: named, exit 2, no traceback
    from fedmia.transcript import RoundView, Transcript as T

    transcript = T(["w"], [np.zeros(3, np.float32)])
    transcript.save(empty / "transcript")
    view = RoundView(1)
    view.aggregate = [np.ones(3, np.float32)]
    transcript.rounds.append(view)
    transcript.save_round(empty / "transcript", view)
    round_file = next((empty / "transcript").glob("round-*.npz"))
    round_file.write_bytes(round_file.read_bytes()[:40])
    result = runner.invoke(app, ["run", "--resume", str(empty)])
    assert result.exit_code == 2 and f"{round_file}: the checkpoint cannot be read back" in result.stderr
    assert "Traceback" not in result.stderr and isinstance(result.exception, (SystemExit, type(None)))


# slow: a run interrupted after round 1 — killed outright — and resumed is the
# test above, in the default run
@pytest.mark.slow
def test_ctrl_c_stops_the_run_and_its_ray_and_keeps_the_checkpoint(write_scenario, tmp_path, stops_its_processes):
    """Ctrl-C (SIGINT) while Flower runs its rounds on a thread: the console script exits at once
    with 130, stops the Ray it started (the interrupt lands in the main thread's wait, not in
    Flower's), and leaves the rounds done so far for `--resume`."""
    folder = tmp_path / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    process = subprocess.Popen(  # the console script's own entry point; SIGINT as a terminal sends it
        [sys.executable, "-m", "fedmia.cli", "run", str(write_scenario(FAULTY)), "--out", str(folder)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while checkpointed(folder) < 1:
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "round 1 never finished"
        time.sleep(0.2)
    family = child_pids(process.pid)
    assert any("ray" in Path(f"/proc/{p}/cmdline").read_text() for p in family if alive(p))
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output[-3000:]
    # typer once turned the KeyboardInterrupt into a bare exit 130: no line, Ray's agents left
    assert f"stopped by Ctrl-C; the rounds done so far are kept: fedmia run --resume {folder}" in output
    deadline = time.monotonic() + 10  # Ray's processes go once their parent asks: wait for that, bounded
    while {p for p in family if alive(p)} and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = {p for p in family if alive(p)}
    stop_pids(leftovers)  # by PID, so that a failure here leaves nothing behind either
    assert not leftovers, "Ray processes outlived the interrupted run"
    assert checkpointed(folder) == 1 and not (folder / "metrics.json").exists()


def test_sigterm_stops_the_run_like_ctrl_c_and_resume_finishes_it(write_scenario, tmp_path, stops_its_processes):
    """SIGTERM, what Slurm, Kubernetes and systemd send, after round 1: exit 143 with one line
    saying how to resume, no traceback (it was SIGABRT, exit 134, with a core-dump notice: Ray's
    own SIGTERM handler), no process left; `--resume` then finishes the run."""
    folder = tmp_path / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    # no injected crash: Flower logs that one's traceback, which is not the stop's
    slow = {**FAULTY, "faults": {"client_delay_s": 0.75}}
    process = subprocess.Popen([sys.executable, "-m", "fedmia.cli", "run", str(write_scenario(slow)), "--out",
                                str(folder)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 240
    while checkpointed(folder) < 1:
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "round 1 never finished"
        time.sleep(0.2)
    family = child_pids(process.pid)
    assert any("ray" in Path(f"/proc/{p}/cmdline").read_text() for p in family if alive(p))
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 143, output[-3000:]
    assert "Traceback" not in output and "core dumped" not in output, output[-3000:]
    assert f"stopped by SIGTERM; the rounds done so far are kept: fedmia run --resume {folder}" in output
    deadline = time.monotonic() + 10  # Ray's processes go once their parent asks: wait for that, bounded
    while {p for p in family if alive(p)} and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = {p for p in family if alive(p)}
    names = {p: Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:60] for p in leftovers if alive(p)}
    stop_pids(leftovers)
    assert not leftovers, f"processes outlived the stopped run: {names}"
    assert state(folder) == "unfinished" and checkpointed(folder) == 1
    finish(fedmia("run", "--resume", str(folder)))
    assert state(folder) == "finished" and checkpointed(folder) == 2


def test_stop_signals_raise_in_the_main_thread_with_the_exit_code_a_shell_expects(monkeypatch):
    from fedmia import stopping
    from fedmia.stopping import Stopped, resume_with, stop_line, stop_on_signals

    monkeypatch.setattr(stopping, "_installed", False)  # restored after: pytest's own Ctrl-C stays its own
    saved = {s: signal.getsignal(s) for s in stopping.CAUGHT}
    try:
        assert not stopping.process_ends_on_stop()
        stop_on_signals()
        assert stopping.process_ends_on_stop()  # the CLI's commands then leave Ray to main's stop
        for signum, name, code in ((signal.SIGTERM, "SIGTERM", 143), (signal.SIGHUP, "SIGHUP", 129),
                                   (signal.SIGINT, "Ctrl-C", 130)):
            with pytest.raises(Stopped) as caught:
                os.kill(os.getpid(), signum)
                time.sleep(1)  # the handler runs between bytecodes: within this sleep
            resume_with("fedmia run --resume runs/x")
            assert stop_line(caught.value) == (f"fedmia: stopped by {name}; fedmia run --resume runs/x", code)
        assert stop_line(KeyboardInterrupt())[1] == 130
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
