"""Membership and source-inference attacks: one module per family, one registry.

Adding an attack is adding one module that subclasses `Attack`, decorates it with
`@register_attack("name")`, and is imported below.
"""

from fedmia.attacks.base import ATTACKS, AdversaryView, Attack, AttackResult, QueryAPI, register_attack
from fedmia.attacks import threshold  # noqa: F401  (loss, entropy, confidence, max-softmax, modified-entropy)
from fedmia.attacks import updates  # noqa: F401  (update-loss-drop, update-gradient, source-inference)
from fedmia.attacks import isolation  # noqa: F401  (isolation)
from fedmia.attacks import reference  # noqa: F401  (lira-online, lira-offline, rmia)
from fedmia.attacks import shadow  # noqa: F401  (shadow-type1/-type2/-lossmap, global-loss, salem)
from fedmia.attacks import trap  # noqa: F401  (trap-weights)

__all__ = ["ATTACKS", "AdversaryView", "Attack", "AttackResult", "QueryAPI", "register_attack"]
