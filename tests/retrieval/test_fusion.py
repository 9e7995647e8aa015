"""FusionArm: reciprocal rank fusion equals a slow twin, persists, and follows the arm contract."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from retrieval.arms.base import Context
from retrieval.arms.bm25 import BM25Arm
from retrieval.arms.chargram import CharGramArm
from retrieval.arms.fusion import FusionArm, build_fusion_arm
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
