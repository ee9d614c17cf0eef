"""Membership and source-inference attacks: one module per family.

Adding an attack is one module that subclasses `Attack` and decorates it with
`@register_attack("name")`, and one entry point in the `fedmia.attacks` group of its package's
`pyproject.toml` (fedmia's own are in fedmia's). `ATTACKS.get(name)` imports the module.
"""

from fedmia.attacks.base import ATTACKS, AdversaryView, Attack, AttackResult, QueryAPI, register_attack

__all__ = ["ATTACKS", "AdversaryView", "Attack", "AttackResult", "QueryAPI", "register_attack"]
