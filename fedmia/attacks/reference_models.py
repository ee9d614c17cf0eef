"""The adversary's reference models, for the calibrated attacks (`fedmia/attacks/reference.py`,
`shadow.py`): K models trained with the victim's recipe, each on a random half of the records the
adversary holds (its population plus the target list — it knows which reference model saw which
record, not what the victim saw). `training: federated` (the default since 2026-12-05: every
measurement found it the stronger adversary, docs/threat-models.md): the half split over the
federation's clients, its rounds of the clients' own local training and FedAvg
(`federated_training`). `training: central`: one model on the half, for rounds × local_epochs
epochs, the federation's optimiser, learning rate and batch size — the same number of gradient
steps.

Reference models are cached on disk, keyed by everything that determines them (data, recipe,
seed, index, how they were trained): a second run or sweep point with the same settings trains
none. Those not cached train `runtime.train_workers` at a time in worker processes. Also here:
the per-record statistic every calibrated attack reads, φ (`phi_maps`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Literal

import cloudpickle

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedmia.attacks.base import PROBABILITY_FLOOR, AdversaryView, model_probabilities
from fedmia.data.records import Records
from fedmia.io import write_bytes_atomic
from fedmia.models import get_weights, set_weights, weighted_sum
from fedmia.training import available_cpus, train_local

DEFAULT_CACHE = Path(os.environ.get("FEDMIA_CACHE", ".fedmia-cache"))


class ReferenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: int = Field(8, ge=2, description="reference models (each trained on a random half)")
    fixed_variance: bool | Literal["auto"] = Field(
        "auto", description="LiRA: one variance shared by all targets; auto: shared below 64 reference "
        "models (the LiRA paper's rule: per-record variances need many models)")
    a: float | Literal["auto"] = Field(
        "auto", description="RMIA offline correction of P(x) from OUT models; auto: chosen with one "
        "reference model playing the target (ml_privacy_meter's procedure), never with the ledger")
    gamma: float = Field(1.0, gt=0, description="RMIA: a population record z counts if LR(x)/LR(z) >= gamma")
    epochs: int | None = Field(None, ge=1, description="central training: default rounds x local_epochs")
    training: Literal["central", "federated"] = Field(
        "federated", description="federated (default: the stronger adversary in every measurement): as the "
        "federation trains — its records split over the clients a round samples, the scenario's rounds of the "
        "clients' own local training (local defenses included) and FedAvg; central: each reference model trains "
        "alone for rounds x local epochs")
    calibrate: bool = Field(True, description="LiRA: centre each model's φ on its OUT population records")


def phi_maps(probs: torch.Tensor, masks: np.ndarray, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per record and pixel, arrays (n, H·W), float64: φ = log p_y − log(Σ_{c≠y} p_c) (the
    logit-scaled true-class confidence, without the saturation of 1 − p_y in low precision) and
    p_y. `floor` keeps hardened (exact 0/1) outputs finite."""
    p = probs.double().clamp_min(floor) if floor else probs.double()
    y = torch.as_tensor(masks).long().unsqueeze(1)
    p_true = p.gather(1, y).squeeze(1)
    others = (p.sum(1) - p_true).clamp_min(max(floor, 1e-300))
    phi = torch.log(p_true.clamp_min(1e-300)) - torch.log(others)
    return phi.flatten(1).numpy(), p_true.flatten(1).numpy()


def _floor(view: AdversaryView) -> float:
    return PROBABILITY_FLOOR if view.api.hardened else 0.0


def reference_phi_maps(view: AdversaryView, model, records: Records) -> tuple[np.ndarray, np.ndarray]:
    """φ maps of one of the adversary's own models, its outputs shaped like the API's answers."""
    probs = model_probabilities(model, records.images, device=view.device, postprocess=view.api.postprocess)
    return phi_maps(probs, records.masks, _floor(view))


def target_phi_maps(view: AdversaryView, records: Records) -> tuple[np.ndarray, np.ndarray]:
    """φ maps of the served model, through its query API."""
    return phi_maps(view.api.query(records.images), records.masks, _floor(view))


# A worker process spends ~8 s importing torch and smp before it trains: below this much work per
# model (records × epochs × pixels; lira.yaml's models pass ~1.8e7) that costs more than it saves.
PARALLEL_MIN_PIXEL_PASSES = 1e6


class ReferenceModels:
    """K models, each trained on a random half of (population ∪ targets), cached on disk."""

    def __init__(self, view: AdversaryView, count: int, epochs: int | None, training: str = "central"):
        self.view = view
        self.training = training
        self.pool = Records.concat([view.population, view.targets])
        rng = np.random.default_rng([view.seed, 2024])
        n = len(self.pool)
        # Balanced IN/OUT: each record is in exactly half of the models (LiRA's design).
        self.inclusion = np.zeros((count, n), dtype=bool)
        for j in range(n):
            self.inclusion[rng.permutation(count)[: count // 2], j] = True
        local = view.recipe
        self.recipe = local if training == "federated" else \
            dataclasses.replace(local, epochs=epochs or view.rounds * local.epochs)
        self.cache_dir = Path(view.cache_dir or DEFAULT_CACHE) / "reference"
        self.trained = 0
        self._moments: dict = {}

    def key(self, index: int) -> str:
        payload = {**self.view.cache_context,
                   "group_norm": any(isinstance(m, torch.nn.GroupNorm) for m in self.view.model_factory().modules()),
                   "recipe": dataclasses.asdict(self.recipe), "seed": self.view.seed, "index": index,
                   "init": "seeded",  # entries from before seeded initialisation are not reused
                   **({"training": "federated", "clients": self.view.clients, "rounds": self.view.rounds,
                       "local_defenses": self.view.local_defenses} if self.training == "federated" else {}),
                   "members": hashlib.sha256("\n".join(self.pool.ids[self.inclusion[index]]).encode()).hexdigest()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, index: int) -> Path:
        return self.cache_dir / f"{self.key(index)}.npz"

    def weights(self, index: int):
        path = self.path(index)
        if path.exists():
            with np.load(path) as data:
                return [data[k] for k in sorted(data.files)]
        self.view.report(f"training reference model {index + 1}/{len(self.inclusion)} "
                         f"({self._how()}; cached ones load at once)")
        weights = self._job(index)()
        self._store(index, weights)
        return weights

    def train_missing(self) -> None:
        """Trains every model not yet cached, `view.train_workers` at a time in worker processes
        (one torch thread each: on 2 cores four of lira.yaml's models took 320 s side by side
        against 428 s one after another on two threads, bench/RESULTS.md). Each model is cached as it finishes, so an
        interrupted run keeps what it trained. With one worker, one model missing, or models too
        small to pay for a worker's start (`PARALLEL_MIN_PIXEL_PASSES`), `weights()` trains them
        one by one in this process."""
        missing = [i for i in range(len(self.inclusion)) if not self.path(i).exists()]
        workers = min(len(missing), self.view.train_workers)
        if workers < 2 or self._pixel_passes() < PARALLEL_MIN_PIXEL_PASSES:
            return
        self.view.report(f"training reference models: {len(missing)} of {len(self.inclusion)} "
                         f"({self._how()}), {workers} at a time")
        threads = max(1, available_cpus() // workers)
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_threads,
                                 initargs=(threads,)) as pool:
            # cloudpickle: the model factory and the local training are closures over the scenario
            futures = {pool.submit(_run_pickled, cloudpickle.dumps(self._job(i))): i for i in missing}
            try:
                for done, future in enumerate(as_completed(futures), 1):
                    self._store(futures[future], future.result())
                    self.view.report(f"reference model {futures[future] + 1}/{len(self.inclusion)} trained "
                                     f"({done}/{len(missing)})")
            except BrokenProcessPool as error:
                raise RuntimeError(f"a process training reference models died ({error}); out of memory? "
                                   "set runtime.train_workers: 1 to train them one at a time") from None

    def _pixel_passes(self) -> float:
        """Pixels one model's training passes forward and back: records × epochs × H × W."""
        epochs = self.recipe.epochs * (self.view.rounds if self.training == "federated" else 1)
        return self.inclusion.sum(1).mean() * epochs * float(np.prod(self.pool.images.shape[2:]))

    def _how(self) -> str:
        return (f"{self.view.rounds} rounds x {self.view.clients} clients" if self.training == "federated"
                else f"{self.recipe.epochs} epochs")

    def _job(self, index: int) -> Callable[[], list[np.ndarray]]:
        """Model `index`'s training as a call that needs nothing of the run but its own inputs
        (not the transcript), so it can run in another process."""
        federated = ((self.view.local_training, self.view.clients, self.view.rounds)
                     if self.training == "federated" else None)
        if federated and federated[0] is None:
            raise ValueError("federated reference training needs the protocol's local training (view.local_training)")
        # Seed the initial weights too: a reference model must be a function of its cache key.
        return functools.partial(_trained_weights, self.view.model_factory,
                                 self.pool.subset(np.flatnonzero(self.inclusion[index])), self.recipe,
                                 self.view.seed * 7919 + index, self.view.device, federated)

    def _store(self, index: int, weights: list[np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **{f"w{i:04d}": w for i, w in enumerate(weights)})
        write_bytes_atomic(self.path(index), buffer.getvalue())
        self.trained += 1

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """φ and p_y of every pool record under every reference model: arrays (K, n)."""
        if not hasattr(self, "_stats"):
            self.train_missing()
            phis, probs = [], []
            model = self.view.model_factory()
            for index in range(len(self.inclusion)):
                set_weights(model, self.weights(index))
                phi, prob = reference_phi_maps(self.view, model, self.pool)
                phis.append(phi.mean(1))
                probs.append(prob.mean(1))
            self._stats = (np.stack(phis), np.stack(probs))
        return self._stats

    def pixel_moments(self, calibrate: bool, exclude: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per pool record and pixel, mean and std of φ over the models that trained on it ("in")
        and those that did not ("out"), each model's φ minus its `centres()`, leaving out model
        `exclude` (whose φ maps are then under "held_out", for a rehearsal with it as the target).
        Accumulated model by model, so memory does not grow with the number of models."""
        key = (calibrate, exclude)
        if key not in self._moments:
            self.train_missing()
            centres = self.centres() if calibrate else np.zeros(len(self.inclusion))
            model = self.view.model_factory()
            sums, held_out = {}, None
            for index, included in enumerate(self.inclusion):
                set_weights(model, self.weights(index))
                phi = reference_phi_maps(self.view, model, self.pool)[0] - centres[index]
                if index == exclude:
                    held_out = phi
                    continue
                for side, mask in (("in", included), ("out", ~included)):
                    s1, s2, count = sums.get(side, (0.0, 0.0, 0))
                    sums[side] = (s1 + np.where(mask[:, None], phi, 0.0), s2 + np.where(mask[:, None], phi**2, 0.0),
                                  count + mask.astype(int))
            moments = {}
            for side, (s1, s2, count) in sums.items():
                count = count[:, None]
                mean = s1 / np.maximum(count, 1)
                variance = (s2 - count * mean**2) / np.maximum(count - 1, 1)
                moments[side] = (mean, np.sqrt(np.maximum(variance, 0.0)))
            if held_out is not None:
                moments["held_out"] = held_out
            self._moments[key] = moments
        return self._moments[key]

    def centres(self) -> np.ndarray:
        """Each model's median image-mean φ over the population records it did not train on: what
        calibration subtracts (the federated model and the references differ in confidence)."""
        phi = self.statistics()[0]
        n_pop = len(self.view.population)
        out_pop = ~self.inclusion[:, :n_pop]
        return np.array([np.median(phi[i, :n_pop][out_pop[i]]) for i in range(len(phi))])


def shared_references(view: AdversaryView, params: ReferenceParams) -> ReferenceModels:
    """LiRA and RMIA in one run share one set of reference models (and their statistics)."""
    key = ("reference", params.models, params.epochs, params.training)
    if key not in view.shared:
        view.shared[key] = ReferenceModels(view, params.models, params.epochs, params.training)
    return view.shared[key]


def _worker_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_pickled(job: bytes) -> list[np.ndarray]:
    return cloudpickle.loads(job)()


def _trained_weights(model_factory, records: Records, recipe, seed: int, device,
                     federated: tuple[Callable, int, int] | None) -> list[np.ndarray]:
    """One reference model: seeded initial weights, then central training with `recipe`, or
    `federated_training` where `federated` is (local training, clients, rounds)."""
    torch.manual_seed(seed)
    model = model_factory()
    if federated is not None:
        return federated_training(*federated, model, records, seed)
    train_local(model, records, recipe, seed=seed, device=device)
    return get_weights(model)


def federated_training(local_training: Callable, clients: int, rounds: int, model, records: Records,
                       seed: int) -> list[np.ndarray]:
    """A reference model trained as the federation trains, from `model`'s initial weights: the
    records split at random over the clients a round samples (`clients`), `rounds` rounds in
    which each client runs the clients' own local training (`local_training(model, records,
    seed)`: the recipe and the local defenses, DP-SGD included) from the global model, then
    FedAvg (the example-weighted mean, as the honest server computes it). The same record passes
    as central training for rounds × local epochs; written here, not through Flower: the
    adversary simulates a federation it controls, in one process, with no messages to exchange."""
    rng = np.random.default_rng(seed)
    parts = [part for part in np.array_split(rng.permutation(len(records)), max(1, clients)) if len(part)]
    global_weights = get_weights(model)
    for round_index in range(rounds):
        replies, sizes = [], []
        for k, part in enumerate(parts):
            set_weights(model, global_weights)
            local_training(model, records.subset(np.sort(part)), seed * 1009 + round_index * len(parts) + k)
            replies.append(get_weights(model))
            sizes.append(len(part))
        global_weights = weighted_sum(replies, np.asarray(sizes, dtype=np.float64) / sum(sizes))
    set_weights(model, global_weights)
    return global_weights
