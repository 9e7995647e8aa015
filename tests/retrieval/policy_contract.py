"""Contract suite for every bandit policy (``PolicyContract`` mixin) and the bandit simulator.

``BanditSimulator`` is shared by the policy tests, the OPE tests and ``bench/bench_policy.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from retrieval.policy import Decision, allocation_menu


# ---------------------------------------------------------------------------------------------
# Simulator
# ---------------------------------------------------------------------------------------------

@dataclass
class Episode:
    """One simulated episode of ``n_rounds`` at a fixed budget.

    x : float32 (n_rounds, d_ctx); arm_x : float32 (n_rounds, n_arms, d_arm);
    arm_ranks : int64 (n_rounds, n_arms) (-1 absent); mu : float64 (n_rounds, n_actions) exact
    expected reward of every menu action in that round's context; context_ids : int64 (n_rounds,)
    (index into the simulator's context pool, -1 when contexts are drawn fresh).
    """

    x: np.ndarray
    arm_x: np.ndarray
    arm_ranks: np.ndarray
    mu: np.ndarray
    context_ids: np.ndarray
    budget: int


class BanditSimulator:
    """Arms that are each best in a region of context space, with hit probability rising in ``n_a``.

    Context ``x ~ N(0, I_d_ctx)``. Arm a holds the clicked item with probability
    ``q_a(x) = sigmoid(sharpness * <x, c_a> + offset)`` (``c_a`` a random unit vector, so arm a is best
    where x points along ``c_a``); if it does, the item's rank is ``Geometric(rho_a) - 1`` (arms differ
    in how concentrated their hits are at the top), reported as -1 when >= budget (the pipeline only
    retrieves ``budget`` candidates per arm). Arms draw independently given x, so the true expected
    reward of an allocation n is exactly ``1 - prod_a (1 - q_a(x) (1 - (1 - rho_a)^{n_a}))``.

    Arm features ``arm_x[a] = [q_a(x) + N(0, 0.25^2), q_a(x) + N(0, 0.5^2)]`` play the part of the
    pipeline's "historical recall of the arm for similar contexts" signals. With ``n_contexts > 0``
    rounds draw uniformly from a fixed pool of contexts (with fixed arm features), so the value of
    any policy is exactly computable (OPE tests).
    """

    def __init__(self, n_arms: int = 5, d_ctx: int = 6, d_arm: int = 2, *, seed: int = 0,
                 n_contexts: int = 0, sharpness: float = 2.5, offset: float = -1.0):
        if d_arm < 1:
            raise ValueError("d_arm: the simulator needs at least one arm feature")
        rng = np.random.default_rng(seed)
        self.n_arms, self.d_ctx, self.d_arm = n_arms, d_ctx, d_arm
        c = rng.standard_normal((n_arms, d_ctx))
        self.centers = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.rho = rng.permutation(np.linspace(0.06, 0.4, n_arms))
        self.sharpness, self.offset = sharpness, offset
        self.noise_sd = np.linspace(0.25, 0.5, d_arm)
        self.pool_x = self.pool_arm_x = None
        if n_contexts > 0:
            self.pool_x = rng.standard_normal((n_contexts, d_ctx)).astype(np.float32)
            self.pool_arm_x = self._arm_features(self.q(self.pool_x), rng)

    def q(self, x: np.ndarray) -> np.ndarray:
        """P(arm a holds the clicked item), float64 (n, n_arms)."""
        z = self.sharpness * (np.asarray(x, dtype=np.float64) @ self.centers.T) + self.offset
        return 1.0 / (1.0 + np.exp(-z))

    def _arm_features(self, q: np.ndarray, rng) -> np.ndarray:
        noise = rng.standard_normal(q.shape + (self.d_arm,)) * self.noise_sd
        return (q[..., None] + noise).astype(np.float32)

    def expected_rewards(self, q: np.ndarray, budget: int) -> np.ndarray:
        """Exact expected reward of every menu action, float64 (n, n_actions)."""
        menu = allocation_menu(self.n_arms, budget).astype(np.float64)  # (K, A)
        hit = 1.0 - (1.0 - self.rho)[None, :] ** menu  # (K, A)
        miss = 1.0 - q[:, None, :] * hit[None, :, :]
        return 1.0 - miss.prod(axis=2)

    def sample_ranks(self, q: np.ndarray, budget: int, rng) -> np.ndarray:
        """Clicked item's rank in each arm's list, int64 (n, n_arms), -1 absent or beyond budget."""
        inside = rng.random(q.shape) < q
        ranks = rng.geometric(np.broadcast_to(self.rho, q.shape)) - 1
        ranks = np.where(inside & (ranks < budget), ranks, -1)
        return ranks.astype(np.int64)

    def episode(self, n_rounds: int, budget: int, rng) -> Episode:
        if self.pool_x is not None:
            ids = rng.integers(self.pool_x.shape[0], size=n_rounds)
            x, arm_x = self.pool_x[ids], self.pool_arm_x[ids]
        else:
            ids = np.full(n_rounds, -1, dtype=np.int64)
            x = rng.standard_normal((n_rounds, self.d_ctx)).astype(np.float32)
            arm_x = None
        q = self.q(x)
        if arm_x is None:
            arm_x = self._arm_features(q, rng)
        ranks = self.sample_ranks(q, budget, rng)
        return Episode(x=x, arm_x=arm_x, arm_ranks=ranks, mu=self.expected_rewards(q, budget),
                       context_ids=ids, budget=budget)


def realized_reward(allocation: np.ndarray, arm_ranks: np.ndarray) -> float:
    """``any(0 <= r_a < n_a)`` as 0.0/1.0."""
    r = np.asarray(arm_ranks)
    return float(np.any((r >= 0) & (r < np.asarray(allocation))))


def run_policy(policy, ep: Episode, seed: int) -> dict:
    """Online replay: decide, then update with the round's arm ranks. Returns per-round arrays."""
    rng = np.random.default_rng(seed)
    n = ep.x.shape[0]
    actions = np.empty(n, dtype=np.int64)
    props = np.empty(n)
    realized = np.empty(n)
    for t in range(n):
        d = policy.decide(ep.x[t], ep.arm_x[t], ep.budget, rng)
        policy.update(ep.x[t], ep.arm_x[t], d, ep.arm_ranks[t])
        actions[t], props[t] = d.action, d.propensity
        realized[t] = realized_reward(d.allocation, ep.arm_ranks[t])
    expected = ep.mu[np.arange(n), actions]
    return {"actions": actions, "propensities": props, "realized": realized, "expected": expected}


# ---------------------------------------------------------------------------------------------
# Contract mixin
# ---------------------------------------------------------------------------------------------

class PolicyContract:
    """Mixed into each policy's test class. Subclasses define ``make_policy(**config_overrides)``
    returning a fresh policy with ``n_arms``/``d_ctx``/``d_arm`` below, and set ``learns``."""

    n_arms = 3
    d_ctx = 4
    d_arm = 2
    learns = True

    def make_policy(self, **overrides):  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------
    def sim(self) -> BanditSimulator:
        return BanditSimulator(self.n_arms, self.d_ctx, self.d_arm, seed=3)

    def trained(self, n_rounds: int = 300, **overrides):
        policy = self.make_policy(**overrides)
        ep = self.sim().episode(n_rounds, 20, np.random.default_rng(11))
        run_policy(policy, ep, seed=12)
        return policy

    def context(self, seed: int = 5):
        ep = self.sim().episode(1, 20, np.random.default_rng(seed))
        return ep.x[0], ep.arm_x[0]

    # -- contract -------------------------------------------------------------------------
    @pytest.mark.parametrize("budget", [1, 2, 7, 20, 100])
    def test_decide_returns_valid_allocation_within_budget(self, budget):
        policy = self.trained()
        menu = allocation_menu(self.n_arms, budget)
        rng = np.random.default_rng(0)
        for seed in range(30):
            x, arm_x = self.context(seed)
            d = policy.decide(x, arm_x, budget, rng)
            assert isinstance(d, Decision)
            assert 0 <= d.action < menu.shape[0]
            assert d.allocation.shape == (self.n_arms,) and d.allocation.dtype == np.int32
            assert d.allocation.min() >= 0 and d.allocation.sum() <= budget
            np.testing.assert_array_equal(d.allocation, menu[d.action])
            assert 0.0 < d.propensity <= 1.0
            assert d.budget == budget

    def test_propensity_equals_action_probability_for_same_rng_state(self):
        policy = self.trained()
        x, arm_x = self.context()
        for seed in range(20):
            probs = policy.action_probs(x, arm_x, 20, np.random.default_rng(seed))
            assert probs.shape == (policy.n_actions,)
            assert probs.sum() == pytest.approx(1.0)
            assert np.all(probs >= 0.0)
            d = policy.decide(x, arm_x, 20, np.random.default_rng(seed))
            assert d.propensity == pytest.approx(probs[d.action], rel=1e-12)

    def test_propensity_matches_monte_carlo_frequency(self):
        policy = self.trained()
        x, arm_x = self.context()
        n = 6000
        rng = np.random.default_rng(1)
        counts = np.zeros(policy.n_actions)
        inv_weight = np.zeros(policy.n_actions)
        for _ in range(n):
            d = policy.decide(x, arm_x, 20, rng)
            counts[d.action] += 1
            inv_weight[d.action] += 1.0 / d.propensity
        prob_rng = np.random.default_rng(2)
        probs = np.mean([policy.action_probs(x, arm_x, 20, prob_rng) for _ in range(500)], axis=0)
        freq = counts / n
        tol = 4.5 * np.sqrt(probs * (1 - probs) / n) + 0.004
        np.testing.assert_array_less(np.abs(freq - probs), tol)
        # The IPS identity E[1{A=k} / propensity] = 1 for every action the policy can take, which is
        # what off-policy estimators need (it also holds for conditional propensities).
        supported = probs > 0.02
        np.testing.assert_allclose(inv_weight[supported] / n, 1.0, atol=0.15)

    def test_deterministic_under_seeded_rng(self):
        a, b = self.trained(), self.trained()
        for seed in range(20):
            x, arm_x = self.context(seed)
            da = a.decide(x, arm_x, 20, np.random.default_rng(seed))
            db = b.decide(x, arm_x, 20, np.random.default_rng(seed))
            assert (da.action, da.propensity, da.explored) == (db.action, db.propensity, db.explored)

    def test_state_round_trip_gives_identical_decisions(self):
        policy = self.trained()
        state = policy.state_arrays()
        for arr in state.values():
            arr.setflags(write=False)  # as memory-mapped snapshots are
        restored = self.make_policy()
        restored.load_state(state)
        params, arrays = policy.to_arrays()
        rebuilt = type(policy).from_arrays(params, arrays)
        for seed in range(30):
            x, arm_x = self.context(seed)
            ds = [p.decide(x, arm_x, 20, np.random.default_rng(seed)) for p in (policy, restored, rebuilt)]
            assert len({(d.action, d.propensity) for d in ds}) == 1
        # updating the restored copy never writes into the snapshot arrays
        before = {k: v.copy() for k, v in state.items()}
        x, arm_x = self.context(0)
        d = restored.decide(x, arm_x, 20, np.random.default_rng(0))
        restored.update(x, arm_x, d, np.zeros(self.n_arms, dtype=np.int64))
        for k in state:
            np.testing.assert_array_equal(state[k], before[k])

    def test_update_moves_decisions_towards_rewarded_arm(self):
        if not self.learns:
            pytest.skip("policy does not learn")
        policy = self.make_policy()
        good = 1
        menu = allocation_menu(self.n_arms, 20)
        rng = np.random.default_rng(0)
        feature_rng = np.random.default_rng(1)

        def mass_on_good(n=200):
            x = np.zeros(self.d_ctx, dtype=np.float32)
            arm_x = np.zeros((self.n_arms, self.d_arm), dtype=np.float32)
            probs = np.mean([policy.action_probs(x, arm_x, 20, rng) for _ in range(n)], axis=0)
            return float(probs[menu[:, good] == 20].sum())

        before = mass_on_good()
        ranks = np.full(self.n_arms, -1, dtype=np.int64)
        ranks[good] = 15  # only a full allocation to the good arm reaches the clicked item
        for _ in range(200):
            x = feature_rng.standard_normal(self.d_ctx).astype(np.float32)
            arm_x = feature_rng.standard_normal((self.n_arms, self.d_arm)).astype(np.float32)
            d = policy.decide(x, arm_x, 20, rng)
            policy.update(x, arm_x, d, ranks)
        after = mass_on_good()
        assert after > before
        assert after > 0.6

    _BAD_DECIDE = [
        ("x", lambda s: {"x": np.zeros(s.d_ctx + 1)}),
        ("x", lambda s: {"x": np.zeros((1, s.d_ctx))}),
        ("x", lambda s: {"x": np.full(s.d_ctx, np.nan)}),
        ("x", lambda s: {"x": np.array(["a"] * s.d_ctx)}),
        ("arm_x", lambda s: {"arm_x": np.zeros((s.n_arms + 1, s.d_arm))}),
        ("arm_x", lambda s: {"arm_x": np.full((s.n_arms, s.d_arm), np.inf)}),
        ("budget", lambda s: {"budget": 0}),
        ("budget", lambda s: {"budget": 2.5}),
        ("budget", lambda s: {"budget": True}),
        ("rng", lambda s: {"rng": 0}),
        ("rng", lambda s: {"rng": np.random.RandomState(0)}),
    ]

    @pytest.mark.parametrize("field,bad", _BAD_DECIDE)
    def test_invalid_decide_input_raises_naming_field(self, field, bad):
        policy = self.make_policy()
        args = {"x": np.zeros(self.d_ctx, dtype=np.float32),
                "arm_x": np.zeros((self.n_arms, self.d_arm), dtype=np.float32),
                "budget": 20, "rng": np.random.default_rng(0)}
        args.update(bad(self))
        with pytest.raises(ValueError, match=rf"^{field}\b"):
            policy.decide(**args)

    _BAD_UPDATE = [
        ("arm_ranks", lambda s, d: {"arm_ranks": np.zeros(s.n_arms + 1, dtype=np.int64)}),
        ("arm_ranks", lambda s, d: {"arm_ranks": np.full(s.n_arms, -2, dtype=np.int64)}),
        ("arm_ranks", lambda s, d: {"arm_ranks": np.zeros(s.n_arms, dtype=np.float64)}),
        ("x", lambda s, d: {"x": np.zeros(s.d_ctx + 2)}),
        ("arm_x", lambda s, d: {"arm_x": np.zeros((s.n_arms, s.d_arm + 1))}),
        ("decision", lambda s, d: {"decision": "not a decision"}),
        ("decision", lambda s, d: {"decision": Decision(d.action, np.zeros(s.n_arms + 1, np.int32), 1.0, False, 20)}),
        ("decision", lambda s, d: {"decision": Decision(d.action, np.full(s.n_arms, 30, np.int32), 1.0, False, 20)}),
        ("decision.action", lambda s, d: {"decision": Decision(10_000, d.allocation, 1.0, False, 20)}),
    ]

    @pytest.mark.parametrize("field,bad", _BAD_UPDATE)
    def test_invalid_update_input_raises_naming_field(self, field, bad):
        policy = self.make_policy()
        x = np.zeros(self.d_ctx, dtype=np.float32)
        arm_x = np.zeros((self.n_arms, self.d_arm), dtype=np.float32)
        d = policy.decide(x, arm_x, 20, np.random.default_rng(0))
        args = {"x": x, "arm_x": arm_x, "decision": d, "arm_ranks": np.zeros(self.n_arms, dtype=np.int64)}
        args.update(bad(self, d))
        before = policy.state_arrays()
        with pytest.raises(ValueError, match=rf"^{field}\b"):
            policy.update(**args)
        after = policy.state_arrays()
        for k in before:  # a rejected update leaves the state untouched
            np.testing.assert_array_equal(before[k], after[k])

    def test_load_state_rejects_wrong_shapes(self):
        policy = self.make_policy()
        state = policy.state_arrays()
        if not state:
            with pytest.raises(ValueError, match="^arrays"):
                policy.load_state({"w": np.zeros(3)})
            return
        name = sorted(state)[0]
        bad = dict(state)
        bad[name] = np.zeros(np.asarray(state[name]).shape + (1,))
        with pytest.raises(ValueError, match=rf"^{name}\b"):
            policy.load_state(bad)
