"""The federation plan: who holds which record, what the adversary may know, and the ground truth.

One pool of records is split three ways, disjointly:
  members    — spread over the clients (they train on them);
  heldout    — never trained on: the non-member targets and the utility test set;
  population — the adversary's prior data (its threshold calibration, shadow/reference models).
The *target list* mixes equal numbers of members (drawn round-robin across clients) and
held-out non-members, shuffled. The *ledger* (record id → owner) is ground truth: only the
evaluator reads it, never an attack.

Record groups. When a dataset's records come in groups (`Records.groups`: the slices of one
NIfTI scan in `folder`), the group — the patient — is the unit of membership: `data.members`,
`heldout`, `population` and `public` count groups, the split and the partition draw whole
groups, so no group's records sit with two clients or on both sides of the member line. The
ledger names every record with its group's owner. Each target is one patient: one record drawn
at random from each target group (`evaluation.targets` counts groups), so the targets stay
independent and the bootstrap intervals over targets are intervals over patients; scoring
every slice of a scan as its own target would count one patient many times and make the
intervals too narrow.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedmia.data.datasets import load_dataset
from fedmia.data.partition import partition
from fedmia.data.records import DatasetInfo, Records
from fedmia.data.shapes import apply_domain_shift
# the plan's types live apart, so that fedmia/data/sites.py can build one without importing this
from fedmia.data.federation import NON_MEMBER, POPULATION, PUBLIC, FederationPlan, MembershipLedger  # noqa: F401


@dataclass(frozen=True)
class ClientLayout:
    """What a client needs to load its own records and nothing else: the pool rows of each
    partition (a few integers per record), the public rows with their domains, and the dataset
    info. The server computes it once (a non-IID partition needs every member's mask); a Ray
    worker then reads only the rows of the clients it plays — for `folder`, only their files."""

    info: DatasetInfo
    data: object  # the scenario's DataSpec
    seed: int
    # every client's pool rows end to end, and where each client's start: two arrays, so the
    # layout of 10,000 clients pickles in a millisecond (Flower ships it with every message)
    rows: np.ndarray
    offsets: np.ndarray
    public_rows: np.ndarray
    public_domains: np.ndarray

    @classmethod
    def from_parts(cls, info: DatasetInfo, data, seed: int, parts: list[np.ndarray],
                   public_rows: np.ndarray, public_domains: np.ndarray) -> "ClientLayout":
        offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
        rows = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, dtype=np.int32)
        return cls(info, data, seed, rows, offsets, public_rows, public_domains)

    @property
    def clients(self) -> int:
        return len(self.offsets) - 1

    def rows_of(self, partition_id: int) -> np.ndarray:
        return self.rows[self.offsets[partition_id] : self.offsets[partition_id + 1]].astype(np.int64)

    def load_client(self, partition_id: int) -> tuple[Records, Records | None]:
        """Partition `partition_id`'s records (and the public records), equal to the plan's."""
        data, seed = self.data, self.seed
        total = data.members + data.heldout + data.population + data.public

        def load(rows: np.ndarray) -> Records:
            records, _ = load_dataset(data.dataset, records=total, image_size=data.image_size,
                                      seed=seed, options=data.options, rows=rows)
            return records

        own = load(self.rows_of(partition_id))
        own = _shift(own, np.full(len(own), partition_id), data.domain_shift, seed)
        public = None
        if len(self.public_rows):
            public = load(self.public_rows)
            public = _shift(public, _per_record(public, self.public_rows, self.public_domains),
                            data.domain_shift, seed)
        return own, public


def _shift(records: Records, domains: np.ndarray, strength: float, seed: int) -> Records:
    """Apply each record's acquisition domain (one per client/hospital)."""
    if strength == 0:
        return records
    images = records.images.copy()
    for domain in np.unique(domains):
        rows = domains == domain
        images[rows] = apply_domain_shift(images[rows], int(domain), strength, seed)
    return Records(images, records.masks, records.ids, records.groups)


def _rows_of_units(records: Records, units: np.ndarray) -> np.ndarray:
    """Positions in `records` of every record of `units` (pool rows), unit after unit in the
    order given: a group's records always travel together. Without groups a unit is a record."""
    units = np.asarray(units, dtype=np.int64)
    if records.groups is None:
        return units
    order = np.argsort(records.groups, kind="stable")
    ordered = records.groups[order]
    starts = np.searchsorted(ordered, units, side="left")
    ends = np.searchsorted(ordered, units, side="right")
    chunks = [order[s:e] for s, e in zip(starts, ends)]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def _per_record(records: Records, units: np.ndarray, values: np.ndarray) -> np.ndarray:
    """One value per unit (e.g. a domain) → one per record, each record taking its group's."""
    if records.groups is None:
        return values
    lookup = dict(zip(np.asarray(units).tolist(), np.asarray(values).tolist()))
    return np.array([lookup[g] for g in records.groups.tolist()], dtype=np.int64)


def _unit_labels(records: Records, units: np.ndarray) -> np.ndarray:
    """One class per unit for the partitioner: a record's dominant class; a group's, the most
    frequent dominant class among its records' foregrounds (0 when none has any)."""
    dominant = records.dominant_class()
    if records.groups is None:
        return dominant
    labels = np.zeros(len(units), dtype=np.int64)
    for i, unit in enumerate(np.asarray(units).tolist()):
        found = dominant[(records.groups == unit) & (dominant > 0)]
        if found.size:
            labels[i] = np.bincount(found).argmax()
    return labels


def _one_record_each(records: Records, units, rng: np.random.Generator) -> np.ndarray:
    """For each unit, the position in `records` of one of its records, drawn at random."""
    return np.array([rng.choice(np.flatnonzero(records.groups == unit)) for unit in units], dtype=np.int64)


def _round_robin(parts: list[np.ndarray], count: int, rng: np.random.Generator) -> list[int]:
    """Take `count` positions alternating over the parts, so every client contributes."""
    queues = [list(rng.permutation(p)) for p in parts]
    taken: list[int] = []
    while len(taken) < count and any(queues):
        for queue in queues:
            if queue and len(taken) < count:
                taken.append(int(queue.pop()))
    return taken


def build_plan(scenario) -> FederationPlan:
    """Deterministic given the scenario: clients rebuild their own share from it."""
    return _build_plan_cached(scenario.canonical())


@functools.lru_cache(maxsize=4)
def _build_plan_cached(canonical: str) -> FederationPlan:
    from fedmia.scenario import Scenario

    scenario = Scenario.model_validate_json(canonical)
    if scenario.data.multi_site:  # each site's records stay with it: fedmia/data/sites.py
        from fedmia.data.sites import build_site_plan

        return build_site_plan(scenario)
    data, fed = scenario.data, scenario.federation
    rng = np.random.default_rng(scenario.seed)
    total = data.members + data.heldout + data.population + data.public
    pool, info = load_dataset(
        data.dataset, records=total, image_size=data.image_size, seed=scenario.seed, options=data.options
    )
    units = len(pool) if pool.groups is None else total  # groups (patients) are drawn whole
    order = rng.permutation(units)
    member_rows = order[: data.members]
    heldout_rows = order[data.members : data.members + data.heldout]
    population_rows = order[data.members + data.heldout : data.members + data.heldout + data.population]
    public_rows = order[total - data.public : total]  # last: with public 0 every other draw is unchanged

    def drawn(rows: np.ndarray) -> Records:
        return pool.subset(_rows_of_units(pool, rows))

    parts = partition(
        data.partition.kind, _unit_labels(drawn(member_rows), member_rows), fed.clients,
        seed=scenario.seed, alpha=data.partition.alpha,
    )
    clients = []
    for k, p in enumerate(parts):
        client = drawn(member_rows[p])
        clients.append(_shift(client, np.full(len(client), k), data.domain_shift, scenario.seed))
    # Non-members come from the same hospitals as members, so the domain alone reveals no membership.
    heldout, population = drawn(heldout_rows), drawn(population_rows)
    heldout = _shift(heldout, _per_record(heldout, heldout_rows, rng.integers(0, fed.clients, data.heldout)),
                     data.domain_shift, scenario.seed)
    population = _shift(population, _per_record(population, population_rows,
                                                rng.integers(0, fed.clients, data.population)),
                        data.domain_shift, scenario.seed)

    owner: dict[str, int | str] = {}
    for k, client in enumerate(clients):
        owner.update({rid: k for rid in client.ids})
    owner.update({rid: NON_MEMBER for rid in heldout.ids})
    owner.update({rid: POPULATION for rid in population.ids})
    public_domains = rng.integers(0, fed.clients, data.public) if data.public else np.zeros(0, dtype=np.int64)
    public = None
    if data.public:
        public = drawn(public_rows)
        public = _shift(public, _per_record(public, public_rows, public_domains), data.domain_shift, scenario.seed)
    if public is not None:
        owner.update({rid: PUBLIC for rid in public.ids})

    wanted = scenario.evaluation.targets
    n_members = wanted.members or min(data.members, data.heldout)
    n_nonmembers = wanted.nonmembers or n_members
    all_members = Records.concat(clients)
    offsets = np.cumsum([0] + [len(c) for c in clients])
    if pool.groups is None:
        member_pick = _round_robin([np.arange(offsets[k], offsets[k + 1]) for k in range(len(clients))],
                                   n_members, rng)
        nonmember_pick = rng.choice(len(heldout), size=min(n_nonmembers, len(heldout)), replace=False)
    else:  # one target per patient: the groups are drawn as records are above, then one slice each
        member_units = _round_robin([member_rows[p] for p in parts], n_members, rng)
        member_pick = _one_record_each(all_members, member_units, rng)
        nonmember_units = rng.choice(heldout_rows, size=min(n_nonmembers, len(heldout_rows)), replace=False)
        nonmember_pick = _one_record_each(heldout, nonmember_units, rng)
    targets = Records.concat([all_members.subset(member_pick), heldout.subset(nonmember_pick)])
    targets = targets.subset(rng.permutation(len(targets)))  # order must not reveal membership
    layout = ClientLayout.from_parts(info, data, scenario.seed, [member_rows[p] for p in parts],
                          public_rows if data.public else np.zeros(0, dtype=np.int64), public_domains)
    return FederationPlan(info, clients, heldout, population, targets, MembershipLedger(owner), public, layout)
