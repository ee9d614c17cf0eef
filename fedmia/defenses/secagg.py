"""Flower's SecAgg+ (`SecAggPlusWorkflow` on the server, `secaggplus_mod` on the clients).

Under it the server sees only the (weighted) mean of the clients' replies. Clients then send
their *update* (new − received weights) in float64: raw weights would be clipped (BatchNorm
variances reach ~130), and the quantiser's float32 shift alone costs ~1e-4 of an update."""

from __future__ import annotations

from pydantic import Field, field_validator

from fedmia.defenses.base import Defense, Params, register_defense


class SecAggParams(Params):
    num_shares: int | float = Field(1.0, description="int > 2, or a fraction of the sampled clients")
    reconstruction_threshold: int | float = Field(0.5, description="int, or a fraction of num_shares")
    clipping_range: float = Field(8.0, gt=0, description="update values are clipped to ±this before quantisation")
    quantization_range: int = Field(2**30, gt=0, lt=2**31, description="int32 quantiser: below 2**31")
    modulus_range: int = Field(2**32, gt=0, description="masks are drawn from [0, modulus_range); a power of 2")
    max_weight: float = Field(1000.0, gt=0, description="num_examples are scaled by 1/max_weight")
    timeout: float | None = Field(None, gt=0, description="seconds to wait for clients per stage")

    @field_validator("modulus_range")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of 2")
        return value


@register_defense("secagg", acts_on="aggregation")
class SecAgg(Defense):
    Params = SecAggParams
    hides_client_updates = True

    def describe(self) -> str:
        return "SecAgg+"

    def problems(self, scenario) -> list[tuple[str, str]]:
        p, out = self.params, []
        if p.modulus_range <= p.quantization_range:
            out.append(("defenses.secagg.modulus_range",
                        f"expected more than quantization_range ({p.quantization_range}), found {p.modulus_range}"))
        if isinstance(p.num_shares, int) and not 2 < p.num_shares <= scenario.clients_per_round:
            out.append(("defenses.secagg.num_shares", f"expected an int in 3..clients_per_round "
                        f"({scenario.clients_per_round}) or a fraction, found {p.num_shares}"))
        return out

    def fit_workflow(self):
        from flwr.server.workflow import SecAggPlusWorkflow

        p = self.params
        return SecAggPlusWorkflow(num_shares=p.num_shares, reconstruction_threshold=p.reconstruction_threshold,
                                  max_weight=p.max_weight, clipping_range=p.clipping_range,
                                  quantization_range=p.quantization_range, modulus_range=p.modulus_range,
                                  timeout=p.timeout)
