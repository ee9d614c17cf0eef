"""The honest-but-curious server: plain FedAvg that writes down everything it can see.

Malicious strategies subclass it and override `tailor` (what each client is sent) — the
recording stays in one place, so every strategy's transcript means the same thing.
"""

from __future__ import annotations

from typing import Callable

from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from pydantic import BaseModel, ConfigDict

from fedmia.transcript import Reply, RoundView, Transcript
from strategies import register_strategy


class FedAvgParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def weighted_mean(metrics: list[tuple[int, dict]]) -> dict:
    """Example-weighted mean of every numeric metric the clients report."""
    total = sum(n for n, _ in metrics) or 1
    keys = {k for _, m in metrics for k, v in m.items() if isinstance(v, (int, float)) and k != "partition-id"}
    return {k: sum(n * m.get(k, 0.0) for n, m in metrics) / total for k in sorted(keys)}


@register_strategy("fedavg", FedAvgParams)
class ObservingFedAvg(FedAvg):
    def __init__(
        self,
        *,
        scenario,
        initial_weights,
        weight_names: list[str],
        params: BaseModel | None = None,
        on_round_end: Callable[[RoundView], None] | None = None,
    ):
        fed = scenario.federation
        super().__init__(
            fraction_fit=scenario.clients_per_round / fed.clients,
            fraction_evaluate=1.0,
            min_fit_clients=scenario.clients_per_round,
            min_evaluate_clients=scenario.clients_per_round,
            min_available_clients=fed.clients,
            initial_parameters=ndarrays_to_parameters(initial_weights),
            fit_metrics_aggregation_fn=weighted_mean,
            evaluate_metrics_aggregation_fn=weighted_mean,
            accept_failures=True,
        )
        self.scenario = scenario
        self.params = params
        self.transcript = Transcript(weight_names, [w.copy() for w in initial_weights])
        self.on_round_end = on_round_end

    # ---- what the server sends -----------------------------------------------------------
    def fit_config(self, server_round: int) -> dict:
        """The training config an honest server sends (clients may pin their own instead)."""
        fed = self.scenario.federation
        return {"server-round": server_round, "local-epochs": fed.local_epochs,
                "lr": fed.lr, "batch-size": fed.batch_size}

    def tailor(self, server_round: int, weights, instructions: list[tuple[ClientProxy, dict]]):
        """Per-client (weights, config). The honest server sends everyone the same model."""
        return [(proxy, weights, config) for proxy, config in instructions]

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        sampled = super().configure_fit(server_round, parameters, client_manager)
        view = RoundView(server_round)
        self.transcript.rounds.append(view)  # before `tailor`, which may write notes on it
        weights = parameters_to_ndarrays(parameters)
        plan = self.tailor(server_round, weights, [(proxy, self.fit_config(server_round)) for proxy, _ in sampled])
        instructions = []
        for proxy, client_weights, config in plan:
            view.sent[proxy.node_id] = client_weights
            view.config[proxy.node_id] = dict(config)
            instructions.append((proxy, FitIns(ndarrays_to_parameters(client_weights), config)))
        return instructions

    @property
    def current_view(self) -> RoundView:
        return self.transcript.rounds[-1]

    # ---- what the server receives --------------------------------------------------------
    def aggregate_fit(self, server_round: int, results, failures):
        # Replies arrive in completion order; summing in a fixed order makes runs reproducible.
        results = sorted(results, key=lambda r: (r[1].metrics.get("partition-id", -1), r[0].node_id))
        view = self._view(server_round)
        for proxy, fit_res in results:
            view.replies.append(Reply(proxy.node_id, fit_res.num_examples, dict(fit_res.metrics),
                                      parameters_to_ndarrays(fit_res.parameters)))
        view.failures = len(failures)
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            view.aggregate = parameters_to_ndarrays(parameters)
        if self.on_round_end is not None:
            self.on_round_end(view)
        return parameters, metrics

    def _view(self, server_round: int) -> RoundView:
        view = self.transcript.rounds[-1]
        assert view.round == server_round, "rounds are configured and aggregated in order"
        return view
