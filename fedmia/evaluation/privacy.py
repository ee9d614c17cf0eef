"""ε spent and the empirical check of it, as metrics.json's `privacy` section.

Each defense accounts for itself (`Defense.privacy_report`: DP's accountants live beside DP,
fedmia/defenses/dp_accounting.py); the evaluator adds the empirical lower bound from the run's
gradient canaries (`Defense.audited_client`), which only it may read (their coins are ground truth).
"""

from __future__ import annotations

import math

from fedmia.defenses import active
from fedmia.defenses.dp_accounting import central_epsilons, local_epsilons  # noqa: F401  (re-exported)


def privacy_metrics(scenario, plan, transcript) -> dict | None:
    defenses = active(scenario)
    out = next((report for d in defenses if (report := d.privacy_report(scenario, plan, transcript)) is not None),
               None)
    auditing = next((d for d in defenses if d.audited_client is not None), None)
    if out is not None and auditing is not None:
        out["audit"] = _audit(scenario, transcript, out, auditing)
    return out


def _audit(scenario, transcript, accounted: dict, defense) -> dict:
    """The empirical lower bound from the run's gradient canaries (fedmia/evaluation/audit.py),
    against the defense's own ε at each δ it is tested at."""
    from fedmia.defenses.audit import audit_canaries
    from fedmia.data.plan import build_plan
    from fedmia.evaluation.audit import audit_metrics, canary_scores
    from fedmia.models import scenario_model

    audit_client = defense.audited_client
    model = scenario_model(scenario, build_plan(scenario).info)
    canaries = audit_canaries(scenario, model)
    names = transcript.weight_names
    trainable = [names.index(n) for n, p in model.named_parameters() if p.requires_grad]
    local = accounted["mode"] == "local"
    scores, source = canary_scores(transcript, trainable, canaries.coordinates, audit_client, replies=local)
    if local:
        delta = accounted["per_client"].get(str(audit_client), {}).get("delta", accounted["delta"])
    else:
        delta = accounted["delta"]

    def epsilon_at(d: float) -> float:
        value = defense.epsilon_at(scenario, transcript, d, audit_client if local else None)
        return math.inf if value is None else value

    result = audit_metrics(scores, canaries.inserted, delta, epsilon_at, source)
    result["client"] = audit_client
    return result
