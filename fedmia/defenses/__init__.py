"""Defenses: one module per defense, each registered by its scenario key (`fedmia/defenses/base.py`
says what a defense declares). Adding a defense is adding a module and one import line below."""

from fedmia.defenses.base import DEFENSES, STAGES, Defense, Params, active, register_defense
from fedmia.defenses import (  # noqa: F401,E402  (registration on import)
    crop, distillation, dp, label_smoothing, laplace, minmax, mixup, output, receive_check, secagg,
)

__all__ = ["DEFENSES", "STAGES", "Defense", "Params", "active", "register_defense"]
