"""Ranker features: the numba path equals the slow pure-Python twin; persistence; bad input."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.ranker_features import (
    ITEM_STAT_NAMES, TEXT_FEATURE_NAMES, ItemTextIndex, arm_score_matrix, candidate_features, feature_names,
    item_stats_from_pairs, reference_candidate_features,
)

TEXTS = [
    "simpson strong tie 12 gauge angle",
    "behr premium textured deckover 1 gal sc 141 tugboat wood and concrete coating",
    "rain shower head chrome",
    "",
    "shower shower head head",
    "l bracket steel angle bracket",
    "café crème brûlée torch",
]


def _reference(idx, texts, query, ids, arm, stats, proposed=None):
    idf = {t: float(idx.idf[i]) for i, t in enumerate(idx.vocab)}
    return reference_candidate_features(query, [texts[i] for i in ids], arm, idf, idx.unseen_idf,
                                        idx.avg_len, stats[ids], arm_proposed=proposed)


@pytest.mark.parametrize("query", [
    "shower head", "head shower shower", "angle bracket", "brackt angle", "zzz unknown", "",
    "Rain Shower-Head!", "crème brûlée", "a", "bracket steel angle bracket",
])
def test_numba_equals_reference_on_fixed_queries(query):
    idx = ItemTextIndex.build(TEXTS)
    rng = np.random.default_rng(0)
    stats = rng.random((len(TEXTS), 3)).astype(np.float32)
    ids = np.array([6, 0, 1, 2, 3, 4, 5], dtype=np.int32)
    arm = np.where(rng.random((ids.size, 2)) < 0.5, 0.0, rng.random((ids.size, 2))).astype(np.float32)
    got = candidate_features(query, ids, arm, idx, stats)
    want = _reference(idx, TEXTS, query, ids, arm, stats)
    assert got.shape == (ids.size, len(feature_names(["a", "b"])))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_numba_equals_reference_on_random_corpora():
    rng = np.random.default_rng(1)
    words = ["ab", "abc", "b", "ba", "cab", "x", "xy", "yx"]
    for trial in range(30):
        texts = [" ".join(rng.choice(words, size=rng.integers(0, 8))) for _ in range(12)]
        idx = ItemTextIndex.build(texts)
        stats = rng.random((12, 2)).astype(np.float32)
        ids = rng.permutation(12)[: rng.integers(1, 13)].astype(np.int32)
        arm = rng.random((ids.size, 3)).astype(np.float32)
        proposed = rng.random((ids.size, 3)) < 0.5
        query = " ".join(rng.choice(words + ["zz", "abd"], size=rng.integers(0, 5)))
        got = candidate_features(query, ids, arm, idx, stats, arm_proposed=proposed)
        want = _reference(idx, texts, query, ids, arm, stats, proposed)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"trial {trial} query {query!r}")


def test_bm25_matches_formula_on_three_documents():
    texts = ["a b", "a a c", "c"]
    idx = ItemTextIndex.build(texts)
    n, avg = 3, 6 / 3
    idf_a = np.log(1 + (n - 2 + 0.5) / (2 + 0.5))
    k1, b = 1.2, 0.75
    want = idf_a * 2 * (k1 + 1) / (2 + k1 * (1 - b + b * 3 / avg))
    f = candidate_features("a", np.array([1], dtype=np.int32), np.zeros((1, 0), np.float32), idx,
                           np.zeros((3, 0), np.float32))
    assert abs(float(f[0, 0]) - want) < 1e-5
    assert f[0, TEXT_FEATURE_NAMES.index("phrase")] == 1.0
    assert f[0, TEXT_FEATURE_NAMES.index("first_match")] == 1.0
    assert abs(f[0, TEXT_FEATURE_NAMES.index("item_coverage")] - 2 / 3) < 1e-6


def test_round_trip_and_empty_candidates():
    idx = ItemTextIndex.build(TEXTS)
    params, arrays = idx.to_arrays()
    ro = {k: v.copy() for k, v in arrays.items()}
    for v in ro.values():
        v.setflags(write=False)
    idx2 = ItemTextIndex.from_arrays(params, ro)
    stats = np.zeros((len(TEXTS), 1), np.float32)
    ids = np.arange(len(TEXTS), dtype=np.int32)
    arm = np.zeros((ids.size, 1), np.float32)
    np.testing.assert_array_equal(candidate_features("shower head", ids, arm, idx, stats),
                                  candidate_features("shower head", ids, arm, idx2, stats))
    assert idx2.item_text(2) == TEXTS[2]
    empty = candidate_features("x", np.zeros(0, np.int32), np.zeros((0, 1), np.float32), idx, stats)
    assert empty.shape == (0, len(TEXT_FEATURE_NAMES) + 1 + 2)


def test_item_stats_from_pairs():
    s = item_stats_from_pairs(3, np.array([0, 0, 1]), np.array([5, 5, 6]), np.array([3.0, 1.0, 2.0]),
                              prior_weight=2.0)
    assert s.shape == (3, len(ITEM_STAT_NAMES))
    np.testing.assert_allclose(s[:, 0], np.log1p([2, 1, 0]), atol=1e-6)
    np.testing.assert_allclose(s[:, 1], np.log1p([1, 1, 0]), atol=1e-6)
    np.testing.assert_allclose(s[:, 2], [(4 + 4) / 4, (2 + 4) / 3, 2.0], atol=1e-6)


IDX = ItemTextIndex.build(TEXTS)
STATS = np.zeros((len(TEXTS), 2), np.float32)


@pytest.mark.parametrize("kwargs, message", [
    ({"item_ids": np.array([[0]])}, "item_ids must be 1-d"),
    ({"item_ids": np.array([0.5])}, "item_ids must be integers"),
    ({"item_ids": np.array([len(TEXTS)])}, "item_ids must be in"),
    ({"item_ids": np.array([-1])}, "item_ids must be in"),
    ({"arm_scores": np.zeros((2, 1), np.float32)}, "arm_scores must have shape"),
    ({"item_stats": np.zeros((2, 2), np.float32)}, "item_stats must have shape"),
    ({"arm_proposed": np.zeros((1, 2), bool)}, "arm_proposed must have shape"),
])
def test_invalid_input(kwargs, message):
    args = {"query": "a", "item_ids": np.array([0], np.int32), "arm_scores": np.zeros((1, 1), np.float32),
            "text_index": IDX, "item_stats": STATS, "arm_proposed": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        candidate_features(**args)


@pytest.mark.parametrize("kwargs, message", [({"k1": -1.0}, "k1"), ({"b": 1.5}, "b")])
def test_invalid_index_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ItemTextIndex.build(TEXTS, **kwargs)


PRODUCT_TEXTS = [
    "Simpson Strong-Tie 12-Gauge Angle",
    "1/2 in. x 10 ft. Copper Pipes",
    "Copper Pipe Fitting 1/2-in. 3/4-in.",
    "",
    "door bell kit 2-Pack",
    "pipe copper 10 ft",
]


@pytest.mark.parametrize("query", [
    "1/2 copper pipe", "copper pipes 10 ft", "12 gauge angle", "door bell", "pipe", "zzz 1/2", "",
    "3/4 fitting copper", "copper copper pipe pipe",
])
def test_match_features_with_product_analyzer_equal_reference(query):
    idx = ItemTextIndex.build(PRODUCT_TEXTS, analyzer="product", match_features=True)
    rng = np.random.default_rng(2)
    stats = rng.random((len(PRODUCT_TEXTS), 3)).astype(np.float32)
    ids = np.arange(len(PRODUCT_TEXTS), dtype=np.int32)[::-1].copy()
    arm = rng.random((ids.size, 1)).astype(np.float32)
    got = candidate_features(query, ids, arm, idx, stats)
    idf = {t: float(idx.idf[i]) for i, t in enumerate(idx.vocab)}
    want = reference_candidate_features(query, [PRODUCT_TEXTS[i] for i in ids], arm, idf, idx.unseen_idf,
                                        idx.avg_len, stats[ids], analyzer="product", match_features=True)
    assert got.shape == (ids.size, len(feature_names(["a"], ITEM_STAT_NAMES, idx.text_feature_names)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_match_features_values_and_round_trip():
    idx = ItemTextIndex.build(PRODUCT_TEXTS, analyzer="product", match_features=True)
    names = list(idx.text_feature_names)
    f = candidate_features("1/2 inch copper pipes", np.array([1, 2, 5], dtype=np.int32), np.zeros((3, 0), np.float32),
                           idx, np.zeros((len(PRODUCT_TEXTS), 0), np.float32))
    # terms: 1/2 in copper pipe -- numeric {1/2}; head "pipe"; pairs (1/2 in) (in copper) (copper pipe)
    np.testing.assert_allclose(f[:, names.index("num_match")], [1, 1, 0])
    np.testing.assert_allclose(f[:, names.index("has_num")], [1, 1, 1])
    np.testing.assert_allclose(f[:, names.index("head_match")], [1, 1, 1])
    np.testing.assert_allclose(f[:, names.index("pair_match")], [2 / 3, 2 / 3, 0], atol=1e-6)
    params, arrays = idx.to_arrays()
    again = ItemTextIndex.from_arrays(params, arrays)
    assert again.analyzer == "product" and again.match_features and again.n_text_features == len(names)
    legacy = {k: v for k, v in params.items() if k not in ("analyzer", "match_features")}
    old = ItemTextIndex.from_arrays(legacy, arrays)
    assert old.analyzer == "qp2q" and not old.match_features and old.n_text_features == len(TEXT_FEATURE_NAMES)


def _arm_score_matrix_twin(arm_ids, arm_scores, item_ids, top=None):
    """Slow exact twin: a dict lookup per arm entry."""
    out = np.zeros((len(item_ids), len(arm_ids)), dtype=np.float32)
    for a, (ids, sc) in enumerate(zip(arm_ids, arm_scores)):
        score_of = dict(zip(list(ids[:top]), list(sc[:top])))
        for r, i in enumerate(item_ids):
            if i in score_of:
                out[r, a] = score_of[i]
    return out


@pytest.mark.parametrize("seed", range(20))
def test_arm_score_matrix_matches_twin(seed):
    rng = np.random.default_rng(seed)
    n_arms = int(rng.integers(1, 9))
    arm_ids = [rng.choice(60, size=int(rng.integers(0, 40)), replace=False).astype(np.int32) for _ in range(n_arms)]
    arm_scores = [rng.normal(size=ids.size).astype(np.float32) for ids in arm_ids]
    top = [None, 5, 20][seed % 3]
    listed = np.concatenate([ids[:top] for ids in arm_ids] + [np.zeros(0, np.int32)])
    items = np.concatenate([rng.choice(listed, size=min(5, listed.size)) if listed.size else listed,
                            rng.integers(0, 60, size=int(rng.integers(0, 30)))]).astype(np.int32)  # repeats too
    got = arm_score_matrix(arm_ids, arm_scores, items, top)
    assert got.dtype == np.float32 and got.shape == (items.size, n_arms)
    np.testing.assert_array_equal(got, _arm_score_matrix_twin(arm_ids, arm_scores, items, top))
    assert listed.size == 0 or (got != 0).any()


def test_arm_score_matrix_repeated_ids():
    # A judged set can list one product twice (two raw search terms normalise to one query).
    ids = np.array([5, 2, 5, 9], dtype=np.int32)
    out = arm_score_matrix([np.array([5, 9], np.int32), np.array([2], np.int32)],
                           [np.array([3.0, 1.0], np.float32), np.array([0.5], np.float32)], ids)
    assert out.shape == (4, 2)
    np.testing.assert_array_equal(out, [[3.0, 0.0], [0.0, 0.5], [3.0, 0.0], [1.0, 0.0]])
    assert arm_score_matrix([], [], ids).shape == (4, 0)


def _fresh_block(idx, query, ids):
    """The text block computed from scratch, on a copy of the index with no remembered rows."""
    return candidate_features(query, ids, np.zeros((ids.size, 0), np.float32),
                              ItemTextIndex.from_arrays(*idx.to_arrays()), np.zeros((idx.n_items, 0), np.float32))


def test_remembered_text_block_equals_computing_every_row():
    """The per-thread memory of the last query's rows: calls that repeat, extend, shrink or change
    the query give the rows a fresh index computes, bit for bit."""
    idx = ItemTextIndex.build(TEXTS, analyzer="product", match_features=True)
    rng = np.random.default_rng(7)
    queries = ["shower head", "angle bracket", "shower head", "zzz", ""]
    for trial in range(60):
        query = queries[int(rng.integers(len(queries)))]
        ids = rng.integers(0, len(TEXTS), size=rng.integers(0, 12)).astype(np.int32)
        got = candidate_features(query, ids, np.zeros((ids.size, 0), np.float32), idx,
                                 np.zeros((idx.n_items, 0), np.float32))
        np.testing.assert_array_equal(got.view(np.int32), _fresh_block(idx, query, ids).view(np.int32),
                                      err_msg=f"trial {trial} query {query!r} ids {ids.tolist()}")


def test_a_shallow_copy_with_other_items_does_not_read_the_original_rows():
    """The grown items' index is a shallow copy of the build's (retrieval.growth): same query, other
    items behind the same ids."""
    import copy

    idx = ItemTextIndex.build(TEXTS, analyzer="product", match_features=True)
    other = ItemTextIndex.build(TEXTS[::-1], analyzer="product", match_features=True)
    twin = copy.copy(idx)
    twin.tok_flat, twin.tok_ptr = other.tok_flat, other.tok_ptr
    twin.tri_flat, twin.tri_ptr = other.tri_flat, other.tri_ptr
    ids = np.arange(len(TEXTS), dtype=np.int32)
    zero = np.zeros((ids.size, 0), np.float32)
    a = candidate_features("shower head", ids, zero, idx, np.zeros((idx.n_items, 0), np.float32))
    b = candidate_features("shower head", ids, zero, twin, np.zeros((idx.n_items, 0), np.float32))
    np.testing.assert_array_equal(b[:, 4:7], a[::-1, 4:7])  # trigram overlaps follow the texts
    assert not np.array_equal(a, b)
