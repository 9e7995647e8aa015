"""Learned query-term x item-term interactions ("translation" features) for the ranker.

The ranker's text block says *how much* of the query an item matches, weighing a term by its IDF;
it cannot learn that ``cooktop`` matters more than ``22`` in "cooktop 22 gas" (the ranker without
this model ranks a 22-ton log splitter and 22-inch mowers first there), nor which words of search
terms go with which different words of titles. This model learns such weights from the judgments:
every judged (search term, product) row is a sparse vector of ones, one feature per (query term,
distinct title term) pair -- matched pairs (``t``, ``t``) included -- and one per query term saying
whether the title has it (``t``, matched / unmatched), hashed into ``2 ** n_bits`` buckets (two
colliding pairs add up; Weinberger et al., "Feature Hashing for Large Scale Multitask Learning",
ICML 2009), and a ridge regression predicts the grade (the lexical translation model of Berger &
Lafferty, "Information Retrieval as Statistical Translation", SIGIR 1999, learned
discriminatively). Its prediction is one column of the ranker's features (``pair_score``,
:func:`retrieval.ranker_features.candidate_features`).

Hashing: a term's hash is the CRC-32 of its UTF-8 bytes (:func:`term_hashes`), the pair's bucket
``splitmix64(q_hash << 32 | u_hash) & (2 ** n_bits - 1)`` (``_ranker_kernels.pair_bucket``); the
terms are the text index's analyzer terms, so query terms the titles never use (typos, words of
other search terms) still pair with title terms. Scoring is a numba kernel over the text index's
token arrays (``_ranker_kernels.pair_scores``); :func:`reference_pair_scores` is its slow twin.

The ranker must be trained on scores of a model that never saw the row's own judgment:
:func:`retrieval.ranker.build_homedepot_ranker` fits one model per fold on the other folds' search
terms (as it does for the item statistics) and serves the model fitted on every judgment.
Home Depot inner split of hd_train (75/25 by search term, seed 1), nDCG@10 of the linear ranker on
the judged sets: 0.9381 without, 0.9394 with the column (+0.0013 +- 0.0008 paired per query; a
second split, seed 2: 0.9363 -> 0.9374, +0.0012 +- 0.0009; hd_test with ``qac evaluate search``:
0.9379 -> 0.9385, +0.0006 +- 0.0008). A small gain, of the same sign on every split (README, Home
Depot).
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from retrieval import _ranker_kernels as K
from retrieval.analyzer import get_analyzer

__all__ = ["PAIR_FEATURE_NAME", "TermPairConfig", "TermPairModel", "fit_term_pair_model", "pair_design",
           "reference_bucket", "reference_pair_scores", "term_hashes"]

PAIR_FEATURE_NAME = "pair_score"


@dataclass(frozen=True)
class TermPairConfig:
    """Hyperparameters of the term-pair model (the only place their defaults live).

    n_bits : hash buckets = ``2 ** n_bits`` (8..26); the served weights take ``4 * 2 ** n_bits`` bytes.
        Inner split of hd_train (324k distinct features), nDCG@10 of the ranker over 0.9381 without
        the column: 20 / 22 bits 0.9394 / 0.9395 (alpha 30); 20 bits keep the weights (4 MB) small
        enough for the caches on the request path.
    alpha : ridge penalty (> 0); at 20 bits 10 / 30 / 100 gave 0.9387 / 0.9393 / 0.9395 (a
        version whose rows were sets of buckets, before colliding pairs were summed).
    """

    n_bits: int = 20
    alpha: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.n_bits, int) or not 8 <= self.n_bits <= 26:
            raise ValueError(f"n_bits must be an int in 8..26, got {self.n_bits!r}")
        if not (self.alpha > 0):
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")


def term_hashes(terms: Sequence[str]) -> np.ndarray:
    """uint32 (len(terms),) CRC-32 of each term's UTF-8 bytes (stable across processes and runs)."""
    return np.fromiter((zlib.crc32(t.encode("utf-8")) for t in terms), dtype=np.uint32, count=len(terms))


def _query_hashes(query: str, analyzer: str) -> np.ndarray:
    return term_hashes(list(dict.fromkeys(get_analyzer(analyzer).terms(query))))


def _check_items(item_ids, text_index) -> np.ndarray:
    ids = np.asarray(item_ids)
    if ids.ndim != 1:
        raise ValueError(f"item_ids must be 1-d, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"item_ids must be integers, got {ids.dtype}")
    ids = ids.astype(np.int32, copy=False)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= text_index.n_items):
        raise ValueError(f"item_ids must be in [0, {text_index.n_items})")
    return ids


def pair_design(queries: Sequence[str], item_ids: np.ndarray, group_ptr: np.ndarray, text_index,
                n_bits: int):
    """Binary design matrix of query groups: one row per (query, item), one column per bucket.

    Parameters
    ----------
    queries : sequence of str, one per group
    item_ids : int32 (n,), rows of group ``g`` = ``group_ptr[g]:group_ptr[g + 1]``
    group_ptr : int64 (n_groups + 1,)
    text_index : retrieval.ranker_features.ItemTextIndex (terms, analyzer)
    n_bits : int

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n, 2 ** n_bits), float32: how many of the row's pairs fall in
    each bucket (1 unless two pairs collide), see ``_ranker_kernels.pair_buckets``.
    """
    import scipy.sparse as sp

    ids = _check_items(item_ids, text_index)
    term_hash = term_hashes(text_index.vocab)
    mask = (1 << n_bits) - 1
    indptrs, blocks, offset = [np.zeros(1, dtype=np.int64)], [], 0
    for g, q in enumerate(queries):
        part = ids[int(group_ptr[g]):int(group_ptr[g + 1])]
        ptr, buckets = K.pair_buckets(part, _query_hashes(q, text_index.analyzer), term_hash,
                                      text_index.tok_flat, text_index.tok_ptr, mask)
        indptrs.append(ptr[1:] + offset)
        blocks.append(buckets)
        offset += buckets.size
    indices = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
    X = sp.csr_matrix((np.ones(indices.size, dtype=np.float32), indices, np.concatenate(indptrs)),
                      shape=(ids.size, 1 << n_bits))
    X.sum_duplicates()
    return X


class TermPairModel:
    """Hashed (query term, item term) ridge model: ``score = intercept + sum of w[bucket]``.

    Parameters
    ----------
    weights : float32 (2 ** n_bits,), one per bucket
    intercept : float
    term_hash : uint32 (n_terms,), :func:`term_hashes` of the text index's vocabulary it scores with
    analyzer : str, the text index's analyzer (query terms)
    config : TermPairConfig

    Raises
    ------
    ValueError
        ``weights`` not of length ``2 ** config.n_bits``, or non-finite values.
    """

    def __init__(self, weights: np.ndarray, intercept: float, term_hash: np.ndarray, analyzer: str,
                 config: TermPairConfig = TermPairConfig()) -> None:
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != (1 << config.n_bits,):
            raise ValueError(f"weights must have shape ({1 << config.n_bits},), got {weights.shape}")
        if not np.isfinite(intercept) or not np.all(np.isfinite(weights)):
            raise ValueError("weights and intercept must be finite")
        self.weights = weights
        self.intercept = float(intercept)
        self.term_hash = np.asarray(term_hash, dtype=np.uint32)
        self.analyzer = analyzer
        self.config = config
        self.mask = (1 << config.n_bits) - 1

    def scores_into(self, query: str, item_ids: np.ndarray, text_index, out: np.ndarray, col: int) -> None:
        """Write the scores of ``item_ids`` (int32 (m,), validated) into ``out[:, col]`` (float32 (m, f))."""
        if len(text_index.vocab) != self.term_hash.size:
            raise ValueError(f"the model was fitted on a {self.term_hash.size}-term vocabulary, the text index "
                             f"has {len(text_index.vocab)}")
        K.pair_scores(item_ids, _query_hashes(query, self.analyzer), self.term_hash, text_index.tok_flat,
                      text_index.tok_ptr, self.mask, self.weights, self.intercept, out, col)

    def score(self, query: str, item_ids: np.ndarray, text_index) -> np.ndarray:
        """float32 (m,) scores of items ``item_ids`` (int (m,)) for ``query``.

        Raises
        ------
        ValueError
            An item id outside the text index, or a text index of another vocabulary size.
        """
        ids = _check_items(item_ids, text_index)
        out = np.empty((ids.size, 1), dtype=np.float32)
        self.scores_into(query, ids, text_index, out, 0)
        return out[:, 0]

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        return ({"config": asdict(self.config), "intercept": self.intercept, "analyzer": self.analyzer},
                {"weights": self.weights, "term_hash": self.term_hash})

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "TermPairModel":
        return cls(arrays["weights"], params["intercept"], arrays["term_hash"], params["analyzer"],
                   TermPairConfig(**params["config"]))


def fit_term_pair_model(queries: Sequence[str], item_ids: np.ndarray, grades: np.ndarray, group_ptr: np.ndarray,
                        text_index, config: TermPairConfig = TermPairConfig()) -> TermPairModel:
    """Fit the model on judged query groups (ridge regression of the grade, scikit-learn ``Ridge``).

    Parameters
    ----------
    queries : sequence of str, one per group (analysed by ``text_index.analyzer``)
    item_ids : int32 (n,) ; grades : float (n,) ; group_ptr : int64 (n_groups + 1,)
    text_index : retrieval.ranker_features.ItemTextIndex
    config : TermPairConfig

    Raises
    ------
    ValueError
        No rows, or lengths that disagree.
    """
    from sklearn.linear_model import Ridge

    grades = np.asarray(grades, dtype=np.float64)
    if grades.size == 0 or grades.shape != np.asarray(item_ids).shape:
        raise ValueError("need one grade per item id, and at least one row")
    if len(group_ptr) != len(queries) + 1 or int(group_ptr[-1]) != grades.size:
        raise ValueError("group_ptr must have n_queries + 1 entries ending at n_rows")
    X = pair_design(queries, item_ids, group_ptr, text_index, config.n_bits)
    model = Ridge(alpha=config.alpha, solver="sparse_cg", fit_intercept=True).fit(X, grades)
    return TermPairModel(model.coef_.astype(np.float32), float(model.intercept_), term_hashes(text_index.vocab),
                         text_index.analyzer, config)


def reference_bucket(q_hash: int, u_hash: int, n_bits: int) -> int:
    """Pure-Python twin of ``_ranker_kernels.pair_bucket``: splitmix64 (Steele, Lea & Flood, OOPSLA
    2014) of ``q_hash << 32 | u_hash`` on Python ints, low ``n_bits`` bits."""
    m64 = (1 << 64) - 1
    x = (q_hash << 32) | u_hash
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & m64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & m64
    x ^= x >> 31
    return x & ((1 << n_bits) - 1)


def reference_pair_scores(query: str, item_texts: Sequence[str], weights: np.ndarray, intercept: float,
                          n_bits: int, analyzer: str) -> np.ndarray:
    """Slow pure-Python twin of :meth:`TermPairModel.score`, from the term strings and the definition.

    Returns float64 (len(item_texts),).
    """
    terms = get_analyzer(analyzer).terms

    def bucket(qh: int, uh: int) -> int:
        return reference_bucket(qh, uh, n_bits)

    q = [zlib.crc32(t.encode("utf-8")) for t in dict.fromkeys(terms(query))]
    out = []
    for text in item_texts:
        u = [zlib.crc32(t.encode("utf-8")) for t in terms(text)]
        keys = ([bucket(a, c) for a in q for c in dict.fromkeys(u)]
                + [bucket(a, K.MATCHED_HASH if a in u else K.UNMATCHED_HASH) for a in q])
        out.append(intercept + sum(float(weights[b]) for b in keys))
    return np.array(out, dtype=np.float64)
