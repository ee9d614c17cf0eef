"""False positives far from the data (Hintersdorf et al., "Do Not Trust Prediction Scores").

For every attack: the share of non-members from each out-of-distribution set that it calls
"member", at the adversary's own threshold and at the threshold that catches half the member
targets (TPR = 50%). Held-out in-distribution non-members are the reference row.
"""

from __future__ import annotations

import numpy as np

from fedmia.data.ood import make_ood_set
from fedmia.data.records import Records
from fedmia.evaluation.metrics import false_positive_rate, threshold_at_tpr


FAKE_STEPS = (5, 40)  # the auto budget's bounds: fewer is not optimised, more gains little (measured: 40)


def fake_steps(scenario, plan) -> int:
    """Steps per optimised fake: `evaluation.ood_steps`, or else a budget relative to the run's
    own cost — the fakes' backward passes (count × steps) about the record passes of its
    training (records × local epochs × rounds, over the clients that train), within FAKE_STEPS.
    The quickstart (6,000 record passes, 100 fakes) keeps 40; a one-round run of 200 records at
    256×256 gets 5 instead of spending 4,000 backward passes at that size on its fakes."""
    evaluation, federation = scenario.evaluation, scenario.federation
    if evaluation.ood_steps is not None:
        return evaluation.ood_steps
    records = sum(len(c) for c in plan.clients) if plan.clients else scenario.data.members
    passes = records * scenario.clients_per_round / federation.clients * federation.local_epochs * federation.rounds
    return int(min(FAKE_STEPS[1], max(FAKE_STEPS[0], passes // evaluation.ood_count)))


def ood_sets(served, plan, names, count: int, seed: int, device, report=None, steps: int = 40) -> dict[str, Records]:
    """Each set `names` lists (plug-ins of `fedmia.ood_sets`), made from the held-out records."""
    target_ids = set(plan.targets.ids)
    spare = [i for i, rid in enumerate(plan.heldout.ids) if rid not in target_ids]
    # too few held-out records outside the targets: fall back to all of them
    spare_records = plan.heldout.subset(spare) if len(spare) >= 10 else plan.heldout
    sets = {}
    for name in names:
        if report is not None:
            report(name, False)  # the set being made: the optimised fakes take a while
        sets[name] = make_ood_set(name, plan.heldout, plan.info, count=count, seed=seed, spare=spare_records,
                                  model=served, device=device, steps=steps)
        if report is not None:
            report(name, True)
    return sets


def ood_scores(served, plan, results: dict, names, count: int, seed: int, device, report=None,
               steps: int = 40) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
    """Every attack's scores on every OOD set ({attack: {set: scores}}) and the sets' sizes: the
    attack side of the figure, no ground truth. `report(name, done)` is called as each OOD set
    is started and when it is ready (progress); `steps`: per batch of optimised fakes."""
    sets = ood_sets(served, plan, names, count, seed, device, report, steps=steps)
    scored = {attack_name: {name: np.asarray(result.attack.score(result.view, records), dtype=float)
                            for name, records in sets.items()}
              for attack_name, result in results.items() if result.scores is not None}
    return scored, {k: len(v) for k, v in sets.items()}


def ood_rates(scored: dict[str, dict[str, np.ndarray]], results: dict, is_member: np.ndarray,
              sizes: dict[str, int]) -> dict:
    """The evaluator's side: the share of each OOD set an attack calls member, at its own
    threshold and at the threshold that catches half the member targets."""
    at_threshold, at_tpr50 = {}, {}
    for attack_name, by_set in scored.items():
        result = results[attack_name]
        half = threshold_at_tpr(result.scores, is_member, 0.5)
        at_tpr50[attack_name] = {name: false_positive_rate(s, half) for name, s in by_set.items()}
        if result.threshold is not None:
            at_threshold[attack_name] = {name: false_positive_rate(s, result.threshold) for name, s in by_set.items()}
    return {"ood": at_threshold, "ood_at_tpr50": at_tpr50, "ood_sets": dict(sizes)}
