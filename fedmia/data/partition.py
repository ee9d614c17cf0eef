"""Split record indices among federated clients: evenly (`iid`) or label-skewed (`dirichlet`).

A partitioner is a plug-in of the `fedmia.partitioners` entry-point group
(`data.partition.kind` names it): one function registered with `@register_partitioner(name)`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fedmia.registry import Registry

# A partitioner: (labels, num_clients, rng, alpha, min_per_client) -> one index array per client.
Partitioner = Callable[[np.ndarray, int, np.random.Generator, float, int], "list[np.ndarray]"]

PARTITIONERS: Registry[Partitioner] = Registry("partitioner", "fedmia.partitioners")
register_partitioner = PARTITIONERS.register

DIRICHLET_ATTEMPTS = 100


def partition(
    kind: str,
    labels: np.ndarray,
    num_clients: int,
    *,
    seed: int,
    alpha: float = 0.5,
    min_per_client: int = 1,
) -> list[np.ndarray]:
    """Per client, a sorted int64 array of indices into `labels`; together disjoint and complete.

    `labels` is one class per record (e.g. `Records.dominant_class()`); only `dirichlet` looks at it.
    """
    splitter = PARTITIONERS.get(kind)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"partition: labels must be one-dimensional, found shape {labels.shape}")
    n = len(labels)
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"partition: num_clients must be an integer >= 1, found {num_clients!r}")
    if num_clients > n:
        raise ValueError(f"partition: cannot split {n} records among {num_clients} clients")
    if min_per_client < 0:
        raise ValueError(f"partition: min_per_client must be >= 0, found {min_per_client}")
    if min_per_client * num_clients > n:
        raise ValueError(
            f"partition: {num_clients} clients × min_per_client {min_per_client} "
            f"needs {min_per_client * num_clients} records, only {n} available"
        )
    parts = splitter(labels, int(num_clients), np.random.default_rng(seed), alpha, min_per_client)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


@register_partitioner("iid")
def _iid(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, alpha: float, min_per_client: int
) -> list[np.ndarray]:
    """Members shuffled and split evenly."""
    # Sizes differ by at most one, so min_per_client holds given the check in `partition`.
    return np.array_split(rng.permutation(len(labels)), num_clients)


@register_partitioner("dirichlet")
def _dirichlet(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, alpha: float, min_per_client: int
) -> list[np.ndarray]:
    """Each class's records go to clients in proportions ~ Dir(alpha) (`data.partition.alpha`):
    small alpha, strong skew."""
    if not alpha > 0:
        raise ValueError(f"partition: dirichlet alpha must be > 0, found {alpha!r}")
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(DIRICHLET_ATTEMPTS):
        clients: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in by_class:
            shares = rng.dirichlet(np.full(num_clients, alpha))
            # Round, not truncate: truncation would hand every rounding remainder to the last client.
            cuts = np.rint(np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(rng.permutation(members), cuts)):
                clients[client].append(chunk)
        parts = [np.concatenate(chunks) for chunks in clients]
        if min(len(p) for p in parts) >= min_per_client:
            return parts
    raise ValueError(
        f"partition: dirichlet(alpha={alpha}) left a client with fewer than {min_per_client} records "
        f"in {DIRICHLET_ATTEMPTS} attempts ({len(labels)} records, {num_clients} clients); "
        "raise alpha, lower min_per_client or use fewer clients"
    )
