"""Atomic file writes.

A run can be interrupted at any point (Ctrl-C, OOM kill, pre-empted job). Writing to a temporary
file in the *same directory* and then ``os.replace``-ing it over the target means a reader sees
either the old file or the complete new one, never a truncated half: ``os.replace`` is atomic
only within one file system, hence the same-directory temp file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["write_text_atomic", "write_bytes_atomic", "write_json_atomic", "save_figure_atomic"]


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort, since not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Create a temp file next to ``path``, let ``write`` fill it, fsync it, rename it over ``path``.

    The temp file keeps the target's suffix because some writers (matplotlib) pick the format
    from it; it is removed again if anything fails, so no ``*.tmp`` debris is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:  # the writer may have closed its own handle without fsync
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    _replace_atomically(path, write)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _replace_non_finite(obj: Any) -> Any:
    """Return ``obj`` with NaN/±inf floats replaced by ``None``.

    ``json`` would otherwise emit the bare tokens ``NaN``/``Infinity``, which are not JSON and
    break strict parsers (browsers, jq). Containers are rebuilt; numpy scalars used as dict keys
    become Python scalars because ``json`` rejects them as keys.
    """
    if isinstance(obj, float):  # includes np.float64, a float subclass
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {
            (k.item() if isinstance(k, np.generic) else k): _replace_non_finite(v) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [_replace_non_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    """``default=`` hook for what ``json`` cannot encode itself: numpy values and paths."""
    if isinstance(obj, (np.ndarray, np.generic)):
        # tolist()/item() yield Python scalars; the non-finite pass then maps NaN inside arrays too.
        return _replace_non_finite(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON; numpy values are converted and NaN/±inf become ``null``."""
    # allow_nan=False turns any non-finite value that slipped through into an error, not bad JSON.
    text = json.dumps(_replace_non_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    write_text_atomic(path, text + "\n")


def save_figure_atomic(fig: Any, path: Path, **savefig_kwargs: Any) -> None:
    """``fig.savefig`` to a temp file in the same directory, then rename it over ``path``."""
    path = Path(path)
    if "format" not in savefig_kwargs:
        # The temp name ends in the target's suffix; spell the format out so it never depends on that.
        savefig_kwargs["format"] = path.suffix.lstrip(".") or "png"

    def write(tmp: Path) -> None:
        fig.savefig(tmp, **savefig_kwargs)

    _replace_atomically(path, write)



def process_age() -> float | None:
    """Seconds since this process started (Linux `/proc`), or None where that is not readable:
    a run's `wall_s` then counts the imports before any of our code ran."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None
