"""Shared fixtures: tiny scenarios (real components, tiny sizes) and process hygiene."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

# Reference models the tests train go to a cache of this session's own, set before fedmia is
# imported (it reads $FEDMIA_CACHE once): a run of the suite neither reads models an earlier run
# left in the checkout's .fedmia-cache (its timings and results would rest on them) nor leaves
# any there. Subprocesses and Ray workers inherit it.
_CACHE = tempfile.mkdtemp(prefix="fedmia-test-cache-")
os.environ["FEDMIA_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

from fedmia.processes import alive, descendants, terminate  # noqa: E402

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "shapes", "image_size": 16, "options": {"binary": True},
             "members": 12, "heldout": 12, "population": 12},
    "model": {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 2},
    "federation": {"clients": 2, "rounds": 1, "local_epochs": 1, "batch_size": 4},
    "attacks": ["loss", "entropy", "confidence", "modified-entropy"],
    # OOD sets cost ~3 s a run; tests/test_reference_attacks.py asks for all of them
    "evaluation": {"ood": []},
}


def deep_update(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture
def write_scenario(tmp_path):
    """Write TINY (with `changes` merged in) to a YAML file and return its path."""

    def write(changes: dict | None = None, name: str = "scenario.yaml", raw: str | None = None) -> Path:
        path = tmp_path / name
        path.write_text(raw if raw is not None else yaml.safe_dump(deep_update(TINY, changes or {})))
        return path

    return write


def child_pids(pid: int | None = None) -> set[int]:
    """Every descendant of `pid` (default: this process)."""
    return descendants(os.getpid() if pid is None else pid)


def stop_pids(pids: set[int], timeout: float = 10.0) -> None:
    terminate(pids, timeout)


@pytest.fixture
def stops_its_processes():
    """Stop, by PID, every process the test left running, and report them."""
    before = child_pids()
    leftovers: dict[str, set[int]] = {}
    yield leftovers
    started = {p for p in child_pids() - before if alive(p)}
    leftovers["pids"] = started
    stop_pids(started)


@pytest.fixture(scope="session")
def example_plugins(tmp_path_factory):
    """tests/example_plugins pip-installed (a user's own package of plug-ins, one of each family)
    into a folder put on sys.path — and so on the PYTHONPATH that Ray workers inherit. Built from
    a copy, so the build leaves nothing in the repository. Yields the install folder."""
    import shutil
    import subprocess
    import sys

    from fedmia.registry import entry_points_of

    source = tmp_path_factory.mktemp("example-src") / "example_plugins"
    shutil.copytree(REPO / "tests" / "example_plugins", source)
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, timeout=300)
    sys.path.insert(0, str(target))
    entry_points_of.cache_clear()  # the metadata was read before the package was there
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        entry_points_of.cache_clear()


@contextmanager
def stops_flwr_run(home: Path):
    """Around a `flwr run` with FLWR_HOME=`home`: it leaves a background SuperLink (+ SuperExec)
    running, so on exit ours are found by PID lineage and by `home` in their command line, and
    stopped by PID."""
    before = child_pids()
    try:
        yield
    finally:
        ours = {p for p in child_pids() - before if alive(p)}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if str(home) in (entry / "cmdline").read_text():
                        ours.add(int(entry.name))
                except OSError:
                    pass
        ours |= {c for p in ours for c in child_pids(p)}
        stop_pids(ours)
        assert not [p for p in ours if alive(p)]


UNIT = Path(__file__).resolve().parent / "unit"


@pytest.fixture(autouse=True)
def unit_tests_start_no_ray(request):
    """The unit tier (tests/unit/: pure logic, `pytest tests/unit` in under 30 s) holds only tests
    that start no Ray: one that does belongs one folder up."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if UNIT in Path(request.node.path).resolve().parents:
        assert ray is None or not ray.is_initialized(), "a unit test started Ray: it belongs in tests/, not tests/unit/"
