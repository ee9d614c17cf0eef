"""`fedmia audit FILE`: one scenario against every threat model, one report, one release gate.

Why one command: a data-protection officer asks "how much does this federation leak, to whom,
and does it pass?" — not "what is update-loss-drop's AUC". The audit runs the user's federation
under every registered threat model (`fedmia/threat_models.py`) and every what-if defense set,
replicates each over seeds (`fedmia.replicate.run_replicate`: mean and 95% t-interval), and
writes `audit.html` (self-contained: plots inline, no script, no request), `audit.json`, and
with a gate file a verdict (exit 1 when a ceiling is exceeded) and a JUnit XML for CI.

Runs whose training is identical are run once: threat models that ask for the same federation
(the honest server's black-box and update attacks) share one run with both attack lists. Every
run folder is reused when its completion record names exactly its scenario (`run_or_reuse`), so
a second invocation with the same arguments trains nothing.

Layout of OUT: `runs/DEFENSE-SET/THREAT-MODELS/seed-KK/` (run folders), `.../replicate.json`,
`audit.html`, `audit.json`, `audit.pdf` (with --pdf).
"""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, RootModel, ValidationError, WithJsonSchema

from fedmia.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from fedmia.scenario import Scenario, ScenarioError, describe_pydantic_error, read_yaml

RUNS_TRAINED = 0  # federations trained (or resumed) by this process: a reused run does not count
SECTIONS = ("summary", "matrix", "privacy", "ood", "assumptions", "limitations", "reproducibility")
BASELINE = "scenario"  # the defense set the user's scenario has; the gate judges this one


# ---------------------------------------------------------------- reading a run (one place)

def read_metrics(folder: Path) -> dict:
    """A finished run's metrics.json, through the project's reader (one function, so a schema'd
    reader replaces it in one line)."""
    from fedmia.evaluation.compare import load_run

    return load_run(Path(folder))["metrics"]


# ---------------------------------------------------------------- the plan

@dataclass
class DefenseSet:
    label: str
    defenses: dict[str, Any]
    scenario: Scenario  # the user's scenario with these defenses


@dataclass
class Group:
    """One federation (one training), replicated over seeds, read by one or more threat models."""

    defense: str
    threat_models: list[str]
    raw: dict[str, Any]
    attacks: list[dict] = field(default_factory=list)
    scenario: Scenario | None = None
    folder: Path | None = None


@dataclass
class Row:
    """One threat model under one defense set."""

    threat_model: str
    defense: str
    why_not: str | None = None
    attacks: list[str] = field(default_factory=list)  # the attack keys this threat model reads
    group: Group | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"


def _training_key(raw: dict) -> str:
    """What makes two runs the same federation: everything but the attacks and the names."""
    return json.dumps({k: v for k, v in raw.items() if k not in ("attacks", "name", "description")}, sort_keys=True)


def load_what_if(path: Path) -> list[tuple[str, dict]]:
    """`--what-if FILE`: a list of `{label: TEXT, defenses: {...}}`; each replaces the scenario's
    `defenses:` block (so `{label: none, defenses: {}}` is "no defense")."""
    source = str(path)
    raw = read_yaml(path)
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(source, [("(top level)", "expected a list of {label, defenses} entries")])
    out, problems = [], []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) - {"label", "defenses"} or "label" not in entry:
            problems.append((str(i), "expected {label: TEXT, defenses: {KEY: BLOCK, ...}}"))
            continue
        label, defenses = str(entry["label"]), entry.get("defenses") or {}
        if not isinstance(defenses, dict):
            problems.append((f"{i}.defenses", "expected a mapping of defense key -> block"))
        elif label == BASELINE or label in [o[0] for o in out]:
            problems.append((f"{i}.label", f"{label!r} is taken; expected a label of its own"))
        else:
            out.append((label, defenses))
    if problems:
        raise ScenarioError(source, problems)
    return out


def plan(scenario: Scenario, what_if: list[tuple[str, dict]] = (), source: str = "<scenario>",
         out_dir: Path = Path("runs/audit")) -> tuple[list[Row], list[Group], list[DefenseSet]]:
    """Every (threat model, defense set) row, and the federations they need — one per distinct
    training. A derived scenario its plug-ins reject makes its row "does not apply", with the
    reason; the user's own scenario was validated before."""
    from fedmia.threat_models import THREAT_MODELS
    from fedmia.validation import parse_scenario

    sets = [DefenseSet(BASELINE, scenario.resolved()["defenses"], scenario)]
    for label, defenses in what_if:
        raw = copy.deepcopy(scenario.resolved())
        raw["defenses"] = defenses
        sets.append(DefenseSet(label, defenses, parse_scenario(raw, f"{source} (what-if {label!r})")))
    rows: list[Row] = []
    groups: dict[str, Group] = {}
    for dset in sets:
        for name in THREAT_MODELS.names():
            model = THREAT_MODELS.get(name)()
            row = Row(name, dset.label, why_not=model.why_not(dset.scenario))
            rows.append(row)
            if row.why_not is not None:
                continue
            raw = model.derive(dset.scenario)
            raw["attacks"] = raw["attacks"] + adaptive_specs(dset.scenario, name, raw["attacks"])
            try:
                parse_scenario(raw, name)
            except ScenarioError as error:
                row.why_not = "its scenario is not valid here: " + "; ".join(f"{w}: {m}" for w, m in error.problems)
                continue
            key = dset.label + "\n" + _training_key(raw)
            group = groups.setdefault(key, Group(dset.label, [], raw))
            group.threat_models.append(name)
            known = {spec.get("label") or spec["name"] for spec in group.attacks}
            for spec in raw["attacks"]:
                spec_key = spec.get("label") or spec["name"]
                row.attacks.append(spec_key)
                if spec_key not in known:
                    group.attacks.append(spec)
                    known.add(spec_key)
            row.group = group
    for group in groups.values():
        joined = "+".join(group.threat_models)
        raw = {**group.raw, "attacks": group.attacks,
               "name": scenario.name + "-" + joined + ("" if group.defense == BASELINE else "-" + _slug(group.defense))}
        group.scenario = parse_scenario(raw, joined)
        group.folder = Path(out_dir) / "runs" / _slug(group.defense) / joined
    return rows, list(groups.values()), sets


def active_defenses(scenario: Scenario):
    from fedmia.defenses import active

    return active(scenario)


def adaptive_specs(scenario: Scenario, threat_model: str, attacks: list[dict]) -> list[dict]:
    """The attacks the scenario's defenses declare against themselves (`Defense.adaptive_attacks`)
    that this threat model runs — black-box ones by the black-box adversary, white-box ones by
    the client-updates one — and it does not already."""
    from fedmia.attacks import ATTACKS
    from fedmia.defenses import active

    reads = {"black-box": "black-box", "client-updates": "white-box"}.get(threat_model)
    have = {spec.get("label") or spec["name"] for spec in attacks}
    out = []
    for defense in active(scenario):
        for name in defense.adaptive_attacks:
            if name not in have and ATTACKS.get(name).access == reads:
                out.append({"name": name})
                have.add(name)
    return out


def untested_defenses(scenario: Scenario) -> list[str]:
    """Keys of the scenario's defenses that declare no attack designed against them: a verdict on
    them rests only on adversaries who ignore them."""
    from fedmia.defenses import active

    return [defense.key for defense in active(scenario) if not (defense.adaptive_attacks or defense.adaptive_servers)]


# ---------------------------------------------------------------- the gate

def _a_fraction(value: float) -> float:
    """Every gated metric (AUC, balanced accuracy, a TPR) lies in [0, 1]: `auc: 60` (meant: 0.60)
    would pass every release, so a ceiling outside that range is refused, not clipped."""
    if not 0.0 <= value <= 1.0:
        raise ValueError("a ceiling is a fraction in [0, 1], as every gated metric (AUC, balanced accuracy, "
                         "TPR) is: write 0.6 for 60%")
    return value


Ceiling = Annotated[float, AfterValidator(_a_fraction),
                    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1,
                                    "description": "the most the metric may reach (a fraction in [0, 1])"})]


class GateSpec(RootModel[dict[str, dict[str, Ceiling]]]):
    """`THREAT-MODEL or all: {METRIC: CEILING}`; metric names as in metrics.json's attack rows
    (`auc`, `balanced_accuracy`, `tpr_at_fpr.0.001`)."""


def gate_json_schema() -> dict:
    """The gate file's JSON Schema (docs/gate.schema.json, held to this by tests/test_docs.py)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **GateSpec.model_json_schema(),
            "title": "fedmia release gate",
            "description": "THREAT-MODEL or all: {METRIC: CEILING}. Metrics: auc, balanced_accuracy, "
                           "tpr_at_fpr.LEVEL (the scenario's evaluation.tpr_at_fpr levels)."}


def load_gate(path: Path, scenario: Scenario) -> dict[str, dict[str, float]]:
    """The gate's ceilings, or a ScenarioError naming FILE: key: what was expected."""
    from fedmia.threat_models import ATTACK_METRICS, THREAT_MODELS

    source = str(path)
    try:
        spec = GateSpec.model_validate(read_yaml(path))
    except ValidationError as error:
        raise ScenarioError(source, [describe_pydantic_error(e) for e in error.errors()]) from None
    levels = [str(f) for f in scenario.evaluation.tpr_at_fpr]
    metrics = [*ATTACK_METRICS, *(f"tpr_at_fpr.{level}" for level in levels)]
    known = ["all", *THREAT_MODELS.names()]
    problems = []
    for model, ceilings in spec.root.items():
        if model not in known:
            problems.append((model, f"unknown threat model; expected one of: {', '.join(known)}"))
        if not ceilings:
            problems.append((model, "expected at least one METRIC: CEILING"))
        for metric in ceilings:
            if metric not in metrics:
                problems.append((f"{model}.{metric}", f"unknown metric; expected one of: {', '.join(metrics)} "
                                 f"(the TPR levels are the scenario's evaluation.tpr_at_fpr)"))
    if not spec.root:
        problems.append(("(top level)", "expected THREAT-MODEL or all: {METRIC: CEILING}"))
    if problems:
        raise ScenarioError(source, problems)
    return spec.root


def judge(rows: list[dict], gate: dict[str, dict[str, float]], on: str, seeds: int) -> list[dict]:
    """One verdict per (threat model, ceiling) on the baseline defense set: the strongest attack
    (max over the threat model's attacks) of the interval's upper end (`on="upper"`) or mean."""
    verdicts = []
    for row in (r for r in rows if r["defense"] == BASELINE):
        ceilings = {**gate.get("all", {}), **gate.get(row["threat_model"], {})}
        for metric, ceiling in ceilings.items():
            verdict = {"threat_model": row["threat_model"], "metric": metric, "ceiling": ceiling, "on": on,
                       "seeds": seeds}
            if not row["applies"]:
                verdicts.append({**verdict, "status": "not applicable", "why": row["why_not"]})
                continue
            found = [(f["high"] if on == "upper" else f["mean"], attack) for attack, figs in row["attacks"].items()
                     if (f := figs.get(metric)) is not None and (f["high"] if on == "upper" else f["mean"]) is not None]
            if not found:
                verdicts.append({**verdict, "status": "no figure", "why": f"no attack reported {metric}"})
                continue
            value, attack = max(found)
            verdicts.append({**verdict, "value": value, "attack": attack,
                             "status": "fail" if value > ceiling else "pass"})
    return verdicts


def junit_xml(verdicts: list[dict]) -> str:
    failures = sum(v["status"] == "fail" for v in verdicts)
    skipped = sum(v["status"] not in ("pass", "fail") for v in verdicts)
    cases = []
    for v in verdicts:
        name = html.escape(f"{v['metric']} <= {v['ceiling']:g}", quote=True)
        body = ""
        if v["status"] == "fail":
            message = (f"{v['threat_model']}: {v['metric']} = {v['value']:.4f} ({_on_words(v['on'], v['seeds'])}, attack "
                       f"{v['attack']}) exceeds the ceiling {v['ceiling']:g}")
            body = f'<failure message="{html.escape(message, quote=True)}" type="ceiling">{html.escape(message)}</failure>'
        elif v["status"] != "pass":
            body = f'<skipped message="{html.escape(v["status"] + ": " + str(v.get("why")), quote=True)}"/>'
        cases.append(f'  <testcase classname="{html.escape(v["threat_model"], quote=True)}" name="{name}">{body}'
                     f'</testcase>')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<testsuite name="fedmia audit" tests="{len(verdicts)}" failures="{failures}" errors="0" '
            f'skipped="{skipped}">\n' + "\n".join(cases) + "\n</testsuite>\n")


def _on_words(on: str, seeds: int = 2) -> str:
    if on == "point":
        return "mean across seeds" if seeds >= 2 else "point estimate (one seed)"
    return ("upper end of the 95% interval across seeds" if seeds >= 2 else
            "upper end of the run's 95% bootstrap interval over targets (one seed: no interval across seeds)")


# ---------------------------------------------------------------- running

def _run(folder: Path, scenario: Scenario, console) -> str:
    """One seed's run, reused when finished; counts what it trains."""
    global RUNS_TRAINED
    from fedmia.sweep import run_or_reuse

    _, how = run_or_reuse(folder, scenario, console)
    if how != "reused":
        RUNS_TRAINED += 1
    return how


def _seed_point(scenario: Scenario, k: int) -> Scenario:
    # exactly run_replicate's point, so that its reuse finds these runs
    return scenario.model_copy(update={"seed": scenario.seed + k, "name": f"{scenario.name}-seed{scenario.seed + k}"})


def run_groups(groups: list[Group], seeds: int, console=None) -> dict[str, int]:
    """Train what is not finished (progress: runs done / to do, the current step), then each
    group's replicate.json. Returns {'trained': n, 'reused': m}."""
    from fedmia.pipeline import progress_bar
    from fedmia.replicate import run_replicate
    from fedmia.runfolder import finished_metrics

    units = [(g, k) for g in groups for k in range(seeds)]
    todo = [(g, k) for g, k in units if finished_metrics(g.folder / f"seed-{k:02d}", _seed_point(g.scenario, k)) is None]
    counts = {"trained": 0, "reused": len(units) - len(todo)}
    if console is not None:
        console.print(f"[bold]audit[/]: {len(units)} runs ({len(groups)} federations × {seeds} seeds), "
                      f"{counts['reused']} finished already, {len(todo)} to train")
    for i, (group, k) in enumerate(todo):
        step = f"{'+'.join(group.threat_models)} · defenses {group.defense} · seed {group.scenario.seed + k}"
        with progress_bar(console) as progress:  # one line per step; the run shows its own bars
            progress.add_task(f"audit: run {i + 1}/{len(todo)}: {step}", total=len(units),
                              completed=counts["reused"] + counts["trained"])
        _run(group.folder / f"seed-{k:02d}", _seed_point(group.scenario, k), console)
        counts["trained"] += 1
    with progress_bar(console) as progress:
        task = progress.add_task("audit: replicate.json per federation", total=len(groups))
        for group in groups:
            run_replicate(group.scenario, seeds, group.folder)  # every seed is finished: reads only
            progress.advance(task)
    return counts


# ---------------------------------------------------------------- figures

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


# ---------------------------------------------------------------- the command

@dataclass
class AuditResult:
    out_dir: Path
    rows: list[dict]
    verdicts: list[dict]
    counts: dict[str, int]
    html: Path
    pdf: Path | None
    pdf_note: str | None

    @property
    def gate_failed(self) -> bool:
        return any(v["status"] == "fail" for v in self.verdicts)


def run_audit(scenario: Scenario, *, source: str, seeds: int, out_dir: Path, gate: dict | None = None,
              gate_on: str = "upper", what_if: list[tuple[str, dict]] = (), junit: Path | None = None,
              pdf: bool = False, command: str = "", console=None) -> AuditResult:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    rows, groups, sets = plan(scenario, what_if, source, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = run_groups(groups, seeds, console)
    levels = [str(f) for f in scenario.evaluation.tpr_at_fpr]
    summary = summarise_rows(rows, sets, seeds, levels)
    verdicts = judge(summary, gate, gate_on, seeds) if gate else []
    duration = time.perf_counter() - started
    from fedmia.runfolder import versions

    context = {"command": command, "source": source, "scenario": scenario.name, "seeds": seeds,
               "seed_values": [scenario.seed + k for k in range(seeds)], "levels": levels, "gate_on": gate_on,
               "gate": gate, "duration_s": duration, "counts": counts, "versions": versions(),
               "plugins": _plugins_of(groups),
               "machine": {"platform": platform.platform(), "machine": platform.machine(),
                           "processor": platform.processor() or None, "cpus": os.cpu_count(),
                           "python": sys.version.split()[0]},
               "defense_sets": [{"label": s.label, "defenses": s.scenario.defenses.keys()} for s in sets],
               "groups": [{"folder": str(g.folder), "threat_models": g.threat_models, "defense": g.defense,
                           "attacks": [a.get("label") or a["name"] for a in g.attacks]} for g in groups]}
    write_json_atomic(out_dir / "audit.json", {**context, "rows": summary, "verdicts": verdicts})
    page = render_html(summary, verdicts, context, groups)
    html_path = out_dir / "audit.html"
    write_text_atomic(html_path, page)
    if junit is not None:
        write_text_atomic(Path(junit), junit_xml(verdicts))
    pdf_path, note = write_pdf(html_path) if pdf else (None, None)
    return AuditResult(out_dir, summary, verdicts, counts, html_path, pdf_path, note)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def write_pdf(html_path: Path) -> tuple[Path | None, str]:
    """audit.pdf by headless Chromium; (None, why not) when it is missing or fails."""
    binary = chromium()
    if binary is None:
        return None, "no PDF: `chromium` is not on PATH (Debian: apt-get install chromium); audit.html prints to PDF"
    pdf = html_path.with_suffix(".pdf")
    tmp = pdf.with_name(pdf.name + ".tmp")
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                               "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
                               f"--print-to-pdf={tmp}", html_path.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        return None, f"no PDF: chromium exited {done.returncode}: {done.stderr.strip()[-300:]}"
    write_bytes_atomic(pdf, tmp.read_bytes())
    tmp.unlink()
    return pdf, f"PDF: {pdf}"


# ---------------------------------------------------------------- the report

def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _fig_text(fig: dict | None, digits: int = 3) -> str:
    if not fig:
        return "–"
    if fig["low"] is None or fig["high"] is None:
        return _f(fig["mean"], digits)
    return f"{_f(fig['mean'], digits)} [{_f(fig['low'], digits)}, {_f(fig['high'], digits)}]"


def headline(row: dict, level: str) -> tuple[str, str]:
    """("leaks" | "unclear" | "none" | "na", one sentence): whether this threat model leaks, with
    or without a gate. It leaks when the strongest attack's TPR at the lowest FPR level its
    non-member count supports (ten false positives allowed: `level`, or a higher level the
    scenario reports) is above that level even at its interval's lower end — more patients named
    than false accusations made; "unclear" when only the AUC is above chance at its lower end;
    else nothing is measurable at this sample size (which is not "safe"). A model that learnt
    nothing (Dice below 0.05) is said instead: its figures measure nothing."""
    from fedmia.evaluation.report import LEARNT_NOTHING_DICE

    if not row["applies"]:
        return "na", f"does not apply: {row['why_not']}"
    best = row.get("strongest")
    if best is None:
        return "na", "no attack produced a figure"
    dice = (row.get("dice") or {}).get("mean")
    if dice is not None and dice < LEARNT_NOTHING_DICE:
        return "na", f"the model learnt nothing (Dice {dice:.2f}): these figures do not measure leakage"
    figs = row["attacks"][best]
    auc, targets = figs.get("auc"), figs.get("_targets", {})
    # the lowest FPR level the non-member count supports (ten false positives allowed), else none
    supported = [lv for lv in sorted([level, *targets.get("levels", [])], key=float)
                 if lv not in targets.get("low_n_levels", [])]
    tpr = figs.get(f"tpr_at_fpr.{supported[0]}") if supported else None
    if tpr and tpr["mean"] is not None and (tpr["low"] if tpr["low"] is not None else tpr["mean"]) > float(supported[0]):
        interval = f" (95% interval {_pct(tpr['low'])} to {_pct(tpr['high'])})" if tpr["low"] is not None else ""
        return "leaks", (f"leaks: an adversary ({best}) identifies {_pct(tpr['mean'])} of training patients{interval} "
                         f"at {_level_words(supported[0])}")
    at = (f"at {_level_words(supported[0])}" if supported else
          f"at a low false-positive rate ({targets.get('nonmembers', '?')} non-members are too few to measure one)")
    if auc and auc["mean"] is not None and (auc["low"] if auc["low"] is not None else auc["mean"]) > 0.5:
        return "unclear", (f"leaks on average (AUC {_fig_text(auc)} with {best}), but identifies no share of "
                           f"training patients reliably {at}")
    return "none", (f"no leakage measurable at this sample size ({targets.get('members', '?')} members, "
                    f"{targets.get('nonmembers', '?')} non-members): not evidence of safety")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _level_words(level: str) -> str:
    f = float(level)
    n = round(1 / f)
    return f"1 false accusation in {n:,}" if abs(1 / n - f) < 1e-12 else f"a false-positive rate of {f * 100:g}%"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt, quote=True)}">'


def plot_summary(rows: list[dict], levels: list[str]) -> str | None:
    """Per threat model (scenario's defenses): the strongest attack's AUC and TPRs, with intervals."""
    from matplotlib.figure import Figure

    applied = [r for r in rows if r["defense"] == BASELINE and r["applies"] and r["strongest"]]
    if not applied:
        return None
    metrics = ["auc", *(f"tpr_at_fpr.{lv}" for lv in levels)]
    fig = Figure(figsize=(3.2 * len(metrics), 0.6 + 0.5 * len(applied)))
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for y, row in enumerate(applied):
            f = row["attacks"][row["strongest"]].get(metric)
            if not f:
                continue
            ax.barh(y, f["mean"], color="#4c72b0")
            if f["low"] is not None and f["high"] is not None:
                ax.errorbar(f["mean"], y, xerr=[[f["mean"] - f["low"]], [f["high"] - f["mean"]]], color="k", capsize=3)
        ax.set_yticks(range(len(applied)), [r["threat_model"] for r in applied] if i == 0 else [""] * len(applied))
        ax.set_xlim(0, 1)
        ax.set_title("AUC" if metric == "auc" else f"TPR at {float(metric.split('.', 1)[1]) * 100:g}% FPR", fontsize=9)
        if metric == "auc":
            ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def plot_matrix(rows: list[dict]) -> str | None:
    """Dice against the strongest attack's AUC, one point per threat model × defense set."""
    from matplotlib.figure import Figure

    points = [r for r in rows if r["applies"] and r["strongest"] and r.get("dice")]
    if not points:
        return None
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    xs = [v for r in points for v in (r["dice"]["low"], r["dice"]["mean"], r["dice"]["high"]) if v is not None]
    middle = (min(xs) + max(xs)) / 2
    stacked: dict[tuple[float, float], int] = {}
    for r in points:
        auc, dice = r["attacks"][r["strongest"]]["auc"], r["dice"]
        xerr = [[dice["mean"] - dice["low"]], [dice["high"] - dice["mean"]]] if dice["low"] is not None else None
        yerr = [[auc["mean"] - auc["low"]], [auc["high"] - auc["mean"]]] if auc["low"] is not None else None
        ax.errorbar(dice["mean"], auc["mean"], xerr=xerr, yerr=yerr, fmt="o", capsize=3, markersize=4)
        right = dice["mean"] > middle  # labels point inwards, so none runs off the plot's edge
        spot = (round(dice["mean"], 3), round(auc["mean"], 3))
        stacked[spot] = stacked.get(spot, -1) + 1  # labels of points that coincide are stacked, not overprinted
        ax.annotate(f"{r['threat_model']} / {r['defense']}", (dice["mean"], auc["mean"]), fontsize=7,
                    xytext=(-4 if right else 4, 4 + 9 * stacked[spot]), textcoords="offset points",
                    ha="right" if right else "left")
    # scaled to the data, with room for the labels: at least 0.05 of Dice around the points
    span = max(max(xs) - min(xs), 0.05)
    ax.set_xlim(middle - 0.65 * span, middle + 0.65 * span)
    ax.set_xlabel("Dice on held-out data (utility)")
    ax.set_ylabel("strongest attack's AUC")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.grid(True, alpha=0.3)
    return _png(fig)


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #333}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}.na{color:#777}
.verdict{padding:.6em 1em;border:2px solid;display:inline-block;margin:.4em 0}.note{color:#555;font-size:.9em}
img{max-width:100%;height:auto}figure img{max-width:min(560px,100%)}code{background:#f4f4f4;padding:0 .2em;overflow-wrap:anywhere}
p,li,figcaption{overflow-wrap:anywhere}
table{display:block;max-width:100%;overflow-x:auto}td.words{min-width:16em}figure{margin:1em 0}
ul.headline{list-style:none;padding:0}ul.headline li{padding:.4em .7em;margin:.3em 0;border-left:5px solid #999;background:#fafafa}
.untested{color:#b35c00}ul.headline li.leaks{border-color:#c62828}ul.headline li.unclear{border-color:#e6a100}ul.headline li.none{border-color:#1a7f37}
@media (max-width:600px){body{margin:.5em auto;padding:0 .5em}h1{font-size:1.3em}table{font-size:.8em}td.words{min-width:12em}}
@media print{body{max-width:none;margin:0;font-size:10pt}h2{page-break-after:avoid}table,img,figure{page-break-inside:avoid}
a{color:inherit;text-decoration:none}}
"""


def render_html(rows: list[dict], verdicts: list[dict], ctx: dict, groups: list[Group]) -> str:
    from fedmia.threat_models import THREAT_MODELS

    e = html.escape
    levels = ctx["levels"]
    low = min(levels, key=float)
    one = "0.01" if "0.01" in levels else max(levels, key=float)
    seeds = ctx["seeds"]
    interval_words = ("mean [95% Student-t interval across seeds]" if seeds >= 2 else
                      "value [95% bootstrap interval over targets: one seed, so no interval across federations]")
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
             f"content=\"width=device-width, initial-scale=1\"><title>Membership-inference audit: "
             f"{e(ctx['scenario'])}</title><style>{CSS}</style></head><body>",
             f"<h1>Membership-inference audit: {e(ctx['scenario'])}</h1>",
             f"<p class=\"note\">Scenario <code>{e(ctx['source'])}</code>; {_plural(seeds, 'independent federation')} per "
             f"setting (seeds {', '.join(map(str, ctx['seed_values']))}); figures are {interval_words}. "
             "A training patient is a <em>member</em>; the adversary tries to tell members from scans that were "
             "never trained on.</p>"]

    # summary: the answer first, gate or no gate
    parts.append('<section id="summary"><h2>Summary</h2><ul class="headline">')
    for row in (r for r in rows if r["defense"] == BASELINE):
        kind, sentence = headline(row, low)
        parts.append(f'<li class="{kind}"><strong>{e(row["threat_model"])}</strong>: {e(sentence)}</li>')
    parts.append("</ul>")
    if verdicts:
        failed = [v for v in verdicts if v["status"] == "fail"]
        cls = "fail" if failed else "pass"
        parts.append(f'<div class="verdict {cls}">Release gate: {"FAIL" if failed else "PASS"} '
                     f'({len(failed)} of {len(verdicts)} ceilings exceeded; judged on the {_on_words(ctx["gate_on"], seeds)})</div>')
    else:
        parts.append('<p class="note">No release gate was given (<code>--gate gate.yaml</code>).</p>')
    parts.append("<table><tr><th>threat model</th><th>strongest attack (by AUC)</th><th>AUC</th>"
                 + "".join(f"<th>TPR at {float(lv) * 100:g}% FPR</th>" for lv in levels)
                 + "<th>in plain words</th><th>gate</th></tr>")
    for row in (r for r in rows if r["defense"] == BASELINE):
        tm = row["threat_model"]
        mine = [v for v in verdicts if v["threat_model"] == tm]
        gate_cell = ("; ".join(f'<span class="{v["status"] if v["status"] in ("pass", "fail") else "na"}">'
                               f'{e(v["metric"])} ≤ {v["ceiling"]:g}: {e(v["status"])}'
                               + (f' ({_f(v["value"])})' if "value" in v else "") + "</span>" for v in mine) or "–")
        if not row["applies"]:
            parts.append(f'<tr><td>{e(tm)}</td><td colspan="{3 + len(levels)}" class="na">does not apply: '
                         f'{e(row["why_not"])}</td><td>{gate_cell}</td></tr>')
            continue
        best = row["strongest"]
        if best is None:
            parts.append(f'<tr><td>{e(tm)}</td><td colspan="{3 + len(levels)}" class="na">no attack produced a '
                         f'figure ({e("; ".join(f"{a}: {w}" for a, w in row["skipped"].items()))})</td><td>{gate_cell}</td></tr>')
            continue
        figs = row["attacks"][best]
        tpr = figs.get(f"tpr_at_fpr.{low}")
        flagged = low in figs["_targets"]["low_n_levels"]
        words = (f"An adversary who accepts {_level_words(low)} identifies {_pct(tpr['mean'])} of training patients"
                 + (f" (95% interval {_pct(tpr['low'])} to {_pct(tpr['high'])})" if tpr and tpr["high"] is not None else "")
                 + (" — a figure that rests on fewer than ten false positives (†)" if flagged else "") + "."
                 if tpr else "–")
        parts.append(f"<tr><td>{e(tm)}</td><td>{e(best)}</td><td class=num>{_fig_text(figs.get('auc'))}</td>"
                     + "".join(f"<td class=num>{_fig_text(figs.get(f'tpr_at_fpr.{lv}'))}"
                               f"{' †' if lv in figs['_targets']['low_n_levels'] else ''}</td>" for lv in levels)
                     + f"<td class=words>{e(words)}</td><td>{gate_cell}</td></tr>")
    parts.append("</table>")
    if verdicts:
        parts.append(f'<p class="note">The gate judges each threat model\'s strongest attack (the largest value over '
                     f'its attacks) on the {_on_words(ctx["gate_on"], seeds)}, under the scenario\'s own defenses; '
                     "what-if rows are advice, not gated.</p>")
    uri = plot_summary(rows, levels)
    if uri:
        parts.append("<figure>" + _img(uri, "strongest attack per threat model") + "<figcaption class=note>Strongest "
                     "attack per threat model, with its interval.</figcaption></figure>")
    parts.append("</section>")

    # matrix
    parts.append('<section id="matrix"><h2>Threat model × defense</h2><table><tr><th>threat model</th><th>defenses</th>'
                 f"<th>strongest attack</th><th>AUC</th><th>TPR at {float(one) * 100:g}% FPR</th><th>Dice</th></tr>")
    best_defense = {}
    for r in rows:
        if r["applies"] and r["strongest"]:
            auc = r["attacks"][r["strongest"]]["auc"]["mean"]
            if r["threat_model"] not in best_defense or auc < best_defense[r["threat_model"]][1]:
                best_defense[r["threat_model"]] = (r["defense"], auc)
    for r in rows:
        label = f'{r["defense"]}' + (f' ({", ".join(r.get("defenses") or []) or "none"})' if r["applies"] else "")
        if not r["applies"] or not r["strongest"]:
            parts.append(f'<tr><td>{e(r["threat_model"])}</td><td>{e(label)}</td><td colspan=4 class=na>'
                         f'{e(r["why_not"] or "no figure")}</td></tr>')
            continue
        figs = r["attacks"][r["strongest"]]
        star = " ★" if best_defense.get(r["threat_model"], (None,))[0] == r["defense"] and len(ctx["defense_sets"]) > 1 else ""
        if r.get("untested_defenses"):  # a verdict on a defense no adversary who knows it was tried against
            star += (f' <span class="untested">⚠ not tested against an adversary who knows it '
                     f'({e(", ".join(r["untested_defenses"]))})</span>')
        if r.get("adaptive"):
            star += f' <span class="note">(adaptive: {e(", ".join(r["adaptive"]))})</span>'
        parts.append(f'<tr><td>{e(r["threat_model"])}</td><td>{e(label)}{star}</td><td>{e(r["strongest"])}</td>'
                     f'<td class=num>{_fig_text(figs.get("auc"))}</td><td class=num>{_fig_text(figs.get(f"tpr_at_fpr.{one}"))}</td>'
                     f'<td class=num>{_fig_text(r.get("dice"))}</td></tr>')
    parts.append("</table>")
    if len(ctx["defense_sets"]) > 1:
        parts.append('<p class="note">★ the defense set with the lowest strongest-attack AUC for that threat model; '
                     "weigh it against its Dice.</p>")
    uri = plot_matrix(rows)
    if uri:
        parts.append("<figure>" + _img(uri, "privacy against utility") + "<figcaption class=note>Utility (Dice) against "
                     "leakage (strongest attack's AUC) per threat model and defense set.</figcaption></figure>")
    for group in groups:
        roc = group.folder / "replicate_roc.png"
        if roc.is_file():
            uri = "data:image/png;base64," + base64.b64encode(roc.read_bytes()).decode("ascii")
            parts.append(f"<figure>{_img(uri, 'ROC ' + '+'.join(group.threat_models))}<figcaption class=note>Log-log ROC, "
                         f"every seed: {e('+'.join(group.threat_models))}, defenses {e(group.defense)}.</figcaption></figure>")
    parts.append("</section>")

    # privacy
    parts.append('<section id="privacy"><h2>Differential privacy: ε</h2>')
    dp = [r for r in rows if r["applies"] and r.get("epsilon")]
    if dp:
        parts.append("<table><tr><th>threat model</th><th>defenses</th><th>ε (accountant, upper bound)</th>"
                     "<th>ε empirical lower bound</th><th>accountant's ε at the bound's δ</th></tr>")
        for r in dp:
            parts.append(f'<tr><td>{e(r["threat_model"])}</td><td>{e(r["defense"])}</td><td class=num>'
                         f'{_fig_text(r["epsilon"], 2)}</td><td class=num>{_fig_text(r.get("epsilon_lower"), 2)}</td>'
                         f'<td class=num>{_fig_text(r.get("epsilon_at_audit"), 2)}</td></tr>')
        parts.append("</table><p class=note>The lower bound is tested at several δ fixed in advance and reported "
                     "at the one where it is tightest; compare it with the accountant's ε at that δ (last column). "
                     "A lower bound above it would mean the noise or the accounting is wrong; the ratio of the two "
                     "is the largest accounting error the audit could have missed.</p>")
    else:
        parts.append("<p>No setting in this audit uses differential privacy, so there is no ε to report.</p>")
    parts.append("</section>")

    # ood
    parts.append('<section id="ood"><h2>False positives far from the data</h2><p>Share of scans that were never '
                 "trained on, from each out-of-distribution set, that the strongest attack calls “member” at the "
                 "threshold that catches half the members (TPR 50%). High values mean the score reacts to anything "
                 "unusual, not to membership.</p>")
    ood_rows = [(r, r["attacks"][r["strongest"]]["_ood"]["ood_at_tpr50"]) for r in rows
                if r["defense"] == BASELINE and r["applies"] and r["strongest"]]
    sets = sorted({s for _, o in ood_rows for s in o})
    if sets:
        parts.append("<table><tr><th>threat model</th><th>attack</th>" + "".join(f"<th>{e(s)}</th>" for s in sets) + "</tr>")
        for r, o in ood_rows:
            parts.append(f'<tr><td>{e(r["threat_model"])}</td><td>{e(r["strongest"])}</td>'
                         + "".join(f"<td class=num>{_pct(o.get(s))}</td>" for s in sets) + "</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>Not measured: the scenario's <code>evaluation.ood</code> is empty.</p>")
    parts.append("</section>")

    # assumptions
    parts.append('<section id="assumptions"><h2>What each attack assumes, and what was not tried</h2>'
                 "<table><tr><th>threat model</th><th>adversary</th><th>it sees</th><th>known to be stopped by</th></tr>")
    for name in THREAT_MODELS.names():
        tm = THREAT_MODELS.get(name)
        parts.append(f"<tr><td>{e(name)}</td><td>{e(tm.adversary)}</td><td>{e(tm.sees)}</td><td>{e(tm.stopped_by)}</td></tr>")
    parts.append("</table><table><tr><th>attack</th><th>access</th><th>side data and models</th></tr>")
    used = list(dict.fromkeys(a for r in rows if r["applies"] for a in r["attacks"]))
    for attack in used:
        access, side = _assumes(attack, groups)
        parts.append(f"<tr><td>{e(attack)}</td><td>{e(access)}</td><td>{e(side)}</td></tr>")
    parts.append("</table>")
    parts.append("<p><strong>Not tried:</strong></p><ul>" + "".join(f"<li>{e(x)}</li>" for x in _not_tried(rows, groups))
                 + "</ul></section>")

    # limitations
    parts.append('<section id="limitations"><h2>Limitations of these figures</h2><ul>')
    parts.append(f"<li>{seeds} federation(s) per setting. "
                 + ("With few seeds the t-interval is wide (t = 4.30 at 3 seeds)." if 2 <= seeds <= 3 else
                    "With one seed there is no interval across federations: the brackets are the run's bootstrap "
                    "over targets, which does not carry the variation between federations." if seeds == 1 else "")
                 + "</li>")
    for r in rows:
        if not (r["applies"] and r["strongest"]):
            continue
        t = r["attacks"][r["strongest"]]["_targets"]
        allowed = ", ".join(f"{float(k) * 100:g}%: {v}" for k, v in (t["false_positives_allowed"] or {}).items())
        flag = (f"; levels resting on fewer than ten false positives (†): "
                f"{', '.join(f'{float(x) * 100:g}%' for x in t['low_n_levels'])}" if t["low_n_levels"] else "")
        parts.append(f'<li>{e(r["threat_model"])} / {e(r["defense"])}: {t["members"]} member and {t["nonmembers"]} '
                     f"non-member targets; false positives each level allows: {e(allowed)}{e(flag)}.</li>")
        for attack, why in r["skipped"].items():
            parts.append(f"<li>{e(r['threat_model'])} / {e(r['defense'])}: {e(attack)} was skipped: {e(str(why))}</li>")
    parts.append("<li>Figures describe this data, model and recipe; a different federation leaks differently. "
                 "An attack not run here (see above) may do better.</li></ul></section>")

    # reproducibility
    m = ctx["machine"]
    parts.append('<section id="reproducibility"><h2>Reproducibility</h2><table>'
                 f"<tr><th>command</th><td><code>{e(ctx['command'])}</code></td></tr>"
                 f"<tr><th>seeds</th><td>{', '.join(map(str, ctx['seed_values']))}</td></tr>"
                 f"<tr><th>runs</th><td>{ctx['counts']['trained']} trained, {ctx['counts']['reused']} reused</td></tr>"
                 f"<tr><th>duration</th><td>{ctx['duration_s']:.1f} s this invocation; "
                 f"{sum(w for r in rows if r['applies'] for w in (r.get('wall_s') or []) if w) / 1:.1f} s summed "
                 "over the rows' runs (a shared run counted once per threat model reading it)</td></tr>"
                 f"<tr><th>versions</th><td>{e(', '.join(f'{k} {v}' for k, v in ctx['versions'].items() if v))}</td></tr>"
                 f"<tr><th>plug-ins</th><td>{e('; '.join(_plugin_words(ctx.get('plugins', []))))}</td></tr>"
                 f"<tr><th>machine</th><td>{e(m['platform'])}, {e(m['machine'])}, {m['cpus']} CPUs, Python {e(m['python'])}</td></tr>"
                 "</table><table><tr><th>threat model</th><th>defenses</th><th>run folders</th><th>scenario SHA-256 "
                 "(completed.json)</th></tr>")
    for r in rows:
        if r["applies"] and r.get("runs"):
            parts.append(f'<tr><td>{e(r["threat_model"])}</td><td>{e(r["defense"])}</td><td>'
                         + "<br>".join(e(x) for x in r["runs"]) + "</td><td><code>"
                         + "<br>".join(e(str(x)) for x in r["scenario_sha256"]) + "</code></td></tr>")
    parts.append("</table></section></body></html>\n")
    return "\n".join(parts)


def _plugins_of(groups: list[Group]) -> list[dict[str, str]]:
    """Every plug-in the audit's runs named, with its package and version (each once)."""
    from fedmia.plugins import plugins_used

    used: list[dict[str, str]] = []
    for group in groups:
        for entry in plugins_used(group.scenario) if group.scenario is not None else []:
            if entry not in used:
                used.append(entry)
    return used


def _plugin_words(plugins: list[dict[str, str]]) -> list[str]:
    """'attack loss (fedmia 0.1.0)', ... grouped by family, for the reproducibility section."""
    return [f"{p['family']} {p['name']} ({p['package']} {p['version']})".rstrip() for p in plugins]


def _assumes(attack: str, groups: list[Group]) -> tuple[str, str]:
    from fedmia.attacks import ATTACKS

    name = next((a["name"] for g in groups for a in g.attacks if (a.get("label") or a["name"]) == attack), attack)
    if name not in ATTACKS:
        return "?", "?"
    cls = ATTACKS.get(name)  # each attack says what it assumes: the core names none of them
    return cls.access, cls.assumes


def _not_tried(rows: list[dict], groups: list[Group]) -> list[str]:
    import strategies
    from fedmia.attacks import ATTACKS

    out = [f"threat model {r['threat_model']} under defenses {r['defense']}: {r['why_not']}"
           for r in rows if not r["applies"]]
    ran = {a["name"] for g in groups for a in g.attacks}
    missing = [n for n in ATTACKS.names() if n not in ran]
    if missing:
        out.append("attacks not run (add them to the scenario's attacks: to include them): " + ", ".join(missing))
    used = {g.scenario.server.strategy for g in groups}
    others = [n for n in strategies.STRATEGIES.names() if n not in used]
    if others:
        out.append("server strategies not audited here (see docs/threat-models.md): " + ", ".join(others))
    return out
