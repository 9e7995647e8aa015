"""Character n-gram TF-IDF arm (typo tolerant): cosine similarity of query and item n-gram vectors.

A misspelt query ("tiolet") shares most of its character trigrams with the right word ("toilet":
`` to``, ``let``, ``et ``), so this arm finds items BM25 misses on typos, run-together words
("deckpaint") and partial tokens.

Analyzer: scikit-learn's ``analyzer="char_wb"`` on the normalised text (``qac.text``): every
whitespace-separated word is padded with one space on each side (``" toilet "``) and cut into
character n-grams of length ``ngram_min..ngram_max`` that never cross a word boundary; a padded word
of length <= n contributes itself once and no longer n-grams. The padding marks word starts and ends, so ``" to"`` (a word
starting with "to") differs from ``"to"`` inside a word.

Weights exactly as ``TfidfVectorizer(analyzer="char_wb", ngram_range=(ngram_min, ngram_max),
lowercase=False)`` (Salton & Buckley 1988 TF-IDF with scikit-learn's smoothing)::

    idf(g)  = ln((1 + N) / (1 + df(g))) + 1
    x(d, g) = tf(g, d) * idf(g) / || tf(., d) * idf(.) ||_2
    score(q, d) = x(q) . x(d)            (cosine; query n-grams unknown to the index are ignored)

Index: inverted lists over n-grams (``postings_ptr`` int64, ``postings_items`` int32,
``postings_data`` float32 = the item's normalised weight), ``idf`` float32, vocabulary as UTF-8
``vocab_flat`` + ``vocab_ptr``. ``retrieve`` computes the query vector in Python (a few dozen
n-grams), then one numba kernel accumulates the dot products and selects the top ``n``. The few
n-grams held by at least 40% of the items (`` co``, ``com``, ``om `` on AOL sites) are added last,
from a dense per-item copy built at load time, and skipped when an exact bound shows they cannot
change the top ``n`` (``_kernels.dot_top_n_dense_last``); every score is the float32 sum in that
order (sparse n-grams by id, then dense ones), whichever path is taken.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from operator import mul
from typing import Mapping, Sequence

import numpy as np

from qac.artifacts import arrays_to_strings, strings_to_arrays
from retrieval.analyzer import ANALYZERS, get_analyzer
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

__all__ = ["CharGramConfig", "CharGramArm", "build_chargram_arm", "char_wb_ngrams"]


@dataclass(frozen=True)
class CharGramConfig:
    """Character n-gram lengths.

    Attributes
    ----------
    ngram_min, ngram_max : int
        ``1 <= ngram_min <= ngram_max <= 8``; the default (3, 3) is character trigrams.
    analyzer : str
        The words n-grams are cut from are this analyzer's terms (:mod:`retrieval.analyzer`;
        ``"qp2q"`` = the whitespace tokens of ``normalize_query``).
    """

    ngram_min: int = 3
    ngram_max: int = 3
    analyzer: str = "qp2q"

    def __post_init__(self) -> None:
        for name in ("ngram_min", "ngram_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if not 1 <= value <= 8:
                raise ValueError(f"{name} must be in [1, 8], got {value}")
            object.__setattr__(self, name, int(value))
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min must be <= ngram_max, got {self.ngram_min} > {self.ngram_max}")
        if self.analyzer not in ANALYZERS:
            raise ValueError(f"analyzer must be one of {ANALYZERS}, got {self.analyzer!r}")


def char_wb_ngrams(text: str, ngram_min: int = 3, ngram_max: int = 3, analyzer: str = "qp2q") -> list[str]:
    """The n-grams of scikit-learn's ``char_wb`` analyzer on the analyzer's terms of ``text``
    joined by spaces (``"qp2q"``: ``normalize_query(text)``).

    Parameters
    ----------
    text : str
    ngram_min, ngram_max : int
    analyzer : str

    Returns
    -------
    list of str
        With repeats (term frequency), word by word, shorter n first within a word.
    """
    return _wb_grams(get_analyzer(analyzer).terms(text), ngram_min, ngram_max)


def _wb_grams(words, ngram_min: int, ngram_max: int) -> list[str]:
    """``char_wb`` n-grams of already analysed ``words``."""
    out: list[str] = []
    for word in words:
        w = f" {word} "
        size = len(w)
        for n in range(ngram_min, ngram_max + 1):
            if size <= n:
                out.append(w)  # as scikit-learn: a short padded word counts once, whole,
                break  # and longer n-gram sizes add nothing for it
            out.extend([w[i:i + n] for i in range(size - n + 1)])
    return out


def _smooth_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    return np.log((1.0 + n_docs) / (1.0 + df.astype(np.float64))) + 1.0


class CharGramArm(Arm):
    """Character n-gram TF-IDF cosine arm; see the module docstring."""

    name = "chargram"

    def __init__(self, config: CharGramConfig, vocab: list[str], idf: np.ndarray, postings_ptr: np.ndarray,
                 postings_items: np.ndarray, postings_data: np.ndarray, n_items: int) -> None:
        if idf.dtype != np.float32 or idf.shape != (len(vocab),):
            raise ValueError(f"idf must be float32 of shape ({len(vocab)},), got {idf.dtype}{idf.shape}")
        check_postings("chargram", len(vocab), n_items, postings_ptr, postings_items, postings_data)
        self.config = config
        self._vocab = vocab
        self._gram_id = {g: i for i, g in enumerate(vocab)}
        if len(self._gram_id) != len(vocab):
            raise ValueError("vocab: n-grams must be distinct")
        self.idf = idf
        self._idf_list = idf.astype(np.float64).tolist()
        self.postings_ptr = postings_ptr
        self.postings_items = postings_items
        self.postings_data = postings_data
        self._n_items = int(n_items)
        self._index = PostingsIndex(postings_ptr, postings_items, postings_data, self._n_items)

    # ---- build / persistence -------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Sequence[str], ngram_min: int = 3, ngram_max: int = 3,
              analyzer: str = "qp2q") -> "CharGramArm":
        """Index ``texts`` (item id = position).

        Parameters
        ----------
        texts : sequence of str, length n_items
            Item texts, normalised here (idempotent).
        ngram_min, ngram_max, analyzer :
            See :class:`CharGramConfig`.

        Raises
        ------
        ValueError
            Bad n-gram range (naming the field) or zero texts.
        TypeError
            ``texts`` is a str or holds a non-str.
        """
        config = CharGramConfig(ngram_min=ngram_min, ngram_max=ngram_max, analyzer=analyzer)
        terms = get_analyzer(config.analyzer).terms
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts: expected a sequence of str, got a single string")
        texts = list(texts)
        if not texts:
            raise ValueError("texts: cannot index zero items")
        # n-grams never cross word boundaries, so they are computed once per distinct word (titles
        # share most of their words: ~10x fewer n-gram computations than per text).
        provisional: dict[str, int] = {}
        word_grams: dict[str, list[int]] = {}
        lens = np.zeros(len(texts), dtype=np.int64)
        flat_list: list[int] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected str, got {type(text).__name__}")
            start = len(flat_list)
            for word in terms(text):
                ids = word_grams.get(word)
                if ids is None:
                    grams = _wb_grams((word,), config.ngram_min, config.ngram_max)
                    ids = word_grams[word] = [provisional.setdefault(g, len(provisional)) for g in grams]
                flat_list.extend(ids)
            lens[i] = len(flat_list) - start
        vocab = sorted(provisional)
        remap = np.empty(len(provisional), dtype=np.int64)
        remap[[provisional[g] for g in vocab]] = np.arange(len(vocab))
        flat = np.array(flat_list, dtype=np.int64)
        doc_ids = np.repeat(np.arange(len(texts), dtype=np.int64), lens)
        ptr, items, counts = build_postings(doc_ids, remap[flat], len(vocab), len(texts))
        idf = _smooth_idf(np.diff(ptr), len(texts)).astype(np.float32)
        term_of = np.repeat(np.arange(len(vocab)), np.diff(ptr))
        weights = counts.astype(np.float64) * idf.astype(np.float64)[term_of]
        norms = np.sqrt(np.bincount(items, weights=weights * weights, minlength=len(texts)))
        data = (weights / norms[items]).astype(np.float32)
        return cls(config, vocab, idf, ptr, items, data, len(texts))

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)``: config and counts; vocabulary, idf, postings."""
        vocab_flat, vocab_ptr = strings_to_arrays(self._vocab)
        params = {**asdict(self.config), "n_items": self._n_items, "n_terms": len(self._vocab)}
        return params, {
            "vocab_flat": vocab_flat,
            "vocab_ptr": vocab_ptr,
            "idf": self.idf,
            "postings_ptr": self.postings_ptr,
            "postings_items": self.postings_items,
            "postings_data": self.postings_data,
        }

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "CharGramArm":
        """Inverse of :meth:`to_arrays`; arrays are used as given (e.g. read-only memory maps).

        Raises
        ------
        ValueError
            Params and arrays disagree.
        """
        vocab = arrays_to_strings(arrays["vocab_flat"], arrays["vocab_ptr"])
        if len(vocab) != int(params["n_terms"]):
            raise ValueError(f"n_terms: params say {params['n_terms']}, vocabulary holds {len(vocab)}")
        config = CharGramConfig(ngram_min=params["ngram_min"], ngram_max=params["ngram_max"],
                                analyzer=params.get("analyzer", "qp2q"))
        return cls(config, vocab, arrays["idf"], arrays["postings_ptr"], arrays["postings_items"],
                   arrays["postings_data"], int(params["n_items"]))

    # ---- serving -------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self._n_items

    @property
    def n_terms(self) -> int:
        """Number of distinct n-grams in the index."""
        return len(self._vocab)

    def query_vector(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised TF-IDF of the query over known n-grams.

        Returns
        -------
        gram_ids : int64 (q,), ascending
        weights : float64 (q,), L2 norm 1 (or q == 0)
        """
        # Hot path (every Search): the n-grams are looked up by one C-level map(); the counting
        # loop runs only when an n-gram repeats.
        grams = char_wb_ngrams(query, self.config.ngram_min, self.config.ngram_max, self.config.analyzer)
        ids_seq = list(map(self._gram_id.get, grams))
        tf = dict.fromkeys(ids_seq, 1)
        if len(tf) != len(ids_seq):
            tf = {}
            for i in ids_seq:
                tf[i] = tf.get(i, 0) + 1
        tf.pop(None, None)  # unknown n-grams
        if not tf:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        ids = sorted(tf)
        w = np.array(list(map(mul, map(tf.__getitem__, ids), map(self._idf_list.__getitem__, ids))), dtype=np.float64)
        w /= np.sqrt(np.dot(w, w))
        return np.array(ids, dtype=np.int64), w

    def retrieve(self, query: str, context: Context = EMPTY_CONTEXT, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items by n-gram cosine (see :meth:`Arm.retrieve` for the contract).

        ``context`` is unused.
        """
        n = check_n(n)
        check_query(query)
        if n == 0:
            return empty_result()
        gram_ids, weights = self.query_vector(query)
        if gram_ids.size == 0:
            return empty_result()
        return self._index.top_n(gram_ids, weights, n)

    def warmup(self) -> None:
        """Compile/load the kernel for the served arrays."""
        self._index.warmup()


def build_chargram_arm(texts: Sequence[str], config: CharGramConfig = CharGramConfig()) -> CharGramArm:
    """Offline builder: :meth:`CharGramArm.build` with a :class:`CharGramConfig`."""
    return CharGramArm.build(texts, ngram_min=config.ngram_min, ngram_max=config.ngram_max,
                             analyzer=config.analyzer)
