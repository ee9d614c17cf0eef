"""Stage stamps for a per-message timeline of a deployment (bench/deploy_timeline.py).

With `FEDMIA_TIMELINE=DIR` in the environment, every process of a run — the ServerApp, each
`flwr-clientapp` process a SuperNode starts per message, Ray workers — appends one JSON line per
stage to `DIR/<pid>.jsonl`: wall-clock time, the stage, and tags (site, round). Unset, `mark` is
one dictionary lookup. Light on purpose (no torch, no flwr): the ClientApp stamps its own imports.
"""

from __future__ import annotations

import json
import os
import time


def mark(stage: str, **tags) -> None:
    folder = os.environ.get("FEDMIA_TIMELINE")
    if not folder:
        return
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "stage": stage, **tags})
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as out:
        out.write(line + "\n")  # one short write per line: lines of concurrent processes never interleave


def process_started_at() -> float | None:
    """This process's start (epoch seconds), from /proc (Linux); None elsewhere."""
    from fedmia.io import process_age

    age = process_age()
    return None if age is None else time.time() - age
