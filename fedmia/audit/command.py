"""`fedmia audit` as a function: plan, run, summarise, judge, write audit.json, audit.html,
the JUnit XML and the PDF."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedmia.audit.plan import plan_audit
from fedmia.audit.report import plugins_of, render_html, write_pdf
from fedmia.audit.running import run_groups
from fedmia.audit.summary import AuditRow, summarise_rows
from fedmia.audit.verdict import Verdict, judge, junit_xml
from fedmia.io import write_json_atomic, write_text_atomic
from fedmia.scenario import Scenario


@dataclass
class AuditResult:
    out_dir: Path
    rows: list[AuditRow]
    verdicts: list[Verdict]
    counts: dict[str, int]
    html: Path
    pdf: Path | None
    pdf_note: str | None

    @property
    def gate_failed(self) -> bool:
        return any(v.status == "fail" for v in self.verdicts)


def run_audit(scenario: Scenario, *, source: str, seeds: int, out_dir: Path, gate: dict | None = None,
              gate_on: str = "upper", what_if: list[tuple[str, dict]] = (), junit: Path | None = None,
              pdf: bool = False, command: str = "", console=None, manifests: Path | None = None,
              runs=None) -> AuditResult:
    """`manifests`: a multi-site federation's ground truth (the sites' manifests); `runs`: how a
    seed trains — a user's Flower app (`fedmia.audit_app.AppRuns`) instead of fedmia's client."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    rows, groups, sets = plan_audit(scenario, what_if, source, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts, replications = run_groups(groups, seeds, console, manifests=manifests, runs=runs)
    levels = [str(f) for f in scenario.evaluation.tpr_at_fpr]
    summary = summarise_rows(rows, replications, levels)
    verdicts = judge(summary, gate, gate_on, seeds) if gate else []
    duration = time.perf_counter() - started
    from fedmia.runfolder import versions

    context = {"command": command, "source": source, "scenario": scenario.name, "seeds": seeds,
               "seed_values": [scenario.seed + k for k in range(seeds)], "levels": levels, "gate_on": gate_on,
               "gate": gate, "duration_s": duration, "counts": counts, "versions": versions(),
               "plugins": plugins_of(groups),
               "machine": {"platform": platform.platform(), "machine": platform.machine(),
                           "processor": platform.processor() or None, "cpus": os.cpu_count(),
                           "python": sys.version.split()[0]},
               "defense_sets": [{"label": s.label, "defenses": s.scenario.defenses.keys()} for s in sets],
               "groups": [{"folder": str(g.folder), "threat_models": g.threat_models, "defense": g.defense,
                           "attacks": [a.get("label") or a["name"] for a in g.attacks]} for g in groups]}
    write_json_atomic(out_dir / "audit.json", {**context, "rows": [r.to_json() for r in summary],
                                               "verdicts": [v.to_json() for v in verdicts]})
    page = render_html(summary, verdicts, context, groups)
    html_path = out_dir / "audit.html"
    write_text_atomic(html_path, page)
    if junit is not None:
        write_text_atomic(Path(junit), junit_xml(verdicts))
    pdf_path, note = write_pdf(html_path) if pdf else (None, None)
    return AuditResult(out_dir, summary, verdicts, counts, html_path, pdf_path, note)
