"""The Flower ClientApp: local training and evaluation of an smp model on one client's records.

We use Flower's legacy NumPyClient API on purpose: in flwr 1.41 SecAgg+ (`secaggplus_mod`)
runs only on that path, and one code path for plain and secure runs keeps them comparable.
Each client rebuilds the (deterministic) federation plan from the scenario and keeps only its
own partition — in a real deployment it would read its own data instead.
"""

from __future__ import annotations

import functools

import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from fedmia.data.plan import build_plan
from fedmia.models import build_model, get_weights, set_weights
from fedmia.scenario import Scenario, load_scenario
from fedmia.training import TrainRecipe, evaluate_utility, pick_device, train_local


@functools.lru_cache(maxsize=2)
def _model_skeleton(canonical: str):
    """One model object per process and scenario: building it costs a probe pass."""
    scenario = Scenario.model_validate_json(canonical)
    info = build_plan(scenario).info
    return build_model(scenario.model, info.in_channels, info.num_classes)


class SegmentationClient(NumPyClient):
    def __init__(self, scenario: Scenario, partition_id: int):
        self.scenario = scenario
        self.partition_id = partition_id
        plan = build_plan(scenario)
        if not 0 <= partition_id < len(plan.clients):
            raise ValueError(f"partition-id {partition_id} outside 0..{len(plan.clients) - 1}")
        self.records = plan.clients[partition_id]
        self.num_classes = plan.info.num_classes
        self.model = _model_skeleton(scenario.canonical())
        self.device = pick_device(scenario.runtime.device)

    def recipe(self, config: dict) -> TrainRecipe:
        """The scenario's recipe, with whatever the server's config overrides."""
        base = TrainRecipe.from_federation(self.scenario.federation)
        return TrainRecipe(
            epochs=int(config.get("local-epochs", base.epochs)),
            batch_size=int(config.get("batch-size", base.batch_size)),
            lr=float(config.get("lr", base.lr)),
            optimizer=base.optimizer, momentum=base.momentum, weight_decay=base.weight_decay,
        )

    def fit(self, parameters, config):
        set_weights(self.model, parameters)
        server_round = int(config.get("server-round", 0))
        # A seed per (run, round, client): reproducible, yet different for every local run.
        seed = self.scenario.seed * 1_000_003 + server_round * 1_009 + self.partition_id
        stats = train_local(self.model, self.records, self.recipe(config), seed=seed, device=self.device)
        metrics = {"partition-id": self.partition_id, **stats}
        return get_weights(self.model), len(self.records), metrics

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

    return ClientApp(client_fn=client_fn)


app = make_client_app()
