"""Defenses: one module per defense, each registered by its scenario key (`fedmia/defenses/base.py`
says what a defense declares). Adding a defense is one module and one entry point in the
`fedmia.defenses` group of its package's `pyproject.toml`."""

from fedmia.defenses.base import DEFENSES, STAGES, Defense, Params, active, defended_recipe, register_defense

__all__ = ["DEFENSES", "STAGES", "Defense", "Params", "active", "defended_recipe", "register_defense"]
