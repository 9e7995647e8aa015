"""Memory index arm: query -> item click statistics with time decay, seeded by predicted queries.

"Users' actions (query-click information) are the single most important field for retrieval,
serving as a running memory of which entities have worked for a given query" (Bernardi et al.,
"Learning to rank and retrieve", the memory index section). The index holds query-to-entity (Q2E)
scores of two kinds:

- **observed** Q2E scores: the time-decayed click count of every (normalised query, item) pair,

  ``count(q, i, t) = sum over clicks (q, i, w, t_c) of w * 0.5 ** ((t - t_c) / half_life)``

  (``t``, ``t_c`` in Unix seconds, ``half_life = 86400 * half_life_days``). Each pair stores
  ``(value, last_time)`` and decays lazily: ``count(t) = value * 0.5 ** ((t - last_time) /
  half_life)``. A click ``(w, t_c)`` with ``t_c >= last_time`` updates ``value <- value * 0.5 **
  ((t_c - last_time) / half_life) + w; last_time <- t_c``; an out-of-order click (``t_c <
  last_time``) adds ``w * 0.5 ** ((last_time - t_c) / half_life)`` and keeps ``last_time``. Both
  are the formula above, exactly (up to float64 rounding); the offline part (the build's clicks)
  and the online part (clicks observed since) are two such sums whose total is the count.
- **predicted** Q2E scores for the cold start (doc2query-style, Nogueira et al. 2019): every item's
  document is its own text extended with the distinct training queries that led to it; a query
  is scored against these documents with BM25 (Robertson & Zaragoza 2009; Lucene idf
  ``ln(1 + (N - df + 0.5) / (df + 0.5))``, ``k1``, ``b``), so a query never seen with clicks still
  reaches the items of training queries sharing its words and the items whose text matches it.
  The predicted score of a pair is expressed in click units: ``predicted_weight * bm25(q, i) /
  max_j bm25(q, j)``, i.e. the best predicted item of a query is worth ``predicted_weight``
  (decayed) clicks.

**Override rule.** The score of ``(q, i)`` at time ``t`` is ``count(q, i, t)`` if the pair has an
observed click (offline or online), else its predicted score. An observed pair never keeps its
predicted score, even when its decayed count has fallen below it. Items are ranked by this score
(float32) descending, ties by item id ascending.

The evaluation time is ``context.timestamp``, or when that is 0 the arm's clock (the latest
timestamp it has seen, in the build or through ``observe``). Ranking inside the observed part does
not depend on ``t`` (every count is multiplied by the same ``0.5 ** (t / half_life)``); its
position against predicted scores does.

Data layout: the offline part is flat arrays (distinct queries sorted, UTF-8 flat + ptr; postings
``click_ptr`` int64 / ``click_items`` int32 / ``click_value`` float64 / ``click_time`` int64 sorted by
item; the BM25 index as CSR ``bm25_indptr`` / ``bm25_indices`` / ``bm25_data`` over a sorted term
vocabulary). Counts are float64 (they are exact statistics, not scores). The online part is a dict
``query -> {item: [value, last_time]}`` and is what ``state_arrays`` / ``load_state`` snapshot.
The predicted side is rebuilt offline only (the next build reads the event log).
"""
from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from qac.artifacts import arrays_to_strings, strings_to_arrays
from qac.text import normalize_query
from retrieval.arms import _kernels
from retrieval.arms.base import (Arm, Context, EMPTY_CONTEXT, ScratchPool, check_growth, check_n, check_query,
                                 empty_result, sorted_member)

__all__ = ["MemoryConfig", "MemoryArm", "DecayedPostings", "build_memory_arm", "top_n"]

FORMAT = "memory_arm/1"
SECONDS_PER_DAY = 86400


def _plain(a: np.ndarray) -> np.ndarray:
    # numba type-checks exact ndarrays on its fast path, memmap subclasses on a slow one.
    return a.view(np.ndarray) if isinstance(a, np.ndarray) else np.asarray(a)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """Parameters of the memory index arm.

    Parameters
    ----------
    half_life_days : float > 0
        A click's weight halves every ``half_life_days`` days.
    predicted_weight : float >= 0
        Click-equivalent of the best predicted item of a query (0 disables the predicted side).
    k1 : float >= 0
        BM25 term-frequency saturation of the predicted-query index.
    b : float in [0, 1]
        BM25 length normalisation.
    max_df_fraction : float in (0, 1]
        Terms in more than this fraction of the item documents are not indexed (``com``, ``org``:
        idf ~ 0 yet postings over every item; dropping them keeps the request path bounded).
    expand_min_weight : float >= 0
        Only training pairs with weight >= this extend the item documents with their query.
    """

    half_life_days: float = 30.0
    predicted_weight: float = 0.1
    k1: float = 1.2
    b: float = 0.75
    max_df_fraction: float = 0.2
    expand_min_weight: float = 0.0

    def __post_init__(self) -> None:
        checks = (
            ("half_life_days", _is_num(self.half_life_days) and self.half_life_days > 0, "> 0"),
            ("predicted_weight", _is_num(self.predicted_weight) and self.predicted_weight >= 0, ">= 0"),
            ("k1", _is_num(self.k1) and self.k1 >= 0, ">= 0"),
            ("b", _is_num(self.b) and 0 <= self.b <= 1, "in [0, 1]"),
            ("max_df_fraction", _is_num(self.max_df_fraction) and 0 < self.max_df_fraction <= 1,
             "in (0, 1]"),
            ("expand_min_weight", _is_num(self.expand_min_weight) and self.expand_min_weight >= 0,
             ">= 0"),
        )
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"MemoryConfig.{name} must be {what}, got {getattr(self, name)!r}")

    @property
    def half_life_seconds(self) -> float:
        return float(self.half_life_days) * SECONDS_PER_DAY


# ---------------------------------------------------------------------------------------------
# Ranking helper
# ---------------------------------------------------------------------------------------------

_EMPTY_IDS = np.zeros(0, dtype=np.int32)
_EMPTY_IDS.setflags(write=False)


def top_n(ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best ``(ids, scores)`` by float32 score descending, ties by id ascending.

    Parameters
    ----------
    ids : int array (m,), distinct
    scores : float array (m,); cast to float32 first, so ties are ties of the returned scores.
    n : int >= 0

    Returns
    -------
    ids : int32 (min(m, n),), scores : float32 (min(m, n),)
    """
    ids = np.asarray(ids, dtype=np.int32)
    s = np.asarray(scores, dtype=np.float32)
    m = ids.size
    if m == 0 or n <= 0:
        return empty_result()
    if m > 4 * n:
        # Exact: every score above the n-th largest is kept, ties at it are settled by id below.
        kth = np.partition(s, m - n)[m - n]
        keep = s >= kth
        ids, s = ids[keep], s[keep]
    order = np.lexsort((ids, -s))[:n]
    return ids[order], s[order]


# ---------------------------------------------------------------------------------------------
# Decayed click postings: offline flat arrays + online delta
# ---------------------------------------------------------------------------------------------


def _decay(value: float, from_time: int, to_time: int, half_life: float) -> float:
    return value * 2.0 ** ((from_time - to_time) / half_life)


def _add_click(entry: tuple, weight: float, t: int, half_life: float) -> tuple[float, int]:
    """``(value, last_time)`` after folding one click into ``entry`` (the lazy-decay update of the
    module docstring). Returns a new pair: entries are replaced, never changed in place, so a reader
    on another thread sees either the old pair or the new one."""
    value, last = entry
    if t >= last:
        return _decay(value, last, t, half_life) + weight, t
    return value + _decay(weight, t, last, half_life), last


class DecayedPostings:
    """``key -> {item: count(t)}`` with time-decayed counts (module docstring), offline + online.

    Parameters
    ----------
    arrays : mapping with ``key_flat`` uint8, ``key_ptr`` int64 (n_keys + 1) (keys sorted,
        distinct), ``post_ptr`` int64 (n_keys + 1), ``post_items`` int32, ``post_value`` float64,
        ``post_time`` int64 (postings of each key sorted by item). May be read-only memory maps.
    half_life_seconds : float > 0

    Raises
    ------
    ValueError
        Missing arrays, wrong dtypes or inconsistent lengths.
    """

    ARRAY_KEYS = ("key_flat", "key_ptr", "post_ptr", "post_items", "post_value", "post_time")
    _DTYPES = {"key_flat": np.uint8, "key_ptr": np.int64, "post_ptr": np.int64, "post_items": np.int32,
               "post_value": np.float64, "post_time": np.int64}

    def __init__(self, arrays: Mapping[str, np.ndarray], half_life_seconds: float) -> None:
        _check_arrays("DecayedPostings", arrays, self._DTYPES)
        self.half_life = float(half_life_seconds)
        a = {k: _plain(arrays[k]) for k in self.ARRAY_KEYS}
        self.key_flat, self.key_ptr = a["key_flat"], a["key_ptr"]
        self.post_ptr, self.post_items = a["post_ptr"], a["post_items"]
        self.post_value, self.post_time = a["post_value"], a["post_time"]
        n_keys = self.key_ptr.size - 1
        n_post = self.post_items.size
        if (self.post_ptr.shape != (n_keys + 1,) or self.post_ptr[0] != 0 or self.post_ptr[-1] != n_post
                or self.post_value.shape != (n_post,) or self.post_time.shape != (n_post,)
                or self.key_ptr[-1] != self.key_flat.size):
            raise ValueError("DecayedPostings: inconsistent key_ptr / post_ptr / postings lengths")
        keys = arrays_to_strings(self.key_flat, self.key_ptr)
        self._row = dict(zip(keys, range(n_keys)))
        if len(self._row) != n_keys:
            raise ValueError("key_flat: duplicate keys")
        self.online: dict[str, dict[int, tuple[float, int]]] = {}
        # Writers (``add``, under the caller's feedback lock) and readers (Search threads) of a key's
        # online items meet only inside this lock, held for one dict update or one snapshot.
        self._online_lock = threading.Lock()

    @property
    def n_keys(self) -> int:
        return self.key_ptr.size - 1

    @classmethod
    def build(cls, keys: Sequence[str], items: np.ndarray, times: np.ndarray, weights: np.ndarray,
              half_life_seconds: float) -> "DecayedPostings":
        """Aggregate clicks ``(keys[j], items[j], weights[j], times[j])`` into the offline arrays.

        Every pair gets ``last_time = max t_c`` and ``value = sum w * 0.5 ** ((last_time - t_c) /
        half_life)``, the same count as replaying the clicks through ``add``.
        """
        keys = list(keys)
        items = np.asarray(items, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        if not (len(keys) == items.size == times.size == weights.size):
            raise ValueError("clicks: keys, items, times and weights must have the same length")
        uniq = sorted(set(keys))
        row = {k: i for i, k in enumerate(uniq)}
        key_id = np.fromiter(map(row.__getitem__, keys), dtype=np.int64, count=len(keys))
        n_items_code = int(items.max()) + 1 if items.size else 1
        code = key_id * n_items_code + items
        pairs, inv = np.unique(code, return_inverse=True)
        inv = inv.reshape(-1)
        last = np.full(pairs.size, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, inv, times)
        value = np.bincount(inv, weights=weights * np.exp2((times - last[inv]) / float(half_life_seconds)),
                            minlength=pairs.size)
        pair_key = pairs // n_items_code
        post_ptr = np.zeros(len(uniq) + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_key, minlength=len(uniq)), out=post_ptr[1:])
        flat, ptr = strings_to_arrays(uniq)
        return cls({"key_flat": flat, "key_ptr": ptr, "post_ptr": post_ptr,
                    "post_items": (pairs % n_items_code).astype(np.int32),
                    "post_value": value.astype(np.float64), "post_time": last}, half_life_seconds)

    def offline_arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.ARRAY_KEYS}

    def add(self, key: str, item: int, weight: float, t: int) -> None:
        """Fold one online click into the delta (deterministic; the offline arrays are never written)."""
        weight, t = float(weight), int(t)
        with self._online_lock:
            per_key = self.online.get(key)
            if per_key is None:
                per_key = self.online[key] = {}
            entry = per_key.get(item)
            per_key[item] = (weight, t) if entry is None else _add_click(entry, weight, t, self.half_life)

    def counts(self, key: str, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Observed items of ``key`` and their counts at time ``t``: (int32 (m,) ascending, float64 (m,))."""
        hl = self.half_life
        return self._per_item(key, lambda a, b: self.post_value[a:b] * np.exp2((self.post_time[a:b] - t) / hl),
                              lambda cur, value, last: (0.0 if cur is None else cur) + _decay(value, last, t, hl),
                              np.float64)

    def last_times(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Items of ``key`` and the time of their latest click: (int32 (m,) ascending, int64 (m,) seconds)."""
        return self._per_item(key, lambda a, b: self.post_time[a:b],
                              lambda cur, value, last: last if cur is None else max(cur, last), np.int64)

    def _per_item(self, key: str, offline: Callable[[int, int], np.ndarray],
                  fold: Callable[[object, float, int], object], dtype) -> tuple[np.ndarray, np.ndarray]:
        """Items of ``key`` (int32 ascending) and one ``dtype`` value each: ``offline(a, b)`` gives the
        values of the offline postings ``[a, b)``, and each online ``(value, last)`` entry is folded in
        by ``fold(offline value or None, value, last)``."""
        r = self._row.get(key)
        online = self.online.get(key)
        if r is not None:
            a, b = int(self.post_ptr[r]), int(self.post_ptr[r + 1])
            items, values = self.post_items[a:b], offline(a, b)
            if not online:
                return items, values
            merged = dict(zip(items.tolist(), values.tolist()))
        elif online:
            merged = {}
        else:
            return _EMPTY_IDS, np.zeros(0, dtype=dtype)
        # A snapshot under the lock: a Feedback thread adding to this key meanwhile cannot change the
        # dict under the loop ("dictionary changed size during iteration"). ``list(dict.items())``
        # alone is not atomic: a garbage collection inside it can run Python finalizers, and the
        # interpreter may switch threads there.
        with self._online_lock:
            snapshot = list(online.items())
        for item, (value, last) in snapshot:
            merged[item] = fold(merged.get(item), value, last)
        ids = np.fromiter(merged.keys(), dtype=np.int32, count=len(merged))
        vals = np.fromiter(merged.values(), dtype=dtype, count=len(merged))
        order = np.argsort(ids, kind="stable")
        return ids[order], vals[order]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The online delta as flat arrays (keys sorted, items ascending), same names as offline."""
        keys = sorted(self.online)
        flat, ptr = strings_to_arrays(keys)
        lens = [len(self.online[k]) for k in keys]
        post_ptr = np.zeros(len(keys) + 1, dtype=np.int64)
        if keys:
            np.cumsum(lens, out=post_ptr[1:])
        items, values, times = [], [], []
        for k in keys:
            per_key = self.online[k]
            for item in sorted(per_key):
                value, last = per_key[item]
                items.append(item)
                values.append(value)
                times.append(last)
        return {"key_flat": flat, "key_ptr": ptr, "post_ptr": post_ptr,
                "post_items": np.array(items, dtype=np.int32), "post_value": np.array(values, dtype=np.float64),
                "post_time": np.array(times, dtype=np.int64)}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Replace the online delta by :meth:`state_arrays` output (copied; inputs never written)."""
        _check_arrays("state", arrays, self._DTYPES)
        keys = arrays_to_strings(arrays["key_flat"], arrays["key_ptr"])
        ptr = np.asarray(arrays["post_ptr"]).tolist()
        if len(ptr) != len(keys) + 1 or (keys and ptr[-1] != len(arrays["post_items"])):
            raise ValueError("state: post_ptr does not match keys / postings")
        items = np.asarray(arrays["post_items"]).tolist()
        values = np.asarray(arrays["post_value"]).tolist()
        times = np.asarray(arrays["post_time"]).tolist()
        online: dict[str, dict[int, tuple[float, int]]] = {}
        for j, k in enumerate(keys):
            online[k] = {items[p]: (values[p], times[p]) for p in range(ptr[j], ptr[j + 1])}
        self.online = online


def _check_arrays(what: str, arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, type]) -> None:
    missing = [k for k in dtypes if k not in arrays]
    if missing:
        raise ValueError(f"{what}: missing arrays {missing}")
    for k, dt in dtypes.items():
        a = arrays[k]
        if not isinstance(a, np.ndarray) or a.dtype != dt or a.ndim != 1:
            raise ValueError(f"{what}: {k} must be a 1-d {np.dtype(dt)} array")


def _prefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------
# Predicted-query (doc2query-style) BM25 index
# ---------------------------------------------------------------------------------------------
class _PredictedIndex:
    """BM25 over item documents = item text + predicted queries; impacts precomputed per posting."""

    ARRAY_KEYS = ("term_flat", "term_ptr", "bm25_indptr", "bm25_indices", "bm25_data")
    _DTYPES = {"term_flat": np.uint8, "term_ptr": np.int64, "bm25_indptr": np.int64,
               "bm25_indices": np.int32, "bm25_data": np.float32}

    def __init__(self, arrays: Mapping[str, np.ndarray], n_items: int) -> None:
        _check_arrays("predicted index", arrays, self._DTYPES)
        a = {k: _plain(arrays[k]) for k in self.ARRAY_KEYS}
        self.term_flat, self.term_ptr = a["term_flat"], a["term_ptr"]
        self.bm25_indptr, self.bm25_indices, self.bm25_data = a["bm25_indptr"], a["bm25_indices"], a["bm25_data"]
        terms = arrays_to_strings(self.term_flat, self.term_ptr)
        if (self.bm25_indptr.shape != (len(terms) + 1,) or self.bm25_indptr[-1] != self.bm25_indices.size
                or self.bm25_data.shape != self.bm25_indices.shape):
            raise ValueError("predicted index: inconsistent bm25_indptr / bm25_indices / bm25_data")
        if self.bm25_indices.size and (self.bm25_indices.min() < 0 or self.bm25_indices.max() >= n_items):
            raise ValueError("bm25_indices: item id out of range")
        self._term_id = dict(zip(terms, range(len(terms))))
        self.n_items = int(n_items)
        self._scratch = ScratchPool(self.n_items)

    @classmethod
    def build(cls, docs: Sequence[Sequence[str]], config: MemoryConfig) -> "_PredictedIndex":
        """``docs[i]`` is the token list of item i's extended document."""
        n_docs = len(docs)
        vocab: dict[str, int] = {}
        setdefault = vocab.setdefault
        lens = np.fromiter(map(len, docs), dtype=np.int64, count=n_docs)
        tok = np.fromiter((setdefault(t, len(vocab)) for d in docs for t in d), dtype=np.int64,
                          count=int(lens.sum()))
        doc = np.repeat(np.arange(n_docs, dtype=np.int64), lens)
        names = list(vocab)
        order = sorted(range(len(names)), key=names.__getitem__)
        rank = np.empty(len(names), dtype=np.int64)
        rank[order] = np.arange(len(names))
        code = rank[tok] * n_docs + doc if tok.size else tok
        pairs, tf = np.unique(code, return_counts=True)
        term, d = pairs // max(n_docs, 1), pairs % max(n_docs, 1)
        df = np.bincount(term, minlength=len(names))
        avgdl = float(lens.mean()) if n_docs and lens.sum() else 1.0
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
        k1, b = float(config.k1), float(config.b)
        tf = tf.astype(np.float64)
        impact = idf[term] * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * lens[d] / avgdl))
        keep = df[term] <= config.max_df_fraction * n_docs
        term, d, impact = term[keep], d[keep], impact[keep]
        indptr = np.zeros(len(names) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term, minlength=len(names)), out=indptr[1:])
        flat, ptr = strings_to_arrays([names[i] for i in order])
        return cls({"term_flat": flat, "term_ptr": ptr, "bm25_indptr": indptr,
                    "bm25_indices": d.astype(np.int32), "bm25_data": impact.astype(np.float32)}, n_docs)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.ARRAY_KEYS}

    def top(self, query: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items by BM25 of ``query``'s tokens (float32 desc, id asc)."""
        qtf: dict[int, float] = {}
        get = self._term_id.get
        for tok in query.split():
            t = get(tok)
            if t is not None:
                qtf[t] = qtf.get(t, 0.0) + 1.0
        if not qtf or n <= 0:
            return empty_result()
        scratch, touched = self._scratch.get()
        # BM25 = sum over query terms of qtf * impact(term, item): a sparse dot product.
        return _kernels.dot_top_n(np.fromiter(qtf.keys(), dtype=np.int64, count=len(qtf)),
                                  np.fromiter(qtf.values(), dtype=np.float64, count=len(qtf)),
                                  self.bm25_indptr, self.bm25_indices, self.bm25_data, scratch, touched,
                                  int(n))

    def warmup(self) -> None:
        scratch, touched = self._scratch.get()
        n_terms = min(1, self.bm25_indptr.size - 1)
        _kernels.dot_top_n(np.zeros(n_terms, dtype=np.int64), np.ones(n_terms, dtype=np.float64),
                           self.bm25_indptr, self.bm25_indices, self.bm25_data, scratch, touched, 1)


# ---------------------------------------------------------------------------------------------
# The arm
# ---------------------------------------------------------------------------------------------


class OnlineClickArm(Arm):
    """What the arms that learn clicks online over :class:`DecayedPostings` share (memory index, user
    history): the catalogue size, a clock that observed clicks advance (the evaluation time when a
    request has no timestamp), the click checks, and the clock in snapshots."""

    def _init_clock(self, n_items: int, clock: int) -> None:
        self._n_items = int(n_items)
        self._built_clock = int(clock)
        self.clock = int(clock)

    @property
    def n_items(self) -> int:
        return self._n_items

    def grow(self, n_items: int) -> None:
        """Extend the catalogue to ``n_items`` items (an open catalogue's new sites,
        :mod:`retrieval.growth`): they may be observed from now on. O(1).

        Raises
        ------
        ValueError
            ``n_items`` not an int or smaller than the current catalogue.
        """
        self._n_items = check_growth(self._n_items, n_items)

    def _time(self, context: Context) -> int:
        t = int(context.timestamp)
        return t if t != 0 else self.clock

    def _check_click(self, item_id, weight) -> None:
        if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)) or not 0 <= item_id < self._n_items:
            raise ValueError(f"item_id must be an int in [0, {self._n_items}), got {item_id!r}")
        if not _is_num(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")

    def _advance(self, t: int) -> None:
        if t > self.clock:
            self.clock = t

    def _clock_state(self) -> dict[str, np.ndarray]:
        return {"clock": np.array([self.clock], dtype=np.int64)}

    def _checked_state(self, arrays: Mapping[str, np.ndarray], prefixes: Sequence[str]) -> int:
        """Validate a snapshot's clock and the item ids of its ``<prefix>post_items``; return the clock."""
        clock = arrays.get("clock")
        if not isinstance(clock, np.ndarray) or clock.dtype != np.int64 or clock.shape != (1,):
            raise ValueError("state: clock must be an int64 array of shape (1,)")
        for prefix in prefixes:
            items = arrays.get(prefix + "post_items")
            if isinstance(items, np.ndarray) and items.size and (items.min() < 0 or items.max() >= self._n_items):
                raise ValueError(f"state: {prefix}post_items must lie in [0, {self._n_items})")
        return int(clock[0])


class MemoryArm(OnlineClickArm):
    """Memory index arm (module docstring): observed decayed click counts override predicted scores.

    Build with :func:`build_memory_arm`; load with :meth:`from_arrays`.

    Attributes
    ----------
    name : str
        ``"memory"``.
    n_items : int
    config : MemoryConfig
    clock : int
        Latest timestamp seen (Unix seconds), the evaluation time when ``context.timestamp == 0``.
    """

    name = "memory"

    def __init__(self, config: MemoryConfig, n_items: int, clicks: DecayedPostings,
                 predicted: _PredictedIndex, clock: int) -> None:
        self.config = config
        self._init_clock(n_items, clock)
        self.clicks = clicks
        self.predicted = predicted

    # -- request path ---------------------------------------------------------------------

    def retrieve(self, query: str, context: Context, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items for ``query`` (normalised) at ``context.timestamp`` (0: the arm's clock).

        Returns
        -------
        ids : int32 (<= n,), scores : float32 (<= n,), descending, ties by id ascending.

        Raises
        ------
        ValueError
            ``n`` is not an integer >= 0.
        """
        n = check_n(n)
        query = normalize_query(check_query(query))
        if n == 0 or not query:
            return empty_result()
        t = self._time(context)
        obs_ids, obs_counts = self.clicks.counts(query, t)
        pw = self.config.predicted_weight
        if pw <= 0:
            return top_n(obs_ids, obs_counts, n)
        pred_ids, pred_s = self.predicted.top(query, n + obs_ids.size)
        if pred_ids.size == 0:
            return top_n(obs_ids, obs_counts, n)
        pred = pred_s.astype(np.float64) * (pw / float(pred_s[0])) if pred_s[0] > 0 else np.zeros(pred_s.size)
        if obs_ids.size:
            # Override: an observed pair keeps its count and drops its predicted score.
            keep = ~sorted_member(obs_ids, pred_ids)[1]
            pred_ids, pred = pred_ids[keep], pred[keep]
            return top_n(np.concatenate((obs_ids, pred_ids)), np.concatenate((obs_counts, pred)), n)
        return top_n(pred_ids, pred, n)

    def observed(self, query: str, context: Context = EMPTY_CONTEXT) -> tuple[np.ndarray, np.ndarray]:
        """Observed clicks of ``query`` at ``context.timestamp`` (0: the arm's clock): item ids
        int32 ascending and their decayed counts float64, both (m,); empty for an unseen query."""
        return self.clicks.counts(normalize_query(check_query(query)), self._time(context))

    def observed_count(self, query: str, item_id: int, timestamp: int) -> float:
        """Decayed click count of ``(query, item_id)`` at ``timestamp`` (0.0 if never clicked)."""
        ids, counts = self.clicks.counts(query, int(timestamp))
        j = np.searchsorted(ids, item_id)
        return float(counts[j]) if j < ids.size and ids[j] == item_id else 0.0

    def warmup(self) -> None:
        """Compile / touch the BM25 kernel on the served arrays."""
        self.predicted.warmup()
        self.retrieve("", Context(), 1)

    # -- online ---------------------------------------------------------------------------

    def observe(self, query: str, item_id: int, context: Context, weight: float = 1.0) -> None:
        """Add one click ``(query, item_id)`` of weight ``weight`` at ``context.timestamp``
        (0: the arm's clock); advances the clock. New queries and pairs are allowed.

        Raises
        ------
        ValueError
            Empty query, item id out of range, negative or non-finite weight.
        """
        normalized = normalize_query(query) if isinstance(query, str) else ""
        if not normalized:
            raise ValueError(f"query must be a non-empty str, got {query!r}")
        query = normalized
        self._check_click(item_id, weight)
        t = self._time(context)
        self.clicks.add(query, int(item_id), float(weight), t)
        self._advance(t)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Online part only: ``online_*`` postings (see :class:`DecayedPostings`) and ``clock``."""
        out = {f"online_{k}": v for k, v in self.clicks.state_arrays().items()}
        out.update(self._clock_state())
        return out

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Replace the online part by a :meth:`state_arrays` snapshot.

        Raises
        ------
        ValueError
            Missing or inconsistent arrays, or an item id out of range.
        """
        clock = self._checked_state(arrays, ("online_",))
        self.clicks.load_state(_prefixed(arrays, "online_"))
        self.clock = clock

    # -- persistence ----------------------------------------------------------------------

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)`` of the offline part: ``click_*`` postings and the ``bm25`` index.

        Arrays: ``click_key_flat`` uint8 / ``click_key_ptr`` int64 (sorted queries),
        ``click_post_ptr`` int64, ``click_post_items`` int32, ``click_post_value`` float64,
        ``click_post_time`` int64, ``term_flat`` / ``term_ptr``, ``bm25_indptr`` int64,
        ``bm25_indices`` int32, ``bm25_data`` float32 (BM25 impacts).
        """
        arrays = {f"click_{k}": v for k, v in self.clicks.offline_arrays().items()}
        arrays.update(self.predicted.arrays())
        params = {"format": FORMAT, "config": dataclasses.asdict(self.config), "n_items": self.n_items,
                  "clock": self._built_clock}
        return params, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "MemoryArm":
        """Inverse of :meth:`to_arrays` (online part empty); arrays may be read-only memory maps.

        Raises
        ------
        ValueError
            Unknown format, missing or inconsistent arrays.
        """
        if params.get("format") != FORMAT:
            raise ValueError(f"params.format must be {FORMAT!r}, got {params.get('format')!r}")
        config = MemoryConfig(**params["config"])
        n_items = int(params["n_items"])
        clicks = DecayedPostings(_prefixed(arrays, "click_"), config.half_life_seconds)
        if clicks.post_items.size and (clicks.post_items.min() < 0 or clicks.post_items.max() >= n_items):
            raise ValueError(f"click_post_items must lie in [0, {n_items})")
        predicted = _PredictedIndex({k: arrays[k] for k in _PredictedIndex.ARRAY_KEYS if k in arrays}, n_items)
        return cls(config, n_items, clicks, predicted, int(params["clock"]))


def build_memory_arm(queries: Sequence[str], item_ids, timestamps, item_texts: Sequence[str],
                     weights=None, config: MemoryConfig | None = None) -> MemoryArm:
    """Build the memory index from training clicks (build code).

    Parameters
    ----------
    queries : sequence of str, length n_clicks
        Normalised query of every click (``qac.text.normalize_query``); empty ones are skipped.
    item_ids : int array (n_clicks,)
        Clicked item of every click, in ``[0, n_items)``.
    timestamps : int array (n_clicks,)
        Unix seconds of every click (all 0 for judgments without time).
    item_texts : sequence of str, length n_items
        Normalised item texts (``Catalog.texts``); the predicted-query documents start from them.
    weights : float array (n_clicks,), optional
        Click weights (default 1; e.g. the relevance grade for judgments), >= 0.
    config : MemoryConfig

    Returns
    -------
    MemoryArm

    Raises
    ------
    ValueError
        Lengths differ, an item id is out of range or a weight is negative / not finite.
    """
    config = MemoryConfig() if config is None else config
    if not isinstance(config, MemoryConfig):
        raise ValueError("config must be a MemoryConfig")
    queries = list(queries)
    n_items = len(item_texts)
    items = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    times = np.asarray(timestamps, dtype=np.int64).reshape(-1)
    w = np.ones(items.size) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (len(queries) == items.size == times.size == w.size):
        raise ValueError("queries, item_ids, timestamps and weights must have the same length")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item_ids must lie in [0, {n_items})")
    if w.size and (not np.all(np.isfinite(w)) or w.min() < 0):
        raise ValueError("weights must be finite and >= 0")
    nonempty = np.fromiter(map(bool, queries), dtype=bool, count=len(queries))
    if not nonempty.all():
        queries = [q for q in queries if q]
        items, times, w = items[nonempty], times[nonempty], w[nonempty]
    clicks = DecayedPostings.build(queries, items, times, w, config.half_life_seconds)

    # Predicted-query documents: item text + each distinct training query that led to the item.
    docs = [text.split() for text in item_texts]
    expand = w >= config.expand_min_weight
    seen: set[tuple[str, int]] = set()
    for q, i, ok in zip(queries, items.tolist(), expand.tolist()):
        if ok and (q, i) not in seen:
            seen.add((q, i))
            docs[i].extend(q.split())
    predicted = _PredictedIndex.build(docs, config)
    clock = int(times.max()) if times.size else 0
    return MemoryArm(config, n_items, clicks, predicted, clock)
