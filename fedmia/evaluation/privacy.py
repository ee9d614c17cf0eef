"""ε spent and the empirical check of it, as metrics.json's `privacy` section.

Each defense accounts for itself (`Defense.privacy_report`: DP's accountants live beside DP,
fedmia/defenses/dp_accounting.py); the evaluator adds the empirical lower bound from the run's
gradient canaries (`Defense.canary_client`), which only it may read (their coins are ground truth).
"""

from __future__ import annotations

import math

from fedmia.defenses import active
from fedmia.defenses.dp_accounting import central_epsilons, local_epsilons  # noqa: F401  (re-exported)
from fedmia.evaluation.schema import EpsilonCheck, Privacy


def privacy_metrics(scenario, plan, transcript) -> Privacy | None:
    """The defense's own report (typed), with the evaluator's empirical check of ε when the run
    carried gradient canaries."""
    defenses = active(scenario)
    out = next((report for d in defenses if (report := d.privacy_report(scenario, plan, transcript)) is not None),
               None)
    auditing = next((d for d in defenses if d.canary_client is not None), None)
    if out is not None and auditing is not None:
        out = out.model_copy(update={"audit": EpsilonCheck.model_validate(_check(scenario, transcript, out, auditing))})
    return out


def _check(scenario, transcript, accounted: Privacy, defense) -> dict:
    """The empirical lower bound from the run's gradient canaries (fedmia/evaluation/epsilon_lower.py),
    against the defense's own ε at each δ it is tested at."""
    from fedmia.defenses.canaries import gradient_canaries
    from fedmia.data.plan import build_plan
    from fedmia.evaluation.epsilon_lower import epsilon_check, canary_scores
    from fedmia.models import scenario_model

    audit_client = defense.canary_client
    model = scenario_model(scenario, build_plan(scenario).info)
    canaries = gradient_canaries(scenario, model)
    names = transcript.weight_names
    trainable = [names.index(n) for n, p in model.named_parameters() if p.requires_grad]
    local = accounted.mode == "local"
    scores, source = canary_scores(transcript, trainable, canaries.coordinates, audit_client, replies=local)
    if local:
        delta = (accounted.per_client or {}).get(str(audit_client), {}).get("delta", accounted.delta)
    else:
        delta = accounted.delta

    def epsilon_at(d: float) -> float:
        value = defense.epsilon_at(scenario, transcript, d, audit_client if local else None)
        return math.inf if value is None else value

    result = epsilon_check(scores, canaries.inserted, delta, epsilon_at, source)
    result["client"] = audit_client
    return result
