"""The audit's rows: every attack's figures (mean, interval) per (threat model, defense set),
read from the runs' metrics and their replicate summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedmia.audit.plan import DefenseSet, Row, active_defenses, untested_defenses


def read_metrics(folder: Path) -> dict:
    """A finished run's metrics.json, through the project's reader (one function, so a schema'd
    reader replaces it in one line)."""
    from fedmia.evaluation.compare import load_run

    return load_run(Path(folder))["metrics"]


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _figure(summary: dict, per_seed: list[dict], path: str, run_ci) -> dict | None:
    """mean, interval (low, high) and per-seed values of one metrics.json leaf. Two seeds or
    more: replicate's t-interval across seeds; one seed: the run's 95% bootstrap interval."""
    values = [_num(_dig(m, path)) for m in per_seed]
    if all(v is None for v in values):
        return None
    if len(per_seed) >= 2 and path in summary:
        entry = summary[path]
        low, high = entry["ci"]
        return {"mean": entry["mean"], "low": _num(low), "high": _num(high), "values": values,
                "interval": "95% t-interval across seeds"}
    ci = run_ci(per_seed[0]) if run_ci else None
    low, high = (ci if isinstance(ci, list) and len(ci) == 2 else (None, None))
    mean = next(v for v in values if v is not None)
    return {"mean": mean, "low": _num(low), "high": _num(high) if _num(high) is not None else None,
            "values": values, "interval": "95% bootstrap over targets (one seed)" if ci else "none (one seed)"}


def _dig(node, path: str):
    """metrics.json leaf at a dotted path whose keys may hold dots (FPR levels: '0.001')."""
    parts = path.split(".")
    i = 0
    while i < len(parts):
        if not isinstance(node, dict):
            return None
        for j in range(len(parts), i, -1):  # longest key first: 'tpr_at_fpr', then '0.001'
            key = ".".join(parts[i:j])
            if key in node:
                node, i = node[key], j
                break
        else:
            return None
    return node


def _mean(values: list) -> float | None:
    xs = [v for v in (_num(x) for x in values) if v is not None]
    return sum(xs) / len(xs) if xs else None


def summarise_rows(rows: list[Row], sets: list[DefenseSet], seeds: int, levels: list[str]) -> list[dict]:
    """Per row: every attack's figures (mean, interval), the strongest attack by AUC, Dice, ε,
    OOD false-positive rates, and what the runs say about their own limits."""
    out = []
    cache: dict[int, tuple[dict, list[dict], list[dict]]] = {}
    for row in rows:
        entry: dict[str, Any] = {"threat_model": row.threat_model, "defense": row.defense,
                                 "applies": row.why_not is None, "why_not": row.why_not}
        out.append(entry)
        if row.why_not is not None:
            continue
        group = row.group
        if id(group) not in cache:
            replicate = json.loads((group.folder / "replicate.json").read_text())
            folders = [group.folder / f"seed-{k:02d}" for k in range(seeds)]
            from fedmia.runfolder import completion

            cache[id(group)] = (replicate.get("figures", {}), [read_metrics(f) for f in folders],
                                [completion(f) or {} for f in folders])
        summary, per_seed, records = cache[id(group)]
        attacks, skipped = {}, {}
        for attack in row.attacks:
            rows_of = [m.get("attacks", {}).get(attack) for m in per_seed]
            if all(r is None for r in rows_of):
                skipped[attack] = next((m.get("skipped_attacks", {}).get(attack) for m in per_seed
                                        if m.get("skipped_attacks", {}).get(attack)), "no figure in metrics.json")
                continue
            figs = {}
            for metric in ("auc", "balanced_accuracy", *(f"tpr_at_fpr.{level}" for level in levels)):
                sub = metric.split(".", 1)

                def run_ci(m, a=attack, sub=sub):
                    ci = ((m.get("attacks", {}).get(a) or {}).get("ci") or {})
                    return ci.get(sub[0]) if len(sub) == 1 else (ci.get(sub[0]) or {}).get(sub[1])

                fig = _figure(summary, per_seed, f"attacks.{attack}.{metric}", run_ci)
                if fig is not None:
                    figs[metric] = fig
            first = next(r for r in rows_of if r is not None)
            figs["_targets"] = {"members": first.get("n_members"), "nonmembers": first.get("n_nonmembers"),
                                "levels": list(levels),
                                "false_positives_allowed": first.get("false_positives_allowed", {}),
                                "low_n_levels": sorted({lv for r in rows_of if r for lv in r.get("low_n_levels", [])})}
            figs["_ood"] = {which: {s: _mean([((m.get(which) or {}).get(attack) or {}).get(s) for m in per_seed])
                                    for s in sorted({s for m in per_seed for s in ((m.get(which) or {}).get(attack) or {})})}
                            for which in ("ood", "ood_at_tpr50")}
            attacks[attack] = figs
        strongest = max((a for a in attacks if attacks[a].get("auc")), key=lambda a: attacks[a]["auc"]["mean"],
                        default=None)
        entry.update({
            "attacks": attacks, "skipped": skipped, "strongest": strongest,
            "dice": _figure(summary, per_seed, "utility.dice", None),
            "epsilon": _figure(summary, per_seed, "privacy.epsilon", None),
            "epsilon_lower": _figure(summary, per_seed, "privacy.audit.epsilon_lower", None),
            "epsilon_at_audit": _figure(summary, per_seed, "privacy.audit.epsilon_accountant", None),
            "source_inference": _figure(summary, per_seed, "source_inference.accuracy", None),
            "runs": [str(group.folder / f"seed-{k:02d}") for k in range(seeds)],
            "scenario_sha256": [r.get("scenario_sha256") for r in records],
            "wall_s": [_num((m.get("timing") or {}).get("wall_s")) for m in per_seed],
            "federation": "+".join(group.threat_models), "strategy": group.scenario.server.strategy,
            "defenses": group.scenario.defenses.keys(),
            "untested_defenses": untested_defenses(group.scenario),
            "adaptive": [a for d in active_defenses(group.scenario) for a in d.adaptive_attacks if a in attacks]
            + [f"{s} server" for d in active_defenses(group.scenario) for s in d.adaptive_servers
               if s == group.scenario.server.strategy],
        })
    return out
