"""A tiny "server" over :mod:`serving.state` for the crash test, plus the toy online state.

Usage (from the repo root)::

    python -m tests.state_crash_worker serve STATE_DIR [--snapshot-every N] [--synchronous NORMAL]
    python -m tests.state_crash_worker recover STATE_DIR

``serve`` recovers the toy state, prints ``READY <recovery JSON>``, then for every stdin line (a JSON
object) records the decision (if ``"new"``) and the feedback through
:func:`serving.state.apply_feedback`, and prints ``ACK <seq>`` (or ``DUP <seq>`` / ``ERR <message>``)
and flushes: a line is acknowledged exactly when its event is committed and applied. At end of
input it closes the store gracefully (final snapshot) and exits 0.

``recover`` opens the store, recovers, prints ``{"recovery": ..., "state": ...}`` as one JSON line
and closes gracefully.

Line format: ``{"decision_id", "new": bool, "query", "arm", "item", "position", "reward"}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from serving.state import (
    DuplicateDecision,
    FeedbackEvent,
    InvalidEvent,
    StateStore,
    UnknownDecision,
    apply_feedback,
    pack_arrays,
    unpack_arrays,
)

N_ARMS = 4
_CHAIN_MOD = (1 << 61) - 1


def _strings_to_arrays(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [s.encode("utf-8") for s in strings]
    ptr = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=ptr[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ptr


def _arrays_to_strings(flat: np.ndarray, ptr: np.ndarray) -> list[str]:
    raw = flat.tobytes()
    return [raw[ptr[i]:ptr[i + 1]].decode("utf-8") for i in range(len(ptr) - 1)]


class ToyState:
    """Bandit-like sums per arm (numpy) plus (query, item) click counts (dict).

    ``chain`` folds every applied seq into an order-sensitive hash, and ``reward_sum`` is a float
    sum, so a state reached by applying events in a different order (or twice) shows.
    """

    def __init__(self) -> None:
        self.reward_sum = np.zeros(N_ARMS, dtype=np.float64)
        self.n_pulls = np.zeros(N_ARMS, dtype=np.int64)
        self.clicks: dict[tuple[str, str], int] = {}
        self.chain = 0
        self.last_seq = 0

    def apply(self, event: FeedbackEvent) -> None:
        arm = int(event.decision["arm"])
        self.reward_sum[arm] += float(event.payload["reward"])
        self.n_pulls[arm] += 1
        key = (event.decision["query"], event.item)
        self.clicks[key] = self.clicks.get(key, 0) + 1
        self.chain = (self.chain * 1_000_003 + event.seq) % _CHAIN_MOD
        self.last_seq = event.seq

    def copy_for_snapshot(self) -> "ToyState":
        other = ToyState()
        other.reward_sum = self.reward_sum.copy()
        other.n_pulls = self.n_pulls.copy()
        other.clicks = self.clicks.copy()
        other.chain, other.last_seq = self.chain, self.last_seq
        return other

    def to_snapshot(self) -> bytes:
        keys = list(self.clicks)
        q_flat, q_ptr = _strings_to_arrays([k[0] for k in keys])
        i_flat, i_ptr = _strings_to_arrays([k[1] for k in keys])
        return pack_arrays({"reward_sum": self.reward_sum, "n_pulls": self.n_pulls,
                            "query_flat": q_flat, "query_ptr": q_ptr, "item_flat": i_flat, "item_ptr": i_ptr,
                            "click_count": np.fromiter(self.clicks.values(), dtype=np.int64, count=len(keys))},
                           {"chain": self.chain, "last_seq": self.last_seq})

    def load_snapshot(self, blob: bytes) -> None:
        meta, a = unpack_arrays(blob)
        self.reward_sum, self.n_pulls = a["reward_sum"], a["n_pulls"]
        queries = _arrays_to_strings(a["query_flat"], a["query_ptr"])
        items = _arrays_to_strings(a["item_flat"], a["item_ptr"])
        self.clicks = dict(zip(zip(queries, items), a["click_count"].tolist()))
        self.chain, self.last_seq = int(meta["chain"]), int(meta["last_seq"])

    def to_json(self) -> dict:
        return {"reward_sum": self.reward_sum.tolist(), "n_pulls": self.n_pulls.tolist(),
                "clicks": sorted([q, i, c] for (q, i), c in self.clicks.items()),
                "chain": self.chain, "last_seq": self.last_seq}


def _serve(store: StateStore, state: ToyState) -> None:
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if req.get("new"):
                try:
                    store.record_decision(req["decision_id"], "search", {"query": req["query"], "arm": req["arm"]})
                except DuplicateDecision:
                    pass  # committed just before a crash, re-sent after it: the retry is harmless
            res = apply_feedback(store, state, req["decision_id"], req["item"], req["position"],
                                 {"reward": req["reward"]})
        except (InvalidEvent, UnknownDecision) as exc:
            out.write(f"ERR {exc}\n")
        else:
            out.write(f"{'DUP' if res.duplicate else 'ACK'} {res.seq}\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("serve", "recover"))
    ap.add_argument("state_dir", type=Path)
    ap.add_argument("--snapshot-every", type=int, default=50)
    ap.add_argument("--synchronous", default="NORMAL")
    args = ap.parse_args(argv)
    store = StateStore(args.state_dir, synchronous=args.synchronous, snapshot_every_events=args.snapshot_every)
    state = ToyState()
    recovery = store.recover(state)
    if args.mode == "recover":
        print(json.dumps({"recovery": dataclasses.asdict(recovery), "state": state.to_json()}), flush=True)
    else:
        print("READY " + json.dumps(dataclasses.asdict(recovery)), flush=True)
        _serve(store, state)
    store.close(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
