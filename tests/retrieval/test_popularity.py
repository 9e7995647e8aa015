"""PopularityArm: exact order under online updates (vs a brute-force sort), snapshots, contract."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.arms.base import Context
from retrieval.arms.popularity import PopularityArm, build_popularity_arm
from retrieval.catalog import Catalog, ClickEvent
from tests.retrieval.arm_contract import ArmContract, OnlineArmContract

BASE = np.array([0, 5, 3, 3, 0, 9, 1, 0, 3, 2], dtype=np.float64)


def brute_force(counts: np.ndarray, n: int):
    s = counts.astype(np.float32)
    order = sorted((i for i in range(len(s)) if s[i] > 0), key=lambda i: (-s[i], i))[:n]
    return np.array(order, dtype=np.int32), s[order]


class TestPopularityContract(ArmContract, OnlineArmContract):
    query_independent = True

    def make_arm(self):
        return PopularityArm(BASE), ["anything", "another query"]

    def make_observations(self, arm):
        rng = np.random.default_rng(0)
        return [("q", int(i), Context(), float(w))
                for i, w in zip(rng.integers(0, arm.n_items, 40), rng.choice([1.0, 0.5, 2.0, 0.0], 40))]


def test_build_counts_clicks():
    arm = PopularityArm.build([1, 1, 2, 5, 1], n_items=6)
    ids, scores = arm.retrieve("", Context(), 10)
    assert ids.tolist() == [1, 2, 5] and scores.tolist() == [3.0, 1.0, 1.0]


def test_build_from_click_events():
    catalog = Catalog(["a.com", "b.com", "c.com"], ["a com", "b com", "c com"])
    clicks = [ClickEvent("u", "q", 0, k) for k in ["b.com", "c.com", "b.com", "unknown.com"]]
    ids, scores = build_popularity_arm(catalog, clicks).retrieve("", Context(), 3)
    assert ids.tolist() == [1, 2] and scores.tolist() == [2.0, 1.0]


@pytest.mark.parametrize("seed", range(5))
def test_online_updates_keep_exact_order(seed):
    rng = np.random.default_rng(seed)
    n_items = 50
    base = rng.integers(0, 4, n_items).astype(np.float64)
    arm = PopularityArm(base)
    counts = base.copy()
    for _ in range(300):
        item = int(rng.integers(0, n_items))
        w = float(rng.choice([1.0, 0.25, 3.0]))
        arm.observe("q", item, Context(), w)
        counts[item] += w
        for n in (1, 7, n_items):
            ids, scores = arm.retrieve("q", Context(), n)
            want_ids, want_scores = brute_force(counts, n)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(arm.rank[arm.order], np.arange(n_items))


def test_cold_arm_returns_nothing_until_a_click():
    arm = PopularityArm(np.zeros(4))
    assert arm.retrieve("q", Context(), 3)[0].size == 0
    arm.observe("q", 2, Context())
    assert arm.retrieve("q", Context(), 3)[0].tolist() == [2]


def test_to_arrays_holds_only_the_build():
    arm = PopularityArm(BASE)
    arm.observe("q", 0, Context(), 100.0)
    params, arrays = arm.to_arrays()
    np.testing.assert_array_equal(arrays["base_counts"], BASE)
    assert arm.state_arrays()["observed"][0] == 100.0


@pytest.mark.parametrize("weight, message", [
    (-1.0, "weight must be a finite number >= 0"),
    (float("nan"), "weight must be a finite number >= 0"),
    (float("inf"), "weight must be a finite number >= 0"),
    ("1", "weight must be a finite number >= 0"),
    (None, "weight must be a finite number >= 0"),
])
def test_observe_invalid_weight(weight, message):
    with pytest.raises(ValueError, match=message):
        PopularityArm(BASE).observe("q", 1, Context(), weight)


@pytest.mark.parametrize("counts, message", [
    (np.array([1.0, -1.0]), "base_counts must be finite and >= 0"),
    (np.array([1.0, np.nan]), "base_counts must be finite and >= 0"),
    (np.zeros((2, 2)), "base_counts must have shape"),
    (np.array(["a"]), "base_counts must be numeric"),
])
def test_invalid_base_counts(counts, message):
    with pytest.raises(ValueError, match=message):
        PopularityArm(counts)


@pytest.mark.parametrize("state, message", [
    ({"observed": np.zeros(3)}, "observed must have shape"),
    ({"observed": -np.ones(len(BASE))}, "observed must be finite and >= 0"),
])
def test_load_state_invalid(state, message):
    with pytest.raises(ValueError, match=message):
        PopularityArm(BASE).load_state(state)


def test_build_invalid_ids():
    with pytest.raises(ValueError, match="item_ids must lie in"):
        PopularityArm.build([0, 3], n_items=3)
