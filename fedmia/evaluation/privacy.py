"""ε spent, from Opacus's RDP accountant.

Local DP: each client reports, per round, the (noise multiplier, sample rate, steps) of its
DP-SGD run; a client's ε composes every round it took part in. Central DP: one Gaussian
mechanism per round on the clipped client updates, subsampled at clients_per_round / clients
(client-level ε).
"""

from __future__ import annotations

from fedmia.defenses.dp import epsilon_spent


def privacy_metrics(scenario, plan, transcript) -> dict | None:
    dp = scenario.defenses.dp
    if dp is None:
        return None
    if dp.mode == "central":
        delta = dp.delta or 1.0 / (10 * scenario.federation.clients)
        q = scenario.clients_per_round / scenario.federation.clients
        rounds = sum(1 for r in transcript.rounds if r.replies)
        epsilon = epsilon_spent([(dp.noise_multiplier, q, rounds)], delta)
        return {"mode": "central", "level": "client", "epsilon": epsilon, "delta": delta,
                "noise_multiplier": dp.noise_multiplier, "clipping": dp.clipping,
                "clipping_norm": dp.clipping_norm}
    history: dict[int, list] = {}
    for view in transcript.rounds:
        for reply in view.replies:
            m = reply.metrics
            if "dp-steps" in m:
                history.setdefault(int(m["partition-id"]), []).append(
                    (float(m["dp-noise-multiplier"]), float(m["dp-sample-rate"]), int(m["dp-steps"])))
    per_client = {}
    for k, entries in sorted(history.items()):
        delta = dp.delta or 1.0 / (10 * len(plan.clients[k]))
        per_client[str(k)] = {"epsilon": epsilon_spent(entries, delta), "delta": delta,
                              "noise_multiplier": entries[-1][0], "steps": sum(e[2] for e in entries)}
    worst = max(per_client.values(), key=lambda c: c["epsilon"]) if per_client else {"epsilon": float("nan"), "delta": None}
    return {"mode": "local", "level": "record", "epsilon": worst["epsilon"], "delta": worst["delta"],
            "max_grad_norm": dp.max_grad_norm, "per_client": per_client}
