"""Central (client-level) DP: Flower's server-side DP wrappers around any of our strategies.

The wrapper clips each client's update to `clipping_norm` (fixed, or adapted to a target
quantile) and adds Gaussian noise to the aggregate. The subclasses below change one thing:
the noised model — the one actually released — is what the transcript records as the round's
aggregate (the inner strategy only saw the pre-noise sum).
"""

from __future__ import annotations

from flwr.common import parameters_to_ndarrays
from flwr.server.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)


class _RecordsReleasedModel:
    def aggregate_fit(self, server_round, results, failures):
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            self.strategy.current_view.aggregate = parameters_to_ndarrays(parameters)
        return parameters, metrics

    @property
    def transcript(self):
        return self.strategy.transcript


class FixedClippingDP(_RecordsReleasedModel, DifferentialPrivacyServerSideFixedClipping):
    pass


class AdaptiveClippingDP(_RecordsReleasedModel, DifferentialPrivacyServerSideAdaptiveClipping):
    pass


def with_central_dp(strategy, scenario):
    dp = scenario.defenses.dp
    if dp is None or dp.mode != "central":
        return strategy
    if dp.clipping == "adaptive":
        return AdaptiveClippingDP(strategy, noise_multiplier=dp.noise_multiplier,
                                  num_sampled_clients=scenario.clients_per_round,
                                  initial_clipping_norm=dp.clipping_norm)
    return FixedClippingDP(strategy, noise_multiplier=dp.noise_multiplier, clipping_norm=dp.clipping_norm,
                           num_sampled_clients=scenario.clients_per_round)
