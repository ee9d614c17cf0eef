"""Flower server strategies, honest and malicious, one module per strategy.

Each module registers its class with `@register_strategy(name, params_model)`, and its package
offers it with one entry point in the `fedmia.strategies` group (fedmia's own: its
`pyproject.toml`); the scenario's `server:` block names the strategy and gives its parameters,
validated by `params_model`. `STRATEGIES.get(name)` imports the module.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from fedmia.registry import Registry


@dataclass(frozen=True)
class StrategyEntry:
    cls: type
    params_model: type[BaseModel]


STRATEGIES: Registry[StrategyEntry] = Registry("server strategy", "fedmia.strategies")


def register_strategy(name: str, params_model: type[BaseModel]):
    def add(cls: type) -> type:
        STRATEGIES.register(name)(StrategyEntry(cls, params_model))
        cls.strategy_name = name
        return cls

    return add

