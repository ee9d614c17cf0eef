"""A run folder holds one run, and says whether it finished.

Lifecycle: *claimed* (the scenario written first: `scenario.yaml`) → rounds checkpointed
(`transcript/`) → results (`metrics.json`, report, plots) → *finished*: `completed.json`, written
last, holding the SHA-256 of the scenario's canonical form, the versions of fedmia and the key
libraries, and when it finished. A folder without that record never reads as finished, whatever
else is in it — so a rerun that fails half-way cannot leave the new scenario beside the old
figures and pass for a finished run. `sweep`, `replicate`, `audit` and `deploy` reuse or report a
run only when its record names the scenario they mean (`evaluation.run.finished_run`).

Nothing is deleted without being asked: a folder that holds a run is refused (exit 2) unless the
caller resumes it or forces a new one, and forcing moves the old run aside, it does not remove it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from fedmia.io import write_json_atomic, write_text_atomic

COMPLETION = "completed.json"
SCENARIO = "scenario.yaml"
# the libraries whose version changes what a run computes
KEY_LIBRARIES = ("torch", "flwr", "segmentation-models-pytorch", "opacus", "numpy", "scikit-learn")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (a usage problem: exit 2). The message names the
    folder, what is there and the ways on."""

    exit_code = 2


def scenario_digest(scenario: Any) -> str:
    """SHA-256 of the scenario's canonical JSON (every default filled in): two runs share it iff
    they ran the same resolved scenario."""
    return hashlib.sha256(scenario.canonical().encode("utf-8")).hexdigest()


def versions() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"fedmia": version("fedmia"), **{name: version(name) for name in KEY_LIBRARIES}}


def state(folder: Path) -> str:
    """'absent' | 'empty' | 'file' | 'finished' | 'unfinished' (a run that never completed:
    interrupted, failed, or still running) | 'foreign' (a non-empty folder that holds no run)."""
    folder = Path(folder)
    if not folder.exists():
        return "absent"
    if not folder.is_dir():
        return "file"
    if (folder / COMPLETION).is_file():
        return "finished"
    if (folder / SCENARIO).is_file():
        return "unfinished"
    return "foreign" if any(folder.iterdir()) else "empty"


def completion(folder: Path) -> dict | None:
    """The completion record, or None when there is none or it cannot be read."""
    try:
        record = json.loads((Path(folder) / COMPLETION).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def move_aside(folder: Path) -> Path:
    """Rename `folder` to a free sibling `NAME.replaced-YYYYmmdd-HHMMSS[-k]`; returns it."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.replaced-{stamp}")
    k = 1
    while target.exists():
        k += 1
        target = folder.with_name(f"{folder.name}.replaced-{stamp}-{k}")
    shutil.move(str(folder), str(target))
    return target


def check_claim(folder: Path, *, resume: bool = False, force: bool = False) -> str:
    """What `claim` would refuse, raised before anything starts (RunFolderError); returns the
    folder's state. Refused: a file, a non-empty folder that is not a run folder, and a folder
    holding a run unless `force` (a fresh run) or `resume` (an unfinished one)."""
    folder = Path(folder)
    found = state(folder)
    if found == "file":
        raise RunFolderError(f"{folder}: is a file, not a folder; expected a run folder (--out NEW_FOLDER)")
    if found == "foreign":
        raise RunFolderError(f"{folder}: holds files but no fedmia run (no {SCENARIO}); expected an empty or "
                             "new folder — choose another --out, nothing here was changed")
    if resume:
        if found == "finished":
            raise RunFolderError(f"{folder}: this run has finished ({COMPLETION}); nothing to resume — "
                                 "start a new run with --out NEW_FOLDER, or --force to move this one aside")
        if found != "unfinished":
            raise RunFolderError(f"{folder}: not a fedmia run folder (no {SCENARIO} in it); nothing to resume")
    elif found in ("finished", "unfinished") and not force:
        what = "a finished run" if found == "finished" else "an unfinished run"
        way = "" if found == "finished" else f"resume it (fedmia run --resume {folder}), or "
        raise RunFolderError(f"{folder}: already holds {what}; {way}start again with --force (the old run is "
                             "moved aside, not deleted), or choose another --out")
    return found


def claim(folder: Path, scenario: Any, *, resume: bool = False, force: bool = False) -> Path | None:
    """Make `folder` this run's: write the scenario first (a fresh run), or check it is the
    unfinished run to resume (`check_claim` says what is refused). With `force`, a run already
    there is moved aside (returned), never deleted."""
    folder = Path(folder)
    found = check_claim(folder, resume=resume, force=force)
    if resume:
        return None
    moved = move_aside(folder) if found in ("finished", "unfinished") else None
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / SCENARIO, scenario.to_yaml())
    return moved


def complete(folder: Path, scenario: Any, **extra: Any) -> dict:
    """Write the completion record — the last file a run writes."""
    record = {"scenario": scenario.name, "scenario_sha256": scenario_digest(scenario), "versions": versions(),
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
    write_json_atomic(Path(folder) / COMPLETION, record)
    return record
