"""Quantile-regression membership inference (Bertran et al., NeurIPS 2023), for segmentation.

A threshold attack compares every record's score with one level; but a scan with a large,
ragged lesion has a high loss whether or not it was trained on, and a near-empty one a low loss.
QMIA learns, from the adversary's population alone (records it knows were not trained on), what
score a *non-member* like this record would get: a regressor predicts, from the record itself,
the (1 − α) quantile of the served model's score over non-members. The attack's score is the
margin — the record's score minus its predicted quantile — and "member" means a positive margin,
so each record's false-alarm rate is about α by construction. No reference model is trained and
nothing of the architecture is needed: one query per record, one regressor.

The regressor is scikit-learn's histogram gradient boosting with the pinball (quantile) loss, on
features of the record the adversary holds (its image and mask): the label map's class shares and
boundary length (where segmentation errs), intensity statistics, and a coarse thumbnail. Its
settings are fixed here in advance — never chosen against a run's ledger; α is the scenario's
`evaluation.threshold_population_fpr`, the false-alarm rate every threshold attack accepts.
"""

from __future__ import annotations

import numpy as np
import torch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedmia.attacks.base import AdversaryView, Attack, register_attack
from fedmia.data.records import Records

_SIGNS = {"loss": -1.0, "modified-entropy": -1.0, "confidence": 1.0, "entropy": -1.0, "max-softmax": 1.0}


class QMIAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statistic: Literal["loss", "modified-entropy", "confidence", "entropy", "max-softmax"] = Field("loss", description="the per-record score regressed: loss, modified-entropy, "
                           "confidence, entropy or max-softmax (each pixel-averaged, through the query API)")
    thumbnail: int = Field(4, ge=1, le=16, description="side of the coarse image thumbnail among the features")
    iterations: int = Field(200, ge=10, le=2000, description="boosting iterations of the quantile regressor")


def record_features(records: Records, num_classes: int, thumbnail: int) -> np.ndarray:
    """What the adversary knows of each record without any model: class shares and boundary
    length of its label map, intensity mean/spread/gradient per channel, and a thumbnail."""
    images = torch.as_tensor(records.images, dtype=torch.float32)
    masks = torch.as_tensor(records.masks).long()
    shares = torch.nn.functional.one_hot(masks, num_classes).float().mean((1, 2))
    boundary = ((masks[:, 1:, :] != masks[:, :-1, :]).float().mean((1, 2))
                + (masks[:, :, 1:] != masks[:, :, :-1]).float().mean((1, 2)))[:, None]
    mean, spread = images.mean((2, 3)), images.std((2, 3))
    gradient = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean((2, 3))
    thumb = torch.nn.functional.adaptive_avg_pool2d(images, thumbnail).flatten(1)
    return torch.cat([shares, boundary, mean, spread, gradient, thumb], dim=1).numpy().astype(np.float64)


@register_attack("qmia")
class QuantileRegressionMIA(Attack):
    """Score minus the non-member (1 − α) quantile predicted for this record from the population."""

    assumes = "its population data (to train a quantile regressor on the released model's outputs)"

    Params = QMIAParams

    def _scores(self, view: AdversaryView, records: Records) -> np.ndarray:
        return _SIGNS[self.params.statistic] * view.pixel_summaries(records)[self.params.statistic]

    def fit(self, view: AdversaryView) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        features = record_features(view.population, view.num_classes, self.params.thumbnail)
        self.regressor = HistGradientBoostingRegressor(
            loss="quantile", quantile=1.0 - view.population_fpr, max_iter=self.params.iterations,
            learning_rate=0.05, max_depth=3, min_samples_leaf=max(5, len(features) // 20), random_state=0)
        self.regressor.fit(features, self._scores(view, view.population))
        self.threshold = 0.0  # member: above the quantile a non-member like it would reach

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        predicted = self.regressor.predict(record_features(records, view.num_classes, self.params.thumbnail))
        return self._scores(view, records) - predicted
