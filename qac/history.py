"""Keyed query statistics for the personal and session completion arms, static plus online.

One structure serves three arms:

* the user's own history: key = user id, entries = the queries that user issued (count, last time);
* the session follow-up memory: key = a previous query, entries = the queries that followed it in
  a session (count, last time);
* online global counts: key = ``""``, entries = queries issued since the build (count deltas over
  the most-popular-completion counts).

The static part is built offline from the training log and stored as flat arrays (a marisa-trie of
keys, and per key a sorted run of entry strings with int64 counts and last-seen Unix seconds);
a key's run is decoded to Python strings on first use. The online part is a per-key dictionary with a
sorted key list, so a prefix lookup is a binary search in both parts. Lookups never touch more than
the key's entries that start with the prefix.
"""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Iterable, Mapping

import marisa_trie
import numpy as np

from qac.artifacts import arrays_to_strings, strings_to_arrays

_MAX_CHAR = "\U0010ffff"


class KeyedQueryCounts:
    """``key -> {query: (count, last_seen)}`` with prefix lookups; static arrays + online overlay.

    Build with :meth:`build`; persist the static part with :meth:`to_arrays` / :meth:`from_arrays`
    and the online part with :meth:`state_arrays` / :meth:`load_state`.

    Thread safety: lookups may run concurrently with each other and with :meth:`observe` (writers are
    serialised by a lock); a lookup racing an ``observe`` of the same key sees the entry before or
    after the update and may miss one neighbouring entry of a newly inserted query.
    """

    def __init__(self, keys: marisa_trie.Trie, entry_ptr: np.ndarray, entries_flat: np.ndarray,
                 entries_ptr: np.ndarray, counts: np.ndarray, last_seen: np.ndarray):
        n_keys = len(keys)
        self._keys = keys
        self._entry_ptr = np.asarray(entry_ptr, dtype=np.int64)
        if self._entry_ptr.shape != (n_keys + 1,) or np.any(np.diff(self._entry_ptr) < 0):
            raise ValueError(f"entry_ptr must be non-decreasing of shape ({n_keys + 1},)")
        n = int(self._entry_ptr[-1]) if n_keys else 0
        self._flat = np.asarray(entries_flat, dtype=np.uint8)
        self._ptr = np.asarray(entries_ptr, dtype=np.int64)
        self._counts = np.asarray(counts, dtype=np.int64)
        self._last = np.asarray(last_seen, dtype=np.int64)
        if self._ptr.shape != (n + 1,) or self._counts.shape != (n,) or self._last.shape != (n,):
            raise ValueError(f"entry arrays must describe {n} entries")
        self._decoded: dict[int, tuple[list[str], list[int], list[int]]] = {}
        self._online: dict[str, dict[str, list[int]]] = {}
        self._online_sorted: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped by every online change (lets callers memoise lookups)

    # -- build / persistence -----------------------------------------------------------------------
    @classmethod
    def build(cls, triples: Iterable[tuple[str, str, int]]) -> "KeyedQueryCounts":
        """From ``(key, query, unix_seconds)`` occurrences (one per issued query).

        Each (key, query) gets ``count`` = number of occurrences and ``last_seen`` = the largest time.
        """
        acc: dict[str, dict[str, list[int]]] = defaultdict(dict)
        for key, query, ts in triples:
            row = acc[key].get(query)
            if row is None:
                acc[key][query] = [1, int(ts)]
            else:
                row[0] += 1
                if ts > row[1]:
                    row[1] = int(ts)
        return cls.from_dict(acc)

    @classmethod
    def from_dict(cls, acc: Mapping[str, Mapping[str, list[int] | tuple[int, int]]]) -> "KeyedQueryCounts":
        """From ``{key: {query: (count, last_seen)}}``."""
        keys = marisa_trie.Trie(list(acc))
        n_keys = len(keys)
        entry_ptr = np.zeros(n_keys + 1, dtype=np.int64)
        texts: list[str] = []
        counts: list[int] = []
        last: list[int] = []
        # Runs are stored in marisa key-id order so a key id indexes entry_ptr directly.
        ordered = sorted(((keys[k], k) for k in acc))
        for kid, key in ordered:
            entry_ptr[kid] = len(texts)
            for q in sorted(acc[key]):
                c, t = acc[key][q]
                texts.append(q)
                counts.append(int(c))
                last.append(int(t))
            entry_ptr[kid + 1] = len(texts)
        flat, ptr = strings_to_arrays(texts)
        return cls(keys, entry_ptr, flat, ptr, np.array(counts, dtype=np.int64),
                   np.array(last, dtype=np.int64))

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)`` for ``qac.artifacts`` (static part only)."""
        return ({"n_keys": len(self._keys), "n_entries": int(len(self._counts))},
                {"keys": np.frombuffer(self._keys.tobytes(), dtype=np.uint8),
                 "entry_ptr": self._entry_ptr, "entries_flat": self._flat, "entries_ptr": self._ptr,
                 "counts": self._counts, "last_seen": self._last})

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "KeyedQueryCounts":
        keys = marisa_trie.Trie()
        keys.frombytes(bytes(np.asarray(arrays["keys"])))
        if len(keys) != int(params["n_keys"]):
            raise ValueError(f"keys: params say {params['n_keys']}, trie holds {len(keys)}")
        return cls(keys, arrays["entry_ptr"], arrays["entries_flat"], arrays["entries_ptr"],
                   arrays["counts"], arrays["last_seen"])

    def warmup(self) -> None:
        """Decode every key's run now (for serving: no request pays for a first decode; about 100
        bytes per entry)."""
        for kid in range(len(self._keys)):
            self._static(self._keys.restore_key(kid))

    # -- lookups -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of static keys."""
        return len(self._keys)

    def _static(self, key: str) -> tuple[list[str], list[int], list[int]] | None:
        kid = self._keys.get(key)
        if kid is None:
            return None
        run = self._decoded.get(kid)
        if run is None:
            lo, hi = int(self._entry_ptr[kid]), int(self._entry_ptr[kid + 1])
            ptr = self._ptr[lo:hi + 1]
            texts = arrays_to_strings(self._flat[int(ptr[0]):int(ptr[-1])], ptr - ptr[0])
            run = (texts, self._counts[lo:hi].tolist(), self._last[lo:hi].tolist())
            self._decoded[kid] = run
        return run

    def lookup(self, key: str, prefix: str = "", limit: int = 2000) -> dict[str, tuple[int, int]]:
        """Entries of ``key`` whose query starts with ``prefix``: ``{query: (count, last_seen)}``.

        Static and online counts are added; ``last_seen`` is the later of the two. At most ``limit``
        static and ``limit`` online entries are examined (in query order).
        """
        out: dict[str, tuple[int, int]] = {}
        run = self._static(key)
        if run is not None:
            texts, counts, last = run
            lo = bisect.bisect_left(texts, prefix)
            hi = bisect.bisect_left(texts, prefix + _MAX_CHAR, lo, min(len(texts), lo + limit)) if prefix else \
                min(len(texts), limit)
            for i in range(lo, hi):
                out[texts[i]] = (counts[i], last[i])
        online = self._online.get(key)
        if online:
            keys = self._online_sorted[key]
            lo = bisect.bisect_left(keys, prefix)
            hi = bisect.bisect_left(keys, prefix + _MAX_CHAR, lo) if prefix else len(keys)
            for q in keys[lo:min(hi, lo + limit)]:
                c, t = online[q]
                old = out.get(q)
                out[q] = (c, t) if old is None else (old[0] + c, max(old[1], t))
        return out

    def count(self, key: str, query: str) -> tuple[int, int]:
        """``(count, last_seen)`` of one (key, query); ``(0, 0)`` if never seen."""
        c, t = 0, 0
        run = self._static(key)
        if run is not None:
            texts = run[0]
            i = bisect.bisect_left(texts, query)
            if i < len(texts) and texts[i] == query:
                c, t = run[1][i], run[2][i]
        online = self._online.get(key)
        if online:
            row = online.get(query)
            if row is not None:
                c, t = c + row[0], max(t, row[1])
        return c, t

    def size(self, key: str) -> int:
        """Number of entries of ``key`` (static + online; a query in both counts twice)."""
        kid = self._keys.get(key)
        n = 0 if kid is None else int(self._entry_ptr[kid + 1] - self._entry_ptr[kid])
        online = self._online.get(key)
        return n + (len(online) if online else 0)

    def online_count(self, key: str, query: str) -> int:
        """Online-only count of (key, query)."""
        online = self._online.get(key)
        row = online.get(query) if online else None
        return 0 if row is None else row[0]

    # -- online updates ------------------------------------------------------------------------------
    def observe(self, key: str, query: str, timestamp: int, count: int = 1) -> None:
        """Add ``count`` occurrences of ``query`` under ``key`` at ``timestamp`` (Unix seconds)."""
        with self._lock:
            self.version += 1
            online = self._online.get(key)
            if online is None:
                online = self._online[key] = {}
                self._online_sorted[key] = []
            row = online.get(query)
            if row is None:
                # The entry first, then its place in the sorted list, so that a reader never finds a
                # listed query without its entry. The insort is in place (a memmove): readers slice
                # the list under the GIL, so a lookup racing an insert may miss or repeat one
                # neighbour of the new entry, never crash.
                online[query] = [int(count), int(timestamp)]
                bisect.insort(self._online_sorted[key], query)
            else:
                row[0] += int(count)
                row[1] = max(row[1], int(timestamp))

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The online part as arrays (snapshot): keys, queries, counts, last_seen."""
        keys, queries, counts, last = [], [], [], []
        for key in sorted(self._online):
            for q in self._online_sorted[key]:
                c, t = self._online[key][q]
                keys.append(key)
                queries.append(q)
                counts.append(c)
                last.append(t)
        kf, kp = strings_to_arrays(keys)
        qf, qp = strings_to_arrays(queries)
        return {"keys_flat": kf, "keys_ptr": kp, "queries_flat": qf, "queries_ptr": qp,
                "counts": np.array(counts, dtype=np.int64), "last_seen": np.array(last, dtype=np.int64)}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Replace the online part with a snapshot from :meth:`state_arrays`."""
        keys = arrays_to_strings(arrays["keys_flat"], arrays["keys_ptr"])
        queries = arrays_to_strings(arrays["queries_flat"], arrays["queries_ptr"])
        counts = np.asarray(arrays["counts"]).tolist()
        last = np.asarray(arrays["last_seen"]).tolist()
        if not len(keys) == len(queries) == len(counts) == len(last):
            raise ValueError("online state arrays have different lengths")
        online: dict[str, dict[str, list[int]]] = {}
        for k, q, c, t in zip(keys, queries, counts, last):
            online.setdefault(k, {})[q] = [int(c), int(t)]
        with self._lock:
            self.version += 1
            self._online = online
            self._online_sorted = {k: sorted(v) for k, v in online.items()}

    def reset_online(self) -> None:
        """Drop every online update (back to the built state)."""
        with self._lock:
            self.version += 1
            self._online = {}
            self._online_sorted = {}
