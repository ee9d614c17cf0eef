"""fedmia's server strategies driving a Message-API ClientApp — the app `flwr new` generates,
whose `@app.train()` reads `msg.content["arrays"]` and replies with `"arrays"` and `"metrics"`.

A strategy's adversarial logic is written once, over arrays (`ObservingFedAvg.tailor`: what each
client is sent; `aggregate_fit`: what the server records and aggregates). Two thin adapters carry
it to the clients: Flower's `DefaultWorkflow` for the legacy API (`fedmia/server_app.py`: the one
SecAgg+ runs on in flwr 1.41) and `run_message_rounds` here, which sends each sampled node one
TRAIN message — `"arrays"` (the model tailored for that node, keyed by the network's own
state-dict names, so `to_torch_state_dict()` loads it) and `"config"` — and hands the replies to
the same `aggregate_fit` as legacy `FitRes`. Flower's own conversion (`flwr.server.compat`)
would send the legacy `fitins.*` records, which a Message-API app does not read.

Written by hand, not taken from `flwr.serverapp.strategy.FedAvg`: a Flower strategy sends one
`ArrayRecord` to every sampled node, while a malicious server's point is a different one each.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"  # the Message API's record names
EXAMPLES = "num-examples"  # the reply's metric FedAvg weighs by (Flower's templates send it)


class BadReply(ValueError):
    """A reply the Message API's contract does not allow: no `"arrays"`, or arrays that do not
    fit the network. The round records it as a failure naming the node and the cause."""


class NodeProxy(ClientProxy):
    """A SuperNode as the legacy strategy samples it: only its node id is used."""

    def get_properties(self, ins, timeout, group_id):  # pragma: no cover  (never called)
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError


def to_arrays(weights: list[np.ndarray], names: list[str]) -> ArrayRecord:
    """The model as a Message-API app reads it: one Array per state-dict entry, in its order."""
    return ArrayRecord(OrderedDict((name, Array(np.ascontiguousarray(w))) for name, w in zip(names, weights)))


def from_reply(reply: Message, names: list[str], shapes: list[tuple]) -> tuple[list[np.ndarray], dict, int]:
    """(weights in the network's order, the reply's metrics, its example count); BadReply when the
    reply breaks the contract."""
    node = reply.metadata.src_node_id
    if ARRAYS not in reply.content.array_records:
        raise BadReply(f"node {node}: the reply has no {ARRAYS!r} record (it holds "
                       f"{sorted(reply.content.keys()) or 'nothing'}); a Message-API train reply carries the model")
    record = reply.content.array_records[ARRAYS]
    missing = [n for n in names if n not in record]
    if missing:
        raise BadReply(f"node {node}: the reply's arrays do not fit the network: {len(missing)} of its "
                       f"{len(names)} entries are missing (first: {missing[0]!r})")
    weights = [record[n].numpy() for n in names]
    wrong = next(((n, w.shape, s) for n, w, s in zip(names, weights, shapes) if w.size != int(np.prod(s))), None)
    if wrong:
        raise BadReply(f"node {node}: the reply's arrays do not fit the network: {wrong[0]!r} has shape "
                       f"{wrong[1]}, expected {wrong[2]}")
    # a 0-d buffer (BatchNorm's num_batches_tracked) comes back 0-d; the transcript keeps it 1-d
    weights = [w.reshape(s) for w, s in zip(weights, shapes)]
    metrics = dict(reply.content.metric_records[METRICS]) if METRICS in reply.content.metric_records else {}
    examples = int(metrics.get(EXAMPLES, 1))
    return weights, metrics, examples


def app_error(reason: str) -> str:
    """What the app raised, from Flower's error reply (a Ray traceback whose end says it)."""
    text = str(reason).strip()
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and set(line.strip()) != {"^"}]
    last = lines[-1] if lines else "no reason given"
    return last[:-2] if last.endswith("'>") else last  # the close of the repr Flower wraps it in


def run_message_rounds(grid, strategy, num_rounds: int, *, timeout: float | None = None) -> None:
    """`num_rounds` rounds of `strategy` (an `ObservingFedAvg`) against Message-API clients. A
    node that fails, raises inside `train`, or replies out of contract is a failure of its round
    (the strategy records it and aggregates the others, as on the legacy path)."""
    manager = SimpleClientManager()
    proxies = {node: NodeProxy(str(node)) for node in grid.get_node_ids()}
    for node, proxy in proxies.items():
        proxy.node_id = node
        manager.register(proxy)
    names = list(strategy.transcript.weight_names)
    parameters = strategy.initialize_parameters(manager)
    shapes = [w.shape for w in parameters_to_ndarrays(parameters)]
    for server_round in range(1, num_rounds + 1):
        instructions = strategy.configure_fit(server_round, parameters, manager)
        messages, sent = [], {}
        for proxy, fit_ins in instructions:
            content = RecordDict({ARRAYS: to_arrays(parameters_to_ndarrays(fit_ins.parameters), names),
                                  CONFIG: ConfigRecord(dict(fit_ins.config))})
            messages.append(Message(content=content, dst_node_id=proxy.node_id, message_type=MessageType.TRAIN))
            sent[proxy.node_id] = proxy
        results, failures = [], []
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                failures.append(RuntimeError(f"node {node}: the app failed: {app_error(reply.error.reason)}"))
                continue
            try:
                weights, metrics, examples = from_reply(reply, names, shapes)
            except BadReply as error:
                failures.append(error)
                continue
            results.append((sent[node], FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), examples, metrics)))
        aggregated, _ = strategy.aggregate_fit(server_round, results, failures)
        if aggregated is not None:
            parameters = aggregated
