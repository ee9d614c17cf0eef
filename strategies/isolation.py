"""Eluding secure aggregation by model inconsistency (Pasquini, Francati & Ateniese, CCS 2022).

Secure aggregation shows the server only Σ_k n_k·Δ_k / Σ_k n_k. In the attack round the server
sends the *target client* the true global model and every other client a crafted one whose
local update vanishes on the attacked parameters; the `num_examples` travel in plaintext, so
the aggregate, rescaled by Σn / n_target, *is* the target's update there.

- `isolation` (weights only): the last BatchNorm of the decoder gets γ = 0, β = −1, so the ReLU
  after it is dead for every input. Nothing upstream receives gradient, the segmentation head
  sees zeros, and with zero gradients SGD and Adam leave every parameter unchanged — except the
  head's bias, which is left out of the attacked set (as are BatchNorm buffers, which track the
  client's data statistics whatever the weights).
- `config-isolation` (config only): non-targets are told to train for 0 local epochs. Clients
  with `federation.pin_hyperparameters: true` ignore that, and the attack collapses.

After the attack round the server discards the round (the next global is the true model it sent
the target), so the federation's utility pays one wasted round.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedmia.models import build_model, scenario_model
from strategies import register_strategy
from strategies.fedavg import ObservingFedAvg


class IsolationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attack_round: int | None = Field(None, ge=2, description="default: the last round (needs >= 2: "
                                     "round 1 teaches the server which node is which client)")
    target_client: int = Field(0, ge=0, description="partition-id of the client to isolate")


def dead_decoder_bn(model: nn.Module) -> str:
    """State-dict prefix of the decoder's last BatchNorm (the one feeding the final ReLU)."""
    last = None
    if not isinstance(getattr(model, "decoder", None), nn.Module):
        raise ValueError(f"{type(model).__name__} has no `decoder` (smp's) whose last BatchNorm could "
                         "be switched off; expected model.family smp")
    for name, module in model.decoder.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__}: no BatchNorm in the decoder to switch off")
    return f"decoder.{last}"


def frozen_parameter_names(model: nn.Module, mode: str) -> list[str]:
    """Parameters whose update is zero for a crafted (non-target) client."""
    trainable = [n for n, _ in model.named_parameters()]
    if mode == "config":
        return trainable
    head_bias = [n for n in trainable if n.startswith("segmentation_head") and n.endswith("bias")]
    return [n for n in trainable if n not in head_bias]


class _Isolation(ObservingFedAvg):
    mode = "weights"

    def attack_round(self) -> int:
        return self.params.attack_round or self.scenario.federation.rounds

    def _skeleton(self):
        info = self.knowledge.info
        return scenario_model(self.scenario, info)

    def _target_node(self) -> int:
        """Learned from plaintext metrics of earlier rounds: clients report their partition-id."""
        for view in reversed(self.transcript.rounds[:-1]):
            for reply in view.replies:
                if reply.metrics.get("partition-id") == self.params.target_client:
                    return reply.node_id
        raise ValueError(f"isolation: client {self.params.target_client} has not replied before "
                         f"round {self.attack_round()}; it cannot be singled out")

    def tailor(self, server_round, weights, instructions):
        if server_round != self.attack_round():
            return super().tailor(server_round, weights, instructions)
        target = self._target_node()
        model = self._skeleton()
        names = list(model.state_dict().keys())
        notes = self.current_view.notes
        notes.attacked, notes.target_node, notes.target_client = f"isolation-{self.mode}", target, self.params.target_client
        notes.attacked_params = frozen_parameter_names(model, self.mode)
        return [(proxy, weights, config) if proxy.node_id == target
                else self.craft(proxy, weights, config, names, model)
                for proxy, config in instructions]

    def next_global(self, server_round, started_from, mean_update):
        if server_round != self.attack_round():
            return super().next_global(server_round, started_from, mean_update)
        return [w.copy() for w in self.transcript.global_before(server_round)]


@register_strategy("isolation", IsolationParams)
class WeightIsolation(_Isolation):
    mode = "weights"

    @classmethod
    def problems(cls, scenario, params: IsolationParams) -> list[tuple[str, str]]:
        """The crafted model needs a decoder BatchNorm to switch off: a plug-in model without one
        is refused before anything runs (config-isolation works on any model)."""
        try:
            model = build_model(scenario.model, in_channels=1, num_classes=2)
        except Exception:  # noqa: BLE001 — a model that cannot be built is validation's "model" problem
            return []
        try:
            dead_decoder_bn(model)
        except ValueError as error:
            return [("model.family", f"isolation: {error}")]
        return []

    def craft(self, proxy, weights, config, names, model):
        prefix = dead_decoder_bn(model)
        crafted = [w.copy() for w in weights]
        crafted[names.index(f"{prefix}.weight")] = np.zeros_like(crafted[names.index(f"{prefix}.weight")])
        crafted[names.index(f"{prefix}.bias")] = np.full_like(crafted[names.index(f"{prefix}.bias")], -1.0)
        return proxy, crafted, config


@register_strategy("config-isolation", IsolationParams)
class ConfigIsolation(_Isolation):
    mode = "config"

    def craft(self, proxy, weights, config, names, model):
        return proxy, weights, {**config, "local-epochs": 0}
