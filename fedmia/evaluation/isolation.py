"""Ground truth for the isolation attack, computed outside the adversary's view.

The evaluator replays the target client's local training — same received weights, same
config, same seed, same records — to obtain its true update, then compares it with what the
adversary recovered from the aggregate.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmia.attacks.base import pixel_summaries
from fedmia.client_app import client_recipe, client_seed, local_training
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
                   seed=client_seed(scenario, round_view.round, partition), public=plan.public)
    return [new - old for new, old in zip(get_weights(model), received)]


def isolation_metrics(scenario, plan, attack, scores: np.ndarray) -> dict:
    rv, target = attack.round_view, attack.target_client
    truth = true_update(scenario, plan, rv, attack.target_node, target)
    positions = attack.attacked_positions
    recovered = np.concatenate([attack.recovered_update[i].ravel() for i in positions])
    actual = np.concatenate([truth[i].ravel() for i in positions]).astype(np.float64)
    cosine = float(recovered @ actual / (np.linalg.norm(recovered) * np.linalg.norm(actual) + 1e-30))
    # Membership on the isolated client: its members vs non-members (other clients' left out),
    # against the same attack on the client's true update (what a server without SecAgg sees).
    owners = plan.ledger.client_of(plan.targets.ids)
    keep = (owners == target) | (owners == -1)
    is_member = owners[keep] == target
    true_model = [s + d for s, d in zip(attack.sent, truth)]
    info = plan.info
    model = scenario_model(scenario, info)
    device = pick_device(scenario.runtime.device)
    targets = plan.targets.subset(np.flatnonzero(keep))
    set_weights(model, attack.sent)
    before = pixel_summaries(model, targets, device=device)["loss"]
    set_weights(model, true_model)
    true_scores = before - pixel_summaries(model, targets, device=device)["loss"]
    result = {"cosine": cosine, "relative_error": float(np.linalg.norm(recovered - actual) / (np.linalg.norm(actual) + 1e-30)),
              "target_client": target, "round": rv.round, "attacked_parameters": len(positions),
              "n_members": int(is_member.sum()), "n_nonmembers": int((~is_member).sum())}
    if is_member.any() and (~is_member).any():
        result["auc_isolated"] = membership_metrics(scores[keep], is_member).auc
        result["auc_true_update"] = membership_metrics(true_scores, is_member).auc
    return result
