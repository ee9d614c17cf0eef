"""Poisoning the broadcast model to make clients' updates memorise (a federated form of the
segmentation-MIA paper's dishonest adversary).

In the paper the adversary poisons *training data* so the victim leaks more. A federated server
cannot touch the clients' data, but it decides where their local training starts. In attack
rounds this strategy re-initialises a part of the network (by default the whole decoder and the
segmentation head) before broadcasting: the clients must then refit that part from their own
records alone, so each returned model's decoder is fit to one client's handful of scans instead
of being the smooth average of all of them. The update attacks then compare per-client models
that differ more where the clients' records differ. The cost is paid by utility: the aggregate
of freshly refit decoders is worse than an honest round's (reported as Dice).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fedmia.models import build_model, scenario_model, weight_names
from strategies import register_strategy
from strategies.fedavg import ObservingFedAvg


class PoisoningParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attack_rounds: list[int] | None = Field(None, description="default: the last round")
    reset: list[str] = Field(default_factory=lambda: ["decoder", "segmentation_head"],
                             description="state_dict prefixes re-initialised before broadcast")
    reset_seed: int = Field(1234, description="seed of the re-initialisation (plus the round number)")


@register_strategy("poisoning", PoisoningParams)
class DecoderResetFedAvg(ObservingFedAvg):
    @classmethod
    def problems(cls, scenario, params: PoisoningParams) -> list[tuple[str, str]]:
        """Each `reset` prefix must name part of the model: the default names smp's decoder and
        head, which a plug-in model may not have (it would then poison nothing, silently)."""
        try:
            names = weight_names(build_model(scenario.model, in_channels=1, num_classes=2))
        except Exception:  # noqa: BLE001 — a model that cannot be built is validation's "model" problem
            return []
        missing = [p for p in params.reset if not any(n.startswith(p) for n in names)]
        if missing:
            return [("server.reset", f"poisoning: no weight of the model starts with {missing}; "
                     f"expected state_dict prefixes such as {sorted({n.split('.')[0] for n in names})}")]
        return []

    def tailor(self, server_round, weights, instructions):
        rounds = set(self.params.attack_rounds or [self.scenario.federation.rounds])
        if server_round not in rounds:
            return super().tailor(server_round, weights, instructions)
        info = self.knowledge.info
        fresh = scenario_model(self.scenario, info, seed=self.params.reset_seed + server_round)
        names = weight_names(fresh)
        fresh_weights = [v.detach().cpu().numpy() for v in fresh.state_dict().values()]
        poisoned = [fresh_weights[i] if any(n.startswith(p) for p in self.params.reset) else w
                    for i, (n, w) in enumerate(zip(names, weights))]
        notes = self.current_view.notes
        notes.attacked, notes.details = "poisoning", {"reset": self.params.reset}
        return [(proxy, poisoned, config) for proxy, config in instructions]
