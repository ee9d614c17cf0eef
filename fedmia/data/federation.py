"""What a federation plan is — its ground truth and its parts — apart from how one is built
(fedmia/data/plan.py for one pool, fedmia/data/sites.py for a multi-site audit)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fedmia.data.records import DatasetInfo, Records

NON_MEMBER = "non-member"
POPULATION = "population"
PUBLIC = "public"


class GroundTruthRead(RuntimeError):
    """The membership ledger was read while the adversary acts (a round, an attack)."""


_SEALED: list[str] = []  # what is running now that must not see ground truth (process-wide: Flower's server thread too)


@contextmanager
def sealed(what: str):
    """While `what` runs (the federation's rounds, the attacks), reading any ledger raises: the
    adversary's code never sees membership, whichever plug-in it is — checked on every run, not
    only in a test."""
    _SEALED.append(what)
    try:
        yield
    finally:
        _SEALED.pop()


class MembershipLedger:
    """Ground truth: record id → client index (int) or NON_MEMBER / POPULATION. Only the
    evaluator reads it; a read inside `sealed(...)` raises GroundTruthRead."""

    def __init__(self, owner: dict[str, int | str]):
        self._owner = owner

    @property
    def owner(self) -> dict[str, int | str]:
        if _SEALED:
            raise GroundTruthRead(f"the membership ledger was read during {_SEALED[-1]}: only the evaluator may read it")
        return self._owner

    def __eq__(self, other) -> bool:
        return isinstance(other, MembershipLedger) and self.owner == other.owner

    def is_member(self, ids) -> np.ndarray:
        owner = self.owner
        return np.array([isinstance(owner[i], int) for i in ids], dtype=bool)

    def client_of(self, ids) -> np.ndarray:
        owner = self.owner
        return np.array([owner[i] if isinstance(owner[i], int) else -1 for i in ids])

    def to_json(self) -> dict:
        return {"owner": self.owner}

    @classmethod
    def load(cls, path: Path) -> "MembershipLedger":
        return cls(json.loads(Path(path).read_text())["owner"])


class ClientRecords(Protocol):
    """Where each client's records are, as a client loads its own: one pool's
    `fedmia.data.plan.ClientLayout` or a multi-site audit's `fedmia.data.sites.SiteLayout`.
    A protocol, so that this module names neither builder (they import it: no import circle)."""

    info: DatasetInfo

    @property
    def clients(self) -> int: ...

    def load_client(self, partition_id: int, *args) -> tuple[Records, Records | None]: ...


@dataclass(frozen=True)
class FederationPlan:
    info: DatasetInfo
    clients: list[Records]  # one partition per client, index = Flower partition-id
    heldout: Records
    population: Records
    targets: Records  # what the adversary scores; membership unknown to it
    ledger: MembershipLedger | None  # None in a multi-site audit: the sites' manifests tell it later
    public: Records | None = None  # shared public records (training-time defenses), never targets
    layout: ClientRecords | None = None  # where each client's records are
