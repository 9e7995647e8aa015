"""Benchmark: retrieval arms (BM25, char-trigram, popularity) -- recall on real data and latency.

Usage::

    /work/venv/bin/python -m bench.bench_arms [--data DIR] [--repeats 3] [--out results.json]

Home Depot (``homedepot/``): catalogue = all 54,667 products (normalised titles); judgments split
with ``split_by_query(seed=0)`` (20 % of queries to test); relevant = grade >= 2.5. Reported:
recall@100 of BM25, of the char-trigram arm and of their union (100 each), micro-averaged (relevant
pairs found / relevant pairs), over the test queries.

AOL dev split (``aol/aol_top1000_users.before_2006-05-25.tsv.gz``): train = click events before
2006-05-18, test = click events 2006-05-18 .. 2006-05-24. Catalogue = the sites clicked in train
(a test click on a site never clicked in train is a miss for every arm); item text = URL tokens,
expanded with the training queries that clicked the item (``expanded_texts``). recall@20 = fraction
of test click events whose clicked item is in the arm's top 20 for the event's query. Baselines in
the same run: the expanded BM25 with b = 0 (no length normalisation), BM25 over URL tokens only, popularity (train click counts), and the "all sites"
catalogue variant (sites first clicked in the test week included, with URL tokens only).

Latency: wall time of ``retrieve(query, context, 100)`` (``perf_counter_ns``) per call over the test
queries after ``warmup()``, ``--repeats`` passes, p50/p90/p99 in microseconds. Every repeat is checked
to return the same ids as the first pass (``n_mismatch`` must be 0).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import format_row, machine_info, percentiles_us
from qac.logs import read_aol_log
from retrieval.arms import BM25Arm, CharGramArm, Context
from retrieval.arms.popularity import build_popularity_arm
from retrieval.catalog import (
    Catalog,
    aol_catalog,
    click_events,
    expanded_texts,
    load_homedepot_catalog,
    load_judgments,
    split_by_query,
)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CTX = Context()


def timed_retrieve(arm, queries: list[str], n: int, repeats: int) -> tuple[dict, list[set[int]], int]:
    """Latency percentiles, first-pass result sets, and the number of repeat mismatches."""
    arm.warmup()
    ns: list[int] = []
    first: list[np.ndarray] = []
    mismatch = 0
    for r in range(repeats):
        for i, q in enumerate(queries):
            t0 = time.perf_counter_ns()
            ids, _ = arm.retrieve(q, CTX, n)
            ns.append(time.perf_counter_ns() - t0)
            if r == 0:
                first.append(ids)
            elif not np.array_equal(ids, first[i]):
                mismatch += 1
    return percentiles_us(ns), [set(x.tolist()) for x in first], mismatch


def homedepot(data: Path, repeats: int) -> dict:
    catalog = load_homedepot_catalog(data / "homedepot" / "products.tsv.gz")
    _, test = split_by_query(load_judgments(data / "homedepot" / "judgments.train.tsv.gz"), seed=0)
    relevant: dict[str, set[int]] = {}
    for j in test:
        if j.grade >= 2.5:
            relevant.setdefault(j.query, set()).add(catalog.id_of(j.item_key))
    queries = sorted(relevant)
    out: dict = {"n_items": catalog.n_items, "n_test_queries": len(queries),
                 "n_relevant_pairs": sum(map(len, relevant.values())), "arms": {}}
    found = {}
    for name, build in (("bm25", BM25Arm.build), ("chargram", CharGramArm.build)):
        t0 = time.perf_counter()
        arm = build(catalog.texts)
        build_s = time.perf_counter() - t0
        lat, sets, mismatch = timed_retrieve(arm, queries, 100, repeats)
        found[name] = sets
        hits = sum(len(relevant[q] & s) for q, s in zip(queries, sets))
        out["arms"][name] = {"build_s": build_s, "recall@100": hits / out["n_relevant_pairs"],
                             "latency_us_n100": lat, "n_mismatch": mismatch}
    union_hits = sum(len(relevant[q] & (a | b)) for q, a, b in zip(queries, found["bm25"], found["chargram"]))
    out["union_bm25_chargram_recall@100each"] = union_hits / out["n_relevant_pairs"]
    return out


def aol_recall(arm, test_clicks, catalog: Catalog, n: int, repeats: int) -> dict:
    queries = sorted({c.query for c in test_clicks})
    lat, sets, mismatch = timed_retrieve(arm, queries, n, repeats)
    top = dict(zip(queries, sets))
    hits = 0
    for c in test_clicks:
        i = catalog.id_of(c.item_key)
        hits += i is not None and i in top[c.query]
    return {f"recall@{n}": hits / len(test_clicks), f"latency_us_n{n}": lat, "n_mismatch": mismatch,
            "n_queries": len(queries)}


def aol(data: Path, repeats: int) -> dict:
    log = data / "aol" / "aol_top1000_users.before_2006-05-25.tsv.gz"
    train = click_events(read_aol_log(log, until="2006-05-18"))
    test = click_events(read_aol_log(log, since="2006-05-18", until="2006-05-25"))
    catalog = aol_catalog(train)
    out: dict = {"n_train_clicks": len(train), "n_test_clicks": len(test), "n_items": catalog.n_items,
                 "test_clicks_on_known_items": sum(catalog.id_of(c.item_key) is not None for c in test) / len(test)}
    t0 = time.perf_counter()
    expanded = BM25Arm.build(expanded_texts(catalog, train))
    out["bm25_expanded_build_s"] = time.perf_counter() - t0
    out["bm25_expanded"] = aol_recall(expanded, test, catalog, 20, repeats)
    # Expanded documents vary wildly in length (one click vs thousands); length normalisation hurts.
    out["bm25_expanded_b0"] = aol_recall(BM25Arm.build(expanded_texts(catalog, train), b=0.0), test, catalog, 20, 1)
    out["bm25_url_tokens_only"] = aol_recall(BM25Arm.build(catalog.texts), test, catalog, 20, 1)
    out["popularity"] = aol_recall(build_popularity_arm(catalog, train), test, catalog, 20, 1)
    # Variant: every site clicked up to 2006-05-24 is in the catalogue (test-only sites: URL tokens).
    full = aol_catalog(train + test)
    out["bm25_expanded_all_sites_catalog"] = aol_recall(
        BM25Arm.build(expanded_texts(full, train)), test, full, 20, 1)
    out["bm25_expanded_all_sites_catalog"]["n_items"] = full.n_items
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {"machine": machine_info(), "homedepot": homedepot(args.data, args.repeats),
              "aol": aol(args.data, args.repeats)}
    m = result["machine"]
    print(f"machine: {m['cpu']} x{m['cpu_count']}, load {m['loadavg_1m']:.2f}, python {m['python']}, "
          f"{m['platform']}")
    print("versions:", ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    hd = result["homedepot"]
    print(f"\nHome Depot: {hd['n_items']} items, {hd['n_test_queries']} test queries, "
          f"{hd['n_relevant_pairs']} relevant pairs (grade >= 2.5)")
    for name, r in hd["arms"].items():
        print(f"  {name:<10} recall@100 {r['recall@100']:.4f}  build {r['build_s']:.1f} s  "
              f"mismatch {r['n_mismatch']}")
        print(format_row(f"{name} retrieve n=100", r["latency_us_n100"]))
    print(f"  union bm25 + chargram (100 each) recall@100: {hd['union_bm25_chargram_recall@100each']:.4f}")
    a = result["aol"]
    print(f"\nAOL dev: {a['n_train_clicks']} train clicks, {a['n_test_clicks']} test clicks, "
          f"{a['n_items']} items; test clicks on items seen in train: {a['test_clicks_on_known_items']:.4f}")
    for key in ("bm25_expanded", "bm25_expanded_b0", "bm25_url_tokens_only", "popularity", "bm25_expanded_all_sites_catalog"):
        r = a[key]
        print(f"  {key:<34} recall@20 {r['recall@20']:.4f}  ({r['n_queries']} distinct test queries)")
    print(format_row("bm25_expanded retrieve n=20", a["bm25_expanded"]["latency_us_n20"]))
    print(format_row("popularity retrieve n=20", a["popularity"]["latency_us_n20"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
