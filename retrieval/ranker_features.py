"""Candidate features for the learned ranker: one function for training and for serving.

:func:`candidate_features` turns (query, candidate item ids, the arms' scores of those items) into a
float32 matrix with one row per candidate. The offline builders in :mod:`retrieval.ranker` call it
on judged or logged candidate sets and the Search pipeline calls it on the candidate union, so a
feature can never mean one thing at training time and another at serving time.

Columns (``feature_names``), in order:

* text block (``N_TEXT_FEATURES``), per (query, item) pair, from an :class:`ItemTextIndex`:
  ``bm25`` (Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009,
  Eq. 3.15, with Lucene's non-negative IDF ``ln(1 + (N - df + 0.5) / (df + 0.5))``, k1=1.2,
  b=0.75, summed over the *distinct* query terms, ``tf`` = occurrences in the item text),
  ``frac_terms`` (distinct query terms present in the item / distinct query terms), ``frac_idf``
  (their share of the query's IDF mass; an unseen term has ``df = 0``), ``phrase`` (1 when the
  query's token sequence occurs contiguously in the item text), ``tri_jaccard`` / ``tri_cosine`` /
  ``tri_query_recall`` (character trigrams of ``" " + text + " "``, sets; typo tolerance),
  ``query_len`` / ``item_len`` (tokens), ``first_match`` (``1 / (1 + position of the first item
  token that is a query term)``, 0 when none), ``item_coverage`` (item tokens that are query terms /
  item tokens), ``n_matched`` (distinct query terms present);
* match block (only when the index was built with ``match_features=True``; ``MATCH_FEATURE_NAMES``):
  ``num_match`` (numeric query terms -- sizes, counts, model numbers -- present in the item / numeric
  query terms), ``has_num``, ``head_match`` (the query's last term, usually the product type, is in
  the item), ``pair_match`` (adjacent query term pairs found adjacent in the item / pairs);
* pair column (only when a :class:`retrieval.pair_model.TermPairModel` is given; ``pair_score``): the
  learned (query term, item term) interaction model's prediction of the grade;
* item statistics block: the columns of ``item_stats`` (see :func:`item_stats_from_pairs`);
* arm block: each arm's score of the item (0 when the arm did not propose it), then a 0/1 indicator
  per arm of whether it proposed the item.

Queries and item texts are cut into terms by the index's search analyzer (``ItemTextIndex.analyzer``,
:mod:`retrieval.analyzer`; ``"qp2q"`` = the whitespace tokens of :func:`qac.text.normalize_query`),
the same one the catalogue's BM25 arm uses; character trigrams are taken over the terms joined by
single spaces.
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from qac.artifacts import arrays_to_strings, strings_to_arrays
from retrieval import _ranker_kernels as K
from retrieval.analyzer import ANALYZERS, get_analyzer
from retrieval.arms.base import offsets, sorted_member
from retrieval.arms.bm25 import bm25_idf

__all__ = [
    "ItemTextIndex", "arm_score_matrix", "candidate_features", "feature_names", "item_stats_from_pairs",
    "ranker_text_names",
    "reference_candidate_features", "TEXT_FEATURE_NAMES", "MATCH_FEATURE_NAMES", "ITEM_STAT_NAMES",
]

TEXT_FEATURE_NAMES = (
    "bm25", "frac_terms", "frac_idf", "phrase", "tri_jaccard", "tri_cosine", "tri_query_recall",
    "query_len", "item_len", "first_match", "item_coverage", "n_matched",
)
if len(TEXT_FEATURE_NAMES) != K.N_TEXT_FEATURES:  # pragma: no cover - import-time consistency
    raise ImportError("TEXT_FEATURE_NAMES and the kernel disagree on the text block width")

MATCH_FEATURE_NAMES = ("num_match", "has_num", "head_match", "pair_match")
if len(MATCH_FEATURE_NAMES) != K.N_MATCH_FEATURES:  # pragma: no cover - import-time consistency
    raise ImportError("MATCH_FEATURE_NAMES and the kernel disagree on the match block width")

ITEM_STAT_NAMES = ("log_n_events", "log_n_queries", "mean_label")

_CP_BITS = 21


def _trigram_keys(text: str) -> list[int]:
    """Sorted distinct packed trigrams of ``" " + text + " "`` (21 bits per code point + 1)."""
    padded = f" {text} "
    cps = [ord(c) + 1 for c in padded]
    keys = {(cps[i] << (2 * _CP_BITS)) | (cps[i + 1] << _CP_BITS) | cps[i + 2] for i in range(len(cps) - 2)}
    return sorted(keys)


class ItemTextIndex:
    """Per-item token ids, BM25 IDF and lengths, and character-trigram sets of the item texts.

    Built offline from the catalogue's (normalised) texts with :meth:`build`; persisted with
    :meth:`to_arrays` / :meth:`from_arrays`.

    Arrays
    ------
    vocab_flat, vocab_ptr : uint8 / int64, the vocabulary (sorted tokens) as UTF-8 flat + ptr.
    idf : float32 (n_terms,), ``ln(1 + (n_items - df + 0.5) / (df + 0.5))``.
    tok_flat, tok_ptr : int32 / int64, every item's token ids in text order.
    tri_flat, tri_ptr : int64 / int64, every item's sorted distinct packed character trigrams.
    """

    def __init__(self, vocab: list[str], idf: np.ndarray, tok_flat: np.ndarray, tok_ptr: np.ndarray,
                 tri_flat: np.ndarray, tri_ptr: np.ndarray, *, k1: float = 1.2, b: float = 0.75,
                 analyzer: str = "qp2q", match_features: bool = False):
        if not (k1 >= 0.0):
            raise ValueError(f"k1 must be >= 0, got {k1}")
        if not (0.0 <= b <= 1.0):
            raise ValueError(f"b must be in [0, 1], got {b}")
        if analyzer not in ANALYZERS:
            raise ValueError(f"analyzer must be one of {ANALYZERS}, got {analyzer!r}")
        if len(vocab) != len(idf):
            raise ValueError("idf must have one value per vocabulary term")
        if len(tok_ptr) != len(tri_ptr):
            raise ValueError("tok_ptr and tri_ptr must have n_items + 1 entries each")
        self.analyzer = analyzer
        self.match_features = bool(match_features)
        self.text_feature_names = TEXT_FEATURE_NAMES + (MATCH_FEATURE_NAMES if self.match_features else ())
        self.n_text_features = len(self.text_feature_names)
        # Derived at load, never stored: 1 for terms holding a digit (sizes, counts, model numbers).
        self.term_is_num = np.fromiter((any(c.isdigit() for c in t) for t in vocab), dtype=np.uint8,
                                       count=len(vocab))
        self._terms = get_analyzer(analyzer).terms
        self.vocab = vocab
        self.term_id = {t: i for i, t in enumerate(vocab)}
        self.idf = np.asarray(idf, dtype=np.float32)
        self.tok_flat = np.asarray(tok_flat, dtype=np.int32)
        self.tok_ptr = np.asarray(tok_ptr, dtype=np.int64)
        self.tri_flat = np.asarray(tri_flat, dtype=np.int64)
        self.tri_ptr = np.asarray(tri_ptr, dtype=np.int64)
        self.k1 = float(k1)
        self.b = float(b)
        self.n_items = len(self.tok_ptr) - 1
        lengths = np.diff(self.tok_ptr)
        self.avg_len = float(lengths.mean()) if self.n_items and lengths.sum() > 0 else 1.0
        self.unseen_idf = float(np.float32(bm25_idf(0.0, self.n_items)))
        self._idf_list = self.idf.tolist()
        # Bounded per-index cache of query arrays: Search and Complete previews repeat queries.
        self._query_cache: dict = {}
        # Per thread, the last query's text block (see text_block_into).
        self._last_block = threading.local()

    # -- build ------------------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75,
              analyzer: str = "qp2q", match_features: bool = False) -> "ItemTextIndex":
        """Index item texts (item id = position in ``texts``), cut into terms by ``analyzer``;
        ``match_features`` adds the match block to :func:`candidate_features`."""
        n = len(texts)
        terms = get_analyzer(analyzer).terms
        token_lists = [terms(t) for t in texts]
        vocab = sorted({tok for toks in token_lists for tok in toks})
        term_id = {t: i for i, t in enumerate(vocab)}
        tok_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(t) for t in token_lists], out=tok_ptr[1:])
        tok_flat = np.fromiter((term_id[tok] for toks in token_lists for tok in toks),
                               dtype=np.int32, count=int(tok_ptr[-1]))
        # df counts an item once per term.
        df = np.zeros(len(vocab), dtype=np.float64)
        item_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(tok_ptr))
        if tok_flat.size:
            pairs = np.unique(item_of * max(len(vocab), 1) + tok_flat)
            np.add.at(df, pairs % max(len(vocab), 1), 1.0)
        idf = bm25_idf(df, n).astype(np.float32)
        tri_flat, tri_ptr = cls._build_trigrams([" ".join(t) for t in token_lists])
        return cls(vocab, idf, tok_flat, tok_ptr, tri_flat, tri_ptr, k1=k1, b=b, analyzer=analyzer,
                   match_features=match_features)

    @staticmethod
    def _build_trigrams(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        padded = [f" {t} " for t in texts]
        lengths = np.fromiter((len(p) for p in padded), dtype=np.int64, count=len(padded))
        cps = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.int64) + 1
        n = len(texts)
        if cps.size < 3:
            return np.zeros(0, dtype=np.int64), np.zeros(n + 1, dtype=np.int64)
        keys = (cps[:-2] << (2 * _CP_BITS)) | (cps[1:-1] << _CP_BITS) | cps[2:]
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        item_of = np.repeat(np.arange(n, dtype=np.int64), lengths)[:-2]
        offset = np.arange(cps.size - 2, dtype=np.int64) - starts[item_of]
        valid = offset <= lengths[item_of] - 3
        keys, item_of = keys[valid], item_of[valid]
        order = np.lexsort((keys, item_of))
        keys, item_of = keys[order], item_of[order]
        keep = np.ones(keys.size, dtype=bool)
        keep[1:] = (keys[1:] != keys[:-1]) | (item_of[1:] != item_of[:-1])
        keys, item_of = keys[keep], item_of[keep]
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(item_of, minlength=n), out=ptr[1:])
        return keys, ptr

    # -- persistence ------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        vocab_flat, vocab_ptr = strings_to_arrays(self.vocab)
        params = {"k1": self.k1, "b": self.b, "n_items": self.n_items, "n_terms": len(self.vocab),
                  "analyzer": self.analyzer, "match_features": self.match_features}
        arrays = {"vocab_flat": vocab_flat, "vocab_ptr": vocab_ptr, "idf": self.idf,
                  "tok_flat": self.tok_flat, "tok_ptr": self.tok_ptr,
                  "tri_flat": self.tri_flat, "tri_ptr": self.tri_ptr}
        return params, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "ItemTextIndex":
        vocab = arrays_to_strings(arrays["vocab_flat"], arrays["vocab_ptr"])
        idx = cls(vocab, arrays["idf"], arrays["tok_flat"], arrays["tok_ptr"], arrays["tri_flat"],
                  arrays["tri_ptr"], k1=params["k1"], b=params["b"], analyzer=params.get("analyzer", "qp2q"),
                  match_features=bool(params.get("match_features", False)))
        if idx.n_items != params["n_items"]:
            raise ValueError(f"n_items: params say {params['n_items']}, arrays hold {idx.n_items}")
        return idx

    def same_content(self, other: "ItemTextIndex") -> bool:
        """True when ``other`` holds the same parameters and arrays (:meth:`to_arrays`), so either
        one gives the same features for every query and item (load code, not the request path)."""
        if not isinstance(other, ItemTextIndex):
            return False
        (p1, a1), (p2, a2) = self.to_arrays(), other.to_arrays()
        return p1 == p2 and a1.keys() == a2.keys() and all(np.array_equal(a1[k], a2[k]) for k in a1)

    # -- request path -----------------------------------------------------------------------
    _QUERY_CACHE_SIZE = 4096

    def query_arrays(self, query: str):
        """``(q_terms int32, q_idf float64, q_seq int32, q_tri int64)`` of a query (analysed here).

        The arrays are cached per query (at most ``_QUERY_CACHE_SIZE``, cleared when full); callers
        must not write into them.
        """
        cached = self._query_cache.get(query)
        if cached is not None:
            return cached
        arrays = self._query_arrays(query)
        for a in arrays:
            a.setflags(write=False)
        if len(self._query_cache) >= self._QUERY_CACHE_SIZE:
            self._query_cache.clear()
        self._query_cache[query] = arrays
        return arrays

    def _query_arrays(self, query: str):
        tokens = self._terms(query)
        term_id = self.term_id
        seq = [term_id.get(t, -1) for t in tokens]
        distinct = list(dict.fromkeys(tokens))
        q_terms = np.array([term_id.get(t, -1) for t in distinct], dtype=np.int32)
        idf = self._idf_list
        unseen = self.unseen_idf
        q_idf = np.array([idf[i] if i >= 0 else unseen for i in q_terms.tolist()], dtype=np.float64)
        q_tri = np.array(_trigram_keys(" ".join(tokens)) if tokens else [], dtype=np.int64)
        return q_terms, q_idf, np.array(seq, dtype=np.int32), q_tri

    def text_block_into(self, query: str, item_ids: np.ndarray, out: np.ndarray) -> None:
        """Write the text block (``n_text_features`` columns: the text features, then the match
        features when the index has them) of candidates ``item_ids`` (int32 (m,), validated) for
        ``query`` into ``out[:, :n_text_features]`` (float32 (m, f)).

        A row depends only on the query and the item (the index never changes after it is built), so
        each thread remembers the rows of its last query on this index: a second call for the same
        query -- the Home Depot ranker after the learned fusion scored its pool, through the same
        index -- copies the rows it has and computes only the others. A call for another query
        replaces the memory. Same values as computing every row.
        """
        memo = self._last_block
        # ``index is self``: shallow copies (the grown items' index) share the thread-local object.
        if getattr(memo, "index", None) is not self or memo.query != query:
            self._compute_block(query, item_ids, out)
            order = np.argsort(item_ids, kind="stable")
            memo.index = None  # never a half-updated memory
            memo.query, memo.ids, memo.rows = query, item_ids[order], out[order, :self.n_text_features]
            memo.index = self
            return
        ids, rows = memo.ids, memo.rows
        pos, have = sorted_member(ids, item_ids)
        out[have, :self.n_text_features] = rows[pos[have]]
        if not have.all():
            miss = np.flatnonzero(~have)
            block = np.empty((miss.size, self.n_text_features), dtype=np.float32)
            self._compute_block(query, item_ids[miss], block)
            out[miss, :self.n_text_features] = block

    def _compute_block(self, query: str, item_ids: np.ndarray, out: np.ndarray) -> None:
        q_terms, q_idf, q_seq, q_tri = self.query_arrays(query)
        K.text_features(item_ids, q_terms, q_idf, q_seq, q_tri, self.tok_flat, self.tok_ptr, self.tri_flat,
                        self.tri_ptr, self.avg_len, self.k1, self.b, out)
        if self.match_features:
            K.match_features(item_ids, q_terms, q_seq, self.term_is_num, self.tok_flat, self.tok_ptr, out,
                             K.N_TEXT_FEATURES)

    def item_text(self, item_id: int) -> str:
        """The indexed text of an item (tokens joined by single spaces)."""
        lo, hi = int(self.tok_ptr[item_id]), int(self.tok_ptr[item_id + 1])
        return " ".join(self.vocab[t] for t in self.tok_flat[lo:hi].tolist())


def item_stats_from_pairs(n_items: int, item_ids: np.ndarray, query_ids: np.ndarray,
                          labels: np.ndarray | None = None, *, prior_weight: float = 2.0) -> np.ndarray:
    """Item statistics ``(n_items, 3)`` float32 from logged (query, item[, label]) events.

    Columns ``ITEM_STAT_NAMES``: ``log1p(events)``, ``log1p(distinct queries)``, and the item's mean
    label shrunk towards the global mean with ``prior_weight`` pseudo-events (the global mean when
    the item has none; 0 when ``labels`` is None, e.g. clicks, where every event is a positive).
    Build the statistics from events the ranker is *not* trained on (other folds, earlier days):
    an item's own label must never leak into its features.
    """
    item_ids = np.asarray(item_ids, dtype=np.int64)
    query_ids = np.asarray(query_ids, dtype=np.int64)
    if item_ids.shape != query_ids.shape:
        raise ValueError("item_ids and query_ids must have the same shape")
    if item_ids.size and (item_ids.min() < 0 or item_ids.max() >= n_items):
        raise ValueError("item_ids out of range")
    out = np.zeros((n_items, len(ITEM_STAT_NAMES)), dtype=np.float32)
    n_ev = np.bincount(item_ids, minlength=n_items).astype(np.float64)
    out[:, 0] = np.log1p(n_ev)
    if item_ids.size:
        pairs = np.unique(np.stack([item_ids, query_ids], axis=1), axis=0)
        out[:, 1] = np.log1p(np.bincount(pairs[:, 0], minlength=n_items))
    if labels is not None:
        labels = np.asarray(labels, dtype=np.float64)
        mu = float(labels.mean()) if labels.size else 0.0
        s = np.bincount(item_ids, weights=labels, minlength=n_items)
        out[:, 2] = (s + prior_weight * mu) / (n_ev + prior_weight)
    return out


def ranker_text_names(text_index: ItemTextIndex, with_pair: bool = False) -> tuple:
    """Names of the columns before the item statistics: the index's text block, then ``pair_score``
    when :func:`candidate_features` is given a pair model."""
    from retrieval.pair_model import PAIR_FEATURE_NAME

    return text_index.text_feature_names + ((PAIR_FEATURE_NAME,) if with_pair else ())


def feature_names(arm_names: Sequence[str] = (), stat_names: Sequence[str] = ITEM_STAT_NAMES,
                  text_names: Sequence[str] = TEXT_FEATURE_NAMES) -> list[str]:
    """Column names of :func:`candidate_features` for these arms and item statistics
    (``text_names``: the index's ``text_feature_names``)."""
    return (list(text_names) + [f"stat:{s}" for s in stat_names]
            + [f"arm_score:{a}" for a in arm_names] + [f"arm_proposed:{a}" for a in arm_names])


def arm_score_matrix(arm_ids: Sequence[np.ndarray], arm_scores: Sequence[np.ndarray], item_ids: np.ndarray,
                     top: int | None = None) -> np.ndarray:
    """Each candidate's score in each arm's list (its first ``top`` entries), 0 where absent.

    The arm block of :func:`candidate_features` at training time (``retrieval.ranker`` retrieves the
    lists) and at serving time (``retrieval.pipeline`` already has them): one definition, so the
    "proposed" indicators (``score != 0``) mean the same thing in both.

    Returns
    -------
    float32 array of shape (len(item_ids), len(arm_ids)); a repeated item id gets the same row at
    each of its positions (a judged set may list a product twice).
    """
    keys = np.asarray(item_ids, dtype=np.int64).ravel()
    n_arms = len(arm_ids)
    if keys.size == 0 or n_arms == 0:
        return np.zeros((keys.size, n_arms), dtype=np.float32)
    # One kernel over every arm's head (Search's ranker features: ~8 arms x 100 entries a request,
    # where per-arm NumPy calls cost more than the work). Arms list an item at most once, so each
    # (row, arm) cell is written at most once.
    heads = [np.asarray(ids[:top], dtype=np.int64) for ids in arm_ids]
    values = np.concatenate([np.asarray(sc[:top], dtype=np.float32) for sc in arm_scores])
    out = np.zeros((keys.size, n_arms), dtype=np.float32)
    K.arm_score_matrix(keys, np.concatenate(heads), values, offsets([h.size for h in heads]), out)
    return out


def _check_inputs(item_ids, arm_scores, text_index, item_stats, arm_proposed):
    item_ids = np.asarray(item_ids)
    if item_ids.ndim != 1:
        raise ValueError(f"item_ids must be 1-d, got shape {item_ids.shape}")
    m = item_ids.shape[0]
    if item_ids.dtype != np.int32:
        if item_ids.size and not np.issubdtype(item_ids.dtype, np.integer):
            raise ValueError(f"item_ids must be integers, got {item_ids.dtype}")
        item_ids = item_ids.astype(np.int32)
    if m and (int(item_ids.min()) < 0 or int(item_ids.max()) >= text_index.n_items):
        raise ValueError(f"item_ids must be in [0, {text_index.n_items})")
    arm_scores = np.asarray(arm_scores, dtype=np.float32)
    if arm_scores.ndim != 2 or arm_scores.shape[0] != m:
        raise ValueError(f"arm_scores must have shape ({m}, n_arms), got {arm_scores.shape}")
    item_stats = np.asarray(item_stats, dtype=np.float32)
    if item_stats.ndim != 2 or item_stats.shape[0] != text_index.n_items:
        raise ValueError(f"item_stats must have shape ({text_index.n_items}, n_stats), got {item_stats.shape}")
    if arm_proposed is not None:
        arm_proposed = np.asarray(arm_proposed)
        if arm_proposed.shape != arm_scores.shape:
            raise ValueError(f"arm_proposed must have shape {arm_scores.shape}, got {arm_proposed.shape}")
    return item_ids, arm_scores, item_stats, arm_proposed


def candidate_features(query: str, item_ids: np.ndarray, arm_scores: np.ndarray,
                       text_index: ItemTextIndex, item_stats: np.ndarray,
                       arm_proposed: np.ndarray | None = None, pair_model=None) -> np.ndarray:
    """Feature matrix of one query's candidates (training and serving share this function).

    Parameters
    ----------
    query : str
        Query (analysed here by ``text_index.analyzer``; normalisation is idempotent).
    item_ids : int32 array of shape (m,)
        Candidate item ids (catalogue positions).
    arm_scores : float32 array of shape (m, n_arms)
        Score of each candidate by each arm, 0 where the arm did not propose it.
    text_index : ItemTextIndex
    item_stats : float32 array of shape (n_items, n_stats)
    arm_proposed : bool array of shape (m, n_arms), optional
        Which arm proposed which candidate; default ``arm_scores != 0``.
    pair_model : retrieval.pair_model.TermPairModel, optional
        Adds the ``pair_score`` column after the text block (fitted on ``text_index``'s vocabulary).

    Returns
    -------
    float32 array of shape (m, text_index.n_text_features [+ 1] + n_stats + 2 * n_arms), columns
    ``feature_names(arms, stats, ranker_text_names(text_index, pair_model is not None))``.

    Raises
    ------
    ValueError
        On a shape mismatch, an item id outside the index, or a pair model of another vocabulary.
    """
    item_ids, arm_scores, item_stats, arm_proposed = _check_inputs(
        item_ids, arm_scores, text_index, item_stats, arm_proposed)
    m = item_ids.shape[0]
    n_arms = arm_scores.shape[1]
    n_stats = item_stats.shape[1]
    nt = text_index.n_text_features + (pair_model is not None)
    out = np.empty((m, nt + n_stats + 2 * n_arms), dtype=np.float32)
    if m == 0:
        return out
    text_index.text_block_into(query, item_ids, out)
    if pair_model is not None:
        pair_model.scores_into(query, item_ids, text_index, out, text_index.n_text_features)
    out[:, nt:nt + n_stats] = item_stats[item_ids]
    a0 = nt + n_stats
    out[:, a0:a0 + n_arms] = arm_scores
    out[:, a0 + n_arms:] = (arm_scores != 0) if arm_proposed is None else arm_proposed
    return out


def reference_candidate_features(query: str, item_texts: Sequence[str], arm_scores: np.ndarray,
                                 idf: Mapping[str, float], unseen_idf: float, avg_len: float,
                                 item_stat_rows: np.ndarray, k1: float = 1.2, b: float = 0.75,
                                 arm_proposed: np.ndarray | None = None, analyzer: str = "qp2q",
                                 match_features: bool = False, pair_model=None) -> np.ndarray:
    """Slow pure-Python twin of :func:`candidate_features`, straight from the definitions.

    Works on the item *texts* and a term -> IDF mapping instead of the index arrays (the pair column:
    :func:`retrieval.pair_model.reference_pair_scores` from the texts and ``pair_model``'s weights);
    the tests check the numba path against it.
    """
    pair = None
    if pair_model is not None:
        from retrieval.pair_model import reference_pair_scores

        pair = reference_pair_scores(query, item_texts, pair_model.weights, pair_model.intercept,
                                     pair_model.config.n_bits, analyzer)
    terms = get_analyzer(analyzer).terms
    q_tokens = terms(query)
    distinct = list(dict.fromkeys(q_tokens))
    q_tri = set(_trigram_keys(" ".join(q_tokens))) if q_tokens else set()
    rows = []
    for r, text in enumerate(item_texts):
        toks = terms(text)
        tf = Counter(toks)
        dl = len(toks)
        qidf = {t: idf.get(t, unseen_idf) for t in distinct}
        matched = [t for t in distinct if tf[t] > 0]
        bm25 = sum(qidf[t] * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * dl / avg_len)) for t in matched)
        idf_total = sum(qidf.values())
        phrase = 0.0
        if q_tokens and all(t in idf for t in q_tokens):
            n = len(q_tokens)
            phrase = float(any(toks[s:s + n] == q_tokens for s in range(dl - n + 1)))
        i_tri = set(_trigram_keys(" ".join(toks)))
        inter = len(i_tri & q_tri)
        union = len(i_tri | q_tri)
        qset = set(distinct)
        pos = [p for p, t in enumerate(toks) if t in qset]
        row = [
            bm25,
            len(matched) / len(distinct) if distinct else 0.0,
            sum(qidf[t] for t in matched) / idf_total if idf_total > 0 else 0.0,
            phrase,
            inter / union if union else 0.0,
            inter / math.sqrt(len(i_tri) * len(q_tri)) if i_tri and q_tri else 0.0,
            inter / len(q_tri) if q_tri else 0.0,
            float(len(q_tokens)),
            float(dl),
            1.0 / (1 + pos[0]) if pos else 0.0,
            len(pos) / dl if dl else 0.0,
            float(len(matched)),
        ]
        if match_features:
            known = [t for t in distinct if t in idf]
            nums = [t for t in known if any(c.isdigit() for c in t)]
            pairs = list(zip(q_tokens, q_tokens[1:]))
            item_pairs = set(zip(toks, toks[1:]))
            row += [
                sum(tf[t] > 0 for t in nums) / len(nums) if nums else 0.0,
                1.0 if nums else 0.0,
                1.0 if q_tokens and q_tokens[-1] in idf and tf[q_tokens[-1]] > 0 else 0.0,
                sum(a in idf and b in idf and (a, b) in item_pairs for a, b in pairs) / len(pairs) if pairs else 0.0,
            ]
        if pair is not None:
            row.append(float(pair[r]))
        row += [float(v) for v in item_stat_rows[r]]
        row += [float(v) for v in arm_scores[r]]
        prop = (arm_scores[r] != 0) if arm_proposed is None else arm_proposed[r]
        row += [float(v) for v in prop]
        rows.append(row)
    n_text = K.N_TEXT_FEATURES + (K.N_MATCH_FEATURES if match_features else 0) + (pair is not None)
    n_cols = n_text + np.asarray(item_stat_rows).reshape(len(item_texts), -1).shape[1] + 2 * np.asarray(arm_scores).reshape(len(item_texts), -1).shape[1]
    return np.array(rows, dtype=np.float32).reshape(len(item_texts), n_cols)
