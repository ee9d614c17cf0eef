"""Read the detectors the trap-weights server planted (`strategies/trap_weights.py`).

For each attacked round and each client update the server can see — every client's reply
without secure aggregation; under SecAgg+ the aggregate, rescaled to the isolated client's own
update where the server armed only that client — a detector's movement is the largest absolute
change of the parameters its channel owns (filter, affine, next convolution's input column). A
closed ReLU passes no gradient, so a detector whose target no client trained on does not move at
all (up to SecAgg+'s quantisation). Score = the movement of the target's detector (largest over
clients); owner = the client whose update moved it (-1 when only a secure sum was seen).

The decision rule is fixed in advance: a detector moved if its movement exceeds `tolerance`,
above SecAgg+'s quantisation step and below the smallest optimiser step.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedmia.attacks.base import AdversaryView, Attack, AttackResult, register_attack
from fedmia.attacks.updates import NeedsClientUpdates
from fedmia.data.records import Records
from fedmia.transcript import RoundView

# The strategy's detector layout, restated here so attacks do not import strategies.
_OWNED = ("conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight")


class TrapAttackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tolerance: float = Field(1e-5, ge=0, description="largest |change| that still counts as not moved")


def visible_updates(round_view: RoundView) -> list[tuple[int, list[np.ndarray]]]:
    """(partition-id or -1, update) for every update the server can see in the round."""
    if all(reply.weights is not None for reply in round_view.replies):
        return [(int(reply.metrics.get("partition-id", -1)),
                 [new.astype(np.float64) - old for new, old in zip(reply.weights, round_view.sent[reply.node_id])])
                for reply in round_view.replies]
    counts = {reply.node_id: reply.num_examples for reply in round_view.replies}
    notes = round_view.notes
    mean = [u.astype(np.float64) for u in round_view.observed_update]
    if notes.target_node is not None:
        if notes.target_node not in counts:
            return []
        # only the isolated node's detectors were armed: the others contributed exact zeros there
        scale = sum(counts.values()) / counts[notes.target_node]
        return [(int(notes.target_client), [u * scale for u in mean])]
    return [(-1, [u * len(counts) for u in mean])]  # a secure sum: which detectors, not whose


def detector_movement(update: list[np.ndarray], index: dict[str, int], block: str, channel: int) -> float:
    moved = 0.0
    for suffix in _OWNED:
        values = update[index[f"{block}.{suffix}"]]
        part = values[:, channel] if suffix == "conv2.weight" else values[channel]
        moved = max(moved, float(np.abs(part).max()))
    return moved


@register_attack("trap-weights")
class TrapWeightsAttack(Attack):
    access = "white-box"
    assumes = "control of the model sent; each reply or the secure sum; population data (to build detectors)"
    Params = TrapAttackParams

    def fit(self, view: AdversaryView) -> None:
        rounds = [r for r in view.transcript.rounds if r.notes.attacked == "trap-weights" and r.replies]
        if not rounds:
            raise NeedsClientUpdates("the trap-weights attack needs a round run by the trap-weights strategy")
        self.threshold = self.params.tolerance
        index = {name: i for i, name in enumerate(view.transcript.weight_names)}
        self.movement: dict[str, float] = {}
        self.owner: dict[str, int] = {}
        self.isolated_client = None
        for round_view in rounds:
            if round_view.notes.target_client is not None:
                self.isolated_client = int(round_view.notes.target_client)
            for client, update in visible_updates(round_view):
                for detector in round_view.notes.details["detectors"]:
                    moved = detector_movement(update, index, detector["block"], detector["channel"])
                    for record in detector["ids"]:
                        if moved > self.movement.get(record, -1.0):
                            self.movement[record] = moved
                            self.owner[record] = client if moved > self.params.tolerance else -1

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        # A record no detector was planted for gives no evidence: it scores as unmoved.
        return np.array([self.movement.get(str(record), 0.0) for record in records.ids])

    def result(self, view: AdversaryView) -> AttackResult:
        result = super().result(view)
        result.owners = np.array([self.owner.get(str(record), -1) for record in view.targets.ids])
        # With isolation the server armed one client: its figures are that client's members.
        result.scope_client = self.isolated_client
        return result
