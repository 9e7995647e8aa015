"""Term-pair model: the numba scoring equals the slow twin, fitting learns a pair, the ranker's column
is the model's score, persistence, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval import _ranker_kernels as K
from retrieval.pair_model import (
    TermPairConfig, TermPairModel, fit_term_pair_model, pair_design, reference_bucket, reference_pair_scores,
    term_hashes,
)
from retrieval.ranker import group_ptr_from_sizes
from retrieval.ranker_features import ItemTextIndex, candidate_features, reference_candidate_features

TEXTS = [
    "glacier bay 24 in vanity with sink",
    "pedestal sink in white",
    "24 in vanity cabinet only",
    "",
    "sink sink sink drain 1/2 in",
    "dewalt 20 volt drill kit",
    "drill bit set 1/2 in",
]


def _model(idx, n_bits=8, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=1 << n_bits).astype(np.float32)
    return TermPairModel(w, 0.25, term_hashes(idx.vocab), idx.analyzer, TermPairConfig(n_bits=n_bits, alpha=1.0))


@pytest.mark.parametrize("query", ["vanity sink", "sink sink vanity", "drill 1/2 inch", "zzz unknown", "", "Sinks!"])
def test_scores_equal_the_slow_twin(query):
    idx = ItemTextIndex.build(TEXTS, analyzer="product", match_features=True)
    model = _model(idx)
    ids = np.array([6, 0, 3, 1, 4, 2, 5, 0], dtype=np.int32)
    got = model.score(query, ids, idx)
    want = reference_pair_scores(query, [TEXTS[i] for i in ids], model.weights, model.intercept, 8, "product")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_scores_equal_the_slow_twin_on_random_corpora():
    rng = np.random.default_rng(3)
    words = ["ab", "abc", "bab", "cab", "1/2", "x", "xy", "yxz"]
    for trial in range(30):
        texts = [" ".join(rng.choice(words, size=rng.integers(0, 9))) for _ in range(10)]
        idx = ItemTextIndex.build(texts, analyzer="product", match_features=True)
        n_bits = int(rng.integers(8, 12))
        model = _model(idx, n_bits, seed=trial)
        ids = rng.integers(0, 10, size=rng.integers(0, 12)).astype(np.int32)
        query = " ".join(rng.choice(words + ["zz", "abd"], size=rng.integers(0, 5)))
        want = reference_pair_scores(query, [texts[i] for i in ids], model.weights, model.intercept, n_bits, "product")
        np.testing.assert_allclose(model.score(query, ids, idx), want, rtol=0, atol=1e-5,
                                   err_msg=f"trial {trial} query {query!r}")


def test_cached_kernel_is_bitwise_the_bucket_sum():
    """``pair_scores`` fetches each (query term, title term) weight once per call; every score must
    be the float of ``pair_buckets``' row sum in the same order, including repeated titles and terms."""
    rng = np.random.default_rng(11)
    words = ["ab", "abc", "bab", "cab", "1/2", "x", "xy", "yxz", "in", "sink"]
    for trial in range(40):
        texts = [" ".join(rng.choice(words, size=rng.integers(0, 15))) for _ in range(12)]
        idx = ItemTextIndex.build(texts, analyzer="product")
        model = _model(idx, int(rng.integers(8, 12)), seed=trial)
        ids = rng.integers(0, 12, size=rng.integers(0, 30)).astype(np.int32)
        q_hash = term_hashes(list(dict.fromkeys(rng.choice(words + ["zz"], size=rng.integers(0, 6)).tolist())))
        got = np.full((ids.size, 3), np.nan, np.float32)
        want = np.full((ids.size, 3), np.nan, np.float32)
        args = (ids, q_hash, model.term_hash, idx.tok_flat, idx.tok_ptr, model.mask, model.weights, model.intercept)
        K.pair_scores(*args, got, 1)
        K.pair_scores_from_buckets(*args, want, 1)
        np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32), err_msg=f"trial {trial}")


def test_bucket_kernel_matches_python_formula_and_rows_are_distinct_sets():
    rng = np.random.default_rng(5)
    pairs = [(0, 0), (1, 2), (0xFFFFFFFF, 0xFFFFFFFE)] + [tuple(int(v) for v in rng.integers(0, 1 << 32, 2))
                                                       for _ in range(200)]
    for qh, uh in pairs:
        for n_bits in (8, 20, 26):
            assert K.pair_bucket(np.uint32(qh), np.uint32(uh), (1 << n_bits) - 1) == reference_bucket(qh, uh, n_bits)
    # Known answer: the first output of splitmix64 seeded with 0 mixes 0x9E3779B97F4A7C15.
    assert reference_bucket(0x9E3779B9, 0x7F4A7C15, 64) == 0xE220A8397B1DCDAF
    idx = ItemTextIndex.build(TEXTS, analyzer="product")
    X = pair_design(["sink vanity", "drill"], np.array([4, 0, 3, 5], dtype=np.int32),
                    np.array([0, 2, 4]), idx, 16)
    # "sink sink sink drain 1/2 in" x {sink, vanity}: 4 distinct title terms x 2 query terms, plus
    # "sink matched" and "vanity unmatched"; the empty title has only "drill unmatched".
    assert X.shape == (4, 1 << 16) and X[0].nnz == 4 * 2 + 2 and X[2].nnz == 1
    assert X[1].nnz == 7 * 2 + 2 and X.data.max() == 1.0


def test_fit_learns_a_pair_the_text_cannot_see_and_round_trips():
    idx = ItemTextIndex.build(TEXTS, analyzer="product")
    # "vanity" queries: sink titles are relevant (3), drill titles are not (1); many query groups.
    queries, items, grades = [], [], []
    for k in range(30):
        queries.append(f"vanity {k}")
        items += [1, 5, 4, 6]
        grades += [3.0, 1.0, 3.0, 1.0]
    gp = group_ptr_from_sizes([4] * len(queries))
    model = fit_term_pair_model(queries, np.array(items, dtype=np.int32), np.array(grades), gp, idx,
                                TermPairConfig(n_bits=16, alpha=1.0))
    s = model.score("vanity", np.array([1, 5, 4, 6], dtype=np.int32), idx)
    assert min(s[0], s[2]) > max(s[1], s[3]) + 0.5
    again = TermPairModel.from_arrays(*model.to_arrays())
    np.testing.assert_array_equal(again.score("vanity", np.arange(7), idx), model.score("vanity", np.arange(7), idx))


def test_candidate_features_pair_column_equals_the_reference():
    idx = ItemTextIndex.build(TEXTS, analyzer="product", match_features=True)
    model = _model(idx)
    rng = np.random.default_rng(0)
    stats = rng.random((len(TEXTS), 3)).astype(np.float32)
    ids = np.array([0, 1, 2, 4, 5], dtype=np.int32)
    arm = rng.random((ids.size, 2)).astype(np.float32)
    idf = {t: float(idx.idf[i]) for i, t in enumerate(idx.vocab)}
    for query in ("vanity sink", "drill bit 1/2 in", "nothing here"):
        got = candidate_features(query, ids, arm, idx, stats, pair_model=model)
        want = reference_candidate_features(query, [TEXTS[i] for i in ids], arm, idf, idx.unseen_idf, idx.avg_len,
                                            stats[ids], analyzer="product", match_features=True, pair_model=model)
        assert got.shape == (ids.size, idx.n_text_features + 1 + 3 + 4)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got[:, idx.n_text_features], model.score(query, ids, idx), rtol=0, atol=1e-6)
        without = candidate_features(query, ids, arm, idx, stats)
        np.testing.assert_array_equal(np.delete(got, idx.n_text_features, axis=1), without)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_bits": 7}, "n_bits"), ({"n_bits": 27}, "n_bits"), ({"n_bits": 20.0}, "n_bits"),
    ({"alpha": 0.0}, "alpha"), ({"alpha": -1.0}, "alpha"), ({"alpha": float("nan")}, "alpha"),
])
def test_invalid_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TermPairConfig(**kwargs)


def test_invalid_model_and_input():
    idx = ItemTextIndex.build(TEXTS, analyzer="product")
    hashes = term_hashes(idx.vocab)
    with pytest.raises(ValueError, match="weights must have shape"):
        TermPairModel(np.zeros(10, np.float32), 0.0, hashes, "product", TermPairConfig(n_bits=8))
    with pytest.raises(ValueError, match="finite"):
        TermPairModel(np.full(256, np.nan, np.float32), 0.0, hashes, "product", TermPairConfig(n_bits=8))
    model = _model(idx)
    with pytest.raises(ValueError, match=r"item_ids must be in \[0, 7\)"):
        model.score("sink", np.array([7]), idx)
    with pytest.raises(ValueError, match="1-d"):
        model.score("sink", np.zeros((2, 2), np.int32), idx)
    other = ItemTextIndex.build(["a b c"], analyzer="product")
    with pytest.raises(ValueError, match="the text index has 3"):
        model.score("sink", np.array([0]), other)
    with pytest.raises(ValueError, match="one grade per item id"):
        fit_term_pair_model(["a"], np.array([0, 1]), np.array([1.0]), np.array([0, 2]), idx)
    with pytest.raises(ValueError, match="group_ptr"):
        fit_term_pair_model(["a"], np.array([0, 1]), np.array([1.0, 2.0]), np.array([0, 1]), idx)
