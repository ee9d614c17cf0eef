"""The audit's plan: every (threat model, defense set) row and the federations they need —
one per distinct training (threat models that ask for the same federation share its run)."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmia.scenario import Scenario, ScenarioError, read_yaml


BASELINE = "scenario"  # the defense set the user's scenario has; the gate judges this one


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


def plan_audit(scenario: Scenario, what_if: list[tuple[str, dict]] = (), source: str = "<scenario>",
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

    return [defense.name for defense in active(scenario) if not (defense.adaptive_attacks or defense.adaptive_servers)]
