"""Where a deployment's seconds go: `fedmia deploy-local` against `fedmia run` of one scenario,
with a per-message timeline of the deployment from the processes' own stamps (fedmia/timeline.py).

    python bench/deploy_timeline.py scenarios/multi-site.yaml [--secagg] [--workdir runs/timeline]

`--secagg` runs the scenario with `defenses: {secagg: true}` (SecAgg+: four exchanges a round,
of which only the masked-vectors stage reaches the client's training).

Both commands run in subprocesses one after the other on this machine, from a scratch folder (the
multi-site example data is written there when the scenario reads data/multi-site). For every
round of the deployment, per site, it prints: from the server's push to the site's
`flwr-clientapp` process start (the SuperNode's idle pull sleep, up to 3 s, and the spawn), the
interpreter and Flower's own start-up until fedmia's ClientApp module begins importing, the
import of the client (torch, smp, fedmia), Flower's message handling until `fit`, the model's
build, the site's records read, training,
the process's exit after training (the reply's serialisation), and from that exit to the
server's pull of the reply (the SuperNode's 0.5 s reply poll, the transfer, the server's 0.1 s
pull interval). Seconds are wall-clock on a shared 2-core machine: three sites' processes
overlap and share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path, timeline: Path | None) -> float:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    if timeline is not None:
        env["FEDMIA_TIMELINE"] = str(timeline)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return time.perf_counter() - started


def read_stamps(folder: Path) -> dict[int, list[dict]]:
    by_pid: dict[int, list[dict]] = defaultdict(list)
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            stamp = json.loads(line)
            by_pid[stamp["pid"]].append(stamp)
    return by_pid


STAGES = [("pickup + spawn", "push", "started"), ("interpreter + Flower", "started", "imports-begin"),
          ("fedmia import (torch, smp)", "imports-begin", "imports-done"), ("Flower to fit", "imports-done", "fit-begin"),
          ("model build", "fit-begin", "model-built"), ("data load", "model-built", "data-loaded"),
          ("training", "train-begin", "train-done"),
          ("reply + exit", "train-done", "process-exit"), ("reply to server", "process-exit", "pulled")]


def timeline(by_pid: dict[int, list[dict]]) -> tuple[list[dict], list[dict]]:
    """(one row per fitting ClientApp process: each stage's seconds; the server's exchanges)."""
    server = sorted((s for stamps in by_pid.values() for s in stamps if s["stage"] in ("push", "replies")),
                    key=lambda s: s["t"])
    pushes = [s for s in server if s["stage"] == "push"]
    rows, other = [], []
    for stamps in by_pid.values():
        at = {s["stage"]: s for s in stamps}
        if "imports-begin" not in at:
            continue  # the ServerApp's process
        begin = at["imports-begin"]
        start = begin.get("started") or begin["t"]
        push = max((p["t"] for p in pushes if p["t"] <= start), default=start)
        done = (at.get("process-exit") or at.get("train-done") or begin)["t"]
        pulled = min((s["t"] for s in server if s["stage"] == "replies" and s["t"] >= done), default=None)
        times = {"push": push, "started": start, **{k: v["t"] for k, v in at.items()}, "pulled": pulled}
        row = {"round": at.get("fit-begin", {}).get("round"), "site": at.get("fit-begin", at.get("train-begin", {})).get("site")}
        for label, a, b in STAGES:
            row[label] = (times[b] - times[a]) if times.get(a) is not None and times.get(b) is not None else None
        row["life"] = times["process-exit"] - start if "process-exit" in times else None
        row["imported the client"] = "imports-done" in at
        (rows if "train-begin" in at else other).append(row)
    return sorted(rows, key=lambda r: (r["round"] or 0, r["site"] or "")), other


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("runs/timeline"))
    parser.add_argument("--deploy-only", action="store_true")
    parser.add_argument("--secagg", action="store_true", help="with defenses: {secagg: true}")
    args = parser.parse_args()
    work = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    scenario = args.scenario.resolve()
    if args.secagg:
        import yaml

        raw = yaml.safe_load(scenario.read_text())
        raw["defenses"] = {**(raw.get("defenses") or {}), "secagg": True}
        scenario = work / "secagg.yaml"
        scenario.write_text(yaml.safe_dump(raw))
    if "data/multi-site" in scenario.read_text():
        subprocess.run([sys.executable, "-c", "from fedmia.data.sites import write_example_audit; "
                        "write_example_audit('data/multi-site')"], cwd=work, check=True)
    cli = [sys.executable, "-m", "fedmia.cli"]
    simulated = None if args.deploy_only else run([*cli, "run", str(scenario), "--out", "sim"], work, None)
    deployed = run([*cli, "deploy-local", str(scenario), "--auth", "--out", "deploy", "--workdir", "deploy-work"],
                   work, work / "stamps")
    rows, other = timeline(read_stamps(work / "stamps"))
    print(f"fedmia run {simulated or float('nan'):.1f} s, deploy-local --auth {deployed:.1f} s"
          + (f" ({deployed / simulated:.2f}x)" if simulated else ""))
    labels = [label for label, _, _ in STAGES]
    print("| round | site | " + " | ".join(labels) + " |")
    print("|" + "---|" * (len(labels) + 2))
    for row in rows:
        print(f"| {row['round']} | {row['site']} | "
              + " | ".join("–" if row[k] is None else f"{row[k]:.2f}" for k in labels) + " |")
    print("| median | | " + " | ".join(f"{statistics.median([r[k] for r in rows if r[k] is not None]):.2f}"
                                       if any(r[k] is not None for r in rows) else "–" for k in labels) + " |")
    if other:
        lives = [r["life"] for r in other if r["life"] is not None]
        print(f"{len(other)} ClientApp process(es) that did not train (evaluation, SecAgg+'s key, share and "
              f"unmasking exchanges), {sum(r['imported the client'] for r in other)} of them importing the client "
              f"(torch): median life {statistics.median(lives):.2f} s" if lives else "")
    stamps = read_stamps(work / "stamps")
    server = sorted((s for v in stamps.values() for s in v if s["stage"] in ("push", "replies")), key=lambda s: s["t"])
    if server:
        print(f"server: first push to last reply {server[-1]['t'] - server[0]['t']:.1f} s over "
              f"{sum(s['stage'] == 'push' for s in server)} exchanges")


if __name__ == "__main__":
    main()
