"""Popularity arm: the most-clicked items, whatever the query, updated online by feedback.

``score(item) = float32(base_counts[item] + observed[item])`` where ``base_counts`` (float64) are
the click counts of the build (the artifact) and ``observed`` (float64) the weights of the clicks
observed while serving (the online state, snapshotted by ``state_arrays``). Keeping the two apart
and summing them per item makes a replay from a snapshot bit-identical to the uninterrupted run.

Items with score 0 (never clicked) are not returned: they are not popular, and returning arbitrary
zero-score items would only dilute the candidate union.

The order of all items (score descending, id ascending) is kept in ``order`` with its inverse
``rank``; ``observe`` only ever raises one item's score, so it moves that item up by binary search
and a shift of the items it passes (numba kernel ``promote``), and ``retrieve`` is a slice.
"""
from __future__ import annotations

import math
import threading
from typing import Iterable, Mapping

import numpy as np

from retrieval.arms import _kernels
from retrieval.arms.base import Arm, Context, EMPTY_CONTEXT, check_growth, check_n, check_query, empty_result

__all__ = ["PopularityArm", "build_popularity_arm"]


def _check_counts(name: str, counts: np.ndarray, n_items: int | None = None) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or (n_items is not None and counts.shape[0] != n_items):
        want = "(n_items,)" if n_items is None else f"({n_items},)"
        raise ValueError(f"{name} must have shape {want}, got {counts.shape}")
    if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
        raise ValueError(f"{name} must be numeric, got {counts.dtype}")
    counts = counts.astype(np.float64)
    if counts.size and (not np.all(np.isfinite(counts)) or counts.min() < 0):
        raise ValueError(f"{name} must be finite and >= 0")
    return counts


class PopularityArm(Arm):
    """Most popular items (query-independent), with online click counting.

    Parameters
    ----------
    base_counts : array of shape (n_items,), numeric, finite, >= 0
        Click counts (or weights) from the build; copied.

    Raises
    ------
    ValueError
        ``base_counts`` of the wrong shape or with negative / non-finite values.
    """

    name = "popularity"

    def __init__(self, base_counts: np.ndarray) -> None:
        self.base_counts = _check_counts("base_counts", base_counts)
        self.base_counts.setflags(write=False)
        # observe() shifts ``order`` in place; a concurrent retrieve() must not see it half-shifted.
        self._lock = threading.Lock()
        self._reset(np.zeros_like(self.base_counts))

    def _reset(self, observed: np.ndarray) -> None:
        self.observed = observed
        self.scores = (self.base_counts + observed).astype(np.float32)
        n = self.scores.shape[0]
        self.order = np.lexsort((np.arange(n), -self.scores)).astype(np.int32)
        self.rank = np.empty(n, dtype=np.int32)
        self.rank[self.order] = np.arange(n, dtype=np.int32)
        self.n_positive = int(np.count_nonzero(self.scores > 0))

    # ---- build / persistence -------------------------------------------------------------------
    @classmethod
    def build(cls, item_ids: Iterable[int], n_items: int, weights: Iterable[float] | None = None) -> "PopularityArm":
        """Count clicks per item.

        Parameters
        ----------
        item_ids : iterable of int, each in [0, n_items)
            One entry per click (training clicks only).
        n_items : int
        weights : iterable of float, optional
            Weight per click (default 1).

        Raises
        ------
        ValueError
            An id out of range, a negative weight, ``n_items < 0``.
        """
        n_items = check_n(n_items)
        ids = np.fromiter(item_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n_items):
            raise ValueError(f"item_ids must lie in [0, {n_items})")
        w = None if weights is None else np.fromiter(weights, dtype=np.float64)
        if w is not None and w.shape != ids.shape:
            raise ValueError(f"weights must have one value per item id ({ids.size}), got {w.size}")
        return cls(np.bincount(ids, weights=w, minlength=n_items).astype(np.float64))

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``({"n_items"}, {"base_counts": float64})``: the built counts only (online part: ``state_arrays``)."""
        return {"n_items": self.n_items}, {"base_counts": self.base_counts}

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "PopularityArm":
        """Inverse of :meth:`to_arrays` (the counts are copied: they are small and the order is mutable)."""
        return cls(_check_counts("base_counts", arrays["base_counts"], int(params["n_items"])))

    # ---- online part ---------------------------------------------------------------------------
    def observe(self, query: str, item_id: int, context: Context = EMPTY_CONTEXT, weight: float = 1.0) -> None:
        """Add ``weight`` to the click count of ``item_id`` (query and context are not used).

        Raises
        ------
        ValueError
            ``item_id`` not an int in [0, n_items); ``weight`` negative or not finite.
        """
        if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)) \
                or not 0 <= item_id < self.n_items:
            raise ValueError(f"item_id must be an int in [0, {self.n_items}), got {item_id!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
                or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        item = int(item_id)
        with self._lock:
            self.observed[item] += float(weight)
            new = np.float32(self.base_counts[item] + self.observed[item])
            if new == self.scores[item]:
                return
            if self.scores[item] == 0:
                self.n_positive += 1
            self.scores[item] = new
            _kernels.promote(self.order, self.rank, self.scores, item)

    def grow(self, n_items: int) -> None:
        """Extend the catalogue to ``n_items`` items (an open catalogue's new sites, :mod:`retrieval.growth`).

        New items have count 0, so they go last in the order (score descending, id ascending) and
        are not returned until observed. Costs one copy of the per-item arrays (O(n_items)).

        Raises
        ------
        ValueError
            ``n_items`` not an int or smaller than the current catalogue.
        """
        with self._lock:
            old = self.n_items
            n_items = check_growth(old, n_items)
            if n_items == old:
                return
            new_ids = np.arange(old, n_items, dtype=np.int32)
            base = np.concatenate([self.base_counts, np.zeros(n_items - old)])
            base.setflags(write=False)
            self.observed = np.concatenate([self.observed, np.zeros(n_items - old)])
            self.scores = np.concatenate([self.scores, np.zeros(n_items - old, dtype=np.float32)])
            self.order = np.concatenate([self.order, new_ids])
            self.rank = np.concatenate([self.rank, new_ids])
            self.base_counts = base

    def state_arrays(self) -> dict[str, np.ndarray]:
        """``{"observed": float64 (n_items,)}``: click weights observed since the build (a copy)."""
        with self._lock:
            return {"observed": self.observed.copy()}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Replace the online part with a snapshot from :meth:`state_arrays`.

        Raises
        ------
        ValueError
            Wrong shape, negative or non-finite values.
        """
        observed = _check_counts("observed", arrays["observed"], self.n_items)
        with self._lock:
            self._reset(observed)

    # ---- serving -------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return int(self.base_counts.shape[0])

    def retrieve(self, query: str, context: Context = EMPTY_CONTEXT, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items with their counts as scores (``query`` and ``context`` unused).

        See :meth:`Arm.retrieve` for the contract; never-clicked items are not returned.
        """
        n = check_n(n)
        check_query(query)
        with self._lock:
            m = min(n, self.n_positive)
            if m == 0:
                return empty_result()
            ids = self.order[:m].copy()
            return ids, self.scores[ids]

    def warmup(self) -> None:
        """Compile/load ``promote`` (on private copies: it must not change the served order)."""
        if self.n_items:
            order, rank, scores = self.order.copy(), self.rank.copy(), self.scores.copy()
            _kernels.promote(order, rank, scores, int(order[-1]))


def build_popularity_arm(catalog, click_events) -> PopularityArm:
    """Offline builder: click counts of ``catalog`` items from training ``click_events``.

    Parameters
    ----------
    catalog : retrieval.catalog.Catalog
    click_events : iterable of retrieval.catalog.ClickEvent
        Clicks on keys outside the catalogue are ignored.
    """
    id_of = catalog.id_of
    ids = [i for i in (id_of(c.item_key) for c in click_events) if i is not None]
    return PopularityArm.build(ids, catalog.n_items)
