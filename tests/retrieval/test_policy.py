"""Tests for retrieval.policy: the allocation menu, the kernels against slow twins, the contract
suite for every policy, and a short simulator run."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from retrieval import _policy_kernels as K
from retrieval.policy import (DEFAULT_POLICY_KIND, Decision, EpsilonGreedyLinear, FixedPolicy, JointRidgePolicy,
                              LinearThompsonPolicy,
                              LinUCBPolicy, PolicyConfig, allocation_menu, build_policy, menu_fractions,
                              menu_levels)
from tests.retrieval.policy_contract import BanditSimulator, PolicyContract, run_policy

# ---------------------------------------------------------------------------------------------
# Menu
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_arms,n_actions", [(1, 1), (2, 5), (3, 13), (4, 4 + 6 + 12 + 4 + 1), (5, 46)])
def test_menu_size(n_arms, n_actions):
    assert len(menu_fractions(n_arms)) == n_actions
    for row in menu_fractions(n_arms):
        assert sum(row) == 1


@pytest.mark.parametrize("n_arms", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("budget", [1, 2, 3, 7, 20, 21, 100])
def test_allocation_menu_sums_to_budget_and_rounds_by_largest_remainder(n_arms, budget):
    menu = allocation_menu(n_arms, budget)
    assert menu.dtype == np.int32 and menu.shape == (len(menu_fractions(n_arms)), n_arms)
    assert np.all(menu.sum(axis=1) == budget) and menu.min() >= 0
    assert not menu.flags.writeable
    for row, fr in zip(menu, menu_fractions(n_arms)):
        exact = [f * budget for f in fr]
        # largest remainder: every count is floor or ceil of its exact share, zero stays zero
        for n, e in zip(row, exact):
            assert math.floor(e) <= n <= math.ceil(e)
            assert n == 0 or e > 0  # an arm outside the action never gets candidates


def test_allocation_menu_examples():
    menu = allocation_menu(5, 20)
    assert menu[0].tolist() == [20, 0, 0, 0, 0]
    assert menu[5].tolist() == [10, 10, 0, 0, 0]
    assert menu[15].tolist() == [15, 5, 0, 0, 0] and menu[16].tolist() == [5, 15, 0, 0, 0]
    assert menu[35].tolist() == [7, 7, 6, 0, 0]  # thirds: ties of the remainder go to lower arms
    assert menu[-1].tolist() == [4, 4, 4, 4, 4]
    assert allocation_menu(5, 100)[35].tolist() == [34, 33, 33, 0, 0]


def test_menu_levels():
    fr, lev = menu_levels(5)
    np.testing.assert_allclose(fr, [0.2, 0.25, 1 / 3, 0.5, 0.75, 1.0])
    for k, row in enumerate(menu_fractions(5)):
        for a, f in enumerate(row):
            assert (lev[k, a] == -1) if f == 0 else fr[lev[k, a]] == pytest.approx(float(f))


@pytest.mark.parametrize("n_arms,budget,field", [(0, 20, "n_arms"), (2.0, 20, "n_arms"), (3, 0, "budget"),
                                                 (3, -5, "budget"), (3, "20", "budget")])
def test_allocation_menu_invalid(n_arms, budget, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        allocation_menu(n_arms, budget)


@pytest.mark.parametrize("kw,field", [
    ({"kind": "ucb"}, "kind"), ({"epsilon": -0.1}, "epsilon"), ({"epsilon": 1.5}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon"), ({"ridge": 0.0}, "ridge"), ({"alpha": -1.0}, "alpha"),
    ({"posterior_scale": -0.5}, "posterior_scale"), ({"n_samples": 0}, "n_samples"),
    ({"n_samples": 2.5}, "n_samples"), ({"fixed_action": -1}, "fixed_action")])
def test_config_invalid(kw, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        PolicyConfig(**kw)


def test_policy_constructor_invalid():
    with pytest.raises(ValueError, match="^config"):
        EpsilonGreedyLinear(3, 4, 2, PolicyConfig(kind="linucb"))
    with pytest.raises(ValueError, match="^action"):
        FixedPolicy(3, 4, 2, action=13)
    with pytest.raises(ValueError, match="^n_arms"):
        LinUCBPolicy(0, 4, 2)


# ---------------------------------------------------------------------------------------------
# Kernels against slow twins
# ---------------------------------------------------------------------------------------------

def _phi(x, arm_x, budget, a):
    return np.concatenate([x, arm_x[a], [1.0, math.log(budget) / math.log(100.0)]])


def test_rls_update_equals_closed_form_ridge():
    """Sherman-Morrison updates equal solving (lambda I + Phi^T Phi) w = Phi^T Y from scratch."""
    rng = np.random.default_rng(0)
    n_arms, d_ctx, d_arm, ridge = 3, 4, 2, 0.7
    policy = EpsilonGreedyLinear(n_arms, d_ctx, d_arm, PolicyConfig(ridge=ridge))
    levels = np.array([math.floor(f * 20 + Fraction(1, 2)) for f in
                       sorted({f for r in menu_fractions(n_arms) for f in r if f > 0})])
    rows = []
    for t in range(150):
        x = rng.standard_normal(d_ctx).astype(np.float32)
        arm_x = rng.standard_normal((n_arms, d_arm)).astype(np.float32)
        ranks = rng.integers(-1, 25, size=n_arms)
        d = policy.decide(x, arm_x, 20, rng)
        policy.update(x, arm_x, d, ranks)
        rows.append((x, arm_x, ranks))
    state = policy.state_arrays()
    for a in range(n_arms):
        phi = np.array([_phi(x.astype(np.float64), ax.astype(np.float64), 20, a) for x, ax, _ in rows])
        y = np.array([[1.0 if 0 <= r[a] < n else 0.0 for n in levels] for _, _, r in rows])
        gram = ridge * np.eye(phi.shape[1]) + phi.T @ phi
        np.testing.assert_allclose(state["a_inv"][a], np.linalg.inv(gram), atol=1e-9)
        np.testing.assert_allclose(state["w"][a], np.linalg.solve(gram, phi.T @ y), atol=1e-8)
    assert state["n_updates"][0] == 150


def test_predictions_and_union_scores_equal_numpy():
    rng = np.random.default_rng(1)
    policy = EpsilonGreedyLinear(4, 3, 2)
    sim = BanditSimulator(4, 3, 2, seed=1)
    run_policy(policy, sim.episode(200, 20, rng), seed=0)
    x = rng.standard_normal(3).astype(np.float32)
    arm_x = rng.standard_normal((4, 2)).astype(np.float32)
    st = policy.state_arrays()
    p = np.array([[_phi(x, arm_x, 20, a) @ st["w"][a][:, l] for l in range(policy.n_levels)] for a in range(4)])
    _, lev = menu_levels(4)
    expect = np.array([1 - np.prod([1 - np.clip(p[a, lev[k, a]], 0, 1) for a in range(4) if lev[k, a] >= 0])
                       for k in range(policy.n_actions)])
    np.testing.assert_allclose(policy.expected_rewards(x, arm_x, 20), expect, atol=1e-12)
    probs = policy.action_probs(x, arm_x, 20)
    assert probs.argmax() == int(np.argmax(expect))


def test_linucb_target_equals_numpy_optimistic_argmax():
    rng = np.random.default_rng(2)
    policy = LinUCBPolicy(3, 4, 2, PolicyConfig(kind="linucb", alpha=0.8, epsilon=0.0))
    run_policy(policy, BanditSimulator(3, 4, 2, seed=2).episode(100, 20, rng), seed=0)
    st = policy.state_arrays()
    _, lev = menu_levels(3)
    for _ in range(20):
        x = rng.standard_normal(4).astype(np.float32)
        arm_x = rng.standard_normal((3, 2)).astype(np.float32)
        ucb = np.empty((3, policy.n_levels))
        for a in range(3):
            phi = _phi(x, arm_x, 20, a)
            ucb[a] = phi @ st["w"][a] + 0.8 * math.sqrt(phi @ st["a_inv"][a] @ phi)
        scores = [1 - np.prod([1 - np.clip(ucb[a, lev[k, a]], 0, 1) for a in range(3) if lev[k, a] >= 0])
                  for k in range(policy.n_actions)]
        d = policy.decide(x, arm_x, 20, rng)
        assert d.action == int(np.argmax(scores)) and d.propensity == 1.0


def test_thompson_counts_equal_numpy():
    rng = np.random.default_rng(3)
    _, lev = menu_levels(3)
    mean = rng.random((3, 5))
    width = rng.random(3)
    noise = rng.standard_normal((64, 3))
    counts = np.empty(lev.shape[0], dtype=np.int64)
    winners = K.thompson_counts(mean, width, noise, 0.5, lev, counts)
    for s in range(64):
        p = np.clip(mean + 0.5 * width[:, None] * noise[s][:, None], 0, 1)
        scores = [1 - np.prod([1 - p[a, lev[k, a]] for a in range(3) if lev[k, a] >= 0]) for k in range(lev.shape[0])]
        assert winners[s] == int(np.argmax(scores))
    np.testing.assert_array_equal(counts, np.bincount(winners, minlength=lev.shape[0]))


def test_build_policy_replays_log_like_online_updates():
    sim = BanditSimulator(3, 4, 2, seed=4)
    ep = sim.episode(100, 20, np.random.default_rng(4))
    online = EpsilonGreedyLinear(3, 4, 2)
    run_policy(online, ep, seed=0)
    built = build_policy(PolicyConfig(), 3, 4, 2, log=zip(ep.x, ep.arm_x, [20] * 100, ep.arm_ranks))
    for k, v in online.state_arrays().items():
        np.testing.assert_allclose(built.state_arrays()[k], v)


def test_decision_without_budget_uses_allocation_sum():
    policy = EpsilonGreedyLinear(3, 4, 2)
    x, arm_x = np.zeros(4, np.float32), np.zeros((3, 2), np.float32)
    d = policy.decide(x, arm_x, 20, np.random.default_rng(0))
    a = EpsilonGreedyLinear(3, 4, 2)
    b = EpsilonGreedyLinear(3, 4, 2)
    a.update(x, arm_x, d, np.array([3, -1, 8]))
    b.update(x, arm_x, Decision(d.action, d.allocation, d.propensity, d.explored), np.array([3, -1, 8]))
    np.testing.assert_array_equal(a.state_arrays()["w"], b.state_arrays()["w"])


# ---------------------------------------------------------------------------------------------
# Contract suite for every policy
# ---------------------------------------------------------------------------------------------

class TestFixedPolicy(PolicyContract):
    learns = False

    def make_policy(self, **kw):
        return FixedPolicy(self.n_arms, self.d_ctx, self.d_arm, PolicyConfig(kind="fixed", fixed_action=4, **kw))


class TestEpsilonGreedyLinear(PolicyContract):
    def make_policy(self, **kw):
        kw.setdefault("epsilon", 0.2)
        return EpsilonGreedyLinear(self.n_arms, self.d_ctx, self.d_arm, PolicyConfig(kind="epsilon_greedy", **kw))


class TestLinUCBPolicy(PolicyContract):
    def make_policy(self, **kw):
        kw.setdefault("epsilon", 0.2)
        return LinUCBPolicy(self.n_arms, self.d_ctx, self.d_arm, PolicyConfig(kind="linucb", **kw))


class TestLinearThompsonPolicy(PolicyContract):
    def make_policy(self, **kw):
        kw.setdefault("epsilon", 0.2)
        kw.setdefault("posterior_scale", 1.0)
        return LinearThompsonPolicy(self.n_arms, self.d_ctx, self.d_arm, PolicyConfig(kind="thompson", **kw))


class TestJointRidgePolicy(PolicyContract):
    def make_policy(self, **kw):
        kw.setdefault("epsilon", 0.2)
        return JointRidgePolicy(self.n_arms, self.d_ctx, self.d_arm, PolicyConfig(kind="joint", **kw))


def test_joint_policy_learns_overlapping_arms():
    """Two arms that return the same items: splitting the budget between them wins nothing, so the
    joint model must prefer giving the whole budget to the arm that ranks the click higher."""
    from retrieval.policy import allocation_menu

    p = JointRidgePolicy(2, 1, 1, PolicyConfig(kind="joint", epsilon=0.0))
    x, ax = np.ones(1, np.float32), np.zeros((2, 1), np.float32)
    menu = allocation_menu(2, 20)
    for _ in range(200):
        d = p.decide(x, ax, 20, np.random.default_rng(0))
        p.update(x, ax, d, np.array([14, 14]))  # the click is 15th in both lists
    best = menu[p.decide(x, ax, 20, np.random.default_rng(0)).action]
    assert best.max() >= 15  # a half/half split (10 + 10) would miss it


# ---------------------------------------------------------------------------------------------
# Learning on the simulator (short; the full table is bench/bench_policy.py)
# ---------------------------------------------------------------------------------------------

def test_default_policy_beats_best_fixed_action_on_simulator():
    sim = BanditSimulator(5, 6, 2, seed=0)
    ep = sim.episode(3000, 20, np.random.default_rng(0))
    policy = build_policy(PolicyConfig(kind=DEFAULT_POLICY_KIND), 5, 6, 2)
    out = run_policy(policy, ep, seed=0)
    best_fixed = ep.mu.mean(axis=0).max()
    oracle = ep.mu.max(axis=1).mean()
    late = out["expected"][1000:].mean()
    assert late > best_fixed + 0.02
    assert late > oracle - 0.06
