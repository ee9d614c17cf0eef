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

Modules, one idea each: `plan` (threat models × defense sets → rows and shared federations),
`gate` (the gate file), `running` (training what the plan needs), `summary` (the rows' figures),
`verdict` (`judge`, the JUnit form, the headline), `report` (audit.html from a Jinja2 template, and
its PDF), `command`
(`run_audit`: all of it in order).
"""

from fedmia.audit.command import AuditResult, run_audit
from fedmia.audit.gate import gate_json_schema, load_gate
from fedmia.audit.plan import BASELINE, load_what_if, plan_audit, untested_defenses
from fedmia.audit.report import SECTIONS, render_html
from fedmia.audit.summary import AttackFigures, AuditRow, Targets
from fedmia.audit.verdict import Verdict, headline, judge, junit_xml

__all__ = ["AttackFigures", "AuditResult", "AuditRow", "BASELINE", "SECTIONS", "Targets", "Verdict",
           "gate_json_schema", "headline", "judge", "junit_xml", "load_gate", "load_what_if", "plan_audit",
           "render_html", "run_audit", "untested_defenses"]
