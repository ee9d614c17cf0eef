"""Example plug-in: a new out-of-distribution set is this one function."""

from fedmia.data.ood import OODRequest, register_ood_set


@register_ood_set("example-inverted")
def inverted(request: OODRequest):
    """Held-out records with their intensities inverted (1 - x); masks kept."""
    picked = request.reference.subset(request.rng.choice(len(request.reference), request.count))
    return 1.0 - picked.images, picked.masks.copy()
