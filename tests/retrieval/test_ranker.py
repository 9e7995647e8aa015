"""Ranker: exported ensembles equal scikit-learn's predict; LambdaMART learns; persistence; bad input."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from retrieval.ranker import (
    LinearRanker, Ranker, RankerConfig, float32_floor, group_ptr_from_sizes, mrr_at_k, ndcg_at_k,
)


def _synthetic(seed=0, n_groups=120, size=8, n_features=6):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_groups * size, n_features)).astype(np.float32)
    y = np.clip(np.round(1.5 * X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(0, 0.3, len(X)) + 1), 0, 3)
    return X, y.astype(np.float64), group_ptr_from_sizes([size] * n_groups)


def test_hgb_export_equals_sklearn_predict_with_missing_values():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = np.nan_to_num(X[:, 0]) * 2 + np.isnan(X[:, 1]) + rng.normal(0, 0.1, 2000)
    model = HistGradientBoostingRegressor(max_iter=60, max_leaf_nodes=15, random_state=0,
                                          early_stopping=False).fit(X.astype(np.float32), y)
    r = Ranker()
    r._load_hgb(model)
    Xt = rng.normal(size=(3000, 5)).astype(np.float32)
    Xt[rng.random(Xt.shape) < 0.15] = np.nan
    np.testing.assert_allclose(r.score(Xt), model.predict(Xt).astype(np.float32), rtol=0, atol=1e-5)


def _score_twin(r: Ranker, X: np.ndarray) -> np.ndarray:
    """Slow exact twin of ``Ranker.score``: walk every tree in Python, comparing in float64."""
    out = np.full(X.shape[0], r.baseline, dtype=np.float64)
    for i in range(X.shape[0]):
        for t in range(r.n_trees):
            node = int(r.tree_ptr[t])
            while r.node_feature[node] >= 0:
                x = float(X[i, r.node_feature[node]])
                left = r.node_missing_left[node] != 0 if np.isnan(x) else x <= r.node_threshold[node]
                node = int(r.node_left[node] if left else r.node_right[node])
            out[i] += r.node_value[node]
    return out.astype(np.float32)


def test_float32_floor_keeps_every_float64_decision():
    rng = np.random.default_rng(0)
    x32 = np.concatenate([rng.normal(size=300).astype(np.float32), np.float32([0.0, -0.0, 1e-45, 3.4e38, -3.4e38]),
                          np.float32([np.inf, -np.inf])])
    near = x32[np.isfinite(x32)].astype(np.float64)
    t = np.concatenate([near, near + np.abs(near) * 1e-9, near - np.abs(near) * 1e-9,  # just above / below
                        np.nextafter(near, np.inf), np.nextafter(near, -np.inf),
                        (near[:-1] + near[1:]) / 2, [1e300, -1e300, np.inf, -np.inf, np.nan]])
    f = float32_floor(t)
    assert f.dtype == np.float32 and f.shape == t.shape
    want = x32.astype(np.float64)[:, None] <= t[None, :]
    np.testing.assert_array_equal(x32[:, None] <= f[None, :], want)


@pytest.mark.parametrize("seed", range(4))
def test_score_kernel_equals_float64_walk(seed):
    """The float32-threshold kernel takes every decision of the float64 walk, NaNs included, also for
    thresholds equal to feature values and one float32 step either side of them."""
    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(size=(1500, 5)), 1).astype(np.float32)  # many ties
    X[rng.random(X.shape) < 0.1] = np.nan
    y = np.nan_to_num(X[:, 0]) * 2 + np.isnan(X[:, 1]) + rng.normal(0, 0.1, 1500)
    model = HistGradientBoostingRegressor(max_iter=30, max_leaf_nodes=15, random_state=seed,
                                          early_stopping=False).fit(X, y)
    r = Ranker()
    r._load_hgb(model)
    params, arrays = r.to_arrays()
    inner = arrays["node_feature"] >= 0
    values = X[~np.isnan(X)].astype(np.float64)
    pick = rng.choice(values, size=int(inner.sum()))
    step = rng.integers(-1, 2, size=pick.size)  # the value itself, or the float64 just below / above it
    thr = np.where(step == 0, pick, np.where(step < 0, np.nextafter(pick, -np.inf), np.nextafter(pick, np.inf)))
    arrays["node_threshold"] = arrays["node_threshold"].copy()
    arrays["node_threshold"][inner] = np.where(rng.random(pick.size) < 0.5, thr, arrays["node_threshold"][inner])
    r2 = Ranker.from_arrays(params, arrays)
    Xt = np.concatenate([X[:400], np.round(rng.normal(size=(200, 5)), 1).astype(np.float32)])
    np.testing.assert_array_equal(r2.score(Xt), _score_twin(r2, Xt))
    np.testing.assert_array_equal(r.score(Xt), _score_twin(r, Xt))


def test_fit_regression_equals_sklearn_and_round_trips():
    X, y, gp = _synthetic()
    cfg = RankerConfig(objective="regression", n_trees=40, max_leaf_nodes=7, min_samples_leaf=5)
    r = Ranker(cfg).fit(X, y, gp)
    ref = HistGradientBoostingRegressor(max_iter=40, max_leaf_nodes=7, min_samples_leaf=5, learning_rate=0.05,
                                        early_stopping=False, random_state=0).fit(X, y)
    Xt = np.random.default_rng(5).normal(size=(500, X.shape[1])).astype(np.float32)
    np.testing.assert_allclose(r.score(Xt), ref.predict(Xt), rtol=0, atol=1e-5)
    params, arrays = r.to_arrays()
    for a in arrays.values():
        a.setflags(write=False)
    r2 = Ranker.from_arrays(params, arrays)
    r2.warmup()
    np.testing.assert_array_equal(r2.score(Xt), r.score(Xt))


def test_lambdarank_export_equals_its_training_scores_and_beats_random():
    X, y, gp = _synthetic(1)
    r = Ranker(RankerConfig(objective="lambdarank", n_trees=30, learning_rate=0.2, max_leaf_nodes=7,
                            min_samples_leaf=5)).fit(X, y, gp)
    Xt, yt, gpt = _synthetic(2)
    learned = ndcg_at_k(r.score(Xt), yt, gpt)[0]
    random = ndcg_at_k(np.random.default_rng(0).random(len(yt)), yt, gpt)[0]
    oracle = ndcg_at_k(yt, yt, gpt)[0]
    assert oracle == pytest.approx(1.0)
    assert learned > random + 0.1


def test_linear_ranker_learns_and_round_trips():
    X, y, gp = _synthetic(3)
    lin = LinearRanker().fit(X, y, gp)
    Xt, yt, gpt = _synthetic(4)
    random = ndcg_at_k(np.random.default_rng(0).random(len(yt)), yt, gpt)[0]
    assert ndcg_at_k(lin.score(Xt), yt, gpt)[0] > random + 0.1
    params, arrays = lin.to_arrays()
    np.testing.assert_array_equal(LinearRanker.from_arrays(params, arrays).score(Xt), lin.score(Xt))


def test_ndcg_and_mrr_by_hand():
    gp = np.array([0, 3, 5], dtype=np.int64)
    gains = np.array([0.0, 2.0, 1.0, 0.0, 0.0])
    scores = np.array([3.0, 2.0, 1.0, 1.0, 1.0])
    dcg = 2 / np.log2(3) + 1 / np.log2(4)
    idcg = 2 + 1 / np.log2(3)
    value, n = ndcg_at_k(scores, gains, gp)
    assert n == 1 and value == pytest.approx(dcg / idcg)
    # ties broken by item id ascending
    assert ndcg_at_k(np.zeros(2), np.array([0.0, 1.0]), np.array([0, 2]), item_ids=np.array([5, 3]))[0] == 1.0
    mrr, n = mrr_at_k(scores, np.array([0, 1, 0, 0, 0]), gp)
    assert n == 2 and mrr == pytest.approx(0.25)


@pytest.mark.parametrize("kwargs, field", [
    ({"objective": "pointwise"}, "objective"), ({"n_trees": 0}, "n_trees"),
    ({"max_leaf_nodes": 1}, "max_leaf_nodes"), ({"min_samples_leaf": 0}, "min_samples_leaf"),
    ({"learning_rate": 0.0}, "learning_rate"), ({"learning_rate": 1.5}, "learning_rate"),
    ({"max_depth": -1}, "max_depth"), ({"l2_regularization": -1.0}, "l2_regularization"),
    ({"sigma": 0.0}, "sigma"), ({"ndcg_k": 0}, "ndcg_k"),
])
def test_invalid_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RankerConfig(**kwargs)


@pytest.mark.parametrize("args, message", [
    ((np.zeros((0, 2)), np.zeros(0), np.array([0])), "features must be a non-empty"),
    ((np.zeros((3, 2)), np.zeros(2), np.array([0, 3])), "labels must have shape"),
    ((np.zeros((3, 2)), np.zeros(3), np.array([0, 2])), "group_ptr"),
    ((np.zeros((3, 2)), np.zeros(3), np.array([1, 3])), "group_ptr"),
    ((np.zeros((3, 2)), np.zeros(3), np.array([0, 2, 1, 3])), "group_ptr"),
])
def test_invalid_fit_input(args, message):
    with pytest.raises(ValueError, match=message):
        Ranker().fit(*args)


def test_invalid_score_input_and_arrays():
    X, y, gp = _synthetic(n_groups=10)
    r = Ranker(RankerConfig(n_trees=3, min_samples_leaf=5)).fit(X, y, gp)
    with pytest.raises(ValueError, match="features must have shape"):
        r.score(np.zeros((2, X.shape[1] + 1), np.float32))
    params, arrays = r.to_arrays()
    bad = dict(arrays)
    bad["node_left"] = arrays["node_left"].copy()
    inner = np.nonzero(arrays["node_feature"] >= 0)[0][0]
    bad["node_left"][inner] = inner  # a cycle
    with pytest.raises(ValueError, match="point forward"):
        Ranker.from_arrays(params, bad)
    with pytest.raises(ValueError, match="n_trees"):
        Ranker.from_arrays({**params, "n_trees": params["n_trees"] + 1}, arrays)


def _tiny_catalog_and_judgments(seed=0):
    from retrieval.catalog import Catalog, Judgment

    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(300)]
    catalog = Catalog([str(i) for i in range(300)], texts)
    judgments = []
    for qi in range(150):
        query = " ".join(rng.choice(words, size=2))
        for item in rng.choice(300, size=6, replace=False).tolist():
            overlap = len(set(query.split()) & set(texts[item].split()))
            judgments.append(Judgment(query, str(item), float(min(3.0, 1.0 + overlap + rng.random()))))
    return catalog, judgments


def test_build_homedepot_ranker_smoke():
    from retrieval.ranker import build_homedepot_ranker

    catalog, judgments = _tiny_catalog_and_judgments()
    grid = (RankerConfig(n_trees=20, max_leaf_nodes=7, min_samples_leaf=5),
            RankerConfig(objective="lambdarank", n_trees=10, max_leaf_nodes=7, min_samples_leaf=5, gain_offset=1.0))
    ranker, index, report = build_homedepot_ranker(catalog, judgments, grid=grid, n_folds=3)
    assert index.n_items == 300
    assert report["item_stats"].shape == (300, 3)
    assert ranker.n_features == len(report["feature_names"])
    assert report["test"]["ranker"] > 0.5 and report["test"]["bm25"] > 0.5
    assert set(report["n_queries"]) == {"fit", "dev", "test"}


def test_build_homedepot_ranker_chooses_linear_by_dev_ndcg():
    from retrieval.ranker import LinearRanker, build_homedepot_ranker

    catalog, judgments = _tiny_catalog_and_judgments()
    grid = (RankerConfig(n_trees=5, max_leaf_nodes=3, min_samples_leaf=5),)
    ranker, _, report = build_homedepot_ranker(catalog, judgments, grid=grid, n_folds=3, allow_linear=True)
    linear_wins = report["dev"]["linear"] >= report["dev"]["best"]["ndcg@10"]
    assert report["chosen"] == ("linear" if linear_wins else "trees")
    assert isinstance(ranker, LinearRanker) == linear_wins
    assert ranker.n_features == len(report["feature_names"])
    _, _, no_linear = build_homedepot_ranker(catalog, judgments, grid=grid, n_folds=3)
    assert no_linear["chosen"] == "trees"


def test_build_aol_ranker_smoke():
    from retrieval.catalog import Catalog, ClickEvent
    from retrieval.ranker import build_aol_ranker

    rng = np.random.default_rng(0)
    keys = [f"site{i} com" for i in range(30)]
    catalog = Catalog([k.replace(" ", ".") for k in keys], keys)
    events = [ClickEvent(f"u{t % 7}", f"site{(t * 7) % 30}", t, catalog.keys[(t * 7) % 30] if rng.random() < 0.8
                         else catalog.keys[int(rng.integers(30))]) for t in range(600)]
    ranker, index, report = build_aol_ranker(catalog, events, budget=10, n_popular=5,
                                             config=RankerConfig(n_trees=10, min_samples_leaf=5))
    assert report["n_events"]["test"] == 120
    assert report["test_mrr@10"]["ranker"] > report["test_mrr@10"]["popularity"]
    assert report["test_mrr@10"]["bm25"] > 0.5
