"""Calibrated attacks with reference models: LiRA (Carlini et al. 2022) and RMIA (Zarifzadeh et al.
2024).

The adversary trains K reference models with the victim's recipe, each on a random half of the
records it holds (its population plus the target list — it knows which reference model saw
which record, not what the victim saw). `training: federated` (the default since 2026-12-05:
every measurement found it the stronger adversary, docs/threat-models.md): the half split over
the federation's clients, its rounds of the clients' own local training and FedAvg
(`federated_training`). `training: central`: one model on the half, for rounds × local_epochs
epochs, the federation's optimiser, learning rate and batch size — the same number of gradient
steps.

Reference models are cached on disk, keyed by everything that determines them (data, recipe,
seed, index, how they were trained): a second run or sweep point with the same settings trains
none. Those not cached train `runtime.train_workers` at a time in worker processes.

Per-record statistic: the logit-scaled confidence of the true class, φ = log(p_y / (1 − p_y)),
per pixel, with each model's φ centred on its OUT population records. Two aggregations over the
image (`aggregation`), both measured on `runs/lira` with 8 references and 100 + 100 targets
(`python bench/lira_aggregation.py runs/lira`):
  mean       one Gaussian per record on the image-mean φ;
  pixel-sum  one Gaussian per record *and pixel*, log-likelihood ratios (online) or log-CDFs
             (offline) summed over pixels, each per-pixel std floored at `pixel_floor` (1.0).
Online, pixel-sum won: AUC 0.854 / TPR@1% 0.25 against 0.681 / 0.10 for the mean (an earlier
set of references: 0.749 vs 0.656) — but only with the floor; at floors 0.05–0.3 the sum
trusts hundreds of strongly correlated pixels as independent evidence and TPR@1% fell to
0.02–0.04. Offline, pixel-sum lost at every floor (AUC 0.50–0.54 vs 0.727 for the mean). Those
comparisons read the run's own ledger, so neither decides a default: both attacks default to the
mean, fixed in advance (the paper's), and `aggregation: auto` lets the adversary choose by
rehearsal on its own reference models (`_Lira._choose_aggregation`). RMIA uses the mean probability.
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
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.stats import norm

from fedmia.attacks.base import PROBABILITY_FLOOR, AdversaryView, Attack, model_probabilities, register_attack
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


class LiraParams(ReferenceParams):
    aggregation: Literal["mean", "pixel-sum", "auto"] = Field(
        "mean", description="mean: one Gaussian per record on the image-mean φ (the paper's); "
        "pixel-sum: one per pixel, per-pixel log-likelihood ratios summed; auto: the one that separates "
        "reference model 0's training records best when it plays the target (the adversary's own models, "
        "never the ledger)")
    pixel_floor: float = Field(1.0, gt=0, description="pixel-sum: floor on each per-pixel std")


class LiraOnlineParams(LiraParams):
    pass


MANY_REFERENCE_MODELS = 64  # below this, LiRA shares one variance across records (Carlini et al.)


def shared_variance(params: ReferenceParams, models: int) -> bool:
    if params.fixed_variance == "auto":
        return models < MANY_REFERENCE_MODELS
    return bool(params.fixed_variance)


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


def _shared_references(view: AdversaryView, params: ReferenceParams) -> ReferenceModels:
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


class _ReferenceAttack(Attack):
    Params = ReferenceParams
    assumes = "reference models trained with the victim's recipe on halves of its population"

    def fit(self, view: AdversaryView) -> None:
        self.refs = _shared_references(view, self.params)
        self.phi, self.prob = self.refs.statistics()
        self.index = {rid: j for j, rid in enumerate(self.refs.pool.ids)}
        # The target model on the adversary's own population: calibration, queried once.
        self.population_phi, self.population_p = self._target_phi(view, view.population)

    def _columns(self, records: Records) -> np.ndarray:
        """Each record's column in the reference statistics; -1 for records the adversary never
        had (scored against all reference models instead)."""
        return np.array([self.index.get(rid, -1) for rid in records.ids])

    def _target_phi(self, view: AdversaryView, records: Records) -> tuple[np.ndarray, np.ndarray]:
        phi, prob = target_phi_maps(view, records)
        return phi.mean(1), prob.mean(1)

    def _calibrated(self, view: AdversaryView, records: Records) -> tuple[np.ndarray, np.ndarray]:
        """(target φ, reference φ), each model's φ minus its median over population records it
        was not trained on. The federated model and centrally trained references differ in
        overall confidence; LiRA's Gaussians must compare like with like."""
        phi_t, _ = self._target_phi(view, records)
        if not self.params.calibrate:
            return phi_t, self.phi
        return phi_t - np.median(self.population_phi), self._reference_phi()

    def _reference_phi(self) -> np.ndarray:
        """The reference models' image-mean φ (K, n), each minus its centre when calibrating."""
        return self.phi - self.refs.centres()[:, None] if self.params.calibrate else self.phi


def _gaussian_fit(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column mean and std of `values` where `mask`; NaN where a column has < 2 entries."""
    count = mask.sum(0)
    safe = np.where(mask, values, 0.0)
    mean = safe.sum(0) / np.maximum(count, 1)
    var = (np.where(mask, (values - mean) ** 2, 0.0)).sum(0) / np.maximum(count - 1, 1)
    mean[count < 1] = np.nan
    return mean, np.sqrt(var)


def _pixel_lira(phi_t: np.ndarray, moments: dict, cols: np.ndarray, online: bool, shared: bool,
                pixel_floor: float) -> np.ndarray:
    """Per-pixel Gaussians, per-pixel log-likelihood ratios (online) or log-CDFs (offline),
    summed. `phi_t`: (m, pixels) calibrated target maps; `cols`: each record's pool column."""
    known = cols >= 0
    c = np.where(known, cols, 0)

    def gaussians(side):
        mu, sd = moments[side]
        sd = np.full_like(sd, np.median(sd)) if shared else sd
        # a record the adversary never had (OOD sets): the per-pixel Gaussian of a typical record
        mu = np.where(known[:, None], mu[c], mu.mean(0))
        sd = np.where(known[:, None], sd[c], np.median(sd, axis=0))
        return mu, np.maximum(sd, pixel_floor)

    if online:
        per_pixel = norm.logpdf(phi_t, *gaussians("in")) - norm.logpdf(phi_t, *gaussians("out"))
    else:
        per_pixel = norm.logcdf(phi_t, *gaussians("out"))
    return per_pixel.sum(1)


def _mean_lira(phi_t: np.ndarray, phi: np.ndarray, inside: np.ndarray, cols: np.ndarray, online: bool,
               shared: bool) -> np.ndarray:
    """LiRA on the image-mean φ: `phi_t` (m,) calibrated target statistics, `phi` (K, n) the
    reference models' (calibrated), `inside` (K, n) which model trained on which pool record.
    Online: log N(φ; in) − log N(φ; out); offline: log CDF of the OUT Gaussian (one-sided)."""
    known = cols >= 0
    c = np.where(known, cols, 0)

    def gaussian(mask):
        mu, sd = _gaussian_fit(phi, mask)
        if shared:
            sd = np.full_like(sd, np.nanmedian(sd))
        # a record the adversary never had (OOD sets): the Gaussian of a typical record
        return np.where(known, mu[c], np.nanmean(mu)), np.maximum(np.where(known, sd[c], np.nanmedian(sd)), 1e-3)

    if not online:
        return norm.logcdf(phi_t, *gaussian(~inside))
    return norm.logpdf(phi_t, *gaussian(inside)) - norm.logpdf(phi_t, *gaussian(~inside))


class _Lira(_ReferenceAttack):
    """LiRA, online (IN and OUT Gaussians) or offline (OUT only), on the image-mean φ or per pixel."""

    Params = LiraParams
    online: bool

    def fit(self, view: AdversaryView) -> None:
        super().fit(view)
        self.aggregation = self.params.aggregation
        if self.aggregation == "auto":
            self.aggregation = self._choose_aggregation(view)

    def _choose_aggregation(self, view: AdversaryView) -> str:
        """RMIA's rehearsal (`Rmia._choose_a`) for LiRA: reference model 0 plays the target and
        models 1..K−1 are the references; keep the aggregation whose scores best separate model
        0's own training records from the rest of the pool (AUC). Only the adversary's own models
        and records are used; "mean" (the paper's) when there is nothing to rehearse on."""
        from sklearn.metrics import roc_auc_score

        inclusion = self.refs.inclusion
        labels = inclusion[0]
        # >= 4 models: with 3, model 0's own records would have no IN model left among the others
        if len(inclusion) < 4 or labels.all() or not labels.any():
            self.chosen = {"aggregation": "mean", "rehearsal": "too few reference models to rehearse"}
            return "mean"
        cols = np.arange(inclusion.shape[1])
        shared = shared_variance(self.params, len(inclusion) - 1)
        phi = self._reference_phi()
        moments = self.refs.pixel_moments(self.params.calibrate, exclude=0)
        scores = {"mean": _mean_lira(phi[0], phi[1:], inclusion[1:], cols, self.online, shared),
                  "pixel-sum": _pixel_lira(moments["held_out"], moments, cols, self.online, shared,
                                           self.params.pixel_floor)}
        aucs = {name: float(roc_auc_score(labels, np.nan_to_num(s, nan=-np.inf, posinf=1e300, neginf=-1e300)))
                for name, s in scores.items()}
        best = max(aucs, key=lambda name: (aucs[name], name == "mean"))  # a tie keeps the paper's
        self.chosen = {"aggregation": best, "rehearsal_auc": aucs}
        return best

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        cols = self._columns(records)
        shared = shared_variance(self.params, len(self.refs.inclusion))
        if self.aggregation == "pixel-sum":
            phi_t = target_phi_maps(view, records)[0]
            if self.params.calibrate:
                phi_t = phi_t - np.median(self.population_phi)
            return _pixel_lira(phi_t, self.refs.pixel_moments(self.params.calibrate), cols, self.online, shared,
                               self.params.pixel_floor)
        phi_t, phi = self._calibrated(view, records)
        return _mean_lira(phi_t, phi, self.refs.inclusion, cols, self.online, shared)


@register_attack("lira-online")
class LiraOnline(_Lira):
    Params = LiraOnlineParams
    online = True


@register_attack("lira-offline")
class LiraOffline(_Lira):
    online = False


@register_attack("rmia")
class Rmia(_ReferenceAttack):
    """Offline RMIA: P(x) from the OUT reference models, corrected by `a`; population records z
    (all of them, OUT-calibrated the same way) are the comparison set."""

    A_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))

    def fit(self, view: AdversaryView) -> None:
        super().fit(view)
        self.a = self._correction(view)

    def _correction(self, view: AdversaryView) -> float | None:
        """The offline correction `a` of P(x): the scenario's, or chosen on the adversary's own models."""
        return self.params.a if self.params.a != "auto" else self._choose_a(view)

    def _choose_a(self, view: AdversaryView) -> float:
        """ml_privacy_meter's procedure: reference model 0 plays the target, the others are the
        references; keep the `a` whose scores best separate model 0's own training records from
        the rest of the pool (AUC). Only the adversary's own models and records are used."""
        from sklearn.metrics import roc_auc_score

        inclusion, prob = self.refs.inclusion, self.prob
        n_pop = len(view.population)
        out = ~inclusion[1:]
        usable = out.sum(0) > 0  # records some other reference model left out
        p_out = np.where(out, prob[1:], 0.0).sum(0) / np.maximum(out.sum(0), 1)
        labels = inclusion[0][usable]
        if labels.all() or not labels.any():
            return 0.3  # nothing to rehearse on: ml_privacy_meter's default
        best = (-1.0, 0.0)
        for a in self.A_GRID:
            p_ref = np.maximum(((1 + a) * p_out + (1 - a)) / 2, 1e-12)
            ratio = np.maximum(prob[0] / p_ref, 1e-300)
            population = ratio[:n_pop][usable[:n_pop]]
            scores = (ratio[usable][:, None] / population[None, :] >= self.params.gamma).mean(1)
            auc = roc_auc_score(labels, scores + 1e-6 * np.log(ratio[usable]))
            best = max(best, (auc, -a))
        self.chosen = {"a": -best[1], "rehearsal_auc": best[0]}
        return -best[1]

    def _p_reference(self) -> np.ndarray:
        """P(x) for every pool record: the OUT models' mean (the models that saw x are left out),
        corrected by `a`."""
        out = ~self.refs.inclusion
        p_out = np.where(out, self.prob, 0.0).sum(0) / np.maximum(out.sum(0), 1)
        return ((1 + self.a) * p_out + (1 - self.a)) / 2

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        _, p_target = self._target_phi(view, records)
        p_x_ref = self._p_reference()
        n_pop = len(view.population)
        ratio_z = self.population_p / p_x_ref[:n_pop]
        cols = self._columns(records)
        ratio_x = p_target / np.array([p_x_ref[c] if c >= 0 else np.mean(p_x_ref) for c in cols])
        fraction = (ratio_x[:, None] / ratio_z[None, :] >= self.params.gamma).mean(1)
        # With a few hundred z the fraction ties often; break ties by the likelihood ratio itself.
        return fraction + 1e-6 * np.log(ratio_x)


class RmiaOnlineParams(ReferenceParams):
    @model_validator(mode="after")
    def _no_a(self):
        if self.a != "auto":
            raise ValueError("a: the offline correction of P(x); rmia-online averages over the IN and OUT "
                             "reference models and takes none (use rmia for a)")
        return self


@register_attack("rmia-online")
class RmiaOnline(Rmia):
    """Online RMIA: P(x) and P(z) averaged over every reference model, IN and OUT. Each pool
    record is IN half of the models by design, so no offline correction `a` is needed; the
    same reference models as LiRA and offline RMIA (shared, cached), so it costs no training."""

    Params = RmiaOnlineParams

    def _correction(self, view: AdversaryView) -> None:
        return None  # P(x) already averages IN and OUT models: no offline correction to choose

    def _p_reference(self) -> np.ndarray:
        """The mean over all reference models, half of which trained on x (Zarifzadeh et al.'s
        online P(x))."""
        return self.prob.mean(0)
