"""audit.html: self-contained (plots inline, no script, no request), rendered by Jinja2 from
templates/audit.html.j2 (markup) and templates/audit.css, and its PDF by headless Chromium."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from pathlib import Path

from fedmia.audit.plan import BASELINE, Group
from fedmia.audit.summary import AttackFigures, AuditRow
from fedmia.audit.verdict import Verdict, fig_text, headline, level_words, num_text, on_words, pct, plural
from fedmia.io import write_bytes_atomic


SECTIONS = ("summary", "matrix", "privacy", "ood", "assumptions", "limitations", "reproducibility")


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


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_summary(rows: list[AuditRow], levels: list[str]) -> str | None:
    """Per threat model (scenario's defenses): the strongest attack's AUC and TPRs, with intervals."""
    from matplotlib.figure import Figure

    applied = [r for r in rows if r.defense == BASELINE and r.applies and r.strongest]
    if not applied:
        return None
    metrics = ["auc", *(f"tpr_at_fpr.{lv}" for lv in levels)]
    fig = Figure(figsize=(3.2 * len(metrics), 0.6 + 0.5 * len(applied)))
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for y, row in enumerate(applied):
            f = row.best.metric(metric)
            if not f:
                continue
            ax.barh(y, f.mean, color="#4c72b0")
            if f.low is not None and f.high is not None:
                ax.errorbar(f.mean, y, xerr=[[f.mean - f.low], [f.high - f.mean]], color="k", capsize=3)
        ax.set_yticks(range(len(applied)), [r.threat_model for r in applied] if i == 0 else [""] * len(applied))
        ax.set_xlim(0, 1)
        ax.set_title("AUC" if metric == "auc" else f"TPR at {float(metric.split('.', 1)[1]) * 100:g}% FPR", fontsize=9)
        if metric == "auc":
            ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def plot_matrix(rows: list[AuditRow]) -> str | None:
    """Dice against the strongest attack's AUC, one point per threat model × defense set."""
    from matplotlib.figure import Figure

    points = [r for r in rows if r.applies and r.strongest and r.dice]
    if not points:
        return None
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    xs = [v for r in points for v in (r.dice.low, r.dice.mean, r.dice.high) if v is not None]
    middle = (min(xs) + max(xs)) / 2
    stacked: dict[tuple[float, float], int] = {}
    for r in points:
        auc, dice = r.best.auc, r.dice
        xerr = [[dice.mean - dice.low], [dice.high - dice.mean]] if dice.low is not None else None
        yerr = [[auc.mean - auc.low], [auc.high - auc.mean]] if auc.low is not None else None
        ax.errorbar(dice.mean, auc.mean, xerr=xerr, yerr=yerr, fmt="o", capsize=3, markersize=4)
        right = dice.mean > middle  # labels point inwards, so none runs off the plot's edge
        spot = (round(dice.mean, 3), round(auc.mean, 3))
        stacked[spot] = stacked.get(spot, -1) + 1  # labels of points that coincide are stacked, not overprinted
        ax.annotate(f"{r.threat_model} / {r.defense}", (dice.mean, auc.mean), fontsize=7,
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


TEMPLATES = Path(__file__).parent / "templates"


def _environment():
    """Jinja2, autoescaping every value (the report quotes scenario text and file paths)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals.update(fig_text=fig_text, pct=pct, num_text=num_text, on_words=on_words, plural=plural,
                       headline=headline, percent_level=lambda level: f"{float(level) * 100:g}", plain_words=_plain_words)
    return env


def _plain_words(figs: AttackFigures, level: str) -> str:
    """The summary's sentence for a threat model: the share identified at the lowest level."""
    tpr = figs.tpr.get(level)
    if not tpr:
        return "–"
    return (f"An adversary who accepts {level_words(level)} identifies {pct(tpr.mean)} of training patients"
            + (f" (95% interval {pct(tpr.low)} to {pct(tpr.high)})" if tpr.high is not None else "")
            + (" — a figure that rests on fewer than ten false positives (†)" if level in figs.targets.low_n_levels
               else "") + ".")


def render_html(rows: list[AuditRow], verdicts: list[Verdict], ctx: dict, groups: list[Group]) -> str:
    """audit.html from templates/audit.html.j2: the view is computed here (what to show, the
    plots), the markup lives in the template."""
    from fedmia.threat_models import THREAT_MODELS

    levels = ctx["levels"]
    seeds = ctx["seeds"]
    best_defense: dict[str, tuple[str, float]] = {}
    for r in rows:
        if r.applies and r.strongest:
            auc = r.best.auc.mean
            if r.threat_model not in best_defense or auc < best_defense[r.threat_model][1]:
                best_defense[r.threat_model] = (r.defense, auc)
    baseline = [r for r in rows if r.defense == BASELINE]
    ood_rows = [r for r in baseline if r.applies and r.strongest]
    rocs = [{"uri": "data:image/png;base64," + base64.b64encode(roc.read_bytes()).decode("ascii"),
             "name": "+".join(g.threat_models), "defense": g.defense}
            for g in groups if (roc := g.folder / "replicate_roc.png").is_file()]
    view = {
        "ctx": ctx, "css": (TEMPLATES / "audit.css").read_text(), "rows": rows, "baseline": baseline,
        "verdicts": verdicts, "failed": [v for v in verdicts if v.status == "fail"], "levels": levels,
        "low": min(levels, key=float), "one": "0.01" if "0.01" in levels else max(levels, key=float), "seeds": seeds,
        "interval_words": ("mean [95% Student-t interval across seeds]" if seeds >= 2 else
                           "value [95% bootstrap interval over targets: one seed, so no interval across federations]"),
        "summary_plot": plot_summary(rows, levels), "matrix_plot": plot_matrix(rows), "rocs": rocs,
        "best_defense": {tm: defense for tm, (defense, _) in best_defense.items()},
        "dp_rows": [r for r in rows if r.applies and r.epsilon],
        "ood_rows": ood_rows, "ood_sets": sorted({s for r in ood_rows for s in r.best.ood_at_tpr50}),
        "threat_models": [THREAT_MODELS.get(name) for name in THREAT_MODELS.names()],
        "assumed": [(a, *_assumes(a, groups)) for a in dict.fromkeys(a for r in rows if r.applies for a in r.attacks)],
        "not_tried": _not_tried(rows, groups),
        "run_seconds": sum(w for r in rows if r.applies for w in r.wall_s if w),
        "plugin_words": _plugin_words(ctx.get("plugins", [])),
    }
    return _environment().get_template("audit.html.j2").render(**view)


def plugins_of(groups: list[Group]) -> list[dict[str, str]]:
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


def _not_tried(rows: list[AuditRow], groups: list[Group]) -> list[str]:
    import strategies
    from fedmia.attacks import ATTACKS

    out = [f"threat model {r.threat_model} under defenses {r.defense}: {r.why_not}" for r in rows if not r.applies]
    ran = {a["name"] for g in groups for a in g.attacks}
    missing = [n for n in ATTACKS.names() if n not in ran]
    if missing:
        out.append("attacks not run (add them to the scenario's attacks: to include them): " + ", ".join(missing))
    used = {g.scenario.server.strategy for g in groups}
    others = [n for n in strategies.STRATEGIES.names() if n not in used]
    if others:
        out.append("server strategies not audited here (see docs/threat-models.md): " + ", ".join(others))
    return out
