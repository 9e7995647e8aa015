"""One contract suite for every retrieval arm (mixin, as implicit's ``RecommenderBaseTestMixin``).

Usage::

    class TestBM25Contract(ArmContract):
        def make_arm(self):
            return arm, ["example query", ...]

``make_arm()`` returns ``(arm, example_queries)``: queries that should return candidates.
Query-independent arms (popularity) set ``query_independent = True``: for them an unknown or empty
query returns the same list as any other query instead of nothing. Online arms also mix in
:class:`OnlineArmContract` and implement ``make_observations()``.
"""
from __future__ import annotations

import abc

import numpy as np
import pytest

from retrieval.arms.base import Context

CONTEXT = Context(user_id="u1", previous_queries=("a previous query",), timestamp=1_146_000_000,
                  session_position=1)
UNKNOWN_QUERIES = ["zzqqxxjj", "", "   ", "qqqqqqqqqqqqqq zzzzzzzzzzzzzz"]

INVALID_N = [
    (-1, "n must be an int >= 0"),
    (1.5, "n must be an int >= 0"),
    (10.0, "n must be an int >= 0"),
    ("10", "n must be an int >= 0"),
    (None, "n must be an int >= 0"),
    (True, "n must be an int >= 0"),
]


def assert_valid_result(arm, ids, scores, n: int) -> None:
    assert isinstance(ids, np.ndarray) and isinstance(scores, np.ndarray)
    assert ids.dtype == np.int32 and scores.dtype == np.float32
    assert ids.ndim == 1 and scores.ndim == 1 and ids.shape == scores.shape
    assert ids.size <= n
    assert np.unique(ids).size == ids.size, "duplicate ids"
    if ids.size:
        assert ids.min() >= 0 and ids.max() < arm.n_items
        assert np.all(np.isfinite(scores))
        # score descending, equal scores by id ascending
        for a in range(ids.size - 1):
            assert scores[a] > scores[a + 1] or (scores[a] == scores[a + 1] and ids[a] < ids[a + 1]), (
                a, scores[a:a + 2], ids[a:a + 2])


class ArmContract(abc.ABC):
    query_independent = False

    @abc.abstractmethod
    def make_arm(self):
        """Return ``(arm, example_queries)``."""

    @pytest.fixture
    def arm_and_queries(self):
        return self.make_arm()

    def test_name(self, arm_and_queries):
        arm, _ = arm_and_queries
        assert isinstance(arm.name, str) and arm.name

    def test_result_types_and_order(self, arm_and_queries):
        arm, queries = arm_and_queries
        assert queries
        for q in queries:
            ids, scores = arm.retrieve(q, CONTEXT, 50)
            assert ids.size > 0, q
            assert_valid_result(arm, ids, scores, 50)

    @pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 1000])
    def test_n_respected_and_prefix_consistent(self, arm_and_queries, n):
        arm, queries = arm_and_queries
        for q in queries:
            full_ids, full_scores = arm.retrieve(q, CONTEXT, arm.n_items + 5)
            ids, scores = arm.retrieve(q, CONTEXT, n)
            assert_valid_result(arm, ids, scores, n)
            assert ids.size == min(n, full_ids.size)
            # the top n is the first n of the full list (exact selection, deterministic ties)
            np.testing.assert_array_equal(ids, full_ids[:n])
            np.testing.assert_array_equal(scores, full_scores[:n])

    def test_default_context_works(self, arm_and_queries):
        arm, queries = arm_and_queries
        ids, scores = arm.retrieve(queries[0], Context(), 5)
        assert_valid_result(arm, ids, scores, 5)

    @pytest.mark.parametrize("query", UNKNOWN_QUERIES)
    def test_unknown_or_empty_query(self, arm_and_queries, query):
        arm, queries = arm_and_queries
        ids, scores = arm.retrieve(query, CONTEXT, 10)
        assert_valid_result(arm, ids, scores, 10)
        if self.query_independent:
            ref_ids, ref_scores = arm.retrieve(queries[0], CONTEXT, 10)
            np.testing.assert_array_equal(ids, ref_ids)
            np.testing.assert_array_equal(scores, ref_scores)
        else:
            assert ids.shape == (0,) and scores.shape == (0,)
            assert ids.dtype == np.int32 and scores.dtype == np.float32

    def test_deterministic(self, arm_and_queries):
        arm, queries = arm_and_queries
        for q in queries:
            a = arm.retrieve(q, CONTEXT, 20)
            b = arm.retrieve(q, CONTEXT, 20)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])

    def test_round_trip_through_mmap(self, arm_and_queries, tmp_path):
        arm, queries = arm_and_queries
        params, arrays = arm.to_arrays()
        import json
        params = json.loads(json.dumps(params))  # params must be JSON-able
        loaded = {}
        for key, value in arrays.items():
            assert isinstance(value, np.ndarray) and value.dtype != object, key
            np.save(tmp_path / f"{key}.npy", value, allow_pickle=False)
            loaded[key] = np.load(tmp_path / f"{key}.npy", mmap_mode="r", allow_pickle=False)
        twin = type(arm).from_arrays(params, loaded)
        twin.warmup()
        assert twin.n_items == arm.n_items and twin.name == arm.name
        for q in [*queries, *UNKNOWN_QUERIES]:
            for n in (0, 1, 10, arm.n_items + 1):
                a = arm.retrieve(q, CONTEXT, n)
                b = twin.retrieve(q, CONTEXT, n)
                np.testing.assert_array_equal(a[0], b[0])
                np.testing.assert_array_equal(a[1], b[1])
                assert b[0].dtype == np.int32 and b[1].dtype == np.float32

    def test_warmup_does_not_change_results(self, arm_and_queries):
        arm, queries = arm_and_queries
        before = [arm.retrieve(q, CONTEXT, 10) for q in queries]
        arm.warmup()
        after = [arm.retrieve(q, CONTEXT, 10) for q in queries]
        for (a_ids, a_sc), (b_ids, b_sc) in zip(before, after):
            np.testing.assert_array_equal(a_ids, b_ids)
            np.testing.assert_array_equal(a_sc, b_sc)

    @pytest.mark.parametrize("bad_n, message", INVALID_N)
    def test_invalid_n_raises(self, arm_and_queries, bad_n, message):
        arm, queries = arm_and_queries
        with pytest.raises(ValueError, match=message):
            arm.retrieve(queries[0], CONTEXT, bad_n)

    @pytest.mark.parametrize("bad_query", [None, 3, b"bytes"])
    def test_invalid_query_raises(self, arm_and_queries, bad_query):
        arm, _ = arm_and_queries
        with pytest.raises(ValueError, match="query must be a str"):
            arm.retrieve(bad_query, CONTEXT, 10)

    def test_numpy_int_n_accepted(self, arm_and_queries):
        arm, queries = arm_and_queries
        a = arm.retrieve(queries[0], CONTEXT, np.int64(5))
        b = arm.retrieve(queries[0], CONTEXT, 5)
        np.testing.assert_array_equal(a[0], b[0])


class OnlineArmContract(abc.ABC):
    """Extra contract of online arms: observe is immediate and deterministic; snapshots replay exactly."""

    @abc.abstractmethod
    def make_arm(self):
        """Return ``(arm, example_queries)``."""

    @abc.abstractmethod
    def make_observations(self, arm) -> list:
        """Return a list of ``(query, item_id, context, weight)`` to observe."""

    def _fresh(self, arm):
        params, arrays = arm.to_arrays()
        return type(arm).from_arrays(params, arrays)

    def _all_results(self, arm, queries):
        return [arm.retrieve(q, CONTEXT, arm.n_items + 1) for q in [*queries, ""]]

    def test_replay_from_snapshot_is_identical(self):
        arm, queries = self.make_arm()
        events = self.make_observations(arm)
        assert len(events) >= 2
        full = self._fresh(arm)
        for e in events:
            full.observe(*e)
        half = self._fresh(arm)
        cut = len(events) // 2
        for e in events[:cut]:
            half.observe(*e)
        snapshot = {k: v.copy() for k, v in half.state_arrays().items()}
        restored = self._fresh(arm)
        restored.load_state(snapshot)
        for e in events[cut:]:
            restored.observe(*e)
        for (a_ids, a_sc), (b_ids, b_sc) in zip(self._all_results(full, queries),
                                                self._all_results(restored, queries)):
            np.testing.assert_array_equal(a_ids, b_ids)
            np.testing.assert_array_equal(a_sc, b_sc)
        for key, value in full.state_arrays().items():
            np.testing.assert_array_equal(value, restored.state_arrays()[key])

    def test_observe_applies_at_once_and_keeps_contract(self):
        arm, queries = self.make_arm()
        arm = self._fresh(arm)
        for e in self.make_observations(arm):
            arm.observe(*e)
            for q in queries:
                ids, scores = arm.retrieve(q, CONTEXT, 20)
                assert_valid_result(arm, ids, scores, 20)

    @pytest.mark.parametrize("bad_item", [-1, 10**9, 1.0, None, True])
    def test_observe_invalid_item_raises(self, bad_item):
        arm, queries = self.make_arm()
        with pytest.raises(ValueError, match="item_id"):
            arm.observe(queries[0], bad_item, CONTEXT)

    # -- open catalogues (retrieval.growth): items added while serving --------------------------
    def test_grown_item_is_returned_once_observed_and_snapshots_carry_it(self):
        """After ``grow`` a new id can be observed and retrieved (contract kept with the new
        ``n_items``); a snapshot holding it loads into an arm grown alike and nowhere else."""
        arm, queries = self.make_arm()
        arm = self._fresh(arm)
        n = arm.n_items
        arm.grow(n + 2)
        assert arm.n_items == n + 2
        for _ in range(50):  # enough clicks to reach the top of any online arm's list
            arm.observe(queries[0], n + 1, CONTEXT)
        ids, scores = arm.retrieve(queries[0], CONTEXT, 5)
        assert_valid_result(arm, ids, scores, 5)
        assert ids[0] == n + 1
        assert n not in ids.tolist()  # grown but never clicked: not returned
        snapshot = {k: v.copy() for k, v in arm.state_arrays().items()}
        twin = self._fresh(self.make_arm()[0])
        with pytest.raises(ValueError):
            twin.load_state(snapshot)  # refers to items this arm does not have
        twin.grow(n + 2)
        twin.load_state(snapshot)
        for (a_ids, a_sc), (b_ids, b_sc) in zip(self._all_results(arm, queries), self._all_results(twin, queries)):
            np.testing.assert_array_equal(a_ids, b_ids)
            np.testing.assert_array_equal(a_sc, b_sc)

    @pytest.mark.parametrize("bad", [-1, "3", None, 1.5])
    def test_grow_rejects_shrinking_and_bad_sizes(self, bad):
        arm, _ = self.make_arm()
        with pytest.raises(ValueError, match="n_items|n must be"):
            arm.grow(bad)
        with pytest.raises(ValueError, match="cannot shrink"):
            arm.grow(arm.n_items - 1)
        arm.grow(arm.n_items)  # same size: a no-op


def assert_dense_last_exact(arm, query, n, term_ids, weights):
    """``arm.retrieve(query, n)`` equals ``_kernels.dot_top_n`` over every posting of the query's
    terms ``term_ids`` (weights ``weights``) in the arm's index (``arm._index``, a
    ``retrieval.arms.base.PostingsIndex``) in the order the dense-last kernel defines -- sparse terms
    by id, then dense ones -- ids and float32 scores bit for bit (the char-trigram and BM25 arms,
    ``_kernels.dot_top_n_dense_last``)."""
    from retrieval.arms import _kernels

    index = arm._index
    dense = index.dense_row[term_ids] >= 0
    order = np.concatenate([np.flatnonzero(~dense), np.flatnonzero(dense)])
    scratch, touched = np.zeros(arm.n_items, np.float32), np.zeros(arm.n_items, np.int32)
    want = _kernels.dot_top_n(term_ids[order], np.asarray(weights, dtype=np.float64)[order], index.ptr,
                              index.items, index.data, scratch, touched, n)
    got = arm.retrieve(query, Context(), n)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
