"""`fedmia compare RUN...`: several run folders side by side — one table, one ROC plot.

Reads only what runs wrote (metrics.json, scores.csv, ledger.json), so runs made at different
times, by `fedmia run` or `flwr run`, compare alike.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from rich.table import Table

from fedmia.data.plan import MembershipLedger
from fedmia.evaluation.metrics import roc_points
from fedmia.evaluation.plots import plot_roc
from fedmia.io import write_json_atomic, write_text_atomic


class RunFolderError(ValueError):
    pass


def load_run(folder: Path) -> dict:
    folder = Path(folder)
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{folder}: no metrics.json (not a finished run folder)") from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{folder}/metrics.json: not valid JSON ({error})") from None
    return {"folder": folder, "metrics": metrics}


def run_curves(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ROC curves per attack, rebuilt from the run's scores and its ledger."""
    ledger = MembershipLedger.load(folder / "ledger.json")
    with open(folder / "scores.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    ids = [row[0] for row in body]
    is_member = ledger.is_member(ids)
    curves = {}
    for column, name in enumerate(header[1:], start=1):
        scores = np.array([float(row[column]) for row in body])
        curves[name] = roc_points(scores, is_member)
    return curves


def compare_runs(folders: list[Path], out_dir: Path, attacks: list[str] | None = None) -> tuple[dict, Table]:
    runs = [load_run(f) for f in folders]
    labels = _unique_labels(runs)
    rows = []
    curves = {}
    for label, run in zip(labels, runs):
        m = run["metrics"]
        for attack, am in m.get("attacks", {}).items():
            if attacks and attack not in attacks:
                continue
            rows.append({
                "run": label, "attack": attack, "auc": am.get("auc"),
                "tpr@0.1%": am.get("tpr_at_fpr", {}).get("0.001"), "tpr@1%": am.get("tpr_at_fpr", {}).get("0.01"),
                "dice": m.get("utility", {}).get("dice"),
                "source_inference": (m.get("source_inference") or {}).get("accuracy"),
                "isolation_cosine": (m.get("isolation") or {}).get("cosine"),
            })
        for attack, curve in run_curves(run["folder"]).items():
            if not attacks or attack in attacks:
                curves[f"{label}: {attack}"] = curve
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_roc(curves, out_dir / "compare_roc.png", title="membership inference across runs (log-log ROC)")
    result = {"runs": [str(r["folder"]) for r in runs], "rows": rows}
    write_json_atomic(out_dir / "compare.json", result)
    write_text_atomic(out_dir / "compare.md", _markdown(rows))
    return result, _table(rows)


def _unique_labels(runs: list[dict]) -> list[str]:
    labels = [r["metrics"].get("scenario") or r["folder"].name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [str(r["folder"]) for r in runs]
    return labels


COLUMNS = ["run", "attack", "auc", "tpr@0.1%", "tpr@1%", "dice", "source_inference", "isolation_cosine"]
HEADERS = {"source_inference": "SI acc", "isolation_cosine": "iso cos", "tpr@0.1%": "TPR@.1%", "tpr@1%": "TPR@1%"}


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _markdown(rows: list[dict]) -> str:
    lines = ["# Comparison", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |" for row in rows]
    lines += ["", "![ROC](compare_roc.png)", ""]
    return "\n".join(lines)


def _table(rows: list[dict]) -> Table:
    table = Table(title="fedmia compare")
    for column in COLUMNS:
        table.add_column(HEADERS.get(column, column), justify="left" if column in ("run", "attack") else "right",
                         overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row[c]) for c in COLUMNS))
    return table
