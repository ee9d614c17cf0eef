"""One client's local training under the scenario's defenses — a library function.

The Flower ClientApp calls it, and so does the evaluator when it replays a client's training
(isolation's true update); neither imports the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedmia.data.records import Records
from fedmia.defenses import active, defended_recipe
from fedmia.defenses.base import ModelRefused
from fedmia.defenses.canaries import add_canary_gradient, gradient_canaries
from fedmia.scenario import Scenario
from fedmia.training import TrainRecipe, augment_batch, batch_loss, batches_per_epoch, make_optimizer, minibatches, set_lr


def client_recipe(scenario: Scenario, config: dict) -> TrainRecipe:
    """The scenario's recipe, with what the server's config overrides — unless the client pins
    its hyperparameters (the defense against config-only isolation). The learning rate then
    decays by `lr_schedule.round_decay` per server round (`server-round` of the config): the
    client's own schedule, applied to whatever lr it trains with."""
    base = defended_recipe(scenario)
    if not scenario.federation.pin_hyperparameters:
        base = dataclasses.replace(
            base,
            epochs=int(config.get("local-epochs", base.epochs)),
            batch_size=int(config.get("batch-size", base.batch_size)),
            lr=float(config.get("lr", base.lr)),
        )
    decay = scenario.federation.lr_schedule.round_decay
    server_round = int(config.get("server-round", 1) or 1)
    if decay != 1.0 and server_round > 1:
        base = dataclasses.replace(base, lr=base.lr * decay ** (server_round - 1))
    return base


def client_seed(scenario: Scenario, server_round: int, partition_id: int) -> int:
    """A seed per (run, round, client): reproducible, yet different for every local run."""
    return scenario.seed * 1_000_003 + server_round * 1_009 + partition_id


@dataclass
class LocalRun:
    """One client's local training: the model, its records, the recipe and the active defenses'
    hooks. `train` runs one loop: a defense acting on "local training" replaces it (distillation),
    one acting on "local gradients" runs it with per-sample gradients (DP-SGD); otherwise
    minibatches with the recipe's augmentation and the defenses' batch transforms (crop),
    forward/loss replacements (mix-up), extra loss terms and pre-step work (min-max) and the
    recipe's loss (label smoothing included) and learning-rate schedule."""

    scenario: Scenario
    model: nn.Module
    records: Records
    recipe: TrainRecipe
    seed: int
    device: torch.device
    public: Records | None = None
    canaries: np.ndarray | None = None  # the audited client's gradient canaries (coordinates)
    canary_norm: float = 0.0
    defenses: list = field(default_factory=list)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    def criterion(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return batch_loss(logits, y, self.recipe)

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor):
        """Per record: the recipe's augmentation, then the defenses' batch transforms (crop).
        DP-SGD calls it on each Poisson batch, so both compose with per-record clipping."""
        x, y = augment_batch(x, y, self.recipe, self.rng)
        for defense in self.defenses:
            x, y = defense.batch(self, x, y)
        return x, y

    def train(self) -> dict[str, float]:
        for defense in self.defenses:
            try:
                defense.inspect(self)
            except ModelRefused as refusal:
                # Refusing = not training: the client replies with the model it received (a zero
                # update), so the round goes on and the server learns nothing from this client.
                for other in self.defenses:
                    other.finish(self)
                return {"refused": 1.0, "refusal": str(refusal)[:300]}
        stats: dict[str, float] = {}
        try:
            # the defense that owns local training (distillation), else its gradients (DP-SGD),
            # trains; else the plain loop (`Defense.train` is None for every other defense)
            owned = next((s for stage in ("local training", "local gradients") for d in self.defenses
                          if d.acts_on == stage and (s := d.train(self)) is not None), None)
            stats = owned if owned is not None else self.minibatches()
        finally:
            for defense in self.defenses:
                stats = {**stats, **defense.finish(self)}
        return stats

    def minibatches(self) -> dict[str, float]:
        """Shuffled minibatches; gradient canaries, if any, are shuffled in as records whose
        gradient is a Dirac vector."""
        model, recipe = self.model, self.recipe
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        images, masks = torch.as_tensor(self.records.images), torch.as_tensor(self.records.masks)
        model.to(self.device).train()
        optimizer = make_optimizer(model, recipe)
        for defense in self.defenses:
            defense.start(self)
        n = len(self.records)
        extra = len(self.canaries) if self.canaries is not None else 0
        params = {name: p for name, p in model.named_parameters() if p.requires_grad} if extra else {}
        last = float("nan")
        steps = batches_per_epoch(n + extra, recipe.batch_size)
        for epoch in range(recipe.epochs):
            total, seen = 0.0, 0
            for step, batch in enumerate(minibatches(n + extra, recipe.batch_size, generator)):
                real, drawn = batch[batch < n], batch[batch >= n] - n
                set_lr(optimizer, recipe, epoch, step, steps)
                optimizer.zero_grad(set_to_none=True)
                if len(real):
                    x, y = self.transform_batch(images[real], masks[real].long())
                    x, y = x.to(self.device), y.to(self.device)
                    for defense in self.defenses:
                        defense.before_step(self, x, y)
                    optimizer.zero_grad(set_to_none=True)
                    replaced = next((out for d in self.defenses if (out := d.forward_loss(self, x, y)) is not None), None)
                    if replaced is None:
                        logits = model(x)
                        loss = self.criterion(logits, y)
                    else:
                        logits, loss = replaced
                    for defense in self.defenses:
                        term = defense.extra_loss(self, logits, x, y)
                        if term is not None:
                            loss = loss + term
                    (loss * len(real) / len(batch)).backward()
                    total += loss.item() * len(real)
                    seen += len(real)
                if len(drawn):
                    add_canary_gradient(params, self.canaries[drawn.numpy()], self.canary_norm, 1 / len(batch))
                optimizer.step()
            last = total / max(seen, 1)
        return {"train-loss": last}


def local_training(scenario: Scenario, model, records, recipe: TrainRecipe, *, seed: int, device,
                   public=None, partition: int | None = None) -> dict[str, float]:
    """One client's local training under the scenario's defenses (the evaluator replays it).
    The canary client (a defense's `canary_client`: DP's check of ε) also trains on its
    gradient canaries."""
    defenses = active(scenario)
    audited = {d.canary_client for d in defenses} - {None}
    canaries = gradient_canaries(scenario, model) if partition is not None and partition in audited else None
    run = LocalRun(scenario, model, records, recipe, seed, device, public,
                   canaries=canaries.present() if canaries is not None else None,
                   canary_norm=canaries.norm if canaries is not None else 0.0,
                   defenses=defenses)
    return run.train()
