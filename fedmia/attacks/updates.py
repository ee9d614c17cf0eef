"""White-box attacks on client updates (what an honest-but-curious server sees without SecAgg).

The server sent θ_t,k to client k and got θ'_t,k back. For a target record x:
  update-loss-drop   ℓ(θ_t,k; x) − ℓ(θ'_t,k; x), largest over clients (and rounds);
  update-gradient    cos(∇ℓ(θ_t,k; x), θ_t,k − θ'_t,k), largest over clients — local SGD moves the
                     weights along the (summed) gradients of the client's own records;
  source-inference   owner(x) = the client whose returned model fits x best (Hu et al.).
With `replays: K`, update-loss-drop (and gradient-ascent) subtract from each client's drop the
drop that K replays of local training from the same sent model on population records (known
non-members, the client's size) cause on x: the part generalisation explains.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from fedmia.attacks.base import AdversaryView, Attack, AttackResult, cache_token, pixel_summaries, register_attack
from fedmia.data.records import Records
from fedmia.training import train_local
from fedmia.transcript import RoundView


class RoundsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # which rounds' updates to use: the last one, all, the rounds a malicious strategy attacked,
    # or explicit round numbers
    rounds: Literal["last", "all", "attacked"] | list[int] = Field("last", description=(
        "which rounds' client updates to score: the last, all, the rounds a malicious strategy "
        "attacked, or a list of round numbers"))


class LossDropParams(RoundsParams):
    replays: int = Field(0, ge=0, description=(
        "calibrate by replaying local training from the sent model on this many random "
        "population subsets of the client's size; score = drop − mean replayed drop (0: raw drop)"))


class NeedsClientUpdates(ValueError):
    pass


def selected_rounds(view: AdversaryView, rounds) -> list[RoundView]:
    transcript = view.transcript
    usable = [r for r in transcript.rounds if r.replies]
    if rounds == "last":
        chosen = usable[-1:]
    elif rounds == "all":
        chosen = usable
    elif rounds == "attacked":
        chosen = [r for r in usable if r.notes.attacked]
    else:
        chosen = [r for r in usable if r.round in set(rounds)]
    if not usable:
        raise NeedsClientUpdates("no round of the transcript has client replies")
    if not chosen:
        raise NeedsClientUpdates(f"no transcript round with replies matches rounds={rounds!r}")
    missing = [r.round for r in chosen if any(reply.weights is None for reply in r.replies)]
    if missing:
        raise NeedsClientUpdates(
            f"per-client updates of rounds {missing} are not in the transcript (secure aggregation "
            "shows the server only their sum; see the isolation strategy)"
        )
    return chosen


def client_losses(view: AdversaryView, records: Records, round_view: RoundView) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(loss on the model each client was sent, loss on each client's reply, partition ids):
    arrays of shape (clients, records)."""
    sent, returned, partitions = [], [], []
    for reply in round_view.replies:
        sent.append(view.pixel_summaries(records, round_view.sent[reply.node_id])["loss"])
        returned.append(view.pixel_summaries(records, reply.weights)["loss"])
        partitions.append(int(reply.metrics.get("partition-id", -1)))
    return np.stack(sent), np.stack(returned), partitions


def replayed_drop(view: AdversaryView, records: Records, sent, size: int, replays: int) -> np.ndarray:
    """The loss drop a client of `size` records that do not include `records` would cause: local
    training replayed from `sent` on random population subsets (known non-members), averaged.
    What generalisation explains; the rest of a client's drop is memorisation."""
    before = view.pixel_summaries(records, sent)["loss"]
    rng = np.random.default_rng([view.seed, size, replays])
    drops = []
    for replay in range(replays):
        view.report(f"replaying local training {replay + 1}/{replays}")
        rows = rng.choice(len(view.population), size=min(size, len(view.population)), replace=False)
        model = view.model_with(sent)
        train_local(model, view.population.subset(rows), view.recipe, seed=view.seed + replay, device=view.device)
        drops.append(before - pixel_summaries(model, records, device=view.device)["loss"])
    return np.mean(drops, axis=0)


@register_attack("update-loss-drop")
class UpdateLossDrop(Attack):
    access = "white-box"
    assumes = "the model it sent and each client's reply; its population data"
    Params = LossDropParams

    def fit(self, view: AdversaryView) -> None:
        selected_rounds(view, self.params.rounds)  # fail early and clearly
        self._replayed: dict = {}

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        best = np.full(len(records), -np.inf)
        for round_view in selected_rounds(view, self.params.rounds):
            before, after, _ = client_losses(view, records, round_view)
            drops = before - after
            if self.params.replays:
                for row, reply in enumerate(round_view.replies):
                    drops[row] -= self._replay(view, records, round_view.sent[reply.node_id], reply.num_examples)
            best = np.maximum(best, drops.max(axis=0))
        return best

    def _replay(self, view: AdversaryView, records: Records, sent, size: int) -> np.ndarray:
        # Clients sent the same model (FedAvg, or one poisoned broadcast) share one replay.
        key = (cache_token(records), cache_token(sent), size)
        if key not in self._replayed:
            self._replayed[key] = replayed_drop(view, records, sent, size, self.params.replays)
        return self._replayed[key]


@register_attack("update-gradient")
class UpdateGradient(Attack):
    access = "white-box"
    assumes = "the model it sent and each client's reply; the targets' gradients"
    Params = RoundsParams

    def fit(self, view: AdversaryView) -> None:
        selected_rounds(view, self.params.rounds)

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        best = np.full(len(records), -np.inf)
        for round_view in selected_rounds(view, self.params.rounds):
            for sent, returned in _by_broadcast(round_view):
                best = np.maximum(best, self._cosines(view, records, sent, returned).max(axis=1))
        return best

    @staticmethod
    def _cosines(view: AdversaryView, records: Records, sent, returned: list) -> np.ndarray:
        """cos(∇ℓ(θ_sent; x), θ_sent − θ_k) for every record (rows) and every client k that was
        sent θ_sent (columns): a record's gradient is taken once for all of them."""
        model = view.model_with(sent)
        names = list(model.state_dict().keys())
        params = dict(model.named_parameters())
        positions = [i for i, name in enumerate(names) if name in params]
        updates = torch.stack([torch.cat([torch.as_tensor(sent[i] - weights[i]).flatten() for i in positions])
                               for weights in returned]).to(view.device)
        updates = F.normalize(updates.float(), dim=1)
        try:  # per-record gradients in batches: the same cosines, several times faster than one at a time
            return _batched_cosines(model, [names[i] for i in positions], records, updates, view.device)
        except RuntimeError:  # a model torch.func cannot vmap: one record at a time
            pass
        ordered = [params[names[i]] for i in positions]
        cosines = np.empty((len(records), len(returned)))
        for row in range(len(records)):
            x = torch.as_tensor(records.images[row : row + 1]).to(view.device)
            y = torch.as_tensor(records.masks[row : row + 1]).to(view.device).long()
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), ordered, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                              for g, p in zip(grads, ordered)])
            cosines[row] = (updates @ F.normalize(flat.float(), dim=0)).cpu().numpy()
        return cosines


def _by_broadcast(round_view: RoundView) -> list[tuple[list, list]]:
    """The round's replies grouped by the model each client was sent: (sent, [returned, ...]). An
    honest server sends one model to all, so one group; a tailoring server, one per variant."""
    groups: list[tuple[list, list]] = []
    for reply in round_view.replies:
        sent = round_view.sent[reply.node_id]
        for known, returned in groups:
            if known is sent or all(np.array_equal(a, b) for a, b in zip(known, sent)):
                returned.append(reply.weights)
                break
        else:
            groups.append((sent, [reply.weights]))
    return groups


def _batched_cosines(model, names: list[str], records: Records, updates: torch.Tensor, device) -> np.ndarray:
    """cos(∇ℓ(θ; x), update_k) for every record and every (unit-norm) update row, per-record
    gradients taken by `torch.func.vmap` over batches sized to ~256 MB of gradients (the model is
    in eval mode: BatchNorm uses its running statistics, so records do not mix). Parameters no
    loss reaches get zero gradients, as `allow_unused` gives them in the one-at-a-time loop."""
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters() if name in set(names)}
    buffers = dict(model.named_buffers())

    def loss(p, x, y):
        logits = functional_call(model, {**p, **buffers}, (x[None],))
        return F.cross_entropy(logits, y[None])

    per_record = vmap(grad(loss), in_dims=(None, 0, 0))
    size = max(1, int(256e6 // (4 * max(updates.shape[1], 1))))
    out = []
    for start in range(0, len(records), size):
        x = torch.as_tensor(records.images[start : start + size]).to(device)
        y = torch.as_tensor(records.masks[start : start + size]).to(device).long()
        grads = per_record(params, x, y)
        flat = F.normalize(torch.cat([grads[name].flatten(1) for name in names], dim=1).float(), dim=1)
        out.append((flat @ updates.T).cpu())
    return torch.cat(out).double().numpy() if out else np.empty((0, updates.shape[0]))


@register_attack("source-inference")
class SourceInference(Attack):
    access = "white-box"
    assumes = "each client's reply; its population data (to standardise)"
    """Owner = the client whose returned model has the lowest loss on the record (summed over the
    selected rounds). Each client model's losses are first standardised by its losses on the
    adversary's population (known non-members): a model that is simply better or worse on
    everything — say, trained on an easier hospital's scans — must not win or lose every record.
    Its membership score is minus the lowest standardised loss."""

    Params = RoundsParams

    def fit(self, view: AdversaryView) -> None:
        selected_rounds(view, self.params.rounds)

    def _summed_losses(self, view: AdversaryView, records: Records) -> tuple[np.ndarray, list[int]]:
        total, partitions = None, None
        for round_view in selected_rounds(view, self.params.rounds):
            _, after, parts = client_losses(view, records, round_view)
            _, reference, _ = client_losses(view, view.population, round_view)
            after = (after - reference.mean(1, keepdims=True)) / (reference.std(1, keepdims=True) + 1e-12)
            order = np.argsort(parts)  # align clients across rounds by the id they report
            after, parts = after[order], [parts[i] for i in order]
            if total is None:
                total, partitions = after, parts
            elif parts == partitions:
                total = total + after
        return total, partitions

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        losses, _ = self._summed_losses(view, records)
        return -losses.min(axis=0)

    def attribute(self, view: AdversaryView, records: Records) -> np.ndarray:
        losses, partitions = self._summed_losses(view, records)
        return np.asarray(partitions)[losses.argmin(axis=0)]

    def result(self, view: AdversaryView) -> AttackResult:
        result = super().result(view)
        result.owners = self.attribute(view, view.targets)
        return result


class AttackedRoundsParams(LossDropParams):
    rounds: Literal["last", "all", "attacked"] | list[int] = Field("attacked", description=(
        "which rounds' client updates to score (default: the rounds the server attacked)"))


@register_attack("gradient-ascent")
class GradientAscentDrop(UpdateLossDrop):
    """The loss drop in the rounds the gradient-ascent server attacked (Nasr et al. 2019)."""

    Params = AttackedRoundsParams
