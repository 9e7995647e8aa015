"""Benchmark: bandit policies on the simulator (reward, regret) and decide/update latency.

Usage::

    /work/venv/bin/python -m bench.bench_policy [--rounds 20000] [--seeds 0,1,2,3,4] [--budget 20]
        [--scenarios base,wide] [--latency-rounds 20000] [--out results.json]

Simulator: ``tests/retrieval/policy_contract.BanditSimulator`` (5 arms, each best in a region of
context space, hit probability ``q_a(x) (1 - (1 - rho_a)^{n_a})``, independent arms, exact expected
reward of every menu action per round). Scenarios:

- ``base``: d_ctx = 6, d_arm = 2 (model input d = 10).
- ``wide``: d_ctx = 30 (the simulator uses the first 6; 24 pure-noise features), d_arm = 4
  (d = 36), the dimension the serving path will have; exploration matters more here.

For every (scenario, policy, seed) one online replay of ``--rounds`` rounds: decide, then update with
the round's arm ranks. Reported per policy (mean +- sd over seeds): mean expected reward per round
(pseudo-reward: the exact expected reward of the chosen action, so no Bernoulli noise), the same over
the last quarter of the rounds ("late"), realised reward, and regret per round against the best fixed
action in hindsight (negative = better than it) and against the per-context oracle. The baseline
``fixed(best)`` is ``FixedPolicy`` with the best fixed action of that episode (chosen in hindsight), run
through the same loop. Checked answers: every decision's allocation equals the menu row of its action
and sums to the budget; every propensity is in (0, 1].

Latency: ``decide`` and ``update`` wall time per call (``perf_counter_ns``) of a warmed-up policy on
fresh rounds after the replay, in microseconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import format_row, machine_info, percentiles_us
from retrieval.policy import DEFAULT_POLICY_KIND, PolicyConfig, allocation_menu, build_policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.retrieval.policy_contract import BanditSimulator, Episode, realized_reward  # noqa: E402

N_ARMS = 5
SCENARIOS = {"base": (6, 2), "wide": (30, 4)}
POLICIES = {
    "greedy(eps=0)": PolicyConfig(kind="epsilon_greedy", epsilon=0.0),
    "epsilon_greedy(eps=0.01)": PolicyConfig(kind="epsilon_greedy", epsilon=0.01),
    "epsilon_greedy(eps=0.02)": PolicyConfig(kind="epsilon_greedy", epsilon=0.02),
    "epsilon_greedy(eps=0.05)": PolicyConfig(kind="epsilon_greedy", epsilon=0.05),
    "linucb(alpha=0.1,eps=0.02)": PolicyConfig(kind="linucb", alpha=0.1, epsilon=0.02),
    "linucb(alpha=0.3,eps=0.02)": PolicyConfig(kind="linucb", alpha=0.3, epsilon=0.02),
    "linucb(alpha=1.0,eps=0.02)": PolicyConfig(kind="linucb", alpha=1.0, epsilon=0.02),
    "thompson(v=0.1,eps=0.02)": PolicyConfig(kind="thompson", posterior_scale=0.1, epsilon=0.02),
    "thompson(v=0.3,eps=0.02)": PolicyConfig(kind="thompson", posterior_scale=0.3, epsilon=0.02),
    "thompson(v=1.0,eps=0.02)": PolicyConfig(kind="thompson", posterior_scale=1.0, epsilon=0.02),
}


def make_episode(scenario: str, seed: int, n_rounds: int, budget: int) -> Episode:
    d_ctx, d_arm = SCENARIOS[scenario]
    sim = BanditSimulator(N_ARMS, 6, d_arm, seed=seed)
    rng = np.random.default_rng(1000 + seed)
    ep = sim.episode(n_rounds, budget, rng)
    if d_ctx > 6:
        noise = rng.standard_normal((n_rounds, d_ctx - 6)).astype(np.float32)
        ep.x = np.concatenate([ep.x, noise], axis=1)
    return ep


def replay(policy, ep: Episode, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = ep.x.shape[0]
    menu = allocation_menu(N_ARMS, ep.budget)
    actions = np.empty(n, dtype=np.int64)
    realized = np.empty(n)
    bad = 0
    for t in range(n):
        d = policy.decide(ep.x[t], ep.arm_x[t], ep.budget, rng)
        policy.update(ep.x[t], ep.arm_x[t], d, ep.arm_ranks[t])
        actions[t] = d.action
        realized[t] = realized_reward(d.allocation, ep.arm_ranks[t])
        if not (0.0 < d.propensity <= 1.0) or not np.array_equal(d.allocation, menu[d.action]) \
                or int(d.allocation.sum()) != ep.budget:
            bad += 1
    expected = ep.mu[np.arange(n), actions]
    return {"expected": expected, "realized": realized, "n_bad": bad}


def measure_latency(config: PolicyConfig, scenario: str, n_rounds: int, budget: int) -> dict:
    d_ctx, d_arm = SCENARIOS[scenario]
    policy = build_policy(config, N_ARMS, d_ctx, d_arm)
    policy.warmup()
    train = make_episode(scenario, 99, 2000, budget)
    replay(policy, train, 0)
    ep = make_episode(scenario, 98, n_rounds, budget)
    rng = np.random.default_rng(0)
    dec_ns, upd_ns = [], []
    for t in range(n_rounds):
        x, ax, r = ep.x[t], ep.arm_x[t], ep.arm_ranks[t]
        t0 = time.perf_counter_ns()
        d = policy.decide(x, ax, budget, rng)
        t1 = time.perf_counter_ns()
        policy.update(x, ax, d, r)
        t2 = time.perf_counter_ns()
        dec_ns.append(t1 - t0)
        upd_ns.append(t2 - t1)
    return {"decide_us": percentiles_us(dec_ns), "update_us": percentiles_us(upd_ns)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20000)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--scenarios", default="base,wide")
    ap.add_argument("--latency-rounds", type=int, default=20000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    scenarios = args.scenarios.split(",")
    info = machine_info()
    print(json.dumps(info))
    print(f"default policy kind: {DEFAULT_POLICY_KIND}; rounds {args.rounds}, seeds {seeds}, budget {args.budget}, "
          f"{N_ARMS} arms, {len(allocation_menu(N_ARMS, args.budget))} actions")
    results: dict = {"machine": info, "args": vars(args), "quality": {}, "latency": {}}
    for scenario in scenarios:
        d_ctx, d_arm = SCENARIOS[scenario]
        rows: dict[str, list] = {}
        q = len(range(args.rounds)) * 3 // 4
        refs = []
        for seed in seeds:
            ep = make_episode(scenario, seed, args.rounds, args.budget)
            best = int(ep.mu.mean(axis=0).argmax())
            oracle = ep.mu.max(axis=1)
            best_fixed = ep.mu[:, best]
            refs.append((best_fixed.mean(), oracle.mean(), oracle[q:].mean()))
            configs = {"fixed(best)": PolicyConfig(kind="fixed", fixed_action=best), **POLICIES}
            for name, cfg in configs.items():
                t0 = time.perf_counter()
                out = replay(build_policy(cfg, N_ARMS, d_ctx, d_arm), ep, seed)
                if out["n_bad"]:
                    raise SystemExit(f"{name}: {out['n_bad']} invalid decisions")
                rows.setdefault(name, []).append({
                    "reward": out["expected"].mean(), "late": out["expected"][q:].mean(),
                    "realized": out["realized"].mean(),
                    "regret_vs_fixed": best_fixed.mean() - out["expected"].mean(),
                    "regret_vs_oracle": oracle.mean() - out["expected"].mean(),
                    "seconds": time.perf_counter() - t0})
        refs_a = np.array(refs)
        print(f"\n== scenario {scenario}: d_ctx={d_ctx} d_arm={d_arm} (model d={d_ctx + d_arm + 2}); "
              f"best fixed {refs_a[:, 0].mean():.4f}, oracle {refs_a[:, 1].mean():.4f} "
              f"(late oracle {refs_a[:, 2].mean():.4f}) expected reward/round, mean over seeds")
        print(f"  {'policy':<28} {'reward':>15} {'late 25%':>15} {'realised':>8} "
              f"{'regret/fixed':>15} {'regret/oracle':>15} {'s/run':>6}")
        table = {}
        for name, rs in rows.items():
            agg = {k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))) for k in rs[0]}
            table[name] = agg
            print(f"  {name:<28} {agg['reward'][0]:.4f}+-{agg['reward'][1]:.4f} "
                  f"{agg['late'][0]:.4f}+-{agg['late'][1]:.4f} {agg['realized'][0]:8.4f} "
                  f"{agg['regret_vs_fixed'][0]:+.4f}+-{agg['regret_vs_fixed'][1]:.4f} "
                  f"{agg['regret_vs_oracle'][0]:+.4f}+-{agg['regret_vs_oracle'][1]:.4f} {agg['seconds'][0]:6.1f}")
        results["quality"][scenario] = {"reference": refs_a.mean(axis=0).tolist(), "policies": table}
    print("\n== latency (warmed up, after 2000 training rounds), microseconds per call")
    for scenario in scenarios:
        for name, cfg in [("fixed", PolicyConfig(kind="fixed")), ("epsilon_greedy", PolicyConfig(kind="epsilon_greedy")),
                          ("linucb", PolicyConfig(kind="linucb")), ("thompson", PolicyConfig(kind="thompson"))]:
            lat = measure_latency(cfg, scenario, args.latency_rounds, args.budget)
            results["latency"][f"{scenario}/{name}"] = lat
            d = SCENARIOS[scenario][0] + SCENARIOS[scenario][1] + 2
            print(format_row(f"{scenario}(d={d}) {name} decide", lat["decide_us"]))
            print(format_row(f"{scenario}(d={d}) {name} update", lat["update_us"]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
