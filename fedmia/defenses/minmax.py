"""Min-max adversarial regularisation (Nasr, Shokri & Houmansadr 2018), on segmentation maps.

An inline attack model (an MLP on the quantiles of an image's per-pixel true-class
log-probability) learns, batch by batch, to tell the client's training records from public
reference records (`data.public`); the model is trained on its loss plus `weight` × the
attack's log-gain on its own records, i.e. to fool the attack."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from fedmia.defenses.base import Defense, Params, needs_public, register_defense


class MinMaxParams(Params):
    weight: float = Field(1.0, ge=0, description="λ: how much the inline attack's gain costs the model")
    attack_steps: int = Field(1, ge=1, description="attack-model steps per training step")


def loss_quantiles(log_p_true: torch.Tensor, levels: int = 8) -> torch.Tensor:
    """The inline attack's view of an image: quantiles of its per-pixel true-class log-probability
    (differentiable, so the model can be trained against the attack)."""
    q = torch.linspace(0.0, 1.0, levels, device=log_p_true.device)
    return torch.quantile(log_p_true.flatten(1), q, dim=1).T


class InlineAttack(nn.Module):
    def __init__(self, levels: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(levels, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)  # logit of "member"


def _true_class_log_p(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(x), dim=1).gather(1, y.unsqueeze(1)).squeeze(1)


@register_defense("minmax", acts_on="local loss")
class MinMax(Defense):
    Params = MinMaxParams
    conflicts = {"dp": "the inline attack is fitted on the whole batch, so one record moves every "
                       "record's gradient and per-record clipping bounds nothing; expected one of them"}

    def describe(self) -> str:
        return f"min-max regularisation (weight {self.params.weight})"

    def problems(self, scenario) -> list[tuple[str, str]]:
        return needs_public(scenario, "defenses.minmax")

    def start(self, run) -> None:
        self.attack = InlineAttack().to(run.device)
        self.optimizer = torch.optim.Adam(self.attack.parameters(), lr=1e-3)
        self.ref_images = torch.as_tensor(run.public.images)
        self.ref_masks = torch.as_tensor(run.public.masks).long()

    def before_step(self, run, x, y) -> None:
        """The attack learns on this batch (members) vs public records (non-members)."""
        n = len(self.ref_images)
        ref = torch.as_tensor(run.rng.choice(n, size=len(x), replace=n < len(x)))
        rx, ry = self.ref_images[ref].to(run.device), self.ref_masks[ref].to(run.device)
        with torch.no_grad():
            features = torch.cat([loss_quantiles(_true_class_log_p(run.model, x, y)),
                                  loss_quantiles(_true_class_log_p(run.model, rx, ry))])
        labels = torch.cat([torch.ones(len(x)), torch.zeros(len(rx))]).to(run.device)
        for _ in range(self.params.attack_steps):
            self.optimizer.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(self.attack(features), labels).backward()
            self.optimizer.step()

    def extra_loss(self, run, logits, x, y):
        log_p = torch.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        # the attack's log-gain on members: log P(member); minimising it fools the attack
        return self.params.weight * F.logsigmoid(self.attack(loss_quantiles(log_p))).mean()
