"""Label index: a trie-tree hybrid label tree stored as flat arrays.

The top ``trie_depth`` levels are a character trie over the sorted labels; below every depth-d trie
node, labels are split by balanced spherical 2-means on their embeddings (position-weighted char
TF-IDF) until every leaf holds at most ``max_leaf_size`` labels; the last level holds the labels.
Pure trie (``kind="trie"``) and pure hierarchical k-means (``kind="kmeans"``, e.g. on PIFA
embeddings) are the two ends of the same builder.

Source: Yadav et al., "Session-aware query auto-completion using extreme multi-label ranking",
KDD 2021 (trie, k-means tree and trie-tree hybrid indexes; position-weighted char TF-IDF).

Layout (see docs/internals.md, ``qac.xmr.tree``): levels ``0..L``; level 0 is the root, level ``L``
has one node per label. ``child_ptr[l]`` (int64, ``n_nodes[l] + 1``) gives the contiguous children
of each level-l node; ``label_perm`` (int32) maps label node j to its label id;
``sorted_labels[l]`` (int32, ``n_labels``) holds, at ``span[l][i]:span[l][i + 1]``, the label ids
under node i sorted ascending; ``span[l]`` (int64, ``n_nodes[l] + 1``) is node i's range of label
nodes.

Pass-through levels: the 2-means part splits, level by level, every cluster that still holds more
than ``max_leaf_size`` labels (all splits of one level run together, in parallel). A cluster that
is already small enough, at level k, is copied unchanged as the single child of itself at levels
k+1..L-1, so every leaf sits at level ``L - 1``: the single-child (pass-through) levels sit
directly above the final leaf cluster, never between two 2-means splits. Two sibling halves may
thus stop splitting at different levels (sizes 101 and 100 with max_leaf_size=100). The trie part
has single-child levels of its own where a key has one extension (e.g. a label ending above
``trie_depth`` is padded with END).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from qac.xmr import _tree_kernels as _k

__all__ = ["END", "TreeConfig", "LabelTree", "build_label_tree"]

#: Padding character of the trie keys; sorts before every other character (labels may not hold it).
END = "\x00"

_KINDS = ("trie", "kmeans", "hybrid")

# Below this many stored entries per level, thread hand-off costs more than the split itself.
_MIN_PARALLEL_WORK = 200_000


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class TreeConfig:
    """Parameters of the label tree.

    Parameters
    ----------
    kind : {"hybrid", "trie", "kmeans"}
        ``"trie"`` uses ``trie_depth = max label length`` (every label alone in its trie leaf,
        no clustering); ``"kmeans"`` uses ``trie_depth = 0`` (hierarchical balanced 2-means from
        the root); ``"hybrid"`` uses ``trie_depth`` as given.
    trie_depth : int >= 0
        Number of trie levels below the root (``"hybrid"`` only).
    max_leaf_size : int >= 2
        Clusters with more labels are split in two.
    seed : int >= 0
        Seed of the 2-means initialisation.
    max_iter : int >= 1
        Assignment rounds per 2-means split at most.

    Raises
    ------
    ValueError
        Naming the field, for a value of the wrong type or out of range.
    """

    kind: str = "hybrid"
    trie_depth: int = 3
    max_leaf_size: int = 100
    seed: int = 0
    max_iter: int = 20

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if not _is_int(self.trie_depth) or self.trie_depth < 0:
            raise ValueError(f"trie_depth must be an int >= 0, got {self.trie_depth!r}")
        if not _is_int(self.max_leaf_size) or self.max_leaf_size < 2:
            raise ValueError(f"max_leaf_size must be an int >= 2, got {self.max_leaf_size!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if not _is_int(self.max_iter) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")


class LabelTree:
    """Flat label tree (levels ``0..depth``); see the module docstring for the arrays.

    Attributes
    ----------
    n_labels : int
    depth : int
        ``L``; level ``L`` holds one node per label.
    n_nodes : list of int, length ``L + 1``
    child_ptr : list of int64 arrays, length ``L``; ``child_ptr[l]`` has ``n_nodes[l] + 1`` entries.
    label_perm : int32 array (n_labels,); label node j is label id ``label_perm[j]``.
    sorted_labels : list of int32 arrays (n_labels,), length ``L + 1``.
    span : list of int64 arrays, length ``L + 1``; ``span[l]`` has ``n_nodes[l] + 1`` entries.
    trie_depth : int
        Number of trie levels below the root actually used (levels ``1..trie_depth``).
    """

    def __init__(self, child_ptr: Sequence[np.ndarray], label_perm: np.ndarray,
                 sorted_labels: Sequence[np.ndarray], trie_depth: int = 0) -> None:
        self.child_ptr = list(child_ptr)
        self.label_perm = label_perm
        self.sorted_labels = list(sorted_labels)
        self.trie_depth = int(trie_depth)
        self.n_labels = int(label_perm.shape[0])
        self.depth = len(self.child_ptr)
        self.n_nodes = ([int(self.child_ptr[0].shape[0] - 1)] if self.child_ptr else [1]) + [
            int(p[-1]) if p.shape[0] else 0 for p in self.child_ptr]
        self.span = self._derive_span()

    def _derive_span(self) -> list[np.ndarray]:
        span = [np.arange(self.n_labels + 1, dtype=np.int64)]
        for ptr in reversed(self.child_ptr):
            below = span[0]
            if (ptr.shape[0] < 1 or ptr.ndim != 1 or ptr[-1] >= below.shape[0]
                    or ptr.min(initial=0) < 0):
                # Inconsistent arrays: leave span empty; validate() reports the real problem.
                span.insert(0, np.zeros(ptr.shape[0], dtype=np.int64))
            else:
                span.insert(0, below[np.asarray(ptr, dtype=np.int64)])
        return span

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check every structural invariant.

        Raises
        ------
        ValueError
            With a message naming the array and level at fault.
        """
        L = self.depth
        n = self.n_labels
        if L < 1:
            raise ValueError("child_ptr: the tree needs at least one level below the root")
        if len(self.sorted_labels) != L + 1:
            raise ValueError(f"sorted_labels: expected {L + 1} levels, got {len(self.sorted_labels)}")
        if self.label_perm.dtype != np.int32 or self.label_perm.ndim != 1:
            raise ValueError("label_perm: must be a 1-d int32 array")
        expected = 1
        for l, ptr in enumerate(self.child_ptr):
            if ptr.dtype != np.int64 or ptr.ndim != 1:
                raise ValueError(f"child_ptr[{l}]: must be a 1-d int64 array")
            if ptr.shape[0] != expected + 1:
                raise ValueError(f"child_ptr[{l}]: expected length {expected + 1} "
                                 f"(n_nodes[{l}] + 1), got {ptr.shape[0]}")
            if ptr[0] != 0:
                raise ValueError(f"child_ptr[{l}]: must start at 0, got {ptr[0]}")
            steps = np.diff(ptr)
            if steps.size and steps.min() < 1:
                bad = int(np.flatnonzero(steps < 1)[0])
                raise ValueError(f"child_ptr[{l}]: node {bad} at level {l} has "
                                 f"{int(steps[bad])} children (must be >= 1, increasing ptr)")
            expected = int(ptr[-1])
        if expected != n:
            raise ValueError(f"child_ptr[{L - 1}]: level {L} has {expected} nodes, "
                             f"expected one per label ({n})")
        if n and not np.array_equal(np.sort(self.label_perm), np.arange(n, dtype=np.int32)):
            raise ValueError("label_perm: is not a permutation of 0..n_labels-1")
        for l, lab in enumerate(self.sorted_labels):
            if lab.dtype != np.int32 or lab.shape != (n,):
                raise ValueError(f"sorted_labels[{l}]: must be int32 of shape ({n},)")
            sp_ = self.span[l]
            seg = np.repeat(np.arange(self.n_nodes[l], dtype=np.int64), np.diff(sp_))
            expect = self.label_perm[np.lexsort((self.label_perm, seg))]
            if not np.array_equal(lab, expect):
                raise ValueError(f"sorted_labels[{l}]: is not the label ids under each node "
                                 "sorted ascending")

    # ----------------------------------------------------------------- queries
    def is_pass_through(self, level: int) -> np.ndarray:
        """Bool array (n_nodes[level],): True where the node's parent has exactly one child."""
        self._check_level(level)
        if level == 0:
            return np.zeros(1, dtype=bool)
        counts = np.diff(self.child_ptr[level - 1])
        return np.repeat(counts == 1, counts)

    def node_has_label_in_range(self, level: int, node: int, lo: int, hi: int) -> bool:
        """Whether node ``node`` at ``level`` holds a label id in ``[lo, hi)`` (binary search)."""
        self._check_level(level)
        a, b = int(self.span[level][node]), int(self.span[level][node + 1])
        labels = self.sorted_labels[level][a:b]
        pos = int(np.searchsorted(labels, lo, side="left"))
        return pos < labels.shape[0] and int(labels[pos]) < hi

    def label_to_node(self, level: int) -> np.ndarray:
        """Int32 array (n_labels,): the level-``level`` ancestor of every label id."""
        self._check_level(level)
        node_of_pos = np.repeat(np.arange(self.n_nodes[level], dtype=np.int32),
                                np.diff(self.span[level]))
        out = np.empty(self.n_labels, dtype=np.int32)
        out[self.label_perm] = node_of_pos
        return out

    def leaf_sizes(self) -> np.ndarray:
        """Int64 array (n_nodes[L - 1],): number of labels in each leaf cluster."""
        return np.diff(self.child_ptr[-1])

    def to_cluster_chain(self) -> list[sp.csc_matrix]:
        """PECOS-style cluster chain: ``chain[l]`` is csc ``(n_nodes[l+1], n_nodes[l])`` float32
        with a 1 at (child, parent). In ``chain[L - 1]`` rows are label nodes (label id via
        ``label_perm``)."""
        chain = []
        for l, ptr in enumerate(self.child_ptr):
            n_child = self.n_nodes[l + 1]
            chain.append(sp.csc_matrix(
                (np.ones(n_child, dtype=np.float32), np.arange(n_child, dtype=np.int32),
                 np.array(ptr, dtype=np.int64)),
                shape=(n_child, self.n_nodes[l])))
        return chain

    def _check_level(self, level: int) -> None:
        if not 0 <= level <= self.depth:
            raise ValueError(f"level must be in 0..{self.depth}, got {level}")

    # ------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(params, arrays): ``child_ptr_{l}``, ``sorted_labels_{l}``, ``label_perm``."""
        params = {"n_labels": self.n_labels, "depth": self.depth, "n_nodes": list(self.n_nodes),
                  "trie_depth": self.trie_depth}
        arrays: dict[str, np.ndarray] = {"label_perm": self.label_perm}
        for l, ptr in enumerate(self.child_ptr):
            arrays[f"child_ptr_{l}"] = ptr
        for l, lab in enumerate(self.sorted_labels):
            arrays[f"sorted_labels_{l}"] = lab
        return params, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "LabelTree":
        """Inverse of :meth:`to_arrays`; arrays may be read-only memory maps (never written).

        Raises
        ------
        ValueError
            If an array is missing or the params disagree with the arrays.
        """
        depth = int(params["depth"])
        try:
            child_ptr = [arrays[f"child_ptr_{l}"] for l in range(depth)]
            sorted_labels = [arrays[f"sorted_labels_{l}"] for l in range(depth + 1)]
            label_perm = arrays["label_perm"]
        except KeyError as exc:
            raise ValueError(f"missing tree array {exc.args[0]!r}") from None
        tree = cls(child_ptr, label_perm, sorted_labels, trie_depth=params.get("trie_depth", 0))
        if tree.n_labels != int(params["n_labels"]) or tree.n_nodes != list(params["n_nodes"]):
            raise ValueError("params n_labels/n_nodes disagree with the tree arrays")
        return tree


# ---------------------------------------------------------------------- build
def _encode_labels(label_texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UTF-32 code points + ptr of the labels and the lcp of consecutive labels; checks order."""
    if len(label_texts) == 0:
        raise ValueError("label_texts: must hold at least one label")
    try:
        joined = "".join(label_texts)
    except TypeError:
        bad = next(i for i, s in enumerate(label_texts) if not isinstance(s, str))
        raise ValueError(f"label_texts[{bad}]: must be str, "
                         f"got {type(label_texts[bad]).__name__}") from None
    lengths = np.array(list(map(len, label_texts)), dtype=np.int64)
    ptr = np.zeros(len(label_texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    lcp, bad, has_zero = _k.consecutive_lcp(codes, ptr)
    if bad >= 0:
        raise ValueError(f"label_texts: must be distinct and sorted ascending; "
                         f"{label_texts[bad - 1]!r} is followed by {label_texts[bad]!r} "
                         f"at position {bad}")
    if has_zero:
        raise ValueError("label_texts: labels may not contain the END character '\\x00'")
    return lengths, lcp, ptr


def _prepare_embeddings(embeddings, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                            int]:
    """(indptr int64, indices int32, data float32, n_features) of unit-row canonical CSR."""
    if not sp.issparse(embeddings):
        raise ValueError("embeddings: must be a scipy sparse matrix (csr)")
    if embeddings.shape[0] != n_labels:
        raise ValueError(f"embeddings: expected {n_labels} rows (one per label), "
                         f"got {embeddings.shape[0]}")
    X = embeddings if embeddings.format == "csr" else embeddings.tocsr()
    if X.dtype != np.float32:
        X = X.astype(np.float32)
    if not X.has_canonical_format:
        X = X.copy()  # never modify the caller's matrix
        X.sum_duplicates()
    indptr = X.indptr.astype(np.int64, copy=False)
    indices = X.indices.astype(np.int32, copy=False)
    data = X.data
    norms = np.sqrt(_k.row_sq_norms(indptr, data))
    if not np.allclose(norms[norms > 0], 1.0, atol=1e-3):
        # Cosine similarity needs unit rows; unit rows are used as given.
        scale = np.where(norms > 0, 1.0 / np.maximum(norms, 1e-30), 0.0)
        data = (data * np.repeat(scale, np.diff(indptr))).astype(np.float32)
    return indptr, indices, data, int(X.shape[1])


def _run_splits(X: tuple, perm: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                seeds: np.ndarray, max_iter: int, n_threads: int,
                pool: ThreadPoolExecutor | None) -> None:
    indptr = X[0]
    args = (*X, perm)
    work = indptr[ends] - indptr[starts] + (ends - starts)
    if pool is None or starts.shape[0] < 2 or work.sum() < _MIN_PARALLEL_WORK:
        _k.split_segments(*args, starts, ends, seeds, max_iter)
        return
    # Longest-processing-time-first assignment of segments to threads by nnz.
    order = np.argsort(-work, kind="stable")
    load = np.zeros(n_threads, dtype=np.int64)
    owner = np.empty(starts.shape[0], dtype=np.int64)
    for k in order:
        t = int(np.argmin(load))
        owner[k] = t
        load[t] += work[k]
    futures = []
    for t in range(n_threads):
        sel = np.flatnonzero(owner == t)
        if sel.size:
            futures.append(pool.submit(_k.split_segments, *args, starts[sel], ends[sel],
                                       seeds[sel], max_iter))
    for f in futures:
        f.result()


def build_label_tree(label_texts: Sequence[str], embeddings, config: TreeConfig = TreeConfig(),
                     *, n_threads: int | None = None) -> LabelTree:
    """Build the trie / k-means / trie-tree hybrid label tree.

    Parameters
    ----------
    label_texts : sequence of str, length n_labels
        Distinct labels sorted ascending (Python ``str`` order); label id = position. May not
        contain ``END`` ("\\x00").
    embeddings : csr_matrix of shape (n_labels, n_features), float32, or None
        L2-normalised label embeddings (position-weighted char TF-IDF, or PIFA for
        ``kind="kmeans"``); rows are re-normalised if they are not unit length. Unused (may be
        None) when no cluster needs splitting, e.g. ``kind="trie"``.
    config : TreeConfig
    n_threads : int, optional
        Threads for the 2-means splits (default: ``os.cpu_count()``); the tree does not depend
        on it.

    Returns
    -------
    LabelTree
        Level ``i`` in ``1..d`` (trie part) holds the distinct keys ``(label + END * d)[:i]`` in
        sorted order; below, each depth-d node is split by balanced spherical 2-means (halves of
        ``ceil(m/2)`` and ``floor(m/2)`` labels) until every leaf holds ``<= max_leaf_size``
        labels; level ``L`` holds the labels. Children and the label ids inside a trie node are
        contiguous; labels inside a leaf are ordered by id.

    Raises
    ------
    ValueError
        For unsorted/duplicate labels, labels containing END, or embeddings of the wrong shape.
    """
    if not isinstance(config, TreeConfig):
        raise ValueError(f"config: must be a TreeConfig, got {type(config).__name__}")
    label_texts = list(label_texts)
    lengths, lcp_raw, _ = _encode_labels(label_texts)
    n = len(label_texts)
    if n_threads is None:
        n_threads = os.cpu_count() or 1
    elif not _is_int(n_threads) or n_threads < 1:
        raise ValueError(f"n_threads must be an int >= 1, got {n_threads!r}")
    n_threads = int(n_threads)
    X = None if embeddings is None else _prepare_embeddings(embeddings, n)

    if config.kind == "trie":
        d = int(lengths.max())
    elif config.kind == "kmeans":
        d = 0
    else:
        d = config.trie_depth

    # Trie levels: a new level-i node starts at label j where the padded lcp with label j-1 < i.
    spans: list[np.ndarray] = [np.array([0, n], dtype=np.int64)]
    if d > 0:
        # Without END inside labels, the END-padded lcp is the plain lcp.
        lcp = np.minimum(lcp_raw, d)
        for i in range(1, d + 1):
            starts = np.flatnonzero(lcp < i).astype(np.int64) + 1
            spans.append(np.concatenate(([0], starts, [n])).astype(np.int64))
    perm = np.arange(n, dtype=np.int32)
    perms: list[np.ndarray] = [perm] * len(spans)  # trie levels: every range is sorted already

    # 2-means levels: split every cluster larger than max_leaf_size, carry the rest down.
    M = config.max_leaf_size
    pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
    try:
        level = len(spans) - 1
        while True:
            sp_ = spans[-1]
            sizes = np.diff(sp_)
            big = np.flatnonzero(sizes > M)
            if big.size == 0:
                break
            if X is None:
                raise ValueError("embeddings: required when a cluster exceeds max_leaf_size")
            level += 1
            starts = sp_[big]
            ends = sp_[big + 1]
            rng = np.random.default_rng([config.seed, level])
            seeds = rng.integers(0, 2**62, size=big.size, dtype=np.int64)
            perm = perm.copy()
            _run_splits(X, perm, starts, ends, seeds, config.max_iter, n_threads, pool)
            mids = starts + (ends - starts + 1) // 2
            spans.append(np.union1d(sp_, mids).astype(np.int64))
            perms.append(perm)
    finally:
        if pool is not None:
            pool.shutdown()

    spans.append(np.arange(n + 1, dtype=np.int64))
    perms.append(perm)
    child_ptr = [np.searchsorted(spans[l + 1], spans[l]).astype(np.int64)
                 for l in range(len(spans) - 1)]
    sorted_labels = [np.ascontiguousarray(p, dtype=np.int32) for p in perms]
    return LabelTree(child_ptr, perm, sorted_labels, trie_depth=d)
