"""Numba kernels for ``retrieval.policy`` (private): plain arrays in and out, no objects, no RNG.

Shapes used throughout (``n_arms`` arms, ``d`` per-arm model inputs, ``n_levels`` candidate-count
levels, ``n_actions`` menu allocations):

- ``x`` float32/float64 (d_ctx,), ``arm_x`` (n_arms, d_arm), ``extra`` float64 (2,) = [1, budget
  feature]; the per-arm model input is ``phi_a = [x, arm_x[a], extra]`` (d = d_ctx + d_arm + 2).
- ``a_inv`` float64 (n_arms, d, d): inverse of the per-arm ridge Gram matrix ``lambda*I + sum phi phi^T``.
- ``w`` float64 (n_arms, d, n_levels): ridge weights, one column per candidate-count level.
- ``menu_levels`` int32 (n_actions, n_arms): level index of arm a in action k, -1 when the arm
  gets no candidates.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _phi(x, arm_x, extra, a, out):
    d_ctx = x.shape[0]
    d_arm = arm_x.shape[1]
    for i in range(d_ctx):
        out[i] = x[i]
    for j in range(d_arm):
        out[d_ctx + j] = arm_x[a, j]
    for j in range(extra.shape[0]):
        out[d_ctx + d_arm + j] = extra[j]


@njit(cache=True, nogil=True)
def predict_levels(x, arm_x, extra, w, a_inv, mean_out, width_out):
    """Per-arm, per-level ridge predictions ``phi_a^T w[a, :, l]`` and widths ``sqrt(phi_a^T A_a^-1 phi_a)``.

    ``mean_out`` float64 (n_arms, n_levels) and ``width_out`` float64 (n_arms,) are written in place.
    """
    n_arms, d, n_levels = w.shape
    phi = np.empty(d, dtype=np.float64)
    for a in range(n_arms):
        _phi(x, arm_x, extra, a, phi)
        for l in range(n_levels):
            s = 0.0
            for i in range(d):
                s += phi[i] * w[a, i, l]
            mean_out[a, l] = s
        q = 0.0
        for i in range(d):
            t = 0.0
            for j in range(d):
                t += a_inv[a, i, j] * phi[j]
            q += phi[i] * t
        width_out[a] = np.sqrt(q) if q > 0.0 else 0.0


@njit(cache=True, nogil=True)
def union_scores(p, menu_levels, out):
    """Noisy-or union hit probability of every action: ``1 - prod_a (1 - clip(p[a, level[k, a]]))``."""
    n_actions, n_arms = menu_levels.shape
    for k in range(n_actions):
        miss = 1.0
        for a in range(n_arms):
            l = menu_levels[k, a]
            if l >= 0:
                v = p[a, l]
                if v < 0.0:
                    v = 0.0
                elif v > 1.0:
                    v = 1.0
                miss *= 1.0 - v
        out[k] = 1.0 - miss


@njit(cache=True, nogil=True)
def argmax_first(v):
    """Index of the largest value, the lowest index on ties (deterministic greedy choice)."""
    best = 0
    for k in range(1, v.shape[0]):
        if v[k] > v[best]:
            best = k
    return best


@njit(cache=True, nogil=True)
def thompson_counts(mean, width, noise, scale, menu_levels, counts):
    """How often each action wins over ``n_samples`` posterior draws.

    Draw s of arm a's hit curve is ``mean[a, :] + scale * width[a] * noise[s, a]`` (one standard
    normal per arm and draw, shared by its levels, so the sampled curve stays ordered in the
    candidate count). ``counts`` int64 (n_actions,) is zeroed and filled; returns ``winners`` int64
    (n_samples,), the greedy action of every draw.
    """
    n_samples = noise.shape[0]
    n_arms, n_levels = mean.shape
    n_actions = menu_levels.shape[0]
    p = np.empty((n_arms, n_levels), dtype=np.float64)
    scores = np.empty(n_actions, dtype=np.float64)
    winners = np.empty(n_samples, dtype=np.int64)
    for k in range(n_actions):
        counts[k] = 0
    for s in range(n_samples):
        for a in range(n_arms):
            shift = scale * width[a] * noise[s, a]
            for l in range(n_levels):
                p[a, l] = mean[a, l] + shift
        union_scores(p, menu_levels, scores)
        best = argmax_first(scores)
        winners[s] = best
        counts[best] += 1
    return winners


@njit(cache=True, nogil=True)
def rls_update(x, arm_x, extra, arm_ranks, level_counts, a_inv, w):
    """Rank-1 (Sherman-Morrison) recursive least squares step for every arm, all levels at once.

    Target of arm a at level l is ``1.0 if 0 <= arm_ranks[a] < level_counts[l] else 0.0``. With
    ``k = A^-1 phi / (1 + phi^T A^-1 phi)``: ``w += k (y - phi^T w)`` and ``A^-1 -= k phi^T A^-1``,
    which equals re-solving the ridge problem with the new row (O(d^2 + d n_levels) per arm).
    """
    n_arms, d, n_levels = w.shape
    phi = np.empty(d, dtype=np.float64)
    u = np.empty(d, dtype=np.float64)
    for a in range(n_arms):
        _phi(x, arm_x, extra, a, phi)
        denom = 1.0
        for i in range(d):
            t = 0.0
            for j in range(d):
                t += a_inv[a, i, j] * phi[j]
            u[i] = t
            denom += phi[i] * t
        r = arm_ranks[a]
        for l in range(n_levels):
            pred = 0.0
            for i in range(d):
                pred += phi[i] * w[a, i, l]
            y = 1.0 if (r >= 0 and r < level_counts[l]) else 0.0
            err = (y - pred) / denom
            for i in range(d):
                w[a, i, l] += u[i] * err
        # A^-1 is symmetric, so phi^T A^-1 = u^T; update keeps symmetry exactly.
        for i in range(d):
            ui = u[i] / denom
            for j in range(d):
                a_inv[a, i, j] -= ui * u[j]


@njit(cache=True, nogil=True)
def all_finite_1d(a):
    """True when no element is NaN or infinite (validation without temporaries)."""
    for i in range(a.shape[0]):
        if not np.isfinite(a[i]):
            return False
    return True


@njit(cache=True, nogil=True)
def all_finite_2d(a):
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            if not np.isfinite(a[i, j]):
                return False
    return True


@njit(cache=True, nogil=True)
def fill_depths(codes, n_ret, alloc, budget, seen, depths):
    """Per-arm depths that fill a union of ``budget`` distinct candidates in each allocation's proportions.

    ``codes`` int64 (n_arms, L): each arm's list as small item codes in ``[0, seen.shape[0])`` (valid for
    ``r < n_ret[a]``); ``alloc`` (n_actions, n_arms) non-negative; ``seen`` int64 scratch (n_codes,),
    zero on entry, left non-zero; ``depths`` int64 (n_actions, n_arms) written.

    Arms are merged in order of ``(r + 1/2) / alloc[k, a]`` (r = next rank of arm a; ties to the lower
    arm index; arms with ``alloc == 0`` never take part), each item counted once, until ``budget``
    distinct items are taken or the lists run out. Without duplicates and with full lists this takes
    exactly the top ``alloc[k, a]`` of every arm (those are the items with key < 1); a duplicate or a
    short list leaves budget that goes to the next items in the same order. Compared in integers:
    ``(2 r_a + 1) n_b < (2 r_b + 1) n_a``.
    """
    n_actions, n_arms = alloc.shape
    for k in range(n_actions):
        stamp = k + 1
        for a in range(n_arms):
            depths[k, a] = 0
        taken = 0
        while taken < budget:
            best = -1
            for a in range(n_arms):
                na = alloc[k, a]
                if na > 0 and depths[k, a] < n_ret[a]:
                    if best < 0 or (2 * depths[k, a] + 1) * alloc[k, best] < (2 * depths[k, best] + 1) * na:
                        best = a
            if best < 0:
                break
            c = codes[best, depths[k, best]]
            depths[k, best] += 1
            if seen[c] != stamp:
                seen[c] = stamp
                taken += 1
    return depths


@njit(cache=True, nogil=True)
def item_codes(ids, n_ret, codes):
    """Number the distinct item ids of the arms' lists 0, 1, ... (open addressing, linear probing).

    ``ids`` int64 (n_arms, L) (valid for ``r < n_ret[a]``, ids >= 0); ``codes`` int64 (n_arms, L) written.
    Returns the number of distinct items. O(total length), no sort.
    """
    n_arms = ids.shape[0]
    total = 0
    for a in range(n_arms):
        total += n_ret[a]
    size = 16
    while size < 2 * total:
        size *= 2
    keys = np.full(size, -1, dtype=np.int64)
    vals = np.empty(size, dtype=np.int64)
    mask = size - 1
    n_codes = 0
    for a in range(n_arms):
        for r in range(n_ret[a]):
            item = ids[a, r]
            h = (item * 0x9E3779B1) & mask
            while True:
                if keys[h] == item:
                    codes[a, r] = vals[h]
                    break
                if keys[h] == -1:
                    keys[h] = item
                    vals[h] = n_codes
                    codes[a, r] = n_codes
                    n_codes += 1
                    break
                h = (h + 1) & mask
    return n_codes
