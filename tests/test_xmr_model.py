"""XR-Linear training and beam search, each checked against a slow exact twin."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from qac.xmr import _kernels
from qac.xmr import model as model_module
from qac.xmr.model import TrainConfig, XLinearModel, _flatten_tree, _level_seed

MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# Tiny trees and models from flat arrays
# ---------------------------------------------------------------------------------------------


def make_tree(child_ptr, label_perm):
    """A LabelTree stand-in: ``child_ptr`` per level and ``label_perm``."""
    return SimpleNamespace(
        child_ptr=[np.asarray(cp, dtype=np.int64) for cp in child_ptr],
        label_perm=np.asarray(label_perm, dtype=np.int32),
    )


def random_tree(rng, depth, max_fanout=4, p_single=0.3):
    """Random levelled tree: a node has one child with probability p_single, else 2..max_fanout."""
    child_ptr = []
    n = 1
    for _ in range(depth):
        fan = np.where(rng.random(n) < p_single, 1, rng.integers(2, max_fanout + 1, n))
        cp = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(fan, out=cp[1:])
        child_ptr.append(cp)
        n = int(cp[-1])
    return make_tree(child_ptr, rng.permutation(n).astype(np.int32))


def random_model(rng, depth=4, n_features=40, density=0.3, scale=1.5, max_fanout=4, bias=1.0,
                 p_single=0.3):
    """Random (untrained) model: sparse random weights for every non-pass-through node."""
    tree = random_tree(rng, depth, max_fanout, p_single)
    node_ptr, gcp, label_perm, sorted_labels, cps, _ = _flatten_tree(tree.child_ptr, tree.label_perm)
    n_total = int(node_ptr[-1])
    fan = np.diff(gcp)
    parent_fan = np.ones(n_total, dtype=np.int64)
    parent_fan[1:] = np.repeat(fan, fan)
    cols = []
    for g in range(n_total):
        if g == 0 or parent_fan[g] == 1:
            cols.append(np.zeros(n_features + 1))
        else:
            w = rng.normal(0, scale, n_features + 1) * (rng.random(n_features + 1) < density)
            cols.append(w)
    W = sp.csc_matrix(np.array(cols, dtype=np.float32).T)
    W.sort_indices()
    params = {"format": "xlinear/1", "n_features": n_features, "n_labels": int(label_perm.size),
              "depth": depth, "bias": bias}
    arrays = {
        "node_ptr": node_ptr, "child_ptr": gcp, "label_perm": label_perm,
        "sorted_labels": sorted_labels, "W_indptr": W.indptr.astype(np.int64),
        "W_indices": W.indices.astype(np.int32), "W_data": W.data.astype(np.float32),
    }
    return XLinearModel.from_arrays(params, arrays)


def random_query(rng, n_features, nnz):
    idx = np.sort(rng.choice(n_features, size=nnz, replace=False)).astype(np.int32)
    data = rng.random(nnz).astype(np.float32)
    return idx, data / np.linalg.norm(data)


def learnable_problem(rng, tree, n_features=60, per_label=6, noise=2):
    """Instances whose features are their label's signature plus noise (L2-normalised)."""
    n_labels = tree.label_perm.size
    sig = [rng.choice(n_features, size=3, replace=False) for _ in range(n_labels)]
    rows, y = [], []
    for lab in range(n_labels):
        for _ in range(per_label):
            v = np.zeros(n_features, dtype=np.float32)
            v[sig[lab]] = 1.0
            v[rng.choice(n_features, size=noise, replace=False)] += 0.5
            rows.append(v / np.linalg.norm(v))
            y.append(lab)
    return sp.csr_matrix(np.array(rows)), np.array(y, dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# Training: the multi-output solver equals a straightforward per-classifier solver
# ---------------------------------------------------------------------------------------------


def splitmix_next(state):
    state[0] = (state[0] + 0x9E3779B97F4A7C15) & MASK64
    z = state[0]
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def dcd_single_twin(Xb, yb, C, eps, max_iter, seed):
    """LIBLINEAR's L2-loss SVM dual CD for one classifier (Hsieh et al. 2008), plain Python."""
    n, d = Xb.shape
    rows = [(Xb.indices[Xb.indptr[i]:Xb.indptr[i + 1]].tolist(),
             [float(v) for v in Xb.data[Xb.indptr[i]:Xb.indptr[i + 1]]]) for i in range(n)]
    diag = 0.5 / C
    qd = [diag + sum(v * v for v in vals) for _, vals in rows]
    w = [0.0] * d
    alpha = [0.0] * n
    active = [True] * n
    n_active = n
    pg_max_old, perm, state = np.inf, list(range(n)), [seed]
    for _ in range(max_iter):
        for i in range(n - 1, 0, -1):
            j = splitmix_next(state) % (i + 1)
            perm[i], perm[j] = perm[j], perm[i]
        pg_max_new, pg_min_new = -np.inf, np.inf
        for i in perm:
            if not active[i]:
                continue
            idx, vals = rows[i]
            m = 0.0
            for f, v in zip(idx, vals):
                m += w[f] * v
            g = yb[i] * m - 1.0 + diag * alpha[i]
            pg = 0.0
            if alpha[i] == 0.0:
                if g > pg_max_old:
                    active[i] = False
                    n_active -= 1
                    continue
                if g < 0.0:
                    pg = g
            else:
                pg = g
            pg_max_new, pg_min_new = max(pg_max_new, pg), min(pg_min_new, pg)
            if abs(pg) > 1e-12:
                old = alpha[i]
                alpha[i] = max(old - g / qd[i], 0.0)
                dlt = (alpha[i] - old) * yb[i]
                for f, v in zip(idx, vals):
                    w[f] += dlt * v
        if pg_max_new - pg_min_new <= eps:
            if n_active == n:
                break
            active, n_active, pg_max_old = [True] * n, n, np.inf
            continue
        pg_max_old = pg_max_new if pg_max_new > 0 else np.inf
    return np.array(w)


@pytest.mark.parametrize("eps,max_iter", [(0.1, 20), (1e-3, 200), (0.5, 3)])
def test_dcd_multi_equals_per_classifier_twin(eps, max_iter):
    rng = np.random.default_rng(1)
    n, d, K = 60, 25, 4
    X = sp.random(n, d, density=0.25, format="csr", random_state=2, dtype=np.float32)
    X = sp.hstack([X, np.ones((n, 1), dtype=np.float32)], format="csr")
    y_child = rng.integers(0, K, n).astype(np.int64)
    for k0, k1 in [(0, K), (1, 3)]:
        W, _ = _kernels.dcd_multi(
            X.indptr.astype(np.int64), X.indices.astype(np.int32), X.data, y_child, k0, k1,
            d + 1, 0.7, eps, max_iter, np.uint64(12345),
        )
        for k in range(k0, k1):
            yb = np.where(y_child == k, 1.0, -1.0)
            w = dcd_single_twin(X, yb, 0.7, eps, max_iter, 12345)
            np.testing.assert_allclose(W[:, k - k0], w, rtol=1e-10, atol=1e-12)


def test_train_matches_liblinear_per_node():
    sklearn_svm = pytest.importorskip("sklearn.svm")
    rng = np.random.default_rng(3)
    tree = make_tree([[0, 3], [0, 2, 3, 6], [0, 3, 4, 6, 7, 9, 11]], rng.permutation(11))
    X, y = learnable_problem(rng, tree, n_features=30, per_label=5, noise=3)
    cfg = TrainConfig(C=1.0, eps=1e-6, max_iter=5000, threshold=0.0, bias=1.0, n_threads=2)
    model = XLinearModel.train(X, y, tree, cfg)
    Xb = sp.hstack([X, np.ones((X.shape[0], 1), dtype=np.float32)], format="csr")
    node_ptr, _, _, _, cps, spans = _flatten_tree(tree.child_ptr, tree.label_perm)
    pos = np.argsort(tree.label_perm)
    checked = 0
    for lev in range(1, len(cps) + 1):
        W = model.weights(lev).toarray()
        owner_p = np.repeat(np.arange(spans[lev - 1].size - 1), np.diff(spans[lev - 1]))[pos[y]]
        owner_c = np.repeat(np.arange(spans[lev].size - 1), np.diff(spans[lev]))[pos[y]]
        cp = cps[lev - 1]
        for p in range(cp.size - 1):
            for c in range(cp[p], cp[p + 1]):
                if cp[p + 1] - cp[p] == 1:
                    assert not W[:, c].any(), "pass-through nodes have no classifier"
                    continue
                rows = np.flatnonzero(owner_p == p)
                yb = np.where(owner_c[rows] == c, 1, -1)
                svc = sklearn_svm.LinearSVC(loss="squared_hinge", dual=True, C=1.0,
                                            fit_intercept=False, tol=1e-8, max_iter=200000)
                svc.fit(Xb[rows], yb)
                ref = svc.coef_.ravel()
                assert np.abs(W[:, c] - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())
                checked += 1
    assert checked >= 8


def test_pruning_drops_exactly_small_weights_bias_included():
    rng = np.random.default_rng(4)
    tree = random_tree(rng, 3, max_fanout=4)
    X, y = learnable_problem(rng, tree, n_features=40)
    full = XLinearModel.train(X, y, tree, TrainConfig(threshold=0.0, n_threads=1))
    pruned = XLinearModel.train(X, y, tree, TrainConfig(threshold=0.1, n_threads=1))
    for lev in range(1, full.depth + 1):
        a = full.weights(lev).toarray()
        b = pruned.weights(lev).toarray()
        np.testing.assert_array_equal(b, np.where(np.abs(a) >= 0.1, a, 0.0))
        assert b.shape == (41, full.n_nodes[lev])
    assert np.any(np.abs(full.weights(1).toarray()[-1]) > 0), "bias row is trained"


def test_training_is_deterministic_across_thread_counts():
    rng = np.random.default_rng(5)
    tree = random_tree(rng, 4, max_fanout=5)
    X, y = learnable_problem(rng, tree, n_features=50)
    models = [XLinearModel.train(X, y, tree, TrainConfig(n_threads=t, seed=7)) for t in (1, 3)]
    for key in ("W_indptr", "W_indices", "W_data"):
        np.testing.assert_array_equal(getattr(models[0], key), getattr(models[1], key))
    other = XLinearModel.train(X, y, tree, TrainConfig(n_threads=1, seed=8, eps=0.5))
    assert other.W_data.size != models[0].W_data.size or not np.array_equal(
        other.W_data, models[0].W_data)


def test_trained_model_ranks_training_labels_first():
    rng = np.random.default_rng(6)
    tree = random_tree(rng, 4, max_fanout=4)
    X, y = learnable_problem(rng, tree, n_features=80, per_label=4, noise=1)
    model = XLinearModel.train(X, y, tree, TrainConfig(C=4.0, threshold=0.01))
    labels, _ = model.predict_batch(X, beam_size=10, topk=10, n_threads=2)
    assert np.mean(labels[:, 0] == y) > 0.9
    assert np.mean((labels == y[:, None]).any(axis=1)) > 0.98


def test_labels_without_instances_and_single_child_root():
    tree = make_tree([[0, 1], [0, 2], [0, 2, 4]], [3, 0, 2, 1])
    X = sp.csr_matrix(np.eye(4, dtype=np.float32)[[0, 0, 1, 1]])
    y = np.array([3, 3, 0, 0], dtype=np.int32)  # labels 1 and 2 have no instance
    model = XLinearModel.train(X, y, tree, TrainConfig(threshold=0.0))
    assert model.weights(1).nnz == 0  # the root's only child is a pass-through node
    assert model.weights(2).nnz > 0  # node 1 is trained on negatives only
    assert model.weights(3)[:, 2:].nnz == 0  # children of a parent with no training instance
    labels, scores = model.predict_one(np.array([0], np.int32), np.array([1.0], np.float32),
                                       beam_size=4, topk=4)
    ref_l, ref_s = model.predict_exhaustive(np.array([0]), np.array([1.0]))
    assert set(labels.tolist()) == {0, 1, 2, 3} and labels[0] == 3
    np.testing.assert_allclose(scores, ref_s[np.argsort(ref_l)][labels], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Beam search equals exhaustive scoring when the beam is as wide as the tree
# ---------------------------------------------------------------------------------------------


def assert_same_ranking(labels, scores, ref_labels, ref_scores):
    assert labels.dtype == np.int32 and scores.dtype == np.float32
    assert sorted(labels.tolist()) == sorted(ref_labels.tolist())
    ref = dict(zip(ref_labels.tolist(), ref_scores.tolist()))
    np.testing.assert_allclose(scores, [ref[lab] for lab in labels.tolist()], rtol=0, atol=1e-6)
    key = list(zip((-scores).tolist(), labels.tolist()))
    assert key == sorted(key), "sorted by score desc, ties by label id asc"


def wide_ranges(rng, n_labels):
    lo = int(rng.integers(0, n_labels))
    return [None, (0, n_labels), (lo, int(rng.integers(lo, n_labels + 1))), (lo, lo),
            (n_labels - 1, n_labels + 5), (-3, 1)]


@pytest.mark.parametrize("feature_major", [0, 1 << 30], ids=["column-only", "feature-major"])
@pytest.mark.parametrize("post", ["l3-hinge", "sigmoid"])
@pytest.mark.parametrize("seed", range(6))
def test_wide_beam_equals_exhaustive(post, seed, feature_major, monkeypatch):
    monkeypatch.setattr(model_module, "FEATURE_MAJOR_MAX_NODES", feature_major)
    rng = np.random.default_rng(seed)
    model = random_model(rng, depth=int(rng.integers(1, 6)), max_fanout=int(rng.integers(2, 6)))
    beam = max(model.n_nodes)
    for _ in range(4):
        xi, xd = random_query(rng, model.n_features, int(rng.integers(0, 8)))
        for rng_ in wide_ranges(rng, model.n_labels):
            labels, scores = model.predict_one(xi, xd, beam_size=beam, topk=model.n_labels,
                                               post_processor=post, label_range=rng_)
            ref = model.predict_exhaustive(xi, xd, post_processor=post, label_range=rng_)
            assert_same_ranking(labels, scores, *ref)


@pytest.mark.parametrize("post", ["l3-hinge", "sigmoid"])
def test_wide_beam_equals_exhaustive_on_trained_model(post):
    rng = np.random.default_rng(11)
    tree = random_tree(rng, 5, max_fanout=4)
    X, y = learnable_problem(rng, tree, n_features=70)
    model = XLinearModel.train(X, y, tree, TrainConfig(threshold=0.05))
    for r in range(0, X.shape[0], 7):
        x = X[r]
        for rng_ in wide_ranges(rng, model.n_labels)[:3]:
            labels, scores = model.predict_one(x.indices, x.data, beam_size=max(model.n_nodes),
                                               topk=model.n_labels, post_processor=post,
                                               label_range=rng_)
            assert_same_ranking(labels, scores, *model.predict_exhaustive(
                x.indices, x.data, post_processor=post, label_range=rng_))


def beam_twin(model, xi, xd, beam, topk, post, label_range):
    """Level-by-level beam search in numpy over exact per-level scores."""
    x = np.zeros(model.n_features + 1)
    np.add.at(x, xi, xd)
    x[-1] = model.bias
    labels_all = model.label_perm
    lo, hi = label_range if label_range else (-np.inf, np.inf)
    beam_nodes, beam_scores = [0], [1.0]
    for lev in range(1, model.depth + 1):
        z = model.weights(lev).T @ x
        f = 1 / (1 + np.exp(-z)) if post == "sigmoid" else np.exp(-np.maximum(0, 1 - z) ** 3)
        cp = model.level_child_ptr(lev - 1)
        off = model.node_ptr[lev]
        cands = []
        for b, s in zip(beam_nodes, beam_scores):
            for c in range(cp[b], cp[b + 1]):
                held = model.sorted_labels[lev][model.span_lo[off + c]:model.span_hi[off + c]]
                if not np.any((held >= lo) & (held < hi)):
                    continue
                sc = s if cp[b + 1] - cp[b] == 1 else s * f[c]
                key = labels_all[c] if lev == model.depth else c
                cands.append((-sc, key, c, sc))
        cands.sort()
        keep = cands[: (topk if lev == model.depth else beam)]
        beam_nodes, beam_scores = [c[2] for c in keep], [c[3] for c in keep]
    return np.array([labels_all[c] for c in beam_nodes]), np.array(beam_scores)


@pytest.mark.parametrize("post", ["l3-hinge", "sigmoid"])
@pytest.mark.parametrize("beam,topk", [(1, 1), (2, 5), (3, 3), (5, 20)])
def test_narrow_beam_equals_numpy_beam_twin(beam, topk, post):
    rng = np.random.default_rng(20 + beam)
    for _ in range(8):
        model = random_model(rng, depth=4, max_fanout=5, scale=0.5)
        xi, xd = random_query(rng, model.n_features, 6)
        for rng_ in (None, (5, model.n_labels // 2 + 5)):
            labels, scores = model.predict_one(xi, xd, beam_size=beam, topk=topk,
                                               post_processor=post, label_range=rng_)
            ref_l, ref_s = beam_twin(model, xi, xd, beam, topk, post, rng_)
            np.testing.assert_array_equal(labels, ref_l)
            np.testing.assert_allclose(scores, ref_s, atol=1e-6)


def test_long_columns_and_unsorted_queries_agree():
    rng = np.random.default_rng(30)
    model = random_model(rng, depth=3, n_features=600, density=0.9, max_fanout=4,
                         p_single=0.0)
    assert np.diff(model.W_indptr).max() > 24 * 4, "binary-search dot product is exercised"
    for _ in range(10):
        xi, xd = random_query(rng, model.n_features, 3)
        ref = model.predict_exhaustive(xi, xd)
        got = model.predict_one(xi, xd, beam_size=1000, topk=model.n_labels)
        assert_same_ranking(*got, *ref)
        shuffled = rng.permutation(3)
        got2 = model.predict_one(xi[shuffled], xd[shuffled], beam_size=1000, topk=model.n_labels)
        assert_same_ranking(*got2, *ref)
    # A repeated feature id counts twice, as in a sparse dot product.
    xi = np.array([5, 5, 9], np.int32)
    xd = np.array([0.5, 0.25, 1.0], np.float32)
    assert_same_ranking(*model.predict_one(xi, xd, beam_size=1000, topk=model.n_labels),
                        *model.predict_exhaustive(xi, xd))


def test_predict_batch_equals_predict_one():
    rng = np.random.default_rng(40)
    model = random_model(rng, depth=4, max_fanout=4)
    X = sp.random(37, model.n_features, density=0.1, format="csr", random_state=1,
                  dtype=np.float32)
    for threads in (1, 3):
        labels, scores = model.predict_batch(X, beam_size=3, topk=50, n_threads=threads)
        assert labels.shape == (37, 50) and labels.dtype == np.int32
        for r in range(X.shape[0]):
            lab, sc = model.predict_one(X[r].indices, X[r].data, beam_size=3, topk=50)
            np.testing.assert_array_equal(labels[r, : lab.size], lab)
            np.testing.assert_array_equal(scores[r, : lab.size], sc)
            assert (labels[r, lab.size:] == -1).all() and (scores[r, lab.size:] == 0).all()


def test_concurrent_threads_get_the_same_answers():
    rng = np.random.default_rng(50)
    model = random_model(rng, depth=4, max_fanout=4)
    queries = [random_query(rng, model.n_features, 5) for _ in range(30)]
    expected = [model.predict_one(*q, beam_size=4, topk=8) for q in queries]
    errors = []

    def worker():
        for _ in range(20):
            for q, (lab, sc) in zip(queries, expected):
                got = model.predict_one(*q, beam_size=4, topk=8)
                if not (np.array_equal(got[0], lab) and np.array_equal(got[1], sc)):
                    errors.append(q)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------------------------------------
# Chunked leaf level: bit for bit the column path (the model without chunks is the slow twin)
# ---------------------------------------------------------------------------------------------


def without_chunks(model):
    params, arrays = model.to_arrays()
    twin = XLinearModel.from_arrays(params, arrays, leaf_chunks=False)
    assert twin.C_ptr.size == 1 and model.C_ptr.size > 1 and twin.chunk_nbytes == 0
    return twin


def assert_bitwise(got, ref):
    assert got[0].dtype == ref[0].dtype and got[1].dtype == ref[1].dtype
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1].view(np.uint32), ref[1].view(np.uint32))


def tie_model(rng, **kw):
    """A random model whose weights are multiples of 0.5 and whose clusters repeat columns."""
    model = random_model(rng, **kw)
    params, arrays = model.to_arrays()
    W = sp.csc_matrix((arrays["W_data"], arrays["W_indices"], arrays["W_indptr"]),
                      shape=(model.n_features + 1, int(model.node_ptr[-1]))).toarray()
    W = np.round(W * 2) / 2
    leaf0 = int(model.node_ptr[model.depth])
    for g in range(int(model.node_ptr[model.depth - 1]), leaf0):
        c0, c1 = int(model.child_ptr[g]), int(model.child_ptr[g + 1])
        if c1 - c0 > 2:
            W[:, c0 + 1] = W[:, c0]
    W = sp.csc_matrix(W.astype(np.float32))
    W.sort_indices()
    arrays = dict(arrays, W_indptr=W.indptr.astype(np.int64), W_indices=W.indices.astype(np.int32),
                  W_data=W.data.astype(np.float32))
    return XLinearModel.from_arrays(params, arrays)


def chunk_queries(rng, n_features):
    nnz = [0, 1, 3, n_features // 4, n_features]
    qs = [random_query(rng, n_features, min(k, n_features)) for k in nnz]
    xi, xd = random_query(rng, n_features, min(6, n_features))
    qs.append((xi[::-1].copy(), xd[::-1].copy()))                      # unsorted: column path
    qs.append((np.repeat(xi, 2), np.repeat(xd, 2) / 2))                 # repeated ids: column path
    qs.append((xi, np.round(xd * 4).astype(np.float32) / 4))            # ties in the query too
    return qs


@pytest.mark.parametrize("feature_major", [0, 1 << 30], ids=["column-only", "feature-major"])
@pytest.mark.parametrize("seed", range(10))
def test_leaf_chunks_equal_column_path_bit_for_bit(seed, feature_major, monkeypatch):
    monkeypatch.setattr(model_module, "FEATURE_MAJOR_MAX_NODES", feature_major)
    rng = np.random.default_rng(100 + seed)
    shape = dict(depth=int(rng.integers(1, 5)), n_features=int(rng.choice([5, 40, 300])),
                 density=float(rng.choice([0.0, 0.05, 0.3, 0.9])),
                 max_fanout=int(rng.integers(2, 12)),
                 bias=float(rng.choice([0.0, 1.0])), p_single=float(rng.choice([0.0, 0.3])))
    make = tie_model if seed % 2 else random_model
    model = make(rng, **shape)
    twin = without_chunks(model)
    for xi, xd in chunk_queries(rng, model.n_features):
        for beam in (1, 2, 5, 20):
            for topk in (1, 3, 10, model.n_labels):
                ranges = (None, (0, model.n_labels), (model.n_labels // 3, model.n_labels // 2 + 1))
                for rng_ in ranges:
                    for post in ("l3-hinge", "sigmoid"):
                        kw = dict(beam_size=beam, topk=topk, post_processor=post, label_range=rng_)
                        assert_bitwise(model.predict_one(xi, xd, **kw),
                                       twin.predict_one(xi, xd, **kw))
    X = sp.random(25, model.n_features, density=0.2, format="csr", random_state=seed,
                  dtype=np.float32)
    for beam, topk in ((3, 7), (10, 100)):
        a = model.predict_batch(X, beam_size=beam, topk=topk)
        b = twin.predict_batch(X, beam_size=beam, topk=topk)
        assert_bitwise(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_chunk_scores_equal_column_dot_per_cluster(seed):
    """Kernel twin: every leaf cluster's chunk scores equal _column_dot's bits, both the merge and
    the binary-search intersection (few query features against long chunks) exercised."""
    rng = np.random.default_rng(200 + seed)
    model = random_model(rng, depth=2, n_features=800, density=float(rng.choice([0.02, 0.5])),
                         max_fanout=9, p_single=0.0)
    nf = model.n_features
    p0, p1 = int(model.node_ptr[model.depth - 1]), int(model.node_ptr[model.depth])
    acc = np.zeros(model._acc_size)
    scratch = np.zeros(nf + 1, np.float32)
    scratch[nf] = model.bias
    for nnz in (1, 2, 8, 100, 800):
        xi, xd = random_query(rng, nf, nnz)
        scratch[xi] = xd
        for g in range(p0, p1):
            c0, c1 = int(model.child_ptr[g]), int(model.child_ptr[g + 1])
            _kernels._chunk_scores(g - p0, model.C_ptr, model.C_feat, model.C_row_ptr,
                                   model.C_label, model.C_data, xi, xd, nf,
                                   np.float64(scratch[nf]), acc)
            ref = [_kernels._column_dot(c, model.W_indptr, model.W_indices, model.W_data, scratch,
                                        xi, xd, True) for c in range(c0, c1)]
            np.testing.assert_array_equal(acc[: c1 - c0].view(np.uint64),
                                          np.array(ref).view(np.uint64))
            acc[:] = 0.0
        scratch[xi] = 0.0


def test_leaf_chunks_hold_exactly_the_last_level_weights():
    rng = np.random.default_rng(300)
    model = random_model(rng, depth=3, n_features=50, max_fanout=6)
    p0, p1 = int(model.node_ptr[model.depth - 1]), int(model.node_ptr[model.depth])
    leaf0 = int(model.node_ptr[model.depth])
    W = model.weights(model.depth).toarray()
    got = np.zeros_like(W)
    for k in range(p1 - p0):
        rows = range(model.C_ptr[k], model.C_ptr[k + 1])
        feats = model.C_feat[model.C_ptr[k]:model.C_ptr[k + 1]]
        assert np.all(np.diff(feats) > 0), "rows sorted by feature within a cluster"
        c0 = int(model.child_ptr[p0 + k]) - leaf0
        for r in rows:
            for q in range(model.C_row_ptr[r], model.C_row_ptr[r + 1]):
                got[model.C_feat[r], c0 + model.C_label[q]] += model.C_data[q]
    np.testing.assert_array_equal(got, W)
    assert model.C_label.dtype == np.int16 and model.C_row_ptr.dtype == np.int32
    assert model.chunk_nbytes == sum(a.nbytes for a in (model.C_ptr, model.C_feat, model.C_row_ptr,
                                                        model.C_label, model.C_data))


def test_non_finite_leaf_weights_keep_the_column_path():
    rng = np.random.default_rng(310)
    model = random_model(rng, depth=2, n_features=30, density=0.5, p_single=0.0)
    params, arrays = model.to_arrays()
    W_data = arrays["W_data"].copy()
    W_data[-1] = np.nan
    nan_model = XLinearModel.from_arrays(params, dict(arrays, W_data=W_data))
    # A NaN weight times a 0.0 query value is NaN on the column path.
    assert nan_model.C_ptr.size == 1


# ---------------------------------------------------------------------------------------------
# Persistence: read-only memory maps in, identical answers out
# ---------------------------------------------------------------------------------------------


def test_round_trip_through_read_only_memmaps(tmp_path):
    rng = np.random.default_rng(60)
    tree = random_tree(rng, 4, max_fanout=4)
    X, y = learnable_problem(rng, tree, n_features=50)
    model = XLinearModel.train(X, y, tree, TrainConfig())
    params, arrays = model.to_arrays()
    loaded = {}
    for key, arr in arrays.items():
        np.save(tmp_path / f"{key}.npy", arr, allow_pickle=False)
        loaded[key] = np.load(tmp_path / f"{key}.npy", mmap_mode="r")
    frozen = {k: v.copy() for k, v in loaded.items()}
    served = XLinearModel.from_arrays(params, loaded)
    served.warmup()
    assert not served.W_data.flags.writeable
    for r in range(0, X.shape[0], 5):
        x = X[r]
        for rng_ in (None, (2, 9)):
            a = model.predict_one(x.indices, x.data, label_range=rng_)
            b = served.predict_one(x.indices, x.data, label_range=rng_)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    for key, arr in loaded.items():
        np.testing.assert_array_equal(arr, frozen[key])
    for lev in range(1, model.depth + 1):
        assert (served.weights(lev) != model.weights(lev)).nnz == 0
        np.testing.assert_array_equal(served.level_child_ptr(lev - 1), tree.child_ptr[lev - 1])


def test_sorted_labels_and_level_layout():
    tree = make_tree([[0, 2], [0, 2, 3], [0, 1, 3, 5]], [4, 0, 3, 1, 2])
    node_ptr, gcp, perm, sorted_labels, _, spans = _flatten_tree(tree.child_ptr, tree.label_perm)
    np.testing.assert_array_equal(node_ptr, [0, 1, 3, 6, 11])
    np.testing.assert_array_equal(gcp, [1, 3, 5, 6, 7, 9, 11])
    np.testing.assert_array_equal(sorted_labels[0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(sorted_labels[1], [0, 3, 4, 1, 2])  # {4,0,3} | {1,2}
    np.testing.assert_array_equal(sorted_labels[2], [4, 0, 3, 1, 2])  # {4} | {0,3} | {1,2}
    np.testing.assert_array_equal(sorted_labels[3], [4, 0, 3, 1, 2])
    np.testing.assert_array_equal(spans[1], [0, 3, 5])
    np.testing.assert_array_equal(spans[2], [0, 1, 3, 5])


def test_scratch_stays_clean_after_errors():
    rng = np.random.default_rng(70)
    model = random_model(rng, depth=3)
    empty = (np.zeros(0, np.int32), np.zeros(0, np.float32))
    before = model.predict_one(*empty, topk=50, beam_size=50)
    with pytest.raises(ValueError, match="x_indices"):
        model.predict_one(np.array([1, 2, model.n_features], np.int32), np.ones(3, np.float32))
    model.predict_one(np.array([1, 2, 3], np.int32), np.ones(3, np.float32))
    after = model.predict_one(*empty, topk=50, beam_size=50)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


# ---------------------------------------------------------------------------------------------
# Invalid input tables
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("C", 0.0), ("C", -1.0), ("C", float("nan")), ("max_iter", 0), ("max_iter", 2.5),
    ("eps", 0.0), ("threshold", -0.1), ("bias", -1.0), ("n_threads", 0), ("n_threads", True),
    ("seed", -1),
])
def test_train_config_rejects(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


@pytest.fixture(scope="module")
def small_model():
    model = random_model(np.random.default_rng(80), depth=3, p_single=0.0)
    assert model.W_data.size > 0
    return model


@pytest.mark.parametrize("kwargs,message", [
    ({"beam_size": 0}, "beam_size"),
    ({"beam_size": 2.0}, "beam_size"),
    ({"topk": 0}, "topk"),
    ({"post_processor": "softmax"}, "post_processor"),
    ({"label_range": (1,)}, "label_range"),
    ({"label_range": (0.5, 3)}, "label_range"),
    ({"x_indices": [-1]}, "x_indices"),
    ({"x_indices": [0, 1]}, "same length"),
])
def test_predict_one_rejects(small_model, kwargs, message):
    args = {"x_indices": np.array([0], np.int32), "x_data": np.array([1.0], np.float32)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        small_model.predict_one(args.pop("x_indices"), args.pop("x_data"), **args)


def test_predict_batch_rejects(small_model):
    with pytest.raises(ValueError, match="X must be sparse"):
        small_model.predict_batch(sp.csr_matrix((2, small_model.n_features + 1)))
    with pytest.raises(ValueError, match="n_threads"):
        small_model.predict_batch(sp.csr_matrix((2, small_model.n_features)), n_threads=0)


@pytest.mark.parametrize("mutate,message", [
    (lambda p, a: p.update(format="xlinear/0"), "format"),
    (lambda p, a: a.pop("W_data"), "missing"),
    (lambda p, a: a.update(W_data=a["W_data"].astype(np.float64)), "W_data"),
    (lambda p, a: a.update(W_indices=a["W_indices"] + p["n_features"] + 1), "W_indices"),
    (lambda p, a: a.update(label_perm=a["label_perm"][:-1]), "label_perm"),
    (lambda p, a: a.update(child_ptr=a["child_ptr"][::-1].copy()), "child_ptr"),
    (lambda p, a: p.update(depth=p["depth"] + 1), "node_ptr"),
])
def test_from_arrays_rejects(small_model, mutate, message):
    params, arrays = small_model.to_arrays()
    arrays = dict(arrays)
    mutate(params, arrays)
    with pytest.raises(ValueError, match=message):
        XLinearModel.from_arrays(params, arrays)


@pytest.mark.parametrize("tree,y,message", [
    (make_tree([], []), [0], "depth"),
    (make_tree([[0, 2], [0, 1, 1]], [0]), [0], r"child_ptr\[1\]"),
    (make_tree([[0, 2]], [0, 0]), [0], "label_perm"),
    (make_tree([[0, 2]], [1, 0]), [2], "y must hold"),
    (make_tree([[0, 2]], [1, 0]), [0, 1], "shape"),
])
def test_train_rejects(tree, y, message):
    X = sp.csr_matrix(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=message):
        XLinearModel.train(X, np.array(y, dtype=np.int32), tree, TrainConfig())


def test_level_seed_is_stable():
    assert _level_seed(0, 1) != _level_seed(0, 2) != _level_seed(1, 1)
    assert _level_seed(3, 4) == _level_seed(3, 4)
