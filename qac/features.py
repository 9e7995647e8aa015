"""Session-aware query features: ``l2norm([word TF-IDF(previous query) | char TF-IDF(prefix)])``.

The input of the XR-Linear completion model (Yadav et al., "Session-aware query auto-completion
using extreme multi-label ranking", KDD 2021, Sec. 4.1): the previous query of the session is
represented by word unigram TF-IDF, the prefix being typed by *position-weighted* character
1-3-gram TF-IDF, where an n-gram starting at character ``i`` (0-based) adds ``1 / (i + 1)`` to its
term frequency instead of 1, so that the beginning of the prefix dominates, as it would in a trie.

IDF and normalisation follow scikit-learn's ``TfidfVectorizer`` defaults (``smooth_idf=True``,
``norm="l2"``)::

    idf(t) = ln((1 + n_docs) / (1 + df(t))) + 1
    x(d, t) = tf(d, t) * idf(t) / || tf(d, .) * idf(.) ||_2

With ``position_weighted=False``, :class:`CharTfidf` equals
``TfidfVectorizer(analyzer="char", ngram_range=..., lowercase=False)`` and :class:`WordTfidf` equals
``TfidfVectorizer(token_pattern=r"\\S+", lowercase=False)``, up to float32 rounding.

Two paths compute the same numbers:

- batch ``fit`` / ``transform`` (build time): vectorised numpy for character n-grams of length
  <= 3 (an n-gram is packed into one int64 key, 21 bits per code point, so that integer order is
  the string order of the vocabulary); a plain-Python dict pass otherwise;
- ``transform_one`` (request path): a dict ``n-gram -> feature id`` built at load and plain-Python
  loops over the few n-grams of one short string, then two small arrays.

Feature ids are the ranks of the terms in Python ``str`` order (as scikit-learn's vocabulary).
Intermediate values are float64; outputs are float32.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from itertools import repeat
from operator import add, mul
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from qac.artifacts import arrays_to_strings, strings_to_arrays

__all__ = ["CharTfidf", "WordTfidf", "SessionFeaturizer"]

# The same rule as scikit-learn's char analyzer: runs of >= 2 whitespace characters become one space.
_WHITE_SPACES = re.compile(r"\s\s+")
# Code points are < 0x110000, so (code point + 1) fits in 21 bits and three of them in an int64.
_CP_BITS = 21
_CP_MASK = (1 << _CP_BITS) - 1
_MAX_PACKED_N = 3
# Position weights 1/(i+1) for the first characters, precomputed for the request path.
_N_POSITION_WEIGHTS = 256
_POSITION_WEIGHTS = [1.0 / (i + 1) for i in range(_N_POSITION_WEIGHTS)]
_UNIT_WEIGHTS = [1.0] * _N_POSITION_WEIGHTS


def _collapse_whitespace(text: str) -> str:
    # Every whitespace character but " " is non-printable, so a printable string without "  " has
    # nothing to collapse; this skips the regex on the (normalised) request-path input.
    if "  " in text or not text.isprintable():
        return _WHITE_SPACES.sub(" ", text)
    return text


def _check_texts(name: str, texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of str, got a single {type(texts).__name__}")
    texts = list(texts)
    if not set(map(type, texts)) <= {str}:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{name}[{i}]: expected str, got {type(text).__name__}")
    return texts


def _smooth_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """``ln((1 + n_docs) / (1 + df)) + 1`` as float32 (scikit-learn's ``smooth_idf=True``)."""
    return (np.log((1.0 + n_docs) / (1.0 + df.astype(np.float64))) + 1.0).astype(np.float32)


def _finish_rows(X: sp.csr_matrix, idf64: np.ndarray) -> sp.csr_matrix:
    """Scale TF columns by IDF and L2-normalise rows in place (float64, sorted indices)."""
    X.sum_duplicates()  # also sorts indices
    X.data *= idf64[X.indices]
    row_nnz = np.diff(X.indptr)
    row_of = np.repeat(np.arange(X.shape[0]), row_nnz)
    norms = np.sqrt(np.bincount(row_of, weights=X.data * X.data, minlength=X.shape[0]))
    scale = np.zeros_like(norms)
    np.divide(1.0, norms, out=scale, where=norms > 0)
    X.data *= scale[row_of]
    return X


def _empty_row() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)


class _Tfidf:
    """Shared vocabulary, IDF, persistence and single-row machinery of the two TF-IDF blocks."""

    _kind = ""

    def __init__(self, min_df: int = 1, allow_empty: bool = False) -> None:
        if isinstance(min_df, bool) or not isinstance(min_df, (int, np.integer)) or min_df < 1:
            raise ValueError(f"min_df: expected an int >= 1, got {min_df!r}")
        self.min_df = int(min_df)
        self.allow_empty = bool(allow_empty)
        self._vocab: list[str] | None = None
        self._index: dict[str, int] = {}
        self._idf: np.ndarray | None = None
        self._idf_list: list[float] = []

    # ---- analysis (subclasses) -------------------------------------------------------------
    def _terms(self, text: str) -> list[str]:
        raise NotImplementedError

    def _tf(self, text: str) -> dict[int, float]:
        raise NotImplementedError

    def _params(self) -> dict:
        raise NotImplementedError

    # ---- fitted state ------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._vocab is not None

    def _check_fitted(self) -> None:
        if self._vocab is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or from_arrays() first")

    @property
    def n_features(self) -> int:
        """Number of features (vocabulary size)."""
        self._check_fitted()
        return len(self._vocab)

    @property
    def idf(self) -> np.ndarray:
        """IDF per feature id, float32 of shape (n_features,)."""
        self._check_fitted()
        return self._idf

    def get_feature_names_out(self) -> list[str]:
        """Terms in feature-id order (Python ``str`` order), as scikit-learn's method of that name."""
        self._check_fitted()
        return list(self._vocab)

    def _set_vocabulary(self, vocab: list[str], idf: np.ndarray) -> None:
        self._vocab = vocab
        self._index = {t: i for i, t in enumerate(vocab)}
        self._idf = idf
        self._idf_list = np.asarray(idf, dtype=np.float64).tolist()

    def _fit_from_df(self, df: Counter, n_docs: int) -> None:
        vocab = sorted(t for t, c in df.items() if c >= self.min_df)
        if not vocab and not self.allow_empty:
            raise ValueError(f"{type(self).__name__}: empty vocabulary (no term has df >= min_df={self.min_df})")
        counts = np.fromiter((df[t] for t in vocab), dtype=np.int64, count=len(vocab))
        self._set_vocabulary(vocab, _smooth_idf(counts, n_docs))

    def _fit_python(self, texts: list[str]) -> None:
        df: Counter = Counter()
        for text in texts:
            df.update(set(self._terms(text)))
        self._fit_from_df(df, len(texts))

    def _fit_from_tf(self, X: sp.csr_matrix, names: list[str], names_sorted: bool,
                     n_docs: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """Set vocabulary and IDF from a (doc x provisional term) TF matrix.

        ``names[j]`` is provisional term ``j`` (``names_sorted``: already in ``str`` order).
        Returns the L2-normalised float64 TF-IDF rows and the kept provisional ids in feature-id order.
        """
        X.sum_duplicates()
        df = np.bincount(X.indices, minlength=X.shape[1])
        kept = np.flatnonzero(df >= self.min_df)
        if not len(kept) and not self.allow_empty:
            raise ValueError(f"{type(self).__name__}: empty vocabulary (no term has df >= min_df={self.min_df})")
        if not names_sorted:
            kept = np.array(sorted(kept.tolist(), key=names.__getitem__), dtype=np.int64)
        if len(kept) < X.shape[1] or not names_sorted:
            new_id = np.full(X.shape[1], -1, dtype=np.int64)
            new_id[kept] = np.arange(len(kept))
            cols = new_id[X.indices]
            rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
            m = cols >= 0
            X = sp.csr_matrix((X.data[m], (rows[m], cols[m])), shape=(X.shape[0], len(kept)))
        idf = _smooth_idf(df[kept], n_docs)
        self._set_vocabulary([names[j] for j in kept.tolist()], idf)
        return _finish_rows(X, idf.astype(np.float64)), kept

    def _fit_transform64(self, texts: list[str]) -> sp.csr_matrix:
        self._fit_python(texts)
        return self._transform64(texts)

    # ---- one row -----------------------------------------------------------------------------
    def _row(self, text: str) -> tuple[list[int], list[float], float]:
        """Sorted feature ids, raw tf * idf (float64) and their squared L2 norm for one text."""
        tf = self._tf(text)
        ids = sorted(tf)
        vals = list(map(mul, map(tf.__getitem__, ids), map(self._idf_list.__getitem__, ids)))
        return ids, vals, sum(map(mul, vals, vals))

    def _transform64(self, texts: list[str]) -> sp.csr_matrix:
        """L2-normalised float64 TF-IDF rows from the single-text TF of :meth:`_tf`."""
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        lens: list[int] = []
        cols: list[int] = []
        tfs: list[float] = []
        for text in texts:
            tf = self._tf(text)
            lens.append(len(tf))
            cols.extend(tf)
            tfs.extend(tf.values())
        np.cumsum(lens, out=indptr[1:])
        X = sp.csr_matrix((np.array(tfs, dtype=np.float64), np.array(cols, dtype=np.int32), indptr),
                          shape=(len(texts), len(self._vocab)))
        X.has_sorted_indices = False
        return _finish_rows(X, np.asarray(self._idf, dtype=np.float64))

    # ---- public API --------------------------------------------------------------------------
    def fit(self, texts: Sequence[str]):
        """Learn the vocabulary and IDF from ``texts``.

        Parameters
        ----------
        texts : sequence of str, length n_docs
            Normalised texts (``qac.text``); every text is one document for the document
            frequency, empty ones included.

        Returns
        -------
        self

        Raises
        ------
        TypeError
            ``texts`` is a single string or holds a non-string.
        ValueError
            ``texts`` is empty or no term reaches ``min_df``.
        """
        self._fit_transform64(self._check_fit_texts(texts))
        return self

    @staticmethod
    def _check_fit_texts(texts) -> list[str]:
        texts = _check_texts("texts", texts)
        if not texts:
            raise ValueError("texts: cannot fit on zero documents")
        return texts

    def fit_transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """``fit(texts).transform(texts)`` in one pass over the n-grams (same result, build time).

        Returns
        -------
        X : csr_matrix of shape (n_docs, n_features), float32

        Raises
        ------
        TypeError, ValueError
            As :meth:`fit`.
        """
        return self._fit_transform64(self._check_fit_texts(texts)).astype(np.float32)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """TF-IDF rows of ``texts``; terms outside the vocabulary are ignored.

        Parameters
        ----------
        texts : sequence of str, length n

        Returns
        -------
        X : csr_matrix of shape (n, n_features), float32
            L2-normalised rows (all-zero for a text without known terms), sorted indices.

        Raises
        ------
        RuntimeError
            Not fitted.
        TypeError
            ``texts`` is a single string or holds a non-string.
        """
        self._check_fitted()
        texts = _check_texts("texts", texts)
        return self._transform64(texts).astype(np.float32)

    def transform_one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The row of :meth:`transform` for one text, without building a sparse matrix.

        Parameters
        ----------
        text : str

        Returns
        -------
        indices : ndarray of shape (nnz,), int32, sorted ascending
        data : ndarray of shape (nnz,), float32, L2 norm 1 (or nnz == 0)
        """
        self._check_fitted()
        ids, vals, sq = self._row(text)
        if not ids:
            return _empty_row()
        return (np.array(ids, dtype=np.int32),
                np.array(list(map(mul, vals, repeat(1.0 / math.sqrt(sq)))), dtype=np.float32))

    # ---- persistence -------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)`` for ``qac.artifacts``.

        Returns
        -------
        params : dict
            JSON-able constructor parameters plus ``kind`` and ``n_features``.
        arrays : dict
            ``vocab_flat`` uint8 (UTF-8 of the terms in feature-id order), ``vocab_ptr`` int64
            (n_features + 1,), ``idf`` float32 (n_features,).
        """
        self._check_fitted()
        flat, ptr = strings_to_arrays(self._vocab)
        params = {"kind": self._kind, **self._params(), "n_features": len(self._vocab)}
        return params, {"vocab_flat": flat, "vocab_ptr": ptr, "idf": np.asarray(self._idf, dtype=np.float32)}

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]):
        """Rebuild a fitted instance from :meth:`to_arrays` output (arrays may be read-only memmaps).

        Raises
        ------
        ValueError
            Wrong ``kind``, missing arrays, or inconsistent shapes / dtypes / vocabulary.
        """
        params = dict(params)
        kind = params.pop("kind", cls._kind)
        if kind != cls._kind:
            raise ValueError(f"kind: expected {cls._kind!r}, got {kind!r}")
        n_features = params.pop("n_features", None)
        missing = {"vocab_flat", "vocab_ptr", "idf"} - set(arrays)
        if missing:
            raise ValueError(f"arrays: missing {sorted(missing)}")
        self = cls(**params)
        flat, ptr, idf = arrays["vocab_flat"], arrays["vocab_ptr"], arrays["idf"]
        if flat.dtype != np.uint8 or ptr.dtype != np.int64 or idf.dtype != np.float32:
            raise ValueError(
                f"arrays: expected vocab_flat uint8, vocab_ptr int64, idf float32; "
                f"got {flat.dtype}, {ptr.dtype}, {idf.dtype}"
            )
        if ptr.ndim != 1 or len(ptr) < 1 or ptr[0] != 0 or ptr[-1] != len(flat) or np.any(np.diff(ptr) < 0):
            raise ValueError("vocab_ptr: must start at 0, be non-decreasing and end at len(vocab_flat)")
        vocab = arrays_to_strings(flat, ptr)
        if idf.shape != (len(vocab),):
            raise ValueError(f"idf: shape {idf.shape} does not match {len(vocab)} vocabulary entries")
        if n_features is not None and n_features != len(vocab):
            raise ValueError(f"n_features: {n_features} in params but {len(vocab)} vocabulary entries")
        self._set_vocabulary(vocab, idf)
        if len(self._index) != len(vocab):
            raise ValueError("vocab_flat: duplicate terms")
        return self


class WordTfidf(_Tfidf):
    """Word unigram TF-IDF of normalised text: tokens are ``text.split()``.

    Equals ``sklearn.feature_extraction.text.TfidfVectorizer(token_pattern=r"\\S+",
    lowercase=False, min_df=min_df)`` up to float32 rounding.

    Parameters
    ----------
    min_df : int, default 1
        Keep tokens occurring in at least ``min_df`` documents.
    allow_empty : bool, default False
        Accept an empty vocabulary (every row all-zero), e.g. the previous-query block of a
        prefix-only index; otherwise fitting on no terms raises.

    Raises
    ------
    ValueError
        ``min_df`` is not an int >= 1.
    """

    _kind = "word_tfidf"

    def _params(self) -> dict:
        return {"min_df": self.min_df, "allow_empty": self.allow_empty}

    def _terms(self, text: str) -> list[str]:
        return text.split()

    @staticmethod
    def _tokens(texts: list[str]) -> tuple[list[str], np.ndarray]:
        """All tokens in text order and the text (doc) index of each, int64."""
        # Per-text token lists are freed at once (no GC pressure); splitting the space-joined
        # texts yields the same tokens, since a token never spans whitespace.
        lens = np.fromiter(map(len, map(str.split, texts)), dtype=np.int64, count=len(texts))
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lens)
        return " ".join(texts).split(), doc

    def _fit_transform64(self, texts: list[str]) -> sp.csr_matrix:
        tokens, doc = self._tokens(texts)
        index: dict[str, int] = {}
        setdefault = index.setdefault
        term = np.array([setdefault(t, len(index)) for t in tokens], dtype=np.int64)
        X = sp.csr_matrix((np.ones(len(term)), (doc, term)), shape=(len(texts), len(index)))
        return self._fit_from_tf(X, list(index), False, len(texts))[0]

    def _transform64(self, texts: list[str]) -> sp.csr_matrix:
        tokens, doc = self._tokens(texts)
        fid = np.fromiter(map(self._index.get, tokens, repeat(-1)), dtype=np.int64, count=len(tokens))
        known = fid >= 0
        X = sp.csr_matrix((np.ones(int(known.sum())), (doc[known], fid[known])),
                          shape=(len(texts), len(self._vocab)))
        return _finish_rows(X, np.asarray(self._idf, dtype=np.float64))

    def _tf(self, text: str) -> dict[int, float]:
        fids = list(map(self._index.get, text.split()))
        tf = dict.fromkeys(fids, 1.0)
        if len(tf) != len(fids):
            tf = {}
            for fid in fids:
                tf[fid] = tf.get(fid, 0.0) + 1.0
        tf.pop(None, None)
        return tf

    def __repr__(self) -> str:
        return f"WordTfidf(min_df={self.min_df})"


class CharTfidf(_Tfidf):
    """Character n-gram TF-IDF, optionally position-weighted (Yadav et al., KDD 2021).

    The text's runs of two or more whitespace characters are first collapsed to one space (as
    scikit-learn's char analyzer); every n-gram ``text[i:i + n]`` for ``n`` in ``ngram_range`` then
    adds ``1 / (i + 1)`` to its term frequency when ``position_weighted``, else 1. IDF
    ``ln((1 + n_docs) / (1 + df)) + 1``; rows L2-normalised.

    With ``position_weighted=False`` this equals ``TfidfVectorizer(analyzer="char",
    ngram_range=ngram_range, lowercase=False, min_df=min_df)`` up to float32 rounding.

    Parameters
    ----------
    ngram_range : tuple (min_n, max_n), default (1, 3)
        Inclusive n-gram lengths, ``1 <= min_n <= max_n``. ``max_n <= 3`` uses the vectorised
        batch path; longer n-grams use a slower plain-Python batch path.
    position_weighted : bool, default True
        Weight an n-gram starting at character ``i`` by ``1 / (i + 1)``.
    min_df : int, default 1
        Keep n-grams occurring in at least ``min_df`` documents.

    Raises
    ------
    ValueError
        A parameter is out of range (the message names it).
    """

    _kind = "char_tfidf"

    def __init__(self, ngram_range: tuple[int, int] = (1, 3), position_weighted: bool = True, min_df: int = 1) -> None:
        super().__init__(min_df=min_df)
        try:
            min_n, max_n = ngram_range
        except (TypeError, ValueError):
            raise ValueError(f"ngram_range: expected (min_n, max_n), got {ngram_range!r}") from None
        for v in (min_n, max_n):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"ngram_range: expected two ints, got {ngram_range!r}")
        if not 1 <= min_n <= max_n:
            raise ValueError(f"ngram_range: expected 1 <= min_n <= max_n, got {ngram_range!r}")
        if not isinstance(position_weighted, (bool, np.bool_)):
            raise ValueError(f"position_weighted: expected a bool, got {position_weighted!r}")
        self.ngram_range = (int(min_n), int(max_n))
        self.position_weighted = bool(position_weighted)
        self._packed: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        return (f"CharTfidf(ngram_range={self.ngram_range}, position_weighted={self.position_weighted}, "
                f"min_df={self.min_df})")

    def _params(self) -> dict:
        return {"ngram_range": list(self.ngram_range), "position_weighted": self.position_weighted,
                "min_df": self.min_df}

    def _set_vocabulary(self, vocab: list[str], idf: np.ndarray) -> None:
        super()._set_vocabulary(vocab, idf)
        self._packed = None

    # ---- plain-Python analysis (request path, and batch for max_n > 3) -----------------------
    def _terms(self, text: str) -> list[str]:
        text = _collapse_whitespace(text)
        min_n, max_n = self.ngram_range
        n_chars = len(text)
        return [text[i:i + n] for n in range(min_n, min(max_n, n_chars) + 1) for i in range(n_chars - n + 1)]

    def _tf(self, text: str) -> dict[int, float]:
        # Hot path: n-grams are built and looked up by C-level map() calls; the Python-level
        # accumulation loop runs only for n-gram lengths that repeat an n-gram within the text.
        text = _collapse_whitespace(text)
        get = self._index.get
        min_n, max_n = self.ngram_range
        n_chars = len(text)
        if n_chars <= _N_POSITION_WEIGHTS:
            weights = _POSITION_WEIGHTS if self.position_weighted else _UNIT_WEIGHTS
        else:
            weights = [1.0 / (i + 1) for i in range(n_chars)] if self.position_weighted else [1.0] * n_chars
        tf: dict = {}
        grams: Sequence[str] = text
        for n in range(1, min(max_n, n_chars) + 1):
            if n > 1:
                grams = list(map(add, grams, text[n - 1:]))
            if n < min_n:
                continue
            fids = list(map(get, grams))
            first = dict(zip(fids, weights))
            if len(first) == len(fids):
                tf.update(first)  # all distinct; n-grams of other lengths have other ids
            else:
                for fid, w in zip(fids, weights):
                    if fid is not None:
                        tf[fid] = tf[fid] + w if fid in tf else w
        tf.pop(None, None)
        return tf

    # ---- vectorised batch path (max_n <= 3) ---------------------------------------------------
    def _packed_ngrams(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All n-grams of all texts as ``(doc int64, key int64, weight float64)``.

        ``key`` packs the code points big-endian, ``(cp + 1)`` per 21-bit slot, empty slots 0, so
        that key order is the ``str`` order of the n-grams.
        """
        joined = "".join(texts)
        if "  " in joined or not joined.isprintable():
            texts = [_collapse_whitespace(t) for t in texts]
            joined = "".join(texts)
        lens = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        cp = np.frombuffer(joined.encode("utf-32-le"), dtype="<u4").astype(np.int64)
        cp += 1
        n_chars = len(cp)
        starts = np.cumsum(lens) - lens
        doc_of = np.repeat(np.arange(len(texts), dtype=np.int64), lens)
        offset = np.arange(n_chars, dtype=np.int64) - starts[doc_of]
        remaining = lens[doc_of] - offset
        if self.position_weighted:
            weight = 1.0 / (offset + 1).astype(np.float64)
        else:
            weight = np.ones(n_chars, dtype=np.float64)
        docs, keys, weights = [], [], []
        min_n, max_n = self.ngram_range
        for n in range(min_n, max_n + 1):
            m = n_chars - n + 1
            if m <= 0:
                break
            # n-gram at flat position p is cp[p:p+n]; it is real iff it stays inside its text.
            valid = remaining[:m] >= n
            key = cp[:m] << (_CP_BITS * (_MAX_PACKED_N - 1))
            for k in range(1, n):
                key |= cp[k:k + m] << (_CP_BITS * (_MAX_PACKED_N - 1 - k))
            docs.append(doc_of[:m][valid])
            keys.append(key[valid])
            weights.append(weight[:m][valid])
        if not keys:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        return np.concatenate(docs), np.concatenate(keys), np.concatenate(weights)

    @staticmethod
    def _unpack(keys: np.ndarray) -> list[str]:
        slots = [((keys >> (_CP_BITS * (_MAX_PACKED_N - 1 - k))) & _CP_MASK).tolist() for k in range(_MAX_PACKED_N)]
        return ["".join(chr(c - 1) for c in cps if c) for cps in zip(*slots)]

    def _packed_vocab(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted packed keys of the vocabulary and the feature id of each (built lazily)."""
        if self._packed is None:
            keys = np.zeros(len(self._vocab), dtype=np.int64)
            for fid, term in enumerate(self._vocab):
                key = 0
                for k, ch in enumerate(term):
                    key |= (ord(ch) + 1) << (_CP_BITS * (_MAX_PACKED_N - 1 - k))
                keys[fid] = key
            order = np.argsort(keys, kind="stable")
            self._packed = (keys[order], order.astype(np.int32))
        return self._packed

    def _fit_transform64(self, texts: list[str]) -> sp.csr_matrix:
        if self.ngram_range[1] > _MAX_PACKED_N:
            return super()._fit_transform64(texts)
        doc, key, weight = self._packed_ngrams(texts)
        uniq = np.unique(key)
        X = sp.csr_matrix((weight, (doc, np.searchsorted(uniq, key))), shape=(len(texts), len(uniq)))
        X, kept = self._fit_from_tf(X, self._unpack(uniq), True, len(texts))
        self._packed = (uniq[kept], np.arange(len(kept), dtype=np.int32))
        return X

    def _transform64(self, texts: list[str]) -> sp.csr_matrix:
        if self.ngram_range[1] > _MAX_PACKED_N:
            return super()._transform64(texts)
        vocab_keys, vocab_fid = self._packed_vocab()
        doc, key, weight = self._packed_ngrams(texts)
        j = np.searchsorted(vocab_keys, key)
        np.minimum(j, len(vocab_keys) - 1, out=j)
        known = vocab_keys[j] == key
        X = sp.csr_matrix((weight[known], (doc[known], vocab_fid[j[known]])),
                          shape=(len(texts), len(self._vocab)), dtype=np.float64)
        return _finish_rows(X, np.asarray(self._idf, dtype=np.float64))


class SessionFeaturizer:
    """Completion-model input ``l2norm([word TF-IDF(prev) | char TF-IDF(prefix)])`` (Yadav et al., KDD 2021).

    Each block is L2-normalised on its own, the concatenation (word block first, feature ids
    ``0..n_word-1``, then char block ``n_word..n_features-1``) is L2-normalised again; an empty
    previous query (or one without known words) leaves only the char block.

    Parameters
    ----------
    word : WordTfidf
        Block for the previous query.
    char : CharTfidf
        Block for the prefix (``CharTfidf(ngram_range=(1, 3), position_weighted=True)`` in the paper).

    Raises
    ------
    TypeError
        ``word`` or ``char`` has the wrong type.
    """

    _kind = "session_featurizer"

    def __init__(self, word: WordTfidf, char: CharTfidf) -> None:
        if not isinstance(word, WordTfidf):
            raise TypeError(f"word: expected WordTfidf, got {type(word).__name__}")
        if not isinstance(char, CharTfidf):
            raise TypeError(f"char: expected CharTfidf, got {type(char).__name__}")
        self.word = word
        self.char = char

    def __repr__(self) -> str:
        return f"SessionFeaturizer(word={self.word!r}, char={self.char!r})"

    @property
    def n_features(self) -> int:
        """``n_word + n_char``."""
        return self.word.n_features + self.char.n_features

    @staticmethod
    def _check_pair(prev_queries, prefixes) -> tuple[list[str], list[str]]:
        prev_queries = _check_texts("prev_queries", prev_queries)
        prefixes = _check_texts("prefixes", prefixes)
        if len(prev_queries) != len(prefixes):
            raise ValueError(f"prefixes: length {len(prefixes)} != length of prev_queries {len(prev_queries)}")
        return prev_queries, prefixes

    def fit(self, prev_queries: Sequence[str], prefixes: Sequence[str]) -> "SessionFeaturizer":
        """Fit the word block on the previous queries and the char block on the prefixes.

        Parameters
        ----------
        prev_queries : sequence of str, length n
            Normalised previous queries (each one document of the word block's IDF).
        prefixes : sequence of str, length n
            Normalised prefixes.

        Returns
        -------
        self

        Raises
        ------
        TypeError, ValueError
            As :meth:`CharTfidf.fit`; ``ValueError`` also when the lengths differ.
        """
        prev_queries, prefixes = self._check_pair(prev_queries, prefixes)
        self.word.fit(prev_queries)
        self.char.fit(prefixes)
        return self

    def transform(self, prev_queries: Sequence[str], prefixes: Sequence[str]) -> sp.csr_matrix:
        """Feature rows for (previous query, prefix) pairs.

        Parameters
        ----------
        prev_queries, prefixes : sequence of str, length n

        Returns
        -------
        X : csr_matrix of shape (n, n_features), float32
            L2-normalised rows, sorted indices; word block in columns ``[0, n_word)``.

        Raises
        ------
        RuntimeError
            Not fitted.
        TypeError, ValueError
            Bad input sequences or different lengths.
        """
        self.word._check_fitted()
        self.char._check_fitted()
        prev_queries, prefixes = self._check_pair(prev_queries, prefixes)
        return _concat_blocks(self.word._transform64(prev_queries), self.char._transform64(prefixes))

    def fit_transform(self, prev_queries: Sequence[str], prefixes: Sequence[str]) -> sp.csr_matrix:
        """``fit(prev_queries, prefixes).transform(prev_queries, prefixes)`` in one pass (build time).

        Returns
        -------
        X : csr_matrix of shape (n, n_features), float32

        Raises
        ------
        TypeError, ValueError
            As :meth:`fit`.
        """
        prev_queries, prefixes = self._check_pair(prev_queries, prefixes)
        return _concat_blocks(self.word._fit_transform64(self.word._check_fit_texts(prev_queries)),
                              self.char._fit_transform64(self.char._check_fit_texts(prefixes)))

    def transform_one(self, prev: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """One row of :meth:`transform`, for the request path (plain Python, no sparse matrix).

        Parameters
        ----------
        prev : str
            Normalised previous query ("" for none).
        prefix : str
            Normalised prefix.

        Returns
        -------
        indices : ndarray of shape (nnz,), int32, sorted ascending
        data : ndarray of shape (nnz,), float32
        """
        if self.word._vocab is None or self.char._vocab is None:
            raise RuntimeError("SessionFeaturizer is not fitted; call fit() or from_arrays() first")
        w_ids, w_vals, w_sq = self.word._row(prev) if prev else ([], [], 0.0)
        c_ids, c_vals, c_sq = self.char._row(prefix)
        # Each non-empty block has unit norm after its own scaling, so the concatenation's norm is
        # sqrt(number of non-empty blocks); fold both normalisations into one scale per block.
        n_blocks = (w_sq > 0.0) + (c_sq > 0.0)
        if not n_blocks:
            return _empty_row()
        root = math.sqrt(n_blocks)
        w_scale = 1.0 / (math.sqrt(w_sq) * root) if w_sq > 0.0 else 0.0
        c_scale = 1.0 / (math.sqrt(c_sq) * root) if c_sq > 0.0 else 0.0
        ids = [*w_ids, *map(len(self.word._vocab).__add__, c_ids)]
        vals = [*map(mul, w_vals, repeat(w_scale)), *map(mul, c_vals, repeat(c_scale))]
        return np.array(ids, dtype=np.int32), np.array(vals, dtype=np.float32)

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)``: ``{"word": ..., "char": ...}`` params and ``word_*`` / ``char_*`` arrays
        (``word_vocab_flat``, ``word_vocab_ptr``, ``word_idf``, ``char_vocab_flat``, ...)."""
        wp, wa = self.word.to_arrays()
        cp, ca = self.char.to_arrays()
        arrays = {f"word_{k}": v for k, v in wa.items()}
        arrays.update({f"char_{k}": v for k, v in ca.items()})
        return {"kind": self._kind, "word": wp, "char": cp, "n_features": self.n_features}, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "SessionFeaturizer":
        """Inverse of :meth:`to_arrays`; arrays may be read-only memmaps.

        Raises
        ------
        ValueError
            Wrong kind, missing or inconsistent arrays.
        """
        kind = params.get("kind", cls._kind)
        if kind != cls._kind:
            raise ValueError(f"kind: expected {cls._kind!r}, got {kind!r}")
        if "word" not in params or "char" not in params:
            raise ValueError("params: expected 'word' and 'char' entries")
        word = WordTfidf.from_arrays(params["word"], _sub_arrays(arrays, "word_"))
        char = CharTfidf.from_arrays(params["char"], _sub_arrays(arrays, "char_"))
        self = cls(word, char)
        n_features = params.get("n_features")
        if n_features is not None and n_features != self.n_features:
            raise ValueError(f"n_features: {n_features} in params but {self.n_features} from the arrays")
        return self


def _concat_blocks(X_word: sp.csr_matrix, X_char: sp.csr_matrix) -> sp.csr_matrix:
    """``l2norm([X_word | X_char])`` as float32 CSR with sorted indices (blocks already unit rows)."""
    X = sp.hstack([X_word, X_char], format="csr")
    # Both blocks are unit rows (or empty), so this divides by sqrt(number of non-empty blocks).
    return _finish_rows(X, np.ones(X.shape[1], dtype=np.float64)).astype(np.float32)


def _sub_arrays(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
