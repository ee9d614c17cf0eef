"""Recover the isolated client's update from the (secure) aggregate, then attack it.

Works on what the server saw only: the mean update the aggregation revealed, the plaintext
`num_examples`, what it sent to whom, and its own notes (which node it isolated and which
parameters its crafted models freeze). Scores: the loss drop from the model the target client
received to the model rebuilt from the recovered update (update-loss-drop on that one client).

BatchNorm running statistics are not recoverable (every client's data moves them), and stale
ones spoil an eval-mode forward pass; the rebuilt model re-estimates them on the adversary's
population data, which comes from the same distribution.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedmia.models import get_weights
from fedmia.attacks.base import AdversaryView, Attack, AttackResult, RecoveredUpdate, register_attack
from fedmia.attacks.updates import NeedsClientUpdates
from fedmia.data.records import Records


@register_attack("isolation")
class IsolatedUpdateLossDrop(Attack):
    access = "white-box"
    assumes = "the secure sum of a round it made inconsistent (the target's update alone); its population data"

    def fit(self, view: AdversaryView) -> None:
        attacked = [r for r in view.transcript.rounds if (r.notes.attacked or "").startswith("isolation")]
        if not attacked:
            raise NeedsClientUpdates("the isolation attack needs a round run by an isolation strategy")
        self.round_view = attacked[-1]
        notes = self.round_view.notes
        self.target_node = int(notes.target_node)
        self.target_client = int(notes.target_client)
        names = view.transcript.weight_names
        self.attacked_positions = [names.index(n) for n in notes.attacked_params]
        counts = {r.node_id: r.num_examples for r in self.round_view.replies}
        if self.target_node not in counts:
            raise NeedsClientUpdates(f"the isolated node {self.target_node} did not reply in round "
                                     f"{self.round_view.round}")
        scale = sum(counts.values()) / counts[self.target_node]
        update = self.round_view.observed_update
        # Non-targets contributed zero on the attacked parameters: rescale the mean to the sum.
        self.recovered_update = {i: update[i] * scale for i in self.attacked_positions}
        self.sent = self.round_view.sent[self.target_node]
        rebuilt = [w + self.recovered_update[i] if i in self.recovered_update else w
                   for i, w in enumerate(self.sent)]
        self.recovered_model = recalibrate_batchnorm(view, rebuilt, view.population)

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        before = view.pixel_summaries(records, self.sent)["loss"]
        after = view.pixel_summaries(records, self.recovered_model)["loss"]
        return before - after

    def result(self, view: AdversaryView) -> AttackResult:
        """Scored on the isolated client alone: the attack sees no other client's update, so its
        membership figures are that client's members against the non-members."""
        result = super().result(view)
        result.scope_client = self.target_client
        result.recovered = RecoveredUpdate(self.round_view.round, self.target_node, list(self.attacked_positions),
                                           self.recovered_update, self.sent)
        return result


@torch.no_grad()
def recalibrate_batchnorm(view: AdversaryView, weights, records: Records, batch_size: int = 32):
    """Re-estimate BatchNorm running statistics of `weights` on `records` (train-mode passes,
    cumulative average); everything else is unchanged."""
    model = view.model_with(weights)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return weights
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    model.train()
    for start in range(0, len(records), batch_size):
        model(torch.as_tensor(records.images[start : start + batch_size]).to(view.device))
    return get_weights(model)
