"""What every attack gets (the adversary's view) and what it must provide (fit, then score).

The view holds the transcript, the model architecture (the server chose it), the served model's
query API, the adversary's population data and the target records — and nothing else: no
ledger, no client data. Black-box attacks get the view without the transcript, so the served
model is reachable only through `view.api.query` (tests/test_attacks.py enforces it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from fedmia.data.records import Records
from fedmia.models import set_weights
from fedmia.registry import Registry
from fedmia.training import inference_batch
from fedmia.transcript import Transcript, Weights


class QueryAPI:
    """The served model behind its query API — the only way a black-box attack sees it.

    `query` returns what a deployed model's API would: per-pixel class probabilities in float64
    (computed from float64 logits, so confident pixels do not saturate), after the release
    (e.g. a last-layer Laplace posterior) and every defense acting on the query stage, in the
    scenario's order, through its `postprocess(probs, logits, generator)` hook (output
    hardening: argmax, top-k, ...). The module itself is held privately; `postprocess` applies
    only the (public) output behaviour, so an adversary can shape its own reference models'
    outputs the same way.
    """

    def __init__(self, served: nn.Module, query_defenses=(), *, device, batch_size: int | None = None):
        self.__served = served.to(device).eval()
        self.query_defenses = list(query_defenses or ())
        self.device = device
        self.batch_size = batch_size
        self.queries = 0  # records answered: what the audit cost the adversary

    @property
    def hardened(self) -> bool:
        """Whether the answers are shaped (exact 0/1 under argmax: logs need a floor)."""
        return bool(self.query_defenses)

    def postprocess(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        logits = logits.double()
        probs = torch.softmax(logits, dim=1)
        for defense in self.query_defenses:
            probs = defense.postprocess(probs, logits, generator)
        return probs

    @torch.no_grad()
    def query(self, images: np.ndarray) -> torch.Tensor:
        """Probabilities (N, C, H, W), float64, on the CPU. Noise defenses are seeded per call,
        so a record queried twice gets the same answer (a cached response)."""
        generator = torch.Generator().manual_seed(0)
        out = []
        batch_size = inference_batch(images, self.batch_size)
        for start in range(0, len(images), batch_size):
            x = torch.as_tensor(images[start : start + batch_size]).to(self.device)
            out.append(self.postprocess(self.__served(x).double().cpu(), generator))
        self.queries += len(images)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def model_probabilities(model: nn.Module, images: np.ndarray, *, device, batch_size: int | None = None,
                        postprocess=None) -> torch.Tensor:
    """Probabilities (N, C, H, W), float64, of a model the adversary holds itself (its own
    reference models, or transcript weights), optionally shaped like the API's answers."""
    model.to(device).eval()
    batch_size = inference_batch(images, batch_size)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(torch.as_tensor(images[start : start + batch_size]).to(device)).double().cpu()
            out.append(postprocess(logits) if postprocess is not None else torch.softmax(logits, dim=1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


@dataclass
class AdversaryView:
    transcript: Transcript | None  # None in a black-box view
    model_factory: Callable[[], nn.Module]
    population: Records
    targets: Records
    num_classes: int
    device: torch.device
    api: QueryAPI | None = None  # the served model's query API (black-box access)
    population_fpr: float = 0.1  # false-alarm rate the adversary accepts when it sets thresholds
    batch_size: int | None = None  # None: by image size (fedmia.training.inference_batch)
    # What the server knows of the clients' training (it sends their config): for reference models.
    recipe: object = None  # fedmia.training.TrainRecipe of one local run
    rounds: int = 1
    clients: int = 1  # clients a round samples
    # the clients' own local training (recipe and local defenses) as a callable (model, records,
    # seed): for reference models trained as the federation trains; None where it is not known
    local_training: Callable | None = field(default=None, repr=False, compare=False)
    local_defenses: list = field(default_factory=list)  # their names, for the reference cache key
    seed: int = 0
    cache_dir: object = None  # where reference models are kept between runs
    train_workers: int = 1  # processes that train the adversary's own models at once
    cache_context: dict = field(default_factory=dict)  # data/model settings the cache key includes
    shared: dict = field(default_factory=dict, repr=False)  # work shared between attacks of one run
    _summaries: dict = field(default_factory=dict, repr=False)
    # Long steps say where they are ("reference model 3/8"); the pipeline shows it on its bar.
    report: Callable[[str], None] = field(default=lambda text: None, repr=False, compare=False)

    def black_box(self) -> "AdversaryView":
        """The same view without the transcript: the served model is reachable only through
        `api`. What black-box attacks get."""
        return dataclasses.replace(self, transcript=None)

    def model_with(self, weights: Weights) -> nn.Module:
        model = self.model_factory()
        set_weights(model, weights)
        return model.to(self.device).eval()

    def pixel_summaries(self, records: Records, weights: Weights | None = None) -> dict[str, np.ndarray]:
        """Per-record means of per-pixel statistics.

        Default: the served model *through its query API* (release and output defense apply);
        with explicit `weights`, the server's white-box view of a model in the transcript. Results
        are cached per (records, model)."""
        api = weights is None
        key = (cache_token(records), cache_token(weights), api)
        if key not in self._summaries:
            if api:
                probs = self.api.query(records.images)
                floor = PROBABILITY_FLOOR if self.api.hardened else 0.0
            else:
                probs = model_probabilities(self.model_with(weights), records.images, device=self.device,
                                            batch_size=self.batch_size)
                floor = 0.0
            self._summaries[key] = summaries_from_probabilities(probs, records.masks, floor=floor)
        return self._summaries[key]


def cache_token(obj) -> object:
    """What names `obj` in a cache for as long as the cache lives. Not `id()`: a model read back
    from the transcript, or a Records built and dropped, frees its id for the next object, and a
    cache keyed by it returned another model's figures (2026-12-05: source inference's OOD rate on
    optimised fakes came out 0.31 or 0.02 for the same run, by what had been allocated before).
    Records and stored models carry a `token`; a model held in memory by the transcript keeps its
    id for the whole run."""
    if obj is None:
        return None
    token = getattr(obj, "token", None)
    return token if token else ("id", id(obj))


PROBABILITY_FLOOR = 1e-6  # hardened outputs (argmax: exact 0/1) must give finite logs


def summaries_from_probabilities(probs: torch.Tensor, masks: np.ndarray, floor: float = 0.0) -> dict[str, np.ndarray]:
    """Mean over pixels of: cross-entropy of the true class (`loss`), entropy, the true class's
    probability (`confidence`, Song & Mittal), the largest probability (`max-softmax`), and
    Song & Mittal's modified entropy −(1−p_y)·log p_y − Σ_{i≠y} p_i·log(1−p_i).

    Hardened outputs (argmax: exact 0/1) are floored (`floor`, 1e-6 through a hardened API)
    before logs, so they give finite, label-only statistics."""
    p = probs.double().clamp_min(floor) if floor else probs.double()
    y = torch.as_tensor(masks).long().unsqueeze(1)
    log_p = torch.log(p.clamp_min(1e-300))
    p_true = p.gather(1, y).squeeze(1)
    log_p_true = log_p.gather(1, y).squeeze(1)
    log_1mp = torch.log((1 - p).clamp_min(1e-12))
    others = (p * log_1mp).sum(1) - p_true * log_1mp.gather(1, y).squeeze(1)
    per_record = {
        "loss": -log_p_true,
        "entropy": -(p * log_p).sum(1),
        "confidence": p_true,
        "max-softmax": p.max(1).values,
        "modified-entropy": -(1 - p_true) * log_p_true - others,
    }
    return {name: pixels.flatten(1).mean(1).numpy() for name, pixels in per_record.items()}


def pixel_summaries(model: nn.Module, records: Records, *, device, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """`summaries_from_probabilities` of a model the caller holds (white-box)."""
    probs = model_probabilities(model, records.images, device=device, batch_size=batch_size)
    return summaries_from_probabilities(probs, records.masks)


@dataclass
class RecoveredUpdate:
    """One client's update as an attack recovered it (model inconsistency): the evaluator
    compares it with the update the client really computed. `update`: parameter position →
    recovered delta, for the `attacked_positions`; `sent`: the weights the server sent that node."""

    round: int
    target_node: int
    attacked_positions: list[int]
    update: dict[int, np.ndarray]
    sent: list[np.ndarray]


@dataclass
class AttackResult:
    """What one attack hands the evaluator: scores (higher = more likely a member), its own
    decision threshold (or None), owners for source inference, or why it was skipped.
    `recovered`: an update the attack recovered, to compare with the true one; `scope_client`
    restricts its membership figures to one client's members against every non-member.
    `chosen`: settings the attack chose from the adversary's own data (reported beside its figures)."""

    scores: np.ndarray | None = None
    threshold: float | None = None
    owners: np.ndarray | None = None
    skipped: str | None = None
    scope_client: int | None = None
    recovered: RecoveredUpdate | None = None
    chosen: dict | None = None
    attack: "Attack | None" = field(default=None, repr=False)  # with `view`: to score the OOD sets
    view: "AdversaryView | None" = field(default=None, repr=False)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Attack(ABC):
    """Subclasses set `name`, learn what they need in `fit`, and return per-record scores where
    higher means "more likely a member". `threshold` is the adversary's own decision rule
    (chosen without ground truth), or None if the attack makes no decision. Parameters from
    the scenario arrive validated by the class's `Params` model."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    # "black-box": sees the served model only through `view.api` (the view has no transcript);
    # "white-box": reads the transcript's weights (the server's own records).
    access: ClassVar[str] = "black-box"
    # What the adversary needs besides the attacked model, in a sentence for the audit report.
    assumes: ClassVar[str] = "its population data (to set a threshold); the released model's outputs only"
    threshold: float | None = None
    chosen: dict | None = None  # settings `fit` chose from the adversary's own data, if any

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def fit(self, view: AdversaryView) -> None: ...

    @abstractmethod
    def score(self, view: AdversaryView, records: Records) -> np.ndarray: ...

    def result(self, view: AdversaryView) -> AttackResult:
        """Score the view's targets; subclasses add owners, scope or extras."""
        return AttackResult(scores=np.asarray(self.score(view, view.targets), dtype=float),
                            threshold=self.threshold, chosen=self.chosen, attack=self, view=view)


ATTACKS: Registry[type[Attack]] = Registry("attack", "fedmia.attacks")


def register_attack(name: str):
    def add(cls: type[Attack]) -> type[Attack]:
        return ATTACKS.register(name)(cls)

    return add
