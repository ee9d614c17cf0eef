"""Active membership inference by gradient ascent (Nasr, Shokri & Houmansadr, S&P 2019).

In attack rounds the server pushes the global model *up* the loss of the target records before
broadcasting it: θ' = θ + η·∇Σ_targets ℓ(θ; x). A client that holds a target then pulls that
record's loss sharply back down during local training; a target nobody holds stays high. The
matching attack (`gradient-ascent`) scores the per-target loss drop on the returned models of the
attacked rounds. The server does not know which targets are members: it ascends on all of them.

Ascent alone does not help: when targets resemble each other (segmentation scans of one
modality do), ascending on all of them raises the loss of the whole data distribution, every
client's training undoes it, and the raw drop of members and non-members grows alike. The
attack therefore subtracts what generalisation explains — the drop that local training replayed
from the sent model on the server's own population causes (`replays` on the attack) — and what
remains is memorisation, which a moderate ascent amplifies. With `calibrate: true` the server
rehearses first on its population: a third plays a client's training set, a third the
non-members, a third the replay set; it keeps the strength (steps × lr) whose replay-calibrated
drop separates the first two best, or no ascent when none beats passive observation.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from fedmia.attacks.base import pixel_summaries
from fedmia.evaluation.metrics import membership_metrics
from fedmia.models import get_weights, scenario_model, set_weights
from fedmia.defenses import defended_recipe
from fedmia.training import pick_device, train_local
from strategies import register_strategy
from strategies.fedavg import ObservingFedAvg


class GradientAscentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attack_rounds: list[int] | None = Field(None, description="default: the last round")
    steps: int = Field(10, ge=1, description="ascent steps on the targets")
    lr: float = Field(1e-3, gt=0, description="ascent step size")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="optimiser of the ascent steps")
    batch_size: int = Field(64, ge=1, description="targets per batch of an ascent step")
    calibrate: bool = Field(False, description="rehearse on population data and pick the strength")
    candidates: list[tuple[int, float]] = Field(
        default_factory=lambda: [(0, 0.0), (5, 1e-3), (10, 1e-3), (10, 3e-3)],
        description="(steps, lr) pairs tried when calibrating; (0, 0) = no ascent",
    )


def ascend(model: torch.nn.Module, images, masks, params: GradientAscentParams, device) -> None:
    """Raise the mean per-pixel loss on (images, masks) in place; BatchNorm statistics frozen."""
    model.to(device).eval()  # eval: the targets' statistics must not leak into BN buffers
    trainable = [p for p in model.parameters() if p.requires_grad]
    if params.optimizer == "adam":
        optimizer = torch.optim.Adam(trainable, lr=params.lr, maximize=True)
    else:
        optimizer = torch.optim.SGD(trainable, lr=params.lr, maximize=True)
    x_all, y_all = torch.as_tensor(images), torch.as_tensor(masks)
    for _ in range(params.steps):
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, len(x_all), params.batch_size):
            x = x_all[start : start + params.batch_size].to(device)
            y = y_all[start : start + params.batch_size].to(device).long()
            (F.cross_entropy(model(x), y) * len(x) / len(x_all)).backward()
        optimizer.step()


@register_strategy("gradient-ascent", GradientAscentParams)
class GradientAscentFedAvg(ObservingFedAvg):
    def attack_rounds(self) -> set[int]:
        return set(self.params.attack_rounds or [self.scenario.federation.rounds])

    def tailor(self, server_round, weights, instructions):
        if server_round not in self.attack_rounds():
            return super().tailor(server_round, weights, instructions)
        plan = self.knowledge  # the adversary's own target list (membership unknown)
        device = pick_device(self.scenario.runtime.device)
        strength = self.params
        if self.params.calibrate:
            strength = self.rehearse(weights, plan, device)
        model = self._model(weights, plan)
        if strength.steps > 0:
            ascend(model, plan.targets.images, plan.targets.masks, strength, device)
        poisoned = get_weights(model)
        notes = self.current_view.notes
        notes.attacked = "gradient-ascent"
        notes.details.update(steps=strength.steps, lr=strength.lr)
        return [(proxy, poisoned, config) for proxy, config in instructions]

    def _model(self, weights, plan):
        model = scenario_model(self.scenario, plan.info)
        set_weights(model, weights)
        return model

    def rehearse(self, weights, plan, device) -> GradientAscentParams:
        """Try each candidate strength on population data the server owns; keep the best."""
        population = plan.population
        third = len(population) // 3
        # a pseudo-client as large as a real one; in a multi-site audit the server does not know
        # the sites' sizes: as if its population were shared among the clients
        members = len(population) if self.scenario.data.multi_site else self.scenario.data.members
        size = min(third, max(2, members // self.scenario.federation.clients))
        pseudo_members = population.subset(list(range(size)))
        replay_set = population.subset(list(range(2 * third, 2 * third + size)))
        stand_in = population.subset(list(range(size)) + list(range(third, third + size)))
        is_member = [True] * size + [False] * size
        recipe = defended_recipe(self.scenario)
        results = []
        for steps, lr in self.params.candidates:
            candidate = self.params.model_copy(update={"steps": steps, "lr": lr})
            model = self._model(weights, plan)
            if steps > 0:
                ascend(model, stand_in.images, stand_in.masks, candidate, device)
            sent = get_weights(model)
            before = pixel_summaries(model, stand_in, device=device)["loss"]
            drops = []
            for training_set in (pseudo_members, replay_set):  # the client, then the replay
                set_weights(model, sent)
                train_local(model, training_set, recipe, seed=self.scenario.seed, device=device)
                drops.append(before - pixel_summaries(model, stand_in, device=device)["loss"])
            results.append((membership_metrics(drops[0] - drops[1], is_member).auc, -steps, candidate))
        self.current_view.notes.details["rehearsal_auc"] = {f"{c.steps}x{c.lr:g}": round(a, 4) for a, _, c in results}
        best = max(results, key=lambda r: (r[0], r[1]))
        return best[2]
