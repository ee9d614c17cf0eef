"""Ground truth for the isolation attack, computed outside the adversary's view.

The evaluator replays the target client's local training — same received weights, same
config, same seed, same records — to obtain its true update, then compares it with what the
adversary recovered from the aggregate.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmia.attacks.base import pixel_summaries
from fedmia.local import client_recipe, client_seed, local_training
from fedmia.evaluation.metrics import membership_metrics
from fedmia.models import get_weights, scenario_model, set_weights
from fedmia.training import pick_device


def true_update(scenario, plan, round_view, node_id: int, partition: int) -> list[np.ndarray]:
    info = plan.info
    model = scenario_model(scenario, info)
    sent = round_view.sent[node_id]
    set_weights(model, sent)
    received = get_weights(model)
    recipe = client_recipe(scenario, round_view.config[node_id])
    torch.set_num_threads(max(1, int(scenario.runtime.client_cpus)))  # as the client ran
    local_training(scenario, model, plan.clients[partition], recipe, device=pick_device(scenario.runtime.device),
                   seed=client_seed(scenario, round_view.round, partition), public=plan.public,
                   partition=partition)
    return [new - old for new, old in zip(get_weights(model), received)]


def isolation_metrics(scenario, plan, result, scores: np.ndarray, is_member: np.ndarray) -> dict:
    """The recovered update against the true one, and the attack on the isolated client's
    members (the scores given, already scoped) against the same attack on the true update."""
    found = result.recovered
    target = result.scope_client
    round_view = next(r for r in result.view.transcript.rounds if r.round == found.round)
    truth = true_update(scenario, plan, round_view, found.target_node, target)
    positions = found.attacked_positions
    recovered = np.concatenate([found.update[i].ravel() for i in positions])
    actual = np.concatenate([truth[i].ravel() for i in positions]).astype(np.float64)
    cosine = float(recovered @ actual / (np.linalg.norm(recovered) * np.linalg.norm(actual) + 1e-30))
    owners = plan.ledger.client_of(plan.targets.ids)
    keep = (owners == target) | (owners == -1)
    sent = found.sent
    true_model = [s + d for s, d in zip(sent, truth)]
    model = scenario_model(scenario, plan.info)
    device = pick_device(scenario.runtime.device)
    targets = plan.targets.subset(np.flatnonzero(keep))
    set_weights(model, sent)
    before = pixel_summaries(model, targets, device=device)["loss"]
    set_weights(model, true_model)
    true_scores = before - pixel_summaries(model, targets, device=device)["loss"]
    out = {"cosine": cosine, "relative_error": float(np.linalg.norm(recovered - actual) / (np.linalg.norm(actual) + 1e-30)),
           "target_client": target, "round": round_view.round, "attacked_parameters": len(positions),
           "n_members": int(is_member.sum()), "n_nonmembers": int((~is_member).sum())}
    if is_member.any() and (~is_member).any():
        out["auc_isolated"] = membership_metrics(scores, is_member).auc
        out["auc_true_update"] = membership_metrics(true_scores, is_member).auc
    return out
