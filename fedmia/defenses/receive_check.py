"""A client that inspects the model it receives before training on it.

Planted detectors (trap weights, imprint modules) are units that stay shut for almost every input
and open for one: that is what makes their gradient a membership test. Trained networks have no
use for such units — under BatchNorm in training mode a channel's pre-activation is standardised
over the batch, so an honest channel opens on a sizeable share of positions. The check runs the
client's own records through a copy of the received model exactly as local training will (train
mode, client-sized batches), counts for every ReLU output channel the share of positions where
it is open, and refuses the model when any channel opens on fewer than `min_open` of them: the client
does not train and replies with the model it received (`fedmia/local.py`), with the metric
`refused` = 1 and the reason, which the transcript keeps.

`action: repair` keeps the client training instead: the flagged channels are switched off
(their ReLU output multiplied by zero) for this local run, and the client trains the rest. A
closed channel passes no gradient, so the detector's filter, affine and the next convolution's
input column do not move at all — the server reads "not trained on" for every target — and the
reply says how many channels were repaired (`repaired`). Nothing else changes: the other
channels train as usual, and on an honest model the check flags nothing.

It looks at behaviour on the client's data, not at weights. A channel open nowhere is let pass
by default: a detector none of the client's records opens leaks nothing of this client, and
dead channels are common in GroupNorm (DP-SGD) models; `flag_shut: true` refuses those too
(also the disarmed detectors the isolation variant sends non-targets). A detector opens on about
one position per target, so `min_open` must sit below 1 / (records × positions) of the client's
data to see it: the default 0.1% needs more than 1,000 positions (100 scans of 32×32 give 6,400
at the first residual block). `README.md` reports false alarms on honest servers' rounds.

A server that knows `min_open` plants detectors that open on that share of a client's
positions, all on their own target (`evade_min_open` in strategies/trap_weights.py): measured,
it passes the default 0.001 and fails from 0.004, and above 1 / (records a client holds) no
detector that opens on one record only can pass (docs/defenses.md, "Repair against a trap that
knows it").
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedmia.defenses.base import Defense, ModelRefused, Params, register_defense


class ReceiveCheckParams(Params):
    min_open: float = Field(1e-3, gt=0, lt=1, description=(
        "smallest share of the client's own positions on which a ReLU channel that opens at all must open"))
    flag_shut: bool = Field(False, description="also flag channels that open on none of the client's positions")
    action: Literal["refuse", "repair"] = Field("refuse", description=(
        "refuse: do not train on a flagged model (reply with it unchanged); repair: switch the flagged "
        "channels off for this local run and train the rest"))


@torch.no_grad()
def relu_open_shares(model: nn.Module, images: np.ndarray, batch_size: int, device) -> dict[str, np.ndarray]:
    """Per ReLU call ("module name#call") the share of positions, per channel, where it opens."""
    work = copy.deepcopy(model).to(device).train()
    opened: dict[str, torch.Tensor] = defaultdict(lambda: 0)
    positions: dict[str, int] = defaultdict(int)
    calls: dict[str, int] = defaultdict(int)
    hooks = []
    for name, module in work.named_modules():
        if isinstance(module, nn.ReLU):
            def count(m, i, out, name=name):
                key = f"{name}#{calls[name]}"  # a ReLU module may serve several layers
                calls[name] += 1
                flat = out.detach().transpose(0, 1).flatten(1)  # (channels, positions)
                opened[key] = opened[key] + (flat > 0).sum(1).cpu()
                positions[key] += flat.shape[1]
            hooks.append(module.register_forward_hook(count))
    try:
        for start in range(0, len(images), batch_size):
            calls.clear()
            work(torch.as_tensor(images[start : start + batch_size]).to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return {key: (opened[key] / positions[key]).numpy() for key in opened}


@register_defense("receive-check", acts_on="received model")
class ReceiveCheck(Defense):
    Params = ReceiveCheckParams
    # a trap that knows min_open plants detectors opening on that share of a client's positions,
    # all on their own target (strategies/trap_weights.py, evade_min_open)
    adaptive_servers = ("trap-weights",)

    def knowing_server(self, strategy: str) -> dict:
        return {"evade_min_open": self.params.min_open} if strategy == "trap-weights" else {}

    def describe(self) -> str:
        return f"receive-check (ReLU open share >= {self.params.min_open:g})"

    def inspect(self, run) -> None:
        shares = relu_open_shares(run.model, run.records.images, run.recipe.batch_size, run.device)
        floor = -1.0 if self.params.flag_shut else 0.0
        shut = [(key, channel, share[channel]) for key, share in shares.items()
                for channel in np.flatnonzero((share > floor) & (share < self.params.min_open))]
        if shut and self.params.action == "repair":
            run.closed_channels = switch_off(run.model, shut)
            return
        if shut:
            key, channel, share = shut[0]
            raise ModelRefused(
                f"receive-check refused the received model: {len(shut)} ReLU channel(s) open on fewer than "
                f"{self.params.min_open:.2%} of this client's positions (first: {key} channel {channel}, "
                f"{share:.3%}) — units that respond to (almost) no input, as planted detectors do")

    def finish(self, run) -> dict[str, float]:
        switched = getattr(run, "closed_channels", None)
        if switched is None:
            return {"repaired": 0.0} if self.params.action == "repair" else {}
        count, handles = switched
        for handle in handles:
            handle.remove()
        run.closed_channels = None
        return {"repaired": float(count)}


def switch_off(model: nn.Module, flagged: list[tuple[str, int, float]]) -> tuple[int, list]:
    """Forward hooks that zero the flagged channels ("module#call", channel) of ReLU outputs on
    every forward pass; (channels switched off, the hooks to remove)."""
    channels: dict[str, list[int]] = defaultdict(list)
    for key, channel, _ in flagged:
        channels[key].append(int(channel))
    calls: dict[str, int] = defaultdict(int)
    handles = [model.register_forward_pre_hook(lambda module, args: calls.clear())]
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU) and any(key.rsplit("#", 1)[0] == name for key in channels):
            def close(m, i, out, name=name):
                key = f"{name}#{calls[name]}"  # the same numbering as relu_open_shares
                calls[name] += 1
                if key not in channels:
                    return None
                mask = torch.ones(out.shape[1], dtype=out.dtype, device=out.device)
                mask[channels[key]] = 0
                return out * mask.view(1, -1, *([1] * (out.dim() - 2)))
            handles.append(module.register_forward_hook(close))
    return len(flagged), handles
