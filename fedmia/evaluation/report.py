"""Human-readable views of a run's ``metrics.json``: a Markdown report and a rich summary table.

Both are pure functions of the metrics dict, so a report can be re-rendered from an old run.
Top-level sections this module does not know (e.g. "privacy", "ood") are rendered generically
as small tables, so new measurements show up without touching this file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from rich.table import Table
from rich.text import Text

__all__ = ["render_report", "summary_table"]

# Sections with a dedicated rendering; every other dict-valued top-level key goes to _generic_section.
_KNOWN_SECTIONS = ("scenario", "description", "timing", "utility", "attacks", "setup")
_MISSING = "n/a"


# --------------------------------------------------------------------------------------------
# Formatting helpers


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fmt(x: Any) -> str:
    """Numbers to 3 decimals; tiny non-zero values (e.g. a DP delta) in scientific notation
    so they do not collapse to 0.000."""
    if x is None:
        return _MISSING
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return _MISSING
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x != 0 and abs(x) < 1e-3:
            return f"{x:.3e}"
        return f"{x:.3f}"
    return str(x)


def _cell(x: Any) -> str:
    # A pipe would split the Markdown cell, a newline would end the row.
    return _fmt(x).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _as_float(level: str) -> float | None:
    try:
        return float(level)
    except ValueError:
        return None


_TITLES = {
    "ood": "OOD false positives at the adversary's threshold",
    "ood_at_tpr50": "OOD false positives at the threshold giving TPR 50%",
    "ood_sets": "OOD sets",
}


def _title(key: str) -> str:
    # Short keys are acronyms in practice ("ood", "dp"); longer ones read as words.
    if key in _TITLES:
        return _TITLES[key]
    return key.upper() if len(key) <= 3 else key.replace("_", " ").capitalize()


def _fpr_label(level: str) -> str:
    """"0.001" -> "0.1%"."""
    f = _as_float(level)
    return level if f is None else f"{f * 100:g}%"


def _image_link(alt: str, ref: str) -> str:
    # Reports are read next to the PNGs; an absolute path would break when the run folder moves.
    p = Path(ref)
    target = p.name if p.is_absolute() else p.as_posix()
    if " " in target:
        target = f"<{target}>"
    return f"![{alt}]({target})"


# --------------------------------------------------------------------------------------------
# Section accessors


def _attacks(metrics: dict) -> dict[str, dict]:
    attacks = metrics.get("attacks")
    if not isinstance(attacks, dict):
        return {}
    return {name: m for name, m in attacks.items() if isinstance(m, dict)}


def _fpr_levels(attacks: dict[str, dict]) -> list[str]:
    """All FPR levels reported by any attack, lowest first."""
    levels: set[str] = set()
    for m in attacks.values():
        if isinstance(m.get("tpr_at_fpr"), dict):
            levels.update(m["tpr_at_fpr"])
    return sorted(levels, key=lambda lv: (_as_float(lv) is None, _as_float(lv) or 0.0))


def _tpr(m: dict, level: str) -> Any:
    tprs = m.get("tpr_at_fpr")
    return tprs.get(level) if isinstance(tprs, dict) else None


def _min_nonmembers(attacks: dict[str, dict]) -> int | None:
    ns = [m["n_nonmembers"] for m in attacks.values() if _is_number(m.get("n_nonmembers"))]
    return int(min(ns)) if ns else None


# --------------------------------------------------------------------------------------------
# Report sections


def _setup_paragraph(metrics: dict) -> str:
    setup = metrics.get("setup") if isinstance(metrics.get("setup"), dict) else {}
    phrases = {
        "dataset": lambda v: f"dataset **{v}**",
        "clients": lambda v: f"{v} clients",
        "members": lambda v: f"{v} members",
        "member_records": lambda v: f"({v} slices of them)",
        "rounds": lambda v: f"{v} federated rounds",
        "model": lambda v: f"model {v}",
        "server": lambda v: f"server aggregation {v}",
        "defenses": lambda v: f"defenses: {v}",
    }
    parts = [phrases[k](_fmt(setup[k])) for k in phrases if k in setup]
    parts += [f"{k}: {_fmt(v)}" for k, v in setup.items() if k not in phrases and not isinstance(v, (dict, list))]

    sentences = []
    if metrics.get("description"):
        sentences.append(str(metrics["description"]).strip().rstrip(".") + ".")
    if parts:
        text = ", ".join(parts)
        sentences.append(text[0].upper() + text[1:] + ".")
    else:
        sentences.append("No setup was recorded.")

    timing = metrics.get("timing")
    if isinstance(timing, dict) and _is_number(timing.get("wall_s")):
        names = {"startup_s": "start-up", "simulation_s": "federated rounds", "attacks_s": "attacks",
                 "ood_s": "OOD sets", "evaluation_s": "evaluation", "other_s": "other"}
        details = [f"{names.get(k, k.removesuffix('_s').replace('_', ' '))} {_fmt(v)} s"
                   for k, v in timing.items() if k in names and _is_number(v)]
        overlap = [f"{k.removesuffix('_s').replace('_', ' ')} {_fmt(v)} s (within the rounds)"
                   for k, v in timing.items() if k not in names and k != "wall_s" and _is_number(v)]
        extra = f" = {' + '.join(details)}" if details else ""
        sentences.append(f"Wall time {_fmt(timing['wall_s'])} s{extra}" + (f"; {', '.join(overlap)}" if overlap else "") + ".")
    return " ".join(sentences)


def _utility_section(metrics: dict) -> list[str]:
    utility = metrics.get("utility")
    lines = ["## Utility", ""]
    if not isinstance(utility, dict):
        return lines + ["No utility was recorded.", ""]
    served = f"Dice **{_fmt(utility.get('dice'))}**, mIoU **{_fmt(utility.get('miou'))}**"
    bare = utility.get("global_model")
    if isinstance(bare, dict):  # a defense released another model in the global model's place
        lines += [f"Served model ({utility.get('released')}): {served}; the bare global model: "
                  f"Dice {_fmt(bare.get('dice'))}, mIoU {_fmt(bare.get('miou'))}.", ""]
    else:
        lines += [f"Final global model: {served}.", ""]
    rounds = [r for r in utility.get("rounds") or [] if isinstance(r, dict)]
    if rounds:
        lines += _md_table(["Round", "Dice", "mIoU"], ([r.get("round"), r.get("dice"), r.get("miou")] for r in rounds))
        lines.append("")
    return lines


def _interval(m: dict, *path: str) -> Any:
    node = m.get("ci")
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, list) and len(node) == 2 else None


def with_interval(value: Any, interval: Any, flagged: bool = False) -> str:
    """"0.848 [0.80, 0.89]" (a † marks a figure resting on fewer than 10 false positives)."""
    text = _fmt(value)
    if interval is not None:
        text += f" [{_fmt2(interval[0])}, {_fmt2(interval[1])}]"
    return text + (" †" if flagged else "")


def compact_interval(value: Any, interval: Any, flagged: bool = False) -> str:
    """"0.85 .80–.89" for the terminal: five columns of it fit 80 characters with the attack's name
    (the report and metrics.json keep three decimals and the bracketed form)."""
    def short(x: Any) -> str:
        return f"{x:.2f}".removeprefix("0") if _is_number(x) and math.isfinite(x) else "—"

    text = f"{value:.2f}" if _is_number(value) and math.isfinite(value) else "—"
    if interval is not None:
        text += f" {short(interval[0])}–{short(interval[1])}"
    return text + ("†" if flagged else "")


def _fmt2(x: Any) -> str:
    return f"{x:.2f}" if _is_number(x) and math.isfinite(x) else _fmt(x)


def _flagged(m: dict, level: str) -> bool:
    return level in (m.get("low_n_levels") or [])


def _attacks_section(metrics: dict) -> list[str]:
    attacks = _attacks(metrics)
    lines = ["## Membership-inference attacks", ""]
    if not attacks:
        return lines + ["No attacks were run.", ""]
    levels = _fpr_levels(attacks)
    tpr_headers = [f"TPR@{_fpr_label(lv)} FPR" for lv in levels]
    header = ["Attack", "AUC", *tpr_headers, "Balanced accuracy", "Members / non-members"]
    rows = [
        [name, with_interval(m.get("auc"), _interval(m, "auc")),
         *(with_interval(_tpr(m, lv), _interval(m, "tpr_at_fpr", lv), _flagged(m, lv)) for lv in levels),
         with_interval(m.get("balanced_accuracy"), _interval(m, "balanced_accuracy")),
         f"{_fmt(m.get('n_members'))} / {_fmt(m.get('n_nonmembers'))}" + (f" ({m['scope']})" if m.get("scope") else "")]
        for name, m in attacks.items()
    ]
    lines += _md_table(header, rows) + [""]
    if any(m.get("ci") for m in attacks.values()):
        method = next(m["ci"] for m in attacks.values() if m.get("ci"))
        lines += [f"Brackets: {int(method.get('level', 0.95) * 100)}% intervals ({method.get('method')}, "
                  f"{method.get('draws')} draws). TPR at f counts thresholds with FPR strictly below f.", ""]
    allowed = {lv: m.get("false_positives_allowed", {}).get(lv) for m in attacks.values() for lv in levels}
    if any(v is not None for v in allowed.values()):
        lines += ["False positives each level allows: " + ", ".join(
            f"{_fpr_label(lv)}: {allowed[lv]}" for lv in levels if allowed.get(lv) is not None) + ".", ""]
    if any(m.get("low_n_levels") for m in attacks.values()):
        lines += ["† rests on fewer than 10 allowed false positives (fewer than 10/f non-members): "
                  "a noisy figure; read its interval.", ""]
    return lines


def _flatten_numbers(d: dict, prefix: str = "") -> dict[str, Any]:
    """Numeric leaves of a nested dict under dotted keys ({"tpr_at_fpr": {"0.01": x}} -> "tpr_at_fpr.0.01")."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_numbers(v, f"{name}."))
        elif _is_number(v) or isinstance(v, bool) or v is None:
            out[name] = v
    return out


def _generic_section(key: str, value: Any) -> list[str]:
    """Render an unknown section as tables; returns [] when there is nothing tabular in it.

    Scalars become a two-column table; dict entries become one matrix (rows = entries,
    columns = their numeric leaves), the common "per attack" or "per client" shape.
    """
    if not isinstance(value, dict):
        return []
    scalars = [[k, v] for k, v in value.items()
               if _is_number(v) or isinstance(v, (bool, str)) or v is None]
    nested = {k: _flatten_numbers(v) for k, v in value.items() if isinstance(v, dict)}
    nested = {k: v for k, v in nested.items() if v}

    lines: list[str] = []
    if scalars:
        lines += _md_table(["Metric", "Value"], scalars) + [""]
    if nested:
        columns = list(dict.fromkeys(c for leaves in nested.values() for c in leaves))
        rows = ([name, *(leaves.get(c) for c in columns)] for name, leaves in nested.items())
        lines += _md_table(["", *columns], rows) + [""]
    return [f"## {_title(key)}", "", *lines] if lines else []


def _how_to_read(metrics: dict) -> list[str]:
    attacks = _attacks(metrics)
    n = _min_nonmembers(attacks)
    levels = _fpr_levels(attacks)
    text = (
        "Each attack scores every target sample; a higher score means \"more likely a member\". "
        "An AUC of 0.5 is chance. AUC averages over all thresholds, but an attacker who wants "
        "to be confident about *some* individuals operates at a low false-positive rate, so the "
        "TPR at 0.1% and 1% FPR matter more than the AUC. TPR at FPR f is the best TPR among "
        "thresholds whose FPR is strictly below f: with n non-members it allows ceil(f·n) − 1 "
        "false positives, so it needs at least 1/f non-members (1000 for 0.1%, 100 for 1%) to "
        "mean anything, and 10/f to rest on ten false positives. Every figure carries a 95% "
        "interval; two figures whose intervals overlap are not shown to differ. Finally, a high score does not prove "
        "membership: out-of-distribution inputs can look like \"members\" too, so compare with "
        "the false-positive rate on out-of-distribution data where it is reported."
    )
    lines = ["## How to read this", "", text, ""]
    if n is None:
        return lines
    lines += [f"This run used {n} non-members (the smallest count over all attacks).", ""]
    for level in levels:
        f = _as_float(level)
        if f is None or f <= 0:
            continue
        needed = math.ceil(1 / f - 1e-9)  # the slack keeps 1/0.001 at 1000, not 1001
        if n < needed:
            lines += [
                f"> **Warning:** TPR@{_fpr_label(level)} FPR needs at least {needed} non-members to be "
                f"meaningful; only {n} were used, so it reports the TPR at zero false positives.",
                "",
            ]
    return lines


# --------------------------------------------------------------------------------------------
# Public API


LEARNT_NOTHING_DICE = 0.05  # below it the model segments nothing: no figure measures memorisation


def learnt_nothing(metrics: dict) -> str | None:
    """A warning when the released model learnt nothing (held-out Dice below 0.05): an attack's
    AUC on such a model reads as "safe" but measures nothing (a first audit once reported AUC
    0.63, TPR 0.00 on a model with Dice 0.000). None when the model learnt."""
    utility = metrics.get("utility") if isinstance(metrics.get("utility"), dict) else {}
    dice = utility.get("dice")
    if not _is_number(dice) or dice >= LEARNT_NOTHING_DICE:
        return None
    return (f"the model learnt nothing (Dice {dice:.2f}): the figures below do not measure leakage; train longer "
            "(federation.rounds, local_epochs, lr) until it segments")


def render_report(metrics: dict, *, roc_png: str | None, utility_png: str | None) -> str:
    """Markdown report for one run; PNGs are linked by the (relative) names given."""
    scenario = metrics.get("scenario", "unnamed run")
    lines = [f"# Membership-inference report: {scenario}", ""]
    if warning := learnt_nothing(metrics):
        lines += [f"> **Warning:** {warning[0].upper() + warning[1:]}.", ""]
    lines += [_setup_paragraph(metrics), ""]
    lines += _utility_section(metrics)
    if utility_png:
        lines += [_image_link("Utility per round", utility_png), ""]
    lines += _attacks_section(metrics)
    if roc_png:
        lines += [_image_link("ROC curves", roc_png), ""]
    for key, value in metrics.items():
        if key not in _KNOWN_SECTIONS:
            lines += _generic_section(key, value)
    lines += _how_to_read(metrics)
    return "\n".join(lines).rstrip() + "\n"


def summary_table(metrics: dict) -> Table:
    """Compact terminal summary: one row per attack with 95% intervals, utility in the caption."""
    from rich import box

    # fits 80 columns: no vertical rules, names never cut, each figure on one line
    table = Table(title=f"Membership inference: {metrics.get('scenario', 'unnamed run')}", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False)
    table.add_column("Attack", no_wrap=True)
    # the run's own FPR levels (the scenario's evaluation.tpr_at_fpr), lowest last
    levels = next((sorted(m["tpr_at_fpr"], key=float, reverse=True) for m in _attacks(metrics).values()
                   if isinstance(m.get("tpr_at_fpr"), dict) and m["tpr_at_fpr"]), ["0.01", "0.001"])
    for header in ("AUC", *(f"TPR@{_fpr_label(lv)}" for lv in levels), "Bal. acc"):
        table.add_column(header, justify="right", no_wrap=True)
    flagged_any = False
    for name, m in _attacks(metrics).items():
        flagged_any |= bool(m.get("low_n_levels"))
        # Text(...) so attack names are never parsed as rich markup.
        table.add_row(Text(str(name)), Text(compact_interval(m.get("auc"), _interval(m, "auc"))),
                      *(Text(compact_interval(_tpr(m, lv), _interval(m, "tpr_at_fpr", lv), _flagged(m, lv)))
                        for lv in levels),
                      Text(compact_interval(m.get("balanced_accuracy"), _interval(m, "balanced_accuracy"))))

    utility = metrics.get("utility")
    caption = []
    if isinstance(utility, dict):
        caption.append(f"Dice {_fmt(utility.get('dice'))} · mIoU {_fmt(utility.get('miou'))}")
    else:
        caption.append("no utility recorded")
    caption.append("95% intervals")
    if metrics.get("membership"):  # a multi-site run before the sites' manifests are joined
        caption.append(f"membership {metrics['membership']}")
    allowed = next((m.get("false_positives_allowed") for m in _attacks(metrics).values()
                    if m.get("false_positives_allowed")), None)
    if allowed:
        caption.append("false positives allowed: " + ", ".join(f"{_fpr_label(k)} {v}" for k, v in allowed.items()))
    if flagged_any:
        caption.append("† fewer than 10 false positives allowed")
    table.caption = " · ".join(caption)
    if warning := learnt_nothing(metrics):
        table.title = f"{table.title}\n[bold red]{warning}[/]"
    return table
