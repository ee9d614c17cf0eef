"""Turn a finished run (transcript + attack scores) into metrics.json, using the ledger.

This is the only module that joins attack scores with ground-truth membership.
"""

from __future__ import annotations

from fedmia.evaluation.metrics import membership_metrics, roc_points
from fedmia.models import build_model, set_weights
from fedmia.training import evaluate_utility, pick_device


def utility_per_round(scenario, plan, transcript) -> list[dict]:
    """Dice/mIoU of each round's global model on held-out data (never trained on)."""
    info = plan.info
    model = build_model(scenario.model, info.in_channels, info.num_classes)
    device = pick_device(scenario.runtime.device)
    rounds = []
    for view in transcript.rounds:
        if view.aggregate is None:
            continue
        set_weights(model, view.aggregate)
        utility = evaluate_utility(model, plan.heldout, info.num_classes, device)
        rounds.append({"round": view.round, "dice": utility["dice"], "miou": utility["miou"],
                       "loss": utility["loss"], "clients": len(view.replies), "failures": view.failures})
    return rounds


def evaluate_run(scenario, plan, transcript, outputs: dict) -> tuple[dict, dict]:
    """Returns (metrics without timing, ROC curves per attack)."""
    is_member = plan.ledger.is_member(plan.targets.ids)
    levels = tuple(scenario.evaluation.tpr_at_fpr)
    attacks, curves = {}, {}
    for name, out in outputs.items():
        scores = out["scores"]
        attacks[name] = membership_metrics(scores, is_member, fpr_levels=levels,
                                           threshold=out["threshold"]).to_dict()
        curves[name] = roc_points(scores, is_member)
    rounds = utility_per_round(scenario, plan, transcript)
    final = rounds[-1] if rounds else {"dice": float("nan"), "miou": float("nan")}
    model = scenario.model
    metrics = {
        "scenario": scenario.name,
        "description": scenario.description,
        "setup": {
            "dataset": scenario.data.dataset,
            "clients": scenario.federation.clients,
            "members": int(sum(len(c) for c in plan.clients)),
            "rounds": scenario.federation.rounds,
            "local_epochs": scenario.federation.local_epochs,
            "model": f"{model.arch}/{model.encoder} (depth {model.encoder_depth})",
            "server": scenario.server.strategy,
            "defenses": "none",
            "targets": {"members": int(is_member.sum()), "nonmembers": int((~is_member).sum())},
        },
        "utility": {"dice": final["dice"], "miou": final["miou"], "rounds": rounds},
        "attacks": attacks,
    }
    return metrics, curves

