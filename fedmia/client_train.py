"""The training side of fedmia's ClientApp: one client's records, the model, local training and
evaluation (`SegmentationClient`, a legacy NumPyClient: SecAgg+'s `secaggplus_mod` runs only on
that path in flwr 1.41).

Apart from `fedmia.client_app` on purpose: on the deployment engine every message is a fresh
`flwr-clientapp` process, and three of SecAgg+'s four exchanges a round (keys, shares,
unmasking) are answered by `secaggplus_mod` alone. Those processes import only the light app
module; this one — torch, smp, the data — is imported by the stage that trains or evaluates.
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
import torch
from flwr.client import NumPyClient

from fedmia.data.plan import ClientLayout, build_plan
from fedmia.data.records import Records
from fedmia.data.sites import SiteLayout
from fedmia.io import process_age
from fedmia.local import client_recipe, client_seed, local_training
from fedmia.models import get_weights, scenario_model, set_weights
from fedmia.plugins import check_plugin_manifest, where
from fedmia.scenario import Scenario
from fedmia.timeline import mark
from fedmia.training import evaluate_utility, pick_device
from fedmia.validation import scenario_from_canonical

mark("imports-done")

_LAYOUTS: dict[str, ClientLayout] = {}  # scenario (canonical) → its layout, in this process


def remember_layout(canonical: str, layout: ClientLayout) -> None:
    """Keep the layout the runner handed over. A module-level function on purpose: Ray ships
    `client_fn` by value (cloudpickle), module globals it names included, so a `_LAYOUTS[...] =`
    written inside it would fill a copy and every worker would rebuild the whole plan."""
    _LAYOUTS[canonical] = layout


def _layout(canonical: str) -> ClientLayout | SiteLayout:
    if canonical not in _LAYOUTS:  # no layout handed over: rebuild the plan (once)
        scenario = scenario_from_canonical(canonical)
        # a site never builds the server's plan: it has no other party's folder
        _LAYOUTS[canonical] = (SiteLayout.from_data(scenario.data) if scenario.data.multi_site
                               else build_plan(scenario).layout)
    return _LAYOUTS[canonical]


@functools.lru_cache(maxsize=2)
def _model_skeleton(canonical: str):
    """One model object per process and scenario: building it costs a probe pass."""
    return scenario_model(scenario_from_canonical(canonical), _layout(canonical).info)


@functools.lru_cache(maxsize=8)
def _client_data(canonical: str, partition_id: int, data_path: str | None = None) -> tuple[Records, Records | None]:
    """A client's own records (and the public ones), kept for the few clients this worker
    played last: a sampled client is loaded once per visit, not once per message. `data_path`:
    a multi-site SuperNode's own folder."""
    layout = _layout(canonical)
    if not 0 <= partition_id < layout.clients:
        raise ValueError(f"partition-id {partition_id} outside 0..{layout.clients - 1}")
    if isinstance(layout, SiteLayout):
        return layout.load_client(partition_id, data_path)
    return layout.load_client(partition_id)


_WARM = set()  # pids of this process's first fit (a Ray worker plays many clients)


def first_fit_warmup() -> dict:
    """On a worker's first fit, before it trains: seconds from its process start to now (Ray
    worker boot, imports, data and model construction) as the `worker-warmup-s` metric, and the
    moment itself (`first-fit-at`, epoch seconds: the simulation runner, on the same machine,
    reports the start-up up to it); later fits report nothing."""
    if os.getpid() in _WARM:
        return {}
    _WARM.add(os.getpid())
    age = process_age()
    stamps = {"first-fit-at": time.time(), **({} if age is None else {"worker-warmup-s": round(age, 3)})}
    import ray  # which node of a Ray cluster played this worker (runtime.ray_address): where clients ran

    if ray.is_initialized():
        stamps["ray-node"] = ray.get_runtime_context().get_node_id()
    return stamps


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


class SegmentationClient(NumPyClient):
    def __init__(self, scenario: Scenario, partition_id: int, data_path: str | None = None):
        self.scenario = scenario
        self.partition_id = partition_id
        self.name = (f"site {scenario.data.sites[partition_id].name}" if scenario.data.multi_site
                     else f"client {partition_id}")
        self.canonical, self.data_path = scenario.canonical(), data_path
        self.device = pick_device(scenario.runtime.device)

    # Built when a stage first needs them: on the deployment engine every message is a fresh
    # process, and three of SecAgg+'s four exchanges a round (keys, shares, unmasking) never
    # train or evaluate, so they no longer decode the site's folder or build the model.
    @functools.cached_property
    def _data(self) -> tuple[Records, Records | None]:
        data = _client_data(self.canonical, self.partition_id, self.data_path)
        mark("data-loaded", site=self.name)
        return data

    @property
    def records(self) -> Records:
        return self._data[0]

    @property
    def public(self) -> Records | None:
        return self._data[1]

    @functools.cached_property
    def model(self):
        model = _model_skeleton(self.canonical)
        mark("model-built", site=self.name)
        return model

    @property
    def num_classes(self) -> int:
        return _layout(self.canonical).info.num_classes

    def fit(self, parameters, config):
        if "plugins" in config:  # the server's plug-ins, at its versions, or this client refuses
            check_plugin_manifest(json.loads(str(config["plugins"])), f"{where()}, {self.name}")
        mark("fit-begin", site=self.name, round=int(config.get("server-round", 0)))
        warmup = first_fit_warmup()  # before training: the warm-up is what precedes the work
        inject_faults(self.scenario, int(config.get("server-round", 0)), self.partition_id)
        set_weights(self.model, parameters)
        received = get_weights(self.model)
        recipe = client_recipe(self.scenario, config)
        seed = client_seed(self.scenario, int(config.get("server-round", 0)), self.partition_id)
        records, public, model = self.records, self.public, self.model  # built or loaded on first use
        mark("train-begin", site=self.name)
        stats = local_training(self.scenario, model, records, recipe, seed=seed, device=self.device,
                               public=public, partition=self.partition_id)
        mark("train-done", site=self.name)
        metrics = {"partition-id": self.partition_id, **stats, **warmup}
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


def client_for(scenario: Scenario, partition_id: int, data_path: str | None, layout: ClientLayout | None):
    """The Flower client of one message: the runner's layout remembered, torch's threads set."""
    if layout is not None:
        remember_layout(scenario.canonical(), layout)
    torch.set_num_threads(max(1, int(scenario.runtime.client_cpus)))
    return SegmentationClient(scenario, partition_id, data_path).to_client()
