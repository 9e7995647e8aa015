"""FusionArm: reciprocal rank fusion and learned fusion equal slow twins, persist, and follow the arm contract."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from retrieval.arms.base import Context
from retrieval.arms.bm25 import BM25Arm
from retrieval.arms.chargram import CharGramArm
from retrieval.arms.fusion import (
    PRIOR_NAMES, FusionArm, PoolScorer, build_fusion_arm, build_learned_fusion_arm, item_prior, pool_features,
)
from retrieval.ranker_features import ItemTextIndex, candidate_features
from tests.retrieval.arm_contract import ArmContract

CORPUS = ["toilet tank lid", "glacier bay toilet", "angle bracket", "l bracket 12 gauge", "deck paint",
          "behr deckover wood coating", "a b", "x", "", "toilets and tanks", "paint brush 2 in",
          "Copper Pipe 1/2-in.", "door-bell kit"]
QUERIES = ["tiolet tank", "deckpaint", "bracket", "toilet", "1/2 in copper pipes", "doorbell", "zzz"]


def slow_rrf(arms, weights, k, depth, query, n):
    score = defaultdict(float)
    for arm, w in zip(arms, weights):
        ids, _ = arm.retrieve(query, Context(), depth)
        for rank, i in enumerate(ids.tolist(), start=1):
            score[i] += w / (k + rank)
    order = sorted(score, key=lambda i: (-np.float32(score[i]), i))[:n]
    return order, [score[i] for i in order]


@pytest.mark.parametrize("weights,k,depth", [((1.0, 1.0), 10.0, 100), ((1.0, 0.5), 60.0, 3), ((2.0, 1.0), 1.0, 5)])
def test_equals_slow_twin(weights, k, depth):
    subs = [BM25Arm.build(CORPUS, analyzer="product", compounds=True), CharGramArm.build(CORPUS, analyzer="product")]
    arm = FusionArm(subs, weights, k, depth)
    for q in QUERIES:
        for n in (1, 3, 20):
            ids, scores = arm.retrieve(q, Context(), n)
            exp_ids, exp_scores = slow_rrf(subs, weights, k, max(depth, n), q, n)
            assert ids.tolist() == exp_ids
            np.testing.assert_allclose(scores, exp_scores, rtol=1e-6)


def test_round_trip():
    arm = build_fusion_arm(CORPUS, [t + " extra" for t in CORPUS], analyzer="product", k=5.0, depth=7)
    params, arrays = arm.to_arrays()
    again = FusionArm.from_arrays(params, arrays)
    assert [a.name for a in again.arms] == ["bm25", "chargram"]
    assert again.arms[0].config.compounds and again.arms[0].config.analyzer == "product"
    for q in QUERIES:
        a, b = arm.retrieve(q, Context(), 10), again.retrieve(q, Context(), 10)
        assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


@pytest.mark.parametrize("kwargs,message", [
    ({"weights": [1.0]}, "weights: need 2"),
    ({"weights": [1.0, 0.0]}, "weights: need 2"),
    ({"k": 0.0}, "k must be > 0"),
    ({"depth": 0}, "depth must be an int >= 1"),
    ({"depth": 2.5}, "depth must be an int >= 1"),
])
def test_invalid_config(kwargs, message):
    subs = [BM25Arm.build(CORPUS), CharGramArm.build(CORPUS)]
    with pytest.raises(ValueError, match=message):
        FusionArm(subs, **kwargs)


def test_sub_arms_must_share_a_catalogue():
    with pytest.raises(ValueError, match="share one catalogue"):
        FusionArm([BM25Arm.build(CORPUS), CharGramArm.build(CORPUS[:3])])


class TestFusionContract(ArmContract):
    def make_arm(self):
        return build_fusion_arm(CORPUS, analyzer="product"), ["tiolet tank", "deckpaint", "bracket", "doorbell"]


# ---- learned fusion ---------------------------------------------------------------------------

JUDGED = [("toilet tank", 0, 3.0), ("toilet tank", 1, 2.0), ("toilet tank", 9, 2.67), ("deck paint", 4, 3.0),
          ("deck paint", 5, 2.33), ("deck paint", 10, 1.0), ("angle bracket", 2, 3.0), ("angle bracket", 3, 2.67),
          ("l bracket", 3, 3.0), ("l bracket", 2, 1.33), ("paint brush", 10, 3.0), ("paint brush", 4, 1.67),
          ("copper pipe", 11, 3.0), ("door bell", 12, 3.0), ("toilets", 9, 3.0), ("toilets", 1, 2.67),
          ("wood coating", 5, 3.0), ("bay toilet", 1, 3.0), ("tank lid", 0, 3.0), ("pipe", 11, 2.0)]


def learned_arm(**kwargs):
    q, i, g = zip(*JUDGED)
    return build_learned_fusion_arm(CORPUS, list(q), np.array(i), np.array(g), n_folds=2, **kwargs)


def test_item_prior_values():
    prior = item_prior(4, np.array([0, 0, 2]), np.array([0, 1, 0]), np.array([3.0, 2.0, 1.0]))
    assert prior.shape == (4, len(PRIOR_NAMES)) and prior.dtype == np.float32
    np.testing.assert_allclose(prior[:, 0], np.log1p([2, 0, 1, 0]), rtol=1e-6)
    np.testing.assert_allclose(prior[:, 3], np.log1p([1, 0, 0, 0]), rtol=1e-6)
    np.testing.assert_array_equal(prior[:, 4], [1, 0, 1, 0])
    mu = 2.0
    np.testing.assert_allclose(prior[:, 2], [(5 + 2 * mu) / 4, mu, (1 + 2 * mu) / 3, mu], rtol=1e-6)


@pytest.mark.parametrize("query", QUERIES)
def test_pool_features_equal_slow_twin(query):
    arm = learned_arm()
    sc = arm.scorer
    lists = [a.retrieve(query, Context(), 5) for a in arm.arms]
    ids, X = pool_features(query, lists, sc.text_index, sc.prior, arm.k)
    expected_ids = sorted({i for l, _ in lists for i in l.tolist()})
    assert ids.dtype == np.int32 and ids.tolist() == expected_ids
    body = candidate_features(query, ids, np.zeros((ids.size, 0), np.float32), sc.text_index, sc.prior)
    np.testing.assert_array_equal(X[:, 4:], body)
    for r, i in enumerate(expected_ids):
        for a, (l, s) in enumerate(lists):
            pos = l.tolist().index(i) if i in l.tolist() else None
            assert X[r, 2 * a] == pytest.approx(0.0 if pos is None else 1.0 / (arm.k + pos + 1), rel=1e-6)
            assert X[r, 2 * a + 1] == pytest.approx(0.0 if pos is None else s[pos] / s[0], rel=1e-6)


def test_learned_retrieve_is_the_linear_score_of_the_pool():
    arm = learned_arm(depth=4)
    sc = arm.scorer
    for q in QUERIES:
        ids, scores = arm.retrieve(q, Context(), 3)
        pool, X = pool_features(q, [a.retrieve(q, Context(), 4) for a in arm.arms], sc.text_index, sc.prior, arm.k)
        s = ((X.astype(np.float64) - sc.mean) / sc.scale) @ sc.weights.astype(np.float64)
        order = sorted(range(pool.size), key=lambda r: (-np.float32(s[r]), pool[r]))[:3]
        assert ids.tolist() == pool[order].tolist()
        np.testing.assert_allclose(scores, s[order], rtol=1e-5, atol=1e-5)


def test_share_text_index_only_adopts_the_same_content():
    arm = learned_arm()
    own = arm.scorer.text_index
    same = ItemTextIndex.from_arrays(*own.to_arrays())
    before = [arm.retrieve(q, Context(), 10) for q in QUERIES]
    assert arm.share_text_index(same) and arm.scorer.text_index is same
    for q, (ids, scores) in zip(QUERIES, before):
        again = arm.retrieve(q, Context(), 10)
        assert again[0].tolist() == ids.tolist() and again[1].tolist() == scores.tolist()
    other = ItemTextIndex.build(CORPUS[:-1] + ["another title"], analyzer=own.analyzer,
                                match_features=own.match_features)
    params = dict(own.to_arrays()[0], k1=own.k1 + 0.5)
    tuned = ItemTextIndex.from_arrays(params, own.to_arrays()[1])
    assert not arm.share_text_index(other) and not arm.share_text_index(tuned)
    assert arm.scorer.text_index is same
    assert not FusionArm(arm.arms).share_text_index(same)  # an RRF arm has no scorer


def test_learned_round_trip_keeps_the_scorer():
    arm = learned_arm()
    params, arrays = arm.to_arrays()
    again = FusionArm.from_arrays(params, arrays)
    assert again.scorer is not None and again.depth == arm.depth
    for q in QUERIES:
        a, b = arm.retrieve(q, Context(), 10), again.retrieve(q, Context(), 10)
        assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


@pytest.mark.parametrize("change,message", [
    ({"weights": np.zeros(3, np.float32)}, "need shape"),
    ({"scale": None}, "scale > 0"),
    ({"prior": np.zeros((3, 5), np.float32)}, "prior: need shape"),
    ({"n_sub_arms": 3}, "need shape"),
])
def test_invalid_scorer(change, message):
    sc = learned_arm().scorer
    kw = {"text_index": sc.text_index, "prior": sc.prior, "mean": sc.mean, "scale": sc.scale,
          "weights": sc.weights, "n_sub_arms": sc.n_sub_arms, **change}
    if "scale" in change:
        kw["scale"] = np.zeros_like(sc.scale)
    with pytest.raises(ValueError, match=message):
        PoolScorer(**kw)


def test_shared_chargram_gives_the_same_lists():
    q, i, g = zip(*JUDGED)
    own = learned_arm(depth=5)
    standalone = CharGramArm.build(CORPUS, analyzer="product")
    arm = build_learned_fusion_arm(CORPUS, list(q), np.array(i), np.array(g), n_folds=2, depth=5, chargram=standalone)
    assert arm.same_as == [None, "chargram"] and arm.arms[1] is standalone
    params, arrays = arm.to_arrays()
    again = FusionArm.from_arrays(params, arrays)
    assert again.same_as == [None, "chargram"] and again.arms[1] is not standalone
    served = CharGramArm.from_arrays(*standalone.to_arrays())
    assert again.pool_depths() == {}
    again.bind([BM25Arm.build(CORPUS), served, again])
    assert again.arms[1] is served and again.pool_depths() == {"chargram": 5}
    for query in QUERIES:
        for n in (1, 3, 10):
            a, b = own.retrieve(query, Context(), n), again.retrieve(query, Context(), n)
            assert a[0].tolist() == b[0].tolist()
            np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
            # The pipeline's list of the served arm (asked 5 deep) is used, not recomputed.
            retrieved = {"chargram": (served, *served.retrieve(query, Context(), 5), 5)}
            calls = []
            real = served.retrieve
            served.retrieve = lambda *args: calls.append(args) or real(*args)
            try:
                c = again.retrieve_pooled(query, Context(), n, retrieved)
            finally:
                del served.retrieve
            assert calls == [] and c[0].tolist() == a[0].tolist()


def test_bind_rejects_another_kind():
    arm = learned_arm()
    arm.same_as = [None, "bm25"]
    with pytest.raises(ValueError, match="same_as\\[1\\]: arm 'bm25' is not a CharGramArm"):
        arm.bind([BM25Arm.build(CORPUS)])


def test_scorer_must_match_the_sub_arms():
    arm = learned_arm()
    with pytest.raises(ValueError, match="expects 2 sub-arms"):
        FusionArm(arm.arms[:1], k=arm.k, scorer=arm.scorer)


def test_learned_builder_needs_both_labels():
    with pytest.raises(ValueError, match="no relevant"):
        build_learned_fusion_arm(CORPUS, ["toilet", "paint"], np.array([0, 4]), np.array([1.0, 1.0]), n_folds=2)
    with pytest.raises(ValueError, match="n_folds"):
        build_learned_fusion_arm(CORPUS, ["toilet"], np.array([0]), np.array([3.0]), n_folds=1)


class TestLearnedFusionContract(ArmContract):
    def make_arm(self):
        return learned_arm(depth=6), ["tiolet tank", "deckpaint", "bracket", "doorbell"]
