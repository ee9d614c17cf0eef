"""Caches of model outputs are keyed by what an object is, not by `id()`, which Python reuses
once an object is freed: the same run once gave source inference's OOD rate 0.31 or 0.02."""

from __future__ import annotations

import numpy as np

from fedmia.attacks.base import cache_token
from fedmia.data.records import Records


def _records(n: int = 2) -> Records:
    return Records(np.zeros((n, 1, 4, 4)), np.zeros((n, 4, 4), dtype=int), np.array([f"r{i}" for i in range(n)],
                                                                                    dtype=object))


def test_a_records_token_is_never_reused_even_when_its_id_is():
    seen, ids = set(), set()
    for _ in range(50):  # built and dropped: CPython hands the freed address to the next one
        records = _records()
        ids.add(id(records))
        assert cache_token(records) not in seen
        seen.add(cache_token(records))
        del records
    assert len(ids) < 50  # ids were reused; tokens were not
    subset = _records(3).subset(np.array([0, 1]))
    assert cache_token(subset) != cache_token(_records(3))


def test_a_stored_model_is_named_by_its_file_and_group_across_reads(tmp_path):
    from fedmia.transcript import _read_group

    path = tmp_path / "round.npz"
    np.savez(path, **{"sent/000": np.ones(3), "reply-1/000": np.zeros(3)})
    first = _read_group(str(path), 1, "sent")
    _read_group.cache_clear()  # evicted: the next read is a new list, maybe at the same address
    again = _read_group(str(path), 1, "sent")
    assert first is not again and cache_token(first) == cache_token(again)
    assert cache_token(_read_group(str(path), 1, "reply-1")) != cache_token(first)
    assert cache_token([np.ones(3)])[0] == "id"  # a model held in memory: its id, held all run
