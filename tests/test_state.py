"""serving.state: event log round trips, duplicates, snapshots + replay, ordering under threads,
transactional snapshots, invalid input. The kill -9 test is in ``test_state_crash.py``."""
from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest

from serving.state import (
    DuplicateDecision,
    FeedbackEvent,
    InvalidEvent,
    OnlineState,
    StateDirLocked,
    StateDiverged,
    StateStore,
    UnknownDecision,
    apply_feedback,
    pack_arrays,
    unpack_arrays,
)
from tests.state_crash_worker import N_ARMS, ToyState


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _events(n: int, seed: int = 0) -> list[dict]:
    """Deterministic stream: mostly new decisions, some second clicks on an earlier decision."""
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for i in range(n):
        if out and rng.random() < 0.2:
            prev = out[int(rng.integers(len(out)))]
            out.append({**prev, "new": False, "item": f"item{i}x",
                        "position": int(rng.integers(10)), "reward": float(rng.random())})
            continue
        out.append({"decision_id": f"d{i}", "new": True, "query": f"q{int(rng.integers(7))}",
                    "arm": int(rng.integers(N_ARMS)), "item": f"item{int(rng.integers(20))}",
                    "position": int(rng.integers(10)), "reward": float(rng.random())})
    return out


def _feed(store: StateStore, state: ToyState, events: list[dict]) -> list[int]:
    seqs = []
    for e in events:
        if e["new"]:
            store.record_decision(e["decision_id"], "search", {"query": e["query"], "arm": e["arm"]})
        res = apply_feedback(store, state, e["decision_id"], e["item"], e["position"], {"reward": e["reward"]})
        seqs.append(res.seq)
    return seqs


def _twin(events: list[tuple[int, str, int, str, float]]) -> dict:
    """Straightforward recomputation of ToyState.to_json() from (seq, query, arm, item, reward)."""
    reward = [0.0] * N_ARMS
    pulls = [0] * N_ARMS
    clicks: dict[tuple[str, str], int] = {}
    chain, last = 0, 0
    for seq, query, arm, item, r in sorted(events):
        reward[arm] += r
        pulls[arm] += 1
        clicks[(query, item)] = clicks.get((query, item), 0) + 1
        chain = (chain * 1_000_003 + seq) % ((1 << 61) - 1)
        last = seq
    return {"reward_sum": reward, "n_pulls": pulls, "clicks": sorted([q, i, c] for (q, i), c in clicks.items()),
            "chain": chain, "last_seq": last}


def _twin_of_log(store: StateStore) -> dict:
    return _twin([(e.seq, e.decision["query"], e.decision["arm"], e.item, e.payload["reward"])
                  for e in store.events_after(0)])


@pytest.fixture
def store(tmp_path):
    s = StateStore(tmp_path / "state", snapshot_every_events=0)
    yield s
    s.close()


@pytest.fixture
def recovered(store):
    state = ToyState()
    store.recover(state)
    return store, state


# --------------------------------------------------------------------------------------------------
# blob format
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_pack_unpack_round_trip(seed):
    rng = np.random.default_rng(seed)
    arrays = {
        "f32": rng.random((3, 4), dtype=np.float32),
        "f64_fortran": np.asfortranarray(rng.random((5, 2))),
        "i64": rng.integers(-9, 9, size=int(rng.integers(0, 50))).astype(np.int64),
        "u8_empty": np.zeros(0, dtype=np.uint8),
        "scalar": np.array(3.5),
        "bool": rng.random(7) < 0.5,
        "unicode": np.array(["a", "bé"]),
    }
    meta = {"seed": seed, "nested": {"x": [1, 2.5, "s"]}}
    got_meta, got = unpack_arrays(pack_arrays(arrays, meta))
    assert got_meta == meta
    assert list(got) == list(arrays)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape
        np.testing.assert_array_equal(got[k], a)
        assert got[k].flags.writeable


@pytest.mark.parametrize("make_blob, message", [
    (lambda good: b"", "shorter than its fixed header"),
    (lambda good: b"NOTMAGIC" + good[8:], "bad magic"),
    (lambda good: good[:-3], "truncated"),
    (lambda good: good + b"x", "trailing bytes"),
    (lambda good: good[:16] + b"}" + good[17:], "malformed header"),
])
def test_unpack_rejects_damaged_blobs(make_blob, message):
    good = pack_arrays({"a": np.arange(10)}, {"k": 1})
    with pytest.raises(ValueError, match=message):
        unpack_arrays(make_blob(good))


@pytest.mark.parametrize("arrays, meta, message", [
    ({"o": np.array([object()], dtype=object)}, {}, "holds Python objects"),
    ({"": np.arange(2)}, {}, "non-empty str"),
    ({"a": np.arange(2)}, {"x": float("nan")}, "not JSON-serialisable"),
    ({"a": np.arange(2)}, {"x": object()}, "not JSON-serialisable"),
])
def test_pack_rejects_bad_input(arrays, meta, message):
    with pytest.raises(ValueError, match=message):
        pack_arrays(arrays, meta)


# --------------------------------------------------------------------------------------------------
# decisions and feedback
# --------------------------------------------------------------------------------------------------
def test_store_is_wal_with_requested_synchronous(tmp_path):
    for mode, code in (("NORMAL", 1), ("FULL", 2)):
        with StateStore(tmp_path / mode, synchronous=mode) as s:
            assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == code
            assert (tmp_path / mode / "state.sqlite3").exists()


def test_decision_round_trip_converts_numpy(store):
    payload = {"x": np.arange(3, dtype=np.float32) / 4, "n": np.int64(7), "s": "é", "l": [1, None]}
    created = store.record_decision("dec-1", "complete", payload)
    kind, created_at, got = store.get_decision("dec-1")
    assert kind == "complete" and created_at == created
    assert got == {"x": [0.0, 0.25, 0.5], "n": 7, "s": "é", "l": [1, None]}
    assert store.get_decision("nope") is None


def test_feedback_round_trip_and_live_event_equals_replayed_event(recovered):
    store, state = recovered
    store.record_decision("d1", "search", {"query": "q", "arm": 2, "ranks": np.array([0, -1, 3])})
    res = apply_feedback(store, state, "d1", "item-a", 3, {"reward": 1.0, "dwell_ms": 1200})
    assert (res.seq, res.duplicate) == (1, False)
    assert res.event.decision == {"query": "q", "arm": 2, "ranks": [0, -1, 3]}
    assert res.event.payload == {"reward": 1.0, "dwell_ms": 1200}
    assert (res.event.kind, res.event.item, res.event.position) == ("search", "item-a", 3)
    (replayed,) = list(store.events_after(0))
    assert replayed == res.event
    assert list(store.events_after(1)) == []


def test_unknown_decision_writes_nothing(recovered):
    store, state = recovered
    with pytest.raises(UnknownDecision, match="unknown decision 'ghost'") as info:
        apply_feedback(store, state, "ghost", "item", 0)
    assert info.value.decision_id == "ghost"
    assert store.last_seq() == 0 and state.last_seq == 0
    assert not store._conn.in_transaction


def test_duplicate_feedback_is_counted_once(recovered):
    store, state = recovered
    store.record_decision("d1", "search", {"query": "q", "arm": 1})
    first = apply_feedback(store, state, "d1", "item", 2, {"reward": 1.0})
    again = apply_feedback(store, state, "d1", "item", 2, {"reward": 1.0})
    other_pos = apply_feedback(store, state, "d1", "item", 5, {"reward": 0.5})
    assert not first.duplicate and again.duplicate and other_pos.duplicate
    assert again.seq == other_pos.seq == first.seq and again.event is None
    assert state.n_pulls[1] == 1 and state.clicks == {("q", "item"): 1}
    second_item = apply_feedback(store, state, "d1", "other", 0, {"reward": 0.25})
    assert (second_item.seq, second_item.duplicate) == (2, False)
    assert store.counts()["n_feedback"] == 2


def test_validate_hook_rejects_before_commit(recovered):
    store, state = recovered
    store.record_decision("d1", "search", {"query": "q", "arm": 0, "shown": ["a", "b"]})

    def in_response(event: FeedbackEvent) -> None:
        if event.item not in event.decision["shown"]:
            raise InvalidEvent("item", f"{event.item!r} was not in the response")

    with pytest.raises(InvalidEvent, match="item: 'z' was not in the response"):
        apply_feedback(store, state, "d1", "z", 0, {"reward": 1.0}, validate=in_response)
    assert store.last_seq() == 0 and state.last_seq == 0
    assert apply_feedback(store, state, "d1", "b", 1, {"reward": 1.0}, validate=in_response).seq == 1


def test_events_after_crosses_batches_in_seq_order(recovered):
    store, state = recovered
    seqs = _feed(store, state, _events(25))
    assert seqs == list(range(1, 26))
    assert [e.seq for e in store.events_after(0, batch_size=3)] == seqs
    assert [e.seq for e in store.events_after(10, batch_size=4)] == seqs[10:]


# --------------------------------------------------------------------------------------------------
# snapshots and recovery
# --------------------------------------------------------------------------------------------------
def test_replay_from_any_snapshot_equals_replay_from_scratch(tmp_path):
    store = StateStore(tmp_path / "s", snapshot_every_events=0, keep_snapshots=100)
    live = ToyState()
    store.recover(live)
    events = _events(120, seed=3)
    blobs = {}
    for start in range(0, 120, 30):
        _feed(store, live, events[start:start + 30])
        assert store.snapshot(live) == start + 30
        blobs[start + 30] = live.to_snapshot()
    _feed(store, live, events[120:])
    expected = _twin_of_log(store)
    assert live.to_json() == expected
    assert store.snapshot_seqs() == [30, 60, 90, 120]
    for seq_upto, blob in blobs.items():
        state = ToyState()
        state.load_snapshot(blob)
        for event in store.events_after(seq_upto):
            state.apply(event)
        assert state.to_json() == expected
    scratch = ToyState()
    for event in store.events_after(0):
        scratch.apply(event)
    assert scratch.to_json() == expected
    store.close()


def test_recover_loads_latest_snapshot_then_replays(tmp_path):
    store = StateStore(tmp_path / "s", snapshot_every_events=0)
    live = ToyState()
    assert store.recover(live).last_seq == 0
    _feed(store, live, _events(40))
    store.snapshot(live)
    _feed(store, live, _events(60, seed=9)[40:])  # decision ids d40.. are new
    store.close()  # no state: no final snapshot, so 20 events must be replayed

    store = StateStore(tmp_path / "s")
    state = ToyState()
    res = store.recover(state)
    assert (res.snapshot_seq, res.n_replayed, res.last_seq, res.n_snapshots_skipped) == (40, 20, 60, 0)
    assert state.to_json() == live.to_json() == _twin_of_log(store)
    with pytest.raises(RuntimeError, match="already ran"):
        store.recover(ToyState())
    store.close(state)

    store = StateStore(tmp_path / "s")
    state = ToyState()
    res = store.recover(state)
    assert (res.snapshot_seq, res.n_replayed) == (60, 0)  # close(state) wrote the final snapshot
    assert state.to_json() == live.to_json()
    store.close()


def test_snapshots_are_pruned_to_the_newest(tmp_path):
    store = StateStore(tmp_path / "s", snapshot_every_events=0, keep_snapshots=2)
    state = ToyState()
    store.recover(state)
    events = _events(50)
    for start in range(0, 50, 10):
        _feed(store, state, events[start:start + 10])
        store.snapshot(state)
    assert store.snapshot_seqs() == [40, 50]
    assert store.snapshot(state) is None  # nothing new
    seq, blob = store.latest_snapshot()
    assert seq == 50 and blob == state.to_snapshot()
    store.close()


def test_periodic_snapshots_run_in_background(tmp_path):
    store = StateStore(tmp_path / "s", snapshot_every_events=10, keep_snapshots=100)
    state = ToyState()
    store.recover(state)
    _feed(store, state, _events(35))
    deadline = time.monotonic() + 10
    while not store.snapshot_seqs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.snapshot_seqs(), "no periodic snapshot was written"
    store.close(state)
    store = StateStore(tmp_path / "s")
    assert store.snapshot_seqs()[-1] == 35
    fresh = ToyState()
    store.recover(fresh)
    assert fresh.to_json() == state.to_json()
    store.close()


def test_failed_snapshot_transaction_leaves_no_row(recovered):
    store, state = recovered
    events = _events(30)
    for start in (0, 10):
        _feed(store, state, events[start:start + 10])
        store.snapshot(state)
    old = store.latest_snapshot()
    # Make the prune step of the next save fail, after its INSERT has run inside the transaction.
    store._conn.execute("CREATE TRIGGER no_prune BEFORE DELETE ON snapshots "
                        "BEGIN SELECT RAISE(ABORT, 'prune refused'); END")
    _feed(store, state, events[20:])
    with pytest.raises(sqlite3.IntegrityError, match="prune refused"):
        store.snapshot(state)
    assert store.snapshot_seqs() == [10, 20]
    assert store.latest_snapshot() == old
    assert not store._conn.in_transaction
    store._conn.execute("DROP TRIGGER no_prune")
    assert store.snapshot(state) == 30 and store.snapshot_seqs() == [20, 30]


def test_corrupt_snapshot_is_skipped_and_recovery_falls_back(tmp_path):
    store = StateStore(tmp_path / "s", snapshot_every_events=0)
    live = ToyState()
    store.recover(live)
    events = _events(30)
    _feed(store, live, events[:10])
    store.snapshot(live)
    _feed(store, live, events[10:])
    store.snapshot(live)
    store._conn.execute("UPDATE snapshots SET blob = randomblob(length(blob)) WHERE seq_upto = 30")
    assert store.latest_snapshot()[0] == 10
    store.close()
    store = StateStore(tmp_path / "s")
    state = ToyState()
    res = store.recover(state)
    assert (res.snapshot_seq, res.n_replayed, res.n_snapshots_skipped) == (10, 20, 1)
    assert state.to_json() == live.to_json()
    store.close()


def test_apply_failure_marks_state_diverged(tmp_path):
    class Fragile(ToyState):
        def apply(self, event):
            if event.item == "boom":
                raise RuntimeError("bug in apply")
            super().apply(event)

    store = StateStore(tmp_path / "s", snapshot_every_events=0)
    state = Fragile()
    store.recover(state)
    _feed(store, state, _events(5))
    store.record_decision("x", "search", {"query": "q", "arm": 0})
    with pytest.raises(StateDiverged, match="seq=6"):
        apply_feedback(store, state, "x", "boom", 0, {"reward": 1.0})
    assert store.diverged and store.last_seq() == 6  # committed, so never lost
    with pytest.raises(StateDiverged):
        apply_feedback(store, state, "d0", "another", 0, {"reward": 1.0})
    with pytest.raises(StateDiverged):
        store.snapshot(state)
    store.close(state)
    store = StateStore(tmp_path / "s")
    assert store.snapshot_seqs() == []  # close() did not snapshot the diverged state
    fixed = ToyState()
    assert store.recover(fixed).last_seq == 6
    assert fixed.clicks[("q", "boom")] == 1
    store.close()


# --------------------------------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------------------------------
class _Recording(ToyState):
    def __init__(self):
        super().__init__()
        self.applied: list[int] = []

    def apply(self, event):
        super().apply(event)
        self.applied.append(event.seq)


def test_concurrent_feedback_applies_in_seq_order(tmp_path):
    n_threads, per_thread = 8, 150
    store = StateStore(tmp_path / "s", snapshot_every_events=100, checkpoint_every_commits=50)
    state = _Recording()
    store.recover(state)
    errors = []

    def worker(t: int) -> None:
        try:
            rng = np.random.default_rng(t)
            for i in range(per_thread):
                did = f"t{t}-{i}"
                store.record_decision(did, "search", {"query": f"q{int(rng.integers(5))}",
                                                      "arm": int(rng.integers(N_ARMS))})
                apply_feedback(store, state, did, f"item{int(rng.integers(9))}", 0, {"reward": float(rng.random())})
                if i % 10 == 0:  # a duplicate from another angle
                    assert apply_feedback(store, state, did, f"item{int(rng.integers(9))}", 1,
                                          {"reward": 1.0}).seq > 0
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    n = store.last_seq()
    assert state.applied == list(range(1, n + 1))
    assert [e.seq for e in store.events_after(0)] == state.applied
    assert state.to_json() == _twin_of_log(store)
    store.close(state)
    store = StateStore(tmp_path / "s")
    fresh = ToyState()
    store.recover(fresh)
    assert fresh.to_json() == state.to_json()
    store.close()


# --------------------------------------------------------------------------------------------------
# invalid input
# --------------------------------------------------------------------------------------------------
_LONG = "x" * 129

INVALID_CALLS = [
    # (description, call(store, state), exception, message)
    ("empty decision id", lambda s, st: s.record_decision("", "search", {}), InvalidEvent, "decision_id: must not be empty"),
    ("long decision id", lambda s, st: s.record_decision(_LONG, "search", {}), InvalidEvent, "decision_id: longer than 128"),
    ("int decision id", lambda s, st: s.record_decision(5, "search", {}), InvalidEvent, "decision_id: must be a str"),
    ("NUL in decision id", lambda s, st: s.record_decision("a\x00b", "search", {}), InvalidEvent, "NUL"),
    ("bad kind", lambda s, st: s.record_decision("d", "browse", {}), InvalidEvent, "kind: must be one of"),
    ("payload not a dict", lambda s, st: s.record_decision("d", "search", [1]), InvalidEvent, "payload: must be a dict"),
    ("NaN in payload", lambda s, st: s.record_decision("d", "search", {"x": float("nan")}), InvalidEvent,
     "payload: not JSON-serialisable"),
    ("object in payload", lambda s, st: s.record_decision("d", "search", {"x": object()}), InvalidEvent,
     "payload: not JSON-serialisable"),
    ("lone surrogate", lambda s, st: s.record_decision("d", "search", {"x": "\ud800"}), InvalidEvent, "lone surrogate"),
    ("huge payload", lambda s, st: s.record_decision("d", "search", {"x": "y" * 70_000}), InvalidEvent, "larger than"),
    ("duplicate decision", lambda s, st: s.record_decision("known", "search", {}), DuplicateDecision, "already recorded"),
    ("unknown decision", lambda s, st: apply_feedback(s, st, "unknown", "i", 0), UnknownDecision, "unknown decision"),
    ("empty item", lambda s, st: apply_feedback(s, st, "known", "", 0), InvalidEvent, "item: must not be empty"),
    ("item not str", lambda s, st: apply_feedback(s, st, "known", 3, 0), InvalidEvent, "item: must be a str"),
    ("negative position", lambda s, st: apply_feedback(s, st, "known", "i", -1), InvalidEvent, "position: must be in"),
    ("huge position", lambda s, st: apply_feedback(s, st, "known", "i", 10_000), InvalidEvent, "position: must be in"),
    ("bool position", lambda s, st: apply_feedback(s, st, "known", "i", True), InvalidEvent, "position: must be an int"),
    ("float position", lambda s, st: apply_feedback(s, st, "known", "i", 1.0), InvalidEvent, "position: must be an int"),
    ("feedback payload NaN", lambda s, st: apply_feedback(s, st, "known", "i", 0, {"reward": float("inf")}),
     InvalidEvent, "payload: not JSON-serialisable"),
    ("negative seq_upto", lambda s, st: s.save_snapshot(-1, b""), InvalidEvent, "seq_upto: must be an int >= 0"),
    ("seq_upto beyond log", lambda s, st: s.save_snapshot(5, b""), InvalidEvent, "beyond the last committed event"),
    ("blob not bytes", lambda s, st: s.save_snapshot(0, "text"), InvalidEvent, "blob: must be bytes"),
    ("bad checkpoint mode", lambda s, st: s.checkpoint("NOW"), ValueError, "mode must be"),
]


@pytest.mark.parametrize("call, exc, message", [c[1:] for c in INVALID_CALLS], ids=[c[0] for c in INVALID_CALLS])
def test_invalid_input(recovered, call, exc, message):
    store, state = recovered
    store.record_decision("known", "search", {"query": "q", "arm": 0})
    with pytest.raises(exc, match=message):
        call(store, state)
    assert store.last_seq() == 0 and state.last_seq == 0
    assert store.counts()["n_decisions"] == 1
    assert not store._conn.in_transaction


@pytest.mark.parametrize("kwargs, message", [
    ({"synchronous": "OFF"}, "synchronous must be one of"),
    ({"synchronous": "normal"}, "synchronous must be one of"),
    ({"snapshot_every_events": -1}, "snapshot_every_events must be an int >= 0"),
    ({"checkpoint_every_commits": 0}, "checkpoint_every_commits must be an int >= 1"),
    ({"keep_snapshots": 0}, "keep_snapshots must be an int >= 1"),
    ({"keep_snapshots": True}, "keep_snapshots must be an int >= 1"),
])
def test_invalid_store_parameters(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        StateStore(tmp_path / "s", **kwargs)


def test_state_dir_is_exclusive_and_released_on_close(tmp_path):
    first = StateStore(tmp_path / "s")
    with pytest.raises(StateDirLocked, match="in use by another process"):
        StateStore(tmp_path / "s")
    first.close()
    first.close()  # idempotent
    StateStore(tmp_path / "s").close()


def test_feedback_before_recover_and_after_close_is_refused(tmp_path):
    store = StateStore(tmp_path / "s")
    store.record_decision("d", "search", {"query": "q", "arm": 0})
    with pytest.raises(RuntimeError, match="recover"):
        apply_feedback(store, ToyState(), "d", "i", 0, {"reward": 1.0})
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.record_decision("e", "search", {})


def test_toy_state_satisfies_protocol():
    assert isinstance(ToyState(), OnlineState)


# --------------------------------------------------------------------------------------------------
# several processes on one directory (shared=True); two stores in one process stand for two
# processes here (flock locks belong to the open file, so they exclude each other the same way)
# --------------------------------------------------------------------------------------------------
def _twin_upto(store: StateStore, seq: int) -> dict:
    return _twin([(e.seq, e.decision["query"], e.decision["arm"], e.item, e.payload["reward"])
                  for e in store.events_after(0) if e.seq <= seq])


def test_shared_stores_apply_every_process_events_in_seq_order(tmp_path):
    stores = [StateStore(tmp_path / "s", snapshot_every_events=0, shared=True) for _ in range(2)]
    states = [ToyState(), ToyState()]
    try:
        for store, state in zip(stores, states):
            store.recover(state)
        rng = np.random.default_rng(3)
        owner: dict[str, int] = {}
        for e in _events(120, seed=5):
            if e["new"]:
                owner[e["decision_id"]] = w = int(rng.integers(2))
                stores[w].record_decision(e["decision_id"], "search", {"query": e["query"], "arm": e["arm"]})
            # Feedback reaches either process, whichever logged the decision.
            w = int(rng.integers(2))
            res = apply_feedback(stores[w], states[w], e["decision_id"], e["item"], e["position"],
                                 {"reward": e["reward"]})
            assert not res.duplicate and stores[w].applied_seq == res.seq
            # The process that took it has applied exactly the log up to its event (the other
            # processes' events first, in seq order: the chain hash would differ otherwise).
            assert states[w].to_json() == _twin_upto(stores[w], res.seq)
            if rng.random() < 0.3:
                other = 1 - w
                n_before = stores[other].applied_seq
                applied = stores[other].catch_up(states[other])
                assert stores[other].applied_seq == res.seq and applied == res.seq - n_before
                assert states[other].to_json() == _twin_upto(stores[other], res.seq)
        assert len({owner[d] for d in owner}) == 2
        for store, state in zip(stores, states):
            store.catch_up(state)
            assert store.catch_up(state) == 0
            assert state.to_json() == _twin_of_log(store)
        # A duplicate sent to the other process is counted once there too.
        first = next(stores[0].events_after(0))
        dup = apply_feedback(stores[1], states[1], first.decision_id, first.item, 0, {"reward": 1.0})
        assert dup.duplicate and dup.seq == first.seq
        assert states[1].to_json() == _twin_of_log(stores[1])
    finally:
        for store, state in zip(stores, states):
            store.close()


def test_shared_and_exclusive_stores_exclude_each_other(tmp_path):
    shared = StateStore(tmp_path / "s", shared=True)
    with pytest.raises(StateDirLocked, match="in use by another process"):
        StateStore(tmp_path / "s")
    StateStore(tmp_path / "s", shared=True).close()  # shared ones coexist
    shared.close()
    exclusive = StateStore(tmp_path / "s")
    with pytest.raises(StateDirLocked, match="in use exclusively"):
        StateStore(tmp_path / "s", shared=True)
    exclusive.close()


def test_one_shared_store_writes_snapshots_and_another_takes_over(tmp_path):
    a = StateStore(tmp_path / "s", snapshot_every_events=0, shared=True)
    b = StateStore(tmp_path / "s", snapshot_every_events=0, shared=True)
    sa, sb = ToyState(), ToyState()
    a.recover(sa)
    b.recover(sb)
    events = _events(40, seed=9)
    _feed(a, sa, events[:20])
    assert a.snapshot(sa) == 20 and a.snapshot_writer
    b.catch_up(sb)
    assert b.snapshot(sb, force=True) is None and not b.snapshot_writer  # a holds SNAPSHOT.LOCK
    assert a.snapshot_seqs() == [20]
    _feed(a, sa, events[20:])
    a.close(sa)  # writer's final snapshot; it leaves, releasing SNAPSHOT.LOCK
    assert b.snapshot_seqs() == [20, 40]
    _feed(b, sb, [{**events[0], "decision_id": "late", "new": True}])
    b.close(sb)  # b caught up (events 21-40 from a) and took over as the writer
    assert b.snapshot_writer
    again = StateStore(tmp_path / "s")
    st2 = ToyState()
    try:
        rec = again.recover(st2)
        assert rec.snapshot_seq == 41 and rec.n_replayed == 0
        assert st2.to_json() == _twin_of_log(again)
    finally:
        again.close()


def test_shared_store_feedback_loses_nothing_under_threads_of_two_processes(tmp_path):
    stores = [StateStore(tmp_path / "s", snapshot_every_events=25, shared=True) for _ in range(2)]
    states = [ToyState(), ToyState()]
    for store, state in zip(stores, states):
        store.recover(state)
    events = [e for e in _events(200, seed=11) if e["new"]]
    for e in events:
        stores[0].record_decision(e["decision_id"], "search", {"query": e["query"], "arm": e["arm"]})
    errors = []

    def worker(w: int, part: list[dict]) -> None:
        try:
            for e in part:
                apply_feedback(stores[w], states[w], e["decision_id"], e["item"], e["position"],
                               {"reward": e["reward"]})
                stores[1 - w].catch_up(states[1 - w], blocking=False)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i % 2, events[i::4])) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    try:
        for store, state in zip(stores, states):
            store.catch_up(state)
            assert state.to_json() == _twin_of_log(store)
            assert state.last_seq == len(events)
    finally:
        for store, state in zip(stores, states):
            store.close(state)
