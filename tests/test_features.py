"""qac.features: TF-IDF blocks against scikit-learn and slow pure-Python twins, on real AOL queries."""
from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from qac.features import CharTfidf, SessionFeaturizer, WordTfidf

N_AOL = 4000


@pytest.fixture(scope="module")
def aol_queries(aol_log: Path) -> list[str]:
    """The first N_AOL queries of the real log, lowercased (raw whitespace kept: some have runs)."""
    queries = []
    with gzip.open(aol_log, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            queries.append(row["Query"].lower())
            if len(queries) == N_AOL:
                break
    return queries


@pytest.fixture(scope="module")
def aol_pairs(aol_queries: list[str]) -> tuple[list[str], list[str]]:
    """(previous query, prefix of the next query) from consecutive log rows, normalised by split/join."""
    rng = np.random.default_rng(0)
    norm = [" ".join(q.split()) for q in aol_queries]
    prev, prefixes = [], []
    for a, b in zip(norm, norm[1:]):
        if a != b and b:
            prev.append(a)
            prefixes.append(b[: int(rng.integers(1, len(b) + 1))])
    prev[::17] = [""] * len(prev[::17])  # no previous query
    return prev, prefixes


def random_texts(seed: int, n: int, alphabet: str = "ab c\tdé  ") -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(alphabet), size=int(rng.integers(0, 14)))) for _ in range(n)]


def by_name(X: sp.csr_matrix, names: list[str], order: list[str]) -> sp.csr_matrix:
    """Columns of X rearranged into the feature-name order ``order``."""
    col = {t: j for j, t in enumerate(names)}
    return sp.csr_matrix(X[:, [col[t] for t in order]])


def assert_sparse_close(A, B, atol: float = 1e-6) -> None:
    assert A.shape == B.shape
    diff = abs(sp.csr_matrix(A, dtype=np.float64) - sp.csr_matrix(B, dtype=np.float64))
    assert diff.nnz == 0 or diff.max() <= atol, diff.max()


# ---- slow, obviously-correct twins --------------------------------------------------------------

def twin_char_ngrams(text: str, ngram_range: tuple[int, int], position_weighted: bool) -> dict[str, float]:
    while any(a.isspace() and b.isspace() for a, b in zip(text, text[1:])):
        for i in range(len(text) - 1):
            if text[i].isspace() and text[i + 1].isspace():
                j = i
                while j < len(text) and text[j].isspace():
                    j += 1
                text = text[:i] + " " + text[j:]
                break
    tf: dict[str, float] = {}
    for n in range(ngram_range[0], ngram_range[1] + 1):
        for i in range(len(text) - n + 1):
            tf[text[i:i + n]] = tf.get(text[i:i + n], 0.0) + (1.0 / (i + 1) if position_weighted else 1.0)
    return tf


def twin_word_tf(text: str) -> dict[str, float]:
    return {t: float(c) for t, c in Counter(text.split()).items()}


def twin_tfidf(tfs_fit: list[dict[str, float]], tfs: list[dict[str, float]], min_df: int = 1):
    """Vocabulary (sorted) and dense L2-normalised TF-IDF rows by the textbook formula."""
    df = Counter(t for tf in tfs_fit for t in tf)
    vocab = sorted(t for t, c in df.items() if c >= min_df)
    n = len(tfs_fit)
    idf = {t: math.log((1 + n) / (1 + df[t])) + 1 for t in vocab}
    rows = np.zeros((len(tfs), len(vocab)))
    for r, tf in enumerate(tfs):
        for j, t in enumerate(vocab):
            rows[r, j] = tf.get(t, 0.0) * idf[t]
        norm = np.linalg.norm(rows[r])
        if norm > 0:
            rows[r] /= norm
    return vocab, rows


def check_csr(X: sp.csr_matrix, n_rows: int, n_cols: int) -> None:
    assert sp.isspmatrix_csr(X) or isinstance(X, sp.csr_array)
    assert X.dtype == np.float32 and X.shape == (n_rows, n_cols)
    assert X.has_sorted_indices
    assert all(np.all(np.diff(X.indices[X.indptr[i]:X.indptr[i + 1]]) > 0) for i in range(n_rows))
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))


def check_rows_equal_one(X: sp.csr_matrix, rows_one: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for i, (idx, val) in enumerate(rows_one):
        assert idx.dtype == np.int32 and val.dtype == np.float32
        lo, hi = X.indptr[i], X.indptr[i + 1]
        np.testing.assert_array_equal(idx, X.indices[lo:hi])
        np.testing.assert_allclose(val, X.data[lo:hi], rtol=0, atol=1e-6)


# ---- equality with scikit-learn on real queries -------------------------------------------------

@pytest.mark.parametrize("min_df", [1, 2])
def test_char_unweighted_equals_sklearn_on_aol(aol_queries, min_df):
    ours = CharTfidf(ngram_range=(1, 3), position_weighted=False, min_df=min_df)
    X = ours.fit_transform(aol_queries)
    sk = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), lowercase=False, dtype=np.float32, min_df=min_df)
    Y = sk.fit_transform(aol_queries)
    sk_names = sk.get_feature_names_out().tolist()
    assert sorted(ours.get_feature_names_out()) == sorted(sk_names)
    check_csr(X, len(aol_queries), len(sk_names))
    assert_sparse_close(by_name(X, ours.get_feature_names_out(), sk_names), Y)
    np.testing.assert_allclose(ours.idf, sk.idf_, rtol=1e-6)
    # transform on unseen texts (unknown n-grams ignored) equals sklearn as well
    new = ["zzq xqz", "the  new\tquery", ""]
    assert_sparse_close(by_name(ours.transform(new), ours.get_feature_names_out(), sk_names), sk.transform(new))


@pytest.mark.parametrize("min_df", [1, 2])
def test_word_equals_sklearn_on_aol(aol_queries, min_df):
    ours = WordTfidf(min_df=min_df).fit(aol_queries)
    X = ours.transform(aol_queries)
    sk = TfidfVectorizer(token_pattern=r"\S+", lowercase=False, dtype=np.float32, min_df=min_df)
    Y = sk.fit_transform(aol_queries)
    sk_names = sk.get_feature_names_out().tolist()
    assert sorted(ours.get_feature_names_out()) == sorted(sk_names)
    check_csr(X, len(aol_queries), len(sk_names))
    assert_sparse_close(by_name(X, ours.get_feature_names_out(), sk_names), Y)


def test_char_longer_ngrams_equal_sklearn(aol_queries):
    """max_n > 3 takes the plain-Python batch path."""
    texts = aol_queries[:800]
    ours = CharTfidf(ngram_range=(2, 5), position_weighted=False)
    X = ours.fit_transform(texts)
    sk = TfidfVectorizer(analyzer="char", ngram_range=(2, 5), lowercase=False, dtype=np.float32)
    Y = sk.fit_transform(texts)
    sk_names = sk.get_feature_names_out().tolist()
    assert ours.get_feature_names_out() == sk_names
    assert_sparse_close(by_name(X, ours.get_feature_names_out(), sk_names), Y)


# ---- position weighting against the slow twin ---------------------------------------------------

@pytest.mark.parametrize("ngram_range", [(1, 3), (1, 1), (2, 3), (1, 4)])
@pytest.mark.parametrize("min_df", [1, 3])
def test_char_position_weighted_equals_twin(ngram_range, min_df):
    fit_texts = random_texts(1, 300)
    new_texts = random_texts(2, 100, alphabet="abcxyz é\t") + ["", "   ", "\u3000a\u00a0 b"]
    ours = CharTfidf(ngram_range=ngram_range, position_weighted=True, min_df=min_df).fit(fit_texts)
    vocab, rows = twin_tfidf([twin_char_ngrams(t, ngram_range, False) for t in fit_texts],
                             [twin_char_ngrams(t, ngram_range, True) for t in new_texts], min_df)
    assert ours.get_feature_names_out() == vocab
    X = ours.transform(new_texts)
    check_csr(X, len(new_texts), len(vocab))
    np.testing.assert_allclose(X.toarray(), rows, rtol=0, atol=1e-6)
    check_rows_equal_one(X, [ours.transform_one(t) for t in new_texts])
    np.testing.assert_allclose(ours.fit_transform(fit_texts).toarray(), ours.transform(fit_texts).toarray(), atol=1e-7)


def test_word_equals_twin_with_repeated_and_unknown_tokens():
    fit_texts = ["a b a", "b c", "c c c d", ""]
    new_texts = ["a a a", "zz", "d zz a", ""]
    ours = WordTfidf().fit(fit_texts)
    vocab, rows = twin_tfidf([twin_word_tf(t) for t in fit_texts], [twin_word_tf(t) for t in new_texts])
    assert ours.get_feature_names_out() == vocab == ["a", "b", "c", "d"]
    X = ours.transform(new_texts)
    np.testing.assert_allclose(X.toarray(), rows, rtol=0, atol=1e-6)
    check_rows_equal_one(X, [ours.transform_one(t) for t in new_texts])
    assert ours.transform_one("zz")[0].size == 0


def test_position_weight_values_by_hand():
    """'aba' fitted on itself: tf(a) = 1 + 1/3, tf(b) = 1/2, tf(ab) = 1, tf(ba) = 1/2, tf(aba) = 1; idf = 1."""
    ours = CharTfidf().fit(["aba"])
    assert ours.get_feature_names_out() == ["a", "ab", "aba", "b", "ba"]
    raw = np.array([4 / 3, 1, 1, 1 / 2, 1 / 2])
    idx, val = ours.transform_one("aba")
    np.testing.assert_array_equal(idx, np.arange(5))
    np.testing.assert_allclose(val, raw / np.linalg.norm(raw), rtol=1e-6)


# ---- SessionFeaturizer ------------------------------------------------------------------------

def test_session_transform_is_normalised_concatenation(aol_pairs):
    prev, prefixes = aol_pairs
    feat = SessionFeaturizer(WordTfidf(), CharTfidf()).fit(prev, prefixes)
    X = feat.transform(prev, prefixes)
    n_word = feat.word.n_features
    assert feat.n_features == n_word + feat.char.n_features
    check_csr(X, len(prev), feat.n_features)
    W = feat.word.transform(prev).astype(np.float64)
    C = feat.char.transform(prefixes).astype(np.float64)
    expected = sp.hstack([W, C], format="csr")
    norms = np.sqrt(np.asarray(expected.multiply(expected).sum(axis=1)).ravel())
    expected = sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ expected
    assert_sparse_close(X, expected)
    # empty previous query: only the char block, with unit norm
    empty = [i for i, p in enumerate(prev) if not p]
    assert empty and X[empty][:, :n_word].nnz == 0
    assert_sparse_close(X[empty][:, n_word:], C[empty])
    assert_sparse_close(feat.fit_transform(prev, prefixes), X, atol=1e-7)


def test_session_transform_one_equals_transform_on_aol(aol_pairs):
    prev, prefixes = aol_pairs
    feat = SessionFeaturizer(WordTfidf(), CharTfidf()).fit(prev[:2000], prefixes[:2000])
    # rows 2000.. hold unseen words and n-grams
    X = feat.transform(prev, prefixes)
    check_rows_equal_one(X, [feat.transform_one(p, q) for p, q in zip(prev, prefixes)])


def test_session_transform_one_edge_cases():
    feat = SessionFeaturizer(WordTfidf(), CharTfidf()).fit(["red shoes", "blue"], ["re", "bl"])
    idx, val = feat.transform_one("", "")
    assert idx.dtype == np.int32 and val.dtype == np.float32 and idx.size == 0 and val.size == 0
    idx, val = feat.transform_one("unknown words", "zz")  # nothing known
    assert idx.size == 0
    idx, val = feat.transform_one("red", "zz")  # only the word block
    assert np.all(idx < feat.word.n_features)
    np.testing.assert_allclose(np.linalg.norm(val), 1.0, rtol=1e-6)
    idx, val = feat.transform_one("red", "re")
    np.testing.assert_allclose(np.linalg.norm(val), 1.0, rtol=1e-6)
    # each block carries half of the squared norm
    word_part = val[idx < feat.word.n_features]
    np.testing.assert_allclose(np.sum(word_part.astype(np.float64) ** 2), 0.5, rtol=1e-6)


# ---- persistence ------------------------------------------------------------------------------

def _memmap_roundtrip(arrays: dict[str, np.ndarray], tmp_path: Path) -> dict[str, np.ndarray]:
    out = {}
    for key, arr in arrays.items():
        np.save(tmp_path / f"{key}.npy", arr, allow_pickle=False)
        out[key] = np.load(tmp_path / f"{key}.npy", mmap_mode="r", allow_pickle=False)
    return out


def test_session_round_trip_through_readonly_memmaps(aol_pairs, tmp_path):
    prev, prefixes = aol_pairs
    feat = SessionFeaturizer(WordTfidf(min_df=2), CharTfidf(ngram_range=(1, 3), position_weighted=True)).fit(
        prev, prefixes)
    params, arrays = feat.to_arrays()
    assert set(arrays) == {f"{b}_{k}" for b in ("word", "char") for k in ("vocab_flat", "vocab_ptr", "idf")}
    for b in ("word", "char"):
        assert arrays[f"{b}_vocab_flat"].dtype == np.uint8
        assert arrays[f"{b}_vocab_ptr"].dtype == np.int64
        assert arrays[f"{b}_idf"].dtype == np.float32
    import json
    params = json.loads(json.dumps(params))
    loaded = SessionFeaturizer.from_arrays(params, _memmap_roundtrip(arrays, tmp_path))
    assert loaded.word.get_feature_names_out() == feat.word.get_feature_names_out()
    assert loaded.char.get_feature_names_out() == feat.char.get_feature_names_out()
    assert loaded.word.min_df == 2 and loaded.char.position_weighted is True
    a, b = feat.transform(prev, prefixes), loaded.transform(prev, prefixes)
    assert (a != b).nnz == 0
    for p, q in list(zip(prev, prefixes))[:300]:
        for x, y in zip(feat.transform_one(p, q), loaded.transform_one(p, q)):
            np.testing.assert_array_equal(x, y)


def test_char_round_trip_non_ascii(tmp_path):
    texts = ["café  crème", "naïve", "日本語 テキスト", "\u00a0x"]
    ours = CharTfidf(position_weighted=False, min_df=1).fit(texts)
    params, arrays = ours.to_arrays()
    loaded = CharTfidf.from_arrays(params, _memmap_roundtrip(arrays, tmp_path))
    assert loaded.get_feature_names_out() == ours.get_feature_names_out()
    assert (loaded.transform(texts) != ours.transform(texts)).nnz == 0


# ---- invalid input ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ngram_range": (0, 3)}, "ngram_range"),
        ({"ngram_range": (3, 2)}, "ngram_range"),
        ({"ngram_range": (1, 2, 3)}, "ngram_range"),
        ({"ngram_range": 3}, "ngram_range"),
        ({"ngram_range": (1.0, 3)}, "ngram_range"),
        ({"position_weighted": "yes"}, "position_weighted"),
        ({"min_df": 0}, "min_df"),
        ({"min_df": 0.5}, "min_df"),
        ({"min_df": True}, "min_df"),
    ],
)
def test_char_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CharTfidf(**kwargs)


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda: WordTfidf().fit("a single string"), TypeError, "single str"),
        (lambda: CharTfidf().fit(["ok", 3]), TypeError, r"texts\[1\]"),
        (lambda: CharTfidf().fit([]), ValueError, "zero documents"),
        (lambda: CharTfidf().fit(["", ""]), ValueError, "empty vocabulary"),
        (lambda: WordTfidf(min_df=2).fit(["a", "b"]), ValueError, "empty vocabulary"),
        (lambda: CharTfidf().transform(["a"]), RuntimeError, "not fitted"),
        (lambda: WordTfidf().transform_one("a"), RuntimeError, "not fitted"),
        (lambda: SessionFeaturizer(WordTfidf(), CharTfidf()).transform_one("a", "b"), RuntimeError, "not fitted"),
        (lambda: SessionFeaturizer(CharTfidf(), CharTfidf()), TypeError, "word"),
        (lambda: SessionFeaturizer(WordTfidf(), WordTfidf()), TypeError, "char"),
        (lambda: SessionFeaturizer(WordTfidf(), CharTfidf()).fit(["a"], ["a", "b"]), ValueError, "length"),
    ],
)
def test_invalid_calls(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def _fitted_char_arrays():
    return CharTfidf().fit(["abc", "bcd"]).to_arrays()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p, a: p.update(kind="word_tfidf"), "kind"),
        (lambda p, a: a.pop("idf"), "missing"),
        (lambda p, a: a.update(idf=a["idf"][:-1]), "idf"),
        (lambda p, a: a.update(idf=a["idf"].astype(np.float64)), "float32"),
        (lambda p, a: a.update(vocab_ptr=a["vocab_ptr"][:-1]), "vocab_ptr"),
        (lambda p, a: p.update(n_features=1), "n_features"),
        (lambda p, a: p.update(ngram_range=[0, 3]), "ngram_range"),
    ],
)
def test_from_arrays_rejects_inconsistent_input(mutate, message):
    params, arrays = _fitted_char_arrays()
    mutate(params, arrays)
    with pytest.raises(ValueError, match=message):
        CharTfidf.from_arrays(params, arrays)
