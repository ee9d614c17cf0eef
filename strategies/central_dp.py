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
        view = self.strategy.current_view
        if parameters is not None:
            view.aggregate = parameters_to_ndarrays(parameters)
            if hasattr(self, "clipping_norm"):  # adaptive clipping's state, for a resumed run
                view.notes["clipping_norm"] = float(self.clipping_norm)
        elif failures and not view.failures:  # Flower's wrapper refuses a round with any failure
            view.failures = len(failures)
            view.notes["failures"] = [str(f if isinstance(f, BaseException) else f[1].status.message)[-400:]
                                      for f in failures]
        self.strategy.end_round(view)
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
    strategy.wrapped = True
    if dp.clipping == "adaptive":
        adapted = [v.notes["clipping_norm"] for v in strategy.transcript.rounds if "clipping_norm" in v.notes]
        return AdaptiveClippingDP(strategy, noise_multiplier=dp.noise_multiplier,
                                  num_sampled_clients=scenario.clients_per_round,
                                  initial_clipping_norm=adapted[-1] if adapted else dp.clipping_norm)
    return FixedClippingDP(strategy, noise_multiplier=dp.noise_multiplier, clipping_norm=dp.clipping_norm,
                           num_sampled_clients=scenario.clients_per_round)
