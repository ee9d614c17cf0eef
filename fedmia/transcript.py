"""The transcript: exactly what the server could see, round by round.

It holds the weights the server sent to each client, each client's reply (its returned
weights, `num_examples` and metrics — under secure aggregation only their aggregate), the
config it sent, and the aggregate it computed. Attacks read this and nothing else of the run.
Saved as `transcript/index.json` plus one `.npz` per round, written atomically.

Streamed: once a round is saved (`save_round`, after every round of a run) its arrays leave
memory and are read back from its file one model at a time when asked for, so the server's
memory does not grow with the number of rounds (bench/RESULTS.md). `Transcript.load` gives the
same lazily read views.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedmia.io import write_bytes_atomic, write_json_atomic

Weights = list[np.ndarray]


class StoredWeights(list):
    """A model read back from a saved round: its arrays, and `token`, what it is (file, its
    version, group) — the same for every read of it, unlike the list's `id()`, which the next
    model read may reuse once this one is freed (`fedmia.attacks.base.cache_token`)."""

    token: tuple = ()


class _RoundFile:
    """A saved round's `.npz`: one group of arrays (one model's weights) read per request."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def group(self, name: str | None) -> Weights | None:
        if name is None:
            return None
        stat = self.path.stat()  # a rewritten file (pruned replies) is read afresh
        return _read_group(str(self.path), stat.st_mtime_ns, name)


@functools.lru_cache(maxsize=4)
def _read_group(path: str, mtime_ns: int, name: str) -> Weights | None:
    """Read-only arrays, so a consumer that changed them in place (and so the cached copy
    another consumer gets next) fails loudly instead."""
    prefix = name + "/"
    with np.load(path) as data:
        keys = sorted(k for k in data.files if k.startswith(prefix))
        if not keys:
            return None
        arrays = [data[k] for k in keys]
    for array in arrays:
        array.flags.writeable = False
    stored = StoredWeights(arrays)
    stored.token = ("stored", path, mtime_ns, name)
    return stored


class _StoredSent(Mapping):
    """node id → the weights sent to it, read from the round's file on access."""

    def __init__(self, file: _RoundFile, keys: dict[int, str]):
        self.file, self.keys = file, keys

    def __getitem__(self, node: int) -> Weights:
        return self.file.group(self.keys[node])

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _Released:
    """Attributes a saved round no longer holds in memory come from its file (`__getattr__`
    runs only when an attribute is absent from the instance, i.e. after `release`)."""

    def __getattr__(self, name: str):
        stored = self.__dict__.get("_stored")
        if stored is not None and name in self.__dict__.get("_groups", {}):
            return stored.group(self.__dict__["_groups"][name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _release(self, file: _RoundFile, groups: dict[str, str | None]) -> None:
        for name in groups:
            self.__dict__.pop(name, None)
        self.__dict__["_stored"], self.__dict__["_groups"] = file, groups


@dataclass
class Reply(_Released):
    node_id: int
    num_examples: int
    metrics: dict
    weights: Weights | None  # None when the server could not see it, or it was not kept


@dataclass
class AttackNotes:
    """What a strategy records about its own attack in a round — the part of its bookkeeping that
    attacks may read (a real malicious server knows what it did)."""

    attacked: str | None = None  # which manipulation ran this round, if any
    target_node: int | None = None  # isolation: the node singled out
    target_client: int | None = None  # isolation: its partition-id (learned from plaintext metrics)
    attacked_params: list[str] = field(default_factory=list)  # parameters the manipulation covers
    details: dict = field(default_factory=dict)  # strategy-specific numbers (ascent strength, rehearsal)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, [], {})}

    @classmethod
    def from_json(cls, data: dict) -> "AttackNotes":
        return cls(**data)


@dataclass
class ResumeState:
    """What a resumed run needs to continue exactly (attacks never read it)."""

    clipping_norm: float | None = None  # central DP's adaptive clipping norm after the round

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class RoundView(_Released):
    round: int
    sent: dict[int, Weights] = field(default_factory=dict)  # node id → weights sent to it
    config: dict[int, dict] = field(default_factory=dict)  # node id → fit config sent to it
    replies: list[Reply] = field(default_factory=list)
    aggregate: Weights | None = None  # the next global model
    # the example-weighted mean of the clients' updates as the aggregation revealed it (under
    # SecAgg+ the only client-derived weights the server sees)
    observed_update: Weights | None = None
    failures: int = 0
    failure_messages: list[str] = field(default_factory=list)  # the end of each client's error
    round_s: float | None = None  # wall time of the round on the server
    # the clients' own evaluation of the round's model (federation.federated_evaluation): loss,
    # dice, miou, clients, failures
    federated_evaluation: dict | None = None
    notes: AttackNotes = field(default_factory=AttackNotes)
    state: ResumeState = field(default_factory=ResumeState)

    def reply_of(self, node_id: int) -> Reply:
        return next(r for r in self.replies if r.node_id == node_id)

    def release(self, path: Path, entry: dict) -> None:
        """Drop this round's arrays from memory: from now on they are read from its saved file
        `path` (described by its index `entry`) when asked for."""
        file = _RoundFile(path)
        self.sent = _StoredSent(file, {int(node): key for node, key in entry["sent"].items()})
        for reply, saved in zip(self.replies, entry["replies"]):
            reply._release(file, {"weights": f"reply-{reply.node_id}" if saved["weights_kept"] else None})
        self._release(file, {"aggregate": "aggregate", "observed_update": "observed-update"})

    def stored_in(self, folder: Path) -> bool:
        stored = self.__dict__.get("_stored")
        return stored is not None and stored.path.parent.resolve() == Path(folder).resolve()


# A dataclass keeps a field's default as a class attribute, which would answer for a released
# round before `__getattr__` is asked; `__init__` holds its own copy of the defaults.
del RoundView.aggregate, RoundView.observed_update


@dataclass
class Transcript:
    weight_names: list[str]
    initial: Weights
    rounds: list[RoundView] = field(default_factory=list)
    secure_aggregation: bool = False

    @property
    def final(self) -> Weights:
        for view in reversed(self.rounds):
            aggregate = view.aggregate
            if aggregate is not None:
                return aggregate
        return self.initial

    def global_before(self, round_number: int) -> Weights:
        """The global model at the start of `round_number` (before any per-client tailoring)."""
        for view in reversed(self.rounds):  # newest first: reads one saved aggregate, not all
            if view.round < round_number:
                aggregate = view.aggregate
                if aggregate is not None:
                    return aggregate
        return self.initial

    # ---- persistence -------------------------------------------------------------------
    def save(self, folder: Path, keep: str = "all") -> None:
        """`keep`: "all" replies, only the "final" round's, or "none" (global models only).
        Rounds already streamed to `folder` are rewritten only when replies are to be dropped."""
        folder = Path(folder)
        last = self.rounds[-1].round if self.rounds else None
        pending = [v for v in self.rounds
                   if not (v.stored_in(folder) and (keep == "all" or (keep == "final" and v.round == last)))]
        self._write(folder, keep, write_views=pending, index_views=self.rounds)

    def _write(self, folder: Path, keep: str, write_views: list[RoundView], index_views: list[RoundView]) -> None:
        """Write the round files of `write_views`, then an index listing `index_views`; the
        written views are released (their arrays now read from the files)."""
        folder.mkdir(parents=True, exist_ok=True)
        index = {"weight_names": self.weight_names, "secure_aggregation": self.secure_aggregation, "rounds": []}
        _write_npz(folder / "initial.npz", {"w": self.initial})
        last = index_views[-1].round if index_views else None
        entries = {}
        for view in write_views:
            keep_replies = keep == "all" or (keep == "final" and view.round == last)
            arrays: dict[str, Weights] = {}
            sent_keys: dict[str, str] = {}
            by_digest: dict[str, str] = {}
            for node, weights in view.sent.items():
                digest = _digest(weights)  # the honest server sends one model to all: store it once
                if digest not in by_digest:
                    by_digest[digest] = f"sent-{len(by_digest)}"
                    arrays[by_digest[digest]] = weights
                sent_keys[str(node)] = by_digest[digest]
            replies = []
            for reply in view.replies:
                stored = keep_replies and reply.weights is not None
                if stored:
                    arrays[f"reply-{reply.node_id}"] = reply.weights
                replies.append({"node_id": reply.node_id, "num_examples": reply.num_examples,
                                "metrics": reply.metrics, "weights_kept": stored})
            if view.aggregate is not None:
                arrays["aggregate"] = view.aggregate
            if view.observed_update is not None:
                arrays["observed-update"] = view.observed_update
            file = f"round-{view.round:03d}.npz"
            _write_npz(folder / file, arrays)
            entries[view.round] = {"round": view.round, "file": file, "sent": sent_keys,
                                   "config": {str(k): v for k, v in view.config.items()},
                                   "replies": replies, "failures": view.failures,
                                   "failure_messages": view.failure_messages, "round_s": view.round_s,
                                   "federated_evaluation": view.federated_evaluation,
                                   "notes": view.notes.to_json(), "state": view.state.to_json(),
                                   "has_aggregate": view.aggregate is not None}
        previous = {}
        if (folder / "index.json").exists():  # rounds written by earlier checkpoints
            previous = {e["round"]: e for e in json.loads((folder / "index.json").read_text())["rounds"]}
        index["rounds"] = [entries.get(v.round) or previous[v.round] for v in index_views]
        write_json_atomic(folder / "index.json", index)
        for view in write_views:
            view.release(folder / entries[view.round]["file"], entries[view.round])

    def save_round(self, folder: Path, view: RoundView) -> None:
        """Checkpoint: write this round's file (every reply kept) and the index so far."""
        self._write(Path(folder), keep="all", write_views=[view], index_views=self.rounds)

    @classmethod
    def load(cls, folder: Path) -> "Transcript":
        folder = Path(folder)
        index = json.loads((folder / "index.json").read_text())
        transcript = cls(index["weight_names"], _read_npz(folder / "initial.npz")["w"],
                         secure_aggregation=index["secure_aggregation"])
        for entry in index["rounds"]:
            view = RoundView(entry["round"], failures=entry["failures"],
                             failure_messages=entry.get("failure_messages", []), round_s=entry.get("round_s"),
                             federated_evaluation=entry.get("federated_evaluation"),
                             notes=AttackNotes.from_json(entry.get("notes", {})),
                             state=ResumeState(**entry.get("state", {})))
            view.config = {int(node): cfg for node, cfg in entry["config"].items()}
            view.replies = [Reply(r["node_id"], r["num_examples"], r["metrics"], None) for r in entry["replies"]]
            view.release(folder / entry["file"], entry)  # arrays read from the file when asked for
            transcript.rounds.append(view)
        return transcript


def _digest(weights: Weights) -> str:
    h = hashlib.blake2b(digest_size=16)
    for array in weights:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _write_npz(path: Path, groups: dict[str, Weights]) -> None:
    flat = {f"{name}/{i:04d}": np.asarray(a) for name, weights in groups.items() for i, a in enumerate(weights)}
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    write_bytes_atomic(path, buffer.getvalue())


def _read_npz(path: Path) -> dict[str, Weights]:
    groups: dict[str, list[tuple[int, np.ndarray]]] = {}
    with np.load(path) as data:
        for key in data.files:
            name, _, i = key.rpartition("/")
            groups.setdefault(name, []).append((int(i), data[key]))
    return {name: [a for _, a in sorted(items, key=lambda t: t[0])] for name, items in groups.items()}


class CheckpointError(ValueError):
    """A checkpoint (transcript folder) that cannot be read back whole; the message names the file."""


def check_checkpoint(folder: Path) -> int:
    """Read a run's checkpoint back whole — its index, the initial model and every round's arrays
    (numpy checks each array's CRC in the zip) — before a resume builds on it; returns the rounds
    it holds. A truncated or corrupted file raises CheckpointError naming it."""
    folder = Path(folder)
    if not (folder / "index.json").exists():
        return 0  # interrupted before its first round ended: the run starts from round 1
    current = folder / "index.json"
    try:
        index = json.loads(current.read_text())
        current = folder / "initial.npz"
        _read_npz(current)
        for entry in index["rounds"]:
            current = folder / entry["file"]
            _read_npz(current)
        return len(index["rounds"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else f"{type(error).__name__}: {error}"
        raise CheckpointError(f"{current}: the checkpoint cannot be read back ({reason}); "
                              "truncated or corrupted") from None
