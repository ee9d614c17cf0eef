"""Example plug-in: a new server strategy is this one file overriding one hook (`tailor`)."""

from pydantic import BaseModel, ConfigDict, Field

from strategies import register_strategy
from strategies.fedavg import ObservingFedAvg


class ScaledParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: float = Field(1.0, description="every floating-point weight sent is multiplied by this")


@register_strategy("example-scaled-broadcast", ScaledParams)
class ScaledBroadcast(ObservingFedAvg):
    def tailor(self, server_round, weights, instructions):
        scaled = [w * self.params.factor if w.dtype.kind == "f" else w for w in weights]
        self.current_view.notes.attacked = "example-scaled-broadcast"
        return [(proxy, scaled, config) for proxy, config in instructions]
