"""The honest-but-curious server: plain FedAvg that writes down everything it can see.

Malicious strategies subclass it and override `tailor` (what each client is sent) — the
recording stays in one place, so every strategy's transcript means the same thing.
"""

from __future__ import annotations

import json
import random
import time
from typing import Callable, ClassVar

import numpy as np

from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from pydantic import BaseModel, ConfigDict

from fedmia.models import weighted_sum
from fedmia.transcript import Reply, RoundView, Transcript
from fedmia.data.knowledge import AdversaryKnowledge, adversary_knowledge
from fedmia.defenses import active
from fedmia.plugins import failure_texts, plugin_manifest, stop_if_refused
from strategies import register_strategy


class FedAvgParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def weighted_mean(metrics: list[tuple[int, dict]]) -> dict:
    """Example-weighted mean of every numeric metric the clients report, but their identity
    and a worker's start-up stamps (fedmia/client_app.py: a mean of those means nothing)."""
    total = sum(n for n, _ in metrics) or 1
    keys = {k for _, m in metrics for k, v in m.items()
            if isinstance(v, (int, float)) and k not in ("partition-id", "first-fit-at", "worker-warmup-s")}
    return {k: sum(n * m.get(k, 0.0) for n, m in metrics) / total for k in sorted(keys)}


@register_strategy("fedavg", FedAvgParams)
class ObservingFedAvg(FedAvg):
    """The honest server, and the base class of every fedmia strategy: it records what the
    server sees (the transcript); a malicious strategy overrides `tailor` (what each client is
    sent) and, to cross-check its parameters against the scenario, `problems`."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    @classmethod
    def problems(cls, scenario, params: BaseModel) -> list[tuple[str, str]]:
        """(key, message) of each scenario setting this strategy cannot run with; none here."""
        return []

    def __init__(
        self,
        *,
        scenario,
        initial_weights,
        weight_names: list[str],
        params: BaseModel | None = None,
        on_round_end: Callable[[RoundView], None] | None = None,
        resume_from: Transcript | None = None,
    ):
        fed = scenario.federation
        super().__init__(
            fraction_fit=scenario.clients_per_round / fed.clients,
            # Utility is measured centrally on held-out data (the reported figure); federated
            # evaluation, when asked for, samples like training — never every client per round.
            fraction_evaluate=(scenario.clients_per_round / fed.clients
                               if fed.federated_evaluation == "sampled" else 0.0),
            min_fit_clients=scenario.clients_per_round,
            min_evaluate_clients=scenario.clients_per_round,
            min_available_clients=fed.clients,
            initial_parameters=ndarrays_to_parameters(initial_weights),
            fit_metrics_aggregation_fn=weighted_mean,
            evaluate_metrics_aggregation_fn=weighted_mean,
            accept_failures=True,
        )
        self.scenario = scenario
        # the aggregation-stage defense says whether the server sees replies or only their sum
        self.secure = any(defense.hides_client_updates for defense in active(scenario))
        self.params = params
        self.transcript = Transcript(weight_names, [w.copy() for w in initial_weights],
                                     secure_aggregation=self.secure)
        self.round_offset = 0
        if resume_from is not None:  # continue a checkpointed run: its rounds, its latest model
            self.transcript = resume_from
            self.round_offset = resume_from.rounds[-1].round if resume_from.rounds else 0
            self.initial_parameters = ndarrays_to_parameters(resume_from.final)
        self._plugins = json.dumps(plugin_manifest(scenario), sort_keys=True)
        self.on_round_end = on_round_end
        self.wrapped = False  # a central-DP wrapper ends the round itself, once it has noised the model
        self._ended_rounds: set[int] = set()

    # ---- what the server sends -----------------------------------------------------------
    def fit_config(self, server_round: int) -> dict:
        """The training config an honest server sends (clients may pin their own instead)."""
        fed = self.scenario.federation
        config = {"server-round": server_round, "local-epochs": fed.local_epochs,
                  "lr": fed.lr, "batch-size": fed.batch_size,
                  # every client checks it runs the server's plug-ins, at the server's versions
                  "plugins": self._plugins}
        if self.secure:
            config["send-update"] = True  # see SecAggSpec: updates quantise, raw BN stats clip
        return config

    def tailor(self, server_round: int, weights, instructions: list[tuple[ClientProxy, dict]]):
        """Per-client (weights, config). The honest server sends everyone the same model."""
        return [(proxy, weights, config) for proxy, config in instructions]

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        # Flower counts from 1 in every (resumed) run; the offset gives the run's own round.
        server_round = server_round + self.round_offset
        # Seeded per round, not per process: client sampling and Flower's DP noise then come out
        # the same in a resumed run as in an uninterrupted one.
        random.seed(self.scenario.seed * 100_003 + server_round)
        np.random.seed([self.scenario.seed, server_round])
        sampled = super().configure_fit(server_round - self.round_offset, parameters, client_manager)
        view = RoundView(server_round)
        self._round_started = time.perf_counter()
        self.transcript.rounds.append(view)  # before `tailor`, which may write notes on it
        weights = parameters_to_ndarrays(parameters)
        plan = self.tailor(server_round, weights, [(proxy, self.fit_config(server_round)) for proxy, _ in sampled])
        instructions, serialised = [], {}
        for proxy, client_weights, config in plan:
            view.sent[proxy.node_id] = client_weights
            view.config[proxy.node_id] = dict(config)
            # one serialisation per distinct model (an honest server sends one to all)
            if id(client_weights) not in serialised:
                serialised[id(client_weights)] = ndarrays_to_parameters(client_weights)
            instructions.append((proxy, FitIns(serialised[id(client_weights)], config)))
        return instructions

    @property
    def knowledge(self) -> AdversaryKnowledge:
        """What the server knows of the federation's data: population, targets, dataset info —
        no ledger, no client records (fedmia/data/knowledge.py)."""
        if getattr(self, "_knowledge", None) is None:
            self._knowledge = adversary_knowledge(self.scenario)
        return self._knowledge

    @property
    def current_view(self) -> RoundView:
        return self.transcript.rounds[-1]

    # ---- what the server receives --------------------------------------------------------
    def aggregate_fit(self, server_round: int, results, failures):
        server_round = server_round + self.round_offset
        # Replies arrive in completion order; summing in a fixed order makes runs reproducible.
        results = sorted(results, key=lambda r: (r[1].metrics.get("partition-id", -1), r[0].node_id))
        view = self._view(server_round)
        view.failures = len(failures)
        if failures:
            # the end of a Ray error says what the client raised; its start is boilerplate
            messages = failure_texts(failures)
            view.failure_messages = [m[-400:] for m in messages]
            stop_if_refused(server_round, messages)
        if not results:
            self.end_round(view)
            return None, {}
        counts = np.array([fit_res.num_examples for _, fit_res in results], dtype=np.float64)
        # Under central DP every clipped update counts alike: the wrapper's noise (σC/m) is scaled
        # for a uniform mean; weighting by num_examples would give a large client more weight
        # than the noise covers (see fedmia/evaluation/privacy.py).
        share = np.full(len(counts), 1 / len(counts)) if self.wrapped else counts / counts.sum()
        # What this round's senders started from, weighted as FedAvg weighs their replies.
        started_from = weighted_sum([view.sent[proxy.node_id] for proxy, _ in results], share)
        for proxy, fit_res in results:
            # Under SecAgg+ every FitRes carries the same thing: the secure aggregate.
            weights = None if self.secure else parameters_to_ndarrays(fit_res.parameters)
            view.replies.append(Reply(proxy.node_id, fit_res.num_examples, dict(fit_res.metrics), weights))
        if self.secure:
            view.observed_update = parameters_to_ndarrays(results[0][1].parameters)  # mean update
        else:
            # the replies just deserialised, not a second copy of each (4 x 98 MB at kvasir size)
            mean_reply = weighted_sum([reply.weights for reply in view.replies], share)
            view.observed_update = [m - s for m, s in zip(mean_reply, started_from)]
        new_global = self.next_global(server_round, started_from, view.observed_update)
        view.aggregate = new_global
        view.round_s = round(time.perf_counter() - self._round_started, 4)
        metrics = self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results])
        if not self.wrapped:
            self.end_round(view)
        return ndarrays_to_parameters(new_global), metrics

    def end_round(self, view: RoundView, evaluated: bool = False) -> None:
        """The round is final (checkpoint, progress): once per round, failed ones too. With
        federated evaluation a round with a new model ends after its evaluation (`evaluated`)."""
        if view.round in self._ended_rounds:
            return
        if self.scenario.federation.federated_evaluation != "off" and view.aggregate is not None and not evaluated:
            return  # aggregate_evaluate ends it, with the clients' figures in its view
        self._ended_rounds.add(view.round)
        if self.on_round_end is not None:
            self.on_round_end(view)

    def aggregate_evaluate(self, server_round: int, results, failures):
        """Federated evaluation (`federation.federated_evaluation`): the clients' example-weighted
        loss, Dice and mIoU of the round's global model on their own records, kept in the round's
        view (and so in the transcript and metrics.json's utility rounds)."""
        loss, metrics = super().aggregate_evaluate(server_round, results, failures)
        view = self._view(server_round + self.round_offset)
        view.federated_evaluation = {"loss": loss, **{k: metrics[k] for k in ("dice", "miou") if k in metrics},
                                     "clients": len(results), "failures": len(failures)}
        self.end_round(view, evaluated=True)
        return loss, metrics

    def next_global(self, server_round: int, started_from, mean_update):
        """FedAvg: where the clients started plus their example-weighted mean update (with one
        model sent to all, exactly the mean of their replies)."""
        return [(s + u).astype(s.dtype) for s, u in zip(started_from, mean_update)]

    def _view(self, server_round: int) -> RoundView:
        view = self.transcript.rounds[-1]
        assert view.round == server_round, "rounds are configured and aggregated in order"
        return view
