"""audit.html: self-contained (plots inline, no script, no request), and its PDF by headless
Chromium."""

from __future__ import annotations

import base64
import html
import io
import shutil
import subprocess
from pathlib import Path

from fedmia.audit.plan import BASELINE, Group
from fedmia.audit.verdict import fig_text, headline, level_words, num_text, on_words, pct, plural
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
             f"<p class=\"note\">Scenario <code>{e(ctx['source'])}</code>; {plural(seeds, 'independent federation')} per "
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
                     f'({len(failed)} of {len(verdicts)} ceilings exceeded; judged on the {on_words(ctx["gate_on"], seeds)})</div>')
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
                               + (f' ({num_text(v["value"])})' if "value" in v else "") + "</span>" for v in mine) or "–")
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
        words = (f"An adversary who accepts {level_words(low)} identifies {pct(tpr['mean'])} of training patients"
                 + (f" (95% interval {pct(tpr['low'])} to {pct(tpr['high'])})" if tpr and tpr["high"] is not None else "")
                 + (" — a figure that rests on fewer than ten false positives (†)" if flagged else "") + "."
                 if tpr else "–")
        parts.append(f"<tr><td>{e(tm)}</td><td>{e(best)}</td><td class=num>{fig_text(figs.get('auc'))}</td>"
                     + "".join(f"<td class=num>{fig_text(figs.get(f'tpr_at_fpr.{lv}'))}"
                               f"{' †' if lv in figs['_targets']['low_n_levels'] else ''}</td>" for lv in levels)
                     + f"<td class=words>{e(words)}</td><td>{gate_cell}</td></tr>")
    parts.append("</table>")
    if verdicts:
        parts.append(f'<p class="note">The gate judges each threat model\'s strongest attack (the largest value over '
                     f'its attacks) on the {on_words(ctx["gate_on"], seeds)}, under the scenario\'s own defenses; '
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
                     f'<td class=num>{fig_text(figs.get("auc"))}</td><td class=num>{fig_text(figs.get(f"tpr_at_fpr.{one}"))}</td>'
                     f'<td class=num>{fig_text(r.get("dice"))}</td></tr>')
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
                         f'{fig_text(r["epsilon"], 2)}</td><td class=num>{fig_text(r.get("epsilon_lower"), 2)}</td>'
                         f'<td class=num>{fig_text(r.get("epsilon_at_audit"), 2)}</td></tr>')
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
                         + "".join(f"<td class=num>{pct(o.get(s))}</td>" for s in sets) + "</tr>")
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
