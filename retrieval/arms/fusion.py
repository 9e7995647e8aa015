"""Fusion arm: reciprocal rank fusion of lexical sub-indexes (BM25 and character n-grams).

BM25 finds items that share the query's words; the character n-gram arm finds them through typos
and partial words. Each is the better one on different queries, and the bandit can only *split* a
candidate budget between arms, taking each arm's top n_a. Fusing the two lists by rank gives one
list whose top 100 holds more of the relevant items than any split of 100 between the two (Home
Depot inner dev split of hd_train, recall@100: BM25 0.789, char-trigram 0.778, best split 0.795,
fusion 0.827 with the training-query expanded BM25 below).

Score (Cormack, Clarke & Buettcher, "Reciprocal Rank Fusion outperforms Condorcet and individual
rank learning methods", SIGIR 2009)::

    score(d) = sum over sub-arms a whose top ``depth`` holds d of  weight_a / (k + rank_a(d))

with ``rank`` 1-based. Ties by item id ascending, as every arm.

The sub-arms are full arms with their own indexes, persisted inside this arm's component (arrays
prefixed ``a<i>_``), so the fusion arm loads and serves on its own.

**Learned fusion** (with a :class:`PoolScorer`): each sub-arm's top ``depth`` forms a deeper pool,
and a linear model scores every pool item from :func:`pool_features` -- its reciprocal rank and
relative score in each sub-arm's list, the ranker's query-item text block
(:func:`retrieval.ranker_features.candidate_features`) and item priors from the training judgments
(:func:`item_prior`) -- and the top ``n`` by that score are returned. The model is pointwise
logistic regression on "judged relevant" (grade >= 2.5), fitted on out-of-fold pools
(:func:`build_learned_fusion_arm`): the expanded BM25 index and the priors of a training query's
pool come from the other folds' judgments, as they come from the whole training set for an unseen
query. Home Depot inner dev split of hd_train (75/25 by search term, seed 1), recall@100: RRF
0.833, learned fusion over a depth-100 / 200 / 300 pool 0.851 / 0.861 / 0.860 (a prototype over a
depth-300 pool that also read title-only BM25: 0.858 with every feature, 0.845 without the item
priors, 0.845 without the text block; gradient-boosted trees 0.854-0.855, pairwise logistic 0.861 vs
0.863 pointwise at depth 200).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from retrieval.arms import _kernels
from retrieval.arms.base import (
    Arm, Context, EMPTY_CONTEXT, ScratchPool, check_n, check_query, empty_result, pool_rank_columns, pooled_list,
)

__all__ = ["FusionArm", "PoolScorer", "build_fusion_arm", "build_learned_fusion_arm", "expand_texts",
           "item_prior", "pool_features", "PRIOR_NAMES"]

# Item prior columns (:func:`item_prior`): the ranker's item statistics, then two relevance counts.
PRIOR_NAMES = ("log_n_events", "log_n_queries", "mean_label", "log_n_relevant", "judged")


def _sub_arm_classes() -> dict:
    from retrieval.arms.bm25 import BM25Arm
    from retrieval.arms.chargram import CharGramArm

    return {"bm25": BM25Arm, "chargram": CharGramArm}


class FusionArm(Arm):
    """Reciprocal rank fusion of sub-arms (see the module docstring).

    Parameters
    ----------
    arms : sequence of Arm
        Sub-arms over the same catalogue (``bm25`` / ``chargram`` kinds persist).
    weights : sequence of float, one per sub-arm, each > 0
    k : float
        RRF constant, > 0.
    depth : int
        How deep each sub-arm's list is read (at least ``n`` of the request).
    same_as : sequence of (str or None), optional
        Per sub-arm, the name of a catalogue arm it equals by construction (same index, built from
        the same texts); persisted, and :meth:`bind` swaps such a sub-arm for the served arm
        so one request computes its list once.
    scorer : PoolScorer, optional
        Learned fusion: the pool of every sub-arm's top ``depth`` is ordered by this model instead
        of the weighted RRF (``weights`` then unused; ``k`` is the RRF constant of the features);
        the pool depth does not grow with ``n``, so at most the pool is returned.

    Raises
    ------
    ValueError
        No sub-arms, sub-arms over different catalogues, bad weights, ``k`` or ``depth``, or a
        scorer over another catalogue or with another number of sub-arms.
    """

    name = "fusion"

    def __init__(self, arms: Sequence[Arm], weights: Sequence[float] | None = None, k: float = 10.0,
                 depth: int = 100, scorer: "PoolScorer | None" = None,
                 same_as: Sequence[str | None] | None = None) -> None:
        arms = list(arms)
        if not arms:
            raise ValueError("arms: need at least one sub-arm")
        n_items = {a.n_items for a in arms}
        if len(n_items) != 1:
            raise ValueError(f"arms: sub-arms must share one catalogue, got n_items {sorted(n_items)}")
        weights = [1.0] * len(arms) if weights is None else [float(w) for w in weights]
        if len(weights) != len(arms) or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights: need {len(arms)} finite values > 0, got {weights}")
        if not (math.isfinite(float(k)) and float(k) > 0):
            raise ValueError(f"k must be > 0, got {k!r}")
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        self.arms = arms
        self.weights = weights
        self.k = float(k)
        self.depth = int(depth)
        self._n_items = n_items.pop()
        self._list_ids = np.arange(len(arms), dtype=np.int64)
        self._weights = np.array(weights, dtype=np.float64)
        self._scratch = ScratchPool(self._n_items)
        if scorer is not None:
            if scorer.n_items != self._n_items:
                raise ValueError(f"scorer: built for {scorer.n_items} items, sub-arms hold {self._n_items}")
            if scorer.n_sub_arms != len(arms):
                raise ValueError(f"scorer: expects {scorer.n_sub_arms} sub-arms, got {len(arms)}")
        self.scorer = scorer
        self.same_as = [None] * len(arms) if same_as is None else list(same_as)
        self._bound: set[int] = set()  # sub-arms that are served arms (bind)
        if len(self.same_as) != len(arms):
            raise ValueError(f"same_as: need {len(arms)} entries, got {len(self.same_as)}")

    def bind(self, arms: Sequence[Arm]) -> "FusionArm":
        """Serve sub-arm i with the catalogue arm named ``same_as[i]`` (when given and present), so
        one request computes that list once: the pipeline asks the served arm ``depth`` deep
        (:meth:`pool_depths`) and hands the list to :meth:`retrieve_pooled`.

        Raises
        ------
        ValueError
            A named arm of another class or catalogue size.
        """
        by_name = {a.name: a for a in arms}
        for i, name in enumerate(self.same_as):
            other = by_name.get(name) if name else None
            if other is None or other is self.arms[i]:
                continue
            if type(other) is not type(self.arms[i]) or other.n_items != self._n_items:
                raise ValueError(f"same_as[{i}]: arm {name!r} is not a {type(self.arms[i]).__name__} "
                                 f"over {self._n_items} items")
            self.arms[i] = other
            self._bound.add(i)
        return self

    def share_text_index(self, text_index) -> bool:
        """Let the learned scorer use ``text_index`` (the ranker's) when it holds the same content as
        its own: one copy in memory, and one query analysis per request (``query_arrays`` is cached
        per index). Returns whether it was adopted; the features are the same either way."""
        if self.scorer is None or self.scorer.text_index is text_index:
            return self.scorer is not None
        if not self.scorer.text_index.same_content(text_index):
            return False
        self.scorer.text_index = text_index
        return True

    def pool_depths(self) -> dict[str, int]:
        """``{served arm name: depth}`` for the sub-arms :meth:`bind` swapped for served arms."""
        return {self.arms[i].name: self.depth for i in sorted(self._bound)}

    @property
    def n_items(self) -> int:
        return self._n_items

    # ---- persistence ---------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)``: RRF constants and each sub-arm's params; sub-arm arrays ``a<i>_<key>``."""
        subs, arrays = [], {}
        for i, arm in enumerate(self.arms):
            p, a = arm.to_arrays()
            subs.append({"kind": arm.name, "params": p})
            arrays.update({f"a{i}_{key}": v for key, v in a.items()})
        params = {"k": self.k, "depth": self.depth, "weights": self.weights, "sub_arms": subs,
                  "n_items": self._n_items, "same_as": self.same_as}
        if self.scorer is not None:
            sp, sa = self.scorer.to_arrays()
            params["scorer"] = sp
            arrays.update({f"s_{key}": v for key, v in sa.items()})
        return params, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "FusionArm":
        """Inverse of :meth:`to_arrays` (arrays used as given, e.g. read-only memory maps).

        Raises
        ------
        ValueError
            Unknown sub-arm kind, or params and arrays disagree.
        """
        classes = _sub_arm_classes()
        arms = []
        for i, sub in enumerate(params["sub_arms"]):
            cls_ = classes.get(sub["kind"])
            if cls_ is None:
                raise ValueError(f"sub_arms[{i}]: unknown kind {sub['kind']!r}")
            prefix = f"a{i}_"
            arms.append(cls_.from_arrays(sub["params"], {key[len(prefix):]: v for key, v in arrays.items()
                                                         if key.startswith(prefix)}))
        scorer = None
        if params.get("scorer") is not None:
            scorer = PoolScorer.from_arrays(params["scorer"], {key[2:]: v for key, v in arrays.items()
                                                               if key.startswith("s_")})
        arm = cls(arms, params["weights"], params["k"], params["depth"], scorer, params.get("same_as"))
        if arm.n_items != int(params["n_items"]):
            raise ValueError(f"n_items: params say {params['n_items']}, sub-arms hold {arm.n_items}")
        return arm

    # ---- serving -------------------------------------------------------------------------------
    def retrieve(self, query: str, context: Context = EMPTY_CONTEXT, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items by fused reciprocal rank, or by the learned scorer over the pool when the
        arm has one (see :meth:`Arm.retrieve` for the contract)."""
        return self.retrieve_pooled(query, context, n, {})

    def retrieve_pooled(self, query: str, context: Context, n: int,
                        retrieved: Mapping[str, tuple]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`retrieve` reusing served sub-arms' lists of the same request (``retrieved``: the
        pipeline's ``{name: (arm, ids, scores, asked depth)}``, :func:`retrieval.arms.base.pooled_list`)."""
        n = check_n(n)
        check_query(query)
        if n == 0:
            return empty_result()
        if self.scorer is not None:
            # The pool depth stays fixed, so a shorter request is a prefix of a longer one.
            lists = [pooled_list(retrieved, arm, query, context, self.depth) for arm in self.arms]
            ids, X = pool_features(query, lists, self.scorer.text_index, self.scorer.prior, self.k)
            if ids.size == 0:
                return empty_result()
            scores = self.scorer.score(X)
            order = np.lexsort((ids, -scores))[:n]
            return ids[order], scores[order]
        depth = max(n, self.depth)
        # Each sub-arm's list is one "term" of a tiny inverted index whose posting values are
        # 1 / (k + rank); the fused score is then the weighted sparse dot product.
        lists = [pooled_list(retrieved, arm, query, context, depth)[0] for arm in self.arms]
        sizes = np.array([ids.size for ids in lists], dtype=np.int64)
        if not sizes.any():
            return empty_result()
        ptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum(sizes, out=ptr[1:])
        rrf = (1.0 / (self.k + np.concatenate([np.arange(1, m + 1, dtype=np.float64) for m in sizes.tolist()])))
        scratch, touched = self._scratch.get()
        return _kernels.dot_top_n(self._list_ids, self._weights, ptr, np.concatenate(lists),
                                  rrf.astype(np.float32), scratch, touched, n)

    def warmup(self) -> None:
        """Warm every sub-arm, the fusion kernel and the scorer's feature kernels on the served arrays."""
        for arm in self.arms:
            arm.warmup()
        if self.scorer is not None:
            self.scorer.warmup()
        scratch, touched = self._scratch.get()
        _kernels.dot_top_n(self._list_ids[:1], self._weights[:1], np.array([0, 1], dtype=np.int64),
                           np.zeros(1, dtype=np.int32), np.ones(1, dtype=np.float32), scratch, touched, 1)


def build_fusion_arm(texts: Sequence[str], expanded_texts: Sequence[str] | None = None, *,
                     analyzer: str = "qp2q", k: float = 10.0, depth: int = 100) -> FusionArm:
    """Offline builder: RRF of BM25 (compound terms, over ``expanded_texts`` when given, e.g. titles
    plus the training queries judged relevant to each item) and the character-trigram arm over
    ``texts``, equal weights."""
    from retrieval.arms.bm25 import BM25Arm
    from retrieval.arms.chargram import CharGramArm

    bm25 = BM25Arm.build(list(expanded_texts if expanded_texts is not None else texts), analyzer=analyzer,
                         compounds=True)
    return FusionArm([bm25, CharGramArm.build(list(texts), analyzer=analyzer)], k=k, depth=depth)


# ---------------------------------------------------------------------------------------------
# Learned fusion: pool features (one function for training and serving) and the linear scorer
# ---------------------------------------------------------------------------------------------


def item_prior(n_items: int, item_ids: np.ndarray, query_ids: np.ndarray, grades: np.ndarray, *,
               relevant: float = 2.5) -> np.ndarray:
    """Item priors ``(n_items, 5)`` float32 from judged (query, item, grade) triples.

    Columns ``PRIOR_NAMES``: the three of :func:`retrieval.ranker_features.item_stats_from_pairs`
    (``log1p(judgments)``, ``log1p(distinct queries)``, mean grade shrunk to the global mean), then
    ``log1p(judgments with grade >= relevant)`` and 1 for an item judged at all. Build them from
    judgments the scorer is not trained on (other folds).

    Raises
    ------
    ValueError
        Arrays of different shapes or item ids outside ``[0, n_items)``.
    """
    from retrieval.ranker_features import item_stats_from_pairs

    item_ids = np.asarray(item_ids, dtype=np.int64)
    grades = np.asarray(grades, dtype=np.float64)
    if grades.shape != item_ids.shape:
        raise ValueError("grades and item_ids must have the same shape")
    stats = item_stats_from_pairs(n_items, item_ids, query_ids, grades)
    n_rel = np.bincount(item_ids[grades >= relevant], minlength=n_items)
    return np.column_stack([stats, np.log1p(n_rel), stats[:, 0] > 0]).astype(np.float32)


def pool_features(query: str, lists: Sequence[tuple[np.ndarray, np.ndarray]], text_index, prior: np.ndarray,
                  k: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """The pool of the sub-arms' lists and its feature rows (training and serving share this function).

    Parameters
    ----------
    query : str
    lists : sequence of (ids int32 (m_a,), scores float32 (m_a,)), one per sub-arm, best first
    text_index : retrieval.ranker_features.ItemTextIndex
    prior : float32 array of shape (n_items, n_prior), see :func:`item_prior`
    k : float
        RRF constant of the reciprocal-rank columns.

    Returns
    -------
    ids : int32 (m,), the distinct pool items ascending
    X : float32 (m, 2 * n_sub + text_index.n_text_features + n_prior): per sub-arm ``1 / (k + rank)``
        (1-based rank) and ``score / top score`` (0 where the sub-arm did not list the item), then the
        text block and the prior row of :func:`retrieval.ranker_features.candidate_features`.
    """
    from retrieval.ranker_features import candidate_features

    n_sub = len(lists)
    ids, cols = pool_rank_columns(lists, k)
    body = candidate_features(query, ids, np.zeros((ids.size, 0), dtype=np.float32), text_index, prior)
    X = np.zeros((ids.size, 2 * n_sub + body.shape[1]), dtype=np.float32)
    X[:, :2 * n_sub] = cols[:, :, :2].reshape(ids.size, 2 * n_sub)
    X[:, 2 * n_sub:] = body
    return ids, X


class PoolScorer:
    """Linear model over :func:`pool_features`: ``score(x) = w . (x - mean) / scale`` (float32).

    Holds what the features need at serving time: the item text index and the item priors.

    Parameters
    ----------
    text_index : retrieval.ranker_features.ItemTextIndex
    prior : float32 (n_items, n_prior)
    mean, scale, weights : float32 (f,), ``f = 2 * n_sub_arms + text_index.n_text_features + n_prior``
    n_sub_arms : int >= 1

    Raises
    ------
    ValueError
        Shapes that disagree, a non-positive scale, or non-finite values.
    """

    def __init__(self, text_index, prior: np.ndarray, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray,
                 n_sub_arms: int) -> None:
        prior = np.asarray(prior, dtype=np.float32)
        if prior.ndim != 2 or prior.shape[0] != text_index.n_items:
            raise ValueError(f"prior: need shape ({text_index.n_items}, n_prior), got {prior.shape}")
        f = 2 * int(n_sub_arms) + text_index.n_text_features + prior.shape[1]
        arrays = [np.asarray(a, dtype=np.float32) for a in (mean, scale, weights)]
        if int(n_sub_arms) < 1 or any(a.shape != (f,) for a in arrays):
            raise ValueError(f"mean, scale, weights: need shape ({f},) each for {n_sub_arms} sub-arms")
        if not all(np.all(np.isfinite(a)) for a in arrays) or np.any(arrays[1] <= 0):
            raise ValueError("mean, scale, weights must be finite and scale > 0")
        self.text_index = text_index
        self.prior = prior
        self.mean, self.scale, self.weights = arrays
        self.n_sub_arms = int(n_sub_arms)

    @property
    def n_items(self) -> int:
        return self.text_index.n_items

    def score(self, X: np.ndarray) -> np.ndarray:
        """float32 (m,) scores of feature rows ``(m, f)``."""
        return (((X - self.mean) / self.scale) @ self.weights).astype(np.float32)

    def warmup(self) -> None:
        from retrieval.ranker_features import candidate_features

        if self.n_items:
            candidate_features("warmup", np.zeros(1, dtype=np.int32), np.zeros((1, 0), dtype=np.float32),
                               self.text_index, self.prior)

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        tp, ta = self.text_index.to_arrays()
        arrays = {f"ti_{key}": v for key, v in ta.items()}
        arrays.update({"prior": self.prior, "mean": self.mean, "scale": self.scale, "weights": self.weights})
        return {"n_sub_arms": self.n_sub_arms, "text_index": tp}, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "PoolScorer":
        from retrieval.ranker_features import ItemTextIndex

        ti = ItemTextIndex.from_arrays(params["text_index"], {key[3:]: v for key, v in arrays.items()
                                                              if key.startswith("ti_")})
        return cls(ti, arrays["prior"], arrays["mean"], arrays["scale"], arrays["weights"], params["n_sub_arms"])


def expand_texts(texts: Sequence[str], queries: Sequence[str], item_ids, grades, min_grade: float = 2.0) -> list[str]:
    """Item texts followed by every query judged at least ``min_grade`` for the item (doc2query-style
    expansion; pass training judgments only)."""
    extra: list[list[str]] = [[] for _ in range(len(texts))]
    for q, i, g in zip(queries, np.asarray(item_ids).tolist(), np.asarray(grades).tolist()):
        if g >= min_grade:
            extra[i].append(q)
    return [" ".join(filter(None, [t, *e])) for t, e in zip(texts, extra)]


def build_learned_fusion_arm(texts: Sequence[str], queries: Sequence[str], item_ids, grades, *,
                             analyzer: str = "product", k: float = 10.0, depth: int = 200, n_folds: int = 4,
                             relevant: float = 2.5, min_grade: float = 2.0, C: float = 1.0, seed: int = 0,
                             text_index=None, chargram=None, report: dict | None = None) -> FusionArm:
    """Offline builder of the learned fusion arm from judged (query, item, grade) triples.

    Sub-arms: BM25 (compound terms) over ``texts`` expanded with the queries judged >= ``min_grade``
    (:func:`expand_texts`) and the character-trigram arm over ``texts``. Training rows: the queries
    are cut into ``n_folds`` folds (``seed``); each fold's pools (every sub-arm's top ``depth``) are
    featurised with the expanded BM25 and the :func:`item_prior` of the *other* folds; label = the
    item was judged >= ``relevant`` for the query (unjudged pool items are negatives). Pointwise
    L2-regularised logistic regression (``C``) on standardised features. The served arm's sub-arms
    and prior use every judgment. ``chargram``: the catalogue's own character-trigram arm over the
    same ``texts`` and ``analyzer``, reused as the sub-arm and recorded in ``same_as`` (serving then
    computes its list once per request, :meth:`FusionArm.bind`).

    Raises
    ------
    ValueError
        Inputs of different lengths, ``n_folds < 2``, or no relevant pool item to learn from.
    """
    from sklearn.linear_model import LogisticRegression

    from retrieval.arms.bm25 import BM25Arm
    from retrieval.arms.chargram import CharGramArm
    from retrieval.ranker_features import ItemTextIndex

    item_ids = np.asarray(item_ids, dtype=np.int64)
    grades = np.asarray(grades, dtype=np.float64)
    if not (len(queries) == item_ids.size == grades.size):
        raise ValueError("queries, item_ids and grades must have the same length")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    texts = list(texts)
    n_items = len(texts)
    if text_index is None:
        text_index = ItemTextIndex.build(texts, analyzer=analyzer, match_features=True)
    same_as = [None, None if chargram is None else chargram.name]
    if chargram is None:
        chargram = CharGramArm.build(texts, analyzer=analyzer)
    elif chargram.n_items != n_items or chargram.config.analyzer != analyzer:
        raise ValueError("chargram: must index the same texts with the same analyzer")
    distinct = sorted(set(queries))
    qid = {q: i for i, q in enumerate(distinct)}
    q_of = np.array([qid[q] for q in queries], dtype=np.int64)
    fold = np.random.default_rng(seed).integers(0, n_folds, size=len(distinct))
    relevant_of: dict[int, set] = {}
    for qi, i, g in zip(q_of.tolist(), item_ids.tolist(), grades.tolist()):
        if g >= relevant:
            relevant_of.setdefault(qi, set()).add(i)

    def sub_arms(mask):
        qs = [q for q, keep in zip(queries, mask.tolist()) if keep]
        bm25 = BM25Arm.build(expand_texts(texts, qs, item_ids[mask], grades[mask], min_grade), analyzer=analyzer,
                             compounds=True)
        return [bm25, chargram], item_prior(n_items, item_ids[mask], q_of[mask], grades[mask], relevant=relevant)

    X_blocks, y_blocks = [], []
    for f in range(n_folds):
        arms, prior = sub_arms(fold[q_of] != f)
        for qi in np.nonzero(fold == f)[0].tolist():
            lists = [arm.retrieve(distinct[qi], EMPTY_CONTEXT, depth) for arm in arms]
            ids, X = pool_features(distinct[qi], lists, text_index, prior, k)
            rel = relevant_of.get(qi, set())
            X_blocks.append(X)
            y_blocks.append(np.fromiter((i in rel for i in ids.tolist()), dtype=np.float64, count=ids.size))
    X = np.concatenate(X_blocks)
    y = np.concatenate(y_blocks)
    if not y.any() or y.all():
        raise ValueError("no relevant (or no non-relevant) pool item to learn from")
    mean = X.mean(axis=0, dtype=np.float64)
    scale = X.std(axis=0, dtype=np.float64)
    scale[scale < 1e-12] = 1.0
    model = LogisticRegression(C=C, max_iter=1000).fit((X - mean) / scale, y)
    arms, prior = sub_arms(np.ones(item_ids.size, dtype=bool))
    scorer = PoolScorer(text_index, prior, mean.astype(np.float32), scale.astype(np.float32),
                        model.coef_.ravel().astype(np.float32), len(arms))
    if report is not None:
        report.update({"n_rows": int(y.size), "n_positive": int(y.sum()), "n_queries": len(distinct),
                       "depth": depth, "weights": model.coef_.ravel().tolist()})
    return FusionArm(arms, k=k, depth=depth, scorer=scorer, same_as=same_as)
