"""The Flower ClientApp: local training and evaluation of an smp model on one client's records.

We use Flower's legacy NumPyClient API on purpose: in flwr 1.41 SecAgg+ (`secaggplus_mod`)
runs only on that path, and one code path for plain and secure runs keeps them comparable.
In simulation the runner hands the apps the plan's `ClientLayout`, so a Ray worker loads only
the records of the clients it plays (memory set by the sampled clients, not the federation);
without one (`flwr run` of a scenario) a client rebuilds the deterministic plan and keeps its part.
In a multi-site audit (data.sites) a SuperNode reads only its own folder, named in its node config.
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedmia.data.plan import ClientLayout, build_plan
from fedmia.data.records import Records
from fedmia.data.sites import SiteLayout
from fedmia.io import process_age
from fedmia.local import client_recipe, client_seed, local_training
from fedmia.models import get_weights, scenario_model, set_weights
from fedmia.plugins import PluginMissing, check_plugin_manifest, where
from fedmia.scenario import Scenario
from fedmia.validation import scenario_from_canonical, scenario_from_run_config
from fedmia.training import evaluate_utility, pick_device


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


def partition_of(scenario: Scenario, node_config) -> tuple[int, str | None]:
    """(partition-id, own data folder) from a SuperNode's node config. A multi-site SuperNode
    names its site (`site='hospital-a'`, its index in data.sites) and its folder (`data-path`);
    a simulated one gets Flower's `partition-id`."""
    data_path = node_config.get("data-path")
    if "site" in node_config:
        names = [site.name for site in scenario.data.sites]
        if str(node_config["site"]) not in names:
            raise ValueError(f"--node-config site={node_config['site']!r} is not one of the scenario's "
                             f"data.sites {names}")
        return names.index(str(node_config["site"])), None if data_path is None else str(data_path)
    if data_path is not None and not scenario.data.multi_site:
        raise ValueError("--node-config data-path is for a multi-site scenario (data.sites)")
    return int(node_config["partition-id"]), None if data_path is None else str(data_path)


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


def optional_secaggplus_mod(msg, ctxt, call_next):
    """Flower's `secaggplus_mod` for messages of a SecAgg+ round, a pass-through otherwise, so
    one ClientApp serves plain and secure runs (the scenario decides, not the app)."""
    if msg.content.config_records.get(RECORD_KEY_CONFIGS) is not None:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


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
        return _client_data(self.canonical, self.partition_id, self.data_path)

    @property
    def records(self) -> Records:
        return self._data[0]

    @property
    def public(self) -> Records | None:
        return self._data[1]

    @functools.cached_property
    def model(self):
        return _model_skeleton(self.canonical)

    @property
    def num_classes(self) -> int:
        return _layout(self.canonical).info.num_classes

    def fit(self, parameters, config):
        if "plugins" in config:  # the server's plug-ins, at its versions, or this client refuses
            check_plugin_manifest(json.loads(str(config["plugins"])), f"{where()}, {self.name}")
        warmup = first_fit_warmup()  # before training: the warm-up is what precedes the work
        inject_faults(self.scenario, int(config.get("server-round", 0)), self.partition_id)
        set_weights(self.model, parameters)
        received = get_weights(self.model)
        recipe = client_recipe(self.scenario, config)
        seed = client_seed(self.scenario, int(config.get("server-round", 0)), self.partition_id)
        stats = local_training(self.scenario, self.model, self.records, recipe, seed=seed, device=self.device,
                               public=self.public, partition=self.partition_id)
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


@functools.lru_cache(maxsize=2)
def _run_scenario(shipped: str, path: str) -> Scenario:
    """The run's scenario, rebuilt once per process, not once per message: from its canonical
    text (simulation), its base64 (`fedmia deploy`) or a file path (`flwr run` of a file)."""
    if shipped.startswith("{"):
        return scenario_from_canonical(shipped)
    return scenario_from_run_config({"scenario-b64": shipped, "scenario": path}, client=True)


def make_client_fn(scenario: Scenario | None = None, layout: ClientLayout | None = None):
    """Flower's `client_fn` for `scenario` (or the run config's), as Ray ships it: by value. The
    scenario travels as its canonical text and each worker resolves its plug-ins itself, so a
    worker that lacks one refuses, naming it (a pickled scenario would fail to unpickle instead)."""
    canonical = scenario.canonical() if scenario is not None else None

    def client_fn(context: Context):
        try:
            current = (_run_scenario(canonical, "") if canonical is not None else
                       _run_scenario(str(context.run_config.get("scenario-b64", "")),
                                     str(context.run_config.get("scenario", ""))))
        except PluginMissing as error:  # name the site too: the server stops the run with this line
            site = context.node_config.get("site", context.node_config.get("partition-id", "?"))
            raise PluginMissing(f"site/partition {site}: {error}") from None
        if layout is not None:
            remember_layout(current.canonical(), layout)
        torch.set_num_threads(max(1, int(current.runtime.client_cpus)))
        partition_id, data_path = partition_of(current, context.node_config)
        return SegmentationClient(current, partition_id, data_path).to_client()

    return client_fn


def make_client_app(scenario: Scenario | None = None, layout: ClientLayout | None = None) -> ClientApp:
    """A ClientApp for `scenario`, or — under `flwr run` — for the run config's `scenario` path.
    `layout`: where each client's records sit (the runner passes the plan's)."""
    return ClientApp(client_fn=make_client_fn(scenario, layout), mods=[optional_secaggplus_mod])


app = make_client_app()
