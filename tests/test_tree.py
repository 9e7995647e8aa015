"""Tests for the label tree (qac.xmr.tree): seed example, invariants, slow twins, persistence."""
from __future__ import annotations

import bisect
import gzip

import numpy as np
import pytest
import scipy.sparse as sp

from qac.features import CharTfidf
from qac.text import normalize_query
from qac.xmr import _tree_kernels
from qac.xmr.tree import END, LabelTree, TreeConfig, build_label_tree

SEED_LABELS = ["a", "ab", "abc", "abd", "abfgh", "abfgi", "bcde", "bcdf"]


# ----------------------------------------------------------------- helpers
def random_embeddings(n: int, n_features: int, seed: int, density: float = 0.3) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n, n_features, density=density, format="csr", dtype=np.float32, random_state=rng)
    X.data[:] = rng.random(X.nnz, dtype=np.float32) + 0.05
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ X, dtype=np.float32)


def random_labels(n: int, seed: int, alphabet: str = "ab c", max_len: int = 9) -> list[str]:
    rng = np.random.default_rng(seed)
    out = set()
    while len(out) < n:
        k = int(rng.integers(0, max_len + 1))
        out.add("".join(rng.choice(list(alphabet), size=k)))
    return sorted(out)


def labels_under(tree: LabelTree, level: int, node: int) -> np.ndarray:
    return tree.label_perm[tree.span[level][node]:tree.span[level][node + 1]]


def prefix_range(labels: list[str], prefix: str) -> tuple[int, int]:
    lo = bisect.bisect_left(labels, prefix)
    hi = lo
    while hi < len(labels) and labels[hi].startswith(prefix):
        hi += 1
    return lo, hi


def reference_split(X: np.ndarray, rows: np.ndarray, seed: int, max_iter: int) -> np.ndarray:
    """Slow twin of ``split_segments`` for one segment (dense numpy, same init and tie rule)."""
    m = rows.shape[0]
    i0 = seed % m
    i1 = (i0 + 1 + (seed // m) % (m - 1)) % m
    R = X[rows].astype(np.float64)
    c0, c1 = R[i0].copy(), R[i1].copy()
    half = (m + 1) // 2
    prev = None
    for it in range(max_iter):
        n0, n1 = np.linalg.norm(c0), np.linalg.norm(c1)
        s0 = R @ c0 / n0 if n0 > 0 else np.zeros(m)
        s1 = R @ c1 / n1 if n1 > 0 else np.zeros(m)
        order = np.argsort(s1 - s0, kind="stable")
        member = np.ones(m, dtype=np.int8)
        member[order[:half]] = 0
        if prev is not None and np.array_equal(member, prev):
            break
        prev = member
        c0, c1 = R[member == 0].sum(axis=0), R[member == 1].sum(axis=0)
    return np.concatenate([rows[member == 0], rows[member == 1]])


def check_invariants(tree: LabelTree, labels: list[str], config: TreeConfig) -> None:
    """Every structural and semantic property the tree promises."""
    tree.validate()
    n, L, d = len(labels), tree.depth, tree.trie_depth
    assert tree.n_labels == n and tree.n_nodes[0] == 1 and tree.n_nodes[L] == n
    # Every label in exactly one leaf; leaves small enough.
    leaves = [labels_under(tree, L - 1, i) for i in range(tree.n_nodes[L - 1])]
    flat = np.concatenate(leaves)
    assert sorted(flat.tolist()) == list(range(n))
    if d < L - 1 or config.kind != "trie":
        assert max(len(x) for x in leaves) <= config.max_leaf_size or L - 1 == d
    # Cluster chain shapes chain; each child has exactly one parent; each parent >= 1 child.
    chain = tree.to_cluster_chain()
    assert len(chain) == L
    for l, C in enumerate(chain):
        assert C.shape == (tree.n_nodes[l + 1], tree.n_nodes[l])
        assert np.all(np.diff(C.indptr) >= 1)
        assert np.all(np.asarray(C.sum(axis=1)).ravel() == 1)
        if l + 1 < L:
            assert chain[l + 1].shape[1] == C.shape[0]
    # Trie levels: node i at level l is the i-th distinct key (label + END*d)[:l], sorted; its
    # label ids are one contiguous range.
    for l in range(1, d + 1):
        keys = [(s + END * d)[:l] for s in labels]
        distinct = sorted(set(keys))
        assert tree.n_nodes[l] == len(distinct)
        for i, key in enumerate(distinct):
            ids = np.sort(labels_under(tree, l, i))
            assert all(keys[j] == key for j in ids)
            assert all(labels[j].startswith(key.rstrip(END)) for j in ids)
            assert np.array_equal(ids, np.arange(ids[0], ids[-1] + 1))
    # 2-means levels: a split divides m > max_leaf_size labels into ceil(m/2), floor(m/2);
    # a single child (pass-through) carries a cluster that is already small enough.
    for l in range(d, L - 1):
        sizes_below = np.diff(tree.span[l + 1])
        for i in range(tree.n_nodes[l]):
            a, b = tree.child_ptr[l][i], tree.child_ptr[l][i + 1]
            m = int(tree.span[l][i + 1] - tree.span[l][i])
            kids = sizes_below[a:b].tolist()
            if m > config.max_leaf_size:
                assert kids == [(m + 1) // 2, m // 2]
            else:
                assert kids == [m]
    # Pass-through flags and label_to_node agree with child_ptr / span.
    for l in range(1, L + 1):
        counts = np.diff(tree.child_ptr[l - 1])
        assert np.array_equal(tree.is_pass_through(l), np.repeat(counts == 1, counts))
        node = tree.label_to_node(l)
        for i in range(0, tree.n_nodes[l], max(1, tree.n_nodes[l] // 7)):
            assert np.array_equal(np.flatnonzero(node == i), np.sort(labels_under(tree, l, i)))


# -------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"kind": "tree"}, "kind"),
        ({"kind": None}, "kind"),
        ({"trie_depth": -1}, "trie_depth"),
        ({"trie_depth": 1.5}, "trie_depth"),
        ({"trie_depth": True}, "trie_depth"),
        ({"max_leaf_size": 1}, "max_leaf_size"),
        ({"max_leaf_size": "100"}, "max_leaf_size"),
        ({"seed": -1}, "seed"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_config_rejects_invalid(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TreeConfig(**kwargs)


def test_config_is_frozen():
    config = TreeConfig()
    with pytest.raises(AttributeError):
        config.kind = "trie"  # type: ignore[misc]


# ----------------------------------------------------------- invalid input
@pytest.mark.parametrize(
    "labels, message",
    [
        ([], "at least one label"),
        (["b", "a"], "sorted ascending"),
        (["a", "a"], "distinct"),
        (["a", "ab", "ab"], "'ab' is followed by 'ab' at position 2"),
        (["a", "a\x00b"], "END"),
        (["a", 3], r"label_texts\[1\]: must be str"),
    ],
)
def test_build_rejects_bad_labels(labels, message):
    X = random_embeddings(max(len(labels), 1), 5, 0)
    with pytest.raises(ValueError, match=message):
        build_label_tree(labels, X, TreeConfig(kind="kmeans", max_leaf_size=2))


@pytest.mark.parametrize(
    "embeddings, message",
    [
        (np.ones((3, 4), dtype=np.float32), "scipy sparse"),
        (sp.csr_matrix(np.ones((2, 4), dtype=np.float32)), "expected 3 rows"),
        (None, "embeddings: required"),
    ],
)
def test_build_rejects_bad_embeddings(embeddings, message):
    with pytest.raises(ValueError, match=message):
        build_label_tree(["a", "b", "c"], embeddings, TreeConfig(kind="kmeans", max_leaf_size=2))


def test_build_checks_embeddings_even_when_unused():
    with pytest.raises(ValueError, match="expected 2 rows"):
        build_label_tree(["a", "b"], sp.csr_matrix((3, 4), dtype=np.float32), TreeConfig())


@pytest.mark.parametrize("n_threads", [0, -1, 1.5])
def test_build_rejects_bad_n_threads(n_threads):
    with pytest.raises(ValueError, match="n_threads"):
        build_label_tree(["a", "b"], None, TreeConfig(), n_threads=n_threads)


def test_build_rejects_bad_config():
    with pytest.raises(ValueError, match="config"):
        build_label_tree(["a"], None, {"kind": "trie"})  # type: ignore[arg-type]


# ----------------------------------------------------- seed article example
def _groups(tree: LabelTree, level: int) -> list[list[str]]:
    return [sorted(SEED_LABELS[j] for j in labels_under(tree, level, i))
            for i in range(tree.n_nodes[level])]


def test_seed_example_trie():
    tree = build_label_tree(SEED_LABELS, None, TreeConfig(kind="trie"))
    check_invariants(tree, SEED_LABELS, TreeConfig(kind="trie"))
    assert tree.trie_depth == 5 and tree.depth == 6
    assert tree.n_nodes == [1, 2, 3, 6, 7, 8, 8]
    assert _groups(tree, 1) == [["a", "ab", "abc", "abd", "abfgh", "abfgi"], ["bcde", "bcdf"]]
    # "a" ends at an inner node, so it gets its own child "a" + END.
    assert _groups(tree, 2) == [["a"], ["ab", "abc", "abd", "abfgh", "abfgi"], ["bcde", "bcdf"]]
    assert _groups(tree, 3) == [["a"], ["ab"], ["abc"], ["abd"], ["abfgh", "abfgi"],
                                ["bcde", "bcdf"]]
    assert _groups(tree, 5) == [[s] for s in SEED_LABELS]
    assert np.array_equal(tree.label_perm, np.arange(8))
    # "a" + END + END and "bcd" are the only children of their parents.
    assert tree.is_pass_through(3).tolist() == [True, False, False, False, False, True]


def test_seed_example_kmeans():
    config = TreeConfig(kind="kmeans", max_leaf_size=2)
    tree = build_label_tree(SEED_LABELS, CharTfidf(ngram_range=(1, 3), position_weighted=False).fit_transform(SEED_LABELS), config)
    check_invariants(tree, SEED_LABELS, config)
    assert tree.trie_depth == 0 and tree.n_nodes == [1, 2, 4, 8]
    assert [len(g) for g in _groups(tree, 2)] == [2, 2, 2, 2]


def test_seed_example_hybrid():
    config = TreeConfig(kind="hybrid", trie_depth=2, max_leaf_size=2)
    tree = build_label_tree(SEED_LABELS, CharTfidf(ngram_range=(1, 3), position_weighted=False).fit_transform(SEED_LABELS), config)
    check_invariants(tree, SEED_LABELS, config)
    assert _groups(tree, 2) == [["a"], ["ab", "abc", "abd", "abfgh", "abfgi"], ["bcde", "bcdf"]]
    # 5 labels -> 3 + 2 -> (2 + 1) + 2 (pass-through); leaves at level 4, labels at level 5.
    assert tree.depth == 5 and tree.n_nodes == [1, 2, 3, 4, 5, 8]
    assert sorted(map(len, _groups(tree, 4))) == [1, 1, 2, 2, 2]


# ------------------------------------------------------------ property tests
@pytest.mark.parametrize("kind, trie_depth, max_leaf_size", [
    ("hybrid", 2, 5), ("hybrid", 1, 3), ("hybrid", 0, 4), ("hybrid", 12, 7),
    ("kmeans", 3, 2), ("kmeans", 3, 6), ("trie", 3, 100),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_trees_satisfy_invariants(kind, trie_depth, max_leaf_size, seed):
    labels = random_labels(int(60 + 40 * seed), seed)
    X = random_embeddings(len(labels), 12, seed)
    config = TreeConfig(kind=kind, trie_depth=trie_depth, max_leaf_size=max_leaf_size, seed=seed)
    tree = build_label_tree(labels, X, config)
    check_invariants(tree, labels, config)
    if kind == "trie":
        assert tree.trie_depth == max(map(len, labels))
        assert tree.n_nodes[tree.trie_depth] == len(labels)  # every label alone in its trie leaf


@pytest.mark.parametrize("seed", [0, 1])
def test_prefix_range_check_equals_brute_force(seed):
    labels = random_labels(150, seed + 10)
    X = random_embeddings(len(labels), 10, seed)
    tree = build_label_tree(labels, X, TreeConfig(trie_depth=2, max_leaf_size=6, seed=seed))
    prefixes = ["", "a", "b", " ", "ab", "ba", "c c", "aab", "zz", "bbbb", "a "]
    for prefix in prefixes:
        lo, hi = prefix_range(labels, prefix)
        assert [j for j, s in enumerate(labels) if s.startswith(prefix)] == list(range(lo, hi))
        for level in range(tree.depth + 1):
            for node in range(tree.n_nodes[level]):
                expect = any(labels[j].startswith(prefix) for j in labels_under(tree, level, node))
                assert tree.node_has_label_in_range(level, node, lo, hi) == expect


def test_split_kernel_matches_reference():
    rng = np.random.default_rng(5)
    X = random_embeddings(300, 20, 5, density=0.25)
    dense = X.toarray()
    perm = rng.permutation(300).astype(np.int32)
    bounds = np.array([0, 2, 3 + 37, 40 + 64, 104 + 101, 300], dtype=np.int64)
    starts, ends = bounds[:-1], bounds[1:]
    starts = np.delete(starts, 1)  # leave a gap: segments need not cover perm
    ends = np.delete(ends, 1)
    seeds = rng.integers(0, 2**62, size=starts.size, dtype=np.int64)
    out = perm.copy()
    _tree_kernels.split_segments(X.indptr.astype(np.int64), X.indices, X.data, X.shape[1], out,
                                 starts, ends, seeds, 20)
    for s, e, seed in zip(starts, ends, seeds):
        expect = reference_split(dense, perm[s:e], int(seed), 20)
        assert np.array_equal(out[s:e], expect)
    assert np.array_equal(out[2:40], perm[2:40])


def test_split_kernel_ties_keep_position_order():
    row = sp.csr_matrix(np.array([[0.6, 0.8, 0.0]], dtype=np.float32))
    X = sp.vstack([row] * 7 + [sp.csr_matrix((1, 3), dtype=np.float32)], format="csr")
    perm = np.array([5, 3, 7, 0, 1, 6, 2, 4], dtype=np.int32)
    out = perm.copy()
    _tree_kernels.split_segments(X.indptr.astype(np.int64), X.indices, X.data, 3, out,
                                 np.array([0], dtype=np.int64), np.array([8], dtype=np.int64),
                                 np.array([12345], dtype=np.int64), 20)
    assert np.array_equal(out, reference_split(X.toarray(), perm, 12345, 20))
    assert sorted(out[:4].tolist() + out[4:].tolist()) == list(range(8))


def test_deterministic_and_thread_independent(monkeypatch):
    from qac.xmr import tree as tree_module

    monkeypatch.setattr(tree_module, "_MIN_PARALLEL_WORK", 0)  # use the pool even when tiny
    labels = random_labels(300, 7, alphabet="abcd ")
    X = random_embeddings(len(labels), 16, 7)
    config = TreeConfig(trie_depth=1, max_leaf_size=4, seed=3)
    a = build_label_tree(labels, X, config, n_threads=1)
    b = build_label_tree(labels, X, config, n_threads=2)
    c = build_label_tree(labels, X, config, n_threads=3)
    for other in (b, c):
        assert other.n_nodes == a.n_nodes
        assert np.array_equal(other.label_perm, a.label_perm)
    d = build_label_tree(labels, X, TreeConfig(trie_depth=1, max_leaf_size=4, seed=4))
    assert not np.array_equal(d.label_perm, a.label_perm)


def test_unnormalised_embeddings_are_normalised_without_touching_input():
    labels = random_labels(80, 3)
    X = random_embeddings(len(labels), 10, 3)
    X2 = X * 3.0
    before = X2.data.copy()
    config = TreeConfig(kind="kmeans", max_leaf_size=4)
    a = build_label_tree(labels, X, config)
    b = build_label_tree(labels, X2, config)
    assert np.array_equal(a.label_perm, b.label_perm)
    assert np.array_equal(X2.data, before)


def test_single_label_and_small_trees():
    tree = build_label_tree(["x"], None, TreeConfig())
    tree.validate()
    assert tree.n_nodes == [1, 1, 1, 1, 1] and tree.depth == 4
    tree = build_label_tree(["", "a"], None, TreeConfig(kind="kmeans"))
    tree.validate()
    assert tree.n_nodes == [1, 2] and tree.depth == 1
    assert tree.is_pass_through(0).tolist() == [False]


# --------------------------------------------------------------- persistence
def test_to_arrays_from_arrays_round_trip(tmp_path):
    labels = random_labels(120, 4)
    X = random_embeddings(len(labels), 12, 4)
    tree = build_label_tree(labels, X, TreeConfig(trie_depth=2, max_leaf_size=5))
    params, arrays = tree.to_arrays()
    assert set(arrays) == ({"label_perm"} | {f"child_ptr_{l}" for l in range(tree.depth)}
                           | {f"sorted_labels_{l}" for l in range(tree.depth + 1)})
    assert arrays["label_perm"].dtype == np.int32
    assert all(arrays[f"child_ptr_{l}"].dtype == np.int64 for l in range(tree.depth))
    import json

    params = json.loads(json.dumps(params))
    loaded = {}
    for name, value in arrays.items():
        np.save(tmp_path / f"{name}.npy", value)
        loaded[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    back = LabelTree.from_arrays(params, loaded)
    back.validate()
    assert back.n_nodes == tree.n_nodes and back.depth == tree.depth
    assert back.trie_depth == tree.trie_depth
    for l in range(tree.depth + 1):
        assert np.array_equal(back.span[l], tree.span[l])
        assert np.array_equal(back.sorted_labels[l], tree.sorted_labels[l])
    assert np.array_equal(back.label_perm, tree.label_perm)
    assert back.node_has_label_in_range(1, 0, 0, 1)
    assert [c.shape for c in back.to_cluster_chain()] == [c.shape for c in tree.to_cluster_chain()]


def test_from_arrays_reports_missing_array():
    tree = build_label_tree(SEED_LABELS, None, TreeConfig(kind="trie"))
    params, arrays = tree.to_arrays()
    del arrays["sorted_labels_2"]
    with pytest.raises(ValueError, match="sorted_labels_2"):
        LabelTree.from_arrays(params, arrays)


def _corrupt(name: str) -> LabelTree:
    tree = build_label_tree(SEED_LABELS, None, TreeConfig(kind="trie"))
    ptr = [p.copy() for p in tree.child_ptr]
    perm = tree.label_perm.copy()
    lab = [s.copy() for s in tree.sorted_labels]
    if name == "ptr_not_increasing":
        ptr[2][2] = ptr[2][1]
    elif name == "ptr_wrong_dtype":
        ptr[1] = ptr[1].astype(np.int32)
    elif name == "ptr_length":
        ptr[1] = np.concatenate([ptr[1][:-1], [ptr[1][-1] - 1, ptr[1][-1]]])
    elif name == "perm_not_permutation":
        perm[0] = perm[1]
    elif name == "sorted_labels_unsorted":
        lab[1][:2] = lab[1][1::-1]
    elif name == "too_few_levels":
        lab = lab[:-1]
    elif name == "wrong_label_count":
        perm = np.arange(9, dtype=np.int32)
        lab = [np.arange(9, dtype=np.int32) for _ in lab]
    return LabelTree(ptr, perm, lab, trie_depth=tree.trie_depth)


@pytest.mark.parametrize("name, message", [
    ("ptr_not_increasing", r"child_ptr\[2\]: node 1 at level 2 has 0 children"),
    ("ptr_wrong_dtype", r"child_ptr\[1\]: must be a 1-d int64"),
    ("ptr_length", r"child_ptr\[1\]: expected length 3 \(n_nodes\[1\] \+ 1\), got 4"),
    ("perm_not_permutation", "label_perm: is not a permutation"),
    ("sorted_labels_unsorted", r"sorted_labels\[1\]"),
    ("too_few_levels", "sorted_labels: expected 7 levels"),
    ("wrong_label_count", "expected one per label"),
])
def test_validate_reports_corruption(name, message):
    with pytest.raises(ValueError, match=message):
        _corrupt(name).validate()


# ------------------------------------------------------------------ real data
def test_hybrid_tree_on_real_aol_queries(aol_log):
    raw = set()
    with gzip.open(aol_log, "rt", encoding="utf-8", errors="replace") as fh:
        col = fh.readline().rstrip("\n").split("\t").index("Query")
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) > col:
                raw.add(parts[col])
    labels = sorted({q for q in map(normalize_query, raw) if q})
    assert len(labels) > 50_000
    X = CharTfidf(ngram_range=(1, 3), position_weighted=False).fit_transform(labels)
    config = TreeConfig()
    tree = build_label_tree(labels, X, config)
    tree.validate()
    sizes = tree.leaf_sizes()
    assert sizes.max() <= config.max_leaf_size
    assert tree.trie_depth == 3
    # Trie level 3 groups by the first 3 characters (END-padded).
    for i in range(0, tree.n_nodes[3], 97):
        ids = labels_under(tree, 3, i)
        keys = {(labels[j] + END * 3)[:3] for j in ids}
        assert len(keys) == 1
    # Prefix-range check against brute force on a few real prefixes and nodes.
    for prefix in ["th", "www", "how to", "z"]:
        lo, hi = prefix_range(labels, prefix)
        for level in (1, 3, tree.depth - 1):
            for node in range(0, tree.n_nodes[level], max(1, tree.n_nodes[level] // 50)):
                expect = any(labels[j].startswith(prefix) for j in labels_under(tree, level, node))
                assert tree.node_has_label_in_range(level, node, lo, hi) == expect
