"""The arm interface: a candidate generator ``retrieve(query, context, n) -> (ids, scores)``.

An *arm* (Learning to Rank and Retrieve: the bandit chooses among arms) returns at most ``n`` item
ids of one :class:`retrieval.catalog.Catalog` with their scores:

- ``ids`` int32 of shape (m,), ``scores`` float32 of shape (m,), ``0 <= m <= n``;
- scores descending, equal scores by id ascending, no duplicate ids, every id in
  ``[0, n_items)``;
- nothing to return -> two empty arrays (never ``None``);
- ``n`` must be an int >= 0 (``ValueError`` otherwise); ``n == 0`` returns two empty arrays.

Offline arms are built by a ``build`` classmethod and persist through ``to_arrays`` /
``from_arrays``; ``warmup()`` runs every kernel once on the served (possibly memory-mapped,
read-only) arrays. Online arms also implement :class:`OnlineArm`.
"""
from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from itertools import accumulate
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from retrieval.arms import _kernels

__all__ = ["Context", "Arm", "OnlineArm", "check_n", "check_growth", "empty_result", "pooled_list",
           "pool_rank_columns", "offsets", "sorted_member", "EMPTY_CONTEXT"]

_EMPTY_IDS = np.zeros(0, dtype=np.int32)
_EMPTY_SCORES = np.zeros(0, dtype=np.float32)
_EMPTY_IDS.setflags(write=False)
_EMPTY_SCORES.setflags(write=False)


@dataclass(frozen=True)
class Context:
    """What the service knows about the request besides the query.

    Attributes
    ----------
    user_id : str
        ``""`` for an anonymous request.
    previous_queries : tuple of str
        Earlier normalised queries of the session, oldest first.
    timestamp : int
        Unix seconds of the request (0 = unknown).
    session_position : int
        0-based position of the query in its session.

    Raises
    ------
    ValueError
        A field of the wrong type, a negative ``timestamp`` or ``session_position``.
    """

    user_id: str = ""
    previous_queries: tuple[str, ...] = ()
    timestamp: int = 0
    session_position: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, str):
            raise ValueError(f"user_id must be a str, got {type(self.user_id).__name__}")
        if isinstance(self.previous_queries, list):
            object.__setattr__(self, "previous_queries", tuple(self.previous_queries))
        if not isinstance(self.previous_queries, tuple) or not all(
            isinstance(q, str) for q in self.previous_queries
        ):
            raise ValueError(f"previous_queries must be a tuple of str, got {self.previous_queries!r}")
        for name in ("timestamp", "session_position"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")


EMPTY_CONTEXT = Context()


def check_n(n) -> int:
    """Validate a result count: an int (not bool) >= 0. Returns it as a Python int.

    Raises
    ------
    ValueError
        ``n`` is not an integer or is negative.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if n < 0:
        raise ValueError(f"n must be an int >= 0, got {n}")
    return int(n)


def check_growth(n_current: int, n_items) -> int:
    """Validate a new catalogue size for an arm's ``grow`` (open catalogues, :mod:`retrieval.growth`):
    an int >= ``n_current`` (a catalogue never shrinks). Returns it as a Python int.

    Raises
    ------
    ValueError
        ``n_items`` is not an int >= 0, or smaller than ``n_current``.
    """
    n_items = check_n(n_items)
    if n_items < n_current:
        raise ValueError(f"n_items: cannot shrink the catalogue from {n_current} to {n_items}")
    return n_items


def check_query(query) -> str:
    """Validate a query: a str. Raises ``ValueError`` otherwise (the servicer maps it to INVALID_ARGUMENT)."""
    if not isinstance(query, str):
        raise ValueError(f"query must be a str, got {type(query).__name__}")
    return query


def empty_result() -> tuple[np.ndarray, np.ndarray]:
    """Two empty arrays ``(int32 ids, float32 scores)`` (shared, read-only)."""
    return _EMPTY_IDS, _EMPTY_SCORES


def pooled_list(retrieved: Mapping[str, tuple], arm: "Arm", query: str, context: "Context",
                depth: int) -> tuple[np.ndarray, np.ndarray]:
    """A sibling ``arm``'s top ``depth`` for a pooling arm (the AOL stack, the Home Depot fusion).

    ``retrieved`` maps an arm name to ``(arm, ids, scores, asked)``: the lists the pipeline already
    has for this request (``retrieval.pipeline.Pipeline.retrieve``), each asked ``asked`` deep.
    When the entry is this very arm and was asked at least ``depth`` deep, its head is returned (an
    arm's top ``depth`` is the head of its top ``asked``: best first, ties by id); otherwise the arm
    is asked now. Returns ``(ids int32 (<= depth,), scores float32 (<= depth,))``.
    """
    got = retrieved.get(arm.name)
    if got is not None and got[0] is arm and got[3] >= depth:
        return got[1][:depth], got[2][:depth]
    return arm.retrieve(query, context, depth)


def pool_rank_columns(lists: Sequence[tuple[np.ndarray, np.ndarray]], k: float) -> tuple[np.ndarray, np.ndarray]:
    """The pool of some arms' lists and each item's place in each list (the pooling arms' features).

    Parameters
    ----------
    lists : sequence of (ids int (m_a,), scores float (m_a,)), one per arm, best first, no repeated id
    k : float > 0
        Reciprocal-rank constant.

    Returns
    -------
    ids : int32 (m,), the distinct items of all lists, ascending
    cols : float64 (m, len(lists), 3): per list ``1 / (k + rank)`` (1-based rank), ``score / top
        score`` (0 when the top score is <= 0) and ``log1p(max(score, 0))``; 0 where the list does not
        hold the item (so ``cols[:, a, 0] > 0`` says list ``a`` holds it).
    """
    # One kernel over the concatenated lists (``_kernels.pool_rank_columns``): a request pools ~6
    # lists of ~50, where per-list NumPy calls cost more than the work.
    sizes = [len(ids) for ids, _ in lists]
    if not sizes or sum(sizes) == 0:
        return np.zeros(0, np.int32), np.zeros((0, len(lists), 3), dtype=np.float64)
    allids = np.concatenate([np.asarray(ids, dtype=np.int32) for ids, _ in lists])
    allscores = np.concatenate([np.asarray(sc, dtype=np.float64) for _, sc in lists])
    return _kernels.pool_rank_columns(allids, allscores, np.log1p(np.maximum(allscores, 0.0)), offsets(sizes),
                                      float(k))


def offsets(sizes: Sequence[int]) -> np.ndarray:
    """Where each of several concatenated lists starts: ``[0, s0, s0 + s1, ...]``, int64
    (len(sizes) + 1,). Plain Python: ``np.cumsum`` of a short list costs more than the sum."""
    return np.fromiter(accumulate(sizes, initial=0), dtype=np.int64, count=len(sizes) + 1)


def sorted_member(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``ids`` sits in the ascending ``keys``, and whether it is there: (pos int64 (m,),
    found bool (m,)); ``pos`` means nothing where not found. One binary search per id (the short
    arrays of one request, where ``np.isin`` costs more)."""
    if keys.size == 0:
        return np.zeros(ids.size, dtype=np.int64), np.zeros(ids.size, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, ids), keys.size - 1)
    return pos, keys[pos] == ids


class Arm(abc.ABC):
    """Base class of every retrieval arm (see the module docstring for the contract).

    Subclasses set ``name`` and implement :meth:`retrieve`, :meth:`warmup`, :meth:`to_arrays`,
    :meth:`from_arrays`, and :attr:`n_items`.
    """

    name: str = ""

    @property
    @abc.abstractmethod
    def n_items(self) -> int:
        """Size of the catalogue the ids refer to."""

    @abc.abstractmethod
    def retrieve(self, query: str, context: Context, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Return up to ``n`` candidates for ``query``.

        Parameters
        ----------
        query : str
            Normalised query (:func:`qac.text.normalize_query`).
        context : Context
        n : int, >= 0

        Returns
        -------
        ids : ndarray of shape (m,), int32, m <= n
        scores : ndarray of shape (m,), float32, descending (ties by id ascending)

        Raises
        ------
        ValueError
            ``n`` not an int >= 0, or ``query`` not a str.
        """

    @abc.abstractmethod
    def warmup(self) -> None:
        """Run every kernel once on the served arrays (compiles numba specialisations)."""

    @abc.abstractmethod
    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(JSON-able params, arrays)`` for :func:`qac.artifacts.save_artifact`."""

    @classmethod
    @abc.abstractmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "Arm":
        """Inverse of :meth:`to_arrays`; must not write into ``arrays`` (may be read-only mmaps)."""


@runtime_checkable
class OnlineArm(Protocol):
    """An arm that also learns from feedback while serving.

    ``observe`` is applied at once and is deterministic, so replaying the same events from a
    snapshot (``state_arrays`` -> ``load_state``) reaches the same state.
    """

    def observe(self, query: str, item_id: int, context: Context, weight: float = 1.0) -> None: ...

    def state_arrays(self) -> dict[str, np.ndarray]: ...

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None: ...


class ScratchPool:
    """Per-thread scratch buffers for the accumulate-and-select kernels.

    Each serving thread gets its own ``scores`` (float32, zero) and ``touched`` (int32) arrays of
    length ``n_items``; the kernels leave ``scores`` all-zero on return, so a buffer is reused with
    no reset cost proportional to the catalogue.
    """

    def __init__(self, n_items: int) -> None:
        self._n_items = int(n_items)
        self._local = threading.local()

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = (np.zeros(self._n_items, dtype=np.float32), np.zeros(self._n_items, dtype=np.int32))
            self._local.buffers = buffers
        return buffers


# ---------------------------------------------------------------------------------------------
# Inverted-index helpers shared by the text arms (build and load code, not the request path).
# ---------------------------------------------------------------------------------------------


def build_postings(
    doc_ids: np.ndarray, term_ids: np.ndarray, n_terms: int, n_docs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group (doc, term) occurrences into a CSC-like inverted index with counts.

    Parameters
    ----------
    doc_ids, term_ids : int64 arrays of shape (n_occurrences,)
    n_terms, n_docs : int

    Returns
    -------
    postings_ptr : int64 (n_terms + 1,)
    postings_items : int32 (nnz,), ascending within a term
    postings_count : int64 (nnz,), occurrences of the term in the item
    """
    key = term_ids.astype(np.int64) * np.int64(max(n_docs, 1)) + doc_ids.astype(np.int64)
    uniq, counts = np.unique(key, return_counts=True)
    term_of = uniq // max(n_docs, 1)
    items = (uniq - term_of * max(n_docs, 1)).astype(np.int32)
    ptr = np.zeros(n_terms + 1, dtype=np.int64)
    np.cumsum(np.bincount(term_of, minlength=n_terms), out=ptr[1:])
    return ptr, items, counts.astype(np.int64)


def check_postings(name: str, n_terms: int, n_items: int, ptr: np.ndarray, items: np.ndarray,
                   data: np.ndarray) -> None:
    """Shape, dtype and range checks of a loaded inverted index.

    Out-of-range ids would make the kernels read or write out of bounds, so item ids are checked
    (one vectorised pass) and ``postings_ptr`` must be non-decreasing.

    Raises
    ------
    ValueError
        Naming the array that does not fit.
    """
    if ptr.dtype != np.int64 or ptr.shape != (n_terms + 1,):
        raise ValueError(f"{name}: postings_ptr must be int64 of shape ({n_terms + 1},), "
                         f"got {ptr.dtype}{ptr.shape}")
    nnz = int(ptr[-1]) if ptr.size else 0
    if (ptr.size and int(ptr[0]) != 0) or items.dtype != np.int32 or items.shape != (nnz,):
        raise ValueError(f"{name}: postings_items must be int32 of shape ({nnz},) with "
                         f"postings_ptr[0] == 0, got {items.dtype}{items.shape}")
    if data.dtype != np.float32 or data.shape != (nnz,):
        raise ValueError(f"{name}: postings data must be float32 of shape ({nnz},), got {data.dtype}{data.shape}")
    if n_items < 0:
        raise ValueError(f"{name}: n_items must be >= 0, got {n_items}")
    if ptr.size > 1 and np.any(np.diff(ptr) < 0):
        raise ValueError(f"{name}: postings_ptr must be non-decreasing")
    if nnz and (int(items.min()) < 0 or int(items.max()) >= n_items):
        raise ValueError(f"{name}: postings_items must lie in [0, {n_items})")


# Terms held by at least this fraction of the items are scored last, from a dense per-item row
# (:func:`dense_terms`, ``_kernels.dot_top_n_dense_last``); at most this many (memory:
# MAX_DENSE_TERMS * n_items * 4 bytes).
DENSE_FRACTION = 0.4
MAX_DENSE_TERMS = 16


def dense_terms(postings_ptr: np.ndarray, postings_items: np.ndarray, postings_data: np.ndarray, n_items: int,
                fraction: float = DENSE_FRACTION, max_terms: int = MAX_DENSE_TERMS):
    """The index's very long postings laid out by item, for ``_kernels.dot_top_n_dense_last``.

    A term is dense when at least ``fraction`` of the items hold it (at most ``max_terms`` terms,
    the longest first): char trigrams `` co``, ``com``, ``om `` on AOL sites, `` in``, ``in ``,
    ``er `` on Home Depot titles; the word ``com`` for BM25 over AOL sites.

    Returns
    -------
    dense_row : int32 (n_terms,), the term's row or -1
    dense : float32 (n_dense, n_items), the term's ``postings_data`` at its items, 0 elsewhere
        (``postings_data`` > 0)
    dense_max : float32 (n_dense,), each row's largest value
    """
    lengths = np.diff(np.asarray(postings_ptr, dtype=np.int64))
    candidates = np.flatnonzero(lengths >= max(1.0, fraction * n_items))
    chosen = np.sort(candidates[np.argsort(-lengths[candidates], kind="stable")][:max_terms])
    dense_row = np.full(lengths.size, -1, dtype=np.int32)
    dense = np.zeros((chosen.size, n_items), dtype=np.float32)
    for r, t in enumerate(chosen.tolist()):
        dense_row[t] = r
        a, b = int(postings_ptr[t]), int(postings_ptr[t + 1])
        dense[r, postings_items[a:b]] = postings_data[a:b]
    dense_max = dense.max(axis=1) if chosen.size else np.zeros(0, dtype=np.float32)
    return dense_row, dense, dense_max


class PostingsIndex:
    """An inverted index (module layout of ``_kernels``) scored by dot products, its dense terms last.

    The char-trigram and BM25 arms' shared scorer: :func:`dense_terms` is derived at load, and
    :meth:`top_n` runs ``_kernels.dot_top_n_dense_last`` on a per-thread scratch pair.

    Attributes
    ----------
    ptr : int64 (n_terms + 1,) ; items : int32 ; data : float32 (the per-posting values)
    dense_row, dense, dense_max : :func:`dense_terms` of the postings
    """

    def __init__(self, ptr: np.ndarray, items: np.ndarray, data: np.ndarray, n_items: int) -> None:
        self.ptr, self.items, self.data = ptr, items, data
        self.dense_row, self.dense, self.dense_max = dense_terms(ptr, items, data, n_items)
        self._scratch = ScratchPool(n_items)

    def top_n(self, term_ids: np.ndarray, weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items by ``sum_t weights[t] * data[t, item]`` over the distinct ascending
        ``term_ids`` (int64 (q,); ``weights`` float64 (q,) > 0): ids int32, scores float32, score
        descending, id ascending."""
        scratch, touched = self._scratch.get()
        return _kernels.dot_top_n_dense_last(term_ids, weights, self.dense_row, self.dense, self.dense_max,
                                             self.ptr, self.items, self.data, scratch, touched, n)

    def warmup(self) -> None:
        """Compile/load the kernel for these (possibly read-only) arrays: one call with the first term."""
        k = min(1, self.ptr.size - 1)
        self.top_n(np.zeros(k, dtype=np.int64), np.ones(k, dtype=np.float64), 10)
