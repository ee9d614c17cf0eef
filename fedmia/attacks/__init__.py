"""Membership and source-inference attacks: one module per family, one registry.

Adding an attack is adding one module that subclasses `Attack`, decorates it with
`@register_attack("name")`, and is imported below.
"""

from fedmia.attacks.base import ATTACKS, AdversaryView, Attack, register_attack
from fedmia.attacks import threshold  # noqa: F401  (registers loss, entropy, confidence, modified-entropy)

__all__ = ["ATTACKS", "AdversaryView", "Attack", "register_attack"]
