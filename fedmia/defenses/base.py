"""The defense plug-in point: one module per defense, registered by its scenario key.

A defense declares its schema block (`Params`), where it acts (`acts_on`, one of STAGES), the
keys it does not compose with and why (`conflicts`), its own cross-checks (`problems`) and how
`metrics.json` names it (`describe`). Where it acts it overrides that stage's hook:

  received model                                                `inspect`: before local training (may refuse);
                                                                `finish`: after it (undo, reply metrics)
  local batch / local loss / local gradients / local training   hooks of `fedmia.local.LocalRun`
  aggregation                                                   `wrap_strategy`, `fit_workflow`
  release                                                       `release`: what is served instead of the model
  query                                                         `postprocess(probs, logits, generator)`: what the
                                                                query API returns (QueryAPI calls every one, in order)

`fedmia/validation.py` checks each block against `Params`, runs `problems`, and rejects any
pair of active defenses one of which lists the other in `conflicts` — naming both keys.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from fedmia.defenses.report import Privacy
from fedmia.registry import Registry

STAGES = ("received model", "local batch", "local loss", "local gradients", "local training", "aggregation",
          "release", "query")
LOCAL_STAGES = STAGES[:5]  # a client's own training; `conflicts` are declared between these


class ModelRefused(RuntimeError):
    """A client's check rejected the model the server sent; the client does not train on it."""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Defense:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = Params
    acts_on: ClassVar[str]
    conflicts: ClassVar[dict[str, str]] = {}
    # aggregation stage: the server sees only an aggregate of the clients' updates (SecAgg+), so
    # clients send updates (they quantise finely) and update attacks read the aggregate
    hides_client_updates: ClassVar[bool] = False
    # the model the federation trains has no BatchNorm (models' `norm: auto` asks every defense)
    needs_group_norm: ClassVar[bool] = False
    # Registered attacks designed against this defense — an adversary who knows it (Carlini et al.
    # 2019; Tramèr et al. 2020: defenses that held against fixed attacks fell to adaptive ones).
    # `fedmia audit` runs them wherever the scenario uses the defense; a defense that declares none
    # has every verdict marked "not tested against an adversary who knows it".
    adaptive_attacks: ClassVar[tuple[str, ...]] = ()
    # Server strategies with a variant designed against this defense; `knowing_server` gives the
    # parameters that variant sets from what it knows of the defense, and a threat model running
    # that strategy sends them (fedmia/threat_models.py).
    adaptive_servers: ClassVar[tuple[str, ...]] = ()

    def knowing_server(self, strategy: str) -> dict:
        """Server parameters of the `strategy` variant that knows this defense ({} when none)."""
        return {}

    @property
    def canary_client(self) -> int | None:
        """The client that trains on gradient canaries for an empirical check of ε, if any."""
        return None

    def privacy_report(self, scenario, plan, transcript) -> Privacy | None:
        """The guarantee this defense gives (metrics.json `privacy`: ε from its accountants)."""
        return None

    def epsilon_at(self, scenario, transcript, delta: float, client: int | None = None) -> float | None:
        """ε of the guarantee at any δ (the empirical check tests at several), or None."""
        return None

    def recipe(self, recipe):
        """Local loss stage: the training recipe under this defense (e.g. smoothed targets)."""
        return recipe

    # ---- the hooks of the stage a defense owns; the engine calls each on every active defense,
    # and these defaults change nothing ----------------------------------------------------------
    def train(self, run) -> dict[str, float] | None:
        """Local training / local gradients: the whole of a client's local training (DP-SGD,
        distillation) and its reply metrics, or None to leave it to the plain minibatches."""
        return None

    def wrap_strategy(self, strategy, scenario):
        """Aggregation: the server strategy under this defense, wrapping it as Flower's DP
        wrappers do (central DP, thresholded aggregation); the strategy itself when it acts elsewhere."""
        return strategy

    def fit_workflow(self):
        """Aggregation: a Flower fit workflow in place of the default one (SecAgg+), or None."""
        return None

    def release(self, model, plan, device) -> tuple[Any, str] | None:
        """Release: (the module served instead of the federation's `model`, its name), or None."""
        return None

    def __init__(self, params: BaseModel):
        self.params = params

    @classmethod
    def block(cls, raw: Any) -> Any:
        """The YAML shorthand: `key: true` means the defaults, `false`/null switches it off
        (returns None)."""
        if raw is True:
            return {}
        if raw is False or raw is None:
            return None
        return raw

    def describe(self) -> str:
        return self.name

    def problems(self, scenario) -> list[tuple[str, str]]:
        return []

    def postprocess(self, probs, logits, generator=None):
        """Query stage: the probabilities the API returns, given those so far and the raw logits."""
        return probs

    def model_problems(self, model) -> list[tuple[str, str]]:
        """Checks that need the model: validation passes its probe build of the scenario's model."""
        return []

    # ---- local-training hooks (fedmia.local.LocalRun); defaults change nothing -----------------
    def inspect(self, run) -> None:
        """Before local training, on the model as received: raise `ModelRefused` to refuse it."""

    def start(self, run) -> None:
        """Per local run: set up any state (e.g. an inline attack model)."""

    def batch(self, run, x, y):
        return x, y

    def before_step(self, run, x, y) -> None:
        """Before the model's step on a batch (e.g. the min-max attack's own step)."""

    def forward_loss(self, run, x, y):
        """(logits, loss) to replace the plain forward and loss, or None."""
        return None

    def extra_loss(self, run, logits, x, y):
        return None

    def finish(self, run) -> dict[str, float]:
        """After local training (also when it failed): undo what `inspect`/`start` installed on
        the model; metrics for the client's reply."""
        return {}


def needs_public(scenario, where: str) -> list[tuple[str, str]]:
    """The problem of a defense that trains on `data.public` when there is too little of it."""
    if scenario.data.public < 2:
        return [(where, f"needs public reference records: expected data.public >= 2, found {scenario.data.public}")]
    return []


DEFENSES: Registry[type[Defense]] = Registry("defense", "fedmia.defenses")


def register_defense(key: str, acts_on: str):
    if acts_on not in STAGES:
        raise ValueError(f"defense {key!r}: acts_on must be one of {STAGES}, found {acts_on!r}")

    def add(cls: type[Defense]) -> type[Defense]:
        cls.acts_on = acts_on
        return DEFENSES.register(key)(cls)

    return add


def defended_recipe(scenario):
    """The clients' training recipe with every active defense's `recipe` hook applied — what
    clients, reference and shadow models all train with."""
    from fedmia.training import TrainRecipe

    recipe = TrainRecipe.from_scenario(scenario)
    for defense in active(scenario):
        recipe = defense.recipe(recipe)
    return recipe


def active(scenario) -> list[Defense]:
    """The scenario's active defenses, as plug-in instances (blocks already validated)."""
    out = []
    for key, params in scenario.defenses.root.items():
        if params is None:
            continue
        cls = DEFENSES.get(key)
        out.append(cls(params if isinstance(params, BaseModel) else cls.Params.model_validate(params)))
    return out
