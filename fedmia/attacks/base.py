"""What every attack gets (the adversary's view) and what it must provide (fit, then score).

The view holds the transcript, the model architecture (the server chose it), the adversary's
population data and the target records — and nothing else: no ledger, no client data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from fedmia.data.records import Records
from fedmia.defenses.output import api_probabilities
from fedmia.models import set_weights
from fedmia.registry import Registry
from fedmia.transcript import Transcript, Weights


@dataclass
class AdversaryView:
    transcript: Transcript
    model_factory: Callable[[], nn.Module]
    population: Records
    targets: Records
    num_classes: int
    device: torch.device
    population_fpr: float = 0.1  # false-alarm rate the adversary accepts when it sets thresholds
    batch_size: int = 64
    output_defense: object = None  # the query API's hardening (scenario.defenses.output)
    released: nn.Module | None = None  # what the API serves if not the plain final model (LLLA)
    # What the server knows of the clients' training (it sends their config): for reference models.
    recipe: object = None  # fedmia.training.TrainRecipe of one local run
    rounds: int = 1
    seed: int = 0
    cache_dir: object = None  # where reference models are kept between runs
    cache_context: dict = field(default_factory=dict)  # data/model settings the cache key includes
    shared: dict = field(default_factory=dict, repr=False)  # work shared between attacks of one run
    _summaries: dict = field(default_factory=dict, repr=False)

    def model_with(self, weights: Weights) -> nn.Module:
        model = self.model_factory()
        set_weights(model, weights)
        return model.to(self.device).eval()

    def released_model(self) -> nn.Module:
        """The model behind the black-box query API: the final global model, or what the
        federation released in its place (defenses.laplace)."""
        if self.released is not None:
            return self.released.to(self.device).eval()
        if "final_model" not in self.shared:  # built once: every black-box query uses it
            self.shared["final_model"] = self.model_with(self.transcript.final)
        return self.shared["final_model"]

    def pixel_summaries(self, records: Records, weights: Weights | None = None) -> dict[str, np.ndarray]:
        """Per-record means of per-pixel statistics on a model.

        Default: the final global model *queried through its API* (so output hardening applies);
        with explicit `weights`, the server's white-box view of that model. One forward pass
        serves every threshold attack; results are cached per (records, model).
        """
        api = weights is None
        weights = self.transcript.final if api else weights
        key = (id(records), id(weights), api)
        if key not in self._summaries:
            model = self.released_model() if api else self.model_with(weights)
            self._summaries[key] = pixel_summaries(
                model, records, device=self.device, batch_size=self.batch_size,
                output_defense=self.output_defense if api else None,
            )
        return self._summaries[key]


@torch.no_grad()
def pixel_summaries(model: nn.Module, records: Records, *, device, batch_size: int = 64,
                    output_defense=None) -> dict[str, np.ndarray]:
    """Mean over pixels of: cross-entropy of the true class, entropy, max-softmax, and Song &
    Mittal's modified entropy  −(1−p_y)·log p_y − Σ_{i≠y} p_i·log(1−p_i).

    Probabilities are floored at 1e-6 before logs, so hardened outputs (argmax: exact 0/1)
    give finite, label-only statistics."""
    out: dict[str, list[np.ndarray]] = {"loss": [], "entropy": [], "confidence": [], "modified-entropy": []}
    eps = 1e-12
    generator = torch.Generator().manual_seed(0)
    for start in range(0, len(records), batch_size):
        x = torch.as_tensor(records.images[start : start + batch_size]).to(device)
        y = torch.as_tensor(records.masks[start : start + batch_size]).to(device)
        logits = model(x).float()
        if output_defense is None:
            log_p = torch.log_softmax(logits, dim=1)
        else:
            log_p = torch.log(api_probabilities(logits, output_defense, generator).clamp_min(1e-6))
        p = log_p.exp()
        log_p_true = log_p.gather(1, y.unsqueeze(1)).squeeze(1)
        p_true = log_p_true.exp()
        log_1mp = torch.log((1 - p).clamp_min(eps))
        others = (p * log_1mp).sum(1) - p_true * log_1mp.gather(1, y.unsqueeze(1)).squeeze(1)
        mentr = -(1 - p_true) * log_p_true - others
        per_record = {
            "loss": -log_p_true,
            "entropy": -(p * log_p).sum(1),
            "confidence": p.max(1).values,
            "modified-entropy": mentr,
        }
        for name, pixels in per_record.items():
            out[name].append(pixels.flatten(1).mean(1).cpu().numpy())
    return {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in out.items()}


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Attack(ABC):
    """Subclasses set `name`, learn what they need in `fit`, and return per-record scores where
    higher means "more likely a member". `threshold` is the adversary's own decision rule
    (chosen without ground truth), or None if the attack makes no decision. Parameters from
    the scenario arrive validated by the class's `Params` model."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    threshold: float | None = None

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def fit(self, view: AdversaryView) -> None: ...

    @abstractmethod
    def score(self, view: AdversaryView, records: Records) -> np.ndarray: ...


ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(name: str):
    def add(cls: type[Attack]) -> type[Attack]:
        cls.name = name
        return ATTACKS.register(name)(cls)

    return add
