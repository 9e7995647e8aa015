"""Replay bandit policies offline over a recorded AOL replay (``bench.bandit_cache``), in seconds.

Usage::

    /work/venv/bin/python -m bench.bandit_sim --cache runs/dev/bc_test.npz [--budget 20] [--kinds joint,...] [--ridge 1000]

For each query event in time order: the arms' lists truncated to the budget (what the arms return at
that budget), the pipeline's features, ``policy.decide``, the reward of every click (the clicked item
is in the union of the chosen allocation, filled to the budget by ``retrieval.pipeline.fill_depths`` unless
``--no-fill``), then one ``policy.update`` per clicked catalogue item and the
arm hit-rate counters -- the same sequence as ``qac evaluate search`` (its budget-20 replay). Recall
is over all clicks (clicks on sites outside the catalogue count as misses), as in the evaluation.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from qac.artifacts import arrays_to_strings
from retrieval.arms.base import Context


def load_cache(path) -> dict:
    z = np.load(path)
    out = {k: z[k] for k in z.files}
    out["queries"] = arrays_to_strings(out["query_flat"], out["query_ptr"])
    return out


def click_ranks(cache: dict, depth: int) -> np.ndarray:
    """Rank of every click's item in every arm's list (within ``depth``), int64 (n_clicks, n_arms), -1 absent;
    clicks outside the catalogue are all -1."""
    ids = cache["ids"][:, :, :depth]
    ptr = cache["click_ptr"]
    items = cache["click_items"]
    ev = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    out = np.full((len(items), ids.shape[1]), -1, dtype=np.int64)
    for c in range(len(items)):
        if items[c] < 0:
            continue
        m = ids[ev[c]] == items[c]
        a, r = np.nonzero(m)
        out[c, a] = r
    return out


def run(cache: dict, make_policy, budget: int = 20, seed: int = 0, features=None, progress=None,
        fill: bool = True) -> dict:
    """Online replay of one policy over the cache. ``features(cache, i, arm_ids, arm_scores, hit_rate)
    -> (x, arm_x)``; default: the pipeline's."""
    from retrieval.pipeline import arm_features, context_features, fill_depths, union_of
    from retrieval.policy import allocation_menu

    menu = allocation_menu(cache["ids"].shape[1], budget)

    rng = np.random.default_rng(seed)
    n = len(cache["timestamp"])
    ptr, items = cache["click_ptr"], cache["click_items"]
    n_arms = cache["ids"].shape[1]
    hits = np.zeros(n_arms)
    n_fb = 0
    policy = make_policy()
    rewards = np.zeros(len(items))
    actions = np.zeros(n, dtype=np.int64)
    t0 = time.perf_counter()
    for i in range(n):
        arm_ids, arm_scores = [], []
        for a in range(n_arms):
            m = min(int(cache["n_ret"][i, a]), budget)
            arm_ids.append(cache["ids"][i, a, :m])
            arm_scores.append(cache["scores"][i, a, :m])
        hr = ((hits + 1.0) / (n_fb + 2.0)).astype(np.float32)
        if features is None:
            ctx = Context(user_id="u" if cache["has_user"][i] else "", timestamp=int(cache["timestamp"][i]),
                          session_position=int(cache["session_position"][i]))
            x = context_features(cache["queries"][i], ctx, int(cache["query_freq"][i]), bool(cache["in_memory"][i]))
            ax = arm_features(arm_ids, arm_scores, budget, hr)
        else:
            x, ax = features(cache, i, arm_ids, arm_scores, hr)
        d = policy.decide(x, ax, budget, rng)
        actions[i] = d.action
        depths = fill_depths(arm_ids, d.allocation, budget) if fill else d.allocation
        union = set(union_of(arm_ids, depths).tolist())
        all_depths = fill_depths(arm_ids, menu, budget) if fill and getattr(policy, "uses_action_hits", False) \
            else None
        for c in range(ptr[i], ptr[i + 1]):
            it = int(items[c])
            if it < 0:
                continue
            rewards[c] = it in union
            ranks = np.full(n_arms, -1, dtype=np.int32)
            for a in range(n_arms):
                h = np.flatnonzero(arm_ids[a] == it)
                if h.size:
                    ranks[a] = h[0]
            if all_depths is not None:
                hits_k = ((ranks[None, :] >= 0) & (ranks[None, :] < all_depths)).any(axis=1)
                policy.update(x, ax, d, ranks, action_hits=hits_k)
            else:
                policy.update(x, ax, d, ranks)
            hits += ranks >= 0
            n_fb += 1
        if progress and (i + 1) % 5000 == 0:
            progress(f"  {i + 1}/{n} recall so far {rewards[:ptr[i + 1]].mean():.4f}")
    days = (cache["timestamp"] // 86400)
    ev = np.repeat(np.arange(n), np.diff(ptr))
    by_day = {int(d): float(rewards[days[ev] == d].mean()) for d in np.unique(days)}
    return {"recall": float(rewards.mean()), "by_day": by_day, "actions": np.bincount(actions),
            "seconds": time.perf_counter() - t0, "rewards": rewards}


def fixed_table(cache: dict, budget: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Recall of every menu allocation (fixed), and the per-click hit matrix (n_clicks, n_actions)."""
    from retrieval.policy import allocation_menu

    ranks = click_ranks(cache, budget)
    menu = allocation_menu(ranks.shape[1], budget)
    hit = ((ranks[:, None, :] >= 0) & (ranks[:, None, :] < menu[None])).any(axis=2)
    return hit.mean(axis=0), hit


def main(argv=None) -> None:
    from retrieval.policy import PolicyConfig, build_policy
    from retrieval.pipeline import ARM_FEATURES, CONTEXT_FEATURES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--kinds", default="joint")
    ap.add_argument("--no-fill", action="store_true", help="plain prefix unions (before fill_depths)")
    ap.add_argument("--ridge", type=float, default=None,
                    help="the policy's ridge (default: PolicyConfig's; the AOL build uses 1000)")
    args = ap.parse_args(argv)
    cache = load_cache(args.cache)
    rec, hit = fixed_table(cache, args.budget)
    ptr = cache["click_ptr"]
    ev = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    print(f"{len(rec)} menu actions; best fixed {rec.max():.4f} (action {rec.argmax()}); "
          f"per-click oracle {hit.any(axis=1).mean():.4f}")
    n_arms = cache["ids"].shape[1]
    for kind in args.kinds.split(","):
        cfg = PolicyConfig(kind=kind) if args.ridge is None else PolicyConfig(kind=kind, ridge=args.ridge)
        res = run(cache, lambda: build_policy(cfg, n_arms, len(CONTEXT_FEATURES),
                                              len(ARM_FEATURES)), args.budget, fill=not args.no_fill)
        print(f"{kind}: recall@{args.budget} {res['recall']:.4f} ({res['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
