"""Verdicts: the gate's ceilings against the rows (`judge`, pure), their JUnit form, and the
headline each threat model gets with or without a gate. The HTML and the JUnit read the same
verdicts."""

from __future__ import annotations

import html

from dataclasses import asdict, dataclass

from fedmia.audit.plan import BASELINE
from fedmia.audit.summary import AuditRow
from fedmia.evaluation.figures import Figure


@dataclass(frozen=True)
class Verdict:
    """One ceiling of the gate on one threat model: pass, fail, not applicable or no figure;
    `value` and `attack` say what was judged (the strongest attack's), `why` why not judged."""

    threat_model: str
    metric: str
    ceiling: float
    on: str
    seeds: int
    status: str
    value: float | None = None
    attack: str | None = None
    why: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "Verdict":
        return cls(**raw)


def judge(rows: list[AuditRow], gate: dict[str, dict[str, float]], on: str, seeds: int) -> list[Verdict]:
    """One verdict per (threat model, ceiling) on the baseline defense set: the strongest attack
    (max over the threat model's attacks) of the interval's upper end (`on="upper"`) or mean.
    A value equal to its ceiling passes. Pure: rows and gate in, verdicts out."""
    verdicts = []
    for row in (r for r in rows if r.defense == BASELINE):
        ceilings = {**gate.get("all", {}), **gate.get(row.threat_model, {})}
        for metric, ceiling in ceilings.items():
            judged = dict(threat_model=row.threat_model, metric=metric, ceiling=ceiling, on=on, seeds=seeds)
            if not row.applies:
                verdicts.append(Verdict(**judged, status="not applicable", why=row.why_not))
                continue
            found = [(value, attack) for attack, figs in row.attacks.items()
                     if (f := figs.metric(metric)) is not None and (value := _judged(f, on)) is not None]
            if not found:
                verdicts.append(Verdict(**judged, status="no figure", why=f"no attack reported {metric}"))
                continue
            value, attack = max(found)
            verdicts.append(Verdict(**judged, status="fail" if value > ceiling else "pass", value=value, attack=attack))
    return verdicts


def _judged(figure: Figure, on: str) -> float | None:
    return figure.high if on == "upper" else figure.mean


def junit_xml(verdicts: list[Verdict]) -> str:
    failures = sum(v.status == "fail" for v in verdicts)
    skipped = sum(v.status not in ("pass", "fail") for v in verdicts)
    cases = []
    for v in verdicts:
        name = html.escape(f"{v.metric} <= {v.ceiling:g}", quote=True)
        body = ""
        if v.status == "fail":
            message = (f"{v.threat_model}: {v.metric} = {v.value:.4f} ({on_words(v.on, v.seeds)}, attack "
                       f"{v.attack}) exceeds the ceiling {v.ceiling:g}")
            body = f'<failure message="{html.escape(message, quote=True)}" type="ceiling">{html.escape(message)}</failure>'
        elif v.status != "pass":
            body = f'<skipped message="{html.escape(v.status + ": " + str(v.why), quote=True)}"/>'
        cases.append(f'  <testcase classname="{html.escape(v.threat_model, quote=True)}" name="{name}">{body}'
                     f'</testcase>')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<testsuite name="fedmia audit" tests="{len(verdicts)}" failures="{failures}" errors="0" '
            f'skipped="{skipped}">\n' + "\n".join(cases) + "\n</testsuite>\n")


def on_words(on: str, seeds: int = 2) -> str:
    if on == "point":
        return "mean across seeds" if seeds >= 2 else "point estimate (one seed)"
    return ("upper end of the 95% interval across seeds" if seeds >= 2 else
            "upper end of the run's 95% bootstrap interval over targets (one seed: no interval across seeds)")


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def num_text(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def fig_text(fig: Figure | None, digits: int = 3) -> str:
    if not fig:
        return "–"
    if fig.low is None or fig.high is None:
        return num_text(fig.mean, digits)
    return f"{num_text(fig.mean, digits)} [{num_text(fig.low, digits)}, {num_text(fig.high, digits)}]"


def headline(row: AuditRow, level: str) -> tuple[str, str]:
    """("leaks" | "unclear" | "none" | "na", one sentence): whether this threat model leaks, with
    or without a gate. It leaks when the strongest attack's TPR at the lowest FPR level its
    non-member count supports (ten false positives allowed: `level`, or a higher level the
    scenario reports) is above that level even at its interval's lower end — more patients named
    than false accusations made; "unclear" when only the AUC is above chance at its lower end;
    else nothing is measurable at this sample size (which is not "safe"). A model that learnt
    nothing (Dice below 0.05) is said instead: its figures measure nothing."""
    from fedmia.evaluation.report import LEARNT_NOTHING_DICE

    if not row.applies:
        return "na", f"does not apply: {row.why_not}"
    best = row.strongest
    if best is None:
        return "na", "no attack produced a figure"
    dice = row.dice.mean if row.dice else None
    if dice is not None and dice < LEARNT_NOTHING_DICE:
        return "na", f"the model learnt nothing (Dice {dice:.2f}): these figures do not measure leakage"
    figs = row.attacks[best]
    auc, targets = figs.auc, figs.targets
    # the lowest FPR level the non-member count supports (ten false positives allowed), else none
    supported = [lv for lv in sorted([level, *targets.levels], key=float) if lv not in targets.low_n_levels]
    tpr = figs.tpr.get(supported[0]) if supported else None
    if tpr and tpr.mean is not None and (tpr.low if tpr.low is not None else tpr.mean) > float(supported[0]):
        interval = f" (95% interval {pct(tpr.low)} to {pct(tpr.high)})" if tpr.low is not None else ""
        return "leaks", (f"leaks: an adversary ({best}) identifies {pct(tpr.mean)} of training patients{interval} "
                         f"at {level_words(supported[0])}")
    nonmembers = targets.nonmembers if targets.nonmembers is not None else "?"
    at = (f"at {level_words(supported[0])}" if supported else
          f"at a low false-positive rate ({nonmembers} non-members are too few to measure one)")
    if auc and auc.mean is not None and (auc.low if auc.low is not None else auc.mean) > 0.5:
        return "unclear", (f"leaks on average (AUC {fig_text(auc)} with {best}), but identifies no share of "
                           f"training patients reliably {at}")
    members = targets.members if targets.members is not None else "?"
    return "none", (f"no leakage measurable at this sample size ({members} members, "
                    f"{nonmembers} non-members): not evidence of safety")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def level_words(level: str) -> str:
    f = float(level)
    n = round(1 / f)
    return f"1 false accusation in {n:,}" if abs(1 / n - f) < 1e-12 else f"a false-positive rate of {f * 100:g}%"
