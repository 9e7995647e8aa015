"""``retrieval.pipeline.fill_depths`` (budget freed by duplicates goes to the next candidates) and the
joint policy's ``action_hits`` update."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from retrieval.pipeline import fill_depths, union_of
from retrieval.policy import Decision, JointRidgePolicy, PolicyConfig, allocation_menu


def slow_fill(arm_ids, alloc, budget):
    """Straightforward twin: sort every (arm, rank) by the exact key (r + 1/2) / n_a, then arm index,
    and read until ``budget`` distinct items are taken."""
    order = sorted((Fraction(2 * r + 1, 2 * int(n)), a, r)
                   for a, (ids, n) in enumerate(zip(arm_ids, alloc)) if n > 0 for r in range(len(ids)))
    depths = [0] * len(arm_ids)
    seen = set()
    for _, a, r in order:
        if len(seen) >= budget:
            break
        depths[a] = r + 1
        seen.add(int(arm_ids[a][r]))
    return depths


def random_lists(rng, n_arms, budget, n_items):
    out = []
    for _ in range(n_arms):
        m = int(rng.integers(0, min(budget, n_items) + 1))
        out.append(rng.choice(n_items, size=m, replace=False).astype(np.int32))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_fill_depths_equals_slow_twin(seed):
    rng = np.random.default_rng(seed)
    n_arms = int(rng.integers(1, 6))
    budget = int(rng.integers(1, 25))
    arm_ids = random_lists(rng, n_arms, budget, n_items=int(rng.integers(3, 60)))
    menu = allocation_menu(n_arms, budget)
    got = fill_depths(arm_ids, menu, budget)
    assert got.shape == menu.shape and got.dtype == np.int64
    for k in range(menu.shape[0]):
        assert got[k].tolist() == slow_fill(arm_ids, menu[k], budget)
        union = union_of(arm_ids, got[k])
        assert len(union) <= budget
        assert np.all(got[k] <= [len(ids) for ids in arm_ids])
        np.testing.assert_array_equal(fill_depths(arm_ids, menu[k], budget), got[k])


def test_fill_depths_without_duplicates_equals_allocation():
    arm_ids = [np.arange(0, 20, dtype=np.int32), np.arange(100, 120, dtype=np.int32),
               np.arange(200, 220, dtype=np.int32)]
    menu = allocation_menu(3, 20)
    np.testing.assert_array_equal(fill_depths(arm_ids, menu, 20), menu)


def test_fill_depths_spends_duplicate_budget_on_next_candidates():
    arm_ids = [np.array([1, 2, 3, 4, 5], np.int32), np.array([1, 9, 2, 8], np.int32), np.zeros(0, np.int32)]
    d = fill_depths(arm_ids, np.array([3, 2, 0]), 5)
    assert d.tolist() == [4, 2, 0]
    assert sorted(union_of(arm_ids, d).tolist()) == [1, 2, 3, 4, 9]
    # a short list leaves its share to the other arm; empty input gives zero depths
    assert fill_depths(arm_ids, np.array([0, 0, 5]), 5).tolist() == [0, 0, 0]
    assert fill_depths(arm_ids, np.array([1, 4, 0]), 5).tolist() == [3, 4, 0]
    assert fill_depths([np.zeros(0, np.int32)] * 2, np.array([1, 1]), 2).tolist() == [0, 0]


def test_joint_action_hits_default_equals_prefix_rule():
    """Passing the prefix-rule hits explicitly gives the same model as the default update."""
    rng = np.random.default_rng(0)
    a, b = (JointRidgePolicy(3, 2, 1, PolicyConfig(kind="joint", epsilon=0.0)) for _ in range(2))
    menu = allocation_menu(3, 20)
    for _ in range(50):
        x = rng.standard_normal(2).astype(np.float32)
        ax = rng.standard_normal((3, 1)).astype(np.float32)
        ranks = rng.integers(-1, 20, size=3)
        d = a.decide(x, ax, 20, rng)
        a.update(x, ax, d, ranks)
        hits = ((ranks[None] >= 0) & (ranks[None] < menu)).any(axis=1)
        b.update(x, ax, d, ranks, action_hits=hits)
    for k, v in a.state_arrays().items():
        np.testing.assert_allclose(b.state_arrays()[k], v)


@pytest.mark.parametrize("bad,match", [
    (lambda k: np.zeros(k + 1), r"^action_hits: expected"),
    (lambda k: np.full(k, 0.5), r"^action_hits: values must be 0 or 1"),
    (lambda k: np.array(["a"] * k), r"^action_hits: expected"),
])
def test_joint_action_hits_invalid(bad, match):
    p = JointRidgePolicy(3, 2, 1, PolicyConfig(kind="joint"))
    x, ax = np.zeros(2, np.float32), np.zeros((3, 1), np.float32)
    d = Decision(0, allocation_menu(3, 20)[0].copy(), 1.0, False, 20)
    before = p.state_arrays()
    with pytest.raises(ValueError, match=match):
        p.update(x, ax, d, np.zeros(3, np.int64), action_hits=bad(p.n_actions))
    for k, v in before.items():
        np.testing.assert_array_equal(p.state_arrays()[k], v)


def test_pipeline_feedback_trains_on_filled_unions():
    """Two arms with identical lists: under the fill rule a 10 + 10 split reads 20 deep into both, so
    a click at rank 14 is a hit for every split and the policy has no reason to avoid them."""
    from retrieval.arms.base import Context
    from retrieval.pipeline import RetrieveAndRank

    class Same:
        def __init__(self, name):
            self.name = name

        def retrieve(self, query, context, n):
            ids = np.arange(min(n, 30), dtype=np.int32)
            return ids, (100.0 - ids).astype(np.float32)

    policy = JointRidgePolicy(2, 13, 5, PolicyConfig(kind="joint", epsilon=0.0))
    eng = RetrieveAndRank([Same("a"), Same("b")], policy, None, None, None, lambda q: 0, lambda q: False)
    r = eng.retrieve("q", Context(), 20, np.random.default_rng(0))
    assert len(r.union_ids) == 20
    np.testing.assert_array_equal(r.arm_depths(), fill_depths(r.arm_ids, r.decision.allocation, 20))
    for _ in range(30):
        r = eng.retrieve("q", Context(), 20, np.random.default_rng(0))
        assert eng.feedback(r, 14, Context()) == 1.0
    scores = policy.expected_rewards(r.x, r.arm_x, 20)
    assert np.all(scores > 0.9)  # every action's filled union holds rank 14


@pytest.mark.parametrize("seed", range(15))
def test_proposed_equals_slow_twin(seed):
    """``Pipeline._proposed`` (which arms' union heads hold each shown item): the kernel path for item
    ids and the Python path for completion strings both equal a set-membership twin."""
    from retrieval.pipeline import Pipeline, Retrieval

    rng = np.random.default_rng(seed)
    n_arms, budget = int(rng.integers(1, 8)), 40
    arm_ids = random_lists(rng, n_arms, budget, 60)
    depths = np.array([int(rng.integers(0, len(ids) + 1)) for ids in arm_ids], dtype=np.int64)
    heads = [set(ids[:n].tolist()) for ids, n in zip(arm_ids, depths)]
    union = union_of(arm_ids, depths)
    top = rng.permutation(np.concatenate([union, rng.integers(0, 60, size=3).astype(np.int32)]))[:10]
    top = np.unique(top).astype(np.int32)
    decision = Decision(0, depths.astype(np.int32), 1.0, False, budget)
    r = Retrieval("q", budget, arm_ids, [np.zeros(len(a), np.float32) for a in arm_ids], np.zeros(1, np.float32),
                  np.zeros((n_arms, 1), np.float32), decision, union, depths=depths)
    want = np.array([[int(i) in h for h in heads] for i in top.tolist()], dtype=bool).reshape(top.size, n_arms)
    got = Pipeline._proposed(r, top)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, want)
    as_str = Retrieval("q", budget, [[str(i) for i in ids.tolist()] for ids in arm_ids], r.arm_scores, r.x,
                       r.arm_x, decision, [str(i) for i in union.tolist()], depths=depths)
    np.testing.assert_array_equal(Pipeline._proposed(as_str, [str(i) for i in top.tolist()]), want)
