"""Embedded datasets, partitioners, and the federation plan (members, targets, ledger)."""

from fedmia.data.datasets import DATASETS, load_dataset
from fedmia.data.records import DatasetInfo, Records

__all__ = ["DATASETS", "DatasetInfo", "Records", "load_dataset"]
