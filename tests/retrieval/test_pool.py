"""The pooling arms' shared columns (``retrieval.arms.base.pool_rank_columns``) against slow twins."""
import math

import numpy as np
import pytest

from retrieval.arms import _kernels
from retrieval.arms.base import pool_rank_columns


def _pool_rank_columns_twin(lists, k):
    """Slow exact twin: a dict from item to its row, one Python loop per list entry."""
    ids = sorted({int(i) for la, _ in lists for i in la})
    row = {i: r for r, i in enumerate(ids)}
    cols = np.zeros((len(ids), len(lists), 3), dtype=np.float64)
    for a, (la, sa) in enumerate(lists):
        if len(la) == 0:
            continue
        top = float(sa[0])
        for rank, (i, s) in enumerate(zip(la, sa), start=1):
            s = float(s)
            cols[row[int(i)], a] = (1.0 / (k + rank), s / top if top > 0 else 0.0, math.log1p(max(s, 0.0)))
    return np.array(ids, dtype=np.int32), cols


@pytest.mark.parametrize("seed", range(25))
def test_pool_rank_columns_matches_twin(seed):
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(int(rng.integers(0, 8))):
        m = int(rng.integers(0, 60))
        ids = rng.choice(200, size=m, replace=False).astype(np.int32)
        scores = np.sort(rng.normal(size=m).astype(np.float32))[::-1]
        if seed % 4 == 0:
            scores = -np.abs(scores)  # a top score <= 0: the relative column is 0
        lists.append((ids, scores))
    k = [10.0, 1.0, 60.0][seed % 3]
    ids, cols = pool_rank_columns(lists, k)
    want_ids, want_cols = _pool_rank_columns_twin(lists, k)
    assert ids.dtype == np.int32 and cols.dtype == np.float64 and cols.shape == (ids.size, len(lists), 3)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(cols[:, :, :2], want_cols[:, :, :2])
    # NumPy's log1p and math.log1p may differ in the last bit.
    np.testing.assert_allclose(cols[:, :, 2], want_cols[:, :, 2], rtol=1e-15, atol=0)


def test_pool_rank_columns_empty():
    ids, cols = pool_rank_columns([], 10.0)
    assert ids.shape == (0,) and cols.shape == (0, 0, 3)
    empty = (np.zeros(0, np.int32), np.zeros(0, np.float32))
    ids, cols = pool_rank_columns([empty, empty], 10.0)
    assert ids.shape == (0,) and cols.shape == (0, 2, 3)


@pytest.mark.parametrize("seed", range(10))
def test_unique_inverse_equals_numpy(seed):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 30, size=int(rng.integers(0, 80))).astype([np.int32, np.int64][seed % 2])
    uniq, inverse = _kernels.unique_inverse(keys)
    want_uniq, want_inverse = np.unique(keys, return_inverse=True)
    assert uniq.dtype == keys.dtype
    np.testing.assert_array_equal(uniq, want_uniq)
    np.testing.assert_array_equal(inverse, want_inverse)


@pytest.mark.parametrize("seed", range(10))
def test_sorted_member_equals_isin(seed):
    from retrieval.arms.base import sorted_member

    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, 40, size=int(rng.integers(0, 20)))).astype(np.int32)
    ids = rng.integers(-2, 45, size=int(rng.integers(0, 30))).astype(np.int32)
    pos, found = sorted_member(keys, ids)
    assert pos.shape == found.shape == ids.shape and found.dtype == bool
    np.testing.assert_array_equal(found, np.isin(ids, keys))
    np.testing.assert_array_equal(keys[pos[found]], ids[found])
