"""`fedmia compare RUN...`: several run folders side by side — one table, one ROC plot.

Reads only what runs wrote (metrics.json, scores.csv, ledger.json), so runs made at different
times, by `fedmia run` or `flwr run`, compare alike.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from rich.table import Table
from rich.text import Text

from fedmia.data.plan import MembershipLedger
from fedmia.evaluation.metrics import paired_difference
from fedmia.evaluation.plots import plot_roc
from fedmia.evaluation.report import with_interval
from fedmia.evaluation.run import Run, load_run
from fedmia.evaluation.schema import AttackMetrics
from fedmia.io import write_json_atomic, write_text_atomic
from fedmia.runfolder import RunFolderError  # noqa: F401  (re-exported: one error for an unusable run folder)


def run_scores(folder: Path) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(target ids, is_member, scores per attack), rebuilt from the run's scores and its ledger."""
    ledger = MembershipLedger.load(folder / "ledger.json")
    ids, scores = read_scores(folder / "scores.csv")
    return ids, ledger.is_member(ids), scores


def read_scores(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(target ids, scores per attack) from a run's scores.csv."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    ids = [row[0] for row in body]
    return ids, {name: np.array([float(row[column]) for row in body]) for column, name in enumerate(header[1:], start=1)}


def _difference(a_run, b_run, attack: str, a: AttackMetrics, b: AttackMetrics, seed: int = 0) -> dict:
    """B − A for one attack: a paired bootstrap when both runs scored the same targets with the
    same membership, else whether the two 95% intervals overlap (independent runs)."""
    (ids_a, member_a, scores_a), (ids_b, member_b, scores_b) = a_run, b_run
    out = {"attack": attack}
    if ids_a == ids_b and np.array_equal(member_a, member_b):
        paired = paired_difference(scores_b[attack], scores_a[attack], member_a, seed=seed)
        out.update(method="paired bootstrap on the same targets",
                   auc=paired["auc"], tpr_at_1pct=paired["tpr"])
        return out
    out["method"] = "95% intervals of independent runs"
    for key, get in (("auc", lambda m: (m.auc, m.ci.auc if m.ci else None)),
                     ("tpr_at_1pct", lambda m: (m.tpr_at_fpr.get("0.01"), m.ci.tpr_at_fpr.get("0.01") if m.ci else None))):
        (va, ia), (vb, ib) = get(a), get(b)
        if va is None or vb is None or ia is None or ib is None:
            continue
        out[key] = {"difference": vb - va, "ci": None, "significant": bool(ib[0] > ia[1] or ib[1] < ia[0])}
    return out


def compare_runs(folders: list[Path], out_dir: Path, attacks: list[str] | None = None) -> tuple[dict, Table]:
    runs = [load_run(f) for f in folders]
    labels = _unique_labels(runs)
    rows = []
    curves = {}
    loaded = [run_scores(run.folder) for run in runs]
    first = runs[0].metrics.attacks
    for index, (label, run, data) in enumerate(zip(labels, runs, loaded)):
        m = run.metrics
        for attack, am in m.attacks.items():
            if attacks and attack not in attacks:
                continue
            tpr_ci = am.ci.tpr_at_fpr if am.ci else {}
            row = {
                "run": label, "attack": attack, "auc": am.auc, "auc_ci": am.ci.auc if am.ci else None,
                "tpr@0.1%": am.tpr_at_fpr.get("0.001"), "tpr@0.1%_ci": tpr_ci.get("0.001"),
                "tpr@1%": am.tpr_at_fpr.get("0.01"), "tpr@1%_ci": tpr_ci.get("0.01"),
                "low_n_levels": am.low_n_levels, "false_positives_allowed": am.false_positives_allowed,
                "dice": m.utility.dice,
                "source_inference": m.source_inference.accuracy if m.source_inference else None,
                "isolation_cosine": (m.isolation or {}).get("cosine"),
                "vs_first": None,
            }
            if index > 0 and attack in first and attack in data[2] and attack in loaded[0][2]:
                row["vs_first"] = _difference(loaded[0], data, attack, first[attack], am)
            rows.append(row)
        ids, is_member, scores = data
        for attack, values in scores.items():
            if not attacks or attack in attacks:
                curves[f"{label}: {attack}"] = (values, is_member)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_roc(curves, out_dir / "compare_roc.png", title="membership inference across runs (log-log ROC)")
    result = {"runs": [str(r.folder) for r in runs], "rows": rows}
    write_json_atomic(out_dir / "compare.json", result)
    write_text_atomic(out_dir / "compare.md", _markdown(rows, labels[0]))
    return result, _table(rows, labels[0])


def _unique_labels(runs: list[Run]) -> list[str]:
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):
        labels = [str(r.folder) for r in runs]
    return labels


COLUMNS = ["run", "attack", "auc", "tpr@0.1%", "tpr@1%", "vs_first", "dice", "source_inference", "isolation_cosine"]
HEADERS = {"source_inference": "SI acc", "isolation_cosine": "iso cos", "tpr@0.1%": "TPR@.1%", "tpr@1%": "TPR@1%"}


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _cell(row: dict, column: str) -> str:
    if column in ("auc", "tpr@0.1%", "tpr@1%"):
        level = {"tpr@0.1%": "0.001", "tpr@1%": "0.01"}.get(column)
        return with_interval(row[column], row.get(f"{column}_ci"), level in (row.get("low_n_levels") or []))
    if column == "vs_first":
        diff = row["vs_first"]
        if not diff:
            return "—"
        parts = []
        for key, name in (("auc", "AUC"), ("tpr_at_1pct", "TPR@1%")):
            if key in diff:
                d = diff[key]
                parts.append(f"{name} {d['difference']:+.3f} " + ("significant" if d["significant"] else "n.s."))
        return "; ".join(parts) or "—"
    return _fmt(row[column])


def _markdown(rows: list[dict], first: str) -> str:
    headers = [HEADERS.get(c, c) if c != "vs_first" else f"vs {first}" for c in COLUMNS]
    lines = ["# Comparison", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row, c).replace("|", "\\|") for c in COLUMNS) + " |" for row in rows]
    allowed = {row["run"]: row.get("false_positives_allowed") for row in rows if row.get("false_positives_allowed")}
    if allowed:
        lines += ["", "False positives each level allows: " + "; ".join(
            f"{run}: " + ", ".join(f"{float(k) * 100:g}% → {v}" for k, v in levels.items())
            for run, levels in allowed.items()) + "."]
    lines += ["", "Brackets: 95% intervals. † fewer than 10 false positives allowed at that level. "
              "`vs` column: the difference to the same attack in the first run — a paired bootstrap when "
              "both runs scored the same targets, else whether the intervals separate; n.s. = not "
              "significant at 95%.", "", "![ROC](compare_roc.png)", ""]
    return "\n".join(lines)


def _table(rows: list[dict], first: str) -> Table:
    table = Table(title="fedmia compare", caption="[95% intervals] · † < 10 false positives allowed · "
                  "vs: difference to the first run (paired bootstrap on shared targets)")
    for column in COLUMNS:
        header = HEADERS.get(column, column) if column != "vs_first" else f"vs {first}"
        table.add_column(header, justify="left" if column in ("run", "attack", "vs_first") else "right",
                         overflow="fold")
    for row in rows:
        table.add_row(*(Text(_cell(row, c)) for c in COLUMNS))
    return table
