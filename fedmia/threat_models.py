"""Threat models: who the adversary is, what it sees, and which attacks it runs — as plug-ins.

`fedmia audit` runs a user's scenario under every registered threat model. A threat model does
not train anything itself: it turns the user's scenario (their data, model, federation, defenses)
into the scenario that adversary implies — the server's strategy, the attacks, what they read —
and says whether it applies at all (`why_not`). Registered like every other family, by an entry
point in the group `fedmia.threat_models` (`fedmia/registry.py`), so a package can add its own
(`@register_threat_model("name")` on a `ThreatModel` subclass in the module the entry point names).

Runs whose *training* is identical (everything but the attacks and the name) are shared: the
audit merges the attack lists of the threat models that ask for the same federation, so the
honest server's black-box and update attacks read the same federation, not two of them.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from fedmia.registry import Registry
from fedmia.scenario import Scenario

THREAT_MODELS: Registry[type[ThreatModel]] = Registry("threat model", "fedmia.threat_models")

# metrics.json figures of an attack row a gate or the report may name (tpr_at_fpr.LEVEL besides)
ATTACK_METRICS = ("auc", "balanced_accuracy")

BLACK_BOX_DEFAULT = ("loss", "modified-entropy", "confidence", "entropy")
UPDATE_ATTACKS = ("update-loss-drop", "update-gradient", "source-inference")


def hides_client_updates(scenario: Scenario) -> bool:
    """Whether an aggregation-stage defense (SecAgg+) shows the server only the sum of the
    replies — asked of the defenses themselves, not of a named block."""
    from fedmia.defenses import active

    return any(defense.hides_client_updates for defense in active(scenario))


def register_threat_model(name: str):
    def add(cls: type[ThreatModel]) -> type[ThreatModel]:
        return THREAT_MODELS.register(name)(cls)

    return add


class ThreatModel:
    """One adversary. Subclasses set the class attributes (they are the report's words) and
    override `why_not` and `derive`."""

    name: ClassVar[str] = ""
    Params: ClassVar[None] = None  # a threat model takes no parameters: it derives them
    title: ClassVar[str] = ""
    adversary: ClassVar[str] = ""  # who it is and what it does, in one sentence
    sees: ClassVar[str] = ""  # what it reads
    stopped_by: ClassVar[str] = ""  # what is known to stop it (docs/threat-models.md)

    def why_not(self, scenario: Scenario) -> str | None:
        """None when this threat model applies to `scenario`, else the reason, in words."""
        return None

    def derive(self, scenario: Scenario) -> dict[str, Any]:
        """The resolved scenario (a dict for `parse_scenario`) this adversary runs: the user's
        data, model, federation and defenses; this adversary's server and attacks."""
        raise NotImplementedError

    # helpers for subclasses
    @staticmethod
    def _with(scenario: Scenario, strategy: str, attacks: list[dict], drop: tuple[str, ...] = (),
              **server: Any) -> dict[str, Any]:
        """The user's scenario with `strategy` (the user's own parameters of it kept when they
        ran that strategy, less `drop`) and `attacks`."""
        raw = copy.deepcopy(scenario.resolved())
        kept = {k: v for k, v in scenario.server.params().items() if k not in drop} \
            if scenario.server.strategy == strategy else {}
        raw["server"] = {"strategy": strategy, **kept, **server}
        raw["attacks"] = attacks
        from fedmia.defenses import active

        for defense in active(scenario):  # the adversary knows the defenses (Kerckhoffs)
            for key, value in defense.knowing_server(strategy).items():
                raw["server"].setdefault(key, value)
        return raw

    @staticmethod
    def _user_attacks(scenario: Scenario, names: tuple[str, ...]) -> list[dict]:
        """The user's own specs of `names` (their labels and parameters kept), then a bare spec
        for each name they did not list."""
        specs = [spec.model_dump(exclude_none=True) for spec in scenario.attacks if spec.name in names]
        listed = {spec["name"] for spec in specs}
        return specs + [{"name": n} for n in names if n not in listed]


@register_threat_model("black-box")
class BlackBox(ThreatModel):
    title = "Anyone who can query the released model"
    adversary = ("whoever holds the served model's query API (a user of the released model, or the honest "
                 "server itself) scores each record by what the model outputs on it")
    sees = "the released model's output probabilities, through its query API only; its own population data"
    stopped_by = "DP, crop, distillation; output hardening does not stop the calibrated attacks"

    def derive(self, scenario: Scenario) -> dict[str, Any]:
        from fedmia.attacks import ATTACKS

        specs = [spec.model_dump(exclude_none=True) for spec in scenario.attacks
                 if ATTACKS.get(spec.name).access == "black-box"]
        return self._with(scenario, "fedavg", specs or [{"name": n} for n in BLACK_BOX_DEFAULT])


@register_threat_model("client-updates")
class ClientUpdates(ThreatModel):
    title = "An honest-but-curious server"
    adversary = ("the server runs FedAvg as agreed but keeps every client's reply of every round and "
                 "reads membership and ownership from them")
    sees = "every model it sent, every client's reply (white box), its own population data"
    stopped_by = "SecAgg+ (the server sees only the sum), DP"

    def why_not(self, scenario: Scenario) -> str | None:
        if hides_client_updates(scenario):
            return ("secure aggregation is on (SecAgg+ or thresholded): the server sees only the sum of the "
                    "replies, so update attacks have no client update to read (an active server against it is "
                    "`secagg-isolation`)")
        return None

    def derive(self, scenario: Scenario) -> dict[str, Any]:
        return self._with(scenario, "fedavg", self._user_attacks(scenario, UPDATE_ATTACKS))


@register_threat_model("trap-weights")
class TrapWeights(ThreatModel):
    title = "A malicious server planting membership detectors"
    adversary = ("the server turns encoder channels of the model it sends into one detector per target record "
                 "and reads which detectors moved in each reply (Boenisch et al. 2023); it knows the clients' "
                 "defenses: its detectors pass their receive-check, helper clients defeat thresholded aggregation")
    sees = "every client's reply (or the secure sum), the weights it chose to send, its own population data"
    stopped_by = ("local DP-SGD; a client that repairs the model it receives (receive-check, action: repair, "
                  "min_open >= 0.004: also against a trap that knows the check) or refuses it; not thresholded "
                  "secure aggregation against a server that knows t (helper clients), not SecAgg+ or augmentation")

    def derive(self, scenario: Scenario) -> dict[str, Any]:
        return self._with(scenario, "trap-weights", self._user_attacks(scenario, ("trap-weights",)),
                          drop=("isolate_client",))


@register_threat_model("secagg-isolation")
class SecAggIsolation(ThreatModel):
    title = "A malicious server isolating one client under SecAgg+"
    adversary = ("SecAgg+ is on; the server sends armed detectors to client 0 only and disarmed ones to the "
                 "rest, so the secure aggregate's detector block is client 0's update (model inconsistency)")
    sees = "the secure aggregate only; the weights it chose to send each client"
    stopped_by = "local DP-SGD; receive-check on the isolated client"

    def why_not(self, scenario: Scenario) -> str | None:
        if not hides_client_updates(scenario):
            return ("SecAgg+ is off (no secure aggregation): there is no secure aggregate to isolate a client "
                    "from (`trap-weights` covers it)")
        return None

    def derive(self, scenario: Scenario) -> dict[str, Any]:
        return self._with(scenario, "trap-weights", self._user_attacks(scenario, ("trap-weights",)),
                          isolate_client=0)
