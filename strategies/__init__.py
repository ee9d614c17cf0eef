"""Flower server strategies, honest and malicious, one module per strategy.

Each module registers its class with `@register_strategy(name, params_model)`; the scenario's
`server:` block names the strategy and gives its parameters, validated by `params_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from fedmia.registry import Registry


@dataclass(frozen=True)
class StrategyEntry:
    cls: type
    params_model: type[BaseModel]


STRATEGIES: Registry[StrategyEntry] = Registry("server strategy")


def register_strategy(name: str, params_model: type[BaseModel]):
    def add(cls: type) -> type:
        STRATEGIES.register(name)(StrategyEntry(cls, params_model))
        cls.strategy_name = name
        return cls

    return add


# Registration happens on import; keep this list in step with the modules in this package.
from strategies import fedavg, gradient_ascent, isolation, poisoning, trap_weights  # noqa: E402,F401
