"""Contextual bandit over candidate allocations: which arms to draw from, and how many from each.

Setting (docs/internals.md, "retrieval.policy"). The pipeline first retrieves up to ``budget``
candidates from every arm, then asks the policy for an allocation ``n`` (``n_a >= 0``,
``sum(n) <= budget``); the union of every arm's top ``n_a`` goes to the ranker (read deeper when arms
overlap, so that it holds ``budget`` distinct items: ``retrieval.pipeline.fill_depths``). After feedback we know
``arm_ranks[a]``, the 0-based rank of the clicked item in arm a's full list (-1 if absent), so the
reward ``any(0 <= r_a < n_a)`` of *every* allocation is known, not only the chosen one's. The linear
policies exploit that: each update trains every arm's model at every candidate-count level (full
information), and exploration is kept only so that each logged decision has a propensity > 0 for
off-policy evaluation (``retrieval.ope``) of arbitrary target policies.

Action space
------------
``allocation_menu(n_arms, budget)`` (fractions from ``menu_fractions(n_arms)``, in this order):

1. singles: the whole budget to one arm (``n_arms`` actions);
2. halves: 1/2 + 1/2 for every pair of arms (``C(n_arms, 2)``);
3. skewed pairs: 3/4 + 1/4 for every ordered pair (``n_arms * (n_arms - 1)``);
4. thirds: 1/3 each for every triple (``C(n_arms, 3)``);
5. uniform: 1/n_arms each (only when ``n_arms >= 4``; for 2 or 3 arms it equals 2. or 4.).

Five arms give 5 + 10 + 20 + 10 + 1 = 46 actions. A fraction f becomes ``floor(f * budget)`` and
the remaining candidates go one each to the arms with the largest remainders (ties: lower arm index),
computed in exact rational arithmetic, so every allocation sums to exactly ``budget`` and is the same
on every machine. At tiny budgets two action indices can give the same allocation (both are kept, so
action indices are stable across budgets).

Model (all linear policies)
---------------------------
Per arm a, one ridge regression with input ``phi_a = [x, arm_x[a], 1, log(budget)/log(100)]``
(``d = d_ctx + d_arm + 2``) and one output per candidate-count *level* (the distinct non-zero
fractions of the menu, e.g. 1/5, 1/4, 1/3, 1/2, 3/4, 1): output l predicts
``P(0 <= r_a < n_l)`` with ``n_l = round_half_up(F_l * budget)``. All outputs of an arm share one Gram
matrix (they are observed on the same rows), so an update is one Sherman-Morrison step of
``A_a^-1`` (float64, (d, d)) plus a rank-1 correction of the (d, n_levels) weights per arm --
``O(n_arms * d^2)``, tens of microseconds in numba for d ~ 20-60. The predicted reward of an action
is the noisy-or ``1 - prod_a (1 - clip(p_a(level_a), 0, 1))`` (exact if arms hit independently given
the features; arms that return the same items make it optimistic for pairs of overlapping arms).

Policies
--------
- ``FixedPolicy``: always one menu action (baseline); propensity 1.
- ``EpsilonGreedyLinear``: greedy on the predicted union hit probability; with probability
  ``epsilon`` a uniform action. Exact propensity ``eps/K + (1-eps) [k == greedy]``.
- ``LinUCBPolicy``: greedy on optimistic hit probabilities ``p + alpha * sqrt(phi^T A^-1 phi)``
  (Li et al., WWW 2010), mixed with ``epsilon`` uniform so the logged propensity is > 0 and exact.
- ``LinearThompsonPolicy``: ``n_samples`` posterior draws of every arm's hit curve
  (Agrawal & Goyal, ICML 2013, with the posterior scale ``v`` as a hyperparameter); the action is the
  winner of one draw picked uniformly, which is distributed exactly as Thompson sampling with one
  draw. Logged propensity ``eps/K + (1-eps) * count_k / n_samples``: the exact probability of the
  chosen action *given the drawn samples* (an unbiased Monte-Carlo estimate of the marginal
  Thompson probability). Because the draws are independent of the reward given the context, IPS
  with this conditional propensity is still unbiased; it only adds variance.

Choice of default (measured, ``python -m bench.bench_policy``)
--------------------------------------------------------------
Default: ``EpsilonGreedyLinear`` with ``epsilon = 0.02``. Simulator (5 arms, 46 actions, budget 20,
20,000 rounds, seeds 0-4; mean expected reward per round; best fixed action 0.7177, per-context
oracle 0.8099):

=====================================  =============================  =============================
policy (mean reward / round)           base (d = 10)                  wide (d = 36, 24 noise feats)
=====================================  =============================  =============================
greedy (epsilon = 0; no OPE support)   0.8004                         0.7988
epsilon-greedy, epsilon .01/.02/.05    0.7975 / 0.7947 / 0.7862       0.7959 / 0.7931 / 0.7847
LinUCB alpha 0.1/0.3/1.0 (eps .02)     0.7945 / 0.7939 / 0.7909       0.7927 / 0.7909 / 0.7833
Thompson v 0.1/0.3/1.0 (eps .02)       0.7948 / 0.7946 / 0.7919       0.7931 / 0.7919 / 0.7834
=====================================  =============================  =============================

Latency (warmed, d = 36, loaded 2-CPU box): decide p50/p99 15/48 us (epsilon-greedy), 21/115 us
(LinUCB), 41/143 us (Thompson); update p50/p99 20/65 us.

Why: feedback here is full-information -- ``arm_ranks`` gives the reward of every allocation, so
the training signal does not depend on the action taken and exploration buys no information.
Measured, every exploration knob is monotone: more epsilon, more optimism (alpha) or a wider
posterior (v) gives less reward, and greedy is best. LinUCB and Thompson converge to greedy as
alpha, v -> 0 and only add cost (Thompson's decide is 2-3x slower: n_samples union evaluations).
Exploration is kept only for off-policy evaluation: ``epsilon = 0.02`` costs ~0.006 reward per round
against pure greedy and gives every action a propensity >= 0.02 / 46 = 4.3e-4 (exact, not
estimated). IPS weights can then reach ~2300, so prefer SNIPS or DR for arbitrary targets -- or,
better, replay the target over logged ``arm_ranks`` (exact; see ``retrieval.ope``). Raise epsilon
where OPE precision matters more than ~0.3 points of recall per 0.01. The simulator's arms are
independent given the context, which is when the noisy-or union model is exact; on real logs arms
overlap (the same site from memory index and popularity), so pairs of redundant arms are
over-valued by the noisy-or -- check on the AOL replay.

Shapes
------
``x`` float32 (d_ctx,) context features; ``arm_x`` float32 (n_arms, d_arm) per-arm features;
``budget`` int >= 1; ``rng`` ``numpy.random.Generator`` (all randomness comes from it);
``arm_ranks`` int (n_arms,) values >= -1. ``Decision.allocation`` int32 (n_arms,).

Threads: ``decide``/``action_probs``/``expected_rewards`` only read the model and may run
concurrently; ``update``/``load_state`` write it in place and must be serialised against every other
call by the caller (one lock per policy).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from typing import Iterable, Mapping

import numpy as np

from retrieval import _policy_kernels as _k

POLICY_KINDS = ("fixed", "epsilon_greedy", "linucb", "thompson", "joint")
DEFAULT_POLICY_KIND = "epsilon_greedy"
_BUDGET_SCALE = math.log(100.0)


# ---------------------------------------------------------------------------------------------
# Action menu
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def menu_fractions(n_arms: int) -> tuple[tuple[Fraction, ...], ...]:
    """The allocation menu as exact fractions of the budget, shape (n_actions, n_arms).

    Order: singles, halves (pairs), 3/4 + 1/4 (ordered pairs), thirds (triples), uniform
    (``n_arms >= 4`` only). Pairs and triples are in lexicographic order of arm indices.

    Raises
    ------
    ValueError
        ``n_arms`` is not an integer >= 1.
    """
    n_arms = _check_int("n_arms", n_arms, minimum=1)
    zero = Fraction(0)
    rows: list[tuple[Fraction, ...]] = []

    def row(parts: dict[int, Fraction]) -> tuple[Fraction, ...]:
        return tuple(parts.get(a, zero) for a in range(n_arms))

    for a in range(n_arms):
        rows.append(row({a: Fraction(1)}))
    for a, b in combinations(range(n_arms), 2):
        rows.append(row({a: Fraction(1, 2), b: Fraction(1, 2)}))
    for a, b in combinations(range(n_arms), 2):
        rows.append(row({a: Fraction(3, 4), b: Fraction(1, 4)}))
        rows.append(row({a: Fraction(1, 4), b: Fraction(3, 4)}))
    for a, b, c in combinations(range(n_arms), 3):
        rows.append(row({a: Fraction(1, 3), b: Fraction(1, 3), c: Fraction(1, 3)}))
    if n_arms >= 4:
        rows.append(row({a: Fraction(1, n_arms) for a in range(n_arms)}))
    return tuple(rows)


def _round_allocation(fracs: tuple[Fraction, ...], budget: int) -> list[int]:
    exact = [f * budget for f in fracs]
    counts = [math.floor(e) for e in exact]
    left = budget - sum(counts)
    order = sorted(range(len(fracs)), key=lambda a: (-(exact[a] - counts[a]), a))
    for a in order[:left]:
        counts[a] += 1
    return counts


@lru_cache(maxsize=64)
def _menu_cached(n_arms: int, budget: int) -> np.ndarray:
    out = np.array([_round_allocation(r, budget) for r in menu_fractions(n_arms)], dtype=np.int32)
    out.setflags(write=False)
    return out


def allocation_menu(n_arms: int, budget: int) -> np.ndarray:
    """Candidate counts of every menu action at this budget.

    Returns
    -------
    ndarray of shape (n_actions, n_arms), int32, read-only
        Row k is action k's allocation; every row sums to exactly ``budget`` (largest-remainder
        rounding of ``menu_fractions(n_arms)[k] * budget``, ties to the lower arm index).

    Raises
    ------
    ValueError
        ``n_arms`` or ``budget`` is not an integer >= 1.
    """
    n_arms = _check_int("n_arms", n_arms, minimum=1)
    budget = _check_int("budget", budget, minimum=1)
    return _menu_cached(n_arms, budget)


def menu_levels(n_arms: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate-count levels of the menu.

    Returns
    -------
    level_fractions : ndarray (n_levels,), float64
        Distinct non-zero fractions of the menu, ascending.
    action_levels : ndarray (n_actions, n_arms), int32
        Level index of arm a in action k, -1 when the arm gets nothing.
    """
    fr = menu_fractions(n_arms)
    levels = sorted({f for r in fr for f in r if f > 0})
    index = {f: i for i, f in enumerate(levels)}
    action_levels = np.array([[index[f] if f > 0 else -1 for f in r] for r in fr], dtype=np.int32)
    return np.array([float(f) for f in levels], dtype=np.float64), action_levels


@lru_cache(maxsize=64)
def _level_counts_cached(n_arms: int, budget: int) -> np.ndarray:
    fr = menu_fractions(n_arms)
    levels = sorted({f for r in fr for f in r if f > 0})
    out = np.array([math.floor(f * budget + Fraction(1, 2)) for f in levels], dtype=np.int64)
    out.setflags(write=False)
    return out


# ---------------------------------------------------------------------------------------------
# Config, decision, validation
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyConfig:
    """Hyperparameters of every policy kind (the only place their defaults live).

    Parameters
    ----------
    kind : {"fixed", "epsilon_greedy", "linucb", "thompson"}
    epsilon : float in [0, 1]
        Uniform-exploration probability (linear kinds). > 0 keeps every logged propensity > 0, which
        off-policy evaluation of arbitrary target policies needs.
    ridge : float > 0
        L2 penalty lambda of the per-arm ridge regressions (``A = lambda I + sum phi phi^T``).
    alpha : float >= 0
        LinUCB optimism multiplier on ``sqrt(phi^T A^-1 phi)``.
    posterior_scale : float >= 0
        Thompson posterior standard-deviation multiplier ``v``.
    n_samples : int >= 1
        Thompson posterior draws per decision.
    fixed_action : int >= 0
        The menu action of ``FixedPolicy``.
    """

    kind: str = DEFAULT_POLICY_KIND
    epsilon: float = 0.02
    ridge: float = 1.0
    alpha: float = 0.3
    posterior_scale: float = 0.3
    n_samples: int = 32
    fixed_action: int = 0

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"kind: expected one of {POLICY_KINDS}, got {self.kind!r}")
        _check_real("epsilon", self.epsilon, 0.0, 1.0)
        _check_real("ridge", self.ridge, 0.0, math.inf, open_low=True)
        _check_real("alpha", self.alpha, 0.0, math.inf)
        _check_real("posterior_scale", self.posterior_scale, 0.0, math.inf)
        _check_int("n_samples", self.n_samples, minimum=1)
        _check_int("fixed_action", self.fixed_action, minimum=0)


@dataclass(frozen=True, eq=False)
class Decision:
    """One logged policy decision.

    Attributes
    ----------
    action : int
        Menu index (``allocation_menu(n_arms, budget)[action]``).
    allocation : ndarray (n_arms,), int32
        Candidates to take from each arm; sums to ``budget``.
    propensity : float in (0, 1]
        Probability with which the policy chose ``action`` (see each policy for what it is
        conditional on).
    explored : bool
        True when ``action`` is not the action the point estimates (greedy) would pick.
    budget : int
        Total candidate budget of the call (-1 when unknown: ``update`` then uses the allocation sum).
    """

    action: int
    allocation: np.ndarray
    propensity: float
    explored: bool
    budget: int = -1


def _check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {value}")
    return value


def _check_real(name: str, value, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (open_low and v <= low):
        lo = "(" if open_low else "["
        raise ValueError(f"{name}: must be in {lo}{low}, {high}], got {value!r}")
    return v


def _check_vector(name: str, value, n: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    if not _k.all_finite_1d(arr):
        raise ValueError(f"{name}: contains NaN or infinity")
    return arr


def _check_matrix(name: str, value, n: int, m: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (n, m):
        raise ValueError(f"{name}: expected shape ({n}, {m}), got {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    if not _k.all_finite_2d(arr):
        raise ValueError(f"{name}: contains NaN or infinity")
    return arr


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_ranks(value, n_arms: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != n_arms:
        raise ValueError(f"arm_ranks: expected shape ({n_arms},), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"arm_ranks: expected an integer array, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    low = int(arr.min()) if arr.size else 0
    if low < -1:
        raise ValueError(f"arm_ranks: values must be >= -1 (absent), got {low}")
    return arr


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------

class _PolicyBase:
    """Shared plumbing: shapes, validation, menu cache, persistence. Not used directly."""

    kind = ""

    def __init__(self, n_arms: int, d_ctx: int, d_arm: int, config: PolicyConfig | None = None):
        self.n_arms = _check_int("n_arms", n_arms, minimum=1)
        self.d_ctx = _check_int("d_ctx", d_ctx, minimum=0)
        self.d_arm = _check_int("d_arm", d_arm, minimum=0)
        config = PolicyConfig(kind=self.kind) if config is None else config
        if not isinstance(config, PolicyConfig):
            raise ValueError(f"config: expected PolicyConfig, got {type(config).__name__}")
        if config.kind != self.kind:
            raise ValueError(f"config: kind {config.kind!r} does not match {type(self).__name__}")
        self.config = config
        self.n_actions = len(menu_fractions(self.n_arms))
        self.level_fractions, self.action_levels = menu_levels(self.n_arms)
        self.n_levels = int(self.level_fractions.shape[0])

    # -- validation -----------------------------------------------------------------------
    def _inputs(self, x, arm_x, budget) -> tuple[np.ndarray, np.ndarray, int]:
        x = _check_vector("x", x, self.d_ctx)
        arm_x = _check_matrix("arm_x", arm_x, self.n_arms, self.d_arm)
        budget = _check_int("budget", budget, minimum=1)
        return x, arm_x, budget

    def _decision_budget(self, decision) -> int:
        if not isinstance(decision, Decision):
            raise ValueError(f"decision: expected Decision, got {type(decision).__name__}")
        alloc = np.asarray(decision.allocation)
        if alloc.shape != (self.n_arms,) or alloc.dtype.kind not in "iu" or int(alloc.min()) < 0:
            raise ValueError(f"decision: allocation must be non-negative integers of shape ({self.n_arms},)")
        _check_int("decision.action", decision.action, minimum=0, maximum=self.n_actions - 1)
        total = int(alloc.sum())
        budget = int(decision.budget) if decision.budget != -1 else total
        if budget < 1 or total > budget:
            raise ValueError(f"decision: budget {decision.budget} inconsistent with allocation {alloc.tolist()}")
        return budget

    def _finish(self, action: int, budget: int, propensity: float, greedy: int) -> Decision:
        return Decision(action=int(action), allocation=_menu_cached(self.n_arms, budget)[action].copy(),
                        propensity=float(propensity), explored=bool(action != greedy), budget=budget)

    # -- persistence ----------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able params, arrays): config + shapes, and ``state_arrays()``."""
        params = {"kind": self.kind, "n_arms": self.n_arms, "d_ctx": self.d_ctx, "d_arm": self.d_arm,
                  "config": asdict(self.config)}
        return params, self.state_arrays()

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]):
        """Rebuild from ``to_arrays`` output (arrays may be read-only memory maps; they are copied)."""
        policy = build_policy(PolicyConfig(**params["config"]), int(params["n_arms"]),
                              int(params["d_ctx"]), int(params["d_arm"]))
        if cls is not _PolicyBase and not isinstance(policy, cls):
            raise ValueError(f"params: kind {params['config']['kind']!r} is not a {cls.__name__}")
        policy.load_state(arrays)
        return policy

    def expected_rewards(self, x, arm_x, budget: int) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


class FixedPolicy(_PolicyBase):
    """Always the same menu action (``config.fixed_action`` or ``action``); propensity 1.

    The baseline every bandit is compared against ("best fixed action" in the regret table).
    ``update`` only validates its inputs.
    """

    kind = "fixed"

    def __init__(self, n_arms: int, d_ctx: int, d_arm: int, config: PolicyConfig | None = None, *,
                 action: int | None = None):
        if action is not None:
            config = PolicyConfig(kind="fixed", fixed_action=_check_int("action", action, minimum=0))
        super().__init__(n_arms, d_ctx, d_arm, config)
        self.action = _check_int("action", self.config.fixed_action, minimum=0, maximum=self.n_actions - 1)

    def action_probs(self, x, arm_x, budget: int, rng=None) -> np.ndarray:
        """float64 (n_actions,): one-hot on the fixed action."""
        self._inputs(x, arm_x, budget)
        out = np.zeros(self.n_actions)
        out[self.action] = 1.0
        return out

    def expected_rewards(self, x, arm_x, budget: int) -> np.ndarray:
        """No model: zeros (n_actions,)."""
        self._inputs(x, arm_x, budget)
        return np.zeros(self.n_actions)

    def decide(self, x, arm_x, budget: int, rng) -> Decision:
        _, _, budget = self._inputs(x, arm_x, budget)
        _check_rng(rng)
        return self._finish(self.action, budget, 1.0, self.action)

    def update(self, x, arm_x, decision: Decision, arm_ranks) -> None:
        self._inputs(x, arm_x, self._decision_budget(decision))
        _check_ranks(arm_ranks, self.n_arms)

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        if len(arrays):
            raise ValueError(f"arrays: FixedPolicy has no state, got keys {sorted(arrays)}")

    def warmup(self) -> None:
        pass


class _LinearPolicy(_PolicyBase):
    """Per-arm ridge models of ``P(0 <= r_a < n_level)`` with Sherman-Morrison updates."""

    def __init__(self, n_arms: int, d_ctx: int, d_arm: int, config: PolicyConfig | None = None):
        super().__init__(n_arms, d_ctx, d_arm, config)
        self.d = self.d_ctx + self.d_arm + 2
        self._a_inv = np.repeat((np.eye(self.d) / self.config.ridge)[None], self.n_arms, axis=0)
        self._w = np.zeros((self.n_arms, self.d, self.n_levels), dtype=np.float64)
        self._n_updates = 0

    @property
    def n_updates(self) -> int:
        return self._n_updates

    @staticmethod
    def _extra(budget: int) -> np.ndarray:
        return np.array([1.0, math.log(budget) / _BUDGET_SCALE])

    def _predict(self, x, arm_x, budget) -> tuple[np.ndarray, np.ndarray]:
        # Fresh buffers per call: the kernels release the GIL, so concurrent decide calls must not
        # share scratch space.
        mean = np.empty((self.n_arms, self.n_levels), dtype=np.float64)
        width = np.empty(self.n_arms, dtype=np.float64)
        _k.predict_levels(x, arm_x, self._extra(budget), self._w, self._a_inv, mean, width)
        return mean, width

    def expected_rewards(self, x, arm_x, budget: int) -> np.ndarray:
        """Predicted union hit probability of every action, float64 (n_actions,) (the point estimate;
        usable as the reward model of ``retrieval.ope.doubly_robust``)."""
        x, arm_x, budget = self._inputs(x, arm_x, budget)
        mean, _ = self._predict(x, arm_x, budget)
        out = np.empty(self.n_actions)
        _k.union_scores(mean, self.action_levels, out)
        return out

    def _greedy(self, mean: np.ndarray) -> int:
        scores = np.empty(self.n_actions)
        _k.union_scores(mean, self.action_levels, scores)
        return int(_k.argmax_first(scores))

    def update(self, x, arm_x, decision: Decision, arm_ranks) -> None:
        """Full-information update: every level of every arm is trained on this round.

        Parameters
        ----------
        x : float (d_ctx,); arm_x : float (n_arms, d_arm) -- the inputs given to ``decide``.
        decision : Decision returned by ``decide`` (its budget sets the level counts).
        arm_ranks : int (n_arms,)
            0-based rank of the clicked item in each arm's full list, -1 if absent.

        Raises
        ------
        ValueError
            Bad shape/dtype/value of ``x``, ``arm_x``, ``decision`` or ``arm_ranks``.
        """
        budget = self._decision_budget(decision)
        x, arm_x, budget = self._inputs(x, arm_x, budget)
        ranks = _check_ranks(arm_ranks, self.n_arms)
        _k.rls_update(x, arm_x, self._extra(budget), ranks, _level_counts_cached(self.n_arms, budget),
                      self._a_inv, self._w)
        self._n_updates += 1

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Online state (copies): ``a_inv`` float64 (n_arms, d, d), ``w`` float64 (n_arms, d, n_levels),
        ``n_updates`` int64 (1,). float64 because repeated rank-1 updates of an inverse drift in float32."""
        return {"a_inv": self._a_inv.copy(), "w": self._w.copy(),
                "n_updates": np.array([self._n_updates], dtype=np.int64)}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Replace the online state with ``state_arrays()`` output (copied; inputs are never written)."""
        expect = {"a_inv": (self.n_arms, self.d, self.d), "w": (self.n_arms, self.d, self.n_levels),
                  "n_updates": (1,)}
        for name, shape in expect.items():
            if name not in arrays:
                raise ValueError(f"{name}: missing from state arrays")
            if tuple(np.shape(arrays[name])) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(np.shape(arrays[name]))}")
        a_inv = np.array(arrays["a_inv"], dtype=np.float64, copy=True)
        w = np.array(arrays["w"], dtype=np.float64, copy=True)
        if not (np.all(np.isfinite(a_inv)) and np.all(np.isfinite(w))):
            raise ValueError("a_inv: state contains NaN or infinity")
        self._a_inv, self._w = a_inv, w
        self._n_updates = int(np.asarray(arrays["n_updates"])[0])

    def warmup(self) -> None:
        """Compile/run every kernel once on this policy's arrays (state is not changed)."""
        x = np.zeros(self.d_ctx, dtype=np.float32)
        arm_x = np.zeros((self.n_arms, self.d_arm), dtype=np.float32)
        mean, width = self._predict(x, arm_x, 20)
        self._greedy(mean)
        a_inv, w = self._a_inv.copy(), self._w.copy()
        _k.rls_update(x, arm_x, self._extra(20), np.full(self.n_arms, -1, dtype=np.int64),
                      _level_counts_cached(self.n_arms, 20), a_inv, w)
        counts = np.empty(self.n_actions, dtype=np.int64)
        _k.thompson_counts(mean, width, np.zeros((1, self.n_arms)), 0.0, self.action_levels, counts)


class _EpsilonMixed(_LinearPolicy):
    """Greedy on some score, mixed with epsilon-uniform exploration; exact propensities."""

    def _target(self, mean: np.ndarray, width: np.ndarray) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def action_probs(self, x, arm_x, budget: int, rng=None) -> np.ndarray:
        """Exact action probabilities, float64 (n_actions,): ``eps/K + (1-eps) [k == target]``."""
        x, arm_x, budget = self._inputs(x, arm_x, budget)
        mean, width = self._predict(x, arm_x, budget)
        eps = self.config.epsilon
        out = np.full(self.n_actions, eps / self.n_actions)
        out[self._target(mean, width)] += 1.0 - eps
        return out

    def decide(self, x, arm_x, budget: int, rng) -> Decision:
        """Choose an allocation.

        Parameters
        ----------
        x : float (d_ctx,); arm_x : float (n_arms, d_arm); budget : int >= 1
        rng : numpy.random.Generator (one uniform draw, plus one integer when exploring)

        Returns
        -------
        Decision with propensity ``eps/K + (1-eps) [action == target]`` (exact).

        Raises
        ------
        ValueError
            Bad ``x``, ``arm_x``, ``budget`` or ``rng``.
        """
        x, arm_x, budget = self._inputs(x, arm_x, budget)
        rng = _check_rng(rng)
        mean, width = self._predict(x, arm_x, budget)
        target = self._target(mean, width)
        greedy = self._greedy(mean) if self._uses_optimism else target
        eps = self.config.epsilon
        action = int(rng.integers(self.n_actions)) if rng.random() < eps else target
        propensity = eps / self.n_actions + (1.0 - eps) * (action == target)
        return self._finish(action, budget, propensity, greedy)

    _uses_optimism = False


class EpsilonGreedyLinear(_EpsilonMixed):
    """Epsilon-greedy on the noisy-or of per-arm ridge hit-probability predictions (see module doc)."""

    kind = "epsilon_greedy"

    def _target(self, mean: np.ndarray, width: np.ndarray) -> int:
        return self._greedy(mean)


class LinUCBPolicy(_EpsilonMixed):
    """LinUCB (Li et al., WWW 2010) per arm and level, noisy-or over optimistic hit probabilities
    ``clip(p + alpha * sqrt(phi^T A^-1 phi))``, mixed with epsilon-uniform so the propensity is exact
    and > 0. ``explored`` is True when the action differs from the greedy (alpha = 0) action."""

    kind = "linucb"
    _uses_optimism = True

    def _target(self, mean: np.ndarray, width: np.ndarray) -> int:
        return self._greedy(mean + self.config.alpha * width[:, None])


class LinearThompsonPolicy(_LinearPolicy):
    """Linear Thompson sampling over per-arm hit curves (Agrawal & Goyal, ICML 2013), see module doc.

    Per decision: ``n_samples`` draws ``p_a(l) = mean_a(l) + v * sqrt(phi_a^T A_a^-1 phi_a) * z_a``,
    ``z_a ~ N(0, 1)`` (the exact marginal of the weight posterior ``N(w_a, v^2 A_a^-1)`` at this
    ``phi_a``); each draw's greedy action; then with probability ``epsilon`` a uniform action, else the
    winner of one draw picked uniformly. Propensity ``eps/K + (1-eps) count_k / n_samples`` is exact
    given the draws (see module doc for why that is enough for unbiased IPS).
    """

    kind = "thompson"

    def _draw(self, mean, width, rng) -> tuple[np.ndarray, np.ndarray]:
        noise = rng.standard_normal((self.config.n_samples, self.n_arms))
        counts = np.empty(self.n_actions, dtype=np.int64)
        winners = _k.thompson_counts(mean, width, noise, self.config.posterior_scale, self.action_levels, counts)
        return winners, counts

    def action_probs(self, x, arm_x, budget: int, rng=None) -> np.ndarray:
        """float64 (n_actions,): ``eps/K + (1-eps) count_k / n_samples`` for fresh draws from ``rng``
        (consumes ``rng`` exactly as ``decide`` does before it picks, so with equal generator states
        ``decide(...).propensity == action_probs(...)[decide(...).action]``)."""
        x, arm_x, budget = self._inputs(x, arm_x, budget)
        rng = _check_rng(rng)
        mean, width = self._predict(x, arm_x, budget)
        _, counts = self._draw(mean, width, rng)
        eps = self.config.epsilon
        return eps / self.n_actions + (1.0 - eps) * counts / self.config.n_samples

    def decide(self, x, arm_x, budget: int, rng) -> Decision:
        """Choose an allocation (see class doc). Raises ValueError on bad ``x``, ``arm_x``,
        ``budget`` or ``rng``."""
        x, arm_x, budget = self._inputs(x, arm_x, budget)
        rng = _check_rng(rng)
        mean, width = self._predict(x, arm_x, budget)
        winners, counts = self._draw(mean, width, rng)
        greedy = self._greedy(mean)
        eps = self.config.epsilon
        if rng.random() < eps:
            action = int(rng.integers(self.n_actions))
        else:
            action = int(winners[rng.integers(self.config.n_samples)])
        propensity = eps / self.n_actions + (1.0 - eps) * counts[action] / self.config.n_samples
        return self._finish(action, budget, propensity, greedy)


class JointRidgePolicy(_PolicyBase):
    """One ridge regression per menu action on the joint features ``[x, arm_x.ravel(), 1]``, sharing one
    inverse matrix (Sherman-Morrison), greedy with epsilon-uniform exploration (exact propensities).

    Feedback reveals the reward of every allocation (the clicked item's rank in every arm's list), so
    all ``n_actions`` outputs are updated on every round: this is full-information learning of the
    union hit rate of each allocation. Unlike the per-arm models it needs no independence
    assumption between arms, which matters when arms return the same items (memory index and BM25
    over click-expanded texts). Measured on the AOL dev replay (budget 20, `qac evaluate search`): 0.509 union recall vs
    0.490 for the per-arm noisy-or model and 0.501 for the best single arm.

    With ``action_hits`` (``RetrieveAndRank`` passes them) each output learns the hit rate of the union
    the pipeline actually serves for that action, where budget freed by duplicate candidates goes to
    the next candidates (``retrieval.pipeline.fill_depths``): 0.512 on the same replay (offline
    simulator ``bench.bandit_sim`` over the recorded lists; ``qac evaluate search`` in the README).
    Measured and not adopted (same simulator, budget 20): agreement and score-shape arm features
    (fraction of other arms holding an arm's top item, overlap of its top 5, log top score, score
    decay to rank 5) 0.5091 vs 0.5088 without; a per-item linear click model scoring an allocation
    by the summed click probability of its union items (exact under overlap) ~0.505; epsilon 0
    0.5132 vs 0.5117 at 0.02 (the price of exact propensities > 0 for off-policy evaluation). In
    hindsight (ridge fitted on the first half of the test week, scored on the second half) 61 richer
    context/arm/agreement features reach 0.512, with memory-observed regime interactions 0.513 --
    far below the per-query oracle 0.583: these features do not predict which arm holds the click.
    """

    kind = "joint"

    def __init__(self, n_arms: int, d_ctx: int, d_arm: int, config: PolicyConfig | None = None):
        super().__init__(n_arms, d_ctx, d_arm, config)
        self.d = self.d_ctx + self.n_arms * self.d_arm + 1
        self._a_inv = np.eye(self.d) / self.config.ridge
        self._b = np.zeros((self.d, self.n_actions))
        self._w = np.zeros((self.d, self.n_actions))
        self._n_updates = 0

    def _phi(self, x, arm_x) -> np.ndarray:
        return np.concatenate([np.asarray(x, np.float64), np.asarray(arm_x, np.float64).ravel(), [1.0]])

    def expected_rewards(self, x, arm_x, budget: int) -> np.ndarray:
        """Predicted union hit rate of every menu action, float64 (n_actions,)."""
        x, arm_x, budget = self._inputs(x, arm_x, budget)
        return self._phi(x, arm_x) @ self._w

    def action_probs(self, x, arm_x, budget: int, rng=None) -> np.ndarray:
        """Exact action probabilities ``eps/K + (1-eps) [k == argmax]``, float64 (n_actions,)."""
        eps = self.config.epsilon
        out = np.full(self.n_actions, eps / self.n_actions)
        out[int(np.argmax(self.expected_rewards(x, arm_x, budget)))] += 1.0 - eps
        return out

    def decide(self, x, arm_x, budget: int, rng) -> Decision:
        rng = _check_rng(rng)
        scores = self.expected_rewards(x, arm_x, budget)
        greedy = int(np.argmax(scores))
        eps = self.config.epsilon
        action = int(rng.integers(self.n_actions)) if eps > 0 and rng.random() < eps else greedy
        propensity = eps / self.n_actions + (1.0 - eps) * (action == greedy)
        return self._finish(action, _check_int("budget", budget, minimum=1), propensity, greedy)

    uses_action_hits = True

    def update(self, x, arm_x, decision: Decision, arm_ranks, action_hits=None) -> None:
        """Full-information update of every action's output.

        Parameters
        ----------
        x, arm_x, decision : as given to / returned by ``decide``.
        arm_ranks : int (n_arms,)
            0-based rank of the clicked item in each arm's full list, -1 if absent.
        action_hits : float or bool (n_actions,), optional
            Whether each action's candidate union holds the clicked item, when the caller builds unions
            other than the plain top-``n_a`` prefixes (``retrieval.pipeline.fill_depths``); by default
            ``any(0 <= arm_ranks[a] < menu[k, a])``.

        Raises
        ------
        ValueError
            Bad ``x``, ``arm_x``, ``decision``, ``arm_ranks`` or ``action_hits`` (named).
        """
        budget = self._decision_budget(decision)
        x, arm_x, budget = self._inputs(x, arm_x, budget)
        ranks = _check_ranks(arm_ranks, self.n_arms).astype(np.int64)
        if action_hits is None:
            menu = _menu_cached(self.n_arms, budget)
            hits = ((ranks[None, :] >= 0) & (ranks[None, :] < menu)).any(axis=1).astype(np.float64)
        else:
            hits = np.asarray(action_hits)
            if hits.shape != (self.n_actions,) or hits.dtype.kind not in "biuf":
                raise ValueError(f"action_hits: expected a numeric array of shape ({self.n_actions},), got "
                                 f"{hits.dtype}{hits.shape}")
            hits = hits.astype(np.float64)
            if not np.all((hits == 0.0) | (hits == 1.0)):
                raise ValueError("action_hits: values must be 0 or 1")
        phi = self._phi(x, arm_x)
        av = self._a_inv @ phi
        a_inv = self._a_inv - np.outer(av, av) / (1.0 + phi @ av)
        b = self._b + np.outer(phi, hits)
        # swap whole arrays so a concurrent decide() sees either the old or the new model
        self._a_inv, self._b, self._w = a_inv, b, a_inv @ b
        self._n_updates += 1

    @property
    def n_updates(self) -> int:
        return self._n_updates

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"a_inv": self._a_inv.copy(), "b": self._b.copy(), "n_updates": np.array([self._n_updates], np.int64)}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        expect = {"a_inv": (self.d, self.d), "b": (self.d, self.n_actions), "n_updates": (1,)}
        for name, shape in expect.items():
            if name not in arrays:
                raise ValueError(f"{name}: missing from state arrays")
            if tuple(np.shape(arrays[name])) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(np.shape(arrays[name]))}")
        a_inv = np.array(arrays["a_inv"], dtype=np.float64, copy=True)
        b = np.array(arrays["b"], dtype=np.float64, copy=True)
        if not (np.all(np.isfinite(a_inv)) and np.all(np.isfinite(b))):
            raise ValueError("a_inv: state contains NaN or infinity")
        self._a_inv, self._b, self._w = a_inv, b, a_inv @ b
        self._n_updates = int(np.asarray(arrays["n_updates"])[0])

    def warmup(self) -> None:
        pass


_KINDS = {"fixed": FixedPolicy, "joint": JointRidgePolicy, "epsilon_greedy": EpsilonGreedyLinear, "linucb": LinUCBPolicy,
          "thompson": LinearThompsonPolicy}


def build_policy(config: PolicyConfig, n_arms: int, d_ctx: int, d_arm: int,
                 log: Iterable[tuple] | None = None):
    """A policy of ``config.kind``, optionally warm-started by replaying a feedback log.

    Parameters
    ----------
    config : PolicyConfig
    n_arms, d_ctx, d_arm : int
        Number of arms, context features, per-arm features.
    log : iterable of (x, arm_x, budget, arm_ranks), optional
        Past rounds; because the reward of every allocation is known from ``arm_ranks``, replaying
        them trains the model exactly as if they had been seen online (the logged action is irrelevant).

    Raises
    ------
    ValueError
        Bad config, shapes or log rows (the field is named).
    """
    if not isinstance(config, PolicyConfig):
        raise ValueError(f"config: expected PolicyConfig, got {type(config).__name__}")
    policy = _KINDS[config.kind](n_arms, d_ctx, d_arm, config)
    if log is not None:
        for x, arm_x, budget, ranks in log:
            budget = _check_int("budget", budget, minimum=1)
            alloc = _menu_cached(policy.n_arms, budget)[0]
            policy.update(x, arm_x, Decision(0, alloc.copy(), 1.0, False, budget), ranks)
    return policy


Policy = FixedPolicy | EpsilonGreedyLinear | LinUCBPolicy | LinearThompsonPolicy | JointRidgePolicy

__all__ = ["POLICY_KINDS", "DEFAULT_POLICY_KIND", "PolicyConfig", "Decision", "menu_fractions",
           "allocation_menu", "menu_levels", "FixedPolicy", "EpsilonGreedyLinear", "LinUCBPolicy",
           "LinearThompsonPolicy", "JointRidgePolicy", "build_policy", "Policy"]
