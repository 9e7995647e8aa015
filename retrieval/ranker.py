"""Learned ranker over the candidate union: gradient-boosted trees served from flat arrays.

Training (offline, scikit-learn allowed) and serving (numba only) are split:

* :meth:`Ranker.fit` trains a tree ensemble, either pointwise on graded labels with scikit-learn's
  ``HistGradientBoostingRegressor`` (``objective="regression"``) or with LambdaMART (Burges,
  "From RankNet to LambdaRank to LambdaMART: An Overview", MSR-TR-2010-82, Sec. 7:
  ``DecisionTreeRegressor`` fitted to the LambdaRank gradients of NDCG@k, Newton leaf values,
  ``objective="lambdarank"``). Either way the fitted trees are exported to flat node arrays.
* :meth:`Ranker.score` walks those arrays in a numba kernel (``_ranker_kernels.ensemble_score``):
  no scikit-learn on the request path. The exported ensemble equals scikit-learn's ``predict``
  (tests check it to 1e-5).

:class:`LinearRanker` is the linear baseline (pairwise logistic regression on standardised
features, RankSVM-style pairs: Herbrich et al., 1999; Joachims, KDD 2002).

:func:`build_homedepot_ranker` and :func:`build_aol_ranker` turn graded judgments or click logs into
(ranker, text index, report); both build their feature rows with
:func:`retrieval.ranker_features.candidate_features`, the function the Search pipeline calls.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from retrieval.arms.base import Context
from retrieval import _ranker_kernels as K
from retrieval.ranker_features import (
    ITEM_STAT_NAMES, ItemTextIndex, arm_score_matrix, candidate_features, feature_names, item_stats_from_pairs,
    ranker_text_names,
)

__all__ = [
    "RankerConfig", "Ranker", "LinearRanker", "ndcg_at_k", "mrr_at_k", "group_ptr_from_sizes",
    "build_homedepot_ranker", "build_aol_ranker", "homedepot_groups",
]

_OBJECTIVES = ("regression", "lambdarank")


@dataclass(frozen=True)
class RankerConfig:
    """Hyperparameters of :class:`Ranker` (the only place their defaults live).

    objective : "regression" (HistGradientBoostingRegressor on the labels) or "lambdarank".
    n_trees : boosting iterations. learning_rate : shrinkage. max_leaf_nodes, min_samples_leaf,
    max_depth (0 = unlimited): tree shape. l2_regularization : HGB only. sigma, ndcg_k : LambdaRank
    sigmoid steepness and truncation. gain_offset : lambdarank gain = label - gain_offset (linear,
    clipped at 0) -- the Home Depot metric's gain is ``grade - 1``. seed : RNG seed.
    """

    objective: str = "regression"
    n_trees: int = 200
    learning_rate: float = 0.05
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 40
    max_depth: int = 0
    l2_regularization: float = 0.0
    sigma: float = 1.0
    ndcg_k: int = 10
    gain_offset: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        for name in ("n_trees", "max_leaf_nodes", "min_samples_leaf", "ndcg_k"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.max_leaf_nodes < 2:
            raise ValueError(f"max_leaf_nodes must be >= 2, got {self.max_leaf_nodes}")
        if not isinstance(self.max_depth, int) or self.max_depth < 0:
            raise ValueError(f"max_depth must be an int >= 0, got {self.max_depth!r}")
        if not (0.0 < self.learning_rate <= 1.0):
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        if not (self.l2_regularization >= 0.0):
            raise ValueError(f"l2_regularization must be >= 0, got {self.l2_regularization}")
        if not (self.sigma > 0.0):
            raise ValueError(f"sigma must be > 0, got {self.sigma}")


def group_ptr_from_sizes(sizes: Sequence[int]) -> np.ndarray:
    """int64 ``group_ptr`` (n_groups + 1,) from group sizes."""
    ptr = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(np.asarray(sizes, dtype=np.int64), out=ptr[1:])
    return ptr


def _check_fit_inputs(features, labels, group_ptr):
    X = np.asarray(features, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"features must be a non-empty 2-d array, got shape {X.shape}")
    y = np.asarray(labels, dtype=np.float64)
    if y.shape != (X.shape[0],):
        raise ValueError(f"labels must have shape ({X.shape[0]},), got {y.shape}")
    gp = np.asarray(group_ptr, dtype=np.int64)
    if gp.ndim != 1 or gp.size < 2 or gp[0] != 0 or gp[-1] != X.shape[0] or np.any(np.diff(gp) < 0):
        raise ValueError("group_ptr must be non-decreasing from 0 to n_rows")
    return X, y, gp


def float32_floor(t: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 threshold, float32 of ``t``'s shape.

    For every float32 ``x``: ``float64(x) <= t`` exactly when ``x <= float32_floor(t)`` (the largest
    float32 not above ``t`` bounds every float32 that is not above it), so a tree walk may compare
    float32 features with these instead of converting each feature to float64. ``t`` beyond the
    float32 range gives the largest finite float32 (or ``-inf``); NaN stays NaN (never ``<=``).
    """
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore"):
        f = t.astype(np.float32)  # round to nearest: may land above t
    above = f.astype(np.float64) > t
    f[above] = np.nextafter(f[above], np.float32(-np.inf))
    return f


class Ranker:
    """Tree-ensemble ranker stored as flat arrays and scored by a numba kernel.

    Arrays (all trees' nodes concatenated; tree ``t`` = nodes ``tree_ptr[t]:tree_ptr[t+1]``, root
    first): ``node_feature`` int32 (-1 = leaf), ``node_threshold`` float64 (go left when
    ``x <= threshold``), ``node_left`` / ``node_right`` int32 (global node ids), ``node_value``
    float64 (leaf output, shrinkage included), ``node_missing_left`` uint8 (NaN goes left), and
    ``tree_ptr`` int64. ``score(x) = baseline + sum of the leaf values``.
    """

    def __init__(self, config: RankerConfig = RankerConfig(), n_features: int = 0):
        self.config = config
        self.n_features = int(n_features)
        self.baseline = 0.0
        self.tree_ptr = np.zeros(1, dtype=np.int64)
        self.node_feature = np.zeros(0, dtype=np.int32)
        self.node_threshold = np.zeros(0, dtype=np.float64)
        self.node_left = np.zeros(0, dtype=np.int32)
        self.node_right = np.zeros(0, dtype=np.int32)
        self.node_value = np.zeros(0, dtype=np.float64)
        self.node_missing_left = np.zeros(0, dtype=np.uint8)
        self._threshold32 = np.zeros(0, dtype=np.float32)  # float32_floor(node_threshold), what score() compares

    @property
    def n_trees(self) -> int:
        return len(self.tree_ptr) - 1

    @property
    def n_nodes(self) -> int:
        return len(self.node_feature)

    # -- training ---------------------------------------------------------------------------
    def fit(self, features: np.ndarray, labels: np.ndarray, group_ptr: np.ndarray) -> "Ranker":
        """Train on query groups.

        Parameters
        ----------
        features : float32 array of shape (n, f), rows of a group contiguous.
        labels : float array of shape (n,), graded relevance or 0/1 clicks.
        group_ptr : int64 array of shape (n_groups + 1,), group g = rows ``group_ptr[g]:group_ptr[g+1]``
            (ignored by ``objective="regression"``).

        Raises
        ------
        ValueError
            On inconsistent shapes or a ``group_ptr`` that does not partition the rows.
        """
        X, y, gp = _check_fit_inputs(features, labels, group_ptr)
        self.n_features = X.shape[1]
        if self.config.objective == "regression":
            self._fit_hgb(X, y)
        else:
            self._fit_lambdarank(X, y, gp)
        return self

    def _fit_hgb(self, X, y):
        from sklearn.ensemble import HistGradientBoostingRegressor

        c = self.config
        model = HistGradientBoostingRegressor(
            loss="squared_error", learning_rate=c.learning_rate, max_iter=c.n_trees,
            max_leaf_nodes=c.max_leaf_nodes, min_samples_leaf=c.min_samples_leaf,
            max_depth=c.max_depth or None, l2_regularization=c.l2_regularization,
            early_stopping=False, random_state=c.seed)
        model.fit(X, y)
        self._load_hgb(model)

    def _load_hgb(self, model) -> None:
        """Export a fitted ``HistGradientBoostingRegressor`` (squared error) to the flat arrays."""
        baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
        if baseline.size != 1:
            raise ValueError("only single-output HistGradientBoosting models can be exported")
        self.baseline = float(baseline[0])
        self.n_features = int(model.n_features_in_)
        trees = []
        for stage in model._predictors:
            nodes = stage[0].nodes
            if np.any(nodes["is_categorical"]):
                raise ValueError("categorical splits are not supported by the exported ranker")
            leaf = nodes["is_leaf"].astype(bool)
            trees.append((np.where(leaf, -1, nodes["feature_idx"]), nodes["num_threshold"],
                          nodes["left"].astype(np.int64), nodes["right"].astype(np.int64),
                          nodes["value"], nodes["missing_go_to_left"]))
        self._set_trees(trees)

    def _set_trees(self, trees) -> None:
        sizes = [len(t[0]) for t in trees]
        self.tree_ptr = group_ptr_from_sizes(sizes)
        offs = self.tree_ptr[:-1]
        if trees:
            self.node_feature = np.concatenate([t[0] for t in trees]).astype(np.int32)
            self.node_threshold = np.concatenate([t[1] for t in trees]).astype(np.float64)
            leaf = self.node_feature < 0
            self.node_left = np.concatenate([t[2] + o for t, o in zip(trees, offs)]).astype(np.int32)
            self.node_right = np.concatenate([t[3] + o for t, o in zip(trees, offs)]).astype(np.int32)
            self.node_left[leaf] = -1
            self.node_right[leaf] = -1
            self.node_value = np.concatenate([t[4] for t in trees]).astype(np.float64)
            self.node_missing_left = np.concatenate([t[5] for t in trees]).astype(np.uint8)
        self._validate()
        self._threshold32 = float32_floor(self.node_threshold)

    def _fit_lambdarank(self, X, y, gp):
        from sklearn.tree import DecisionTreeRegressor

        c = self.config
        gains = np.maximum(y - c.gain_offset, 0.0)
        n = X.shape[0]
        scores = np.zeros(n, dtype=np.float64)
        grad = np.zeros(n, dtype=np.float64)
        hess = np.zeros(n, dtype=np.float64)
        trees = []
        self.baseline = 0.0
        for it in range(c.n_trees):
            K.lambdarank_gradients(scores, gains, gp, c.sigma, c.ndcg_k, grad, hess)
            tree = DecisionTreeRegressor(max_leaf_nodes=c.max_leaf_nodes, min_samples_leaf=c.min_samples_leaf,
                                         max_depth=c.max_depth or None, random_state=c.seed + it)
            tree.fit(X, grad)
            t = tree.tree_
            leaf_of = tree.apply(X)
            g_sum = np.bincount(leaf_of, weights=grad, minlength=t.node_count)
            h_sum = np.bincount(leaf_of, weights=hess, minlength=t.node_count)
            value = np.where(h_sum > 1e-12, g_sum / np.maximum(h_sum, 1e-12), 0.0) * c.learning_rate
            is_leaf = t.children_left < 0
            value = np.where(is_leaf, value, 0.0)
            missing_left = getattr(t, "missing_go_to_left", np.zeros(t.node_count, dtype=np.uint8))
            trees.append((np.where(is_leaf, -1, t.feature), t.threshold.astype(np.float64),
                          t.children_left.astype(np.int64), t.children_right.astype(np.int64),
                          value, np.asarray(missing_left, dtype=np.uint8)))
            scores += value[leaf_of]
        self._set_trees(trees)

    def _validate(self) -> None:
        n = self.n_nodes
        arrays = (self.node_threshold, self.node_left, self.node_right, self.node_value, self.node_missing_left)
        if any(len(a) != n for a in arrays):
            raise ValueError("node arrays must all have n_nodes entries")
        if self.tree_ptr[0] != 0 or self.tree_ptr[-1] != n or np.any(np.diff(self.tree_ptr) < 1):
            raise ValueError("tree_ptr must partition the nodes into non-empty trees")
        inner = self.node_feature >= 0
        if np.any(self.node_feature[inner] >= max(self.n_features, 1)):
            raise ValueError("node_feature out of range")
        tree_of = np.repeat(np.arange(self.n_trees), np.diff(self.tree_ptr))
        for child in (self.node_left, self.node_right):
            c = child[inner]
            if np.any(c < 0) or np.any(c >= n):
                raise ValueError("child ids out of range")
            # Children lie in the same tree and after their parent, so every walk ends at a leaf.
            if np.any(tree_of[c] != tree_of[inner]) or np.any(c <= np.nonzero(inner)[0]):
                raise ValueError("child ids must point forward inside the same tree")

    # -- serving ----------------------------------------------------------------------------
    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores (float32, shape (m,)) of feature rows ``(m, n_features)``; higher ranks first.

        Raises
        ------
        ValueError
            When ``features`` is not 2-d with ``n_features`` columns.
        """
        X = features if isinstance(features, np.ndarray) and features.dtype == np.float32 else np.asarray(features, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"features must have shape (m, {self.n_features}), got {X.shape}")
        out = np.empty(X.shape[0], dtype=np.float64)
        K.ensemble_score(X, self.tree_ptr, self.node_feature, self._threshold32, self.node_left,
                         self.node_right, self.node_value, self.node_missing_left, self.baseline, out)
        return out.astype(np.float32)

    def warmup(self) -> None:
        """Compile the scoring kernel for the served (possibly read-only) arrays."""
        self.score(np.zeros((1, self.n_features), dtype=np.float32))

    # -- persistence ------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        params = {"config": asdict(self.config), "n_features": self.n_features, "baseline": self.baseline,
                  "n_trees": self.n_trees}
        arrays = {"tree_ptr": self.tree_ptr, "node_feature": self.node_feature,
                  "node_threshold": self.node_threshold, "node_left": self.node_left,
                  "node_right": self.node_right, "node_value": self.node_value,
                  "node_missing_left": self.node_missing_left}
        return params, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "Ranker":
        r = cls(RankerConfig(**params["config"]), params["n_features"])
        r.baseline = float(params["baseline"])
        r.tree_ptr = np.asarray(arrays["tree_ptr"], dtype=np.int64)
        r.node_feature = np.asarray(arrays["node_feature"], dtype=np.int32)
        r.node_threshold = np.asarray(arrays["node_threshold"], dtype=np.float64)
        r.node_left = np.asarray(arrays["node_left"], dtype=np.int32)
        r.node_right = np.asarray(arrays["node_right"], dtype=np.int32)
        r.node_value = np.asarray(arrays["node_value"], dtype=np.float64)
        r.node_missing_left = np.asarray(arrays["node_missing_left"], dtype=np.uint8)
        r._validate()
        r._threshold32 = float32_floor(r.node_threshold)
        if r.n_trees != params["n_trees"]:
            raise ValueError(f"n_trees: params say {params['n_trees']}, arrays hold {r.n_trees}")
        return r


class LinearRanker:
    """Pairwise logistic-regression ranker: ``score(x) = w . (x - mean) / scale``.

    Trained on the differences of every pair in a group with different labels (both orientations,
    at most ``max_pairs`` sampled), L2-regularised with ``C``.
    """

    def __init__(self, C: float = 1.0, max_pairs: int = 400_000, seed: int = 0):
        if not (C > 0):
            raise ValueError(f"C must be > 0, got {C}")
        self.C = float(C)
        self.max_pairs = int(max_pairs)
        self.seed = int(seed)
        self.mean = np.zeros(0, dtype=np.float32)
        self.scale = np.ones(0, dtype=np.float32)
        self.weights = np.zeros(0, dtype=np.float32)

    @property
    def n_features(self) -> int:
        return len(self.weights)

    def fit(self, features: np.ndarray, labels: np.ndarray, group_ptr: np.ndarray) -> "LinearRanker":
        from sklearn.linear_model import LogisticRegression

        X, y, gp = _check_fit_inputs(features, labels, group_ptr)
        mean = X.mean(axis=0, dtype=np.float64)
        scale = X.std(axis=0, dtype=np.float64)
        scale[scale < 1e-12] = 1.0
        Z = (X - mean) / scale
        hi_idx, lo_idx = [], []
        for g in range(len(gp) - 1):
            a, b = int(gp[g]), int(gp[g + 1])
            if b - a < 2:
                continue
            yy = y[a:b]
            i, j = np.nonzero(yy[:, None] > yy[None, :])
            hi_idx.append(i + a)
            lo_idx.append(j + a)
        if not hi_idx or sum(len(h) for h in hi_idx) == 0:
            raise ValueError("labels must differ inside at least one group")
        hi = np.concatenate(hi_idx)
        lo = np.concatenate(lo_idx)
        rng = np.random.default_rng(self.seed)
        if hi.size > self.max_pairs:
            keep = rng.choice(hi.size, self.max_pairs, replace=False)
            hi, lo = hi[keep], lo[keep]
        D = Z[hi] - Z[lo]
        flip = rng.random(D.shape[0]) < 0.5
        D[flip] *= -1.0
        t = (~flip).astype(np.int64)
        model = LogisticRegression(C=self.C, fit_intercept=False, max_iter=1000)
        model.fit(D, t)
        self.mean = mean.astype(np.float32)
        self.scale = scale.astype(np.float32)
        self.weights = model.coef_.ravel().astype(np.float32)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        X = np.asarray(features, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"features must have shape (m, {self.n_features}), got {X.shape}")
        return ((X - self.mean) / self.scale) @ self.weights

    def warmup(self) -> None:
        self.score(np.zeros((1, self.n_features), dtype=np.float32))

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        return ({"C": self.C, "max_pairs": self.max_pairs, "seed": self.seed},
                {"mean": self.mean, "scale": self.scale, "weights": self.weights})

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "LinearRanker":
        r = cls(params["C"], params["max_pairs"], params["seed"])
        r.mean = np.asarray(arrays["mean"], dtype=np.float32)
        r.scale = np.asarray(arrays["scale"], dtype=np.float32)
        r.weights = np.asarray(arrays["weights"], dtype=np.float32)
        if not (len(r.mean) == len(r.scale) == len(r.weights)):
            raise ValueError("mean, scale and weights must have the same length")
        return r


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _order(scores: np.ndarray, item_ids: np.ndarray | None) -> np.ndarray:
    # Descending score, ties by item id ascending (the arms' tie rule), else by position.
    tie = item_ids if item_ids is not None else np.arange(len(scores))
    return np.lexsort((tie, -np.asarray(scores, dtype=np.float64)))


def ndcg_at_k(scores: np.ndarray, gains: np.ndarray, group_ptr: np.ndarray, k: int = 10,
              item_ids: np.ndarray | None = None) -> tuple[float, int]:
    """Mean NDCG@k over groups (Jarvelin & Kekalainen, TOIS 2002), linear gain, log2(rank+1) discount.

    Each group is ranked by ``scores`` descending (ties by ``item_ids`` ascending, else position),
    the ideal ranking by ``gains``. Groups whose ideal DCG is 0 (nothing relevant) are skipped.
    Returns ``(mean_ndcg, n_groups_counted)``.
    """
    total, n = 0.0, 0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for g in range(len(group_ptr) - 1):
        a, b = int(group_ptr[g]), int(group_ptr[g + 1])
        gg = np.asarray(gains[a:b], dtype=np.float64)
        ideal = np.sort(gg)[::-1][:k]
        idcg = float(ideal @ disc[:ideal.size])
        if idcg <= 0.0:
            continue
        order = _order(scores[a:b], None if item_ids is None else item_ids[a:b])[:k]
        total += float(gg[order] @ disc[:order.size]) / idcg
        n += 1
    return (total / n if n else 0.0), n


def mrr_at_k(scores: np.ndarray, labels: np.ndarray, group_ptr: np.ndarray, k: int = 10,
             item_ids: np.ndarray | None = None) -> tuple[float, int]:
    """Mean reciprocal rank of the first positive (label > 0) in the top k, over all groups."""
    total, n = 0.0, 0
    for g in range(len(group_ptr) - 1):
        a, b = int(group_ptr[g]), int(group_ptr[g + 1])
        order = _order(scores[a:b], None if item_ids is None else item_ids[a:b])[:k]
        hits = np.nonzero(np.asarray(labels[a:b])[order] > 0)[0]
        total += 1.0 / (hits[0] + 1) if hits.size else 0.0
        n += 1
    return (total / n if n else 0.0), n


# ---------------------------------------------------------------------------------------------
# Training data: Home Depot judgments
# ---------------------------------------------------------------------------------------------


def _arm_score_matrix(arms, query, item_ids, budget, context):
    """(m, n_arms) scores of ``item_ids`` in every arm's top ``budget`` (0 when absent)."""
    if not arms:
        return np.zeros((len(item_ids), 0), dtype=np.float32)
    from retrieval.arms.base import EMPTY_CONTEXT

    context = EMPTY_CONTEXT if context is None else context
    lists = [arm.retrieve(query, context, budget) for arm in arms]
    return arm_score_matrix([ids for ids, _ in lists], [sc for _, sc in lists], item_ids)


@dataclass
class _Groups:
    """Query groups of candidate rows (item ids, labels) in one flat layout."""

    queries: list
    item_ids: np.ndarray
    labels: np.ndarray
    group_ptr: np.ndarray

    def subset(self, groups: np.ndarray) -> "_Groups":
        sizes = np.diff(self.group_ptr)[groups]
        rows = np.concatenate([np.arange(self.group_ptr[g], self.group_ptr[g + 1]) for g in groups]) \
            if len(groups) else np.zeros(0, dtype=np.int64)
        return _Groups([self.queries[g] for g in groups], self.item_ids[rows], self.labels[rows],
                       group_ptr_from_sizes(sizes))


def homedepot_groups(judgments, catalog) -> _Groups:
    """Group judgments by query (first-seen order); drops judgments of items not in the catalogue."""
    by_q: dict[str, list] = {}
    for j in judgments:
        iid = catalog.id_of(j.item_key)
        if iid is None:
            continue
        by_q.setdefault(j.query, []).append((iid, j.grade))
    queries = list(by_q)
    sizes = [len(by_q[q]) for q in queries]
    item_ids = np.array([i for q in queries for i, _ in by_q[q]], dtype=np.int32)
    labels = np.array([g for q in queries for _, g in by_q[q]], dtype=np.float64)
    return _Groups(queries, item_ids, labels, group_ptr_from_sizes(sizes))


def _features_for(groups: _Groups, text_index, item_stats, arms=(), budget=100, context=None, pair_model=None):
    blocks = []
    for g, q in enumerate(groups.queries):
        ids = groups.item_ids[groups.group_ptr[g]:groups.group_ptr[g + 1]]
        arm_scores = _arm_score_matrix(arms, q, ids, budget, context)
        blocks.append(candidate_features(q, ids, arm_scores, text_index, item_stats, pair_model=pair_model))
    return np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32)


def _split_groups(n_groups: int, test_fraction: float, seed: int):
    perm = np.random.default_rng(seed).permutation(n_groups)
    n_test = int(round(n_groups * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _stats_of(groups: _Groups, n_items: int, use_labels: bool) -> np.ndarray:
    q_of = np.repeat(np.arange(len(groups.queries)), np.diff(groups.group_ptr))
    return item_stats_from_pairs(n_items, groups.item_ids, q_of, groups.labels if use_labels else None)


def _fit_pair(groups: _Groups, text_index, pair_config):
    """The term-pair model of these groups' judgments (None without a config)."""
    if pair_config is None:
        return None
    from retrieval.pair_model import fit_term_pair_model

    return fit_term_pair_model(groups.queries, groups.item_ids, groups.labels, groups.group_ptr, text_index,
                               pair_config)


def _features_oof_stats(groups: _Groups, text_index, n_folds, seed, use_labels, arms, budget, pair_config=None):
    """Feature rows whose item statistics (and term-pair model, with ``pair_config``) come from the
    *other* folds (no label leakage)."""
    n_g = len(groups.queries)
    fold = np.random.default_rng(seed).integers(0, n_folds, size=n_g)
    X = None
    for f in range(n_folds):
        inside = np.nonzero(fold == f)[0]
        outside = np.nonzero(fold != f)[0]
        stats = _stats_of(groups.subset(outside), text_index.n_items, use_labels)
        pair_model = _fit_pair(groups.subset(outside), text_index, pair_config)
        part = groups.subset(inside)
        Xf = _features_for(part, text_index, stats, arms, budget, pair_model=pair_model)
        if X is None:
            X = np.zeros((len(groups.item_ids), Xf.shape[1]), dtype=np.float32)
        rows = np.concatenate([np.arange(groups.group_ptr[g], groups.group_ptr[g + 1]) for g in inside]) \
            if inside.size else np.zeros(0, dtype=np.int64)
        X[rows] = Xf
    return X


def _drop_stats(X: np.ndarray, n_stats: int, nt: int = K.N_TEXT_FEATURES) -> np.ndarray:
    return np.delete(X, np.arange(nt, nt + n_stats), axis=1) if n_stats else X


DEFAULT_GRID = (
    RankerConfig(objective="regression", n_trees=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40),
    RankerConfig(objective="regression", n_trees=300, learning_rate=0.03, max_leaf_nodes=31, min_samples_leaf=80),
    RankerConfig(objective="regression", n_trees=150, learning_rate=0.1, max_leaf_nodes=7, min_samples_leaf=100),
    RankerConfig(objective="lambdarank", n_trees=150, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=40, gain_offset=1.0),
    RankerConfig(objective="lambdarank", n_trees=300, learning_rate=0.05, max_leaf_nodes=31, min_samples_leaf=80, gain_offset=1.0),
)


# Small ensembles for the Search latency budget (p99 <= 5 ms with ranking): on the inner split of
# hd_train (features with the product analyzer and match block) 300 trees x 31 leaves scored
# nDCG@10 0.9360 on dev, 100 x 15 0.9373 (regression) / 0.9360 (lambdarank), at a third of the
# scoring cost or less.
HOMEDEPOT_GRID = (
    RankerConfig(objective="regression", n_trees=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=40),
    RankerConfig(objective="lambdarank", n_trees=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=40,
                 gain_offset=1.0),
)


def build_homedepot_ranker(catalog, judgments, *, arms: Sequence = (), budget: int = 100,
                           grid: Sequence[RankerConfig] = DEFAULT_GRID, use_item_stats: bool = True,
                           seed: int = 0, n_folds: int = 5, text_index: ItemTextIndex | None = None,
                           split=None, allow_linear: bool = False,
                           pair_config=None) -> tuple[Ranker, ItemTextIndex, dict]:
    """Train the ranker on Home Depot graded judgments, choosing hyperparameters on an inner split.

    Protocol: ``split_by_query(judgments, seed=seed)`` gives 80% train / 20% test queries (pass
    ``split=(train, test)`` to reuse one); the 80% is split again 75/25 by query (``seed``) into
    fit / dev; every config in ``grid`` is fitted on fit and scored by NDCG@10 (gain = grade - 1)
    on dev; the best is refitted on the whole 80% and reported once on the 20% test, next to the
    BM25 order (the ``bm25`` feature) and the :class:`LinearRanker`. With ``allow_linear`` the
    :class:`LinearRanker` competes too and is returned when its dev NDCG@10 is at least the best tree
    ensemble's (it scores a candidate with one dot product). Candidates of a query are its
    judged products; label = grade. Item statistics of training rows come from the other folds
    (``n_folds``); those of dev/test rows from all the rows they are trained next to. With
    ``pair_config`` (:class:`retrieval.pair_model.TermPairConfig`) the ``pair_score`` column of a
    term-pair model joins the features, fitted the same way: per fold on the other folds for training
    rows, on the training rows for dev/test rows.

    Returns
    -------
    (Ranker, ItemTextIndex, report) ; ``report["item_stats"]`` (float32 (n_items, n_stats), from
    every judgment) is the matrix to serve with, ``report["pair_model"]`` (TermPairModel fitted on
    every judgment, or None) the pair model, ``report["feature_names"]`` the columns.
    """
    from retrieval.catalog import split_by_query

    t0 = time.perf_counter()
    if text_index is None:
        text_index = ItemTextIndex.build(catalog.texts)
    train_j, test_j = split if split is not None else split_by_query(judgments, test_fraction=0.2, seed=seed)
    train = homedepot_groups(train_j, catalog)
    test = homedepot_groups(test_j, catalog)
    fit_g, dev_g = _split_groups(len(train.queries), 0.25, seed + 1)
    fit, dev = train.subset(fit_g), train.subset(dev_g)
    arm_names = [a.name for a in arms]
    n_stats = len(ITEM_STAT_NAMES)

    text_names = ranker_text_names(text_index, pair_config is not None)

    def featurize(train_part: _Groups, eval_part: _Groups):
        Xtr = _features_oof_stats(train_part, text_index, n_folds, seed, True, arms, budget, pair_config)
        Xev = _features_for(eval_part, text_index, _stats_of(train_part, text_index.n_items, True), arms, budget,
                            pair_model=_fit_pair(train_part, text_index, pair_config))
        if not use_item_stats:
            Xtr, Xev = _drop_stats(Xtr, n_stats, len(text_names)), _drop_stats(Xev, n_stats, len(text_names))
        return Xtr, Xev

    names = feature_names(arm_names, ITEM_STAT_NAMES if use_item_stats else (), text_names)
    bm25_col = names.index("bm25")
    report: dict = {"n_queries": {"fit": len(fit.queries), "dev": len(dev.queries), "test": len(test.queries)},
                    "n_rows": {"fit": int(fit.item_ids.size), "dev": int(dev.item_ids.size), "test": int(test.item_ids.size)},
                    "feature_names": names}
    Xfit, Xdev = featurize(fit, dev)
    dev_gain = dev.labels - 1.0
    report["dev"] = {"bm25": ndcg_at_k(Xdev[:, bm25_col], dev_gain, dev.group_ptr, 10, dev.item_ids)[0]}
    results = []
    for cfg in grid:
        t = time.perf_counter()
        r = Ranker(cfg).fit(Xfit, fit.labels, fit.group_ptr)
        nd = ndcg_at_k(r.score(Xdev), dev_gain, dev.group_ptr, 10, dev.item_ids)[0]
        results.append({"config": asdict(cfg), "ndcg@10": nd, "fit_s": time.perf_counter() - t})
    best = int(np.argmax([r["ndcg@10"] for r in results]))
    best_cfg = grid[best]
    lin = LinearRanker(seed=seed).fit(Xfit, fit.labels, fit.group_ptr)
    report["dev"]["linear"] = ndcg_at_k(lin.score(Xdev), dev_gain, dev.group_ptr, 10, dev.item_ids)[0]
    report["dev"]["grid"] = results
    report["dev"]["best"] = results[best]

    use_linear = allow_linear and report["dev"]["linear"] >= results[best]["ndcg@10"]
    report["chosen"] = "linear" if use_linear else "trees"

    Xtrain, Xtest = featurize(train, test)
    lin = LinearRanker(seed=seed).fit(Xtrain, train.labels, train.group_ptr)
    ranker = lin if use_linear else Ranker(best_cfg).fit(Xtrain, train.labels, train.group_ptr)
    test_gain = test.labels - 1.0
    report["test"] = {
        "bm25": ndcg_at_k(Xtest[:, bm25_col], test_gain, test.group_ptr, 10, test.item_ids)[0],
        "ranker": ndcg_at_k(ranker.score(Xtest), test_gain, test.group_ptr, 10, test.item_ids)[0],
        "linear": ndcg_at_k(lin.score(Xtest), test_gain, test.group_ptr, 10, test.item_ids)[0],
        "n_queries_counted": ndcg_at_k(Xtest[:, bm25_col], test_gain, test.group_ptr, 10)[1],
    }
    all_groups = homedepot_groups(list(train_j) + list(test_j), catalog)
    stats = _stats_of(all_groups, text_index.n_items, True)
    report["item_stats"] = stats if use_item_stats else np.zeros((text_index.n_items, 0), dtype=np.float32)
    report["pair_model"] = _fit_pair(all_groups, text_index, pair_config)
    report["linear_ranker"] = lin
    report["build_s"] = time.perf_counter() - t0
    return ranker, text_index, report


# ---------------------------------------------------------------------------------------------
# Training data: AOL clicks
# ---------------------------------------------------------------------------------------------


class _TextCandidates:
    """Offline BM25 candidate generator over the item texts (build code only; scipy allowed)."""

    name = "bm25_text"

    def __init__(self, text_index: ItemTextIndex):
        import scipy.sparse as sp

        n_items = text_index.n_items
        item_of = np.repeat(np.arange(n_items), np.diff(text_index.tok_ptr))
        tf = sp.csr_matrix((np.ones(item_of.size), (text_index.tok_flat, item_of)),
                           shape=(len(text_index.vocab), n_items))
        tf.sum_duplicates()
        dl = np.diff(text_index.tok_ptr).astype(np.float64)
        k1, b = text_index.k1, text_index.b
        norm = k1 * (1 - b + b * dl / text_index.avg_len)
        tf = tf.tocoo()
        w = text_index.idf[tf.row].astype(np.float64) * tf.data * (k1 + 1) / (tf.data + norm[tf.col])
        self.weights = sp.csr_matrix((w, (tf.row, tf.col)), shape=tf.shape)
        self.text_index = text_index

    def retrieve(self, query, context, n):
        terms = [self.text_index.term_id.get(t) for t in dict.fromkeys(query.split())]
        terms = [t for t in terms if t is not None]
        if not terms or n <= 0:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        s = np.asarray(self.weights[terms].sum(axis=0)).ravel()
        nz = np.nonzero(s > 0)[0]
        order = nz[np.lexsort((nz, -s[nz]))][:n]
        return order.astype(np.int32), s[order].astype(np.float32)


def build_aol_ranker(catalog, click_events, *, arms: Sequence = (), budget: int = 50,
                     config: RankerConfig | None = None, stats_fraction: float = 0.5,
                     test_fraction: float = 0.2, n_popular: int = 20, seed: int = 0,
                     max_train_groups: int = 40_000) -> tuple[Ranker, ItemTextIndex, dict]:
    """Train the ranker on AOL clicks: label = clicked, candidates = the arms' union + the click.

    Events are ordered by time and cut in three: the first ``stats_fraction`` build the item
    statistics (click popularity, distinct queries), the next part trains, the last
    ``test_fraction`` evaluates (MRR@10 of the clicked item in the ranked union vs the BM25 order).
    Candidates of a (user, query, time) event = union of every arm's top ``budget`` (default arm:
    BM25 over the item texts), the ``n_popular`` most clicked items of the statistics window, and
    the clicked items. Events whose clicked items are all unseen by every arm still train, but the
    evaluation reports MRR over all test events (an item outside the union scores 0).
    """
    t0 = time.perf_counter()
    text_index = ItemTextIndex.build(catalog.texts)
    if not arms:
        arms = (_TextCandidates(text_index),)
    # One group per (user, query, timestamp) event; several clicks are several positives.
    events: dict = {}
    for ev in click_events:
        iid = catalog.id_of(ev.item_key)
        if iid is None:
            continue
        events.setdefault((ev.timestamp, ev.user_id, ev.query), set()).add(iid)
    keys = sorted(events)
    n = len(keys)
    n_stats_ev = int(n * stats_fraction)
    n_test = int(n * test_fraction)
    stats_keys, train_keys, test_keys = keys[:n_stats_ev], keys[n_stats_ev:n - n_test], keys[n - n_test:]
    q_index: dict[str, int] = {}
    s_items = [i for k in stats_keys for i in sorted(events[k])]
    s_q = [q_index.setdefault(k[2], len(q_index)) for k in stats_keys for _ in events[k]]
    stats = item_stats_from_pairs(text_index.n_items, np.array(s_items, dtype=np.int64), np.array(s_q, dtype=np.int64))
    popular = np.lexsort((np.arange(text_index.n_items), -stats[:, 0]))[:n_popular].astype(np.int32)
    if len(train_keys) > max_train_groups:
        pick = np.sort(np.random.default_rng(seed).choice(len(train_keys), max_train_groups, replace=False))
        train_keys = [train_keys[i] for i in pick]

    def groups_for(keys_, add_clicked: bool):
        X_blocks, y_blocks, sizes, ids_blocks = [], [], [], []
        for k in keys_:
            q = k[2]
            clicked = events[k]
            pos: dict[int, int] = {}
            lists = [arm.retrieve(q, Context(user_id=k[1], timestamp=k[0]), budget) for arm in arms]
            for ids, _ in lists:
                for i in ids.tolist():
                    pos.setdefault(i, len(pos))
            for i in popular.tolist():
                pos.setdefault(i, len(pos))
            if add_clicked:
                for i in sorted(clicked):
                    pos.setdefault(i, len(pos))
            ids = np.fromiter(pos, dtype=np.int32, count=len(pos))
            arm_scores = arm_score_matrix([a for a, _ in lists], [sc for _, sc in lists], ids)
            X_blocks.append(candidate_features(q, ids, arm_scores, text_index, stats))
            y_blocks.append(np.array([1.0 if i in clicked else 0.0 for i in ids.tolist()]))
            ids_blocks.append(ids)
            sizes.append(ids.size)
        return (np.concatenate(X_blocks), np.concatenate(y_blocks), group_ptr_from_sizes(sizes),
                np.concatenate(ids_blocks))

    Xtr, ytr, gtr, _ = groups_for(train_keys, True)
    Xte, yte, gte, ite = groups_for(test_keys, False)
    cfg = config or RankerConfig(objective="lambdarank", n_trees=100, learning_rate=0.1,
                                 max_leaf_nodes=15, min_samples_leaf=50)
    ranker = Ranker(cfg).fit(Xtr, ytr, gtr)
    names = feature_names([a.name for a in arms], ITEM_STAT_NAMES)
    bm25_col = names.index("bm25")
    report = {
        "n_events": {"stats": len(stats_keys), "train": len(train_keys), "test": len(test_keys)},
        "test_union_recall": float(np.mean([yte[gte[g]:gte[g + 1]].any() for g in range(len(gte) - 1)])),
        "test_mrr@10": {
            "bm25": mrr_at_k(Xte[:, bm25_col], yte, gte, 10, ite)[0],
            "popularity": mrr_at_k(Xte[:, names.index("stat:log_n_events")], yte, gte, 10, ite)[0],
            "ranker": mrr_at_k(ranker.score(Xte), yte, gte, 10, ite)[0],
        },
        "n_train_groups": len(gtr) - 1, "n_test_groups": len(gte) - 1,
        "feature_names": names, "config": asdict(cfg), "item_stats": stats,
        "build_s": time.perf_counter() - t0,
    }
    report["test"] = {**report["test_mrr@10"], "union_recall": report["test_union_recall"]}
    return ranker, text_index, report
