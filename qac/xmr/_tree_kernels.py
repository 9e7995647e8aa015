"""Numba kernels for the label-tree builder (build code only).

Plain arrays in and out, no logging, no global state. Called from ``qac.xmr.tree``.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def consecutive_lcp(codes, ptr):
    """Common-prefix length of consecutive labels, and the first position out of order.

    codes : uint32 (total_chars,) code points of the labels, concatenated.
    ptr : int64 (n + 1,) label j is ``codes[ptr[j]:ptr[j + 1]]``.
    Returns ``(lcp, bad, has_zero)``: ``lcp`` int32 (max(n - 1, 0),) with ``lcp[j]`` the common
    prefix length of labels j and j + 1; ``bad`` the first j + 1 such that label j is not strictly
    smaller than label j + 1 in code-point (Python ``str``) order, or -1; ``has_zero`` whether any
    label holds code point 0.
    """
    n = ptr.shape[0] - 1
    out = np.empty(max(n - 1, 0), dtype=np.int32)
    bad = -1
    for j in range(n - 1):
        a0 = ptr[j]
        la = ptr[j + 1] - a0
        b0 = ptr[j + 1]
        lb = ptr[j + 2] - b0
        lim = min(la, lb)
        k = 0
        while k < lim and codes[a0 + k] == codes[b0 + k]:
            k += 1
        out[j] = k
        if bad < 0:
            if k == lim:
                if la >= lb:
                    bad = j + 1
            elif codes[a0 + k] > codes[b0 + k]:
                bad = j + 1
    has_zero = False
    for t in range(codes.shape[0]):
        if codes[t] == 0:
            has_zero = True
            break
    return out, bad, has_zero


@njit(cache=True, nogil=True)
def row_sq_norms(indptr, data):
    """Float64 (n_rows,) squared L2 norm of every CSR row."""
    n = indptr.shape[0] - 1
    out = np.zeros(n, dtype=np.float64)
    for i in range(n):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            s += np.float64(data[p]) * data[p]
        out[i] = s
    return out


@njit(cache=True, nogil=True)
def _add_rows(indptr, indices, data, rows, member, c0, c1):
    for t in range(rows.shape[0]):
        r = rows[t]
        if member[t] == 0:
            for p in range(indptr[r], indptr[r + 1]):
                c0[indices[p]] += data[p]
        else:
            for p in range(indptr[r], indptr[r + 1]):
                c1[indices[p]] += data[p]


@njit(cache=True, nogil=True)
def _clear_rows(indptr, indices, rows, c0, c1):
    for t in range(rows.shape[0]):
        r = rows[t]
        for p in range(indptr[r], indptr[r + 1]):
            j = indices[p]
            c0[j] = 0.0
            c1[j] = 0.0


@njit(cache=True, nogil=True)
def split_segments(indptr, indices, data, n_features, perm, seg_start, seg_end, seeds, max_iter):
    """Balanced spherical 2-means split of each segment ``perm[seg_start[k]:seg_end[k]]`` in place.

    Each round assigns the ``ceil(m / 2)`` labels of a segment of ``m`` with the largest
    ``cos(x, c0) - cos(x, c1)`` to cluster 0 and the rest to cluster 1 (ties keep the earlier
    position first), then recomputes both centroids as the sums of their members. The segment is
    rewritten as cluster 0 then cluster 1, each half in its original relative order, so a sorted
    segment yields two sorted halves.

    indptr, indices, data : CSR (int64, int32, float32) of the (n_labels, n_features) L2-normalised
        embeddings.
    perm : int32 (n_labels,) label ids, rewritten in place (segments must be disjoint).
    seg_start, seg_end : int64 (n_segments,), each segment of size >= 2.
    seeds : int64 (n_segments,) non-negative; chooses the two distinct initial centroid rows.
    max_iter : int >= 1, assignment rounds at most (stops early once the assignment repeats).

    Centroids live in two dense float64 scratch vectors of ``n_features`` entries, cleared by
    visiting only the columns the segment touches, so a round costs O(nnz(segment)) plus a sort.
    Centroid norms come for free: ``|c|^2 = sum over members x of x . c``.
    """
    c0 = np.zeros(n_features, dtype=np.float64)
    c1 = np.zeros(n_features, dtype=np.float64)
    for k in range(seg_start.shape[0]):
        s = seg_start[k]
        e = seg_end[k]
        m = e - s
        rows = perm[s:e].copy()
        half = (m + 1) // 2
        seed = seeds[k]
        i0 = seed % m
        i1 = (i0 + 1 + (seed // m) % (m - 1)) % m
        member = np.empty(m, dtype=np.int8)
        prev = np.empty(m, dtype=np.int8)
        d0 = np.empty(m, dtype=np.float64)
        d1 = np.empty(m, dtype=np.float64)
        neg_diff = np.empty(m, dtype=np.float64)
        r0 = rows[i0]
        for p in range(indptr[r0], indptr[r0 + 1]):
            c0[indices[p]] += data[p]
        r1 = rows[i1]
        for p in range(indptr[r1], indptr[r1 + 1]):
            c1[indices[p]] += data[p]
        for it in range(max_iter):
            for t in range(m):
                r = rows[t]
                a = 0.0
                b = 0.0
                for p in range(indptr[r], indptr[r + 1]):
                    j = indices[p]
                    a += data[p] * c0[j]
                    b += data[p] * c1[j]
                d0[t] = a
                d1[t] = b
            if it == 0:
                n0 = np.sqrt(d0[i0])
                n1 = np.sqrt(d1[i1])
            else:
                q0 = 0.0
                q1 = 0.0
                for t in range(m):
                    if prev[t] == 0:
                        q0 += d0[t]
                    else:
                        q1 += d1[t]
                n0 = np.sqrt(max(q0, 0.0))
                n1 = np.sqrt(max(q1, 0.0))
            inv0 = 1.0 / n0 if n0 > 0.0 else 0.0
            inv1 = 1.0 / n1 if n1 > 0.0 else 0.0
            for t in range(m):
                neg_diff[t] = d1[t] * inv1 - d0[t] * inv0
            # Same as a stable argsort taking the first half, in O(m): below the half-th
            # smallest value -> cluster 0; ties at that value fill cluster 0 in position order.
            thr = np.partition(neg_diff, half - 1)[half - 1]
            n_below = 0
            for t in range(m):
                if neg_diff[t] < thr:
                    n_below += 1
            room = half - n_below
            for t in range(m):
                v = neg_diff[t]
                if v < thr:
                    member[t] = 0
                elif v == thr and room > 0:
                    member[t] = 0
                    room -= 1
                else:
                    member[t] = 1
            if it > 0:
                same = True
                for t in range(m):
                    if member[t] != prev[t]:
                        same = False
                        break
                if same:
                    break
            if it == max_iter - 1:
                break
            prev[:] = member
            _clear_rows(indptr, indices, rows, c0, c1)
            _add_rows(indptr, indices, data, rows, member, c0, c1)
        _clear_rows(indptr, indices, rows, c0, c1)
        a = s
        for t in range(m):
            if member[t] == 0:
                perm[a] = rows[t]
                a += 1
        for t in range(m):
            if member[t] == 1:
                perm[a] = rows[t]
                a += 1
