"""Local DP-SGD on the clients, with Opacus noising, stepping and accounting.

Each step needs Σ_b min(1, C/‖g_b‖) g_b over a Poisson batch. Two engines compute it, with the
per-record losses for the log from the same pass (no second forward):
- `bookkeeping` (default where the model is only Conv2d / Linear / GroupNorm layers, as the
  smp models made DP-compatible mostly are): one ordinary forward and backward pass, per-sample norms from
  each layer's input and output gradient, the clipped sum as one weighted weight gradient
  (fedmia/defenses/clipping.py); Opacus's `DPOptimizerFastGradientClipping` noises it and steps.
- `torch.func`: per-sample gradients from vmap over grad_and_value of a functional call, handed
  to Opacus's `DPOptimizer`, which clips, noises and steps.
bench/dp_cost.py times both against plain training and against Opacus's own engines. Why not
`PrivacyEngine.make_private`: its hooks reject the in-place ops of smp/torchvision encoders
(ResNet's `out += identity`), and both engines here are faster on these models. Opacus's RDP
accountant turns the steps into ε.

Batches are Poisson-sampled (each record joins a step with probability q = batch/N), the
sampling the RDP analysis of subsampled Gaussian mechanisms assumes. BatchNorm mixes records of
a batch, which per-sample gradients cannot allow: DP models use GroupNorm (`ModuleValidator.fix`).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedmia.data.records import Records
from fedmia.defenses import clipping
from fedmia.defenses.canaries import dirac_sum
from fedmia.defenses.base import Defense, Params, register_defense
from fedmia.defenses.report import Privacy
from fedmia.defenses.norms import to_dp_compatible  # noqa: F401  (re-exported)
from fedmia.training import TrainRecipe, augment_batch, make_optimizer, record_losses, set_lr


class DPParams(Params):
    """`local`: DP-SGD on every client (record-level ε per client). `central`: the server clips
    each client's update and noises the mean (Flower's DP wrappers; client-level ε)."""

    mode: Literal["local", "central"] = Field(description="local: DP-SGD on every client; central: the server "
                                              "clips each update and noises the mean")
    noise_multiplier: float | None = Field(None, ge=0, description="give this or target_epsilon")
    target_epsilon: float | None = Field(None, gt=0, description="local mode: noise is solved for it")
    max_grad_norm: float = Field(1.0, gt=0, description="local: per-sample gradient clip")
    clipping_norm: float = Field(1.0, gt=0, description="central: per-client update clip")
    clipping: Literal["fixed", "adaptive"] = Field("fixed", description="central mode only")
    clipped_count_stddev: float | None = Field(
        None, gt=0, description="central adaptive clipping: std of the noise on the count of clipped updates "
        "(Andrew et al. 2021); must exceed noise_multiplier / 2; default: sampled clients / 20, Flower's")
    delta: float | None = Field(None, gt=0, lt=1, description="default: 1 / (records per client) / 10 (local), "
                                "1 / clients / 10 (central)")
    audit_canaries: int = Field(1000, ge=0, description="gradient canaries in one client's training, each "
                                "inserted by a coin flip, for an empirical lower bound on ε (0: no audit)")
    audit_client: int = Field(0, ge=0, description="partition-id of the client that carries the canaries")
    engine: Literal["auto", "bookkeeping", "torch.func"] = Field(
        "auto", description="local: how the clipped gradient sum is computed (same mechanism, different speed; "
        "auto: book-keeping where the model allows it)")


@register_defense("dp", acts_on="local gradients")
class DifferentialPrivacy(Defense):
    """Local mode replaces each client's gradient step (DP-SGD below); central mode wraps the
    server's aggregation in Flower's clipping-and-noise strategy."""

    Params = DPParams
    # per-sample gradients (local) and clipped whole updates (central) both need a model without
    # BatchNorm's batch mixing and running statistics
    needs_group_norm = True

    def __init__(self, params):
        super().__init__(params)
        if params.mode == "central":
            self.acts_on = "aggregation"

    @property
    def canary_client(self) -> int | None:
        return self.params.audit_client if self.params.audit_canaries else None

    def privacy_report(self, scenario, plan, transcript) -> Privacy:
        from fedmia.defenses.dp_accounting import accounted  # dp-accounting only where ε is computed

        return Privacy.model_validate(accounted(self.params, scenario, plan, transcript))

    def epsilon_at(self, scenario, transcript, delta: float, client: int | None = None) -> float:
        from fedmia.defenses.dp_accounting import epsilon_at

        return epsilon_at(self.params, scenario, transcript, delta, client)

    def describe(self) -> str:
        p = self.params
        noise = f"sigma={p.noise_multiplier}" if p.noise_multiplier is not None else f"target eps={p.target_epsilon}"
        return f"{p.mode} DP ({noise})"

    def problems(self, scenario) -> list[tuple[str, str]]:
        p, out = self.params, []
        if (p.noise_multiplier is None) == (p.target_epsilon is None):
            out.append(("defenses.dp", "expected exactly one of noise_multiplier or target_epsilon, "
                        f"found noise_multiplier={p.noise_multiplier}, target_epsilon={p.target_epsilon}"))
        if p.mode == "central" and p.target_epsilon is not None:
            out.append(("defenses.dp.target_epsilon", "central mode takes noise_multiplier, found target_epsilon"))
        if p.mode == "central" and scenario.defenses.secagg is not None:
            out.append(("defenses.dp.mode", "central DP does not compose with defenses.secagg: it clips on the "
                        "server, which under SecAgg+ sees no single update; expected secagg off or mode: local"))
        if p.mode == "central" and p.engine != "auto":
            out.append(("defenses.dp.engine", f"an engine computes local DP-SGD's clipped sums; expected auto in "
                        f"central mode, found {p.engine}"))
        if p.mode == "local" and scenario.model.norm == "batch":
            out.append(("model.norm", "local DP-SGD needs per-sample gradients; expected group or auto, found batch"))
        if p.mode == "central" and p.clipping == "adaptive" and p.noise_multiplier:
            # the update's noise and the clipped count's share the privacy budget: Flower solves
            # 1/σ² = 1/σ_update² + 1/(2·σ_count)², which has no solution unless σ < 2·σ_count
            stddev = p.clipped_count_stddev or scenario.clients_per_round / 20
            if p.noise_multiplier >= 2 * stddev:
                out.append(("defenses.dp.clipped_count_stddev",
                            f"adaptive clipping with noise_multiplier {p.noise_multiplier} needs a clipped-count "
                            f"noise std above {p.noise_multiplier / 2:g}; found {stddev:g}"
                            f"{' (the default: sampled clients / 20)' if p.clipped_count_stddev is None else ''}"))
        if p.audit_canaries and p.audit_client >= scenario.federation.clients:
            out.append(("defenses.dp.audit_client", f"expected a partition-id below federation.clients "
                        f"({scenario.federation.clients}), found {p.audit_client}"))
        return out

    # ---- local mode: the gradient step -----------------------------------------------------
    def model_problems(self, model) -> list[tuple[str, str]]:
        """`engine: bookkeeping` on a model with layers it does not cover: said at validation,
        not in the first client's training."""
        if self.params.mode != "local" or self.params.engine != "bookkeeping":
            return []
        try:
            others = clipping.unsupported_layers(to_dp_compatible(model))
        except ValueError:
            return []  # cannot be made DP-compatible at all: local training says so
        if not others:
            return []
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        return [("defenses.dp.engine", f"book-keeping clipping covers Conv2d, Linear and GroupNorm layers; this "
                 f"model also has {others[0]}{more}; expected auto or torch.func")]

    def train(self, run) -> dict:
        return train_local_dp(
            run.model, run.records, run.recipe, noise_multiplier=local_noise_multiplier(run.scenario, len(run.records)),
            max_grad_norm=self.params.max_grad_norm, seed=run.seed, device=run.device,
            transform=run.transform_batch, canaries=run.canaries, canary_norm=run.canary_norm,
            engine=self.params.engine)

    # ---- central mode: the server's aggregation --------------------------------------------
    def wrap_strategy(self, strategy, scenario):
        from flwr.server.strategy import (
            DifferentialPrivacyServerSideAdaptiveClipping,
            DifferentialPrivacyServerSideFixedClipping,
        )

        p = self.params
        if p.mode != "central":
            return strategy
        strategy.wrapped = True
        if p.clipping == "adaptive":
            adapted = [v.state.clipping_norm for v in strategy.transcript.rounds if v.state.clipping_norm is not None]
            return _released(DifferentialPrivacyServerSideAdaptiveClipping)(
                strategy, noise_multiplier=p.noise_multiplier, num_sampled_clients=scenario.clients_per_round,
                initial_clipping_norm=adapted[-1] if adapted else p.clipping_norm,
                clipped_count_stddev=p.clipped_count_stddev)
        return _released(DifferentialPrivacyServerSideFixedClipping)(
            strategy, noise_multiplier=p.noise_multiplier, clipping_norm=p.clipping_norm,
            num_sampled_clients=scenario.clients_per_round)


def _released(wrapper: type) -> type:
    """Flower's DP wrapper, changed in one thing: the noised model — the one actually released —
    is what the transcript records as the round's aggregate (the inner strategy only saw the
    pre-noise mean)."""

    class Released(wrapper):
        def aggregate_fit(self, server_round, results, failures):
            from flwr.common import parameters_to_ndarrays

            from fedmia.plugins import failure_texts, stop_if_refused

            parameters, metrics = super().aggregate_fit(server_round, results, failures)
            view = self.strategy.current_view
            if parameters is not None:
                view.aggregate = parameters_to_ndarrays(parameters)
                if hasattr(self, "clipping_norm"):  # adaptive clipping's state, for a resumed run
                    view.state.clipping_norm = float(self.clipping_norm)
            elif failures and not view.failures:  # Flower's wrapper refuses a round with any failure
                view.failures = len(failures)
                messages = failure_texts(failures)
                view.failure_messages = [m[-400:] for m in messages]
                stop_if_refused(server_round, messages)
            self.strategy.end_round(view)
            return parameters, metrics

        @property
        def transcript(self):
            return self.strategy.transcript

        def end_round(self, view, evaluated: bool = False) -> None:
            self.strategy.end_round(view, evaluated)

    Released.__name__ = f"Released{wrapper.__name__}"
    return Released




def local_dp_delta(scenario: object, n_records: int) -> float:
    return scenario.defenses.dp.delta or 1.0 / (10 * n_records)


def local_noise_multiplier(scenario: object, n_records: int) -> float:
    """The given noise, or the noise that spends `target_epsilon` over every round's local steps
    (an upper bound on a client's participation)."""
    dp = scenario.defenses.dp
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    fed = scenario.federation
    total = fed.rounds * fed.local_epochs * steps_per_epoch(n_records, fed.batch_size)
    return noise_for_budget(dp.target_epsilon, local_dp_delta(scenario, n_records),
                            sample_rate(n_records, fed.batch_size), total)


def steps_per_epoch(n_records: int, batch_size: int) -> int:
    return max(1, math.ceil(n_records / batch_size))


def sample_rate(n_records: int, batch_size: int) -> float:
    return min(1.0, batch_size / n_records)


def noise_for_budget(target_epsilon: float, delta: float, q: float, total_steps: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    return get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=q,
                                steps=total_steps, accountant="rdp")


@functools.cache
def _per_sample_optimizer() -> type:
    """Opacus's `DPOptimizer`, whose clipped sum also takes `p.canary_sum` where a step set one:
    the gradient canaries' clipped gradients, already summed (fedmia/defenses/canaries.py). As
    per-sample rows each canary would be a model-sized tensor; a thousand of them do not fit."""
    from opacus.optimizers import DPOptimizer

    class CanaryDPOptimizer(DPOptimizer):
        def clip_and_accumulate(self) -> None:
            super().clip_and_accumulate()
            for p in self.params:
                if getattr(p, "canary_sum", None) is not None:
                    p.summed_grad = p.summed_grad + p.canary_sum
                    p.canary_sum = None

    return CanaryDPOptimizer


@functools.cache
def _bookkeeping_optimizer() -> type:
    """Opacus's `DPOptimizerFastGradientClipping`, taking each step's clipped sum as it is.
    Opacus's `accumulate` deep-copies every `p.grad` into `p.summed_grad` (it may be called for
    several micro-batches before a step): ~8 ms a step for MobileNet-v2's 3.1 M parameters, a
    sixth of a plain training step. Here each step's sums are fresh tensors, set once and
    never written again, so the first one is kept by reference; a second accumulation adds to
    it as Opacus's does. Noise, scaling and the step are Opacus's own."""
    from opacus.optimizers import DPOptimizerFastGradientClipping

    class BookkeepingDPOptimizer(DPOptimizerFastGradientClipping):
        def accumulate(self) -> None:
            for p in self.params:
                if p.summed_grad is None:
                    p.summed_grad = p.grad.detach()
                else:
                    p.summed_grad = p.summed_grad + p.grad.detach()

    return BookkeepingDPOptimizer


def train_local_dp(model: nn.Module, records: Records, recipe: TrainRecipe | None = None, *,
                   noise_multiplier: float, max_grad_norm: float, seed: int, device: torch.device,
                   transform=None, canaries: np.ndarray | None = None, canary_norm: float = 0.0,
                   engine: Literal["auto", "bookkeeping", "torch.func"] = "auto",
                   epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                   optimizer_name: str | None = None, momentum: float = 0.9, weight_decay: float = 0.0,
                   label_smoothing: float = 0.0) -> dict:
    """DP-SGD epochs; returns the last epoch's mean loss and what the accountant needs.
    `canaries`: coordinates of gradient canaries this client holds (fedmia/defenses/canaries.py);
    each joins a Poisson batch with the records' rate and is clipped and noised like them.
    `transform`: a per-record batch transform (crop); label smoothing and weight decay apply as
    in plain training (the per-sample loss includes the smoothing). `engine`: how the clipped sum
    is computed (module docstring); `auto` takes book-keeping wherever the model allows it.
    `recipe` (a `fedmia.training.TrainRecipe`, what every other local loop trains with): its
    epochs, batch size, optimiser (`make_optimizer`, which Opacus wraps), loss — per record,
    `record_losses` — and learning-rate schedule; its augmentation comes through `transform` (a
    LocalRun's applies it), or, without one, is applied here. Without a recipe, one is made from
    the keyword arguments (cross-entropy at a constant lr). Batches are DP's own: Poisson-sampled
    at rate batch/N, which the accountant assumes — not the shuffled minibatches of plain training."""

    if recipe is None:
        recipe = TrainRecipe(epochs, batch_size, lr, optimizer_name, momentum, weight_decay, label_smoothing)
    epochs, batch_size = recipe.epochs, recipe.batch_size
    if transform is None and recipe.augments:
        augment_rng = np.random.default_rng(seed)
        transform = lambda x, y: augment_batch(x, y, recipe, augment_rng)  # noqa: E731

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    base = make_optimizer(model, recipe)  # the same optimiser as every other local loop
    # Book-keeping clipping (fedmia/defenses/clipping.py) where the model is made of layers it
    # knows: no per-sample gradient is materialised, so Opacus's fast-clipping optimizer only
    # noises the clipped sum. Otherwise per-sample gradients from torch.func, clipped by Opacus.
    supported = clipping.supports(model)
    if engine == "bookkeeping" and not supported:
        raise ValueError("book-keeping clipping needs a model of Conv2d, Linear and GroupNorm layers only")
    bookkeeping = engine == "bookkeeping" or (engine == "auto" and supported)
    dp_optimizer = _bookkeeping_optimizer() if bookkeeping else _per_sample_optimizer()
    optimizer = dp_optimizer(base, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                             expected_batch_size=batch_size, generator=generator)
    buffers = {name: b for name, b in model.named_buffers()}

    def loss_of_one(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return record_losses(out, y.unsqueeze(0), recipe).sum()

    # One vmapped pass gives each record's gradient and its loss: no second forward for the log.
    per_sample_grads = vmap(grad_and_value(loss_of_one), in_dims=(None, 0, 0))
    images, masks = torch.as_tensor(records.images), torch.as_tensor(records.masks)
    q = sample_rate(len(records), batch_size)
    steps = steps_per_epoch(len(records), batch_size)
    last_loss = float("nan")
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for step in range(steps):
            set_lr(optimizer, recipe, epoch, step, steps)
            chosen = torch.nonzero(torch.rand(len(records), generator=generator) < q).flatten()
            drawn = canaries[(torch.rand(len(canaries), generator=generator) < q).numpy()] \
                if canaries is not None and len(canaries) else np.zeros(0, dtype=np.int64)
            optimizer.zero_grad(set_to_none=True)
            batch = None
            if len(chosen):
                x, y = images[chosen], masks[chosen].long()
                if transform is not None:
                    x, y = transform(x, y)
                batch = x.to(device), y.to(device)
                seen += len(chosen)
            canary_sum = None  # the drawn canaries' gradients, each clipped like a record's, summed
            if len(drawn):
                factor = float(clipping.clip_factors(torch.tensor(canary_norm), max_grad_norm))
                canary_sum = dirac_sum(params, drawn, factor * canary_norm)
            if bookkeeping:
                if batch is None:  # an empty Poisson batch: noise only
                    sums = {name: torch.zeros_like(p) for name, p in params.items()}
                else:
                    x, y = batch
                    sums, losses, _ = clipping.clipped_gradient_sum(
                        model, x, lambda out: record_losses(out, y, recipe), max_grad_norm)
                    total += float(losses.sum())
                if canary_sum is not None:
                    sums = {name: s + canary_sum[name] for name, s in sums.items()}
                for name, p in params.items():
                    p.grad = sums[name]
            else:
                if batch is None:  # an empty Poisson batch still costs a (noise-only) step
                    grads = {name: torch.zeros((1, *p.shape), device=device) for name, p in params.items()}
                else:
                    detached = {k: v.detach() for k, v in params.items()}
                    grads, losses = per_sample_grads(detached, *batch)
                    total += float(losses.sum())
                for name, p in params.items():
                    p.grad_sample = grads[name]
                    p.canary_sum = None if canary_sum is None else canary_sum[name]
            optimizer.step()
        last_loss = total / max(seen, 1)
    return {"train-loss": last_loss, "dp-noise-multiplier": noise_multiplier, "dp-sample-rate": q,
            "dp-steps": epochs * steps}
