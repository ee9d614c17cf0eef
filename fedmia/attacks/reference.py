"""Calibrated attacks with reference models: LiRA (Carlini et al. 2022) and RMIA (Zarifzadeh et al.
2024).

The adversary's reference models — how they train (federated by default) and their cache — are
`fedmia/attacks/reference_models.py`.

Per-record statistic: the logit-scaled confidence of the true class, φ = log(p_y / (1 − p_y)),
per pixel, with each model's φ centred on its OUT population records. Two aggregations over the
image (`aggregation`):
  mean       one Gaussian per record on the image-mean φ;
  pixel-sum  one Gaussian per record *and pixel*, log-likelihood ratios (online) or log-CDFs
             (offline) summed over pixels, each per-pixel std floored at `pixel_floor` (1.0):
             without the floor the sum trusts hundreds of correlated pixels as independent.
Both attacks default to the mean, fixed in advance (the paper's): the comparisons that favoured
pixel-sum online read a run's own ledger, so they decide no default (measured figures:
bench/RESULTS.md, "LiRA's aggregation over the image"). `aggregation: auto` lets the adversary
choose by rehearsal on its own reference models (`_Lira._choose_aggregation`). RMIA uses the
mean probability.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator
from scipy.stats import norm

from fedmia.attacks.base import AdversaryView, Attack, register_attack
from fedmia.attacks.reference_models import ReferenceParams, shared_references, target_phi_maps
from fedmia.data.records import Records


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


class _ReferenceAttack(Attack):
    Params = ReferenceParams
    assumes = "reference models trained with the victim's recipe on halves of its population"

    def fit(self, view: AdversaryView) -> None:
        self.refs = shared_references(view, self.params)
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
