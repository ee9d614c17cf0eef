"""The audit's rows, typed: per (threat model, defense set), every attack's figures (mean and
interval) built from the runs in memory (`Replication`s), never re-read from disk by name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fedmia.audit.plan import Row, active_defenses, untested_defenses
from fedmia.evaluation.figures import Figure, figure_of, finite
from fedmia.evaluation.schema import AttackMetrics, RunMetrics


@dataclass(frozen=True)
class Targets:
    """What an attack's figures rest on: its target counts, the FPR levels reported, how many
    false positives each allows, and the levels resting on fewer than ten (†)."""

    members: int | None
    nonmembers: int | None
    levels: list[str]
    false_positives_allowed: dict[str, int] = field(default_factory=dict)
    low_n_levels: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AttackFigures:
    """One attack's figures over a row's seeds; `ood` / `ood_at_tpr50`: the mean share of each
    OOD set called member, at the attack's own threshold / at the one catching half the members."""

    targets: Targets
    auc: Figure | None = None
    balanced_accuracy: Figure | None = None
    tpr: dict[str, Figure] = field(default_factory=dict)
    ood: dict[str, float | None] = field(default_factory=dict)
    ood_at_tpr50: dict[str, float | None] = field(default_factory=dict)

    def metric(self, name: str) -> Figure | None:
        """A figure by the gate's name for it: auc, balanced_accuracy or tpr_at_fpr.LEVEL."""
        if name.startswith("tpr_at_fpr."):
            return self.tpr.get(name.removeprefix("tpr_at_fpr."))
        return {"auc": self.auc, "balanced_accuracy": self.balanced_accuracy}.get(name)


@dataclass
class AuditRow:
    """One threat model under one defense set: its attacks' figures, the strongest attack (by
    mean AUC), utility, ε and its check, source inference, and what the runs say of themselves."""

    threat_model: str
    defense: str
    why_not: str | None = None
    attacks: dict[str, AttackFigures] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    strongest: str | None = None
    dice: Figure | None = None
    epsilon: Figure | None = None
    epsilon_lower: Figure | None = None
    epsilon_at_audit: Figure | None = None
    source_inference: Figure | None = None
    runs: list[str] = field(default_factory=list)
    scenario_sha256: list[str | None] = field(default_factory=list)
    wall_s: list[float | None] = field(default_factory=list)
    federation: str = ""
    strategy: str = ""
    defenses: list[str] = field(default_factory=list)
    untested_defenses: list[str] = field(default_factory=list)
    adaptive: list[str] = field(default_factory=list)

    @property
    def applies(self) -> bool:
        return self.why_not is None

    @property
    def best(self) -> AttackFigures | None:
        return self.attacks.get(self.strongest) if self.strongest else None

    def to_json(self) -> dict:
        return {**asdict(self), "applies": self.applies}

    @classmethod
    def from_json(cls, raw: dict) -> "AuditRow":
        """A row as audit.json holds it, typed again (the report renders from either)."""
        figure = _figure_from_json
        raw = {k: v for k, v in raw.items() if k != "applies"}
        attacks = {name: AttackFigures(targets=Targets(**a["targets"]), auc=figure(a["auc"]),
                                       balanced_accuracy=figure(a["balanced_accuracy"]),
                                       tpr={lv: figure(f) for lv, f in a["tpr"].items()},
                                       ood=a["ood"], ood_at_tpr50=a["ood_at_tpr50"])
                   for name, a in raw.pop("attacks").items()}
        figures = {k: figure(raw.pop(k)) for k in ("dice", "epsilon", "epsilon_lower", "epsilon_at_audit",
                                                    "source_inference")}
        return cls(**raw, **figures, attacks=attacks)


def _figure_from_json(raw: dict | None) -> Figure | None:
    return None if raw is None else Figure(**{**raw, "values": tuple(raw["values"])})


def _mean(values: list) -> float | None:
    xs = [v for v in map(finite, values) if v is not None]
    return sum(xs) / len(xs) if xs else None


def attack_figures(name: str, per_seed: list[RunMetrics], levels: list[str]) -> AttackFigures | None:
    """One attack's figures over the seeds (None when no seed scored it): across seeds from two
    seeds on, else the run's bootstrap interval over targets."""
    rows: list[AttackMetrics | None] = [m.attacks.get(name) for m in per_seed]
    present = [r for r in rows if r is not None]
    if not present:
        return None

    def figure(value, interval) -> Figure | None:
        return figure_of([value(r) if r else None for r in rows], [interval(r) if r and r.ci else None for r in rows])

    first = present[0]
    tpr = {lv: fig for lv in levels
           if (fig := figure(lambda r, lv=lv: r.tpr_at_fpr.get(lv), lambda r, lv=lv: r.ci.tpr_at_fpr.get(lv)))}

    def ood(which: str) -> dict[str, float | None]:
        by_seed = [(getattr(m, which) or {}).get(name) or {} for m in per_seed]
        return {s: _mean([rates.get(s) for rates in by_seed]) for s in sorted({s for rates in by_seed for s in rates})}

    return AttackFigures(
        targets=Targets(first.n_members, first.n_nonmembers, list(levels), dict(first.false_positives_allowed),
                        sorted({lv for r in present for lv in r.low_n_levels})),
        auc=figure(lambda r: r.auc, lambda r: r.ci.auc),
        balanced_accuracy=figure(lambda r: r.balanced_accuracy, lambda r: r.ci.balanced_accuracy),
        tpr=tpr, ood=ood("ood"), ood_at_tpr50=ood("ood_at_tpr50"))


def _run_figure(per_seed: list[RunMetrics], value, rate: bool = True) -> Figure | None:
    return figure_of([value(m) for m in per_seed], None, rate)


def summarise_rows(rows: list[Row], replications: dict[int, "object"], levels: list[str]) -> list[AuditRow]:
    """Per plan row: its group's seeds (`replications[id(group)]`, a `Replication`) as typed
    figures; a row that does not apply keeps only its reason."""
    out = []
    for row in rows:
        entry = AuditRow(row.threat_model, row.defense, row.why_not)
        out.append(entry)
        if row.why_not is not None:
            continue
        group = row.group
        replication = replications[id(group)]
        per_seed = [run.metrics for run in replication.runs]
        for attack in row.attacks:
            figures = attack_figures(attack, per_seed, levels)
            if figures is None:
                entry.skipped[attack] = next((m.skipped_attacks[attack] for m in per_seed if m.skipped_attacks.get(attack)),
                                             "no figure in metrics.json")
            else:
                entry.attacks[attack] = figures
        scored = [a for a in entry.attacks if entry.attacks[a].auc]
        entry.strongest = max(scored, key=lambda a: entry.attacks[a].auc.mean, default=None)
        privacy = [m.privacy for m in per_seed]
        entry.dice = _run_figure(per_seed, lambda m: m.utility.dice)
        entry.epsilon = _run_figure(per_seed, lambda m: m.privacy.epsilon if m.privacy else None, rate=False)
        entry.epsilon_lower = figure_of([p.audit.epsilon_lower if p and p.audit else None for p in privacy], None, False)
        entry.epsilon_at_audit = figure_of([p.audit.epsilon_accountant if p and p.audit else None for p in privacy],
                                           None, False)
        entry.source_inference = _run_figure(
            per_seed, lambda m: m.source_inference.accuracy if m.source_inference else None)
        entry.runs = [str(run.folder) for run in replication.runs]
        entry.scenario_sha256 = [(run.completion or {}).get("scenario_sha256") for run in replication.runs]
        entry.wall_s = [finite(m.timing.get("wall_s")) for m in per_seed]
        scenario = group.scenario
        entry.federation, entry.strategy = "+".join(group.threat_models), scenario.server.strategy
        entry.defenses, entry.untested_defenses = scenario.defenses.keys(), untested_defenses(scenario)
        entry.adaptive = ([a for d in active_defenses(scenario) for a in d.adaptive_attacks if a in entry.attacks]
                          + [f"{s} server" for d in active_defenses(scenario) for s in d.adaptive_servers
                             if s == scenario.server.strategy])
    return out
