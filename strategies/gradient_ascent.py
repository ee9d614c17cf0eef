"""Active membership inference by gradient ascent (Nasr, Shokri & Houmansadr, S&P 2019).

In attack rounds the server pushes the global model *up* the loss of the target records before
broadcasting it: θ' = θ + η·∇Σ_targets ℓ(θ; x). A client that holds a target then pulls that
record's loss sharply back down during local training; a target nobody holds stays high. The
matching attack (`gradient-ascent`) scores the per-target loss drop on the returned models of the
attacked rounds. The server does not know which targets are members: it ascends on all of them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from fedmia.data.plan import build_plan
from fedmia.models import build_model, get_weights, set_weights
from fedmia.training import pick_device
from strategies import register_strategy
from strategies.fedavg import ObservingFedAvg


class GradientAscentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attack_rounds: list[int] | None = Field(None, description="default: the last round")
    steps: int = Field(10, ge=1, description="ascent steps on the targets")
    lr: float = Field(1e-3, gt=0, description="ascent step size")
    optimizer: Literal["adam", "sgd"] = "adam"
    batch_size: int = Field(64, ge=1)


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
            y = y_all[start : start + params.batch_size].to(device)
            (F.cross_entropy(model(x), y) * len(x) / len(x_all)).backward()
        optimizer.step()


@register_strategy("gradient-ascent", GradientAscentParams)
class GradientAscentFedAvg(ObservingFedAvg):
    def attack_rounds(self) -> set[int]:
        return set(self.params.attack_rounds or [self.scenario.federation.rounds])

    def tailor(self, server_round, weights, instructions):
        if server_round not in self.attack_rounds():
            return super().tailor(server_round, weights, instructions)
        plan = build_plan(self.scenario)  # the adversary's own target list (membership unknown)
        model = build_model(self.scenario.model, plan.info.in_channels, plan.info.num_classes)
        set_weights(model, weights)
        ascend(model, plan.targets.images, plan.targets.masks, self.params,
               pick_device(self.scenario.runtime.device))
        poisoned = get_weights(model)
        self.current_view.notes["attacked"] = "gradient-ascent"
        return [(proxy, poisoned, config) for proxy, config in instructions]
