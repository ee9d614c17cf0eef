"""`fedmia audit`: threat models composed into shared runs, the report in a real browser, the
release gate's exit code and JUnit XML, and a second invocation that trains nothing.

One audit folder (tiny federation, one seed: two runs — the honest server's, read by the
black-box and client-updates threat models, and the trap-weights server's) serves every test
that needs runs; the rest plan or validate without training."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import yaml
from conftest import TINY, deep_update
from typer.testing import CliRunner

from fedmia import audit
from fedmia.cli import app
from fedmia.scenario import ScenarioError
from fedmia.validation import parse_scenario

SCENARIO = deep_update(TINY, {"name": "tiny-audit", "evaluation": {"ood": ["heldout"]}})


def _metrics_stamps(folder):
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("metrics.json"))}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One audit with a passing gate (`all: {auc: 1.0}`: no AUC exceeds 1)."""
    base = tmp_path_factory.mktemp("audit")
    (base / "scenario.yaml").write_text(yaml.safe_dump(SCENARIO))
    (base / "pass.yaml").write_text("all: {auc: 1.0}\n")
    before = audit.running.RUNS_TRAINED
    result = CliRunner().invoke(app, ["audit", str(base / "scenario.yaml"), "--seeds", "1", "--out", str(base / "out"),
                                      "--gate", str(base / "pass.yaml"), "--junit", str(base / "pass.xml")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"base": base, "out": base / "out", "output": result.output, "trained": audit.running.RUNS_TRAINED - before}


def test_one_run_per_distinct_training_and_a_passing_gate(audited):
    out = audited["out"]
    assert audited["trained"] == 2  # honest (black-box + client-updates together) and trap-weights
    report = json.loads((out / "audit.json").read_text())
    groups = {tuple(g["threat_models"]): g["attacks"] for g in report["groups"]}
    assert set(groups) == {("black-box", "client-updates"), ("trap-weights",)}
    # the honest server's black-box and update attacks read the same federation
    assert {"loss", "update-loss-drop", "source-inference"} <= set(groups[("black-box", "client-updates")])
    rows = {r["threat_model"]: r for r in report["rows"]}
    assert not rows["secagg-isolation"]["applies"] and "SecAgg+ is off" in rows["secagg-isolation"]["why_not"]
    assert rows["black-box"]["runs"] == rows["client-updates"]["runs"]
    for name in ("black-box", "client-updates", "trap-weights"):
        best = rows[name]["strongest"]
        assert best in rows[name]["attacks"] and rows[name]["attacks"][best]["auc"]["high"] is not None
        assert all(len(d) == 64 for d in rows[name]["scenario_sha256"])
    suite = ET.parse(audited["base"] / "pass.xml").getroot()
    assert suite.get("failures") == "0" and len(suite.findall("testcase")) == 4  # one per threat model
    assert suite.find("testcase[@classname='secagg-isolation']/skipped") is not None
    assert "upper end of the run's 95% bootstrap interval" in audited["output"] and "gate: PASS" in audited["output"]


def test_second_invocation_trains_nothing_and_a_failing_gate_exits_1(audited):
    base, out = audited["base"], audited["out"]
    stamps = _metrics_stamps(out / "runs")
    assert len(stamps) == 2
    (base / "fail.yaml").write_text("all: {auc: 0.0}\ntrap-weights: {tpr_at_fpr.0.01: 0.0}\n")
    before = audit.running.RUNS_TRAINED
    result = CliRunner().invoke(app, ["audit", str(base / "scenario.yaml"), "--seeds", "1", "--out", str(out),
                                      "--gate", str(base / "fail.yaml"), "--gate-on", "point",
                                      "--junit", str(base / "fail.xml")])
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert audit.running.RUNS_TRAINED == before and _metrics_stamps(out / "runs") == stamps
    assert "0 trained, 2 reused" in result.output and "gate: FAIL (judged on the point estimate" in result.output
    suite = ET.parse(base / "fail.xml").getroot()
    failures = suite.findall("testcase/failure")
    assert int(suite.get("failures")) == len(failures) >= 3
    trap = suite.find("testcase[@classname='trap-weights'][@name='tpr_at_fpr.0.01 <= 0']/failure")
    assert trap is not None and "exceeds the ceiling 0" in trap.get("message")
    assert re.search(r"auc = 0\.\d{4} .*exceeds the ceiling 0", failures[0].get("message"))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium_self_contained(audited, tmp_path):
    page = audited["out"] / "audit.html"
    text = page.read_text()
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.IGNORECASE)  # nothing to fetch
    assert "@media print" in text
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
             "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr, dom.stderr[-2000:]  # no console message (an error would be one)
    for section in audit.SECTIONS:
        assert f'id="{section}"' in dom.stdout, section
    images = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", dom.stdout)
    assert len(images) >= 3 and all(src.startswith("data:image/png;base64,") for src in images)
    shot = tmp_path / "audit.png"
    done = subprocess.run([*flags, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr[-2000:]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium (apt-get install chromium)")
def test_report_answers_first_and_reads_at_420_px(audited, tmp_path):
    """A headline per threat model without a gate (it was "No release gate was given" and a "–"
    in every verdict cell); "1 seed", not "1 seeds"; at 420 px nothing runs off the screen and no
    summary row is hundreds of pixels tall (it was 430 px)."""
    text = (audited["out"] / "audit.html").read_text()
    headlines = re.findall(r'<li class="(leaks|unclear|none|na)"><strong>([^<]+)</strong>: ([^<]+)</li>', text)
    assert {tm for _, tm, _ in headlines} == {"black-box", "client-updates", "trap-weights", "secagg-isolation"}
    # this tiny federation (one round of one epoch) segments nothing: said first, not read as "safe"
    assert all("learnt nothing" in words or kind == "na" for kind, _, words in headlines)
    assert "1 independent federation per" in text and "1 seeds" not in text
    assert 'name="viewport" content="width=device-width' in text  # a phone lays it out at its own width
    # measured in the browser: a copy of the report whose page is 420 px wide (headless Chromium's
    # window is at least 500), with a script that writes the layout into the DOM: the right edge
    # of every block of the page (a table scrolls inside itself) and the tallest summary row
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</head>", "<style>html{width:420px}</style></head>").replace(
        "</body>", "<script>document.body.setAttribute('data-layout', JSON.stringify({page: Math.max(...Array.from("
        "document.querySelectorAll('body > *, section > *, figure > *')).map(e => e.getBoundingClientRect().right)), "
        "tallest: Math.max(...Array.from(document.querySelectorAll('#summary tr')).map(r => "
        "r.getBoundingClientRect().height))}));</script></body>"))
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run([*flags, "--window-size=420,900", "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120)
    layout = json.loads(re.search(r"data-layout=\"([^\"]+)\"", dom.stdout).group(1).replace("&quot;", '"'))
    assert layout["page"] <= 420, layout  # tables scroll inside themselves; the page does not
    assert layout["tallest"] < 200, layout


def test_defenses_declare_their_adaptive_attacks_and_the_audit_runs_them(tmp_path):
    """A defense declares the attacks designed against it (output hardening: label-augment, which
    reads label maps); the audit adds them to the threat model that can run them wherever the
    defense is used, and lists the defenses that declare none."""
    scenario = parse_scenario(SCENARIO, "tiny")
    what_if = [("argmax", {"output": {"mode": "argmax"}}), ("smooth", {"label_smoothing": {"epsilon": 0.1}})]
    rows, groups, _ = audit.plan_audit(scenario, what_if, "tiny", tmp_path / "out")
    by = {(r.threat_model, r.defense): r for r in rows}
    assert "label-augment" in by[("black-box", "argmax")].attacks
    assert "label-augment" not in by[("black-box", "scenario")].attacks  # no defense, nothing to adapt to
    assert "label-augment" not in by[("client-updates", "argmax")].attacks  # it reads the served model only
    argmax = next(g for g in groups if g.defense == "argmax")
    assert audit.untested_defenses(argmax.scenario) == []
    smooth = next(g for g in groups if g.defense == "smooth")
    assert audit.untested_defenses(smooth.scenario) == ["label_smoothing"]


def test_a_defense_verdict_resting_only_on_non_adaptive_attacks_is_marked(audited):
    """The report marks a defense set whose defenses no adversary who knows them was tried against,
    and names the adaptive attacks that ran where there were some."""
    import copy

    data = json.loads((audited["out"] / "audit.json").read_text())
    rows = [audit.AuditRow.from_json(r) for r in data.pop("rows")]  # audit.json's rows round-trip
    verdicts = [audit.Verdict.from_json(v) for v in data.pop("verdicts")]
    assert json.loads(json.dumps([r.to_json() for r in rows])) == json.loads((audited["out"] / "audit.json").read_text())["rows"]
    base = next(r for r in rows if r.threat_model == "black-box" and r.applies)
    smooth, argmax = copy.deepcopy(base), copy.deepcopy(base)
    smooth.defense, smooth.defenses, smooth.untested_defenses, smooth.adaptive = "smooth", ["label_smoothing"], \
        ["label_smoothing"], []
    argmax.defense, argmax.defenses, argmax.untested_defenses, argmax.adaptive = "argmax", ["output"], [], \
        ["label-augment"]
    sets = data["defense_sets"] + [{"label": "smooth", "defenses": ["label_smoothing"]},
                                   {"label": "argmax", "defenses": ["output"]}]
    page = audit.render_html(rows + [smooth, argmax], verdicts, {**data, "defense_sets": sets}, [])
    assert "⚠ not tested against an adversary who knows it (label_smoothing)" in page
    assert "(adaptive: label-augment)" in page
    assert page.count("not tested against an adversary who knows it") == 1  # not on the undefended rows


def test_headline_says_leaks_unclear_or_nothing_measurable():
    from fedmia.evaluation.figures import Figure

    def row(tpr_low, auc_low):
        def fig(mean, low, high):
            return Figure(mean, low, high, 3, (mean,) * 3, True, "95% t-interval across seeds")

        figs = audit.AttackFigures(targets=audit.Targets(100, 1000, []), auc=fig(0.7, auc_low, 0.8),
                                   tpr={"0.001": fig(0.4, tpr_low, 0.6)})
        return audit.AuditRow("black-box", "scenario", attacks={"loss": figs}, strongest="loss")

    kind, words = audit.headline(row(0.2, 0.6), "0.001")
    assert kind == "leaks" and "identifies 40.0% of training patients" in words and "1 false accusation in 1,000" in words
    assert audit.headline(row(0.0, 0.6), "0.001")[0] == "unclear"
    kind, words = audit.headline(row(0.0, 0.45), "0.001")
    assert kind == "none" and "100 members, 1000 non-members" in words and "not evidence of safety" in words
    assert audit.headline(audit.AuditRow("black-box", "scenario", why_not="SecAgg+ is off"), "0.001") == \
        ("na", "does not apply: SecAgg+ is off")


def test_gate_file_errors_name_file_key_and_expected_values(audited):
    base = audited["base"]
    cases = {"typo.yaml": ("black-bx: {auc: 0.5}\n", "black-bx: unknown threat model; expected one of: all, black-box"),
             "metric.yaml": ("all: {tpr_at_fpr.0.05: 0.1}\n", "all.tpr_at_fpr.0.05: unknown metric; expected one of: "
                             "auc, balanced_accuracy, tpr_at_fpr.0.001, tpr_at_fpr.0.01"),
             "type.yaml": ("all: {auc: high}\n", "all.auc:")}
    for name, (text, message) in cases.items():
        (base / name).write_text(text)
        result = CliRunner().invoke(app, ["audit", str(base / "scenario.yaml"), "--seeds", "1", "--out",
                                          str(base / "never"), "--gate", str(base / name)])
        assert result.exit_code == 2 and f"{base / name}: {message}" in result.stderr, result.output
    assert not (base / "never").exists()  # refused before anything ran


def test_what_if_rows_and_applicability_without_training(tmp_path):
    scenario = parse_scenario(SCENARIO, "tiny")
    what_if = tmp_path / "what-if.yaml"
    what_if.write_text(yaml.safe_dump([{"label": "secagg", "defenses": {"secagg": True}},
                                       {"label": "argmax", "defenses": {"output": {"mode": "argmax"}}}]))
    rows, groups, _ = audit.plan_audit(scenario, audit.load_what_if(what_if), "tiny", tmp_path / "out")
    applies = {(r.threat_model, r.defense): r.why_not is None for r in rows}
    assert applies[("client-updates", "secagg")] is False and applies[("secagg-isolation", "secagg")] is True
    assert applies[("secagg-isolation", "scenario")] is False and applies[("client-updates", "argmax")] is True
    isolation = next(g for g in groups if g.defense == "secagg" and g.threat_models == ["secagg-isolation"])
    assert isolation.scenario.server.params() == {"isolate_client": 0} and isolation.scenario.defenses.secagg
    assert [a["name"] for a in isolation.attacks] == ["trap-weights"]
    assert len(groups) == 2 + 3 + 2  # scenario, argmax: honest + trap; secagg: black-box, trap, isolation
    assert len({str(g.folder) for g in groups}) == len(groups)
    what_if.write_text(yaml.safe_dump([{"label": "scenario", "defenses": {}}, {"defenses": {}}]))
    with pytest.raises(ScenarioError) as caught:
        audit.load_what_if(what_if)
    assert "0.label" in str(caught.value) and "1: expected {label" in str(caught.value)
