"""Numba kernels for the ranker: per-pair text features, the term-pair model's hashed (query term,
item term) buckets and scores (``retrieval.pair_model``), and flat tree-ensemble scoring.

Plain arrays in and out, no objects, no global state, ``nogil`` and no ``prange``: both kernels run
on the request path, possibly from several server threads at once.

Tree-ensemble layout (see :class:`retrieval.ranker.Ranker`): all trees' nodes concatenated; tree
``t`` owns nodes ``tree_ptr[t]:tree_ptr[t+1]`` and its root is ``tree_ptr[t]``; ``node_left`` /
``node_right`` are *global* node ids; a leaf has ``node_feature == -1``. A split sends ``x`` left
when ``x <= node_threshold`` (float64 comparison, as scikit-learn's predictors do) and a missing
value (NaN) left when ``node_missing_left`` is 1. The kernel compares in float32 against the
thresholds rounded down (:func:`ensemble_score`), which takes the same decisions.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from qac.xmr._kernels import splitmix64_mix

# Column order of the text block written by ``text_features`` (names in ranker_features).
N_TEXT_FEATURES = 12


@njit(cache=True, nogil=True)
def _sorted_intersection(a, a_lo, a_hi, b):
    """Size of the intersection of sorted unique ``a[a_lo:a_hi]`` and sorted unique ``b``."""
    i = a_lo
    j = 0
    nb = b.shape[0]
    n = 0
    while i < a_hi and j < nb:
        if a[i] == b[j]:
            n += 1
            i += 1
            j += 1
        elif a[i] < b[j]:
            i += 1
        else:
            j += 1
    return n


@njit(cache=True, nogil=True)
def text_features(
    item_ids, q_terms, q_idf, q_seq, q_tri,
    tok_flat, tok_ptr, tri_flat, tri_ptr, avg_len, k1, b, out,
):
    """Write the ``N_TEXT_FEATURES`` per-pair text features of every candidate into ``out``.

    Parameters
    ----------
    item_ids : int32 (m,)
    q_terms : int32 (nq,) distinct query terms (vocabulary ids, -1 = not in the vocabulary).
    q_idf : float64 (nq,) their BM25 IDF.
    q_seq : int32 (len,) the query's token ids in order, duplicates kept (phrase test).
    q_tri : int64 (nt,) sorted distinct packed character trigrams of the query.
    tok_flat, tok_ptr : item token ids (int32) in text order, ragged by item (int64 ptr).
    tri_flat, tri_ptr : item trigram keys (int64), sorted distinct per item.
    avg_len, k1, b : float BM25 constants.
    out : float32 (m, >= N_TEXT_FEATURES), columns 0..N_TEXT_FEATURES-1 overwritten.
    """
    m = item_ids.shape[0]
    nq = q_terms.shape[0]
    n_seq = q_seq.shape[0]
    n_qtri = q_tri.shape[0]
    idf_total = 0.0
    for j in range(nq):
        idf_total += q_idf[j]
    seq_known = n_seq > 0
    for j in range(n_seq):
        if q_seq[j] < 0:
            seq_known = False
    tf = np.zeros(nq, dtype=np.float64)
    for r in range(m):
        it = item_ids[r]
        lo = tok_ptr[it]
        hi = tok_ptr[it + 1]
        dl = hi - lo
        for j in range(nq):
            tf[j] = 0.0
        first = -1
        n_item_matched = 0
        for p in range(lo, hi):
            t = tok_flat[p]
            hit = False
            for j in range(nq):
                if q_terms[j] == t and t >= 0:
                    tf[j] += 1.0
                    hit = True
                    break
            if hit:
                n_item_matched += 1
                if first < 0:
                    first = p - lo
        bm25 = 0.0
        n_matched = 0
        idf_matched = 0.0
        norm = k1 * (1.0 - b + b * dl / avg_len)
        for j in range(nq):
            if tf[j] > 0.0:
                n_matched += 1
                idf_matched += q_idf[j]
                bm25 += q_idf[j] * tf[j] * (k1 + 1.0) / (tf[j] + norm)
        phrase = 0.0
        if seq_known and dl >= n_seq:
            for s in range(lo, hi - n_seq + 1):
                ok = True
                for j in range(n_seq):
                    if tok_flat[s + j] != q_seq[j]:
                        ok = False
                        break
                if ok:
                    phrase = 1.0
                    break
        tlo = tri_ptr[it]
        thi = tri_ptr[it + 1]
        n_itri = thi - tlo
        inter = _sorted_intersection(tri_flat, tlo, thi, q_tri)
        union = n_itri + n_qtri - inter
        out[r, 0] = bm25
        out[r, 1] = n_matched / nq if nq > 0 else 0.0
        out[r, 2] = idf_matched / idf_total if idf_total > 0.0 else 0.0
        out[r, 3] = phrase
        out[r, 4] = inter / union if union > 0 else 0.0
        out[r, 5] = inter / math.sqrt(n_itri * n_qtri) if n_itri > 0 and n_qtri > 0 else 0.0
        out[r, 6] = inter / n_qtri if n_qtri > 0 else 0.0
        out[r, 7] = n_seq
        out[r, 8] = dl
        out[r, 9] = 1.0 / (1.0 + first) if first >= 0 else 0.0
        out[r, 10] = n_item_matched / dl if dl > 0 else 0.0
        out[r, 11] = n_matched


@njit(cache=True, nogil=True)
def ensemble_score(X, tree_ptr, node_feature, node_threshold32, node_left, node_right,
                   node_value, node_missing_left, baseline, out):
    """``out[i] = baseline + sum_t leaf_value_t(X[i])``, summed in float64 in tree order.

    ``X`` is float32 and ``node_threshold32`` holds each float64 threshold rounded *down* to float32
    (:func:`retrieval.ranker.float32_floor`): for a float32 ``x``, ``x <= t`` in float64 exactly
    when ``x <= float32_floor(t)``, so comparing in float32 takes every float64 decision without
    converting ``x`` at every node. A missing value (NaN) fails ``<=`` and then goes left when
    ``node_missing_left`` is 1.

    Trees are the outer loop so one tree's nodes stay in cache while every row walks it.
    """
    n = X.shape[0]
    n_trees = tree_ptr.shape[0] - 1
    for i in range(n):
        out[i] = baseline
    for t in range(n_trees):
        root = tree_ptr[t]
        for i in range(n):
            node = root
            f = node_feature[node]
            while f >= 0:
                x = X[i, f]
                if x <= node_threshold32[node]:
                    node = node_left[node]
                elif math.isnan(x) and node_missing_left[node] != 0:
                    node = node_left[node]
                else:
                    node = node_right[node]
                f = node_feature[node]
            out[i] += node_value[node]


@njit(cache=True, nogil=True)
def lambdarank_gradients(scores, gains, group_ptr, sigma, k, grad, hess):
    """LambdaRank gradients of NDCG@k (Burges, MSR-TR-2010-82, Sec. 6-7), per query group.

    ``grad`` / ``hess`` (float64, n) receive the negative-gradient "lambdas" (push up is positive)
    and their second-order weights; ``gains`` (float64, n) are the NDCG gains of the items (the
    caller picks ``2^label - 1`` or a linear gain), discount ``1 / log2(rank + 2)`` from the current
    ranking by ``scores``; pairs with both items below rank ``k`` contribute nothing.
    """
    n_groups = group_ptr.shape[0] - 1
    for i in range(grad.shape[0]):
        grad[i] = 0.0
        hess[i] = 0.0
    for g in range(n_groups):
        lo = group_ptr[g]
        hi = group_ptr[g + 1]
        m = hi - lo
        if m < 2:
            continue
        order = np.argsort(-scores[lo:hi], kind="mergesort")
        rank = np.empty(m, dtype=np.int64)
        for r in range(m):
            rank[order[r]] = r
        ideal = np.sort(gains[lo:hi])[::-1]
        idcg = 0.0
        for r in range(min(k, m)):
            idcg += ideal[r] / math.log2(r + 2.0)
        if idcg <= 0.0:
            continue
        for a in range(m):
            for c in range(m):
                if gains[lo + a] <= gains[lo + c]:
                    continue
                ra = rank[a]
                rc = rank[c]
                if ra >= k and rc >= k:
                    continue
                da = 1.0 / math.log2(ra + 2.0) if ra < k else 0.0
                dc = 1.0 / math.log2(rc + 2.0) if rc < k else 0.0
                delta = abs((gains[lo + a] - gains[lo + c]) * (da - dc)) / idcg
                diff = scores[lo + a] - scores[lo + c]
                rho = 1.0 / (1.0 + math.exp(sigma * diff))
                lam = sigma * rho * delta
                h = sigma * sigma * rho * (1.0 - rho) * delta
                grad[lo + a] += lam
                grad[lo + c] -= lam
                hess[lo + a] += h
                hess[lo + c] += h


# Columns written by ``match_features`` (names in ranker_features.MATCH_FEATURE_NAMES).
N_MATCH_FEATURES = 4


@njit(cache=True, nogil=True)
def match_features(item_ids, q_terms, q_seq, term_is_num, tok_flat, tok_ptr, out, col0):
    """Exact-match features of every candidate into ``out[:, col0:col0 + N_MATCH_FEATURES]``.

    Columns: ``num_match`` (distinct numeric query terms present in the item / distinct numeric
    query terms; 0 without any), ``has_num`` (1 when the query has a numeric term), ``head_match``
    (1 when the query's last term -- in product search usually the product type -- is in the item),
    ``pair_match`` (adjacent query term pairs that occur adjacent, in order, in the item / adjacent
    pairs; 0 for one-term queries).

    Parameters
    ----------
    item_ids : int32 (m,)
    q_terms : int32 (nq,) distinct query terms (-1 = not in the vocabulary).
    q_seq : int32 (len,) query term ids in order (-1 = unknown).
    term_is_num : uint8 (n_terms,) 1 when the term holds a digit.
    tok_flat, tok_ptr : item term ids in text order, ragged by item.
    out : float32 (m, >= col0 + N_MATCH_FEATURES)
    col0 : int
    """
    m = item_ids.shape[0]
    nq = q_terms.shape[0]
    n_seq = q_seq.shape[0]
    n_num = 0
    for j in range(nq):
        if q_terms[j] >= 0 and term_is_num[q_terms[j]] != 0:
            n_num += 1
    head = q_seq[n_seq - 1] if n_seq > 0 else -1
    for r in range(m):
        it = item_ids[r]
        lo = tok_ptr[it]
        hi = tok_ptr[it + 1]
        num_hit = 0
        for j in range(nq):
            t = q_terms[j]
            if t >= 0 and term_is_num[t] != 0:
                for p in range(lo, hi):
                    if tok_flat[p] == t:
                        num_hit += 1
                        break
        head_hit = 0.0
        if head >= 0:
            for p in range(lo, hi):
                if tok_flat[p] == head:
                    head_hit = 1.0
                    break
        pair_hit = 0
        for j in range(n_seq - 1):
            a = q_seq[j]
            b = q_seq[j + 1]
            if a < 0 or b < 0:
                continue
            for p in range(lo, hi - 1):
                if tok_flat[p] == a and tok_flat[p + 1] == b:
                    pair_hit += 1
                    break
        out[r, col0] = num_hit / n_num if n_num > 0 else 0.0
        out[r, col0 + 1] = 1.0 if n_num > 0 else 0.0
        out[r, col0 + 2] = head_hit
        out[r, col0 + 3] = pair_hit / (n_seq - 1) if n_seq > 1 else 0.0


# -- term-pair interaction model (retrieval.pair_model) -----------------------------------------


@njit(cache=True, nogil=True)
def pair_bucket(q_hash, u_hash, mask):
    """Bucket of one (query term, item term) pair: splitmix64 of ``q_hash << 32 | u_hash``, ``& mask``.

    ``q_hash`` / ``u_hash`` are uint32 CRC-32s of the terms; ``mask = 2**n_bits - 1``.
    """
    x = splitmix64_mix((np.uint64(q_hash) << np.uint64(32)) | np.uint64(u_hash))
    return np.int64(x & np.uint64(mask))


# Stand in for the item term of a query term the item has / lacks (the term's "matched" and
# "unmatched" features).
MATCHED_HASH = 0xFFFFFFFE
UNMATCHED_HASH = 0xFFFFFFFF


@njit(cache=True, nogil=True)
def _seen_before(tok_flat, lo, p):
    """Whether ``tok_flat[p]`` occurs in ``tok_flat[lo:p]`` (titles are short: a linear scan)."""
    t = tok_flat[p]
    for pp in range(lo, p):
        if tok_flat[pp] == t:
            return True
    return False


@njit(cache=True, nogil=True)
def pair_buckets(item_ids, q_hash, term_hash, tok_flat, tok_ptr, mask):
    """The pair buckets of every candidate, one CSR row per item (a bucket repeats when two pairs
    of the row collide).

    Row ``r`` holds, for every query term hash ``q`` of ``q_hash`` (uint32, (n_q,), distinct terms)
    and every *distinct* token ``u`` of item ``item_ids[r]`` (``term_hash[tok_flat[...]]``), the
    bucket of (q, u); then, per query term, the bucket of (q, ``MATCHED_HASH``) when some token of
    the item has the hash ``q`` and of (q, ``UNMATCHED_HASH``) otherwise.
    Returns ``(indptr int64 (m + 1,), buckets int64 (nnz,))``.
    """
    m = item_ids.shape[0]
    nq = q_hash.shape[0]
    cap = 0
    for r in range(m):
        i = item_ids[r]
        cap += nq * (tok_ptr[i + 1] - tok_ptr[i] + 1)
    buckets = np.empty(cap, dtype=np.int64)
    indptr = np.zeros(m + 1, dtype=np.int64)
    n = 0
    for r in range(m):
        i = item_ids[r]
        lo = tok_ptr[i]
        hi = tok_ptr[i + 1]
        for a in range(nq):
            matched = False
            for p in range(lo, hi):
                t = tok_flat[p]
                if _seen_before(tok_flat, lo, p):
                    continue
                u = term_hash[t]
                if u == q_hash[a]:
                    matched = True
                buckets[n] = pair_bucket(q_hash[a], u, mask)
                n += 1
            buckets[n] = pair_bucket(q_hash[a], MATCHED_HASH if matched else UNMATCHED_HASH, mask)
            n += 1
        indptr[r + 1] = n
    return indptr, buckets[:n]


@njit(cache=True, nogil=True)
def pair_scores(item_ids, q_hash, term_hash, tok_flat, tok_ptr, mask, weights, intercept, out, col):
    """``out[r, col] = intercept + sum of weights over row r's buckets`` (see ``pair_buckets``).

    Adds the same weights in the same order as summing ``pair_buckets``' rows (float64 from
    ``intercept``), so the scores are bit for bit those; the difference is cost. A candidate set
    shares most title terms (one product type), so each distinct (query term, title term) weight is
    hashed and fetched from the table once per call, and each title is deduplicated once rather than
    once per query term. ``pair_scores_from_buckets`` is the twin.
    """
    m = item_ids.shape[0]
    nq = q_hash.shape[0]
    slot = np.full(term_hash.shape[0], -1, dtype=np.int32)
    cap = 0
    longest = 0
    for r in range(m):
        i = item_ids[r]
        n = tok_ptr[i + 1] - tok_ptr[i]
        cap += n
        longest = max(longest, n)
    # cached[k * nq + a]: the weight of (query term a, the k-th distinct title term of the call).
    cached = np.empty(max(cap, 1) * nq, dtype=weights.dtype)
    hit = np.empty(max(cap, 1) * nq, dtype=np.bool_)
    flag = np.empty(2 * max(nq, 1), dtype=weights.dtype)  # (a, matched) then (a, unmatched)
    for a in range(nq):
        flag[2 * a] = weights[pair_bucket(q_hash[a], MATCHED_HASH, mask)]
        flag[2 * a + 1] = weights[pair_bucket(q_hash[a], UNMATCHED_HASH, mask)]
    distinct = np.empty(max(longest, 1), dtype=np.int32)
    n_slots = 0
    for r in range(m):
        i = item_ids[r]
        lo = tok_ptr[i]
        hi = tok_ptr[i + 1]
        nd = 0
        for p in range(lo, hi):
            t = tok_flat[p]
            if _seen_before(tok_flat, lo, p):
                continue
            k = slot[t]
            if k < 0:
                k = n_slots
                slot[t] = k
                n_slots += 1
                u = term_hash[t]
                for a in range(nq):
                    cached[k * nq + a] = weights[pair_bucket(q_hash[a], u, mask)]
                    hit[k * nq + a] = u == q_hash[a]
            distinct[nd] = k
            nd += 1
        s = intercept
        for a in range(nq):
            matched = False
            for d in range(nd):
                k = distinct[d]
                s += cached[k * nq + a]
                if hit[k * nq + a]:
                    matched = True
            s += flag[2 * a] if matched else flag[2 * a + 1]
        out[r, col] = s


@njit(cache=True, nogil=True)
def pair_scores_from_buckets(item_ids, q_hash, term_hash, tok_flat, tok_ptr, mask, weights, intercept, out, col):
    """Twin of ``pair_scores``: the sum of each ``pair_buckets`` row's weights, in row order."""
    indptr, buckets = pair_buckets(item_ids, q_hash, term_hash, tok_flat, tok_ptr, mask)
    for r in range(item_ids.shape[0]):
        s = intercept
        for j in range(indptr[r], indptr[r + 1]):
            s += weights[buckets[j]]
        out[r, col] = s


@njit(cache=True, nogil=True)
def arm_score_matrix(keys, listed, values, list_ptr, out):
    """Each candidate's score in each arm's list, 0 where absent (``ranker_features.arm_score_matrix``).

    Parameters
    ----------
    keys : int64 (m,), the candidates (an id may repeat: every row of it gets the same scores)
    listed : int64 (total,), the arms' heads concatenated; arm ``a`` is ``list_ptr[a]:list_ptr[a + 1]``,
        no id twice within an arm
    values : float32 (total,), their scores
    list_ptr : int64 (n_arms + 1,)
    out : float32 (m, n_arms), all zero on entry
    """
    order = np.argsort(keys, kind="mergesort")
    sorted_keys = keys[order]
    m = keys.size
    for a in range(list_ptr.size - 1):
        for p in range(list_ptr[a], list_ptr[a + 1]):
            v = listed[p]
            j = np.searchsorted(sorted_keys, v)
            while j < m and sorted_keys[j] == v:
                out[order[j], a] = values[p]
                j += 1
