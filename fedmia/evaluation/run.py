"""The one reader of a run folder: `load_run(folder) -> Run` (and `finished_run`, which also
asks that the run be of a given scenario). `replicate`, `compare`, `evaluate`, `sweep`, `audit`
and `deploy` read runs through it and nothing else, so metrics.json is parsed in one place, by
its schema (fedmia/evaluation/schema.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fedmia.evaluation.schema import MetricsError, RunMetrics, check_metrics
from fedmia.runfolder import SCENARIO, RunFolderError, completion, scenario_digest

METRICS = "metrics.json"


def read_run_json(path: Path) -> dict:
    """A run folder's JSON file; RunFolderError naming the file when it is missing or broken."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing (not a finished run folder)") from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}: not valid JSON ({error})") from None


@dataclass(frozen=True)
class Run:
    """A run folder as written: its figures (typed), its completion record (None until it
    finished) and, on first use, its scenario."""

    folder: Path
    metrics: RunMetrics
    completion: dict[str, Any] | None

    @cached_property
    def scenario(self):
        """The scenario the run wrote first (`scenario.yaml`, resolved): its schema, no plug-in imported."""
        from fedmia.scenario import parse_schema, read_yaml

        return parse_schema(read_yaml(self.folder / SCENARIO), str(self.folder / SCENARIO))

    @property
    def label(self) -> str:
        return self.metrics.scenario or self.folder.name


def load_run(folder: Path) -> Run:
    """A run folder's metrics, checked against metrics.json's schema; RunFolderError (exit 2)
    naming the file and the key when they are missing, not JSON, or not the schema's."""
    folder = Path(folder)
    raw = read_run_json(folder / METRICS)
    try:
        metrics = check_metrics(raw, str(folder / METRICS))
    except MetricsError as error:
        raise RunFolderError(str(error)) from None
    return Run(folder, metrics, completion(folder))


def finished_run(folder: Path, scenario: Any) -> Run | None:
    """The finished run of exactly `scenario` in `folder`, else None (no completion record,
    another scenario's record, or unreadable results)."""
    record = completion(folder)
    if record is None or record.get("scenario_sha256") != scenario_digest(scenario):
        return None
    try:
        return load_run(folder)
    except RunFolderError:
        return None
