"""A figure as every reader gets it: a mean with its 95% interval, over seeds or over targets.

`Value` is one run's number as metrics.json's schema defines it, with whether it is a rate (a
share or a score in [0, 1], whose interval is clipped there) — declared where the figure is
defined (`schema.figures`), never guessed from its name. `Figure` is what `replicate` and the
audit report: the mean, the interval, how many runs, each run's value. Pure maths, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
ACROSS_SEEDS = "95% t-interval across seeds"
OVER_TARGETS = "95% bootstrap over targets (one seed)"
NO_INTERVAL = "none (one seed)"


@dataclass(frozen=True)
class Value:
    """One run's figure: its number (None where undefined) and whether it is a rate in [0, 1]."""

    value: float | None
    rate: bool = True


@dataclass(frozen=True)
class Figure:
    """A mean and its interval (None where there is none), from `n` runs; `values`: each run's."""

    mean: float
    low: float | None
    high: float | None
    n: int
    values: tuple[float | None, ...]
    rate: bool
    interval: str
    sd: float | None = None

    def to_json(self) -> dict:
        """replicate.json's entry: mean, sd, ci, n, values, rate."""
        return {"mean": self.mean, "sd": self.sd, "ci": [self.low, self.high], "n": self.n,
                "values": list(self.values), "rate": self.rate}


def finite(value) -> float | None:
    """The number, or None for a missing, non-numeric or non-finite one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def across_seeds(values: list[float | None], rate: bool, level: float = LEVEL) -> Figure | None:
    """Mean, standard deviation and Student-t interval over the runs' finite values; a rate's
    interval is clipped to [0, 1]. None when no run has the figure. One value: an infinite
    half-width (no interval from one seed)."""
    x = np.array([v for v in map(finite, values) if v is not None])
    if len(x) == 0:
        return None
    mean, sd = float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * sd / math.sqrt(len(x))) if len(x) > 1 else math.inf
    low, high = mean - half, mean + half
    if rate:
        low, high = max(low, 0.0), min(high, 1.0)
    return Figure(mean, low, high, int(len(x)), tuple(values), rate, ACROSS_SEEDS, sd)


def of_one_run(value: float | None, interval: list | None, rate: bool = True) -> Figure | None:
    """One seed's figure with the run's own 95% bootstrap interval over targets, if it has one."""
    mean = finite(value)
    if mean is None:
        return None
    low, high = (interval if isinstance(interval, (list, tuple)) and len(interval) == 2 else (None, None))
    has = interval is not None and len(interval) == 2
    return Figure(mean, finite(low), finite(high), 1, (mean,), rate, OVER_TARGETS if has else NO_INTERVAL)


def figure_of(values: list[float | None], intervals: list | None, rate: bool = True) -> Figure | None:
    """Two seeds or more: across seeds; one: that run's interval over targets."""
    if len(values) >= 2:
        return across_seeds(values, rate)
    return of_one_run(values[0] if values else None, intervals[0] if intervals else None, rate)
