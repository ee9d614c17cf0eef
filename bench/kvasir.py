"""The seed paper's setting at hospital size: `scenarios/kvasir-folder.yaml` end to end on a
synthetic Kvasir-SEG-like folder (RGB frames at 332x287, binary polyp masks, resized to 256x256
by the loader) — or on your own folder with `--path`.

Prints start-up, per-round wall time, attack and evaluation time (OOD sets included) and the
peak resident memory of the server process (this one), of a Ray worker (one client at a time)
and of Ray's system processes.

    python bench/kvasir.py                 # synthetic folder in a temporary directory
    python bench/kvasir.py --path data/kvasir-seg
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from scaling import PeakMemory, own_peak_mib  # noqa: E402

from fedmia.data.folder import write_example_folder  # noqa: E402
from fedmia.runner import run_scenario  # noqa: E402
from fedmia.scenario import Scenario  # noqa: E402
from fedmia.transcript import Transcript  # noqa: E402

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "kvasir-folder.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", help="a folder laid out as Kvasir-SEG (default: write a synthetic one)")
    args = parser.parse_args()
    raw = yaml.safe_load(SCENARIO.read_text())
    data = raw["data"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.path:
            raw["data"]["options"]["path"] = args.path
        else:
            count = data["members"] + data["heldout"] + data["population"]
            started = time.perf_counter()
            write_example_folder(Path(tmp) / "folder", count, size=(332, 287), seed=0)
            print(f"synthetic folder: {count} frames in {time.perf_counter() - started:.1f} s")
            raw["data"]["options"]["path"] = str(Path(tmp) / "folder")
        scenario = Scenario.model_validate(raw)
        started = time.perf_counter()
        with PeakMemory() as memory:
            metrics = run_scenario(scenario, Path(tmp) / "run", started=started).as_json()
        rounds = [v.round_s for v in Transcript.load(Path(tmp) / "run" / "transcript").rounds]
    timing = metrics["timing"]
    evaluation_s = timing["wall_s"] - timing["startup_s"] - timing["simulation_s"] - timing["attacks_s"]
    print(f"{os.cpu_count()} cores; {data['members']} members over {raw['federation']['clients']} clients, "
          f"{data['image_size']}x{data['image_size']} RGB, Unet/{raw['model']['encoder']} depth "
          f"{raw['model']['encoder_depth']}")
    print("| start-up (s) | round wall (s, each) | attacks (s) | evaluation + OOD (s) | whole run (s) "
          "| server peak RSS (MiB) | worker peak RSS (MiB) | Ray system peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {timing['startup_s']:.1f} | {' / '.join(f'{r:.1f}' for r in rounds)} | {timing['attacks_s']:.1f} "
          f"| {evaluation_s:.1f} | {timing['wall_s']:.1f} | {own_peak_mib():.0f} | {memory.peak_mib('worker'):.0f} "
          f"| {memory.peak_mib('system'):.0f} |")
    print(f"server process: largest anonymous {memory.own['RssAnon'] / 1024:.0f} MiB, largest shared "
          f"(Ray object store pages) {memory.own['RssShmem'] / 1024:.0f} MiB; the anonymous peak came "
          f"{memory.own_peak_at:.0f} s in (start-up + rounds ended at {timing['startup_s'] + timing['simulation_s']:.0f} s, "
          f"attacks at {timing['startup_s'] + timing['simulation_s'] + timing['attacks_s']:.0f} s)")
    print("utility:", json.dumps({k: round(metrics["utility"][k], 3) for k in ("dice", "miou")}),
          "median round:", f"{statistics.median(rounds):.1f} s")


if __name__ == "__main__":
    main()
