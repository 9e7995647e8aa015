"""Benchmark: recall, build time and latency of the memory, user-history and semantic arms.

Usage::

    /work/venv/bin/python -m bench.bench_arms_memory [--data DIR] [--n-latency 2000]

AOL dev split (``aol/aol_top1000_users.before_2006-05-25.tsv.gz``): click events before 2006-05-18
train the arms (catalogue = sites clicked in training); click events of 2006-05-18..24 are the test.
recall@20 = fraction of test click events whose clicked site is in the arm's top 20 for the event's
query and user. *static*: the arms as built; *online*: test query events replayed in time order,
every click of an event scored first and then ``observe``d (memory, history). The BM25 arm over
the plain site texts is the baseline measured in the same run.

Home Depot: judgments split by query 80/20 (seed 0); relevant = grade >= 2.5; items = the full
catalogue. MemoryArm gets the training judgments as clicks weighted by grade (timestamp 0),
SemanticArm the training pairs with grade >= 2.5. recall@100 = mean over test queries with a
relevant item of |relevant in top 100| / |relevant| (macro), and the micro fraction of relevant
pairs found. Baseline: BM25 over the titles.

Latency: ``retrieve(query, context, 100)`` per arm over up to ``--n-latency`` test queries after
``warmup`` (p50/p99 microseconds). Checked answers: every result obeys the arm contract (sorted,
unique, in range), and ``from_arrays(to_arrays())`` of each arm returns identical results on a sample.
"""
from __future__ import annotations

import argparse
import calendar
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.common import machine_info, percentiles_us
from qac.logs import read_aol_log
from retrieval.arms.base import Context
from retrieval.arms.bm25 import build_bm25_arm
from retrieval.arms.history import UserHistoryArm, build_history_arm
from retrieval.arms.memory import MemoryArm, MemoryConfig, build_memory_arm
from retrieval.arms.semantic import SemanticArm, SemanticConfig, build_semantic_arm
from retrieval.catalog import aol_catalog, click_events, load_homedepot_catalog, load_judgments, split_by_query

TEST_START = calendar.timegm((2006, 5, 18, 0, 0, 0))
TEST_END = calendar.timegm((2006, 5, 25, 0, 0, 0))
RELEVANT = 2.5


def default_data() -> Path:
    return Path(os.environ.get("QAC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def check_result(ids, scores, n, n_items) -> None:
    if not (ids.dtype == np.int32 and scores.dtype == np.float32 and ids.size == scores.size <= n):
        raise RuntimeError("contract: dtype/size")
    if ids.size and (ids.min() < 0 or ids.max() >= n_items or np.unique(ids).size != ids.size):
        raise RuntimeError("contract: ids")
    if ids.size > 1:
        ds = np.diff(scores)
        if np.any(ds > 0) or np.any((ds == 0) & (np.diff(ids) <= 0)):
            raise RuntimeError("contract: order")


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def latency(arm, requests, n=100) -> dict:
    arm.warmup()
    for q, c in requests[:50]:
        arm.retrieve(q, c, n)
    ns = []
    for q, c in requests:
        t0 = time.perf_counter_ns()
        ids, scores = arm.retrieve(q, c, n)
        ns.append(time.perf_counter_ns() - t0)
        check_result(ids, scores, n, arm.n_items)
    return percentiles_us(ns)


def same_after_roundtrip(arm, cls, requests, n=100) -> bool:
    params, arrays = arm.to_arrays()
    arrays = {k: v.copy() for k, v in arrays.items()}
    for v in arrays.values():
        v.setflags(write=False)
    other = cls.from_arrays(params, arrays)
    if hasattr(arm, "state_arrays"):
        other.load_state(arm.state_arrays())
    for q, c in requests:
        a, b = arm.retrieve(q, c, n), other.retrieve(q, c, n)
        if not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])):
            return False
    return True


def fmt_lat(name, p) -> str:
    return f"  {name:<22} p50 {p['p50']:7.1f} us  p90 {p['p90']:7.1f}  p99 {p['p99']:7.1f}  max {p['max']:8.1f}  (n={p['n']})"


# ---------------------------------------------------------------------------------------------


def bench_aol(data: Path, n_latency: int, memory_config: MemoryConfig) -> None:
    path = data / "aol" / "aol_top1000_users.before_2006-05-25.tsv.gz"
    print(f"\n== AOL dev split: {path}")
    log, t_read = timed(read_aol_log, path)
    clicks = click_events(log)
    train = [c for c in clicks if c.timestamp < TEST_START]
    test = [c for c in clicks if TEST_START <= c.timestamp < TEST_END]
    catalog = aol_catalog(train)
    print(f"read {t_read:.1f} s: {len(clicks)} click events; train {len(train)} (< 2006-05-18), "
          f"test {len(test)} (2006-05-18..24); catalogue {catalog.n_items} sites (train)")
    ids = catalog.ids_of([c.item_key for c in train])
    tq = [c.query for c in train]
    tt = np.array([c.timestamp for c in train], dtype=np.int64)
    tu = [c.user_id for c in train]

    memory, t_mem = timed(build_memory_arm, tq, ids, tt, catalog.texts, config=memory_config)
    history, t_hist = timed(build_history_arm, tu, tq, ids, tt, catalog.n_items)
    semantic, t_sem = timed(build_semantic_arm, tq, ids, catalog.texts, SemanticConfig())
    bm25, t_bm25 = timed(build_bm25_arm, catalog.texts)
    print(f"build: memory {t_mem:.2f} s, history {t_hist:.2f} s, semantic {t_sem:.2f} s "
          f"({semantic.model.depth} levels, {len(semantic.featurizer.word.get_feature_names_out())} word + "
          f"{semantic.featurizer.char.n_features} char features), bm25 {t_bm25:.2f} s")

    test_ids = [catalog.id_of(c.item_key) for c in test]
    in_cat = sum(i is not None for i in test_ids)
    seen_q = set(tq)
    print(f"test clicks on a catalogue site: {in_cat / len(test):.3f} (upper bound of recall); "
          f"test clicks whose query was seen in training: {sum(c.query in seen_q for c in test) / len(test):.3f}")

    # Group the test clicks by query event, replay events in time order (stable by log order).
    events: dict[tuple, list[int]] = defaultdict(list)
    for j, c in enumerate(test):
        events[(c.timestamp, c.user_id, c.query)].append(j)
    order = sorted(events, key=lambda k: (k[0], events[k][0]))
    arms = {"memory": memory, "history": history, "semantic": semantic, "bm25": bm25}
    k = 20
    hits = {name: 0 for name in arms}
    seen_hits = {name: [0, 0] for name in arms}
    for key in order:
        t, user, query = key
        ctx = Context(user_id=user, timestamp=t)
        for name, arm in arms.items():
            got = set(arm.retrieve(query, ctx, k)[0].tolist())
            for j in events[key]:
                i = test_ids[j]
                hit = i is not None and i in got
                hits[name] += hit
                seen_hits[name][query in seen_q] += hit
    n_seen = sum(c.query in seen_q for c in test)
    print(f"recall@{k} static (over {len(test)} test clicks; split seen-query {n_seen} / unseen {len(test) - n_seen}):")
    for name in arms:
        print(f"  {name:<10} {hits[name] / len(test):.4f}   seen {seen_hits[name][1] / max(n_seen, 1):.4f}  "
              f"unseen {seen_hits[name][0] / max(len(test) - n_seen, 1):.4f}")

    # Online replay: score every click of an event, then observe them (memory and history).
    online = {"memory": build_memory_arm(tq, ids, tt, catalog.texts, config=memory_config),
              "history": build_history_arm(tu, tq, ids, tt, catalog.n_items)}
    hits_on = {name: 0 for name in online}
    n_obs = 0
    for key in order:
        t, user, query = key
        ctx = Context(user_id=user, timestamp=t)
        for name, arm in online.items():
            got = set(arm.retrieve(query, ctx, k)[0].tolist())
            hits_on[name] += sum(test_ids[j] is not None and test_ids[j] in got for j in events[key])
        for j in events[key]:
            if test_ids[j] is not None:
                n_obs += 1
                for arm in online.values():
                    arm.observe(query, test_ids[j], ctx)
    print(f"recall@{k} online (observe after scoring each event; {n_obs} clicks observed; clicks on sites "
          f"outside the training catalogue cannot be observed):")
    for name in online:
        print(f"  {name:<10} {hits_on[name] / len(test):.4f}")

    requests = [(q, Context(user_id=u, timestamp=t)) for (t, u, q) in order][:n_latency]
    print(f"retrieve latency, n=100, {len(requests)} test query events (static arms; memory/history "
          f"also after the online replay):")
    for name, arm in arms.items():
        print(fmt_lat(name, latency(arm, requests)))
    for name, arm in online.items():
        print(fmt_lat(name + " (online)", latency(arm, requests)))
    sample = requests[:300]
    print("round trip to_arrays/from_arrays(+state) identical: "
          f"memory {same_after_roundtrip(online['memory'], MemoryArm, sample)}, "
          f"history {same_after_roundtrip(online['history'], UserHistoryArm, sample)}, "
          f"semantic {same_after_roundtrip(semantic, SemanticArm, sample)}")


def bench_homedepot(data: Path, n_latency: int, memory_config: MemoryConfig, with_item_text_pairs: bool) -> None:
    print(f"\n== Home Depot: {data / 'homedepot'}")
    catalog = load_homedepot_catalog(data / "homedepot" / "products.tsv.gz")
    judgments = load_judgments(data / "homedepot" / "judgments.train.tsv.gz")
    train, test = split_by_query(judgments, test_fraction=0.2, seed=0)
    tr_ids = catalog.ids_of([j.item_key for j in train])
    tr_q = [j.query for j in train]
    grades = np.array([j.grade for j in train], dtype=np.float64)
    rel = grades >= RELEVANT
    print(f"catalogue {catalog.n_items} products; judgments {len(judgments)}: train {len(train)} "
          f"({len(set(tr_q))} queries, {int(rel.sum())} relevant pairs), test {len(test)} "
          f"({len({j.query for j in test})} queries)")
    memory, t_mem = timed(build_memory_arm, tr_q, tr_ids, np.zeros(len(train), dtype=np.int64), catalog.texts,
                          weights=grades, config=memory_config)
    semantic, t_sem = timed(build_semantic_arm, [q for q, r in zip(tr_q, rel) if r], tr_ids[rel], catalog.texts,
                            SemanticConfig())
    bm25, t_bm25 = timed(build_bm25_arm, catalog.texts)
    print(f"build: memory {t_mem:.2f} s, semantic {t_sem:.2f} s ({semantic.model.depth} levels, "
          f"{semantic.featurizer.n_features} features), bm25 {t_bm25:.2f} s")
    arms_extra = {}
    if with_item_text_pairs:
        sem_aug, t_aug = timed(build_semantic_arm, [q for q, r in zip(tr_q, rel) if r], tr_ids[rel], catalog.texts,
                               SemanticConfig(), item_text_pairs=True)
        print(f"build: semantic+item_text_pairs {t_aug:.2f} s")
        arms_extra["semantic+itp"] = sem_aug
    pos_items = set(tr_ids[rel].tolist())

    relevant: dict[str, set[int]] = defaultdict(set)
    for j in test:
        if j.grade >= RELEVANT:
            relevant[j.query].add(catalog.id_of(j.item_key))
    queries = sorted(relevant)
    arms = {"memory": memory, "semantic": semantic, **arms_extra, "bm25": bm25}
    k = 100
    n_rel = sum(map(len, relevant.values()))
    print(f"recall@{k} over {len(queries)} test queries with a relevant product ({n_rel} relevant pairs; "
          f"{sum(len(r & pos_items) for r in relevant.values()) / n_rel:.3f} of them are items with a "
          f"relevant training query): macro / micro")
    ctx = Context()
    for name, arm in arms.items():
        per_q, found = [], 0
        for q in queries:
            got = set(arm.retrieve(q, ctx, k)[0].tolist())
            f = len(relevant[q] & got)
            found += f
            per_q.append(f / len(relevant[q]))
        print(f"  {name:<10} {np.mean(per_q):.4f} / {found / sum(map(len, relevant.values())):.4f}")
    requests = [(q, ctx) for q in sorted({j.query for j in test})][:n_latency]
    print(f"retrieve latency, n=100, {len(requests)} test queries:")
    for name, arm in arms.items():
        print(fmt_lat(name, latency(arm, requests)))
    sample = requests[:300]
    print("round trip identical: "
          f"memory {same_after_roundtrip(memory, MemoryArm, sample)}, "
          f"semantic {same_after_roundtrip(semantic, SemanticArm, sample)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--n-latency", type=int, default=2000)
    ap.add_argument("--predicted-weight", type=float, default=MemoryConfig().predicted_weight)
    ap.add_argument("--only", choices=("aol", "homedepot"), default=None)
    ap.add_argument("--item-text-pairs", action="store_true",
                    help="also build the Home Depot semantic arm with (title, product) training pairs")
    args = ap.parse_args(argv)
    info = machine_info()
    print(f"machine: {info['platform']} | {info['cpu']} | {info['cpu_count']} cpus | "
          f"load {info['loadavg_1m']:.2f} | python {info['python']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    cfg = MemoryConfig(predicted_weight=args.predicted_weight)
    print(f"memory config: {cfg}")
    if args.only in (None, "aol"):
        bench_aol(args.data, args.n_latency, cfg)
    if args.only in (None, "homedepot"):
        bench_homedepot(args.data, args.n_latency, cfg, args.item_text_pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
