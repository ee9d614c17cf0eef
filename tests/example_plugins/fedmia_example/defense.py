"""Example plug-in: a new defense is this one file — its schema block, where it acts, a hook."""

from pydantic import Field

from fedmia.defenses.base import Defense, Params, register_defense


class FlipParams(Params):
    probability: float = Field(0.5, ge=0, le=1, description="chance that a batch is flipped")


@register_defense("example-flip", acts_on="local batch")
class HorizontalFlip(Defense):
    """Clients train on horizontally flipped images (and masks) with some probability."""

    Params = FlipParams
    calls = 0

    def describe(self) -> str:
        return f"flip (p {self.params.probability})"

    def batch(self, run, x, y):
        HorizontalFlip.calls += 1
        flip = run.rng.random() < self.params.probability
        return (x.flip(-1), y.flip(-1)) if flip else (x, y)
