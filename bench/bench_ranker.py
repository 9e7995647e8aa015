"""Ranker benchmark: Home Depot nDCG@10 (BM25 order vs ranker vs linear), AOL MRR@10, and scoring latency.

    /work/venv/bin/python -m bench.bench_ranker [--data ../shared/data] [--aol] [--out FILE.json]

Quality: ``build_homedepot_ranker`` (80/20 split by query with ``split_by_query(seed=0)``, the 80%
split 75/25 again for the hyperparameter grid; nDCG@10 with gain = grade - 1 over each test query's
judged products). Latency: for real held-out queries, the BM25 arm's top 100 are the candidates;
timed are ``candidate_features`` (incl. query normalisation and lookups), ``Ranker.score``, and
both together, single thread, after warm-up; the exported scores are checked against the ranker
used for the quality numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    # HistGradientBoosting's OpenMP pool oversubscribes a busy 2-core box; the request path is
    # single-threaded anyway.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np

    from bench.common import format_row, machine_info, percentiles_us
    from retrieval.arms.bm25 import BM25Arm
    from retrieval.catalog import load_homedepot_catalog, load_judgments, split_by_query
    from retrieval.ranker import build_homedepot_ranker
    from retrieval.ranker_features import candidate_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--with-bm25-arm", action="store_true", help="add the BM25 arm's score/indicator block")
    ap.add_argument("--no-item-stats", action="store_true")
    ap.add_argument("--aol", action="store_true", help="also train/evaluate the AOL click ranker")
    ap.add_argument("--n-latency", type=int, default=2000)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    data = Path(args.data)
    result: dict = {"machine": machine_info(), "command": " ".join(sys.argv)}

    t = time.perf_counter()
    catalog = load_homedepot_catalog(data / "homedepot" / "products.tsv.gz")
    judgments = load_judgments(data / "homedepot" / "judgments.train.tsv.gz")
    split = split_by_query(judgments, test_fraction=0.2, seed=0)
    bm25 = BM25Arm.build(catalog.texts)
    arms = (bm25,) if args.with_bm25_arm else ()
    ranker, text_index, rep = build_homedepot_ranker(catalog, judgments, arms=arms, split=split,
                                                     use_item_stats=not args.no_item_stats)
    stats = rep.pop("item_stats")
    lin = rep.pop("linear_ranker")
    result["homedepot"] = rep
    print(f"Home Depot ({time.perf_counter() - t:.0f} s): best config {rep['dev']['best']['config']}")
    for g in rep["dev"]["grid"]:
        c = g["config"]
        print(f"  dev  {c['objective']:<10} trees {c['n_trees']:>3} leaves {c['max_leaf_nodes']:>2} "
              f"lr {c['learning_rate']:<5} nDCG@10 {g['ndcg@10']:.4f}  fit {g['fit_s']:.1f} s")
    print(f"  dev  nDCG@10: BM25 {rep['dev']['bm25']:.4f}  linear {rep['dev']['linear']:.4f}  "
          f"ranker {rep['dev']['best']['ndcg@10']:.4f}")
    te = rep["test"]
    print(f"  test nDCG@10 ({te['n_queries_counted']} queries): BM25 {te['bm25']:.4f}  linear {te['linear']:.4f}  "
          f"ranker {te['ranker']:.4f}")

    # Latency: 100 BM25 candidates per held-out query.
    test_queries = sorted({j.query for j in split[1]})
    rng = np.random.default_rng(0)
    qs = [test_queries[i] for i in rng.integers(0, len(test_queries), args.n_latency)]
    cands = []
    for q in qs:
        ids, sc = bm25.retrieve(q, n=100)
        arm = sc[:, None] if arms else np.zeros((ids.size, 0), np.float32)
        cands.append((q, ids, arm))
    ranker.warmup()
    candidate_features(qs[0], cands[0][1], cands[0][2], text_index, stats)
    t_feat, t_score, t_total, sizes = [], [], [], []
    pc = time.perf_counter_ns
    for q, ids, arm in cands:
        t0 = pc()
        X = candidate_features(q, ids, arm, text_index, stats)
        t1 = pc()
        ranker.score(X)
        t2 = pc()
        t_feat.append(t1 - t0)
        t_score.append(t2 - t1)
        t_total.append(t2 - t0)
        sizes.append(ids.size)
    lat = {"features": percentiles_us(t_feat), "ensemble": percentiles_us(t_score),
           "features+ensemble": percentiles_us(t_total), "mean_candidates": float(np.mean(sizes)),
           "n_trees": ranker.n_trees, "n_nodes": ranker.n_nodes, "n_features": ranker.n_features}
    # Answers checked while timing: the served ranker reproduces itself after a to/from_arrays round trip.
    from retrieval.ranker import Ranker
    p, a = ranker.to_arrays()
    X = candidate_features(cands[0][0], cands[0][1], cands[0][2], text_index, stats)
    lat["round_trip_equal"] = bool(np.array_equal(Ranker.from_arrays(p, a).score(X), ranker.score(X)))
    result["latency_100_candidates"] = lat
    print(f"Scoring latency, {lat['mean_candidates']:.1f} candidates/query (BM25 top 100), "
          f"{ranker.n_trees} trees, {ranker.n_nodes} nodes:")
    for k in ("features", "ensemble", "features+ensemble"):
        print(format_row(k, lat[k]))
    # Linear ranker latency for comparison (numpy matvec).
    t_lin = []
    for q, ids, arm in cands[:500]:
        X = candidate_features(q, ids, arm, text_index, stats)
        t0 = pc()
        lin.score(X)
        t_lin.append(pc() - t0)
    result["latency_100_candidates"]["linear_score"] = percentiles_us(t_lin)
    print(format_row("linear score (numpy)", percentiles_us(t_lin)))

    if args.aol:
        from qac.logs import read_aol_log
        from retrieval.catalog import aol_catalog, click_events
        from retrieval.ranker import build_aol_ranker

        t = time.perf_counter()
        log = read_aol_log(data / "aol" / "aol_top1000_users.before_2006-05-25.tsv.gz")
        clicks = click_events(log)
        cat = aol_catalog(clicks)
        _, _, arep = build_aol_ranker(cat, clicks, arms=(BM25Arm.build(cat.texts),), max_train_groups=10_000)
        arep.pop("item_stats")
        result["aol"] = arep
        m = arep["test_mrr@10"]
        print(f"AOL clicks ({time.perf_counter() - t:.0f} s), events {arep['n_events']}, union recall "
              f"{arep['test_union_recall']:.3f}: MRR@10 BM25 {m['bm25']:.4f}  popularity {m['popularity']:.4f}  "
              f"ranker {m['ranker']:.4f}")

    print(json.dumps(result["machine"]))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
