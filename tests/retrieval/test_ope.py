"""Tests for retrieval.ope: formulas on hand-sized logs, unbiasedness on simulated logs whose true
policy value is computed exactly, DR's variance advantage, logs written by the real policies, and a
table of invalid inputs."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.ope import direct_method, doubly_robust, ips, snips
from retrieval.policy import (EpsilonGreedyLinear, LinearThompsonPolicy, PolicyConfig, allocation_menu)
from tests.retrieval.policy_contract import BanditSimulator, run_policy

BUDGET = 20


# ---------------------------------------------------------------------------------------------
# Formulas against a hand computation
# ---------------------------------------------------------------------------------------------

def test_formulas_on_a_three_row_log():
    r = np.array([1.0, 0.0, 1.0])
    p = np.array([0.5, 0.25, 0.8])
    pi = np.array([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]])
    a = np.array([1, 0, 0])
    q = np.array([[0.3, 0.6], [0.1, 0.2], [0.7, 0.4]])
    t = pi[np.arange(3), a]  # 0.8, 1.0, 0.5
    w = t / p  # 1.6, 4.0, 0.625
    assert ips(r, t, p) == pytest.approx((1.6 + 0 + 0.625) / 3)
    assert snips(r, t, p) == pytest.approx((1.6 + 0.625) / (1.6 + 4.0 + 0.625))
    dm_rows = (pi * q).sum(axis=1)  # 0.54, 0.1, 0.55
    assert direct_method(pi, q) == pytest.approx(dm_rows.mean())
    dr_rows = dm_rows + w * (r - q[np.arange(3), a])
    assert doubly_robust(r, pi, a, p, q) == pytest.approx(dr_rows.mean())


def test_dr_with_zero_reward_model_is_ips_and_with_exact_rewards_is_dm():
    rng = np.random.default_rng(0)
    n, k = 50, 4
    pi = rng.dirichlet(np.ones(k), size=n)
    a = rng.integers(k, size=n)
    p = rng.uniform(0.1, 1.0, size=n)
    r = rng.random(n)
    t = pi[np.arange(n), a]
    assert doubly_robust(r, pi, a, p, np.zeros((n, k))) == pytest.approx(ips(r, t, p))
    q = rng.random((n, k))
    q[np.arange(n), a] = r  # the model predicts the observed reward exactly: correction term is 0
    assert doubly_robust(r, pi, a, p, q) == pytest.approx(direct_method(pi, q))


def test_snips_equals_ips_when_weights_average_to_one():
    r = np.array([1.0, 0.0, 1.0, 1.0])
    t = np.array([0.5, 0.5, 0.5, 0.5])
    p = np.array([0.5, 0.5, 0.5, 0.5])
    assert snips(r, t, p) == pytest.approx(ips(r, t, p)) == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------
# Simulated logs with a known policy value
# ---------------------------------------------------------------------------------------------

class _World:
    """A finite context pool (so ``V(pi) = mean_x sum_a pi(a|x) mu(x, a)`` is exact), a fixed
    epsilon-greedy logging policy built on a deliberately wrong score, and a different target policy
    (softmax on the true expected reward)."""

    def __init__(self, n_arms=3, epsilon=0.3, seed=0):
        self.sim = BanditSimulator(n_arms, 4, 2, seed=seed, n_contexts=200)
        self.q = self.sim.q(self.sim.pool_x)
        self.mu = self.sim.expected_rewards(self.q, BUDGET)  # (200, K)
        n_ctx, k = self.mu.shape
        rng = np.random.default_rng(seed + 100)
        wrong = self.mu + rng.normal(0.0, 0.15, size=self.mu.shape)
        self.pi0 = np.full((n_ctx, k), epsilon / k)
        self.pi0[np.arange(n_ctx), wrong.argmax(axis=1)] += 1 - epsilon
        z = np.exp((self.mu - self.mu.max(axis=1, keepdims=True)) / 0.05)
        self.pi1 = z / z.sum(axis=1, keepdims=True)
        self.value = float(np.mean(np.sum(self.pi1 * self.mu, axis=1)))
        self.menu = allocation_menu(n_arms, BUDGET)

    def log(self, n, seed):
        rng = np.random.default_rng(seed)
        ids = rng.integers(self.mu.shape[0], size=n)
        cum = self.pi0[ids].cumsum(axis=1)
        a = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), self.mu.shape[1] - 1)
        ranks = self.sim.sample_ranks(self.q[ids], BUDGET, rng)
        alloc = self.menu[a]
        r = np.any((ranks >= 0) & (ranks < alloc), axis=1).astype(np.float64)
        return ids, a, self.pi0[ids, a], r


def test_simulated_rewards_have_the_exact_expected_value():
    world = _World()
    ids, a, _, r = world.log(40000, seed=1)
    assert r.mean() == pytest.approx(world.mu[ids, a].mean(), abs=0.01)


def test_estimators_recover_the_true_value_averaged_over_seeds():
    world = _World()
    est = {"ips": [], "snips": [], "dr": []}
    good_q = np.clip(world.mu + np.random.default_rng(7).normal(0, 0.05, world.mu.shape), 0, 1)
    for seed in range(20):
        ids, a, p, r = world.log(3000, seed)
        t = world.pi1[ids, a]
        est["ips"].append(ips(r, t, p))
        est["snips"].append(snips(r, t, p))
        est["dr"].append(doubly_robust(r, world.pi1[ids], a, p, good_q[ids]))
    on_policy_logging_value = float(np.mean(np.sum(world.pi0 * world.mu, axis=1)))
    assert abs(on_policy_logging_value - world.value) > 0.03  # the target really differs
    for name, values in est.items():
        # within 3 standard errors of the mean over seeds (IPS: sd ~0.03 per 3000-row log)
        stderr = np.std(values) / np.sqrt(len(values))
        assert abs(np.mean(values) - world.value) < 3 * stderr + 0.002, name
    # DR with a good reward model has lower variance than IPS
    assert np.std(est["dr"]) < 0.6 * np.std(est["ips"])
    # DM with a biased model is off; DR corrects it
    biased_q = np.clip(world.mu - 0.1, 0, 1)
    ids, a, p, r = world.log(20000, 99)
    assert direct_method(world.pi1[ids], biased_q[ids]) < world.value - 0.05
    assert doubly_robust(r, world.pi1[ids], a, p, biased_q[ids]) == pytest.approx(world.value, abs=0.02)


@pytest.mark.parametrize("policy_cls,config", [
    (EpsilonGreedyLinear, PolicyConfig(kind="epsilon_greedy", epsilon=0.5)),
    (LinearThompsonPolicy, PolicyConfig(kind="thompson", epsilon=0.5, posterior_scale=1.0, n_samples=16)),
])
def test_ips_over_logs_written_by_a_learning_policy(policy_cls, config):
    """Propensities logged by the real policies (exact for epsilon-greedy, conditional on the
    posterior draws for Thompson) give unbiased IPS/SNIPS estimates of every fixed action."""
    sim = BanditSimulator(2, 4, 2, seed=5, n_contexts=100)
    mu = sim.expected_rewards(sim.q(sim.pool_x), BUDGET)
    true_values = mu.mean(axis=0)
    logs = []
    for seed in range(4):
        ep = sim.episode(2500, BUDGET, np.random.default_rng(seed))
        out = run_policy(policy_cls(2, 4, 2, config), ep, seed=seed)
        logs.append((out["actions"], out["propensities"], out["realized"]))
    a, p, r = (np.concatenate(parts) for parts in zip(*logs))
    for k in range(mu.shape[1]):
        t = (a == k).astype(float)
        stderr = np.std(t / p * r) / np.sqrt(r.shape[0])
        assert abs(ips(r, t, p) - true_values[k]) < 3.5 * stderr, k
        assert abs(snips(r, t, p) - true_values[k]) < 3.5 * stderr, k


# ---------------------------------------------------------------------------------------------
# Invalid input
# ---------------------------------------------------------------------------------------------

R = np.array([1.0, 0.0])
T = np.array([0.5, 1.0])
P = np.array([0.5, 0.25])
PI = np.array([[0.5, 0.5], [0.0, 1.0]])
A = np.array([0, 1])
Q = np.zeros((2, 2))

_BAD_WEIGHTED = [
    ("rewards", {"rewards": np.array([])}, "must not be empty"),
    ("rewards", {"rewards": np.zeros((2, 1))}, "1-D"),
    ("rewards", {"rewards": np.array([np.nan, 1.0])}, "NaN"),
    ("rewards", {"rewards": np.array(["a", "b"])}, "numeric"),
    ("target_probs", {"target_probs": np.array([0.5])}, "length 2"),
    ("target_probs", {"target_probs": np.array([0.5, 1.5])}, r"\[0, 1\]"),
    ("target_probs", {"target_probs": np.array([-0.1, 0.5])}, r"\[0, 1\]"),
    ("logged_propensities", {"logged_propensities": np.array([0.0, 0.5])}, r"\(0, 1\]"),
    ("logged_propensities", {"logged_propensities": np.array([0.5, 1.2])}, r"\(0, 1\]"),
    ("logged_propensities", {"logged_propensities": np.array([0.5, np.inf])}, "NaN or infinity"),
    ("logged_propensities", {"logged_propensities": np.array([0.5, 0.5, 0.5])}, "length 2"),
]


@pytest.mark.parametrize("estimator", [ips, snips])
@pytest.mark.parametrize("field,bad,message", _BAD_WEIGHTED)
def test_invalid_ips_snips_input(estimator, field, bad, message):
    args = {"rewards": R, "target_probs": T, "logged_propensities": P, **bad}
    with pytest.raises(ValueError, match=rf"^{field}: .*{message}"):
        estimator(**args)


def test_snips_rejects_all_zero_weights():
    with pytest.raises(ValueError, match="^target_probs"):
        snips(R, np.zeros(2), P)


_BAD_DR = [
    ("rewards", {"rewards": np.array([])}, "must not be empty"),
    ("target_probs_all_actions", {"target_probs_all_actions": np.array([0.5, 0.5])}, "shape"),
    ("target_probs_all_actions", {"target_probs_all_actions": np.array([[0.5, 0.4], [0.0, 1.0]])}, "sum to 1"),
    ("target_probs_all_actions", {"target_probs_all_actions": np.array([[1.5, -0.5], [0.0, 1.0]])}, r"\[0, 1\]"),
    ("logged_actions", {"logged_actions": np.array([0, 2])}, r"\[0, 2\)"),
    ("logged_actions", {"logged_actions": np.array([0.0, 1.0])}, "integer"),
    ("logged_actions", {"logged_actions": np.array([0])}, "shape"),
    ("logged_propensities", {"logged_propensities": np.array([0.5, 0.0])}, r"\(0, 1\]"),
    ("reward_model_predictions", {"reward_model_predictions": np.zeros((2, 3))}, "shape"),
    ("reward_model_predictions", {"reward_model_predictions": np.array([[0.0, np.nan], [0.0, 0.0]])}, "NaN"),
]


@pytest.mark.parametrize("field,bad,message", _BAD_DR)
def test_invalid_doubly_robust_input(field, bad, message):
    args = {"rewards": R, "target_probs_all_actions": PI, "logged_actions": A, "logged_propensities": P,
            "reward_model_predictions": Q, **bad}
    with pytest.raises(ValueError, match=rf"^{field}: .*{message}"):
        doubly_robust(**args)


@pytest.mark.parametrize("pi,q,field", [
    (PI, np.zeros(2), "reward_model_predictions"),
    (np.array([[0.5, 0.6], [0.0, 1.0]]), Q, "target_probs_all_actions"),
    (PI, np.zeros((2, 3)), "reward_model_predictions"),
])
def test_invalid_direct_method_input(pi, q, field):
    with pytest.raises(ValueError, match=rf"^{field}"):
        direct_method(pi, q)
