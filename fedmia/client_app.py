"""The Flower ClientApp: local training and evaluation of an smp model on one client's records.

We use Flower's legacy NumPyClient API on purpose: in flwr 1.41 SecAgg+ (`secaggplus_mod`)
runs only on that path, and one code path for plain and secure runs keeps them comparable.
Each client rebuilds the (deterministic) federation plan from the scenario and keeps only its
own partition — in a real deployment it would read its own data instead.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedmia.data.plan import build_plan
from fedmia.defenses.dp import noise_for_budget, sample_rate, steps_per_epoch, train_local_dp
from fedmia.defenses.regularization import train_regularised
from fedmia.models import get_weights, scenario_model, set_weights
from fedmia.scenario import Scenario, load_scenario
from fedmia.training import TrainRecipe, evaluate_utility, pick_device, train_local


@functools.lru_cache(maxsize=2)
def _model_skeleton(canonical: str):
    """One model object per process and scenario: building it costs a probe pass."""
    scenario = Scenario.model_validate_json(canonical)
    info = build_plan(scenario).info
    return scenario_model(scenario, info)


def client_recipe(scenario: Scenario, config: dict) -> TrainRecipe:
    """The scenario's recipe, with what the server's config overrides — unless the client pins
    its hyperparameters (the defense against config-only isolation)."""
    base = TrainRecipe.from_scenario(scenario)
    if scenario.federation.pin_hyperparameters:
        return base
    return dataclasses.replace(
        base,
        epochs=int(config.get("local-epochs", base.epochs)),
        batch_size=int(config.get("batch-size", base.batch_size)),
        lr=float(config.get("lr", base.lr)),
    )


def local_dp_delta(scenario: Scenario, n_records: int) -> float:
    return scenario.defenses.dp.delta or 1.0 / (10 * n_records)


def local_noise_multiplier(scenario: Scenario, n_records: int) -> float:
    """The given noise, or the noise that spends `target_epsilon` over every round's local steps
    (an upper bound on a client's participation)."""
    dp = scenario.defenses.dp
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    fed = scenario.federation
    total = fed.rounds * fed.local_epochs * steps_per_epoch(n_records, fed.batch_size)
    return noise_for_budget(dp.target_epsilon, local_dp_delta(scenario, n_records),
                            sample_rate(n_records, fed.batch_size), total)


def client_seed(scenario: Scenario, server_round: int, partition_id: int) -> int:
    """A seed per (run, round, client): reproducible, yet different for every local run."""
    return scenario.seed * 1_000_003 + server_round * 1_009 + partition_id


def local_training(scenario: Scenario, model, records, recipe: TrainRecipe, *, seed: int, device,
                   public=None) -> dict[str, float]:
    """One client's local training under the scenario's defenses (the evaluator replays it)."""
    dp = scenario.defenses.dp
    if dp is not None and dp.mode == "local":
        return train_local_dp(
            model, records, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
            optimizer_name=recipe.optimizer, noise_multiplier=local_noise_multiplier(scenario, len(records)),
            max_grad_norm=dp.max_grad_norm, seed=seed, device=device, momentum=recipe.momentum)
    if scenario.defenses.regularised:
        return train_regularised(model, records, recipe, scenario.defenses, seed=seed, device=device, public=public)
    return train_local(model, records, recipe, seed=seed, device=device)


class InjectedCrash(RuntimeError):
    pass


def inject_faults(scenario: Scenario, server_round: int, partition_id: int) -> None:
    faults = scenario.faults
    if faults.client_delay_s:
        time.sleep(faults.client_delay_s)
    planned = any(c.round == server_round and c.client == partition_id for c in faults.crash)
    draw = np.random.default_rng([scenario.seed, server_round, partition_id, 7]).random()
    if planned or draw < faults.client_crash_prob:
        raise InjectedCrash(f"injected crash of client {partition_id} in round {server_round}")


def optional_secaggplus_mod(msg, ctxt, call_next):
    """Flower's `secaggplus_mod` for messages of a SecAgg+ round, a pass-through otherwise, so
    one ClientApp serves plain and secure runs (the scenario decides, not the app)."""
    if msg.content.config_records.get(RECORD_KEY_CONFIGS) is not None:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


class SegmentationClient(NumPyClient):
    def __init__(self, scenario: Scenario, partition_id: int):
        self.scenario = scenario
        self.partition_id = partition_id
        plan = build_plan(scenario)
        if not 0 <= partition_id < len(plan.clients):
            raise ValueError(f"partition-id {partition_id} outside 0..{len(plan.clients) - 1}")
        self.records = plan.clients[partition_id]
        self.public = plan.public
        self.num_classes = plan.info.num_classes
        self.model = _model_skeleton(scenario.canonical())
        self.device = pick_device(scenario.runtime.device)

    def fit(self, parameters, config):
        inject_faults(self.scenario, int(config.get("server-round", 0)), self.partition_id)
        set_weights(self.model, parameters)
        received = get_weights(self.model)
        recipe = client_recipe(self.scenario, config)
        seed = client_seed(self.scenario, int(config.get("server-round", 0)), self.partition_id)
        stats = local_training(self.scenario, self.model, self.records, recipe, seed=seed, device=self.device,
                               public=self.public)
        metrics = {"partition-id": self.partition_id, **stats}
        weights = get_weights(self.model)
        if config.get("send-update"):
            # Under SecAgg+: updates are small, so they quantise finely; float64 because the
            # quantiser shifts by clipping_range in the arrays' own precision, and in float32
            # that alone costs ~1e-4 of the update (measured).
            weights = [new.astype(np.float64) - old.astype(np.float64) for new, old in zip(weights, received)]
        return weights, len(self.records), metrics

    def evaluate(self, parameters, config):
        set_weights(self.model, parameters)
        utility = evaluate_utility(self.model, self.records, self.num_classes, self.device)
        metrics = {"partition-id": self.partition_id, "dice": utility["dice"], "miou": utility["miou"]}
        return utility["loss"], len(self.records), metrics


def make_client_app(scenario: Scenario | None = None) -> ClientApp:
    """A ClientApp for `scenario`, or — under `flwr run` — for the run config's `scenario` path."""

    def client_fn(context: Context):
        current = scenario or load_scenario(str(context.run_config["scenario"]))
        torch.set_num_threads(max(1, int(current.runtime.client_cpus)))
        partition_id = int(context.node_config["partition-id"])
        return SegmentationClient(current, partition_id).to_client()

    return ClientApp(client_fn=client_fn, mods=[optional_secaggplus_mod])


app = make_client_app()
