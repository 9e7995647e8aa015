"""Numba kernels for XR-Linear training (dual coordinate descent) and beam-search inference.

Plain arrays in and out, no objects, no global state; RNG state is a seed passed in. Every kernel is
``nogil`` so the Python layer can run them from a thread pool (training) or from concurrent server
threads (inference). No ``prange`` here: the request path must never enter numba's threading layer.

Tree layout used by the inference kernels (all "global" node ids, levels concatenated):

- ``node_ptr`` int64 (depth + 2,): level ``l`` holds global nodes ``node_ptr[l]:node_ptr[l+1]``.
- ``child_ptr`` int64 (node_ptr[depth] + 1,): children of global node ``g`` are the global nodes
  ``child_ptr[g]:child_ptr[g+1]`` (one level down).
- ``W_indptr`` int64 (n_nodes_total + 1,), ``W_indices`` int32 (sorted per column), ``W_data``
  float32: CSC over rows ``0..n_features`` (row ``n_features`` = bias) and global node columns.
- ``span_lo`` / ``span_hi`` int64 (n_nodes_total,): label-node range of every node;
  ``sorted_labels`` int32 (depth + 1, n_labels): label ids under each node, sorted, at that range.
- Leaf chunks (Etter et al., "Accelerating Inference for Sparse Extreme Multi-Label Ranking Trees",
  WWW 2022, the chunked matrices of PECOS): the last level's weights, one chunk per leaf cluster
  (a node of level ``depth - 1``; cluster ``k`` is global node ``node_ptr[depth - 1] + k``) stored
  feature-major. ``C_ptr`` int64 (n_clusters + 1,): rows ``C_ptr[k]:C_ptr[k+1]`` of cluster ``k``;
  ``C_feat`` int32 (n_rows,): each row's feature, ascending within a cluster, the bias
  (``n_features``) last; ``C_row_ptr`` int32 or int64 (n_rows + 1,): the row's entries;
  ``C_label`` int16 or int32: child index within the cluster; ``C_data`` float32. A model without
  chunks passes ``C_ptr`` of size 1.
"""
from __future__ import annotations

import numpy as np
from numba import njit

POST_L3_HINGE = 0
POST_SIGMOID = 1

ERR_FEATURE_INDEX = -1


# ---------------------------------------------------------------------------------------------
# Random numbers: splitmix64 (Steele, Lea & Flood, OOPSLA 2014), state carried in a uint64[1].
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def splitmix64_mix(z):
    """splitmix64's output function of a uint64 ``z`` (also a good 64-bit hash of ``z``)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _splitmix64_next(state):
    state[0] = state[0] + np.uint64(0x9E3779B97F4A7C15)
    return splitmix64_mix(state[0])


@njit(cache=True, nogil=True)
def _shuffle(perm, state):
    """Fisher-Yates shuffle of ``perm`` in place (j = next() mod (i + 1))."""
    for i in range(perm.size - 1, 0, -1):
        j = np.int64(_splitmix64_next(state) % np.uint64(i + 1))
        tmp = perm[i]
        perm[i] = perm[j]
        perm[j] = tmp


# ---------------------------------------------------------------------------------------------
# Training: multi-output dual coordinate descent for L2-regularised L2-loss (squared hinge) SVMs.
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def dcd_multi(
    indptr, indices, data, y_child, k0, k1, n_local_features, C, eps, max_iter, seed
):
    """Train the binary classifiers of children ``k0..k1-1`` of one parent together.

    Instance ``i`` (row of the local CSR ``indptr/indices/data``) is a positive for child
    ``y_child[i]`` and a negative for every other child. Each child solves LIBLINEAR's dual of
    ``min_w 0.5 |w|^2 + C sum_i max(0, 1 - y_i w.x_i)^2`` (Hsieh et al., ICML 2008, Alg. 1 with
    D_ii = 1 / (2C), U = inf, shrinking as in LIBLINEAR's ``solve_l2r_l1l2_svc``). The children
    share one random permutation per outer iteration, so each child's result is exactly that of a
    single-output solver fed the same permutation sequence. A child stops when its projected
    gradient gap ``max PG - min PG <= eps`` over all (unshrunk) instances, or at ``max_iter``.

    Returns
    -------
    W : float64 array of shape (n_local_features, k1 - k0)
    n_iter : int, outer iterations run
    """
    n = indptr.size - 1
    K = k1 - k0
    W = np.zeros((n_local_features, K))
    if n == 0 or K == 0:
        return W, 0
    diag = 0.5 / C
    alpha = np.zeros((n, K))
    active = np.ones((n, K), dtype=np.bool_)
    n_active = np.full(K, n, dtype=np.int64)
    done = np.zeros(K, dtype=np.bool_)
    pg_max_old = np.full(K, np.inf)
    pg_min_old = np.full(K, -np.inf)
    pg_max_new = np.empty(K)
    pg_min_new = np.empty(K)
    qd = np.empty(n)
    for i in range(n):
        s = diag
        for p in range(indptr[i], indptr[i + 1]):
            s += np.float64(data[p]) * np.float64(data[p])
        qd[i] = s
    perm = np.arange(n)
    state = np.empty(1, dtype=np.uint64)
    state[0] = np.uint64(seed)
    act = np.empty(K, dtype=np.int64)
    margin = np.empty(K)
    upd = np.empty(K, dtype=np.int64)
    delta = np.empty(K)
    n_iter = 0
    while n_iter < max_iter:
        _shuffle(perm, state)
        for k in range(K):
            pg_max_new[k] = -np.inf
            pg_min_new[k] = np.inf
        for t in range(n):
            i = perm[t]
            na = 0
            for k in range(K):
                if active[i, k] and not done[k]:
                    act[na] = k
                    na += 1
            if na == 0:
                continue
            p0 = indptr[i]
            p1 = indptr[i + 1]
            if na == K:
                for k in range(K):
                    margin[k] = 0.0
                for p in range(p0, p1):
                    v = np.float64(data[p])
                    f = indices[p]
                    for k in range(K):
                        margin[k] += W[f, k] * v
            else:
                for q in range(na):
                    margin[q] = 0.0
                for p in range(p0, p1):
                    v = np.float64(data[p])
                    f = indices[p]
                    for q in range(na):
                        margin[q] += W[f, act[q]] * v
            nu = 0
            yc = y_child[i] - k0
            for q in range(na):
                k = act[q] if na != K else q
                yi = 1.0 if yc == k else -1.0
                a_old = alpha[i, k]
                g = yi * margin[q] - 1.0 + diag * a_old
                pg = 0.0
                if a_old == 0.0:
                    if g > pg_max_old[k]:
                        active[i, k] = False
                        n_active[k] -= 1
                        continue
                    elif g < 0.0:
                        pg = g
                else:
                    pg = g
                if pg > pg_max_new[k]:
                    pg_max_new[k] = pg
                if pg < pg_min_new[k]:
                    pg_min_new[k] = pg
                if abs(pg) > 1.0e-12:
                    a_new = a_old - g / qd[i]
                    if a_new < 0.0:
                        a_new = 0.0
                    alpha[i, k] = a_new
                    upd[nu] = k
                    delta[nu] = (a_new - a_old) * yi
                    nu += 1
            if nu == K:
                for p in range(p0, p1):
                    v = np.float64(data[p])
                    f = indices[p]
                    for k in range(K):
                        W[f, k] += delta[k] * v
            elif nu > 0:
                for p in range(p0, p1):
                    v = np.float64(data[p])
                    f = indices[p]
                    for q in range(nu):
                        W[f, upd[q]] += delta[q] * v
        n_iter += 1
        all_done = True
        for k in range(K):
            if done[k]:
                continue
            if pg_max_new[k] - pg_min_new[k] <= eps:
                if n_active[k] == n:
                    done[k] = True
                    continue
                # Converged on the shrunk set: bring every instance back and check again.
                for i in range(n):
                    active[i, k] = True
                n_active[k] = n
                pg_max_old[k] = np.inf
                pg_min_old[k] = -np.inf
            else:
                pg_max_old[k] = pg_max_new[k] if pg_max_new[k] > 0.0 else np.inf
                pg_min_old[k] = pg_min_new[k] if pg_min_new[k] < 0.0 else -np.inf
            all_done = False
        if all_done:
            break
    return W, n_iter


@njit(cache=True, nogil=True)
def _grow_i32(a, need):
    if need <= a.size:
        return a
    b = np.empty(max(need, 2 * a.size), dtype=np.int32)
    b[: a.size] = a
    return b


@njit(cache=True, nogil=True)
def _grow_f32(a, need):
    if need <= a.size:
        return a
    b = np.empty(max(need, 2 * a.size), dtype=np.float32)
    b[: a.size] = a
    return b


@njit(cache=True, nogil=True)
def train_jobs(
    X_indptr,
    X_indices,
    X_data,
    n_features,
    inst_order,
    inst_child,
    parent_inst_ptr,
    job_parent,
    job_k0,
    job_k1,
    C,
    eps,
    max_iter,
    threshold,
    bias,
    seed_base,
):
    """Train a batch of jobs of one level; each job is children ``k0..k1-1`` of one parent.

    ``inst_order[parent_inst_ptr[p]:parent_inst_ptr[p+1]]`` are the training instances (rows of X)
    of parent ``p`` (teacher forcing: their true node at the parent level is ``p``) and
    ``inst_child`` (aligned with ``inst_order``) the index of their true child among ``p``'s
    children. Features are remapped to a dense local index (sorted global order, bias last), so
    the emitted columns come out with sorted row indices.

    Returns
    -------
    col_nnz : int64 (sum of job widths,), kept weights per child column, jobs in order
    out_indices : int32, global feature ids (``n_features`` = bias), columns concatenated
    out_data : float32, weights with ``|w| >= threshold``
    n_iter : int64 (n_jobs,), DCD outer iterations per job
    """
    n_jobs = job_parent.size
    n_cols = 0
    for j in range(n_jobs):
        n_cols += job_k1[j] - job_k0[j]
    col_nnz = np.zeros(n_cols, dtype=np.int64)
    n_iters = np.zeros(n_jobs, dtype=np.int64)
    out_indices = np.empty(1024, dtype=np.int32)
    out_data = np.empty(1024, dtype=np.float32)
    n_out = 0
    local_of = np.full(n_features, -1, dtype=np.int32)
    col = 0
    for j in range(n_jobs):
        p = job_parent[j]
        k0 = job_k0[j]
        k1 = job_k1[j]
        K = k1 - k0
        a = parent_inst_ptr[p]
        b = parent_inst_ptr[p + 1]
        n = b - a
        if n == 0:
            col += K
            continue
        # Dense local feature index over the union of the instances' columns.
        nnz = 0
        for t in range(a, b):
            r = inst_order[t]
            nnz += X_indptr[r + 1] - X_indptr[r]
        feats = np.empty(nnz, dtype=np.int32)
        nf = 0
        for t in range(a, b):
            r = inst_order[t]
            for q in range(X_indptr[r], X_indptr[r + 1]):
                f = X_indices[q]
                if local_of[f] < 0:
                    local_of[f] = 0
                    feats[nf] = f
                    nf += 1
        feats = np.sort(feats[:nf])
        for u in range(nf):
            local_of[feats[u]] = u
        has_bias = bias != 0.0
        n_loc = nf + 1 if has_bias else nf
        indptr = np.empty(n + 1, dtype=np.int64)
        indices = np.empty(nnz + (n if has_bias else 0), dtype=np.int32)
        data = np.empty(indices.size, dtype=np.float32)
        y_child = np.empty(n, dtype=np.int64)
        m = 0
        indptr[0] = 0
        for t in range(n):
            r = inst_order[a + t]
            for q in range(X_indptr[r], X_indptr[r + 1]):
                indices[m] = local_of[X_indices[q]]
                data[m] = X_data[q]
                m += 1
            if has_bias:
                indices[m] = nf
                data[m] = bias
                m += 1
            indptr[t + 1] = m
            y_child[t] = inst_child[a + t]
        for u in range(nf):
            local_of[feats[u]] = -1
        seed = seed_base ^ (np.uint64(p) * np.uint64(0x9E3779B97F4A7C15))
        W, it = dcd_multi(
            indptr, indices, data, y_child, k0, k1, n_loc, C, eps, max_iter, seed
        )
        n_iters[j] = it
        for k in range(K):
            cnt = 0
            for u in range(n_loc):
                if abs(W[u, k]) >= threshold:
                    cnt += 1
            out_indices = _grow_i32(out_indices, n_out + cnt)
            out_data = _grow_f32(out_data, n_out + cnt)
            for u in range(n_loc):
                w = W[u, k]
                if abs(w) >= threshold:
                    out_indices[n_out] = feats[u] if u < nf else n_features
                    out_data[n_out] = np.float32(w)
                    n_out += 1
            col_nnz[col] = cnt
            col += 1
    return col_nnz, out_indices[:n_out].copy(), out_data[:n_out].copy(), n_iters


# ---------------------------------------------------------------------------------------------
# Inference: beam search (Yu et al., JMLR 2022 "PECOS", Sec. 3; Yadav et al., KDD 2021, Sec. 4).
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def build_leaf_chunks(W_indptr, W_indices, W_data, child_ptr, p0, p1, n_feat, C_label, C_data):
    """Chunk of every leaf cluster ``p0..p1-1`` (global parent nodes of the labels), load time.

    Fills ``C_label`` / ``C_data`` (size: the clusters' weights) and returns ``(C_ptr int64,
    C_feat int32, C_row_ptr int64)`` (layout in the module docstring). Within a row, entries
    follow the children's order, and a child's repeated feature (if any) keeps its column order.
    """
    n_cl = p1 - p0
    C_ptr = np.zeros(n_cl + 1, dtype=np.int64)
    base = W_indptr[child_ptr[p0]]
    nnz = W_indptr[child_ptr[p1]] - base
    feat = np.empty(nnz, dtype=np.int32)
    row_ptr = np.empty(nnz + 1, dtype=np.int64)
    cnt = np.zeros(n_feat + 1, dtype=np.int64)
    n_rows = 0
    out = 0
    for k in range(n_cl):
        c0 = child_ptr[p0 + k]
        c1 = child_ptr[p0 + k + 1]
        r_start = n_rows
        for p in range(W_indptr[c0], W_indptr[c1]):
            f = W_indices[p]
            if cnt[f] == 0:
                feat[n_rows] = f
                n_rows += 1
            cnt[f] += 1
        feat[r_start:n_rows].sort()
        for r in range(r_start, n_rows):
            f = feat[r]
            row_ptr[r] = out
            m = cnt[f]
            cnt[f] = out
            out += m
        for c in range(c0, c1):
            for p in range(W_indptr[c], W_indptr[c + 1]):
                q = cnt[W_indices[p]]
                C_label[q] = c - c0
                C_data[q] = W_data[p]
                cnt[W_indices[p]] = q + 1
        for r in range(r_start, n_rows):
            cnt[feat[r]] = 0
        C_ptr[k + 1] = n_rows
    row_ptr[n_rows] = out
    return C_ptr, feat[:n_rows].copy(), row_ptr[: n_rows + 1].copy()


@njit(cache=True, nogil=True)
def _post(s, post_code):
    if post_code == POST_SIGMOID:
        return 1.0 / (1.0 + np.exp(-s))
    h = 1.0 - s
    if h < 0.0:
        h = 0.0
    return np.exp(-h * h * h)


@njit(cache=True, nogil=True)
def _reject_below(ratio, post_code):
    """A margin ``z_min`` such that ``post(z) < ratio`` (with 1e-5 relative slack) for z < z_min.

    ``ratio`` = worst kept score / parent score. The slack absorbs float32 rounding of
    ``parent * post(z)``, so a child rejected here would also have been rejected by the heap.
    """
    r = np.float64(ratio) * (1.0 - 1e-5)
    if not r > 0.0:
        return -np.inf
    if r >= 1.0:
        r = 1.0 - 1e-12
    if post_code == POST_SIGMOID:
        return np.log(r / (1.0 - r))
    return 1.0 - np.cbrt(-np.log(r))


@njit(cache=True, nogil=True)
def _first_at_least(sorted_row, a, b, lo):
    """First position in ``[a, b)`` of ascending ``sorted_row`` holding a value >= ``lo`` (``b`` if none)."""
    while a < b:
        mid = (a + b) >> 1
        if sorted_row[mid] < lo:
            a = mid + 1
        else:
            b = mid
    return a


@njit(cache=True, nogil=True)
def _column_dot(c, W_indptr, W_indices, W_data, scratch, x_indices, x_data, x_sorted):
    """w_c . [x, bias] with x scattered in ``scratch`` (``scratch[n_features]`` = bias)."""
    a = W_indptr[c]
    b = W_indptr[c + 1]
    nx = x_indices.size
    acc = 0.0
    if x_sorted and (b - a) > 24 * (nx + 1):
        # Long column, short query: binary-search each query feature instead of touching every
        # weight (top levels of the tree are dense after training on all instances).
        n_feat = scratch.size - 1
        lo = a
        for j in range(nx):
            f = x_indices[j]
            lo = _first_at_least(W_indices, lo, b, f)
            if lo < b and W_indices[lo] == f:
                acc += np.float64(W_data[lo]) * np.float64(x_data[j])
        if b > a and W_indices[b - 1] == n_feat:
            acc += np.float64(W_data[b - 1]) * np.float64(scratch[n_feat])
    else:
        for p in range(a, b):
            acc += np.float64(W_data[p]) * np.float64(scratch[W_indices[p]])
    return acc


@njit(cache=True, nogil=True)
def _log2_ceil(n):
    b = 0
    while (1 << b) < n:
        b += 1
    return b


@njit(cache=True, nogil=True)
def _intersect_cost(nx, n_rows):
    """Steps to intersect ``nx`` sorted query features with ``n_rows`` sorted chunk rows: a merge
    (``nx + n_rows``) or a binary search per feature (``nx * ceil(log2(n_rows + 1))``), the fewer."""
    return min(nx + n_rows, nx * _log2_ceil(n_rows + 1))


@njit(cache=True, nogil=True)
def _chunk_row_add(r, C_row_ptr, C_label, C_data, v, zacc):
    for p in range(C_row_ptr[r], C_row_ptr[r + 1]):
        zacc[C_label[p]] += np.float64(C_data[p]) * v


@njit(cache=True, nogil=True)
def _chunk_scores(
    k, C_ptr, C_feat, C_row_ptr, C_label, C_data, x_indices, x_data, n_feat, bias, zacc
):
    """``zacc[i] += w_i . [x, bias]`` for every child ``i`` of leaf cluster ``k`` (``zacc`` zeroed).

    ``x_indices`` must be strictly increasing. Rows are visited in ascending feature order, the
    bias last, so each child's float64 sum adds its nonzero products in the order of
    :func:`_column_dot` (which adds only zero products besides these) and is equal bit for bit.
    The query is intersected with the chunk's rows by a merge or by binary searches, whichever
    the sizes say is cheaper.
    """
    r0 = C_ptr[k]
    r1 = C_ptr[k + 1]
    if r1 == r0:
        return
    rb = r1  # end of the feature rows; the bias row, if any, is r1 - 1
    if C_feat[r1 - 1] == n_feat:
        rb = r1 - 1
    nx = x_indices.size
    n_rows = rb - r0
    if nx > 0 and n_rows > 0:
        if nx + n_rows == _intersect_cost(nx, n_rows):  # the merge is no dearer
            r = r0
            j = 0
            f = x_indices[0]
            while r < rb:
                g = C_feat[r]
                if g < f:
                    r += 1
                elif g > f:
                    j += 1
                    if j == nx:
                        break
                    f = x_indices[j]
                else:
                    _chunk_row_add(r, C_row_ptr, C_label, C_data, np.float64(x_data[j]), zacc)
                    r += 1
                    j += 1
                    if j == nx:
                        break
                    f = x_indices[j]
        else:
            lo = r0
            for j in range(nx):
                f = x_indices[j]
                lo = _first_at_least(C_feat, lo, rb, f)
                if lo == rb:
                    break
                if C_feat[lo] == f:
                    _chunk_row_add(lo, C_row_ptr, C_label, C_data, np.float64(x_data[j]), zacc)
                    lo += 1
    if rb < r1:
        _chunk_row_add(rb, C_row_ptr, C_label, C_data, bias, zacc)


@njit(cache=True, nogil=True)
def _worse(s1, k1, s2, k2):
    """Whether (score s1, key k1) ranks below (s2, k2): lower score, ties by larger key."""
    return s1 < s2 or (s1 == s2 and k1 > k2)


@njit(cache=True, nogil=True)
def _sift_down(h_score, h_key, h_node, size, i):
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        w = left
        right = left + 1
        if right < size and _worse(h_score[right], h_key[right], h_score[left], h_key[left]):
            w = right
        if _worse(h_score[w], h_key[w], h_score[i], h_key[i]):
            h_score[i], h_score[w] = h_score[w], h_score[i]
            h_key[i], h_key[w] = h_key[w], h_key[i]
            h_node[i], h_node[w] = h_node[w], h_node[i]
            i = w
        else:
            return


@njit(cache=True, nogil=True)
def _heap_offer(h_score, h_key, h_node, size, cap, s, key, node):
    """Offer a candidate to the bounded min-heap (root = worst kept); return the new size."""
    if size < cap:
        i = size
        h_score[i] = s
        h_key[i] = key
        h_node[i] = node
        while i > 0:
            parent = (i - 1) >> 1
            if _worse(h_score[i], h_key[i], h_score[parent], h_key[parent]):
                h_score[i], h_score[parent] = h_score[parent], h_score[i]
                h_key[i], h_key[parent] = h_key[parent], h_key[i]
                h_node[i], h_node[parent] = h_node[parent], h_node[i]
                i = parent
            else:
                break
        return size + 1
    if _worse(h_score[0], h_key[0], s, key):
        h_score[0] = s
        h_key[0] = key
        h_node[0] = node
        _sift_down(h_score, h_key, h_node, size, 0)
    return size


@njit(cache=True, nogil=True)
def _beam_search_core(
    x_indices,
    x_data,
    scratch,
    node_ptr,
    child_ptr,
    W_indptr,
    W_indices,
    W_data,
    label_perm,
    sorted_labels,
    span_lo,
    span_hi,
    bias_w,
    F_ptr,
    F_nodes,
    F_data,
    acc,
    C_ptr,
    C_feat,
    C_row_ptr,
    C_label,
    C_data,
    beam_size,
    topk,
    post_code,
    use_range,
    range_lo,
    range_hi,
    h_score,
    h_key,
    h_node,
    b_node,
    b_score,
    out_labels,
    out_scores,
):
    """Beam search for one query; writes results into ``out_*`` and returns their count.

    Returns ``ERR_FEATURE_INDEX`` (and leaves ``scratch`` clean) if a feature index is out of range.
    ``h_*`` have room for ``max(beam_size, topk)`` entries, ``b_*`` for ``beam_size``.

    Each level scores its candidates one of two ways, whichever touches fewer weights: gather
    over each candidate's column (CSC), or, for levels with a feature-major copy (``F_ptr[l]``
    non-empty), accumulate ``w.x`` for every node of the level over the query's rows (CSR) into
    ``acc``; the top levels are dense and few, so the second is much cheaper there. ``bias_w``
    is every node's bias weight (the feature-major copy has no bias row).

    At the last level, a cluster with a chunk (``C_ptr.size > 1``) is scored, for a query with
    strictly increasing features, from its chunk into ``acc[0:fan]`` when intersecting the query
    with the chunk's rows costs less than half of gathering its (in-range) columns; the scores
    are the same bits either way (:func:`_chunk_scores`), and the cut-offs below decide exactly
    as before.
    """
    n_feat = scratch.size - 1
    nx = x_indices.size
    for j in range(nx):
        f = x_indices[j]
        if f < 0 or f >= n_feat:
            for q in range(j):
                scratch[x_indices[q]] = 0.0
            return ERR_FEATURE_INDEX
        scratch[f] += x_data[j]
    x_sorted = True
    x_strict = True
    for j in range(1, nx):
        if x_indices[j] <= x_indices[j - 1]:
            x_strict = False
            if x_indices[j] < x_indices[j - 1]:
                x_sorted = False
                break
    n_chunks = C_ptr.size - 1
    depth = node_ptr.size - 2
    leaf0 = node_ptr[depth]
    nb = 1
    b_node[0] = 0
    b_score[0] = np.float32(1.0)
    size = 0
    bias = np.float64(scratch[n_feat])
    for lev in range(depth):
        last = lev == depth - 1
        cap = topk if last else beam_size
        size = 0
        row = sorted_labels[lev + 1]
        lev_ptr = F_ptr[lev + 1]
        lev0 = node_ptr[lev + 1]
        feature_major = False
        if lev_ptr[n_feat] > lev_ptr[0]:
            cost_fm = 0
            for j in range(nx):
                f = x_indices[j]
                cost_fm += lev_ptr[f + 1] - lev_ptr[f]
            cost_cm = 0
            for bi in range(nb):
                g = b_node[bi]
                cost_cm += W_indptr[child_ptr[g + 1]] - W_indptr[child_ptr[g]]
            feature_major = cost_fm < cost_cm
            if feature_major:
                for j in range(nx):
                    f = x_indices[j]
                    v = np.float64(x_data[j])
                    for p in range(lev_ptr[f], lev_ptr[f + 1]):
                        acc[F_nodes[p]] += np.float64(F_data[p]) * v
        for bi in range(nb):
            g = b_node[bi]
            ps = b_score[bi]
            if size == cap and ps < h_score[0]:
                continue  # post(.) <= 1, so no child of g can enter the heap
            c0 = child_ptr[g]
            c1 = child_ptr[g + 1]
            z_min = -np.inf
            have_z_min = False
            use_chunk = False
            chunk_done = False
            k = 0
            if last and n_chunks > 0 and x_strict and not feature_major and c1 - c0 > 1:
                k = g - node_ptr[lev]
                cost_chunk = _intersect_cost(nx, C_ptr[k + 1] - C_ptr[k])
                if use_range:
                    cost_gather = 0
                    for c in range(c0, c1):
                        lab = np.int64(label_perm[c - leaf0])
                        if lab >= range_lo and lab < range_hi:
                            cost_gather += W_indptr[c + 1] - W_indptr[c]
                else:
                    cost_gather = W_indptr[c1] - W_indptr[c0]
                # An intersection step (compare and a hard-to-predict branch) costs about two
                # gathered weights (completion model, prefix-constrained: 2x, 3x and 4x measure
                # the same, 1x slower).
                use_chunk = 2 * cost_chunk < cost_gather
            for c in range(c0, c1):
                if last:
                    key = np.int64(label_perm[c - leaf0])
                    if use_range and (key < range_lo or key >= range_hi):
                        continue
                else:
                    key = c
                    if use_range:
                        a = span_lo[c]
                        b = span_hi[c]
                        pos = _first_at_least(row, a, b, range_lo)
                        if pos >= b or row[pos] >= range_hi:
                            continue
                if c1 - c0 == 1:
                    s = ps
                else:
                    if size == cap:
                        if ps < h_score[0]:
                            break
                        if not have_z_min:
                            if ps > 0.0:
                                z_min = _reject_below(h_score[0] / ps, post_code)
                            have_z_min = True
                    if feature_major:
                        z = acc[c - lev0] + np.float64(bias_w[c]) * bias
                    elif use_chunk:
                        if not chunk_done:
                            _chunk_scores(
                                k, C_ptr, C_feat, C_row_ptr, C_label, C_data, x_indices, x_data,
                                n_feat, bias, acc,
                            )
                            chunk_done = True
                        z = acc[c - c0]
                    else:
                        z = _column_dot(
                            c, W_indptr, W_indices, W_data, scratch, x_indices, x_data, x_sorted
                        )
                    if z < z_min:
                        continue  # cannot beat the worst kept score; skips exp() and the heap
                    s = ps * np.float32(_post(z, post_code))
                size = _heap_offer(h_score, h_key, h_node, size, cap, s, key, c)
            if chunk_done:
                for i in range(c1 - c0):
                    acc[i] = 0.0
        if feature_major:
            for j in range(nx):
                f = x_indices[j]
                for p in range(lev_ptr[f], lev_ptr[f + 1]):
                    acc[F_nodes[p]] = 0.0
        if last:
            break
        # Next beam, best first, so that the next level's heap fills with good candidates early
        # and the "parent score < worst kept" cut-off skips more children.
        nb = size
        for q in range(size):
            sc = h_score[q]
            nd = h_node[q]
            t = q
            while t > 0 and (b_score[t - 1] < sc or (b_score[t - 1] == sc and b_node[t - 1] > nd)):
                b_score[t] = b_score[t - 1]
                b_node[t] = b_node[t - 1]
                t -= 1
            b_score[t] = sc
            b_node[t] = nd
        if nb == 0:
            break
    for j in range(nx):
        scratch[x_indices[j]] = 0.0
    n_out = size
    # Pop worst-first into the tail: output sorted by score desc, label id asc.
    while size > 0:
        size -= 1
        out_labels[size] = np.int32(h_key[0])
        out_scores[size] = h_score[0]
        h_score[0] = h_score[size]
        h_key[0] = h_key[size]
        h_node[0] = h_node[size]
        _sift_down(h_score, h_key, h_node, size, 0)
    return n_out


@njit(cache=True, nogil=True)
def beam_search(
    x_indices,
    x_data,
    scratch,
    node_ptr,
    child_ptr,
    W_indptr,
    W_indices,
    W_data,
    label_perm,
    sorted_labels,
    span_lo,
    span_hi,
    bias_w,
    F_ptr,
    F_nodes,
    F_data,
    acc,
    C_ptr,
    C_feat,
    C_row_ptr,
    C_label,
    C_data,
    beam_size,
    topk,
    post_code,
    use_range,
    range_lo,
    range_hi,
):
    """Beam search for one query. Returns ``(status, label_ids int32, scores float32)``.

    ``status`` is the number of labels found, or ``ERR_FEATURE_INDEX``.
    """
    cap = max(beam_size, topk)
    h_score = np.empty(cap, dtype=np.float32)
    h_key = np.empty(cap, dtype=np.int64)
    h_node = np.empty(cap, dtype=np.int64)
    b_node = np.empty(beam_size, dtype=np.int64)
    b_score = np.empty(beam_size, dtype=np.float32)
    out_labels = np.empty(topk, dtype=np.int32)
    out_scores = np.empty(topk, dtype=np.float32)
    n = _beam_search_core(
        x_indices,
        x_data,
        scratch,
        node_ptr,
        child_ptr,
        W_indptr,
        W_indices,
        W_data,
        label_perm,
        sorted_labels,
        span_lo,
        span_hi,
        bias_w,
        F_ptr,
        F_nodes,
        F_data,
        acc,
        C_ptr,
        C_feat,
        C_row_ptr,
        C_label,
        C_data,
        beam_size,
        topk,
        post_code,
        use_range,
        range_lo,
        range_hi,
        h_score,
        h_key,
        h_node,
        b_node,
        b_score,
        out_labels,
        out_scores,
    )
    if n < 0:
        return n, out_labels[:0], out_scores[:0]
    return n, out_labels[:n], out_scores[:n]


@njit(cache=True, nogil=True)
def beam_search_rows(
    X_indptr,
    X_indices,
    X_data,
    row0,
    row1,
    scratch,
    node_ptr,
    child_ptr,
    W_indptr,
    W_indices,
    W_data,
    label_perm,
    sorted_labels,
    span_lo,
    span_hi,
    bias_w,
    F_ptr,
    F_nodes,
    F_data,
    acc,
    C_ptr,
    C_feat,
    C_row_ptr,
    C_label,
    C_data,
    beam_size,
    topk,
    post_code,
    out_labels,
    out_scores,
):
    """Beam search for rows ``row0..row1-1`` of a CSR matrix into ``out_*[row]`` (padded -1 / 0).

    Returns the first row with an out-of-range feature index, or -1 if none.
    """
    cap = max(beam_size, topk)
    h_score = np.empty(cap, dtype=np.float32)
    h_key = np.empty(cap, dtype=np.int64)
    h_node = np.empty(cap, dtype=np.int64)
    b_node = np.empty(beam_size, dtype=np.int64)
    b_score = np.empty(beam_size, dtype=np.float32)
    for r in range(row0, row1):
        a = X_indptr[r]
        b = X_indptr[r + 1]
        n = _beam_search_core(
            X_indices[a:b],
            X_data[a:b],
            scratch,
            node_ptr,
            child_ptr,
            W_indptr,
            W_indices,
            W_data,
            label_perm,
            sorted_labels,
            span_lo,
            span_hi,
            bias_w,
            F_ptr,
            F_nodes,
            F_data,
            acc,
            C_ptr,
            C_feat,
            C_row_ptr,
            C_label,
            C_data,
            beam_size,
            topk,
            post_code,
            False,
            0,
            0,
            h_score,
            h_key,
            h_node,
            b_node,
            b_score,
            out_labels[r],
            out_scores[r],
        )
        if n < 0:
            return r
        for q in range(n, topk):
            out_labels[r, q] = -1
            out_scores[r, q] = 0.0
    return -1
