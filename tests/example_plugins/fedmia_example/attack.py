"""Example plug-in: a new attack is this one file (and importing it registers it)."""

import numpy as np

from fedmia.attacks.base import Attack, register_attack


@register_attack("example-median-pixel-loss")
class MedianPixelLoss(Attack):
    """Black-box: minus the median per-pixel loss, through the query API."""

    def fit(self, view) -> None:
        self.threshold = None

    def score(self, view, records) -> np.ndarray:
        probs = view.api.query(records.images)
        p_true = probs.gather(1, __import__("torch").as_tensor(records.masks).long().unsqueeze(1)).squeeze(1)
        return np.median(np.log(p_true.clamp_min(1e-12).flatten(1).numpy()), axis=1)
