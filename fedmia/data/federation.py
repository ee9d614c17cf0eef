"""What a federation plan is — its ground truth and its parts — apart from how one is built
(fedmia/data/plan.py for one pool, fedmia/data/sites.py for a multi-site audit)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmia.data.records import DatasetInfo, Records

if TYPE_CHECKING:
    from fedmia.data.plan import ClientLayout
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
