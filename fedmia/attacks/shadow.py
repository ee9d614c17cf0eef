"""Shadow-model attacks for segmentation (Chobola et al. 2022; He et al., Segmentations-Leak 2020;
Salem et al. 2019).

The shadow model is reference model 0 of `fedmia.attacks.reference_models` (trained with the victim's
recipe on a random half of the adversary's records; the adversary knows which half). On its
population records — members or not, as the adversary arranged — it trains an attack model,
then applies it to the victim's global model queried on the targets.

  shadow-type1    CNN on the softmax map (C channels)
  shadow-type2    CNN on the softmax map ⊕ one-hot ground truth (2C channels)
  shadow-lossmap  CNN on the per-pixel loss map −log p_y (1 channel)
  global-loss     member iff the record's loss < the shadow model's mean training loss
  salem           MLP on the sorted top-3 per-pixel scores, averaged over the image
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from sklearn.neural_network import MLPClassifier
from torch import nn
from torch.nn import functional as F

from fedmia.attacks.base import AdversaryView, Attack, model_probabilities, register_attack
from fedmia.attacks.reference_models import ReferenceParams, shared_references
from fedmia.data.records import Records
from fedmia.models import set_weights


class ShadowParams(ReferenceParams):
    epochs_attack: int = Field(40, ge=1, description="training epochs of the attack CNN")


def shadow_maps(view: AdversaryView, model, records: Records) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, C, H, W), masks) of the adversary's own shadow model, its outputs shaped
    like the query API's answers."""
    probs = model_probabilities(model, records.images, device=view.device, postprocess=view.api.postprocess)
    return probs.float(), torch.as_tensor(records.masks).long()


def target_maps(view: AdversaryView, records: Records) -> tuple[torch.Tensor, torch.Tensor]:
    """The served model's answers, through its query API."""
    return view.api.query(records.images).float(), torch.as_tensor(records.masks).long()


def features(kind: str, probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if kind == "type1":
        return probs
    one_hot = F.one_hot(masks, probs.shape[1]).permute(0, 3, 1, 2).float()
    if kind == "type2":
        return torch.cat([probs, one_hot], dim=1)
    return -torch.log((probs * one_hot).sum(1, keepdim=True).clamp_min(1e-6))  # loss map


class MapClassifier(nn.Module):
    """A small CNN over a whole map: two conv blocks, global pooling, one logit."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(32, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(1)


class _ShadowAttack(Attack):
    assumes = "a shadow model trained on its population"
    Params = ShadowParams

    def _shadow(self, view: AdversaryView):
        refs = shared_references(view, self.params)
        model = view.model_factory()
        set_weights(model, refs.weights(0))
        n_pop = len(view.population)
        labels = refs.inclusion[0, :n_pop]  # which population records the shadow trained on
        return model, labels


class _MapAttack(_ShadowAttack):
    kind: str

    def fit(self, view: AdversaryView) -> None:
        shadow, labels = self._shadow(view)
        probs, masks = shadow_maps(view, shadow, view.population)
        x = features(self.kind, probs, masks)
        y = torch.as_tensor(labels, dtype=torch.float32)
        torch.manual_seed(view.seed)
        self.classifier = MapClassifier(x.shape[1])
        optimizer = torch.optim.Adam(self.classifier.parameters(), lr=3e-3)
        for _ in range(self.params.epochs_attack):
            for idx in torch.randperm(len(x)).split(32):
                optimizer.zero_grad()
                F.binary_cross_entropy_with_logits(self.classifier(x[idx]), y[idx]).backward()
                optimizer.step()
        self.threshold = 0.0  # logit 0: probability 1/2

    @torch.no_grad()
    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        probs, masks = target_maps(view, records)
        return self.classifier.eval()(features(self.kind, probs, masks)).numpy()


@register_attack("shadow-type1")
class ShadowType1(_MapAttack):
    kind = "type1"


@register_attack("shadow-type2")
class ShadowType2(_MapAttack):
    kind = "type2"


@register_attack("shadow-lossmap")
class ShadowLossMap(_MapAttack):
    kind = "lossmap"


@register_attack("global-loss")
class GlobalLoss(_ShadowAttack):
    def fit(self, view: AdversaryView) -> None:
        shadow, labels = self._shadow(view)
        probs, masks = shadow_maps(view, shadow, view.population)
        losses = features("lossmap", probs, masks).flatten(1).mean(1).numpy()
        self.threshold = -float(losses[labels].mean())

    @torch.no_grad()
    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        probs, masks = target_maps(view, records)
        return -features("lossmap", probs, masks).flatten(1).mean(1).numpy()


def top3(probs: torch.Tensor) -> np.ndarray:
    k = min(3, probs.shape[1])
    top = probs.topk(k, dim=1).values.flatten(2)  # (N, k, pixels), sorted descending
    return torch.cat([top.mean(2), top.std(2)], dim=1).numpy()


@register_attack("salem")
class Salem(_ShadowAttack):
    def fit(self, view: AdversaryView) -> None:
        shadow, labels = self._shadow(view)
        probs, _ = shadow_maps(view, shadow, view.population)
        self.mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=view.seed)
        self.mlp.fit(top3(probs), labels)
        self.threshold = 0.5

    def score(self, view: AdversaryView, records: Records) -> np.ndarray:
        probs, _ = target_maps(view, records)
        return self.mlp.predict_proba(top3(probs))[:, 1]
