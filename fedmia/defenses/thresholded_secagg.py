"""Thresholded secure aggregation, as an ideal functionality: a coordinate of the summed update
is released only where at least `min_clients` of the round's clients changed it.

Why SecAgg+ does not stop planted detectors: a detector moves only in the update of the client
that holds its target, and a sum still shows that it moved. Per-element thresholded aggregation
(arXiv 2508.04285) releases a coordinate only when enough clients changed it, so a coordinate
that one client alone moved stays hidden — the trap reads nothing — while the dense coordinates
every client trains pass unchanged.

This is a *simulation of the ideal functionality*, documented as such: a trusted party that sees
each client's update, counts per coordinate how many changed it (exactly: |Δ| > 0), and hands the
server only the example-weighted mean update with the withheld coordinates set to 0 (the global
model keeps its value there). The cryptographic protocol that computes this without the trusted
party is the paper's; Flower has none, and this file does not pretend to be one. The server still
learns which coordinates were released (count ≥ t or not) — the design's own leakage.

Hand-written (no library offers it). The mean is FedAvg's, example-weighted as SecAgg+ gives it,
kept in float64 like the updates SecAgg+ clients send (`fedmia.models.weighted_sum` stores float32).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fedmia.defenses.base import Defense, Params, register_defense


class ThresholdedParams(Params):
    min_clients: int = Field(2, ge=2, description="a coordinate is released only when at least this many of "
                             "the round's clients changed it (|update| > 0)")


def thresholded_mean(updates: list[list[np.ndarray]], counts: list[int], min_clients: int) -> tuple[list[np.ndarray], float]:
    """The example-weighted mean update, 0 wherever fewer than `min_clients` updates are non-zero;
    and the share of coordinates withheld."""
    share = np.asarray(counts, dtype=np.float64) / float(sum(counts))
    released, withheld, total = [], 0, 0
    for arrays in zip(*updates):
        stacked = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
        keep = (stacked != 0).sum(0) >= min_clients
        released.append(np.where(keep, np.tensordot(share, stacked, axes=1), 0.0))
        withheld += int((~keep).sum())
        total += keep.size
    return released, withheld / max(total, 1)


@register_defense("thresholded-secagg", acts_on="aggregation")
class ThresholdedSecAgg(Defense):
    Params = ThresholdedParams
    hides_client_updates = True  # the server reads the released mean only; clients send updates
    # a trap that knows t makes t - 1 clients move every detector coordinate (strategies/trap_weights.py)
    adaptive_servers = ("trap-weights",)

    def knowing_server(self, strategy: str) -> dict:
        return {"helpers": self.params.min_clients - 1} if strategy == "trap-weights" else {}

    def describe(self) -> str:
        return f"thresholded secure aggregation (ideal functionality, t = {self.params.min_clients})"

    def problems(self, scenario) -> list[tuple[str, str]]:
        out = []
        if self.params.min_clients > scenario.clients_per_round:
            out.append(("defenses.thresholded-secagg.min_clients",
                        f"expected at most the clients a round samples ({scenario.clients_per_round}), "
                        f"found {self.params.min_clients}: nothing would ever be released"))
        others = [key for key in scenario.defenses.root if key != self.name]
        for key in others:
            if key == "secagg" or (key == "dp" and getattr(scenario.defenses.root[key], "mode", None) == "central"):
                out.append(("defenses.thresholded-secagg", f"does not compose with defenses.{key}: both decide what "
                            "the server's aggregation sees (this one simulates its own secure sum)"))
        return out

    def wrap_strategy(self, strategy, scenario):
        """The strategy behind an ideal thresholded secure aggregation (it holds the strategy, as
        Flower's DP wrappers do)."""
        return ThresholdedAggregation(strategy, self.params.min_clients)


class ThresholdedAggregation:
    """A strategy wrapped by thresholded secure aggregation: its aggregation receives, from every
    client, the released mean instead of the client's own update (as under SecAgg+, where every
    FitRes carries the aggregate); every other hook and attribute is the wrapped strategy's."""

    def __init__(self, strategy, min_clients: int):
        self.strategy, self.min_clients = strategy, min_clients

    def __getattr__(self, name: str):
        if name == "strategy":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def aggregate_fit(self, server_round, results, failures):
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

        if results:
            updates = [parameters_to_ndarrays(fit_res.parameters) for _, fit_res in results]
            mean, withheld = thresholded_mean(updates, [fit_res.num_examples for _, fit_res in results],
                                              self.min_clients)
            parameters = ndarrays_to_parameters(mean)
            for _, fit_res in results:
                fit_res.parameters = parameters
                fit_res.metrics["withheld-share"] = withheld  # what the server learns anyway
        return self.strategy.aggregate_fit(server_round, results, failures)
