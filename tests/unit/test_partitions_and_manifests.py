"""Partitioning and the sites' manifests: which records each client holds, and the ground truth a
multi-site audit rebuilds from file digests. No training."""

from __future__ import annotations

import numpy as np
import pytest

from fedmia.data.partition import PARTITIONERS, partition
from fedmia.registry import UnknownNameError


def _label_skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    classes = np.unique(labels)
    overall = np.array([(labels == c).mean() for c in classes])
    distances = []
    for part in parts:
        local = np.array([(labels[part] == c).mean() for c in classes])
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))


def _assert_disjoint_cover(parts: list[np.ndarray], n: int):
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64
    assert len(joined) == n and len(np.unique(joined)) == n and set(joined) == set(range(n))


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_partitions_are_disjoint_complete_and_deterministic(kind):
    labels = np.repeat(np.arange(5), 40)
    parts = partition(kind, labels, 6, seed=1, alpha=0.5, min_per_client=3)
    assert len(parts) == 6
    _assert_disjoint_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 3
    again = partition(kind, labels, 6, seed=1, alpha=0.5, min_per_client=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(kind, labels, 6, seed=2, alpha=0.5, min_per_client=3)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_sizes_are_even():
    sizes = [len(p) for p in partition("iid", np.zeros(103), 10, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_with_small_alpha_is_skewed():
    labels = np.repeat(np.arange(10), 50)
    iid = _label_skew(partition("iid", labels, 10, seed=0), labels)
    skewed = _label_skew(partition("dirichlet", labels, 10, seed=0, alpha=0.1), labels)
    assert skewed > 2 * iid and skewed > 0.4


def test_partition_errors():
    with pytest.raises(ValueError, match="cannot split 3 records among 4 clients"):
        partition("iid", np.zeros(3), 4, seed=0)
    with pytest.raises(ValueError, match="min_per_client"):
        partition("dirichlet", np.zeros(10), 2, seed=0, min_per_client=6)
    # One class and a tiny alpha: nearly everything lands on one client, every attempt.
    with pytest.raises(ValueError, match="dirichlet.*fewer than 5 records in 100 attempts"):
        partition("dirichlet", np.zeros(40), 4, seed=0, alpha=0.01, min_per_client=5)
    with pytest.raises(UnknownNameError):
        partition("by-hospital", np.zeros(10), 2, seed=0)
    assert {n for n in PARTITIONERS.names() if PARTITIONERS.package(n)[0] == "fedmia"} == {"iid", "dirichlet"}


def test_site_manifests_give_the_ground_truth_of_the_auditors_targets(tmp_path):
    """Each site's manifest holds digests of its own files; the auditor's copies of shared files
    match them byte for byte, its other targets match none. Bad manifest folders are refused
    with the file named."""
    import json

    from fedmia.data.plan import NON_MEMBER
    from fedmia.data.sites import (ManifestError, ledger_from_manifests, read_manifests, record_digests,
                                   write_example_audit, write_manifest)
    from fedmia.scenario import DataSpec

    root = write_example_audit(tmp_path / "d", sites=("a", "b"), per_site=4, shared=2, others=3,
                               population=2, test=2, size=(20, 20))
    manifests = tmp_path / "manifests"
    for site in ("a", "b"):
        written = write_manifest(root / site, site, manifests / f"{site}.json")
        assert len(written["records"]) == 4 and "frame" not in json.dumps(written)  # digests, no names
    owner, counts = read_manifests(manifests, ["a", "b"])
    assert counts == {"a": 4, "b": 4}
    digests = record_digests(DataSpec(dataset="folder"), root / "auditor" / "targets")
    ledger = ledger_from_manifests(digests, owner, list(digests))
    assert sorted(v for v in ledger.values() if v != NON_MEMBER) == [0, 0, 1, 1]
    assert sum(v == NON_MEMBER for v in ledger.values()) == 3

    with pytest.raises(ManifestError, match=r"no manifest for site\(s\) \['c'\]"):
        read_manifests(manifests, ["a", "b", "c"])
    with pytest.raises(ManifestError, match=r"b.json: site: expected one of"):
        read_manifests(manifests, ["a", "x"])
    (manifests / "copy.json").write_text((manifests / "a.json").read_text().replace('"site": "a"', '"site": "b"'))
    with pytest.raises(ManifestError, match=r"also in the manifest of site 'a'|already has a manifest"):
        read_manifests(manifests, ["a", "b"])
    (manifests / "copy.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"copy.json: not a JSON site manifest"):
        read_manifests(manifests, ["a", "b"])
