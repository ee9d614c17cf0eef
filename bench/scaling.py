"""Scaling with the number of simulated clients (Flower simulation on Ray).

Default: every client trains every round (4 → 16 → 64); each holds the same number of records,
so the work per round grows with the clients. For every size it prints the per-round wall time
(round 2: Ray actors are warm), the same local training done by a plain sequential PyTorch loop
in this process (the baseline: the ratio is what the simulation costs on top), and the peak
resident memory of a Ray worker — a worker runs one client at a time, so that is the memory one
client needs — next to the Ray system processes'.

`--sampled K`: K clients sampled per round whatever the total (10 → 100 → 1000 → ...): the
training work per round is constant, so per-round wall and memory should be too; printed
against the first size, with the server process's (this process's) peak resident memory.

    python bench/scaling.py [4 16 64]
    python bench/scaling.py --sampled 10 10 100 1000
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from overhead import plain_rounds  # noqa: E402  (same baseline as bench/overhead.py)

from fedmia.processes import descendants  # noqa: E402
from fedmia.runner import run_scenario  # noqa: E402
from fedmia.scenario import Scenario  # noqa: E402
from fedmia.transcript import Transcript  # noqa: E402

RECORDS_PER_CLIENT = 8


def scenario_for(clients: int, sampled: int | None = None) -> Scenario:
    return Scenario.model_validate({
        "name": f"scaling-{clients}", "seed": 0,
        "data": {"dataset": "shapes", "image_size": 32, "options": {"binary": True},
                 "members": clients * RECORDS_PER_CLIENT, "heldout": 32, "population": 16,
                 "partition": {"kind": "iid"}},
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 3},
        "federation": {"clients": clients, "rounds": 3, "local_epochs": 2, "batch_size": 8,
                       "clients_per_round": sampled},
        "attacks": ["loss"],
        "runtime": {"client_cpus": 1, "keep_transcript": "none"},
    })


class PeakMemory:
    """Polls this process's descendants; VmHWM is each process's own peak resident set. For this
    process it also keeps the largest resident set by kind — anonymous (its own heap) and shared
    (Ray's object-store pages it maps) — and when the anonymous one peaked."""

    def __init__(self):
        self.peaks: dict[int, tuple[str, int]] = {}
        self.own = {"RssAnon": 0, "RssShmem": 0}  # KiB
        self.own_peak_at = 0.0  # seconds after polling started
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self):
        while not self._stop.wait(0.25):
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in self.own and int(value.split()[0]) > self.own[key]:
                    self.own[key] = int(value.split()[0])
                    if key == "RssAnon":
                        self.own_peak_at = time.perf_counter() - self._started
            for pid in descendants(os.getpid()):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
                known_kind, known_kib = self.peaks.get(pid, (None, 0))
                if not cmdline:  # an exiting process: keep what it was
                    kind = known_kind or "system"
                else:
                    kind = "worker" if "default_worker" in cmdline or "ClientAppActor" in cmdline else "system"
                    kind = "worker" if known_kind == "worker" else kind
                self.peaks[pid] = (kind, max(kib, known_kib))

    def peak_mib(self, kind: str) -> float:
        values = [kib for k, kib in self.peaks.values() if k == kind]
        return max(values, default=0) / 1024

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.peaks.values() if k == kind)


def own_peak_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def measure(scenario: Scenario) -> tuple[float, PeakMemory]:
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as memory:
        run_scenario(scenario, Path(tmp) / "run")
        rounds = [v.round_s for v in Transcript.load(Path(tmp) / "run" / "transcript").rounds]
    return statistics.median(rounds[1:]), memory


def main() -> None:
    args = sys.argv[1:]
    sampled = None
    if args[:1] == ["--sampled"]:
        sampled, args = int(args[1]), args[2:]
    sizes = [int(a) for a in args] or ([10, 100, 1000] if sampled else [4, 16, 64])
    print(f"{RECORDS_PER_CLIENT} records/client, 32x32, Unet/resnet18 depth 3, 2 local epochs, "
          f"client_cpus 1 on {os.cpu_count()} cores" + (f", {sampled} clients sampled per round" if sampled else ""))
    if sampled:
        print("| clients | round wall (s) | vs first | worker peak RSS (MiB) | workers | server process peak RSS (MiB, cumulative) |")
        print("|---|---|---|---|---|---|")
        first = None
        for clients in sizes:
            steady, memory = measure(scenario_for(clients, sampled))
            first = first or steady
            print(f"| {clients} | {steady:.2f} | {steady / first:.2f}x | {memory.peak_mib('worker'):.0f} "
                  f"| {memory.count('worker')} | {own_peak_mib():.0f} |", flush=True)
        return
    print("| clients | round wall (s) | plain sequential (s) | ratio | worker peak RSS (MiB) | workers | Ray system peak RSS (MiB, max) |")
    print("|---|---|---|---|---|---|---|")
    for clients in sizes:
        scenario = scenario_for(clients)
        steady, memory = measure(scenario)
        plain = statistics.median(plain_rounds(scenario)[1:])
        print(f"| {clients} | {steady:.2f} | {plain:.2f} | {steady / plain:.2f}x | {memory.peak_mib('worker'):.0f} "
              f"| {memory.count('worker')} | {memory.peak_mib('system'):.0f} |", flush=True)


if __name__ == "__main__":
    main()
