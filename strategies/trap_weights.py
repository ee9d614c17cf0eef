"""Trap weights: planted membership detectors in the broadcast model (after Boenisch et al.,
"When the Curious Abandon Honesty", EuroS&P 2023; Fowl et al., "Robbing the Fed", ICLR 2022;
Nguyen et al., active MIA under LDP, AISTATS 2023) — for a fully convolutional smp network,
weights only: the clients run the architecture they agreed on.

A detector is one output channel of the first convolution of a residual block in the encoder
(conv1 → norm1 → ReLU). The server sets the channel's filter to a whitened matched filter for one
target — C⁻¹(f − μ) for the target's features f at one position of the block's input, μ and C
from the same features of the server's population data, i.e. the direction along which that
patch is furthest (Mahalanobis) from everything else — and the norm's affine so that the ReLU
opens only for responses half-way between the largest any population record gives and the one
the target gives inside a client-sized training batch (both measured by train-mode forward
passes, so BatchNorm's batch statistics and GroupNorm alike are what the clients will see). A
closed ReLU passes no gradient: the filter, its affine and the next convolution's input column
get exactly zero gradient — and SGD or Adam exactly zero steps — unless the target is in the
client's batches. The attack (`fedmia/attacks/trap.py`) reads which detectors moved.

Every channel of every trapped block becomes a detector; the block's own features then reach the
rest of the network only through its skip connection, and its residual gain (the last norm's γ)
is set to `gain`: a firing detector would otherwise be renormalised by the next BatchNorm into
a spike that makes detectors downstream fire on other records. The gradient reaching a detector
is scaled by `gain` too, which Adam normalises away (an SGD client moves it by lr·gain·g: still
non-zero, but a tolerance must sit below it). The skip connections keep the encoder working, so
the clients' training of the rest of the network goes on.

`helpers` (against thresholded secure aggregation, which releases a coordinate only where at
least t clients changed it): that many clients get every detector held open, so they change
every detector coordinate whatever they hold; with helpers = t − 1 a detector's coordinates are
released iff one more client — its target's — moved them. Model inconsistency again, no sybil
clients; a helper's own targets go unread that round, so helpers take turns.

After an attack round the server removes the detectors: trapped blocks get their pre-attack
conv1/norm1 back and zero residual gain (γ = 0, as in zero-init residual training), so the next
global computes what the round's aggregate computed and later honest rounds regrow the blocks.

Targets are split over the attack rounds; when a round has more targets than detector slots,
slots are shared (group testing): the filter is the normalised sum of its targets' filters and a
movement implicates all of them.

`isolate_client` adds model inconsistency against secure aggregation (Pasquini et al., CCS
2022): once the server knows which node that client is (its plaintext partition-id, from round
1 on), only that node gets armed detectors; every other node gets the same model with them
disarmed (threshold 10⁴ σ), so its update on the detector parameters is exactly zero and the
secure aggregate there is the target's update × Σn/n. Before that, every node is armed: per-target
detectors make the secure *sum* show which detectors moved — membership in the federation,
without the owner.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from fedmia.data.records import Records
from fedmia.models import build_model, get_weights, scenario_model, set_weights
from fedmia.training import pick_device
from strategies import register_strategy
from strategies.fedavg import ObservingFedAvg

DISARMED = 1e4  # threshold, in standard deviations, of a detector that must never open
HELD_OPEN = 10.0  # norm1 bias of a helper's detector: open on every position of a standardised batch


class TrapParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attack_rounds: list[int] | None = Field(None, description="default: every round")
    gain: float = Field(1e-3, gt=0, le=1, description="residual gain of a trapped block")
    positions: int = Field(6, ge=1, description="candidate positions tried per target")
    shrinkage: float = Field(0.1, ge=0, le=1, description="covariance shrinkage of the whitening")
    isolate_client: int | None = Field(None, ge=0, description="arm only this client (against SecAgg+)")
    evade_min_open: float | None = Field(None, gt=0, lt=1, description=(
        "receive-check's min_open, known to this server: each detector opens on `evade_margin` times that "
        "share of a client's positions, all on its own target, so the check lets it through"))
    evade_margin: float = Field(1.0, ge=1, description="how far above evade_min_open a detector opens")
    helpers: int = Field(0, ge=0, description=(
        "clients sent every detector held open, so each detector's coordinates change at that many clients "
        "whatever their data: against thresholded secure aggregation with min_clients = helpers + 1 a "
        "coordinate is then released iff another client's target opened it"))
    client_records: int | None = Field(None, ge=1, description=(
        "records a client holds, as this server believes (for evade_min_open; default: the most any client "
        "reported in an earlier round, else data.members / federation.clients)"))


def trappable_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Residual blocks of the encoder (torchvision BasicBlock/Bottleneck layout), in forward order.
    Found by name: an `encoder` sub-module (smp's) holding blocks with conv1/bn1/conv2/bn2 — a
    plug-in model without them is refused at validation (`TrapWeights.problems`)."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"trap-weights plants detectors in the residual blocks of an `encoder` sub-module "
                         f"(smp's ResNet-family encoders: conv1/bn1/conv2/bn2); {type(model).__name__} has no "
                         "`encoder`; expected model.family smp with a ResNet-family encoder")
    blocks = [(f"encoder.{name}", m) for name, m in encoder.named_modules()
              if all(isinstance(getattr(m, a, None), nn.Module) for a in ("conv1", "bn1", "conv2", "bn2"))]
    if not blocks:
        raise ValueError(f"trap-weights: the encoder of {type(model).__name__} has no residual blocks "
                         "(conv1/bn1/conv2/bn2) to plant detectors in; use a ResNet-family encoder")
    return blocks


def last_norm(block: nn.Module) -> nn.Module:
    return getattr(block, "bn3", None) or block.bn2


def readout_params(prefix: str) -> list[str]:
    """The parameters a detector's channel owns: its filter, its affine, the next conv's column."""
    return [f"{prefix}.conv1.weight", f"{prefix}.bn1.weight", f"{prefix}.bn1.bias", f"{prefix}.conv2.weight"]


def _input_patches(model: nn.Module, conv_name: str, images: np.ndarray, batch_size: int, device) -> torch.Tensor:
    """(records, positions, features): the unfolded input of the convolution `conv_name`, from
    train-mode passes in client-sized batches — the features a client's training will compute
    (BatchNorm then uses batch statistics; at round 1 its running ones are still the initial
    0/1). On a copy, so running statistics stay untouched."""
    work = copy.deepcopy(model).to(device).train()
    conv = dict(work.named_modules())[conv_name]
    seen = {}
    hook = conv.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0].detach()))
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                work(torch.as_tensor(images[start : start + batch_size]).to(device))
                chunks.append(F.unfold(seen["x"], conv.kernel_size, conv.dilation, conv.padding, conv.stride).cpu())
    finally:
        hook.remove()
    return torch.cat(chunks).transpose(1, 2).double()


def _whitening(population: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The population's patches flattened to (n, features), their mean, and the inverse of their
    covariance shrunk toward its mean variance — the metric every detector's filter is built in."""
    flat = population.reshape(-1, population.shape[-1])
    cov = torch.cov(flat.T)
    dim = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(dim, dtype=cov.dtype)
    return flat, flat.mean(0), torch.linalg.inv(cov)


def _matched_filters(targets: torch.Tensor, population: torch.Tensor, params: TrapParams) -> torch.Tensor:
    """One unit filter per target: the whitened matched filter at the candidate position (of the
    `positions` furthest from the population, Mahalanobis) whose response most exceeds the
    largest response any population position gives."""
    flat, mu, inverse = _whitening(population, params.shrinkage)
    centred = targets - mu
    distance = torch.einsum("tpi,ij,tpj->tp", centred, inverse, centred)
    k = min(params.positions, distance.shape[1])
    candidates = distance.topk(k, dim=1).indices
    rows = torch.arange(len(targets))[:, None]
    picked = centred[rows, candidates]  # (targets, k, dim)
    filters = picked @ inverse
    filters = filters / filters.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    responses = (flat - mu) @ filters.reshape(-1, flat.shape[1]).T
    spread = responses.std(0).clamp_min(1e-12)
    margin = ((filters * picked).sum(-1).reshape(-1) - responses.max(0).values) / spread
    best = margin.reshape(len(targets), k).argmax(1)
    return filters[torch.arange(len(targets)), best]


def _wide_filters(targets: torch.Tensor, population: torch.Tensor, opens: int, params: TrapParams,
                  rounds: int = 3) -> torch.Tensor:
    """One unit filter per target that responds to `opens` of the target's positions at once
    (the adaptive trap, `evade_min_open`): start from the whitened mean of its `opens` patches
    furthest from the population, then alternate — the `opens` positions the filter answers
    most, their whitened mean — a one-cluster k-means in the whitened space."""
    flat, mu, inverse = _whitening(population, params.shrinkage)
    centred = targets - mu
    whitened = centred @ inverse
    picked = torch.einsum("tpi,tpi->tp", centred, whitened).topk(opens, dim=1).indices
    rows = torch.arange(len(targets))[:, None]
    for _ in range(rounds):
        filters = whitened[rows, picked].mean(1)
        filters = filters / filters.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        picked = torch.einsum("tpi,ti->tp", centred, filters).topk(opens, dim=1).indices
    return filters


def _slot_assignment(count: int, slots: int) -> list[list[int]]:
    """Target rows per slot: one each while they fit, then shared round-robin."""
    return [list(range(s, count, slots)) for s in range(min(slots, count))]


@torch.no_grad()
def _open_levels(model: nn.Module, blocks, images: np.ndarray, batch_size: int, device,
                 top: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Per block: each record's largest pre-ReLU norm1 outputs per channel, (records, channels,
    top[block] or 1) in descending order, from train-mode passes in client-sized batches (a
    copy: running statistics stay untouched)."""
    top = top or {}
    work = copy.deepcopy(model).to(device).train()
    seen: dict[str, list] = {prefix: [] for prefix, _ in blocks}
    modules = dict(work.named_modules())
    hooks = [modules[f"{prefix}.bn1"].register_forward_hook(
        lambda m, i, o, prefix=prefix: seen[prefix].append(
            o.detach().flatten(2).topk(top.get(prefix, 1), dim=2).values.cpu()))
        for prefix, _ in blocks]
    try:
        for start in range(0, len(images), batch_size):
            work(torch.as_tensor(images[start : start + batch_size]).to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return {prefix: torch.cat(levels) for prefix, levels in seen.items()}


def plant_detectors(model: nn.Module, targets: Records, population: Records, batch_size: int,
                    params: TrapParams, device, client_records: int = 1) -> list[dict]:
    """Turn every residual block of `model`'s encoder into detectors for `targets` (in place).
    Returns the detector table: block prefix, channel, target ids, threshold, margin (σ) and
    `opens`, the positions of its target it opens on (1, or what evading receive-check takes:
    `evade_min_open` × `evade_margin` of `client_records` records' positions)."""
    blocks = trappable_blocks(model)
    model.to(device)
    slots = sum(block.conv1.out_channels for _, block in blocks)
    assignment = _slot_assignment(len(targets), slots)
    table, next_slot, opens, per_record = [], 0, {}, {}
    for prefix, block in blocks:  # in forward order: a block's input is what trapped blocks pass on
        conv, norm = block.conv1, block.bn1
        mine = assignment[next_slot : next_slot + conv.out_channels]
        next_slot += len(mine)
        if mine:
            rows = sorted({r for group in mine for r in group})
            patches = _input_patches(model, f"{prefix}.conv1", targets.images[rows], batch_size, device)
            background = _input_patches(model, f"{prefix}.conv1", population.images, batch_size, device)
            per_record[prefix] = patches.shape[1]
            opens[prefix] = 1 if params.evade_min_open is None else min(per_record[prefix], math.ceil(
                params.evade_min_open * params.evade_margin * client_records * per_record[prefix]))
            filters = _matched_filters(patches, background, params) if params.evade_min_open is None \
                else _wide_filters(patches, background, opens[prefix], params)
            position = {r: i for i, r in enumerate(rows)}
            with torch.no_grad():
                for channel, group in enumerate(mine):
                    summed = filters[[position[r] for r in group]].sum(0)
                    conv.weight[channel] = (summed / summed.norm().clamp_min(1e-12)).reshape(conv.weight.shape[1:]).to(conv.weight)
                    norm.weight[channel], norm.bias[channel] = 1.0, 0.0
                    table.append({"block": prefix, "channel": channel, "rows": group, "opens": opens[prefix]})
                last_norm(block).weight.fill_(params.gain)
    # Thresholds: half-way between the population's largest response and the target's own (its
    # `opens`-th largest), both as the clients' train-mode forward passes will see them.
    population_levels = _open_levels(model, blocks, population.images, batch_size, device)
    target_levels = _open_levels(model, blocks, targets.images, batch_size, device, top=opens)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for entry in table:
            channel = entry["channel"]
            background = float(population_levels[entry["block"]][:, channel, 0].max())
            signal = float(target_levels[entry["block"]][entry["rows"], channel, entry["opens"] - 1].min())
            # An evading detector whose target's positions do not all clear the background opens on
            # fewer of them than the check asks: closed at its target's client too — a miss, where a
            # lower threshold would open it at other clients (measured: false positives)
            threshold = background + max(signal - background, 0.0) / 2
            modules[f"{entry['block']}.bn1"].bias[channel] = -threshold
            entry.update(threshold=round(threshold, 4), margin=round(signal - background, 4))
    for entry in table:
        entry["ids"] = [str(targets.ids[r]) for r in entry.pop("rows")]
    return table


def disarm(weights: list[np.ndarray], names: list[str], table: list[dict], bias: float = -DISARMED) -> list[np.ndarray]:
    """The same model with every detector's ReLU shut for good (or, `bias` HELD_OPEN, open on
    every position)."""
    out = [w.copy() for w in weights]
    for entry in table:
        out[names.index(f"{entry['block']}.bn1.bias")][entry["channel"]] = bias
    return out


@register_strategy("trap-weights", TrapParams)
class TrapWeights(ObservingFedAvg):
    @classmethod
    def problems(cls, scenario, params: TrapParams) -> list[tuple[str, str]]:
        """Checked before anything runs: the client to isolate exists, the rounds exist, and the
        encoder has residual blocks to plant detectors in."""
        fed, out = scenario.federation, []
        if params.isolate_client is not None and params.isolate_client >= fed.clients:
            out.append(("server.isolate_client", f"expected a partition-id in 0..{fed.clients - 1}, "
                        f"found {params.isolate_client}"))
        if params.helpers and params.helpers >= scenario.clients_per_round - (params.isolate_client is not None):
            out.append(("server.helpers", f"expected fewer helpers than the clients a round samples that the server "
                        f"reads ({scenario.clients_per_round}{' less the isolated one' if params.isolate_client is not None else ''}), "
                        f"found {params.helpers}"))
        outside = sorted(set(params.attack_rounds or []) - set(range(1, fed.rounds + 1)))
        if outside:
            out.append(("server.attack_rounds", f"expected rounds in 1..{fed.rounds}, found {outside}"))
        try:
            trappable_blocks(build_model(scenario.model, in_channels=1, num_classes=2))
        except ValueError as error:
            out.append(("model.encoder" if scenario.model.family == "smp" else "model.family", str(error)))
        return out

    def attack_rounds(self) -> list[int]:
        return sorted(set(self.params.attack_rounds or range(1, self.scenario.federation.rounds + 1)))

    def round_targets(self, plan, server_round: int) -> Records:
        """This round's share of the targets (the adversary's list; membership unknown to it)."""
        rounds = self.attack_rounds()
        share = np.array_split(np.arange(len(plan.targets)), len(rounds))[rounds.index(server_round)]
        return plan.targets.subset(share)

    def tailor(self, server_round, weights, instructions):
        if server_round not in self.attack_rounds():
            return super().tailor(server_round, weights, instructions)
        plan = self.knowledge  # population and targets; no ledger
        model = scenario_model(self.scenario, plan.info)
        set_weights(model, weights)
        names = list(model.state_dict().keys())
        batch_size = int(instructions[0][1].get("batch-size", self.scenario.federation.batch_size)) \
            if instructions else self.scenario.federation.batch_size
        table = plant_detectors(model, self.round_targets(plan, server_round), plan.population, batch_size,
                                self.params, pick_device(self.scenario.runtime.device),
                                client_records=self._client_records())
        armed = get_weights(model)
        notes = self.current_view.notes
        notes.attacked = "trap-weights"
        notes.attacked_params = sorted({n for e in table for n in readout_params(e["block"])})
        notes.details.update(detectors=table, gain=self.params.gain)
        target = self._target_node() if self.params.isolate_client is not None else None
        if target is not None:
            notes.target_node, notes.target_client = target, self.params.isolate_client
        helpers = self._helpers(server_round, [proxy.node_id for proxy, _ in instructions], target)
        if helpers:
            notes.details.update(helpers=sorted(helpers))
        disarmed, held = disarm(armed, names, table), disarm(armed, names, table, HELD_OPEN)

        def weights_for(node: int) -> list[np.ndarray]:
            if node in helpers:
                return held
            return armed if target is None or node == target else disarmed

        return [(proxy, weights_for(proxy.node_id), config) for proxy, config in instructions]

    def _helpers(self, server_round: int, nodes: list[int], target: int | None) -> set[int]:
        """`helpers` nodes, other than the isolated one, taking turns by round: a helper's own
        targets cannot be read in that round (its detectors move whatever it holds)."""
        others = sorted(n for n in nodes if n != target)
        if not self.params.helpers or not others:
            return set()
        start = server_round % len(others)
        count = min(self.params.helpers, len(others) - (target is None))  # someone is left armed
        return {others[(start + i) % len(others)] for i in range(count)}

    def _client_records(self) -> int:
        """How many records the server believes a client holds: the scenario's belief, else the most
        any client reported in an earlier round (num_examples), else an even split of the members."""
        if self.params.client_records is not None:
            return self.params.client_records
        reported = [reply.num_examples for view in self.transcript.rounds[:-1] for reply in view.replies]
        fed = self.scenario.federation
        return max(reported) if reported else max(1, self.scenario.data.members // fed.clients)

    def _target_node(self) -> int | None:
        """The isolated client's node, from plaintext partition-ids of earlier rounds (None before)."""
        for view in reversed(self.transcript.rounds[:-1]):
            for reply in view.replies:
                if reply.metrics.get("partition-id") == self.params.isolate_client:
                    return reply.node_id
        return None

    def next_global(self, server_round, started_from, mean_update):
        new = super().next_global(server_round, started_from, mean_update)
        if server_round not in self.attack_rounds():
            return new
        # Remove the detectors: pre-attack conv1/norm1 and zero residual gain in trapped blocks.
        names = self.transcript.weight_names
        before = self.transcript.global_before(server_round)
        for prefix in sorted({e["block"] for e in self.current_view.notes.details["detectors"]}):
            for suffix in ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
                if f"{prefix}.{suffix}" in names:
                    i = names.index(f"{prefix}.{suffix}")
                    new[i] = before[i].copy()
            gain = [n for n in (f"{prefix}.bn3.weight", f"{prefix}.bn2.weight") if n in names][0]
            new[names.index(gain)] = np.zeros_like(new[names.index(gain)])
        return new
