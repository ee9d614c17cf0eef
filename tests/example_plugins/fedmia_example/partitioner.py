"""Example plug-in: a new partitioner is this one function (and importing it registers it)."""

import numpy as np

from fedmia.data.partition import register_partitioner


@register_partitioner("example-round-robin")
def round_robin(labels, num_clients, rng, alpha, min_per_client):
    """Record i goes to client i mod num_clients, in a shuffled order."""
    order = rng.permutation(len(labels))
    return [order[k::num_clients] for k in range(num_clients)]
