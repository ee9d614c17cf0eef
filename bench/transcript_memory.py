"""Server memory against the number of rounds: the transcript is streamed to disk round by
round (fedmia/transcript.py), so a 50-round run's server process should peak where a 5-round
run's does. Each length runs in its own process (VmHWM, the peak resident set, only grows);
the transcript's size on disk is what an in-memory transcript would have held.

    python bench/transcript_memory.py [5 50]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from fedmia.scenario import Scenario


def scenario_for(rounds: int) -> Scenario:
    return Scenario.model_validate({
        "name": f"rounds-{rounds}", "seed": 0,
        "data": {"dataset": "shapes", "image_size": 32, "options": {"binary": True},
                 "members": 8, "heldout": 16, "population": 16},
        # ~3 M parameters: every round adds ~60 MB of weights (sent, 2 replies, aggregate, update)
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 4},
        "federation": {"clients": 2, "rounds": rounds, "local_epochs": 1, "batch_size": 4},
        "attacks": ["loss", "update-loss-drop"],  # one reads the final model, one every reply
        "evaluation": {"ood": []},
        "runtime": {"client_cpus": 1},
    })


def child(rounds: int) -> None:
    from fedmia.runner import run_scenario

    with tempfile.TemporaryDirectory() as tmp:
        run_scenario(scenario_for(rounds), Path(tmp) / "run")
        on_disk = sum(f.stat().st_size for f in (Path(tmp) / "run" / "transcript").iterdir())
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    print(f"RESULT {peak:.0f} {on_disk / 2**20:.0f}")


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [5, 50]
    print("| rounds | server process peak RSS (MiB) | vs first | transcript on disk (MiB) |")
    print("|---|---|---|---|")
    first = None
    for rounds in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(rounds)], capture_output=True,
                             text=True, check=True).stdout
        peak, disk = (float(v) for v in out.split("RESULT")[1].split())
        first = first or peak
        print(f"| {rounds} | {peak:.0f} | {peak / first:.2f}x | {disk:.0f} |", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]))
    else:
        main()
