"""Numba kernels of the retrieval arms: accumulate scores over postings, select the top n.

Plain arrays in and out, no objects, no global state, ``nogil`` so concurrent server threads run
them in parallel; no ``prange`` (request path).

Inverted index layout (CSC-like, one column per term):

- ``postings_ptr`` int64 (n_terms + 1,): the postings of term ``t`` are ``postings_ptr[t]:
  postings_ptr[t + 1]``;
- ``postings_items`` int32: item ids, ascending within a term;
- ``postings_data`` float32: per-posting value (BM25: the term's score in the item, precomputed at
  load; char-gram: the item's L2-normalised TF-IDF weight).

Scratch protocol: ``scratch`` float32 (n_items,) is all-zero on entry and on return; ``touched``
int32 (n_items,) receives the ids whose score became non-zero. Every contribution is clamped to at
least ``MIN_CONTRIBUTION`` (1e-30; real contributions are many orders of magnitude larger, and a
corrupt zero or negative weight cannot break the bookkeeping), so ``scratch[d] == 0`` means "not
touched yet" and ``touched`` never overflows. The caller owns one pair per thread.

Order of results everywhere: score descending, then id ascending ("better" below).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

MIN_CONTRIBUTION = np.float32(1e-30)


@njit(cache=True, nogil=True)
def _better(score_a, id_a, score_b, id_b):
    return score_a > score_b or (score_a == score_b and id_a < id_b)


@njit(cache=True, nogil=True)
def _sift_down(heap_scores, heap_ids, i, size):
    """Restore the heap (worst at the root) below position ``i``."""
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        worst = left
        right = left + 1
        if right < size and _better(heap_scores[worst], heap_ids[worst], heap_scores[right], heap_ids[right]):
            worst = right
        if _better(heap_scores[i], heap_ids[i], heap_scores[worst], heap_ids[worst]):
            s = heap_scores[i]
            d = heap_ids[i]
            heap_scores[i] = heap_scores[worst]
            heap_ids[i] = heap_ids[worst]
            heap_scores[worst] = s
            heap_ids[worst] = d
            i = worst
        else:
            return


@njit(cache=True, nogil=True)
def select_top_n(scratch, touched, n_touched, n):
    """Top ``n`` of the touched entries of ``scratch`` (partial selection), resetting ``scratch``.

    A bounded heap of size ``k = min(n, n_touched)`` with the worst kept candidate at the root:
    O(n_touched log k), then a heap sort of the k winners.

    Parameters
    ----------
    scratch : float32 (n_items,), zeroed on return at every touched id
    touched : int32 (n_items,), ids ``touched[:n_touched]`` are distinct
    n_touched : int
    n : int >= 0

    Returns
    -------
    ids : int32 (k,), scores : float32 (k,) -- score descending, id ascending
    """
    k = min(n, n_touched)
    heap_ids = np.empty(k, dtype=np.int32)
    heap_scores = np.empty(k, dtype=np.float32)
    size = 0
    for j in range(n_touched):
        d = touched[j]
        s = scratch[d]
        scratch[d] = 0.0
        if size < k:
            i = size
            heap_ids[i] = d
            heap_scores[i] = s
            size += 1
            while i > 0:
                parent = (i - 1) >> 1
                if _better(heap_scores[parent], heap_ids[parent], heap_scores[i], heap_ids[i]):
                    ts = heap_scores[i]
                    td = heap_ids[i]
                    heap_scores[i] = heap_scores[parent]
                    heap_ids[i] = heap_ids[parent]
                    heap_scores[parent] = ts
                    heap_ids[parent] = td
                    i = parent
                else:
                    break
        elif k > 0 and _better(s, d, heap_scores[0], heap_ids[0]):
            heap_scores[0] = s
            heap_ids[0] = d
            _sift_down(heap_scores, heap_ids, 0, size)
    out_ids = np.empty(k, dtype=np.int32)
    out_scores = np.empty(k, dtype=np.float32)
    for pos in range(k - 1, -1, -1):
        out_ids[pos] = heap_ids[0]
        out_scores[pos] = heap_scores[0]
        size -= 1
        heap_ids[0] = heap_ids[size]
        heap_scores[0] = heap_scores[size]
        _sift_down(heap_scores, heap_ids, 0, size)
    return out_ids, out_scores


@njit(cache=True, nogil=True)
def _accumulate(t, w, postings_ptr, postings_items, postings_data, scratch, touched, m):
    """Add ``w * postings_data`` of term ``t`` into ``scratch`` (float32), listing first touches in
    ``touched`` after its first ``m`` entries; returns the new count of touched items."""
    for p in range(postings_ptr[t], postings_ptr[t + 1]):
        d = postings_items[p]
        # Branch-free "first touch" bookkeeping: ~3x faster than an if on long postings.
        touched[m] = d
        m += scratch[d] == 0.0
        scratch[d] += max(w * postings_data[p], MIN_CONTRIBUTION)
    return m


@njit(cache=True, nogil=True)
def dot_top_n(term_ids, term_weights, postings_ptr, postings_items, postings_data, scratch, touched, n):
    """Sparse dot products ``sum_t term_weights[j] * postings_data[p]`` of the query with every item
    sharing a term with it, then the top ``n`` (cosine similarity when both sides are L2-normalised).

    Parameters
    ----------
    term_ids : int64 (q,), distinct
    term_weights : float64 (q,), > 0 (rounded to float32 before the products)
    postings_ptr, postings_items, postings_data : the inverted index (module docstring)
    scratch, touched : per-thread buffers (module docstring)
    n : int >= 0

    Returns
    -------
    ids : int32 (m,), scores : float32 (m,)
    """
    m = 0
    for j in range(term_ids.size):
        t = term_ids[j]
        m = _accumulate(t, np.float32(term_weights[j]), postings_ptr, postings_items, postings_data, scratch,
                        touched, m)
    return select_top_n(scratch, touched, m, n)


@njit(cache=True, nogil=True)
def promote(order, rank, scores, item):
    """Move ``item`` up in ``order`` after its score increased (insertion by binary search).

    ``order`` int32 (n_items,) lists the items best first (score descending, id ascending) and
    ``rank`` int32 (n_items,) is its inverse permutation; both are updated in place. Cost:
    O(log n + displacement).
    """
    pos = rank[item]
    s = scores[item]
    lo = 0
    hi = pos
    while lo < hi:
        mid = (lo + hi) >> 1
        other = order[mid]
        if _better(s, item, scores[other], other):
            hi = mid
        else:
            lo = mid + 1
    for p in range(pos, lo, -1):
        moved = order[p - 1]
        order[p] = moved
        rank[moved] = p
    order[lo] = item
    rank[item] = lo


@njit(cache=True, nogil=True)
def unique_inverse(keys):
    """Distinct values of ``keys`` ascending and each key's index among them: ``np.unique(keys,
    return_inverse=True)`` for the short arrays of one request (no NumPy call overhead).

    Parameters
    ----------
    keys : int array (m,)

    Returns
    -------
    uniq : (u,) of ``keys.dtype``, ascending; inverse : int64 (m,), ``uniq[inverse] == keys``
    """
    order = np.argsort(keys, kind="mergesort")
    uniq = np.empty(keys.size, dtype=keys.dtype)
    inverse = np.empty(keys.size, dtype=np.int64)
    u = 0
    for j in range(order.size):
        v = keys[order[j]]
        if u == 0 or uniq[u - 1] != v:
            uniq[u] = v
            u += 1
        inverse[order[j]] = u - 1
    return uniq[:u], inverse


@njit(cache=True, nogil=True)
def pool_rank_columns(all_ids, all_scores, all_log_scores, list_ptr, k):
    """The pool of several ranked lists and each item's place in each (``retrieval.arms.base.pool_rank_columns``).

    Parameters
    ----------
    all_ids : int32 (total,), the lists concatenated; list ``a`` is ``list_ptr[a]:list_ptr[a + 1]``,
        best first, no id twice within a list
    all_scores : float64 (total,)
    all_log_scores : float64 (total,), ``log1p(max(score, 0))`` (computed by NumPy, so the values
        are exactly those of a NumPy twin)
    list_ptr : int64 (n_lists + 1,)
    k : float64 > 0, reciprocal-rank constant

    Returns
    -------
    ids : int32 (m,), distinct, ascending
    cols : float64 (m, n_lists, 3): ``1 / (k + rank)`` (1-based), ``score / top score`` (0 when the
        top score is <= 0), ``log1p(max(score, 0))``; 0 where a list does not hold the item
    """
    n_lists = list_ptr.size - 1
    ids, inverse = unique_inverse(all_ids)
    cols = np.zeros((ids.size, n_lists, 3), dtype=np.float64)
    for a in range(n_lists):
        lo = list_ptr[a]
        hi = list_ptr[a + 1]
        if hi == lo:
            continue
        top = all_scores[lo]
        for p in range(lo, hi):
            row = inverse[p]
            cols[row, a, 0] = 1.0 / (k + np.float64(p - lo + 1))
            cols[row, a, 1] = all_scores[p] / top if top > 0 else 0.0
            cols[row, a, 2] = all_log_scores[p]
    return ids, cols


@njit(cache=True, nogil=True)
def _lookup_one(keys, values, item, fill):
    """``values`` at ``item`` for ascending ``keys``, ``fill`` where ``item`` is not a key."""
    j = np.searchsorted(keys, item)
    if j < keys.size and keys[j] == item:
        return values[j]
    return fill


@njit(cache=True, nogil=True)
def stack_pool_rows(X, ids, cols, pop_scores, mem_keys, mem_counts, prev_keys, prev_counts, user_keys,
                    user_counts, ago_keys, ago_seconds, never, request):
    """Fill the stacked arm's feature rows (``retrieval.arms.stack.pool_features``) in one pass.

    Parameters
    ----------
    X : float32 (m, 3 * n_lists + 12), all zero on entry; columns ``stack.feature_names``
    ids : int32 (m,), the pool; cols : float64 (m, n_lists, 3), :func:`pool_rank_columns`
    pop_scores : float32 (n_items,) popularity counts, or (0,) without a popularity sub-arm
    mem_keys, mem_counts / prev_keys, prev_counts / user_keys, user_counts : int32 ascending and
        float64, the decayed click counts of the query, of the previous query and of the user (empty
        when unknown or without the arm)
    ago_keys, ago_seconds : int32 ascending, float64: seconds since the user's latest click on each
    never : float64, the seconds written for an item the user never clicked
    request : float64 (6,), the per-request columns ``n_words .. session_position`` (already
        transformed) and ``repeated_query``

    Every log is ``math.log1p`` in float64, then rounded to float32 as the columns are stored.
    """
    m = ids.shape[0]
    n_lists = cols.shape[1]
    c = 3 * n_lists
    for i in range(m):
        item = ids[i]
        n_in = 0
        for a in range(n_lists):
            for f in range(3):
                X[i, 3 * a + f] = cols[i, a, f]
            if cols[i, a, 0] > 0:
                n_in += 1
        if pop_scores.size:
            X[i, c] = math.log1p(np.float64(pop_scores[item]))
        X[i, c + 1] = math.log1p(_lookup_one(mem_keys, mem_counts, item, 0.0))
        X[i, c + 2] = math.log1p(_lookup_one(user_keys, user_counts, item, 0.0))
        X[i, c + 3] = math.log1p(_lookup_one(prev_keys, prev_counts, item, 0.0))
        X[i, c + 4] = n_in
        for j in range(5):
            X[i, c + 5 + j] = request[j]
        X[i, c + 10] = math.log1p(_lookup_one(ago_keys, ago_seconds, item, never))
        X[i, c + 11] = request[5]


@njit(cache=True, nogil=True)
def dot_top_n_dense_last(term_ids, term_weights, dense_row, dense, dense_max, postings_ptr, postings_items,
                         postings_data, scratch, touched, n):
    """:func:`dot_top_n` with the index's few very long postings ("dense" terms) added last, and
    skipped when they cannot change the top ``n`` (an exact MaxScore-style bound, Turtle & Flood,
    "Query evaluation: strategies and optimizations", IPM 1995).

    Every item's score is the float32 sum of its contributions in this order: the query's sparse
    terms by ascending id, then its dense terms by ascending id. After the sparse terms, the items
    they touched get their dense contributions from ``dense`` (a row per dense term, 0 where the
    item lacks the term) -- the same additions, in the same order, as scanning those postings. An
    item no sparse term touched scores at most ``sum_j w_j * dense_max[j]``; when the ``n``-th best
    touched item scores strictly more, no such item can enter the top ``n`` and the dense postings
    are never scanned (tried only when those postings are longer than twice the touched items,
    what the check costs). Otherwise the dense postings are scanned as usual. Either way the result
    is that of the full accumulation in this order.

    Parameters
    ----------
    term_ids : int64 (q,), distinct, ascending
    term_weights : float64 (q,), > 0 (rounded to float32 before the products)
    dense_row : int32 (n_terms,), the term's row of ``dense`` or -1 for a sparse term
    dense : float32 (n_dense, n_items), ``postings_data`` of the dense terms laid out by item
    dense_max : float32 (n_dense,), each dense row's largest value
    postings_ptr, postings_items, postings_data, scratch, touched, n : as :func:`dot_top_n`

    Returns
    -------
    ids : int32 (m,), scores : float32 (m,)
    """
    m = 0
    n_dense_q = 0
    dense_cost = 0  # postings of the query's dense terms
    for j in range(term_ids.size):
        t = term_ids[j]
        if dense_row[t] >= 0:
            n_dense_q += 1
            dense_cost += postings_ptr[t + 1] - postings_ptr[t]
            continue
        m = _accumulate(t, np.float32(term_weights[j]), postings_ptr, postings_items, postings_data, scratch,
                        touched, m)
    if n_dense_q == 0:
        return select_top_n(scratch, touched, m, n)
    # The check costs O(m) (touched items); try it only when scanning the dense postings costs more.
    if m >= n and n > 0 and dense_cost > 2 * m:
        # An item's dense contributions sum to at most ``bound`` (float64 with a relative margin for
        # the float32 rounding of the products and sums).
        bound = 0.0
        for j in range(term_ids.size):
            r = dense_row[term_ids[j]]
            if r >= 0:
                bound += np.float64(np.float32(term_weights[j]) * dense_max[r])
        bound = bound * (1.0 + 1e-5) + n_dense_q * 1e-30  # each contribution is at least 1e-30
        partial = np.empty(m, dtype=np.float32)
        for i in range(m):
            partial[i] = scratch[touched[i]]
        # Contributions are > 0, so the n-th best final score is at least the n-th best partial one.
        theta = np.float64(np.partition(partial, m - n)[m - n])
        if theta > bound:
            # No untouched item (score <= bound) can enter, nor a touched one with partial + bound
            # below theta: finish the others exactly, in term order, and select among them.
            kept = np.empty(m, dtype=np.int32)
            k = 0
            for i in range(m):
                d = touched[i]
                s = scratch[d]
                if (np.float64(s) + bound) * (1.0 + 1e-5) < theta:
                    scratch[d] = 0.0  # cannot reach the top n
                    continue
                for j in range(term_ids.size):
                    r = dense_row[term_ids[j]]
                    if r >= 0:
                        v = dense[r, d]
                        if v != 0.0:
                            s += max(np.float32(term_weights[j]) * v, MIN_CONTRIBUTION)
                scratch[d] = s
                kept[k] = d
                k += 1
            return select_top_n(scratch, kept, k, n)
    for j in range(term_ids.size):
        t = term_ids[j]
        if dense_row[t] < 0:
            continue
        m = _accumulate(t, np.float32(term_weights[j]), postings_ptr, postings_items, postings_data, scratch,
                        touched, m)
    return select_top_n(scratch, touched, m, n)
