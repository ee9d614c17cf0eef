"""How often the receive-side check (`fedmia/defenses/receive_check.py`) fires, on the models
that servers actually sent.

For every run folder given, every round and every client that replied: the check runs on the
model that client was sent, with that client's own records (rebuilt from the run's scenario) and
its batch size — exactly what a client running the defense would have done. An honest server's
rounds give the false-alarm rate; a trap-weights server's attacked rounds the detection rate.
Shares carry exact (Clopper-Pearson) 95% intervals, over (round, client) checks.

    python bench/receive_check.py runs/honest-x3/seed-0* runs/active-trap-x3/seed-0* [--min-open 1e-3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from scipy.stats import binomtest

from fedmia.data.plan import build_plan
from fedmia.defenses.base import ModelRefused
from fedmia.defenses.receive_check import ReceiveCheck, ReceiveCheckParams
from fedmia.local import LocalRun, client_recipe
from fedmia.models import scenario_model, set_weights
from fedmia.transcript import Transcript
from fedmia.validation import load_scenario


def check_run(folder: Path, min_open: float, flag_shut: bool) -> dict:
    scenario = load_scenario(folder / "scenario.yaml")
    plan = build_plan(scenario)
    transcript = Transcript.load(folder / "transcript")
    check = ReceiveCheck(ReceiveCheckParams(min_open=min_open, flag_shut=flag_shut))
    model = scenario_model(scenario, plan.info)
    counts = {"attacked": [0, 0], "honest": [0, 0]}  # [refused, checked]
    for view in transcript.rounds:
        kind = "attacked" if view.notes.attacked else "honest"
        for reply in view.replies:
            if reply.node_id not in view.sent:  # a transcript kept without this round's models
                continue
            partition = int(reply.metrics["partition-id"])
            set_weights(model, view.sent[reply.node_id])
            recipe = client_recipe(scenario, view.config[reply.node_id])
            run = LocalRun(scenario, model, plan.clients[partition], recipe, 0, torch.device("cpu"))
            try:
                check.inspect(run)
            except ModelRefused:
                counts[kind][0] += 1
            counts[kind][1] += 1
    return {"run": str(folder), "scenario": scenario.name, **counts}


def share(refused: int, checked: int) -> str:
    if not checked:
        return "—"
    ci = binomtest(refused, checked).proportion_ci(confidence_level=0.95, method="exact")
    return f"{refused}/{checked} = {refused / checked:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--min-open", type=float, default=ReceiveCheckParams().min_open)
    parser.add_argument("--flag-shut", action="store_true", help="also refuse channels open nowhere")
    args = parser.parse_args()
    rows = [check_run(folder, args.min_open, args.flag_shut) for folder in args.runs]
    total = {kind: [sum(r[kind][i] for r in rows) for i in (0, 1)] for kind in ("honest", "attacked")}
    print(f"receive-check, min_open={args.min_open:g}, flag_shut={args.flag_shut}")
    print("| run | honest rounds: refused | attacked rounds: refused |\n|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {share(*r['honest'])} | {share(*r['attacked'])} |")
    print(f"| **all** | {share(*total['honest'])} | {share(*total['attacked'])} |")
    print(json.dumps({"min_open": args.min_open, "flag_shut": args.flag_shut, "runs": rows, "total": total}))


if __name__ == "__main__":
    main()
