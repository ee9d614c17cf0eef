"""The Flower ClientApp: local training and evaluation of an smp model on one client's records.

We use Flower's legacy NumPyClient API on purpose: in flwr 1.41 SecAgg+ (`secaggplus_mod`)
runs only on that path, and one code path for plain and secure runs keeps them comparable.
In simulation the runner hands the apps the plan's `ClientLayout`, so a Ray worker loads only
the records of the clients it plays (memory set by the sampled clients, not the federation);
without one (`flwr run` of a scenario) a client rebuilds the deterministic plan and keeps its part.
In a multi-site audit (data.sites) a SuperNode reads only its own folder, named in its node config.

This module is light (no torch): the client itself, `fedmia.client_train`, is imported only by a
message that trains or evaluates — on the deployment engine each message is a process of its
own, and SecAgg+'s key, share and unmasking exchanges never reach the client.
"""

from __future__ import annotations

import atexit
import functools
import zlib

from fedmia.timeline import mark, process_started_at

mark("imports-begin", started=process_started_at())  # a deployment's per-message timeline (bench/)
atexit.register(mark, "process-exit")

import numpy as np  # noqa: E402
from flwr.client import ClientApp  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.common import Context  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS  # noqa: E402

from fedmia.plugins import PluginMissing  # noqa: E402
from fedmia.scenario import Scenario  # noqa: E402
from fedmia.validation import scenario_from_canonical, scenario_from_run_config  # noqa: E402


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


@functools.lru_cache(maxsize=2)
def _run_scenario(shipped: str, path: str) -> Scenario:
    """The run's scenario, rebuilt once per process, not once per message: from its canonical
    text (simulation), its base64 (`fedmia deploy`) or a file path (`flwr run` of a file)."""
    if shipped.startswith("{"):
        return scenario_from_canonical(shipped)
    return scenario_from_run_config({"scenario-b64": shipped, "scenario": path}, client=True)


def _resolve(canonical: str | None, context: Context) -> tuple[Scenario, int, str | None]:
    """(the run's scenario, this node's partition, its own data folder): from the scenario the
    simulation shipped (`canonical`) or the run config (`flwr run`, `fedmia deploy`)."""
    try:
        current = (_run_scenario(canonical, "") if canonical is not None else
                   _run_scenario(str(context.run_config.get("scenario-b64", "")),
                                 str(context.run_config.get("scenario", ""))))
    except PluginMissing as error:  # name the site too: the server stops the run with this line
        site = context.node_config.get("site", context.node_config.get("partition-id", "?"))
        raise PluginMissing(f"site/partition {site}: {error}") from None
    return (current, *partition_of(current, context.node_config))


def make_client_fn(scenario: Scenario | None = None, layout=None):
    """Flower's `client_fn` for `scenario` (or the run config's), as Ray ships it: by value. The
    scenario travels as its canonical text and each worker resolves its plug-ins itself, so a
    worker that lacks one refuses, naming it (a pickled scenario would fail to unpickle instead)."""
    canonical = scenario.canonical() if scenario is not None else None

    def client_fn(context: Context):
        current, partition_id, data_path = _resolve(canonical, context)
        from fedmia.client_train import client_for  # torch, smp, data: only a message that trains or evaluates

        return client_for(current, partition_id, data_path, layout)

    return client_fn


def make_secaggplus_mod(scenario: Scenario | None = None):
    """Flower's `secaggplus_mod` for messages of a SecAgg+ round, a pass-through otherwise, so
    one ClientApp serves plain and secure runs (the scenario decides, not the app).

    Before each SecAgg+ stage, NumPy's global generator is seeded from (scenario seed, round,
    partition): Flower's quantiser rounds stochastically with it (`_stochastic_round`,
    unseeded), so a SecAgg+ run gave other figures at every run and between the simulation and
    the deployment engine (multi-site, held-out Dice after round 5: 0.628 simulated, 0.871 and
    0.828 deployed). The masks' own randomness is Flower's `secrets`, untouched."""
    canonical = scenario.canonical() if scenario is not None else None

    def mod(msg, ctxt, call_next):
        if msg.content.config_records.get(RECORD_KEY_CONFIGS) is None:
            return call_next(msg, ctxt)
        current, partition_id, _ = _resolve(canonical, ctxt)
        np.random.seed(zlib.crc32(f"{current.seed}/{msg.metadata.group_id}/{partition_id}".encode()))
        return secaggplus_mod(msg, ctxt, call_next)

    return mod


def make_client_app(scenario: Scenario | None = None, layout=None) -> ClientApp:
    """A ClientApp for `scenario`, or — under `flwr run` — for the run config's `scenario` path.
    `layout`: where each client's records sit (the runner passes the plan's)."""
    return ClientApp(client_fn=make_client_fn(scenario, layout), mods=[make_secaggplus_mod(scenario)])


app = make_client_app()
