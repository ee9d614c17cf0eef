"""The federation plan: who holds which record, what the adversary may know, and the ground truth.

One pool of records is split three ways, disjointly:
  members    — spread over the clients (they train on them);
  heldout    — never trained on: the non-member targets and the utility test set;
  population — the adversary's prior data (its threshold calibration, shadow/reference models).
The *target list* mixes equal numbers of members (drawn round-robin across clients) and
held-out non-members, shuffled. The *ledger* (record id → owner) is ground truth: only the
evaluator reads it, never an attack.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmia.data.datasets import load_dataset
from fedmia.data.partition import partition
from fedmia.data.records import DatasetInfo, Records
from fedmia.data.shapes import apply_domain_shift

if TYPE_CHECKING:
    from fedmia.data.sites import SiteLayout

NON_MEMBER = "non-member"
POPULATION = "population"
PUBLIC = "public"


@dataclass(frozen=True)
class MembershipLedger:
    """Ground truth: record id → client index (int) or NON_MEMBER / POPULATION."""

    owner: dict[str, int | str]

    def is_member(self, ids) -> np.ndarray:
        return np.array([isinstance(self.owner[i], int) for i in ids], dtype=bool)

    def client_of(self, ids) -> np.ndarray:
        return np.array([self.owner[i] if isinstance(self.owner[i], int) else -1 for i in ids])

    def to_json(self) -> dict:
        return {"owner": self.owner}

    @classmethod
    def load(cls, path: Path) -> "MembershipLedger":
        return cls(json.loads(Path(path).read_text())["owner"])


@dataclass(frozen=True)
class FederationPlan:
    info: DatasetInfo
    clients: list[Records]  # one partition per client, index = Flower partition-id
    heldout: Records
    population: Records
    targets: Records  # what the adversary scores; membership unknown to it
    ledger: MembershipLedger | None  # None in a multi-site audit: the sites' manifests tell it later
    public: Records | None = None  # shared public records (training-time defenses), never targets
    layout: "ClientLayout | SiteLayout | None" = None  # where each client's records are


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

        rows = self.rows_of(partition_id)
        own = _shift(load(rows), np.full(len(rows), partition_id), data.domain_shift, seed)
        public = (_shift(load(self.public_rows), self.public_domains, data.domain_shift, seed)
                  if len(self.public_rows) else None)
        return own, public


def _shift(records: Records, domains: np.ndarray, strength: float, seed: int) -> Records:
    """Apply each record's acquisition domain (one per client/hospital)."""
    if strength == 0:
        return records
    images = records.images.copy()
    for domain in np.unique(domains):
        rows = domains == domain
        images[rows] = apply_domain_shift(images[rows], int(domain), strength, seed)
    return Records(images, records.masks, records.ids)


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
    order = rng.permutation(len(pool))
    member_rows = order[: data.members]
    heldout_rows = order[data.members : data.members + data.heldout]
    population_rows = order[data.members + data.heldout : data.members + data.heldout + data.population]
    public_rows = order[total - data.public : total]  # last: with public 0 every other draw is unchanged

    members = pool.subset(member_rows)
    parts = partition(
        data.partition.kind, members.dominant_class(), fed.clients,
        seed=scenario.seed, alpha=data.partition.alpha,
    )
    clients = [_shift(members.subset(p), np.full(len(p), k), data.domain_shift, scenario.seed)
               for k, p in enumerate(parts)]
    # Non-members come from the same hospitals as members, so the domain alone reveals no membership.
    heldout = _shift(pool.subset(heldout_rows), rng.integers(0, fed.clients, data.heldout),
                     data.domain_shift, scenario.seed)
    population = _shift(pool.subset(population_rows), rng.integers(0, fed.clients, data.population),
                        data.domain_shift, scenario.seed)

    owner: dict[str, int | str] = {}
    for k, client in enumerate(clients):
        owner.update({rid: k for rid in client.ids})
    owner.update({rid: NON_MEMBER for rid in heldout.ids})
    owner.update({rid: POPULATION for rid in population.ids})
    public_domains = rng.integers(0, fed.clients, data.public) if data.public else np.zeros(0, dtype=np.int64)
    public = _shift(pool.subset(public_rows), public_domains, data.domain_shift, scenario.seed) if data.public else None
    if public is not None:
        owner.update({rid: PUBLIC for rid in public.ids})

    wanted = scenario.evaluation.targets
    n_members = wanted.members or min(data.members, data.heldout)
    n_nonmembers = wanted.nonmembers or n_members
    all_members = Records.concat(clients)
    offsets = np.cumsum([0] + [len(c) for c in clients])
    member_pick = _round_robin([np.arange(offsets[k], offsets[k + 1]) for k in range(len(clients))], n_members, rng)
    nonmember_pick = rng.choice(len(heldout), size=min(n_nonmembers, len(heldout)), replace=False)
    targets = Records.concat([all_members.subset(member_pick), heldout.subset(nonmember_pick)])
    targets = targets.subset(rng.permutation(len(targets)))  # order must not reveal membership
    layout = ClientLayout.from_parts(info, data, scenario.seed, [member_rows[p] for p in parts],
                          public_rows if data.public else np.zeros(0, dtype=np.int64), public_domains)
    return FederationPlan(info, clients, heldout, population, targets, MembershipLedger(owner), public, layout)
