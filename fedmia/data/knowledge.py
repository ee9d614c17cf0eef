"""What the adversary knows before any round — by type, without ground truth.

`AdversaryKnowledge` holds the dataset's description, the adversary's own population records and
the target list it scores: everything a malicious strategy needs to tailor its weights, and
nothing more. It has no ledger, no client's records, no held-out set: a strategy (or a plug-in
author) that wants membership has no field to read it from. Strategies and attacks may not
import the plan itself (import-linter's forbidden contract in pyproject.toml).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmia.data.records import DatasetInfo, Records


@dataclass(frozen=True)
class AdversaryKnowledge:
    info: DatasetInfo  # channels, classes: the server chose the model, it knows its shape
    population: Records  # the adversary's own prior data (records it knows are not members)
    targets: Records  # the records it scores; whether each is a member is what it wants to learn


def adversary_knowledge(scenario) -> AdversaryKnowledge:
    """The server side's knowledge of `scenario`'s federation (a multi-site audit: the auditor's
    folders). Built from the plan, which stays behind this function."""
    from fedmia.data.plan import build_plan

    plan = build_plan(scenario)
    return AdversaryKnowledge(plan.info, plan.population, plan.targets)
