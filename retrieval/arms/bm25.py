"""BM25 full-text arm over item texts (numba inverted index).

Scoring (Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", FnTIR
2009, eq. 3.15; idf as Lucene's ``BM25Similarity``)::

    score(q, d) = sum over DISTINCT terms t of q present in d of
                  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

``tf(t, d)`` counts occurrences of ``t`` among the terms of the item text (``BM25Config.analyzer``,
:mod:`retrieval.analyzer`: ``"qp2q"`` = the whitespace tokens of ``normalize_query``),
``|d|`` is the number of tokens of ``d``, ``avgdl`` their mean over the catalogue, ``N`` the number
of items and ``df(t)`` the number of items containing ``t``. A query term repeated in the query
counts once (``"saw saw"`` scores as ``"saw"``): queries are short and a repeat is usually a typing
accident, not emphasis. Query terms absent from the vocabulary are ignored; a query without known
terms returns nothing. Only items sharing a term with the query are returned (score > 0 always,
Lucene's idf is positive).

Index: CSC-like flat arrays (``postings_ptr`` int64, ``postings_items`` int32 ascending,
``postings_tf`` float32) plus ``doc_len`` int32; the vocabulary is stored as UTF-8 ``vocab_flat`` +
``vocab_ptr`` (terms sorted, term id = rank) and turned into a dict at load. ``retrieve`` looks the
query terms up in the dict, then one numba kernel accumulates the scores into a per-thread float32
scratch array and selects the top ``n`` with a bounded heap. Each posting's term score (float64,
rounded to float32) is computed once at load (:func:`bm25_impacts`); terms held by at least 40% of
the items (``com`` on AOL sites) are added last and skipped when they cannot change the top ``n``
(``_kernels.dot_top_n_dense_last``), so an item's score is the float32 sum of its term scores, rare
terms by id first, then those.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from qac.artifacts import arrays_to_strings, strings_to_arrays
from retrieval.analyzer import ANALYZERS, get_analyzer
from retrieval.arms import _kernels
from retrieval.arms.base import (
    Arm,
    Context,
    EMPTY_CONTEXT,
    PostingsIndex,
    build_postings,
    check_n,
    check_postings,
    check_query,
    empty_result,
)

__all__ = ["BM25Config", "BM25Arm", "build_bm25_arm", "bm25_idf"]


@dataclass(frozen=True)
class BM25Config:
    """BM25 parameters.

    Attributes
    ----------
    k1 : float
        Term-frequency saturation, finite and >= 0 (0 = binary term presence).
    b : float
        Length normalisation, in [0, 1].
    analyzer : str
        How texts and queries become terms (:data:`retrieval.analyzer.ANALYZERS`).
    compounds : bool
        Also index (and query) the concatenation of adjacent word pairs
        (:meth:`retrieval.analyzer.Analyzer.compounds`), on both sides.
    """

    k1: float = 1.2
    b: float = 0.75
    analyzer: str = "qp2q"
    compounds: bool = False

    def __post_init__(self) -> None:
        for name in ("k1", "b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {self.b}")
        if self.analyzer not in ANALYZERS:
            raise ValueError(f"analyzer must be one of {ANALYZERS}, got {self.analyzer!r}")
        if not isinstance(self.compounds, bool):
            raise ValueError(f"compounds must be a bool, got {self.compounds!r}")

    def terms(self, text: str) -> list[str]:
        """Index terms of ``text`` under this configuration (repeats kept)."""
        analyzer = get_analyzer(self.analyzer)
        terms = analyzer.terms(text)
        return terms + analyzer.compounds(terms) if self.compounds else terms


def bm25_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene BM25 idf ``ln(1 + (N - df + 0.5) / (df + 0.5))``, float64 of the shape of ``df``."""
    df = np.asarray(df, dtype=np.float64)
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def bm25_impacts(idf: np.ndarray, k1: float, doc_norm: np.ndarray, postings_ptr: np.ndarray,
                 postings_items: np.ndarray, postings_tf: np.ndarray) -> np.ndarray:
    """Every posting's BM25 term score ``idf[t] * tf * (k1 + 1) / (tf + doc_norm[d])``, computed in
    float64 and rounded to float32, at least ``_kernels.MIN_CONTRIBUTION`` (Robertson & Zaragoza
    2009, eq. 3.15; module docstring). float32 of the postings' shape."""
    term_of = np.repeat(np.arange(postings_ptr.size - 1), np.diff(postings_ptr))
    tf = np.asarray(postings_tf, dtype=np.float64)
    score = idf[term_of] * tf * (float(k1) + 1.0) / (tf + doc_norm[postings_items])
    return np.maximum(score.astype(np.float32), _kernels.MIN_CONTRIBUTION)


class BM25Arm(Arm):
    """BM25 over item texts; see the module docstring for the formula.

    Build with :meth:`build` (offline) or load with :meth:`from_arrays`; the constructor takes the
    arrays directly and validates them.
    """

    name = "bm25"

    def __init__(self, config: BM25Config, vocab: list[str], postings_ptr: np.ndarray,
                 postings_items: np.ndarray, postings_tf: np.ndarray, doc_len: np.ndarray) -> None:
        n_items = int(doc_len.shape[0])
        if doc_len.dtype != np.int32 or doc_len.ndim != 1:
            raise ValueError(f"doc_len must be a 1-d int32 array, got {doc_len.dtype}{doc_len.shape}")
        check_postings("bm25", len(vocab), n_items, postings_ptr, postings_items, postings_tf)
        self.config = config
        self._terms = config.terms
        self._vocab = vocab
        self._term_id = {t: i for i, t in enumerate(vocab)}
        if len(self._term_id) != len(vocab):
            raise ValueError("vocab: terms must be distinct")
        self.postings_ptr = postings_ptr
        self.postings_items = postings_items
        self.postings_tf = postings_tf
        self.doc_len = doc_len
        # Derived at load (float64, cheap): never stored, so they cannot disagree with the index.
        self.idf = bm25_idf(np.diff(postings_ptr), n_items)
        total = float(np.sum(doc_len, dtype=np.int64))
        self.avg_len = total / n_items if n_items and total > 0 else 1.0
        self.doc_norm = config.k1 * (1.0 - config.b + config.b * doc_len.astype(np.float64) / self.avg_len)
        # Each posting's BM25 term score, computed once (4 bytes a posting): a query's score is then
        # a plain sum of impacts, with the very long postings last (``PostingsIndex``).
        impact = bm25_impacts(self.idf, config.k1, self.doc_norm, postings_ptr, postings_items, postings_tf)
        self._index = PostingsIndex(postings_ptr, postings_items, impact, n_items)

    # ---- build / persistence -------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Sequence[str], k1: float = 1.2, b: float = 0.75, analyzer: str = "qp2q",
              compounds: bool = False) -> "BM25Arm":
        """Index ``texts`` (item id = position).

        Parameters
        ----------
        texts : sequence of str, length n_items
            Item texts; cut into terms here by the analyzer (``"qp2q"``: :func:`qac.text.normalize_query`,
            idempotent, split on whitespace).
        k1, b, analyzer, compounds :
            See :class:`BM25Config`.

        Returns
        -------
        BM25Arm

        Raises
        ------
        ValueError
            Bad ``k1``/``b`` (naming the field) or zero texts.
        TypeError
            ``texts`` is a str or holds a non-str.
        """
        config = BM25Config(k1=k1, b=b, analyzer=analyzer, compounds=compounds)
        terms = config.terms
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts: expected a sequence of str, got a single string")
        texts = list(texts)
        if not texts:
            raise ValueError("texts: cannot index zero items")
        provisional: dict[str, int] = {}
        doc_tokens: list[list[int]] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected str, got {type(text).__name__}")
            doc_tokens.append([provisional.setdefault(t, len(provisional)) for t in terms(text)])
        vocab = sorted(provisional)
        remap = np.empty(len(provisional), dtype=np.int64)
        remap[[provisional[t] for t in vocab]] = np.arange(len(vocab))
        doc_len = np.fromiter(map(len, doc_tokens), dtype=np.int32, count=len(texts))
        flat = np.fromiter((t for toks in doc_tokens for t in toks), dtype=np.int64, count=int(doc_len.sum()))
        doc_ids = np.repeat(np.arange(len(texts), dtype=np.int64), doc_len)
        ptr, items, counts = build_postings(doc_ids, remap[flat], len(vocab), len(texts))
        return cls(config, vocab, ptr, items, counts.astype(np.float32), doc_len)

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)``: config, counts; vocabulary (UTF-8 flat + ptr), postings, doc_len."""
        vocab_flat, vocab_ptr = strings_to_arrays(self._vocab)
        params = {**asdict(self.config), "n_items": self.n_items, "n_terms": self.n_terms}
        return params, {
            "vocab_flat": vocab_flat,
            "vocab_ptr": vocab_ptr,
            "postings_ptr": self.postings_ptr,
            "postings_items": self.postings_items,
            "postings_tf": self.postings_tf,
            "doc_len": self.doc_len,
        }

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "BM25Arm":
        """Inverse of :meth:`to_arrays`; the postings stay as given (e.g. read-only memory maps).

        Raises
        ------
        ValueError
            Params and arrays disagree (counts, dtypes, shapes, out-of-range item ids).
        """
        vocab = arrays_to_strings(arrays["vocab_flat"], arrays["vocab_ptr"])
        if len(vocab) != int(params["n_terms"]):
            raise ValueError(f"n_terms: params say {params['n_terms']}, vocabulary holds {len(vocab)}")
        doc_len = arrays["doc_len"]
        if doc_len.shape != (int(params["n_items"]),):
            raise ValueError(f"n_items: params say {params['n_items']}, doc_len has shape {doc_len.shape}")
        # Artifacts written before the analyzer option analysed with qp2q.
        config = BM25Config(k1=params["k1"], b=params["b"], analyzer=params.get("analyzer", "qp2q"),
                            compounds=bool(params.get("compounds", False)))
        return cls(config, vocab, arrays["postings_ptr"],
                   arrays["postings_items"], arrays["postings_tf"], doc_len)

    # ---- serving -------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return int(self.doc_len.shape[0])

    @property
    def n_terms(self) -> int:
        """Vocabulary size."""
        return len(self._vocab)

    def term_ids(self, query: str) -> np.ndarray:
        """Distinct known term ids of ``query``, int64 ascending (unknown terms dropped)."""
        get = self._term_id.get
        ids = {get(t, -1) for t in self._terms(query)}
        ids.discard(-1)
        return np.array(sorted(ids), dtype=np.int64)

    def retrieve(self, query: str, context: Context = EMPTY_CONTEXT, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items by BM25 score (see :meth:`Arm.retrieve` for the contract).

        ``query`` is analysed here (normalisation is idempotent), so a raw query works too.
        ``context`` is unused.
        """
        n = check_n(n)
        check_query(query)
        if n == 0:
            return empty_result()
        term_ids = self.term_ids(query)
        if term_ids.size == 0:
            return empty_result()
        return self._index.top_n(term_ids, np.ones(term_ids.size), n)

    def warmup(self) -> None:
        """Compile/load the kernel for the served arrays (one call with the first term, if any)."""
        self._index.warmup()


def build_bm25_arm(texts: Sequence[str], config: BM25Config = BM25Config()) -> BM25Arm:
    """Offline builder: :meth:`BM25Arm.build` with a :class:`BM25Config`."""
    return BM25Arm.build(texts, k1=config.k1, b=config.b, analyzer=config.analyzer, compounds=config.compounds)
