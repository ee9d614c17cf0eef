"""Flower server strategies, honest and malicious, one module per strategy.

Each module registers its class (a subclass of `strategies.fedavg.ObservingFedAvg`, which
declares every hook) with `@register_strategy(name, Params)`, and its package offers it with one
entry point in the `fedmia.strategies` group (fedmia's own: its `pyproject.toml`); the scenario's
`server:` block names the strategy and gives its parameters, validated by the class's `Params`.
`STRATEGIES.get(name)` imports the module and returns the class.
"""

from __future__ import annotations

from pydantic import BaseModel

from fedmia.registry import Registry

STRATEGIES: Registry[type] = Registry("server strategy", "fedmia.strategies")


def register_strategy(name: str, Params: type[BaseModel]):
    def add(cls: type) -> type:
        cls.Params = Params
        return STRATEGIES.register(name)(cls)

    return add

