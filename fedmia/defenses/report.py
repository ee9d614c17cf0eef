"""What a defense guarantees, typed: metrics.json's `privacy` section as the defense reports it
(`Defense.privacy_report`), and the evaluator's empirical check of its ε. Here, beside the
defenses, because they produce it; the schema (fedmia/evaluation/schema.py) reads it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Rate = float | None  # null where a figure is undefined (NaN on write)


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class EpsilonCheck(Open):
    """The empirical lower bound on ε from the run's gradient canaries (evaluation/epsilon_lower.py)."""

    epsilon_lower: Rate = Field(None, description="ε every (ε, δ)-DP training must exceed, at 95% confidence")
    epsilon_accountant: Rate = Field(None, description="the accountant's ε at the δ of that bound")
    delta: Rate = Field(None, description="the δ where the bound is tightest against the accountant")
    consistent: bool | None = Field(None, description="every bound at or below the accountant's ε")


class Privacy(Open):
    """What a defense guarantees (`Defense.privacy_report`), and the evaluator's check of it."""

    epsilon: Rate = Field(description="headline ε (the smallest accountant's)")
    delta: Rate = Field(None, description="δ of that ε")
    mode: str | None = Field(None, description="local (per record) or central (per client)")
    per_client: dict[str, dict[str, Any]] | None = Field(None, description="local mode: each client's ε and δ")
    audit: EpsilonCheck | None = Field(None, description="the one-run empirical check of ε, when canaries ran")
