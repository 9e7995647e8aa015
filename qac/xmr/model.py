"""XR-Linear: one linear classifier per label-tree node, beam search down the tree.

Training follows PECOS ``XLinearModel`` (Yu et al., "PECOS: Prediction for Enormous and Correlated
Output Spaces", JMLR 2022, Sec. 3) as used for session-aware query autocompletion (Yadav et al.,
"Session-Aware Query Auto-completion using Extreme Multi-label Ranking", KDD 2021, Sec. 4): at every
level, the classifier of node ``c`` separates the instances whose label is under ``c`` from the
other instances of ``c``'s parent (teacher-forcing negatives). Each classifier is an L2-regularised
squared-hinge SVM solved in the dual by coordinate descent (Hsieh et al., ICML 2008), weights with
``|w| < threshold`` are pruned, and each level is stored as a CSC matrix
``(n_features + 1, n_nodes[l])`` whose last row is the bias weight.

Inference is a numba beam search (``_kernels.beam_search``): scores are ``post(w.x)`` multiplied
along the path, ``post`` being l3-hinge ``exp(-max(0, 1 - s)^3)`` or sigmoid; the work per query is
proportional to ``beam_size * fanout * depth``, never to the number of labels.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

from qac.xmr import _kernels

FORMAT = "xlinear/1"

# Levels with at most this many nodes also get a feature-major (CSR) copy of their weights, built at
# load time, so beam search can score the whole level from the query's rows when that is cheaper.
FEATURE_MAJOR_MAX_NODES = 16384

POST_PROCESSORS = {"l3-hinge": _kernels.POST_L3_HINGE, "sigmoid": _kernels.POST_SIGMOID}

_ARRAY_KEYS = (
    "node_ptr",
    "child_ptr",
    "label_perm",
    "sorted_labels",
    "W_indptr",
    "W_indices",
    "W_data",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of XR-Linear training (PECOS ``XLinearModel.TrainParams`` defaults).

    Parameters
    ----------
    C : float
        Cost of the squared hinge loss (> 0); the dual diagonal is ``1 / (2C)``.
    max_iter : int
        Maximum outer dual coordinate descent iterations per classifier (>= 1).
    eps : float
        Stopping tolerance on the projected-gradient gap ``max PG - min PG`` (> 0), as LIBLINEAR.
    threshold : float
        Weights with ``|w| < threshold`` are pruned, the bias weight included (>= 0).
    bias : float
        Value of the constant feature appended to every instance (>= 0; 0 disables the bias).
    n_threads : int
        Training threads (>= 1); results do not depend on it.
    seed : int
        Seed of the per-iteration random permutations (>= 0).
    """

    C: float = 1.0
    max_iter: int = 20
    eps: float = 0.1
    threshold: float = 0.1
    bias: float = 1.0
    n_threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("C", isinstance(self.C, (int, float)) and np.isfinite(self.C) and self.C > 0, "> 0"),
            ("max_iter", _is_int(self.max_iter) and self.max_iter >= 1, "an integer >= 1"),
            ("eps", isinstance(self.eps, (int, float)) and np.isfinite(self.eps) and self.eps > 0,
             "> 0"),
            ("threshold", isinstance(self.threshold, (int, float)) and np.isfinite(self.threshold)
             and self.threshold >= 0, ">= 0"),
            ("bias", isinstance(self.bias, (int, float)) and np.isfinite(self.bias)
             and self.bias >= 0, ">= 0"),
            ("n_threads", _is_int(self.n_threads) and self.n_threads >= 1, "an integer >= 1"),
            ("seed", _is_int(self.seed) and 0 <= self.seed < 2**63, "an integer in [0, 2**63)"),
        )
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {what}, got {getattr(self, name)!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------
# Tree flattening
# ---------------------------------------------------------------------------------------------


def _level_spans(child_ptr: Sequence[np.ndarray], n_labels: int) -> list[np.ndarray]:
    """Label-node range of every node per level: ``span[l][i]:span[l][i+1]``."""
    depth = len(child_ptr)
    spans = [None] * (depth + 1)
    spans[depth] = np.arange(n_labels + 1, dtype=np.int64)
    for lev in range(depth - 1, -1, -1):
        spans[lev] = spans[lev + 1][child_ptr[lev]]
    return spans


def _flatten_tree(child_ptr: Sequence[np.ndarray], label_perm: np.ndarray):
    """Validate a levelled tree and return (node_ptr, global child_ptr, sorted_labels, spans)."""
    depth = len(child_ptr)
    if depth < 1:
        raise ValueError("tree.child_ptr must have at least one level (depth >= 1)")
    cps = []
    n_prev = 1
    for lev, cp in enumerate(child_ptr):
        cp = np.asarray(cp)
        if cp.ndim != 1 or cp.size != n_prev + 1 or not np.issubdtype(cp.dtype, np.integer):
            raise ValueError(f"tree.child_ptr[{lev}] must be an integer array of length {n_prev + 1}")
        cp = cp.astype(np.int64, copy=False)
        if cp[0] != 0 or np.any(np.diff(cp) < 1):
            raise ValueError(f"tree.child_ptr[{lev}] must start at 0 and give every node >= 1 child")
        cps.append(cp)
        n_prev = int(cp[-1])
    n_labels = n_prev
    label_perm = np.asarray(label_perm)
    if label_perm.shape != (n_labels,) or not np.issubdtype(label_perm.dtype, np.integer):
        raise ValueError(f"tree.label_perm must be an integer array of shape ({n_labels},)")
    seen = np.zeros(n_labels, dtype=bool)
    if label_perm.size and (label_perm.min() < 0 or label_perm.max() >= n_labels):
        raise ValueError("tree.label_perm must be a permutation of 0..n_labels-1")
    seen[label_perm] = True
    if not seen.all():
        raise ValueError("tree.label_perm must be a permutation of 0..n_labels-1")
    n_nodes = [1] + [int(cp[-1]) for cp in cps]
    node_ptr = np.zeros(depth + 2, dtype=np.int64)
    node_ptr[1:] = np.cumsum(n_nodes)
    gcp = np.empty(int(node_ptr[depth]) + 1, dtype=np.int64)
    for lev, cp in enumerate(cps):
        gcp[node_ptr[lev] : node_ptr[lev + 1]] = cp[:-1] + node_ptr[lev + 1]
    gcp[-1] = node_ptr[depth + 1]
    spans = _level_spans(cps, n_labels)
    label_perm = label_perm.astype(np.int32)
    sorted_labels = np.empty((depth + 1, n_labels), dtype=np.int32)
    for lev in range(depth + 1):
        owner = np.repeat(np.arange(n_nodes[lev]), np.diff(spans[lev]))
        sorted_labels[lev] = label_perm[np.lexsort((label_perm, owner))]
    return node_ptr, gcp, label_perm, sorted_labels, cps, spans


def _global_spans(node_ptr: np.ndarray, child_ptr: np.ndarray, n_labels: int):
    depth = node_ptr.size - 2
    n_total = int(node_ptr[-1])
    lo = np.empty(n_total, dtype=np.int64)
    hi = np.empty(n_total, dtype=np.int64)
    leaf0 = int(node_ptr[depth])
    lo[leaf0:] = np.arange(n_labels)
    hi[leaf0:] = np.arange(1, n_labels + 1)
    for lev in range(depth - 1, -1, -1):
        a, b = int(node_ptr[lev]), int(node_ptr[lev + 1])
        lo[a:b] = lo[child_ptr[a:b]]
        hi[a:b] = hi[child_ptr[a + 1 : b + 1] - 1]
    return lo, hi


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class XLinearModel:
    """A trained XR-Linear model: label tree + per-node sparse linear classifiers.

    Build with :meth:`train` or :meth:`from_arrays`; the arrays are never written after
    construction, so they may be read-only memory maps. Prediction is thread-safe (each calling
    thread gets its own scratch vector).

    Attributes
    ----------
    n_features : int
        Input dimension (the bias is the extra row ``n_features`` of every weight matrix).
    n_labels : int
    depth : int
        Number of levels below the root (labels are level ``depth``).
    n_nodes : list[int]
        Nodes per level, ``n_nodes[0] == 1`` and ``n_nodes[depth] == n_labels``.
    bias : float
        Value of the constant bias feature.
    chunk_nbytes : int
        Bytes of the chunked copy of the last level built at load time (0 without it).
    """

    def __init__(self, params: dict, arrays: Mapping[str, np.ndarray], *, leaf_chunks: bool = True):
        self.params = dict(params)
        self.n_features = int(params["n_features"])
        self.n_labels = int(params["n_labels"])
        self.depth = int(params["depth"])
        self.bias = float(params["bias"])
        # Plain ndarray views of memory maps (no copy): numba's dispatcher type-checks exact
        # ndarrays on its fast C path but np.memmap subclasses on a slow Python path (~4 us each).
        plain = {k: v.view(np.ndarray) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
        self.node_ptr = plain["node_ptr"]
        self.child_ptr = plain["child_ptr"]
        self.label_perm = plain["label_perm"]
        self.sorted_labels = plain["sorted_labels"]
        self.W_indptr = plain["W_indptr"]
        self.W_indices = plain["W_indices"]
        self.W_data = plain["W_data"]
        self._validate()
        self.n_nodes = np.diff(self.node_ptr).tolist()
        self.span_lo, self.span_hi = _global_spans(self.node_ptr, self.child_ptr, self.n_labels)
        self._build_feature_major()
        self._build_leaf_chunks(leaf_chunks)
        self._tls = threading.local()

    def _build_feature_major(self) -> None:
        """Derive per-node bias weights and feature-major copies of the small (top) levels.

        ``F_ptr[l]`` (int64, n_features + 1) indexes ``F_nodes`` (int32, node id within level l)
        and ``F_data`` (float32) by feature, without the bias row; a level without a copy has a
        constant ``F_ptr[l]``.
        """
        nf = self.n_features
        col_len = np.diff(self.W_indptr)
        last = np.maximum(self.W_indptr[1:] - 1, 0)
        has_bias = np.zeros(col_len.size, dtype=bool)
        if self.W_indices.size:
            has_bias = (col_len > 0) & (self.W_indices[last] == nf)
        self.bias_w = np.zeros(col_len.size, dtype=np.float32)
        self.bias_w[has_bias] = self.W_data[last[has_bias]]
        self.F_ptr = np.zeros((self.depth + 1, nf + 1), dtype=np.int64)
        nodes, data = [], []
        offset = 0
        acc_size = 1
        for lev in range(1, self.depth + 1):
            if self.n_nodes[lev] > FEATURE_MAJOR_MAX_NODES:
                self.F_ptr[lev] = offset
                continue
            F = self.weights(lev)[:nf].tocsr()
            F.sort_indices()
            self.F_ptr[lev] = F.indptr.astype(np.int64) + offset
            nodes.append(F.indices.astype(np.int32))
            data.append(F.data.astype(np.float32))
            offset += F.nnz
            acc_size = max(acc_size, self.n_nodes[lev])
        self.F_nodes = np.concatenate(nodes) if nodes else np.zeros(0, np.int32)
        self.F_data = np.concatenate(data) if data else np.zeros(0, np.float32)
        self._acc_size = acc_size

    def _build_leaf_chunks(self, enabled: bool) -> None:
        """Derive the chunked (feature-major per leaf cluster) copy of the last level's weights.

        Etter et al., "Accelerating Inference for Sparse Extreme Multi-Label Ranking Trees", WWW
        2022 (PECOS's chunked matrices): beam search scores a leaf cluster by intersecting the
        query's features with the cluster's, instead of gathering every weight of every label.
        Layout in ``_kernels``' module docstring; ``chunk_nbytes`` is its size. Not built (every
        leaf scored from its column, the exact twin) when ``enabled`` is false or a last-level
        weight is not finite (a gather multiplies such a weight by 0.0 and gets NaN).
        """
        p0, p1 = int(self.node_ptr[self.depth - 1]), int(self.node_ptr[self.depth])
        fan = np.diff(self.child_ptr[p0 : p1 + 1])
        max_fan = int(fan.max())
        label_dtype = np.int16 if max_fan <= np.iinfo(np.int16).max else np.int32
        a, b = int(self.W_indptr[self.child_ptr[p0]]), int(self.W_indptr[-1])
        if enabled and np.isfinite(self.W_data[a:b]).all():
            C_label = np.empty(b - a, dtype=label_dtype)
            C_data = np.empty(b - a, dtype=np.float32)
            C_ptr, C_feat, C_row_ptr = _kernels.build_leaf_chunks(
                self.W_indptr, self.W_indices, self.W_data, self.child_ptr, p0, p1,
                self.n_features, C_label, C_data,
            )
            if b - a <= np.iinfo(np.int32).max:
                C_row_ptr = C_row_ptr.astype(np.int32)
            self._acc_size = max(self._acc_size, max_fan)
        else:
            C_ptr = np.zeros(1, dtype=np.int64)
            C_feat = np.zeros(0, dtype=np.int32)
            C_row_ptr = np.zeros(1, dtype=np.int32)
            C_label = np.zeros(0, dtype=label_dtype)
            C_data = np.zeros(0, dtype=np.float32)
        self.C_ptr, self.C_feat, self.C_row_ptr = C_ptr, C_feat, C_row_ptr
        self.C_label, self.C_data = C_label, C_data
        self.chunk_nbytes = 0 if C_ptr.size == 1 else sum(
            v.nbytes for v in (C_ptr, C_feat, C_row_ptr, C_label, C_data))

    # -- construction ---------------------------------------------------------------------

    def _validate(self) -> None:
        def need(name, arr, dtype, shape):
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != shape:
                got = (getattr(arr, "dtype", type(arr)), getattr(arr, "shape", None))
                raise ValueError(f"{name} must be {np.dtype(dtype)} of shape {shape}, got {got}")

        if self.depth < 1 or self.n_labels < 1 or self.n_features < 0:
            raise ValueError("params: depth and n_labels must be >= 1, n_features >= 0")
        need("node_ptr", self.node_ptr, np.int64, (self.depth + 2,))
        n_total = int(self.node_ptr[-1])
        if self.node_ptr[0] != 0 or self.node_ptr[1] != 1 or np.any(np.diff(self.node_ptr) < 1):
            raise ValueError("node_ptr must start 0, 1 and increase")
        if int(self.node_ptr[-1] - self.node_ptr[-2]) != self.n_labels:
            raise ValueError("node_ptr: the last level must hold n_labels nodes")
        need("child_ptr", self.child_ptr, np.int64, (int(self.node_ptr[self.depth]) + 1,))
        if self.child_ptr[0] != 1 or self.child_ptr[-1] != n_total or np.any(
            np.diff(self.child_ptr) < 1
        ):
            raise ValueError("child_ptr must run from 1 to n_nodes_total, >= 1 child per node")
        need("label_perm", self.label_perm, np.int32, (self.n_labels,))
        need("sorted_labels", self.sorted_labels, np.int32, (self.depth + 1, self.n_labels))
        need("W_indptr", self.W_indptr, np.int64, (n_total + 1,))
        nnz = int(self.W_indptr[-1])
        if self.W_indptr[0] != 0 or np.any(np.diff(self.W_indptr) < 0):
            raise ValueError("W_indptr must start at 0 and not decrease")
        need("W_indices", self.W_indices, np.int32, (nnz,))
        need("W_data", self.W_data, np.float32, (nnz,))
        if nnz and (self.W_indices.min() < 0 or self.W_indices.max() > self.n_features):
            raise ValueError("W_indices must lie in [0, n_features]")

    @classmethod
    def train(
        cls,
        X: sp.spmatrix,
        y: np.ndarray,
        tree: Any,
        config: TrainConfig | None = None,
    ) -> "XLinearModel":
        """Train one squared-hinge classifier per non-pass-through node of ``tree``.

        Parameters
        ----------
        X : csr_matrix of shape (n_instances, n_features), float32
            Instance features (e.g. L2-normalised TF-IDF rows).
        y : int array of shape (n_instances,)
            Label id of every instance, in ``[0, n_labels)``.
        tree : object with ``child_ptr`` (list of int64 arrays, one per level 0..L-1) and
            ``label_perm`` (int32, n_labels), as ``qac.xmr.tree.LabelTree``.
        config : TrainConfig

        Returns
        -------
        XLinearModel

        Raises
        ------
        ValueError
            On inconsistent shapes, label ids out of range or an invalid tree.

        Notes
        -----
        Classifiers of the children of one parent are trained together by a multi-output dual
        coordinate descent over the parent's instances with a dense local weight matrix; jobs
        (a parent, or a slice of the children of a large parent) of all levels run on a thread
        pool of ``config.n_threads`` nogil kernels, heaviest first. Per-level weights are
        ``(n_features + 1, n_nodes[l])`` CSC float32 with the bias in the last row.
        """
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise ValueError("config must be a TrainConfig")
        if not sp.issparse(X) or X.ndim != 2:
            raise ValueError("X must be a scipy sparse matrix of shape (n_instances, n_features)")
        X = sp.csr_matrix(X)
        if not X.has_canonical_format:
            X = X.copy()
            X.sum_duplicates()
        n, n_features = X.shape
        y = np.asarray(y)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must be an integer array of shape ({n},)")
        node_ptr, gcp, label_perm, sorted_labels, cps, spans = _flatten_tree(
            list(tree.child_ptr), tree.label_perm
        )
        depth = len(cps)
        n_labels = label_perm.size
        if n and (y.min() < 0 or y.max() >= n_labels):
            raise ValueError(f"y must hold label ids in [0, {n_labels})")
        X_indptr = X.indptr.astype(np.int64)
        X_indices = X.indices.astype(np.int32, copy=False)
        X_data = X.data.astype(np.float32, copy=False)

        # True node of every instance at every level (teacher forcing).
        pos = np.empty(n_labels, dtype=np.int64)
        pos[label_perm] = np.arange(n_labels)
        inst_pos = pos[y]
        n_nodes = np.diff(node_ptr)
        inst_node = []
        for lev in range(depth + 1):
            owner = np.repeat(np.arange(n_nodes[lev]), np.diff(spans[lev]))
            inst_node.append(owner[inst_pos])
        row_cost = np.diff(X_indptr) + 1

        levels = []
        for lev in range(1, depth + 1):
            cp = cps[lev - 1]
            parent = inst_node[lev - 1]
            order = np.argsort(parent, kind="stable").astype(np.int64)
            inst_child = (inst_node[lev] - cp[parent]).astype(np.int64)[order]
            counts = np.bincount(parent, minlength=n_nodes[lev - 1])
            parent_inst_ptr = np.zeros(n_nodes[lev - 1] + 1, dtype=np.int64)
            np.cumsum(counts, out=parent_inst_ptr[1:])
            fanout = np.diff(cp)
            nnz_p = np.bincount(parent, weights=row_cost, minlength=n_nodes[lev - 1])
            trained = np.flatnonzero((fanout >= 2) & (counts > 0))
            levels.append((cp, order, inst_child, parent_inst_ptr, fanout, nnz_p, trained))
        total = sum(float((lv[5][lv[6]] * (lv[4][lv[6]] + 1)).sum()) for lv in levels)
        target = max(total / (8 * config.n_threads), 1.0)

        tasks = []  # (work, level, job arrays)
        for li, (cp, order, inst_child, ptr, fanout, nnz_p, trained) in enumerate(levels):
            if trained.size == 0:
                continue
            K = fanout[trained]
            work = nnz_p[trained] * (K + 1)
            n_split = np.minimum(np.ceil(work / target).astype(np.int64), K)
            n_split = np.maximum(n_split, 1)
            job_parent = np.repeat(trained, n_split)
            # Slice j of s of a parent with K children: children [floor(jK/s), floor((j+1)K/s)).
            first = np.repeat(np.cumsum(n_split) - n_split, n_split)
            j = np.arange(job_parent.size) - first
            s = np.repeat(n_split, n_split)
            Kj = np.repeat(K, n_split)
            job_k0 = (j * Kj) // s
            job_k1 = ((j + 1) * Kj) // s
            job_work = np.repeat(nnz_p[trained], n_split) * (job_k1 - job_k0 + 1)
            batch = np.floor(np.cumsum(job_work) / target).astype(np.int64)
            cuts = np.flatnonzero(np.diff(batch)) + 1
            bounds = np.concatenate(([0], cuts, [job_parent.size]))
            for a, b in zip(bounds[:-1], bounds[1:]):
                tasks.append(
                    (float(job_work[a:b].sum()), li, a,
                     (job_parent[a:b], job_k0[a:b], job_k1[a:b]))
                )
        tasks.sort(key=lambda t: -t[0])

        seed_base = [_level_seed(config.seed, lev) for lev in range(1, depth + 1)]

        def run(task):
            _, li, a, (jp, k0, k1) = task
            _, order, inst_child, ptr, _, _, _ = levels[li]
            return _kernels.train_jobs(
                X_indptr, X_indices, X_data, n_features, order, inst_child, ptr,
                jp, k0, k1, float(config.C), float(config.eps), int(config.max_iter),
                float(config.threshold), float(config.bias), seed_base[li],
            )

        if config.n_threads == 1 or len(tasks) <= 1:
            results = [run(t) for t in tasks]
        else:
            with ThreadPoolExecutor(max_workers=config.n_threads) as pool:
                results = list(pool.map(run, tasks))

        # Assemble one CSC over all levels (columns = global node ids, root column empty).
        per_level = [[] for _ in levels]
        for task, res in zip(tasks, results):
            per_level[task[1]].append((task[2], task[3], res))
        col_nnz = np.zeros(int(node_ptr[-1]), dtype=np.int64)
        idx_parts, data_parts = [], []
        n_iter_max = 0
        for li, parts in enumerate(per_level):
            lev = li + 1
            cp = levels[li][0]
            parts.sort(key=lambda t: t[0])
            for _, (jp, k0, k1), (nnz_cols, out_idx, out_data, n_iters) in parts:
                widths = k1 - k0
                starts = cp[jp] + k0 + node_ptr[lev]
                first = np.repeat(np.cumsum(widths) - widths, widths)
                cols = np.repeat(starts, widths) + (np.arange(widths.sum()) - first)
                col_nnz[cols] = nnz_cols
                idx_parts.append(out_idx)
                data_parts.append(out_data)
                if n_iters.size:
                    n_iter_max = max(n_iter_max, int(n_iters.max()))
        W_indptr = np.zeros(col_nnz.size + 1, dtype=np.int64)
        np.cumsum(col_nnz, out=W_indptr[1:])
        W_indices = np.concatenate(idx_parts) if idx_parts else np.empty(0, np.int32)
        W_data = np.concatenate(data_parts) if data_parts else np.empty(0, np.float32)
        params = {
            "format": FORMAT,
            "n_features": int(n_features),
            "n_labels": int(n_labels),
            "depth": int(depth),
            "bias": float(config.bias),
            "train_config": dataclasses.asdict(config),
            "n_instances": int(n),
            "max_dcd_iter_used": n_iter_max,
        }
        arrays = {
            "node_ptr": node_ptr,
            "child_ptr": gcp,
            "label_perm": label_perm,
            "sorted_labels": sorted_labels,
            "W_indptr": W_indptr,
            "W_indices": W_indices.astype(np.int32, copy=False),
            "W_data": W_data.astype(np.float32, copy=False),
        }
        return cls(params, arrays)

    # -- persistence ----------------------------------------------------------------------

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Return ``(params, arrays)``; the weights are one CSC over all levels' nodes.

        Arrays: ``node_ptr`` int64 (depth + 2,), ``child_ptr`` int64 (global), ``label_perm``
        int32, ``sorted_labels`` int32 (depth + 1, n_labels), ``W_indptr`` int64
        (n_nodes_total + 1,), ``W_indices`` int32, ``W_data`` float32. Level ``l``'s matrix is
        :meth:`weights` ``(l)``. One concatenated CSC (rather than one per level) lets the
        beam-search kernel read the memory-mapped files directly, with one call per query.
        """
        return dict(self.params), {k: getattr(self, k) for k in _ARRAY_KEYS}

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray], *,
                    leaf_chunks: bool = True) -> "XLinearModel":
        """Rebuild from :meth:`to_arrays` output; arrays may be read-only memory maps.

        ``leaf_chunks=False`` skips the chunked copy of the last level (see
        :meth:`_build_leaf_chunks`): same answers, slower, the exact twin of the chunked path.

        Raises
        ------
        ValueError
            On an unknown format, a missing array or inconsistent shapes/dtypes.
        """
        if params.get("format") != FORMAT:
            raise ValueError(f"params.format must be {FORMAT!r}, got {params.get('format')!r}")
        missing = [k for k in _ARRAY_KEYS if k not in arrays]
        if missing:
            raise ValueError(f"arrays missing {missing}")
        return cls(params, {k: arrays[k] for k in _ARRAY_KEYS}, leaf_chunks=leaf_chunks)

    # -- introspection --------------------------------------------------------------------

    def weights(self, level: int) -> sp.csc_matrix:
        """Weights of level ``level`` (1..depth): csc (n_features + 1, n_nodes[level]) float32.

        Columns of pass-through nodes are empty; the last row is the bias weight.
        """
        if not _is_int(level) or not 1 <= level <= self.depth:
            raise ValueError(f"level must be in 1..{self.depth}, got {level!r}")
        c0, c1 = int(self.node_ptr[level]), int(self.node_ptr[level + 1])
        a, b = int(self.W_indptr[c0]), int(self.W_indptr[c1])
        return sp.csc_matrix(
            (self.W_data[a:b], self.W_indices[a:b], self.W_indptr[c0 : c1 + 1] - a),
            shape=(self.n_features + 1, c1 - c0),
        )

    def level_child_ptr(self, level: int) -> np.ndarray:
        """``child_ptr[level]`` in the tree's per-level numbering (level in 0..depth-1)."""
        if not _is_int(level) or not 0 <= level < self.depth:
            raise ValueError(f"level must be in 0..{self.depth - 1}, got {level!r}")
        a, b = int(self.node_ptr[level]), int(self.node_ptr[level + 1])
        return self.child_ptr[a : b + 1] - self.node_ptr[level + 1]

    # -- inference ------------------------------------------------------------------------

    def _new_scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """(dense query vector with the bias entry set, per-node accumulator), both zeroed."""
        s = np.zeros(self.n_features + 1, dtype=np.float32)
        s[self.n_features] = self.bias
        return s, np.zeros(self._acc_size, dtype=np.float64)

    def _scratch(self) -> tuple[np.ndarray, np.ndarray]:
        s = getattr(self._tls, "scratch", None)
        if s is None:
            s = self._tls.scratch = self._new_scratch()
        return s

    def predict_one(
        self,
        x_indices: np.ndarray,
        x_data: np.ndarray,
        *,
        beam_size: int = 10,
        topk: int = 10,
        post_processor: str = "l3-hinge",
        label_range: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beam search for one query.

        Parameters
        ----------
        x_indices : int32 array (nnz,)
            Feature ids in ``[0, n_features)``; sorted ascending is fastest (any order works).
        x_data : float32 array (nnz,)
        beam_size : int
            Nodes kept per level (>= 1).
        topk : int
            Labels returned (>= 1).
        post_processor : {"l3-hinge", "sigmoid"}
        label_range : (lo, hi) or None
            Only nodes holding a label id in ``[lo, hi)`` enter the beam (prefix constraint);
            every returned label is in range.

        Returns
        -------
        label_ids : int32 array (<= topk,)
        scores : float32 array (<= topk,), descending; ties by label id ascending.

        Raises
        ------
        ValueError
            On bad sizes, an unknown post-processor or a feature id out of range.
        """
        post = POST_PROCESSORS.get(post_processor)
        if post is None:
            raise ValueError(f"post_processor must be one of {sorted(POST_PROCESSORS)}, "
                             f"got {post_processor!r}")
        if not _is_int(beam_size) or beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}")
        if not _is_int(topk) or topk < 1:
            raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
        xi = np.asarray(x_indices, dtype=np.int32)
        xd = np.asarray(x_data, dtype=np.float32)
        if xi.ndim != 1 or xi.shape != xd.shape:
            raise ValueError("x_indices and x_data must be 1-d arrays of the same length")
        if label_range is None:
            lo, hi = 0, 0
        else:
            lo, hi = _check_range(label_range)
        scratch, acc = self._scratch()
        status, labels, scores = _kernels.beam_search(
            xi, xd, scratch, self.node_ptr, self.child_ptr, self.W_indptr,
            self.W_indices, self.W_data, self.label_perm, self.sorted_labels, self.span_lo,
            self.span_hi, self.bias_w, self.F_ptr, self.F_nodes, self.F_data, acc, self.C_ptr,
            self.C_feat, self.C_row_ptr, self.C_label, self.C_data, int(beam_size), int(topk), post,
            label_range is not None, lo, hi,
        )
        if status < 0:
            raise ValueError(f"x_indices must lie in [0, {self.n_features})")
        return labels, scores

    def predict_batch(
        self,
        X: sp.spmatrix,
        *,
        beam_size: int = 10,
        topk: int = 10,
        post_processor: str = "l3-hinge",
        n_threads: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beam search for every row of ``X`` (evaluation).

        Parameters
        ----------
        X : csr_matrix of shape (n_queries, n_features), float32
        beam_size, topk, post_processor : as :meth:`predict_one`
        n_threads : int
            Threads running the nogil kernel over row chunks.

        Returns
        -------
        label_ids : int32 array (n_queries, topk), rows padded with -1
        scores : float32 array (n_queries, topk), rows padded with 0
        """
        post = POST_PROCESSORS.get(post_processor)
        if post is None:
            raise ValueError(f"post_processor must be one of {sorted(POST_PROCESSORS)}, "
                             f"got {post_processor!r}")
        if not _is_int(beam_size) or beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}")
        if not _is_int(topk) or topk < 1:
            raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
        if not _is_int(n_threads) or n_threads < 1:
            raise ValueError(f"n_threads must be an integer >= 1, got {n_threads!r}")
        if not sp.issparse(X) or X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must be sparse of shape (n_queries, {self.n_features})")
        X = sp.csr_matrix(X)
        indptr = X.indptr.astype(np.int64)
        indices = X.indices.astype(np.int32, copy=False)
        data = X.data.astype(np.float32, copy=False)
        n = X.shape[0]
        out_labels = np.full((n, topk), -1, dtype=np.int32)
        out_scores = np.zeros((n, topk), dtype=np.float32)

        def run(rows):
            scratch, acc = self._new_scratch()
            return _kernels.beam_search_rows(
                indptr, indices, data, rows[0], rows[1], scratch, self.node_ptr,
                self.child_ptr, self.W_indptr, self.W_indices, self.W_data, self.label_perm,
                self.sorted_labels, self.span_lo, self.span_hi, self.bias_w, self.F_ptr,
                self.F_nodes, self.F_data, acc, self.C_ptr, self.C_feat, self.C_row_ptr,
                self.C_label, self.C_data, int(beam_size), int(topk), post,
                out_labels, out_scores,
            )

        bounds = np.linspace(0, n, min(n_threads * 4, max(n, 1)) + 1).astype(np.int64)
        chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        if n_threads == 1 or len(chunks) <= 1:
            bad = [run(c) for c in chunks]
        else:
            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                bad = list(pool.map(run, chunks))
        if any(b >= 0 for b in bad):
            raise ValueError(f"X row {min(b for b in bad if b >= 0)} has a feature id out of range")
        return out_labels, out_scores

    def predict_exhaustive(
        self,
        x_indices: np.ndarray,
        x_data: np.ndarray,
        *,
        topk: int | None = None,
        post_processor: str = "l3-hinge",
        label_range: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact path score of every label (slow twin of :meth:`predict_one`, numpy float64).

        Returns the ``topk`` best (all if None) in-range labels, sorted as :meth:`predict_one`.
        """
        if post_processor not in POST_PROCESSORS:
            raise ValueError(f"post_processor must be one of {sorted(POST_PROCESSORS)}, "
                             f"got {post_processor!r}")
        x = np.zeros(self.n_features + 1)
        np.add.at(x, np.asarray(x_indices, dtype=np.int64), np.asarray(x_data, dtype=np.float64))
        x[self.n_features] = self.bias
        score = np.ones(1)
        for lev in range(1, self.depth + 1):
            z = self.weights(lev).T.astype(np.float64) @ x
            if post_processor == "sigmoid":
                post = 1.0 / (1.0 + np.exp(-z))
            else:
                post = np.exp(-np.maximum(0.0, 1.0 - z) ** 3)
            cp = self.level_child_ptr(lev - 1)
            fan = np.diff(cp)
            parent = np.repeat(np.arange(fan.size), fan)
            score = score[parent] * np.where(fan[parent] == 1, 1.0, post)
        labels = np.asarray(self.label_perm, dtype=np.int64)
        if label_range is not None:
            lo, hi = _check_range(label_range)
            keep = (labels >= lo) & (labels < hi)
            labels, score = labels[keep], score[keep]
        order = np.lexsort((labels, -score))
        if topk is not None:
            order = order[:topk]
        return labels[order].astype(np.int32), score[order].astype(np.float32)

    def warmup(self) -> None:
        """Run every kernel once on the arrays being served (compiles read-only specialisations)."""
        xi = np.zeros(0, dtype=np.int32)
        xd = np.zeros(0, dtype=np.float32)
        self.predict_one(xi, xd, beam_size=2, topk=2)
        self.predict_one(xi, xd, beam_size=2, topk=2, label_range=(0, self.n_labels))
        X = sp.csr_matrix((xd, xi, np.array([0, 0])), shape=(1, self.n_features))
        self.predict_batch(X, beam_size=2, topk=2)


def _check_range(label_range) -> tuple[int, int]:
    try:
        lo, hi = label_range
    except (TypeError, ValueError):
        raise ValueError(f"label_range must be a (lo, hi) pair, got {label_range!r}") from None
    if not (_is_int(lo) and _is_int(hi)):
        raise ValueError(f"label_range must hold integers, got {label_range!r}")
    return int(lo), int(hi)


def _level_seed(seed: int, level: int) -> np.uint64:
    """A per-level permutation seed (splitmix64 finaliser of seed and level)."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + level * 0xD1B54A32D192ED03 + 1) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return np.uint64(z ^ (z >> 31))
