"""Durable online state: an event-sourced store in SQLite (WAL mode) under a state directory.

Every decision (a Search or Complete answer that may later earn feedback) and every feedback event
is committed before the call that records it returns. The online state (bandit parameters, click
statistics, ...) is a plug-in object (:class:`OnlineState`) that this module never looks inside: it
is fed the committed feedback events in commit order, snapshotted to an opaque blob periodically and
at graceful shutdown, and rebuilt at start by loading the newest snapshot and replaying the events
committed after it. Since the state is a deterministic function of the ordered event log, recovery
reaches exactly the state that the acknowledged events (plus, at most, events that were committed
but whose acknowledgement was lost in a crash) define.

This module imports nothing from ``qac`` or ``retrieval``; the servicer plugs the objects in.

State directory
---------------
``state_dir/state.sqlite3`` (+ ``-wal``/``-shm``), ``state_dir/LOCK`` and (shared mode)
``state_dir/SNAPSHOT.LOCK``. By default one process at a time: the store takes an exclusive ``flock``
on ``LOCK`` (released by the kernel when the process dies, so a ``kill -9`` never leaves a stale
lock). With ``shared=True`` several processes (``qac serve --processes N``) open one directory
together; see "Several processes" below. Tables::

    decisions(decision_id TEXT PRIMARY KEY, created_at REAL, kind TEXT, payload TEXT)   -- JSON
    feedback(seq INTEGER PRIMARY KEY AUTOINCREMENT, decision_id TEXT REFERENCES decisions,
             item TEXT, position INTEGER, created_at REAL, payload TEXT, UNIQUE(decision_id, item))
    snapshots(seq_upto INTEGER PRIMARY KEY, created_at REAL, blob BLOB, sha256 TEXT)

``seq`` is assigned by ``AUTOINCREMENT``: strictly increasing and never reused, so "the events after
snapshot ``s``" is ``seq > s``. Feedback rows are never deleted (the next offline build reads them).

Durability guarantee (``synchronous``)
--------------------------------------
In WAL mode a commit appends the transaction's pages to the ``-wal`` file with ``write(2)`` before
``COMMIT`` returns. With ``synchronous="NORMAL"`` (the default) the WAL is not ``fsync``-ed per
commit, only at checkpoints: a committed transaction survives the death of the process (``kill -9``,
segfault, OOM kill), because its bytes are already in the kernel's page cache, but the last
transactions before a power loss or kernel crash may be lost (the database stays consistent: a
torn tail of the WAL is ignored on open). With ``synchronous="FULL"`` the WAL is ``fsync``-ed at
every commit, which also survives power loss, at the cost of one ``fsync`` per Feedback. The
requirement we serve is "an acknowledged event survives a crash of the server process" with a
Feedback p99 of 2 ms, so NORMAL is the default. ``bench/bench_state.py`` measures both: on the
development VM (2 vCPU, shared, virtio disk) one ``fsync`` cost 0.3 ms median / 3.6 ms p99 when the
machine was quiet and 1.3-8 ms median / ~16 ms p99 under load, so FULL cannot meet 2 ms p99 there;
NORMAL's bare commit was ~25 us median. Choose FULL (or group commit) if power-loss durability of
every acknowledged event is required.

Ordering and locking
--------------------
Two locks. ``store.lock`` (re-entrant) is the *state lock*: :func:`apply_feedback` holds it around
"commit the event, then apply it", so the order in which events reach the online state equals their
``seq`` order, which is the order replay uses; readers of the online state that need a consistent
view may take it too. ``_db_lock`` serialises use of the single SQLite connection (decisions take only
this one, so Search/Complete never wait for a Feedback's ``apply``).

Why one connection behind a lock: it is what makes "application order == seq order" cheap (commit
and apply under one lock) and keeps SQLite's busy handler (which sleeps in 1, 2, 5, ... ms steps)
out of the picture. It is not free under heavy write concurrency: with 8 threads writing
back to back on a 2-core VM at load average ~8, ``bench_state.py`` measured the store's Feedback
p90/p99 at ~16-30 ms / ~45-60 ms versus ~0.3 ms / ~10-12 ms for one connection per thread (which
gives up the ordering guarantee). The tail there is most likely a Python lock convoy (a thread
releases the lock but keeps the GIL for up to the 5 ms switch interval); not verified further. Single-threaded the store's Feedback
p50 is ~0.2 ms. A single writer thread with group commit is the known fix if Feedback concurrency
gets that high; see the report in ``bench_state.py``.

Snapshots never hold the state lock for long: under the lock the store records ``seq_upto`` and asks
the state for a cheap copy (``copy_for_snapshot()`` if the state has it, e.g. ``dict.copy`` and
``ndarray.copy``; otherwise it calls ``to_snapshot()`` under the lock); encoding the copy and writing
the blob happen after the lock is released, in a background thread for periodic snapshots. The blob
is written in one transaction together with the pruning of old snapshots (the newest
``keep_snapshots`` are kept), so a half-written snapshot row never exists; each row also carries the
blob's sha256, and recovery skips a snapshot whose blob does not match it (falling back to the
previous one, or to replaying the whole log). Caveat: the blob's INSERT holds the db lock, so
Feedback and decisions wait for it: for a 6.3 MB blob (210k click counts) that was ~120 ms on the
loaded development VM (the state lock was held ~23 ms for the 210k-entry ``dict.copy``). Once per
``snapshot_every_events`` events this is a p99.9 effect, not a p99 one; writing the blob in chunks
over several short transactions would remove it.

Several processes (``shared=True``)
-----------------------------------
Every process holds a *shared* ``flock`` on ``LOCK`` (so an exclusive store cannot open the directory
while they run, and they cannot open it while an exclusive store does), commits its own decisions
and feedback to the one database (SQLite serialises writers across processes: every INSERT takes the
database's write lock, so ``seq`` order is commit order), and keeps its own in-memory
online state. A process's state always reflects exactly the events with ``seq <= applied_seq``:
:meth:`StateStore.catch_up` applies the events other processes committed since (one indexed
``SELECT``), and :func:`apply_feedback` applies the events between the last applied one and its own
new event before applying its own. So every process goes through the same ordered event log and
reaches the same state as a single process would (and as recovery does); a process lags the log
only by the events committed since it last caught up (the servicer catches up before each Search and
Complete). Decisions are read from the database, so a Feedback may reach any process, whichever
logged the decision. Snapshots: only the process holding an exclusive ``flock`` on
``SNAPSHOT.LOCK`` (taken by the first process that wants to snapshot; released when it exits, so
another takes over) writes them; each snapshot is still "the state after the events
``seq <= seq_upto``". At graceful shutdown a process catches up before its final snapshot, and
only the last process to leave truncates the WAL.

Every decision and feedback row is one autocommit ``INSERT`` (``StateStore._write_one``): the write
lock is then held only inside one C call with the GIL released. In an explicit ``BEGIN IMMEDIATE ...
COMMIT`` a thread can hold the lock while it waits for its own process's GIL between statements,
and the other processes then sleep in SQLite's busy handler (1, 2, 5, 10, ... ms steps): measured
with two server processes at 100 Search/s, p99 311 ms with transactions against 25 ms without
(README, "Load test").

The connection never checkpoints on commit (``wal_autocheckpoint=0``): a checkpoint copies the WAL into
the database and ``fsync``-s it, which would land on whichever Feedback happened to cross the
threshold. A background thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection every
``checkpoint_every_commits`` commits and after every snapshot; a passive checkpoint does not take the
write lock, so commits proceed while it runs.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import numbers
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

DB_NAME = "state.sqlite3"
LOCK_NAME = "LOCK"
SNAPSHOT_LOCK_NAME = "SNAPSHOT.LOCK"
SCHEMA_VERSION = 1
DECISION_KINDS = ("search", "complete")
SYNCHRONOUS_MODES = ("NORMAL", "FULL")

MAX_ID_CHARS = 128
MAX_ITEM_CHARS = 2048
MAX_POSITION = 10_000
MAX_PAYLOAD_BYTES = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('search', 'complete')),
    payload     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id TEXT NOT NULL REFERENCES decisions(decision_id),
    item        TEXT NOT NULL,
    position    INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    payload     TEXT NOT NULL,
    UNIQUE (decision_id, item)
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq_upto    INTEGER PRIMARY KEY,
    created_at  REAL NOT NULL,
    blob        BLOB NOT NULL,
    sha256      TEXT NOT NULL
);
"""

_EVENT_COLUMNS = ("f.seq, f.decision_id, f.item, f.position, f.created_at, f.payload, "
                  "d.kind, d.created_at, d.payload")


# --------------------------------------------------------------------------------------------------
# Errors and value types
# --------------------------------------------------------------------------------------------------
class InvalidEvent(ValueError):
    """A field of a decision or feedback event has a bad value.

    Parameters
    ----------
    field : str
        The field's name (``decision_id``, ``kind``, ``item``, ``position``, ``payload``, ...).
    message : str
        Why it is bad.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownDecision(LookupError):
    """Feedback names a decision id that was never recorded (or was recorded by another store)."""

    def __init__(self, decision_id: str) -> None:
        super().__init__(f"decision_id: unknown decision {decision_id!r}")
        self.decision_id = decision_id


class DuplicateDecision(ValueError):
    """A decision id was recorded twice (decision ids must be unique)."""

    def __init__(self, decision_id: str) -> None:
        super().__init__(f"decision_id: decision {decision_id!r} already recorded")
        self.decision_id = decision_id


class StateDirLocked(RuntimeError):
    """Another live process holds the state directory."""


class StateDiverged(RuntimeError):
    """An online-state ``apply`` raised after its event was committed; restart to recover."""


@dataclass(frozen=True)
class FeedbackEvent:
    """One committed feedback event joined with the decision it answers.

    Live application and replay receive equal events: both are decoded from the stored rows
    (the JSON payloads are ``json.loads`` of the stored text, never the caller's original objects),
    so a deterministic ``apply`` gives bit-identical state either way.

    Attributes
    ----------
    seq : int
        Commit order, strictly increasing, starts at 1.
    decision_id, item : str
    position : int
        0-based position of the clicked item / accepted suggestion in the response.
    created_at : float
        Unix seconds when the feedback was committed.
    payload : dict
        Feedback payload (JSON-decoded).
    kind : str
        The decision's kind, ``"search"`` or ``"complete"``.
    decided_at : float
        Unix seconds when the decision was committed.
    decision : dict
        The decision payload (JSON-decoded), e.g. context features, allocation, propensity.
    """

    seq: int
    decision_id: str
    item: str
    position: int
    created_at: float
    payload: dict
    kind: str
    decided_at: float
    decision: dict


@dataclass(frozen=True)
class FeedbackResult:
    """Outcome of :meth:`StateStore.record_feedback`.

    ``duplicate=True`` means an event with the same ``(decision_id, item)`` was already committed:
    ``seq`` is that event's seq, nothing new was written and ``event`` is ``None``.
    """

    seq: int
    duplicate: bool
    event: FeedbackEvent | None = None


@dataclass(frozen=True)
class RecoveryResult:
    """What :meth:`StateStore.recover` did.

    Attributes
    ----------
    snapshot_seq : int
        ``seq_upto`` of the snapshot loaded, 0 if none (replayed from the first event).
    n_replayed : int
        Events applied after the snapshot.
    last_seq : int
        Seq of the last event now reflected in the state (0 for an empty log).
    n_snapshots_skipped : int
        Snapshots whose blob failed its sha256 check.
    load_ms, replay_ms : float
    """

    snapshot_seq: int
    n_replayed: int
    last_seq: int
    n_snapshots_skipped: int
    load_ms: float
    replay_ms: float


@runtime_checkable
class OnlineState(Protocol):
    """The in-memory online state plugged into a :class:`StateStore`.

    ``apply`` must be deterministic (same events in the same order -> same state, no wall clock,
    no unseeded randomness) and must not raise for an event that passed validation: the event is
    already committed when ``apply`` runs. ``load_snapshot(to_snapshot())`` must reproduce the state.

    Optional: ``copy_for_snapshot() -> object with to_snapshot()``. If present, the store calls it
    under the state lock (it should be a cheap copy) and encodes the copy outside the lock.
    """

    def apply(self, event: FeedbackEvent) -> None: ...

    def to_snapshot(self) -> bytes: ...

    def load_snapshot(self, blob: bytes) -> None: ...


# --------------------------------------------------------------------------------------------------
# Snapshot blob format: JSON header + one np.save per array (no pickle)
# --------------------------------------------------------------------------------------------------
_BLOB_MAGIC = b"QACSTAT1"
_BLOB_HEADER = struct.Struct("<8sQ")


def pack_arrays(arrays: Mapping[str, np.ndarray], meta: dict | None = None) -> bytes:
    """Pack named arrays and a JSON-able ``meta`` dict into one self-describing blob.

    Layout: ``b"QACSTAT1"``, header length (uint64 little-endian), UTF-8 JSON header
    ``{"meta": ..., "arrays": [{"name", "nbytes"}, ...]}``, then each array as the bytes of
    ``np.save(..., allow_pickle=False)`` (a ``.npy`` record: dtype, shape and order are in it).

    Raises
    ------
    ValueError
        An array name is not a non-empty string, an array has dtype ``object``, or ``meta`` is not
        JSON-serialisable (NaN/inf included).
    """
    parts: list[bytes] = []
    entries = []
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"array name must be a non-empty str, got {name!r}")
        arr = np.asarray(arr)
        if arr.dtype.hasobject:
            raise ValueError(f"array {name!r}: dtype {arr.dtype} holds Python objects; not allowed")
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        data = buf.getvalue()
        parts.append(data)
        entries.append({"name": name, "nbytes": len(data)})
    try:
        header = json.dumps({"meta": meta or {}, "arrays": entries}, allow_nan=False,
                            separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta is not JSON-serialisable: {exc}") from None
    return b"".join([_BLOB_HEADER.pack(_BLOB_MAGIC, len(header)), header, *parts])


def unpack_arrays(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Inverse of :func:`pack_arrays`: ``(meta, {name: array})``; arrays are fresh, writable copies.

    Raises
    ------
    ValueError
        Wrong magic, truncated or trailing bytes, malformed header, or an array record that
        ``np.load(allow_pickle=False)`` refuses.
    """
    view = memoryview(blob)
    if len(view) < _BLOB_HEADER.size:
        raise ValueError(f"snapshot blob: {len(view)} bytes, shorter than its fixed header")
    magic, n_header = _BLOB_HEADER.unpack_from(view, 0)
    if magic != _BLOB_MAGIC:
        raise ValueError(f"snapshot blob: bad magic {bytes(magic)!r}")
    start = _BLOB_HEADER.size
    if start + n_header > len(view):
        raise ValueError("snapshot blob: truncated header")
    try:
        header = json.loads(bytes(view[start:start + n_header]).decode("utf-8"))
        meta, entries = header["meta"], header["arrays"]
        sizes = [(str(e["name"]), int(e["nbytes"])) for e in entries]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"snapshot blob: malformed header ({exc})") from None
    offset = start + n_header
    arrays: dict[str, np.ndarray] = {}
    for name, nbytes in sizes:
        end = offset + nbytes
        if nbytes < 0 or end > len(view):
            raise ValueError(f"snapshot blob: array {name!r} truncated")
        try:
            arrays[name] = np.load(io.BytesIO(view[offset:end]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"snapshot blob: array {name!r} unreadable ({exc})") from None
        offset = end
    if offset != len(view):
        raise ValueError(f"snapshot blob: {len(view) - offset} trailing bytes")
    return meta, arrays


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def _check_text(field_name: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(field_name, f"must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidEvent(field_name, "must not be empty")
    if len(value) > max_chars:
        raise InvalidEvent(field_name, f"longer than {max_chars} characters")
    if "\x00" in value:
        raise InvalidEvent(field_name, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(field_name, "is not valid Unicode (lone surrogate)") from None
    return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _dump_payload(field_name: str, payload: Any) -> str:
    if payload is None:
        return "{}"
    if not isinstance(payload, Mapping):
        raise InvalidEvent(field_name, f"must be a dict, got {type(payload).__name__}")
    try:
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"), ensure_ascii=False,
                          default=_json_default)
        n_bytes = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEvent(field_name, "is not valid Unicode (lone surrogate)") from None
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(field_name, f"not JSON-serialisable ({exc})") from None
    if n_bytes > MAX_PAYLOAD_BYTES:
        raise InvalidEvent(field_name, f"larger than {MAX_PAYLOAD_BYTES} bytes as JSON")
    return text


def _check_position(position: Any) -> int:
    if isinstance(position, bool) or not isinstance(position, numbers.Integral):
        raise InvalidEvent("position", f"must be an int, got {type(position).__name__}")
    position = int(position)
    if not 0 <= position < MAX_POSITION:
        raise InvalidEvent("position", f"must be in [0, {MAX_POSITION}), got {position}")
    return position


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------
@dataclass
class _Maintenance:
    """Work requested from the background thread (guarded by ``StateStore._bg_cond``)."""

    snapshot_state: OnlineState | None = None
    checkpoint: bool = False
    stop: bool = False
    thread: threading.Thread | None = None
    errors: list = field(default_factory=list)


class StateStore:
    """Event-sourced durable store for decisions, feedback and snapshots of an online state.

    Parameters
    ----------
    state_dir : Path
        Created if missing. Holds ``state.sqlite3`` and ``LOCK``.
    synchronous : {"NORMAL", "FULL"}
        SQLite ``PRAGMA synchronous`` in WAL mode. NORMAL: acknowledged events survive a process
        crash, not necessarily a power loss. FULL: ``fsync`` per commit; survive power loss too.
    snapshot_every_events : int
        :func:`apply_feedback` requests a background snapshot once this many events were applied
        since the last one. ``0`` disables periodic snapshots (``close`` still writes one).
    checkpoint_every_commits : int
        Commits between background WAL checkpoints.
    keep_snapshots : int
        Snapshots kept (the newest ones); at least 1.
    shared : bool
        Open the directory together with other processes that also pass ``shared=True`` (module
        doc, "Several processes"). False: this process alone.

    Raises
    ------
    ValueError
        Bad parameter.
    StateDirLocked
        Another live process has the state directory open (any process, when not ``shared``; an
        exclusive one, when ``shared``).
    """

    def __init__(self, state_dir: Path, *, synchronous: str = "NORMAL",
                 snapshot_every_events: int = 10_000, checkpoint_every_commits: int = 2_000,
                 keep_snapshots: int = 2, shared: bool = False) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        for name, value, lo in (("snapshot_every_events", snapshot_every_events, 0),
                                ("checkpoint_every_commits", checkpoint_every_commits, 1),
                                ("keep_snapshots", keep_snapshots, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
        self.state_dir = Path(state_dir)
        self.synchronous = synchronous
        self.snapshot_every_events = snapshot_every_events
        self.checkpoint_every_commits = checkpoint_every_commits
        self.keep_snapshots = keep_snapshots
        self.shared = bool(shared)
        self.path = self.state_dir / DB_NAME

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.state_dir / LOCK_NAME, "a+b")
        try:
            fcntl.flock(self._lock_file.fileno(), (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            how = "exclusively by another process" if self.shared else "by another process"
            raise StateDirLocked(f"{self.state_dir}: state directory is in use {how}") from None
        # Exclusive mode: this process is the only one, so the only snapshot writer.
        self._snapshot_lock_file = None
        self._snapshot_writer = not self.shared

        self.lock = threading.RLock()
        self._db_lock = threading.Lock()
        self._snapshot_mutex = threading.Lock()
        self._bg_cond = threading.Condition()
        self._bg = _Maintenance()
        self._closed = False
        self._recovered = False
        self._diverged: BaseException | None = None
        self._applied_seq = 0
        self._last_snapshot_seq = 0
        self._snapshot_requested_seq = 0
        self._commits_since_checkpoint = 0
        try:
            self._conn = self._connect()
            self._init_schema()
            self._ckpt_conn = self._connect()
        except BaseException:
            self._release_dir_lock()
            raise

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise RuntimeError(f"{self.path}: could not enable WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
        return conn

    def _init_schema(self) -> None:
        with self._db_lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(f"{self.path}: schema version {version}, this code reads {SCHEMA_VERSION}")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in one ``BEGIN IMMEDIATE ... COMMIT`` under the db lock; roll back on error."""
        with self._db_lock:
            self._check_open()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            due = self._count_commit()
        if due:
            self._request(checkpoint=True)
        return out

    def _write_one(self, sql: str, params: tuple) -> int:
        """Run one INSERT as its own (autocommit) transaction under the db lock; returns its rowid.

        One statement is one ``sqlite3_step`` with the GIL released, so SQLite's write lock (which
        other processes sharing the directory wait for) is held only while C code runs, never across
        Python bytecode that may wait for the GIL. Raises ``sqlite3.IntegrityError`` on a constraint.
        """
        with self._db_lock:
            self._check_open()
            rowid = self._conn.execute(sql, params).lastrowid
            due = self._count_commit()
        if due:
            self._request(checkpoint=True)
        return int(rowid)

    def _count_commit(self) -> bool:
        """Count a commit (caller holds the db lock); True when a background checkpoint is due."""
        self._commits_since_checkpoint += 1
        due = self._commits_since_checkpoint >= self.checkpoint_every_commits
        if due:
            self._commits_since_checkpoint = 0
        return due

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.path}: store is closed")

    # -- decisions and feedback ---------------------------------------------------------------
    def record_decision(self, decision_id: str, kind: str, payload: Mapping | None = None) -> float:
        """Commit a decision; returns its ``created_at`` (Unix seconds).

        Parameters
        ----------
        decision_id : str
            Unique, 1..128 characters (the servicer generates it, e.g. a UUID).
        kind : {"search", "complete"}
        payload : dict, optional
            JSON-able (numpy arrays and scalars are converted with ``tolist``/``item``): whatever
            ``apply`` needs to turn feedback into reward, e.g. context features, allocation,
            propensity, the per-arm ranks of the items shown. At most 64 KiB as JSON.

        Raises
        ------
        InvalidEvent
            Bad field.
        DuplicateDecision
            ``decision_id`` already recorded.
        """
        _check_text("decision_id", decision_id, MAX_ID_CHARS)
        if kind not in DECISION_KINDS:
            raise InvalidEvent("kind", f"must be one of {DECISION_KINDS}, got {kind!r}")
        text = _dump_payload("payload", payload)
        now = time.time()
        try:
            self._write_one("INSERT INTO decisions(decision_id, created_at, kind, payload) VALUES (?, ?, ?, ?)",
                            (decision_id, now, kind, text))
        except sqlite3.IntegrityError:
            raise DuplicateDecision(decision_id) from None
        return now

    def get_decision(self, decision_id: str) -> tuple[str, float, dict] | None:
        """``(kind, created_at, payload)`` of a recorded decision, or ``None``."""
        with self._db_lock:
            self._check_open()
            row = self._conn.execute("SELECT kind, created_at, payload FROM decisions WHERE decision_id = ?",
                                     (decision_id,)).fetchone()
        return None if row is None else (row[0], row[1], json.loads(row[2]))

    def record_feedback(self, decision_id: str, item: str, position: int, payload: Mapping | None = None, *,
                        validate: Callable[[FeedbackEvent], None] | None = None) -> FeedbackResult:
        """Commit one feedback event (idempotent on ``(decision_id, item)``).

        Does not touch the online state; use :func:`apply_feedback` for record + apply in seq order.

        Parameters
        ----------
        decision_id : str
            A recorded decision.
        item : str
            The clicked item's key (Search) or the accepted suggestion's text (Complete). The same
            item for the same decision is one event: a retry or a double click is counted once,
            whatever its position/payload (the first committed event wins). Different items of one
            decision are separate events (a user may click several results).
        position : int
            0-based position in the response, in ``[0, 10000)``.
        payload : dict, optional
            JSON-able extras (e.g. dwell time), at most 64 KiB as JSON.
        validate : callable, optional
            Called with the would-be event (decision payload included) before the insert; an
            exception it raises (e.g. :class:`InvalidEvent` "item was not in the response") means
            nothing is written, and propagates.

        Returns
        -------
        FeedbackResult
            ``duplicate=False`` with the new ``seq`` and ``event``; or ``duplicate=True`` with the
            seq of the event already committed (nothing written).

        Raises
        ------
        InvalidEvent
            Bad field.
        UnknownDecision
            ``decision_id`` was never recorded.
        """
        _check_text("decision_id", decision_id, MAX_ID_CHARS)
        _check_text("item", item, MAX_ITEM_CHARS)
        position = _check_position(position)
        text = _dump_payload("payload", payload)

        # Decisions are immutable once written and (decision_id, item) is UNIQUE, so the reads need
        # no write transaction: the insert is one autocommit statement (see ``_write_one``), and a
        # duplicate committed meanwhile (by another process) shows as the constraint failing.
        with self._db_lock:
            self._check_open()
            row = self._conn.execute("SELECT kind, created_at, payload FROM decisions WHERE decision_id = ?",
                                     (decision_id,)).fetchone()
        if row is None:
            raise UnknownDecision(decision_id)
        dup = self._feedback_seq(decision_id, item)
        if dup is not None:
            return FeedbackResult(seq=dup, duplicate=True)
        now = time.time()
        event = FeedbackEvent(seq=0, decision_id=decision_id, item=item, position=position, created_at=now,
                              payload=json.loads(text), kind=row[0], decided_at=row[1], decision=json.loads(row[2]))
        if validate is not None:
            validate(event)
        try:
            seq = self._write_one("INSERT INTO feedback(decision_id, item, position, created_at, payload) "
                                  "VALUES (?, ?, ?, ?, ?)", (decision_id, item, position, now, text))
        except sqlite3.IntegrityError:
            dup = self._feedback_seq(decision_id, item)
            if dup is None:
                raise
            return FeedbackResult(seq=dup, duplicate=True)
        return FeedbackResult(seq=seq, duplicate=False, event=replace(event, seq=seq))

    def _feedback_seq(self, decision_id: str, item: str) -> int | None:
        with self._db_lock:
            self._check_open()
            dup = self._conn.execute("SELECT seq FROM feedback WHERE decision_id = ? AND item = ?",
                                     (decision_id, item)).fetchone()
        return None if dup is None else int(dup[0])

    def last_seq(self) -> int:
        """Seq of the newest committed feedback event (0 if none)."""
        with self._db_lock:
            self._check_open()
            row = self._conn.execute("SELECT MAX(seq) FROM feedback").fetchone()
        return int(row[0] or 0)

    def counts(self) -> dict:
        """``{"n_decisions", "n_feedback", "n_snapshots", "last_seq", "applied_seq", "snapshot_seq"}``."""
        with self._db_lock:
            self._check_open()
            n_dec = self._conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
            n_fb, last = self._conn.execute("SELECT COUNT(*), MAX(seq) FROM feedback").fetchone()
            n_snap = self._conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
        return {"n_decisions": n_dec, "n_feedback": n_fb, "n_snapshots": n_snap, "last_seq": int(last or 0),
                "applied_seq": self._applied_seq, "snapshot_seq": self._last_snapshot_seq}

    def events_after(self, seq: int, *, batch_size: int = 1000) -> Iterator[FeedbackEvent]:
        """Committed feedback events with ``seq > seq``, in seq order, joined with their decisions.

        Reads in batches (the db lock is held per batch, not across the iteration).
        """
        last = int(seq)
        while True:
            with self._db_lock:
                self._check_open()
                rows = self._conn.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM feedback f JOIN decisions d USING (decision_id) "
                    "WHERE f.seq > ? ORDER BY f.seq LIMIT ?", (last, batch_size)).fetchall()
            for r in rows:
                yield FeedbackEvent(seq=int(r[0]), decision_id=r[1], item=r[2], position=int(r[3]),
                                    created_at=r[4], payload=json.loads(r[5]), kind=r[6], decided_at=r[7],
                                    decision=json.loads(r[8]))
            if len(rows) < batch_size:
                return
            last = int(rows[-1][0])

    # -- snapshots ----------------------------------------------------------------------------
    def save_snapshot(self, seq_upto: int, blob: bytes) -> None:
        """Store a state blob reflecting exactly the events with ``seq <= seq_upto``; prune old ones.

        Insert and prune are one transaction: the table never holds a partial row, and the newest
        ``keep_snapshots`` stay. Saving the same ``seq_upto`` again replaces the row.

        Raises
        ------
        InvalidEvent
            ``seq_upto`` negative or beyond the newest committed event, or ``blob`` not bytes.
        """
        if isinstance(seq_upto, bool) or not isinstance(seq_upto, numbers.Integral) or seq_upto < 0:
            raise InvalidEvent("seq_upto", f"must be an int >= 0, got {seq_upto!r}")
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise InvalidEvent("blob", f"must be bytes, got {type(blob).__name__}")
        seq_upto = int(seq_upto)
        digest = hashlib.sha256(blob).hexdigest()
        keep = self.keep_snapshots

        def insert(conn: sqlite3.Connection) -> None:
            last = conn.execute("SELECT MAX(seq) FROM feedback").fetchone()[0] or 0
            if seq_upto > last:
                raise InvalidEvent("seq_upto", f"{seq_upto} is beyond the last committed event {last}")
            conn.execute("INSERT OR REPLACE INTO snapshots(seq_upto, created_at, blob, sha256) VALUES (?, ?, ?, ?)",
                         (seq_upto, time.time(), bytes(blob), digest))
            conn.execute("DELETE FROM snapshots WHERE seq_upto NOT IN "
                         "(SELECT seq_upto FROM snapshots ORDER BY seq_upto DESC LIMIT ?)", (keep,))

        self._write(insert)
        self._last_snapshot_seq = max(self._last_snapshot_seq, seq_upto)

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        """``(seq_upto, blob)`` of the newest snapshot whose blob matches its sha256, or ``None``."""
        for seq_upto, blob, ok in self._snapshots_newest_first():
            if ok:
                return seq_upto, blob
        return None

    def snapshot_seqs(self) -> list[int]:
        """``seq_upto`` of every stored snapshot, ascending."""
        with self._db_lock:
            self._check_open()
            return [r[0] for r in self._conn.execute("SELECT seq_upto FROM snapshots ORDER BY seq_upto")]

    def _snapshots_newest_first(self) -> Iterator[tuple[int, bytes, bool]]:
        with self._db_lock:
            self._check_open()
            seqs = [r[0] for r in self._conn.execute("SELECT seq_upto FROM snapshots ORDER BY seq_upto DESC")]
        for s in seqs:
            with self._db_lock:
                row = self._conn.execute("SELECT CAST(blob AS BLOB), sha256 FROM snapshots WHERE seq_upto = ?", (s,)).fetchone()
            if row is None:  # pruned meanwhile
                continue
            blob = bytes(row[0])
            yield s, blob, hashlib.sha256(blob).hexdigest() == row[1]

    def snapshot(self, state: OnlineState, *, force: bool = False) -> int | None:
        """Snapshot ``state`` now (synchronously); returns ``seq_upto``, or ``None`` if nothing new.

        The state lock is held only to read ``seq_upto`` and take ``state.copy_for_snapshot()``
        (or ``state.to_snapshot()`` if the state has no copy method); encoding and the write
        happen after it is released.

        In shared mode only the snapshot writer (the process holding ``SNAPSHOT.LOCK``; this call
        tries to become it) writes; the others return ``None``.

        Raises
        ------
        StateDiverged
            An earlier ``apply`` failed: the in-memory state may be half-updated, so it is not saved.
        """
        with self._snapshot_mutex:
            if not self._claim_snapshot_writer():
                return None
            with self.lock:
                self._check_open()
                if self._diverged is not None:
                    raise StateDiverged("not snapshotting a state whose apply failed") from self._diverged
                if not self._recovered:
                    raise RuntimeError("recover(state) must run before the state is snapshotted")
                seq_upto = self._applied_seq
                if seq_upto <= self._last_snapshot_seq and not force:
                    return None
                copy = getattr(state, "copy_for_snapshot", None)
                source = copy() if copy is not None else None
                blob = state.to_snapshot() if source is None else None
            if blob is None:
                blob = source.to_snapshot()
            self.save_snapshot(seq_upto, blob)
        self._request(checkpoint=True)
        return seq_upto

    def _claim_snapshot_writer(self) -> bool:
        """True if this process writes snapshots (always when not shared; in shared mode, once it
        holds the exclusive ``flock`` on ``SNAPSHOT.LOCK``, tried without blocking)."""
        if self._snapshot_writer:
            return True
        if self._snapshot_lock_file is None:
            self._snapshot_lock_file = open(self.state_dir / SNAPSHOT_LOCK_NAME, "a+b")
        try:
            fcntl.flock(self._snapshot_lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._snapshot_writer = True
        return True

    @property
    def snapshot_writer(self) -> bool:
        """Whether this process writes the snapshots (always true when not shared)."""
        return self._snapshot_writer

    # -- recovery -----------------------------------------------------------------------------
    def recover(self, state: OnlineState) -> RecoveryResult:
        """Bring a freshly constructed ``state`` to the last committed event.

        Loads the newest snapshot whose sha256 matches (older ones if the newest is corrupt; none
        at all means replay from the first event), then applies every event after it in seq order.
        Must be called once, before :func:`apply_feedback`.

        Raises
        ------
        RuntimeError
            Called twice on one store.
        """
        with self.lock:
            self._check_open()
            if self._recovered:
                raise RuntimeError("recover() already ran on this store")
            t0 = time.perf_counter()
            base, skipped = 0, 0
            for seq_upto, blob, ok in self._snapshots_newest_first():
                if not ok:
                    skipped += 1
                    logger.warning("%s: snapshot seq_upto=%d fails its sha256 check; skipped", self.path, seq_upto)
                    continue
                state.load_snapshot(blob)
                base = seq_upto
                break
            t1 = time.perf_counter()
            last, n = base, 0
            for event in self.events_after(base):
                state.apply(event)
                last = event.seq
                n += 1
            t2 = time.perf_counter()
            self._applied_seq = last
            self._last_snapshot_seq = base
            self._recovered = True
        return RecoveryResult(snapshot_seq=base, n_replayed=n, last_seq=last, n_snapshots_skipped=skipped,
                              load_ms=(t1 - t0) * 1e3, replay_ms=(t2 - t1) * 1e3)

    def catch_up(self, state: OnlineState, *, blocking: bool = True) -> int:
        """Apply to ``state`` the events committed (by any process) after the last applied one.

        In shared mode other processes append to the log; this brings the state to the newest
        committed event, in seq order (one indexed ``SELECT`` when there is nothing new). In
        exclusive mode it finds nothing (this process applies its own events as it commits them).
        Returns the number of events applied.

        Parameters
        ----------
        blocking : bool
            False: return 0 at once if another thread holds the state lock (it is applying events,
            so the state is being brought forward anyway).

        Raises
        ------
        StateDiverged
            An ``apply`` failed (now or earlier); the state stops at the last good event.
        RuntimeError
            :meth:`recover` has not run.
        """
        if not self.lock.acquire(blocking):
            return 0
        try:
            self._check_applicable()
            n, due = self._apply_pending(state, upto=None)
        finally:
            self.lock.release()
        if due:
            self._request(snapshot_state=state)
        return n

    def _check_applicable(self) -> None:
        if not self._recovered:
            raise RuntimeError("recover(state) must run before feedback is applied")
        if self._diverged is not None:
            raise StateDiverged("online state diverged from the log; restart to recover") from self._diverged

    def _apply_pending(self, state: OnlineState, upto: int | None) -> tuple[int, bool]:
        """Apply the committed events after ``applied_seq`` (below ``upto`` if given), in seq order.
        Caller holds ``self.lock``. Returns (events applied, whether a snapshot is due)."""
        n, due = 0, False
        for event in self.events_after(self._applied_seq):
            if upto is not None and event.seq >= upto:
                break
            due |= self._apply_one(state, event)
            n += 1
        return n, due

    def _apply_one(self, state: OnlineState, event: FeedbackEvent) -> bool:
        """Apply one committed event (the next in seq order); caller holds ``self.lock``. Marks the
        store diverged if ``apply`` raises. Returns whether a periodic snapshot is now due."""
        try:
            state.apply(event)
        except BaseException as exc:
            self._diverged = exc
            logger.error("%s: apply failed for committed event seq=%d; online state diverged",
                         self.path, event.seq)
            raise StateDiverged(f"apply failed for committed event seq={event.seq}") from exc
        self._applied_seq = event.seq
        due = (self.snapshot_every_events > 0
               and event.seq - max(self._last_snapshot_seq, self._snapshot_requested_seq)
               >= self.snapshot_every_events)
        if due:
            self._snapshot_requested_seq = event.seq
        return due

    @property
    def applied_seq(self) -> int:
        """Seq of the last event applied to the plugged-in state."""
        return self._applied_seq

    @property
    def diverged(self) -> bool:
        """True once an ``apply`` raised after its event was committed (health should report it)."""
        return self._diverged is not None

    # -- background maintenance ---------------------------------------------------------------
    def _request(self, *, checkpoint: bool = False, snapshot_state: OnlineState | None = None) -> None:
        with self._bg_cond:
            if self._bg.stop:
                return
            self._bg.checkpoint |= checkpoint
            if snapshot_state is not None:
                self._bg.snapshot_state = snapshot_state
            if self._bg.thread is None:
                self._bg.thread = threading.Thread(target=self._bg_loop, name="state-maintenance", daemon=True)
                self._bg.thread.start()
            self._bg_cond.notify()

    def _bg_loop(self) -> None:
        while True:
            with self._bg_cond:
                while not (self._bg.stop or self._bg.checkpoint or self._bg.snapshot_state is not None):
                    self._bg_cond.wait()
                if self._bg.stop:
                    return
                state, self._bg.snapshot_state = self._bg.snapshot_state, None
                checkpoint, self._bg.checkpoint = self._bg.checkpoint, False
            try:
                if state is not None:
                    self.snapshot(state)
                if checkpoint:
                    self.checkpoint()
            except Exception as exc:  # noqa: BLE001 - a failed snapshot must not kill the thread
                logger.exception("%s: background state maintenance failed", self.path)
                self._bg.errors.append(exc)

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Run ``PRAGMA wal_checkpoint(mode)`` on the maintenance connection: (busy, log, checkpointed)."""
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"mode must be PASSIVE, FULL, RESTART or TRUNCATE, got {mode!r}")
        return tuple(self._ckpt_conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone())

    def _stop_bg(self) -> None:
        with self._bg_cond:
            self._bg.stop = True
            self._bg_cond.notify()
            thread = self._bg.thread
        if thread is not None:
            thread.join()

    # -- shutdown -----------------------------------------------------------------------------
    def close(self, state: OnlineState | None = None) -> None:
        """Graceful shutdown: finish background work, snapshot ``state`` (if given, recovered and
        not diverged), checkpoint and truncate the WAL, close the database, release the directory.
        Idempotent."""
        if self._closed:
            return
        self._stop_bg()
        try:
            if state is not None and self._recovered and self._diverged is None:
                if self.shared:
                    self.catch_up(state)  # the final snapshot covers what the other processes logged
                self.snapshot(state)
            # Truncating the WAL waits for readers: only when no other process has the directory.
            if self._last_one_out():
                try:
                    with self._db_lock:
                        self._ckpt_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    logger.warning("%s: final checkpoint failed", self.path, exc_info=True)
        finally:
            with self._db_lock:
                self._closed = True
                self._ckpt_conn.close()
                self._conn.close()
            self._release_dir_lock()

    def _last_one_out(self) -> bool:
        """True unless other shared processes still have the directory open (tries to upgrade the
        shared ``flock`` on ``LOCK`` to exclusive without blocking)."""
        if not self.shared:
            return True
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _release_dir_lock(self) -> None:
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
        finally:
            self._lock_file.close()
            if self._snapshot_lock_file is not None:
                self._snapshot_lock_file.close()  # closing the file releases its flock

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def apply_feedback(store: StateStore, state: OnlineState, decision_id: str, item: str, position: int,
                   payload: Mapping | None = None, *,
                   validate: Callable[[FeedbackEvent], None] | None = None) -> FeedbackResult:
    """Commit a feedback event, then apply it to ``state``, both under ``store.lock``.

    Holding one lock across "commit, apply" makes the order of application equal the seq order,
    which is what replay uses, so recovery reproduces the live state exactly. In shared mode the
    events other processes committed before this one are applied first (in seq order). A duplicate
    is not applied again. When ``store.snapshot_every_events`` events have been applied since the last
    snapshot, a background snapshot is requested.

    Raises
    ------
    InvalidEvent, UnknownDecision
        As :meth:`StateStore.record_feedback` (nothing committed, nothing applied).
    StateDiverged
        ``state.apply`` raised earlier (or now, chained): the event is committed but the in-memory
        state may be half-updated; further feedback is refused until a restart replays the log.
    RuntimeError
        :meth:`StateStore.recover` has not run.
    """
    with store.lock:
        store._check_applicable()
        result = store.record_feedback(decision_id, item, position, payload, validate=validate)
        if result.duplicate:
            return result
        due = False
        if result.seq > store._applied_seq + 1:  # shared mode: other processes' events come first
            due = store._apply_pending(state, upto=result.seq)[1]
        due |= store._apply_one(state, result.event)
    if due:
        store._request(snapshot_state=state)
    return result
