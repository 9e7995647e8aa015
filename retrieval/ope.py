"""Off-policy evaluation of bandit policies from a decision log (IPS, SNIPS, doubly robust, DM).

A log has one row i per decision: context ``x_i``, logged action ``a_i`` drawn by the logging policy
``pi_0`` with propensity ``p_i = pi_0(a_i | x_i)`` (``Decision.propensity``), and reward ``r_i``. The
value of a target policy ``pi`` is ``V(pi) = E_x[ sum_a pi(a|x) E[r | x, a] ]``. Notation below:
``w_i = pi(a_i | x_i) / p_i`` (importance weight), ``n`` rows.

Every estimator needs ``p_i > 0`` wherever ``pi(a_i | x_i) > 0`` (the logging policy must be able to
take every action the target takes); the epsilon mixing of ``retrieval.policy`` guarantees
``p_i >= epsilon / n_actions``. Propensities that are exact only conditionally on independent
logging randomness (``LinearThompsonPolicy``) keep IPS and DR unbiased.

Note for this service: when the log also holds ``arm_ranks`` the reward of *every* allocation is
known, so replaying a target policy over the log gives its value with no importance weighting at
all; these estimators are for logs (or rewards) without that full information. Definitions follow
the Open Bandit Pipeline documentation (Saito et al., 2021) for ``InverseProbabilityWeighting``,
``SelfNormalizedInverseProbabilityWeighting`` and ``DoublyRobust``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ips", "snips", "doubly_robust", "direct_method"]


def _vector(name: str, value, n: int | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: must not be empty")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: expected length {n}, got {arr.shape[0]}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinity")
    return arr


def _propensities(value, n: int) -> np.ndarray:
    p = _vector("logged_propensities", value, n)
    if np.any(p <= 0.0) or np.any(p > 1.0):
        raise ValueError("logged_propensities: every propensity must be in (0, 1]")
    return p


def _probs(name: str, value, n: int) -> np.ndarray:
    t = _vector(name, value, n)
    if np.any(t < 0.0) or np.any(t > 1.0):
        raise ValueError(f"{name}: probabilities must be in [0, 1]")
    return t


def _weighted(rewards, target_probs, logged_propensities) -> tuple[np.ndarray, np.ndarray]:
    r = _vector("rewards", rewards)
    t = _probs("target_probs", target_probs, r.shape[0])
    p = _propensities(logged_propensities, r.shape[0])
    return r, t / p


def ips(rewards, target_probs, logged_propensities) -> float:
    """Inverse propensity scoring estimate of the target policy's value.

    ``V_IPS = (1/n) sum_i w_i r_i``, ``w_i = pi(a_i|x_i) / p_i`` (Horvitz & Thompson 1952; as used for
    bandits by Dudik, Langford & Li, ICML 2011, eq. 2). Unbiased when the propensities are correct;
    variance grows with ``max w_i``.

    Parameters
    ----------
    rewards : array (n,), float
        Observed reward ``r_i`` of the logged action.
    target_probs : array (n,), float in [0, 1]
        ``pi(a_i | x_i)``: the target policy's probability of the *logged* action.
    logged_propensities : array (n,), float in (0, 1]
        ``p_i = pi_0(a_i | x_i)`` logged with the decision.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        Empty, non-1-D, mismatched-length or non-finite input; probabilities outside [0, 1];
        propensities outside (0, 1] (the message names the field).
    """
    r, w = _weighted(rewards, target_probs, logged_propensities)
    return float(np.mean(w * r))


def snips(rewards, target_probs, logged_propensities) -> float:
    """Self-normalised IPS: ``V_SNIPS = sum_i w_i r_i / sum_i w_i`` (Swaminathan & Joachims,
    NeurIPS 2015, "The self-normalized estimator for counterfactual learning").

    Biased (consistent) but bounded by the reward range and usually far lower variance than IPS.
    Parameters, returns and errors as ``ips``; additionally ``sum_i w_i`` must be > 0 (the target
    policy must give positive probability to at least one logged action) -- raised as a
    ``ValueError`` naming ``target_probs``.
    """
    r, w = _weighted(rewards, target_probs, logged_propensities)
    total = w.sum()
    if total <= 0.0:
        raise ValueError("target_probs: the target policy gives probability 0 to every logged action")
    return float(np.sum(w * r) / total)


def _all_actions(name: str, value, n: int, n_actions: int | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[0] != n or (n_actions is not None and arr.shape[1] != n_actions):
        want = f"({n}, {'n_actions' if n_actions is None else n_actions})"
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinity")
    return arr


def _target_matrix(target_probs_all_actions, n: int) -> np.ndarray:
    pi = _all_actions("target_probs_all_actions", target_probs_all_actions, n)
    if pi.shape[1] == 0:
        raise ValueError("target_probs_all_actions: needs at least one action")
    if np.any(pi < 0.0) or np.any(pi > 1.0):
        raise ValueError("target_probs_all_actions: probabilities must be in [0, 1]")
    if not np.allclose(pi.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("target_probs_all_actions: every row must sum to 1")
    return pi


def _actions(value, n: int, n_actions: int) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"logged_actions: expected shape ({n},), got {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"logged_actions: expected an integer array, got dtype {a.dtype}")
    if np.any(a < 0) or np.any(a >= n_actions):
        raise ValueError(f"logged_actions: every action must be in [0, {n_actions})")
    return a.astype(np.int64, copy=False)


def direct_method(target_probs_all_actions, reward_model_predictions) -> float:
    """Direct method: ``V_DM = (1/n) sum_i sum_a pi(a|x_i) q_hat(x_i, a)`` (biased by the reward model).

    Parameters
    ----------
    target_probs_all_actions : array (n, n_actions), rows sum to 1
    reward_model_predictions : array (n, n_actions), ``q_hat(x_i, a)``

    Raises
    ------
    ValueError
        Shape, range or finiteness errors (the field is named).
    """
    q = np.asarray(reward_model_predictions)
    n = q.shape[0] if q.ndim == 2 else -1
    if n < 1:
        raise ValueError(f"reward_model_predictions: expected shape (n, n_actions) with n >= 1, got {q.shape}")
    pi = _target_matrix(target_probs_all_actions, n)
    q = _all_actions("reward_model_predictions", q, n, pi.shape[1])
    return float(np.mean(np.sum(pi * q, axis=1)))


def doubly_robust(rewards, target_probs_all_actions, logged_actions, logged_propensities,
                  reward_model_predictions) -> float:
    """Doubly robust estimate (Dudik, Langford & Li, ICML 2011, eq. 4):

    ``V_DR = (1/n) sum_i [ sum_a pi(a|x_i) q_hat(x_i, a) + w_i (r_i - q_hat(x_i, a_i)) ]``,
    ``w_i = pi(a_i|x_i) / p_i``. Unbiased if either the propensities or the reward model are correct;
    with a good reward model the importance-weighted term only corrects a small residual, so its
    variance is far below IPS's.

    Parameters
    ----------
    rewards : array (n,), float
    target_probs_all_actions : array (n, n_actions), float, rows sum to 1
        ``pi(a | x_i)`` for every action.
    logged_actions : array (n,), int in [0, n_actions)
    logged_propensities : array (n,), float in (0, 1]
    reward_model_predictions : array (n, n_actions), float
        ``q_hat(x_i, a)``, e.g. ``policy.expected_rewards(x_i, arm_x_i, budget)`` of a model fitted on
        other data (fitting it on the same rows biases DR towards DM).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        Empty, mis-shaped or non-finite input; probabilities outside [0, 1] or rows not summing to 1;
        actions out of range; propensities outside (0, 1] (the message names the field).
    """
    r = _vector("rewards", rewards)
    n = r.shape[0]
    pi = _target_matrix(target_probs_all_actions, n)
    a = _actions(logged_actions, n, pi.shape[1])
    p = _propensities(logged_propensities, n)
    q = _all_actions("reward_model_predictions", reward_model_predictions, n, pi.shape[1])
    rows = np.arange(n)
    w = pi[rows, a] / p
    return float(np.mean(np.sum(pi * q, axis=1) + w * (r - q[rows, a])))
