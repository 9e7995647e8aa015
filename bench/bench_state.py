"""Benchmark: durable state store (``serving.state``) latency, snapshot and recovery cost.

Usage::

    /work/venv/bin/python -m bench.bench_state [--n-events 10000] [--n-clicks 200000] [--threads 8]
        [--dir DIR] [--out results.json]

What is timed (``perf_counter_ns`` per call, percentiles in microseconds; for single-threaded
Feedback also the calling thread's CPU time, which separates our work from time spent descheduled
on a busy machine; see ``loadavg_1m`` in the machine info):

1. ``record_decision`` and ``apply_feedback`` (record = decision lookup, duplicate check, insert,
   COMMIT; then apply to the in-memory state) for ``PRAGMA synchronous`` NORMAL vs FULL in WAL
   mode, ``--n-events`` each, one thread. Baseline in the same run and directory: a bare
   ``INSERT`` + ``COMMIT`` of the same row on a plain connection with the same pragmas (the floor).
2. Contention, ``--threads`` threads, NORMAL: the store (one connection behind a lock) vs the
   alternative design of one SQLite connection per thread (same SQL, SQLite's busy handler).
3. Snapshot of a realistic state (``--n-clicks`` (query, item) click counts in a dict, bandit
   arrays): time under the state lock (``copy_for_snapshot``), encode, write; blob size; and
   ``apply_feedback`` latency while snapshots are written back to back in another thread.
4. Recovery: reopen, load the snapshot and replay the events after it; the recovered state is
   checked equal to the live one.

The state under test (``BenchState``) is a LinUCB-shaped bandit (per-arm ``A`` d x d and ``b``,
rank-1 update per event) plus the click-count dict, so ``apply`` costs what a real one would.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from qac.artifacts import arrays_to_strings, strings_to_arrays
from bench.common import format_row, machine_info, percentiles_us
from serving.state import FeedbackEvent, StateStore, apply_feedback, pack_arrays, unpack_arrays

N_ARMS = 5
DIM = 32


class BenchState:
    """LinUCB-style sufficient statistics per arm plus (query, item) click counts."""

    def __init__(self) -> None:
        self.A = np.tile(np.eye(DIM), (N_ARMS, 1, 1))
        self.b = np.zeros((N_ARMS, DIM))
        self.clicks: dict[str, int] = {}

    def apply(self, event: FeedbackEvent) -> None:
        arm = event.decision["arm"]
        x = np.asarray(event.decision["x"], dtype=np.float64)
        self.A[arm] += np.outer(x, x)
        self.b[arm] += float(event.payload["reward"]) * x
        key = event.decision["query"] + "\t" + event.item
        self.clicks[key] = self.clicks.get(key, 0) + 1

    def copy_for_snapshot(self) -> "BenchState":
        other = BenchState.__new__(BenchState)
        other.A, other.b, other.clicks = self.A.copy(), self.b.copy(), self.clicks.copy()
        return other

    def to_snapshot(self) -> bytes:
        keys_flat, keys_ptr = strings_to_arrays(list(self.clicks))
        return pack_arrays({"A": self.A, "b": self.b, "keys_flat": keys_flat, "keys_ptr": keys_ptr,
                            "counts": np.fromiter(self.clicks.values(), dtype=np.int64, count=len(self.clicks))})

    def load_snapshot(self, blob: bytes) -> None:
        _, a = unpack_arrays(blob)
        self.A, self.b = a["A"], a["b"]
        self.clicks = dict(zip(arrays_to_strings(a["keys_flat"], a["keys_ptr"]), a["counts"].tolist()))

    def equals(self, other: "BenchState") -> bool:
        return (np.array_equal(self.A, other.A) and np.array_equal(self.b, other.b)
                and self.clicks == other.clicks)


def _workload(n: int, seed: int) -> list[tuple[str, dict, str, int, dict]]:
    rng = np.random.default_rng(seed)
    xs = rng.random((n, DIM)).astype(np.float32)
    return [(f"dec-{seed}-{i:08d}", {"query": f"query {int(rng.integers(5000))}", "arm": int(rng.integers(N_ARMS)),
                                     "x": xs[i], "propensity": 0.2},
             f"item-{int(rng.integers(50_000))}", int(rng.integers(10)), {"reward": float(rng.random() < 0.3)})
            for i in range(n)]


def _single_thread(root: Path, mode: str, n: int) -> dict:
    path = root / f"single-{mode}"
    store = StateStore(path, synchronous=mode, snapshot_every_events=0)
    state = BenchState()
    store.recover(state)
    t_dec, t_fb, cpu_fb = [], [], []
    for did, dec, item, pos, fb in _workload(n, seed=1):
        t0 = time.perf_counter_ns()
        store.record_decision(did, "search", dec)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        apply_feedback(store, state, did, item, pos, fb)
        c2 = time.thread_time_ns()
        t2 = time.perf_counter_ns()
        t_dec.append(t1 - t0)
        t_fb.append(t2 - t1)
        cpu_fb.append(c2 - c1)
    store.close()
    # Floor: the bare commit of one feedback-sized row with the same pragmas.
    conn = sqlite3.connect(root / f"floor-{mode}.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={mode}")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(seq INTEGER PRIMARY KEY AUTOINCREMENT, decision_id TEXT, item TEXT, "
                 "position INTEGER, created_at REAL, payload TEXT)")
    t_floor = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t(decision_id, item, position, created_at, payload) VALUES (?, ?, ?, ?, ?)",
                     (f"dec-{i:08d}", "item-123", 3, time.time(), '{"reward":1.0}'))
        conn.execute("COMMIT")
        t_floor.append(time.perf_counter_ns() - t0)
        if i % 2000 == 1999:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    conn.close()
    return {"record_decision": percentiles_us(t_dec), "apply_feedback": percentiles_us(t_fb),
            "apply_feedback_thread_cpu": percentiles_us(cpu_fb), "floor_insert_commit": percentiles_us(t_floor)}


def _threaded_store(root: Path, n: int, n_threads: int) -> dict:
    store = StateStore(root / "threads-store", snapshot_every_events=0)
    state = BenchState()
    store.recover(state)
    work = _workload(n, seed=2)
    lat: list[list[int]] = [[] for _ in range(n_threads)]

    def run(t: int) -> None:
        for did, dec, item, pos, fb in work[t::n_threads]:
            store.record_decision(did, "search", dec)
            t0 = time.perf_counter_ns()
            apply_feedback(store, state, did, item, pos, fb)
            lat[t].append(time.perf_counter_ns() - t0)

    wall = _run_threads(run, n_threads)
    store.close()
    return {"apply_feedback": percentiles_us([x for l in lat for x in l]), "wall_s": wall}


def _threaded_per_connection(root: Path, n: int, n_threads: int) -> dict:
    """Alternative design: one connection per thread, SQLite's own locking (busy handler)."""
    with StateStore(root / "threads-conn"):
        pass  # create the schema
    db = root / "threads-conn" / "state.sqlite3"
    work = _workload(n, seed=3)
    lat: list[list[int]] = [[] for _ in range(n_threads)]
    apply_lock = threading.Lock()
    state = BenchState()

    def run(t: int) -> None:
        conn = sqlite3.connect(db, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for did, dec, item, pos, fb in work[t::n_threads]:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO decisions VALUES (?, ?, 'search', ?)",
                         (did, time.time(), json.dumps({**dec, "x": dec["x"].tolist()})))
            conn.execute("COMMIT")
            t0 = time.perf_counter_ns()
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT kind, created_at, payload FROM decisions WHERE decision_id = ?",
                               (did,)).fetchone()
            conn.execute("SELECT seq FROM feedback WHERE decision_id = ? AND item = ?", (did, item)).fetchone()
            seq = conn.execute("INSERT INTO feedback(decision_id, item, position, created_at, payload) "
                               "VALUES (?, ?, ?, ?, ?) RETURNING seq", (did, item, pos, time.time(),
                                                                        json.dumps(fb))).fetchone()[0]
            conn.execute("COMMIT")
            with apply_lock:  # NB: application order is no longer guaranteed to equal seq order
                state.apply(FeedbackEvent(seq, did, item, pos, 0.0, fb, "search", 0.0, json.loads(row[2])))
            lat[t].append(time.perf_counter_ns() - t0)
        conn.close()

    wall = _run_threads(run, n_threads)
    return {"apply_feedback": percentiles_us([x for l in lat for x in l]), "wall_s": wall}


def _run_threads(fn, n_threads: int) -> float:
    threads = [threading.Thread(target=fn, args=(t,)) for t in range(n_threads)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t0


def _snapshot_and_recovery(root: Path, n_clicks: int, n_events: int) -> dict:
    path = root / "snapshot"
    store = StateStore(path, snapshot_every_events=0)
    state = BenchState()
    store.recover(state)
    rng = np.random.default_rng(4)
    state.clicks = {f"query {i}\titem-{int(rng.integers(50_000))}": int(rng.integers(1, 50)) for i in range(n_clicks)}
    work = _workload(2 * n_events, seed=5)
    for did, dec, item, pos, fb in work[:n_events]:
        store.record_decision(did, "search", dec)
        apply_feedback(store, state, did, item, pos, fb)

    reps = []
    for _ in range(3):
        with store.lock:
            t0 = time.perf_counter_ns()
            copy = state.copy_for_snapshot()
            t1 = time.perf_counter_ns()
            seq = store.applied_seq
        blob = copy.to_snapshot()
        t2 = time.perf_counter_ns()
        store.save_snapshot(seq, blob)
        t3 = time.perf_counter_ns()
        reps.append((t1 - t0, t2 - t1, t3 - t2))
    med = np.median(np.array(reps, dtype=np.float64), axis=0) / 1e6
    snap = {"n_clicks": len(state.clicks), "blob_mb": len(blob) / 2**20, "lock_hold_ms": med[0],
            "encode_ms": med[1], "write_commit_ms": med[2], "seq_upto": seq}

    # Feedback latency while snapshots are written back to back (worst case for the tail).
    stop = threading.Event()
    n_snapshots = [0]

    def snapshotter() -> None:
        while not stop.is_set():
            if store.snapshot(state, force=True) is not None:
                n_snapshots[0] += 1

    th = threading.Thread(target=snapshotter)
    th.start()
    lat = []
    for did, dec, item, pos, fb in work[n_events:]:
        store.record_decision(did, "search", dec)
        t0 = time.perf_counter_ns()
        apply_feedback(store, state, did, item, pos, fb)
        lat.append(time.perf_counter_ns() - t0)
    stop.set()
    th.join()
    snap["apply_feedback_during_snapshots"] = percentiles_us(lat)
    snap["n_snapshots_during"] = n_snapshots[0]

    # Recovery: the last snapshot was taken somewhere in the second half; replay the rest.
    store.close()  # no state: no final snapshot
    t0 = time.perf_counter()
    store = StateStore(path)
    fresh = BenchState()
    rec = store.recover(fresh)
    total_ms = (time.perf_counter() - t0) * 1e3
    store.close()
    # Recovery from the first snapshot only: drop the newer ones to force a long replay.
    conn = sqlite3.connect(path / "state.sqlite3")
    conn.execute("DELETE FROM snapshots")
    conn.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?)", (seq, time.time(), blob, hashlib.sha256(blob).hexdigest()))
    conn.commit()
    conn.close()
    t0 = time.perf_counter()
    store = StateStore(path)
    fresh2 = BenchState()
    rec2 = store.recover(fresh2)
    total2_ms = (time.perf_counter() - t0) * 1e3
    store.close()
    return {"snapshot": snap,
            "recovery_latest": {"snapshot_seq": rec.snapshot_seq, "n_replayed": rec.n_replayed,
                                "load_ms": rec.load_ms, "replay_ms": rec.replay_ms, "total_ms": total_ms,
                                "equals_live_state": fresh.equals(state)},
            "recovery_long_replay": {"snapshot_seq": rec2.snapshot_seq, "n_replayed": rec2.n_replayed,
                                     "load_ms": rec2.load_ms, "replay_ms": rec2.replay_ms, "total_ms": total2_ms,
                                     "equals_live_state": fresh2.equals(state)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-events", type=int, default=10_000)
    ap.add_argument("--n-clicks", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--dir", type=Path, default=None, help="parent of the scratch state dirs (default: /tmp)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench_state_", dir=args.dir))
    info = machine_info()
    info["sqlite"] = sqlite3.sqlite_version
    info["state_dir"] = str(root)
    st = os.statvfs(root)
    info["state_dir_free_gb"] = st.f_bavail * st.f_frsize / 2**30
    result: dict = {"machine": info, "n_events": args.n_events}
    try:
        print(json.dumps(info))
        for mode in ("NORMAL", "FULL"):
            r = _single_thread(root, mode, args.n_events)
            result[f"single_{mode}"] = r
            print(f"synchronous={mode}, WAL, 1 thread:")
            for k, p in r.items():
                print(format_row(k, p))
        r_store = _threaded_store(root, args.n_events, args.threads)
        r_conn = _threaded_per_connection(root, args.n_events, args.threads)
        result["threads_store_one_connection"] = r_store
        result["threads_connection_per_thread"] = r_conn
        print(f"{args.threads} threads, NORMAL, apply_feedback:")
        print(format_row("store (1 connection + lock)", r_store["apply_feedback"]) + f"  wall {r_store['wall_s']:.2f}s")
        print(format_row("connection per thread", r_conn["apply_feedback"]) + f"  wall {r_conn['wall_s']:.2f}s")
        r = _snapshot_and_recovery(root, args.n_clicks, args.n_events)
        result.update(r)
        s = r["snapshot"]
        print(f"snapshot of {s['n_clicks']} clicks + bandit arrays: blob {s['blob_mb']:.1f} MB, "
              f"lock held {s['lock_hold_ms']:.1f} ms, encode {s['encode_ms']:.1f} ms, "
              f"write+commit {s['write_commit_ms']:.1f} ms (median of 3)")
        print(format_row("apply_feedback during snapshots", s["apply_feedback_during_snapshots"])
              + f"  ({s['n_snapshots_during']} snapshots)")
        for k in ("recovery_latest", "recovery_long_replay"):
            v = r[k]
            print(f"{k}: snapshot seq {v['snapshot_seq']}, replayed {v['n_replayed']}, load {v['load_ms']:.1f} ms, "
                  f"replay {v['replay_ms']:.1f} ms, open+recover {v['total_ms']:.1f} ms, "
                  f"equals live state: {v['equals_live_state']}")
        ok = all(r[k]["equals_live_state"] for k in ("recovery_latest", "recovery_long_replay"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=float))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
