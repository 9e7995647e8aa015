"""What-if replays of the Home Depot judged evaluation with other bandit policies.

Usage::

    python -m bench.judged_policy_replay --artifacts runs/dev/hd_art --judgments runs/inner_val.tsv.gz \
        [--ridge 1,10,100,1000,10000] [--epsilon 0.02] [--json OUT]

Each run is ``qac evaluate search --judgments`` (:func:`serving.evaluate_search.evaluate_search_judgments`:
same term order, same Feedback of the relevant products) with a fresh joint policy of the given ridge
instead of the artifact's. The first run also reports the union recall of every fixed menu
allocation and of the per-query best one. Choose policy settings on an inner split of the training
judgments, never on the test split.
"""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from bench.common import machine_info, write_json
    from retrieval.policy import PolicyConfig
    from serving.evaluate_search import evaluate_search_judgments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--judgments", required=True)
    ap.add_argument("--ridge", default="1,10,100,1000,10000")
    ap.add_argument("--epsilon", type=float, default=0.02)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out = {"machine": machine_info(), "runs": {}}
    for k, ridge in enumerate(float(v) for v in args.ridge.split(",")):
        cfg = PolicyConfig(kind="joint", ridge=ridge, epsilon=args.epsilon)
        res = evaluate_search_judgments(args.artifacts, args.judgments, policy_config=cfg, menu_recalls=k == 0)
        if k == 0:
            best = sorted(res["menu"], key=lambda m: -m["recall@100"])[:5]
            out["best_fixed"] = best
            out["oracle_allocation"] = res["oracle_allocation"]
            for m in best:
                print(f"fixed {m['allocation']}: {m['recall@100']:.4f}")
            print(f"per-query best allocation (oracle): {res['oracle_allocation']:.4f}")
        out["runs"][str(ridge)] = {"recall@100": res["recall@100"],
                                   "fusion_recall@100": res["arms"].get("fusion", {}).get("recall@100")}
        print(f"joint ridge {ridge:g} epsilon {args.epsilon:g}: union recall@100 {res['recall@100']:.4f}", flush=True)
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
