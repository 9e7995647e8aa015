"""Benchmark: XR-Linear beam-search latency (``XLinearModel.predict_one``) on the real model.

Usage::

    /work/venv/bin/python -m bench.bench_beam [--artifacts DIR] [--log PATH] [--n-queries 2000]

Without ``--artifacts`` the completion index is first built from ``--log`` (default: the AOL
top-1000-users log in ``../shared/data``) into a temporary directory, and the build stage times
are printed (``xr-linear`` is the training time). The model is then loaded exactly as the server
loads it (memory-mapped, read-only) and warmed up.

Queries are ``--n-queries`` completion points of the log (DESIGN.md protocol: previous query plus
one random prefix of the next query), featurised by the artifact's featurizer. For beam sizes
1/5/10/20 it reports median/p95/p99 microseconds of ``predict_one`` (top-10), unconstrained and
prefix-constrained (``label_range`` of the prefix, as the completer calls it). The baseline,
measured in the same run on the same queries, is exhaustive scoring of every label with one scipy
sparse product against the last-level weight matrix plus a top-10 ``argpartition``.

Checked answers: ``predict_batch`` equals ``predict_one`` row by row; with the beam as wide as
the widest level, ``predict_one`` equals ``predict_exhaustive`` (the exact path scores) on a sample;
and the fraction of queries whose beam-b top-1 equals the exact top-1 is reported.
"""
from __future__ import annotations

import argparse
import bisect
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine_info
import scipy.sparse as sp

from qac.xmr.model import XLinearModel

BEAMS = (1, 5, 10, 20)


def default_log() -> Path:
    root = Path(os.environ.get("QAC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root / "aol" / "aol_top1000_users.before_2006-05-25.tsv.gz"


def percentiles(ns: np.ndarray) -> str:
    us = ns / 1e3
    return (f"median {np.median(us):8.1f}  p95 {np.percentile(us, 95):8.1f}  "
            f"p99 {np.percentile(us, 99):8.1f}  max {us.max():9.1f}")


def time_calls(fn, queries, repeats: int) -> np.ndarray:
    """Nanoseconds per call, each query ``repeats`` times, interleaved."""
    out = np.empty(len(queries) * repeats, dtype=np.int64)
    j = 0
    gc.collect()
    for _ in range(repeats):
        for q in queries:
            t = time.perf_counter_ns()
            fn(q)
            out[j] = time.perf_counter_ns() - t
            j += 1
    return out


def load_queries(log: Path, featurizer, labels: list[str], n: int, seed: int):
    from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions

    points = make_points(split_sessions(read_aol_log(log).events, SessionConfig(1800)), seed)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(points), size=min(n, len(points)), replace=False)
    out = []
    for i in chosen:
        p = points[i]
        idx, val = featurizer.transform_one(p.prev_query, p.prefix)
        lo = bisect.bisect_left(labels, p.prefix)
        hi = bisect.bisect_left(labels, p.prefix + "\U0010ffff", lo)
        out.append((np.asarray(idx, np.int32), np.asarray(val, np.float32), (lo, hi)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", help="artifact directory from `qac build` (else build one)")
    ap.add_argument("--log", default=str(default_log()), help="AOL-format log")
    ap.add_argument("--n-queries", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    from qac.artifacts import arrays_to_strings, load_artifact
    from qac.features import SessionFeaturizer

    print(f"machine: {machine_info()}")
    tmp = None
    art_dir = args.artifacts
    if art_dir is None:
        from qac.build import build_completion

        tmp = tempfile.TemporaryDirectory(prefix="bench_beam_")
        art_dir = os.path.join(tmp.name, "art")
        t = time.perf_counter()
        report = build_completion(args.log, art_dir, progress=False)
        print(f"\nbuild from {args.log}: {time.perf_counter() - t:.1f} s wall")
        print(report.format())

    art = load_artifact(art_dir)
    model = XLinearModel.from_arrays(*art.component("model"))
    featurizer = SessionFeaturizer.from_arrays(*art.component("featurizer"))
    la = art.component("labels")[1]
    labels = arrays_to_strings(la["labels_flat"], la["labels_ptr"])
    t = time.perf_counter()
    model.warmup()
    print(f"\nmodel: {model.n_labels:,} labels, {model.n_features:,} features, depth {model.depth}, "
          f"nodes/level {model.n_nodes}, {model.W_data.size:,} weights "
          f"(memory-mapped: {not model.W_data.flags.writeable}); warmup {time.perf_counter() - t:.2f} s")
    queries = load_queries(Path(args.log), featurizer, labels, args.n_queries, args.seed)
    nnz = np.array([q[0].size for q in queries])
    print(f"queries: {len(queries)} completion points of {args.log} (seed {args.seed}), "
          f"median nnz {np.median(nnz):.0f}; {args.repeats} timed passes each\n")

    # Checks first (answers must not change while we time them).
    X = sp.csr_matrix(
        (np.concatenate([q[1] for q in queries]), np.concatenate([q[0] for q in queries]),
         np.concatenate([[0], np.cumsum(nnz)])), shape=(len(queries), model.n_features))
    bl, bs = model.predict_batch(X, beam_size=10, topk=10, n_threads=2)
    same = all(np.array_equal(bl[r][bl[r] >= 0], model.predict_one(*queries[r][:2])[0])
               for r in range(len(queries)))
    print(f"check predict_batch == predict_one (beam 10): {same}")
    wide = max(model.n_nodes[:-1]) + 1
    n_check = min(20, len(queries))
    exact_top1 = []
    ok = True
    for q in queries[:n_check]:
        ref_l, ref_s = model.predict_exhaustive(q[0], q[1], topk=10)
        got_l, got_s = model.predict_one(q[0], q[1], beam_size=wide, topk=10)
        ok &= np.array_equal(got_l, ref_l) and np.allclose(got_s, ref_s, atol=1e-6)
        exact_top1.append(ref_l[0])
    print(f"check beam {wide} (widest level) == exhaustive path scores, {n_check} queries: {ok}")
    for b in BEAMS:
        agree = np.mean([model.predict_one(q[0], q[1], beam_size=b, topk=1)[0][0] == e
                         for q, e in zip(queries[:n_check], exact_top1)])
        print(f"  beam {b:2d}: top-1 equals exact top-1 on {agree:.0%} of {n_check} queries")

    print("\npredict_one latency, microseconds (topk=10, l3-hinge)")
    for b in BEAMS:
        ns = time_calls(lambda q: model.predict_one(q[0], q[1], beam_size=b, topk=10),
                        queries, args.repeats)
        print(f"  beam {b:2d}                     {percentiles(ns)}")
    for b in BEAMS:
        ns = time_calls(lambda q: model.predict_one(q[0], q[1], beam_size=b, topk=10,
                                                    label_range=q[2]), queries, args.repeats)
        print(f"  beam {b:2d} prefix-constrained  {percentiles(ns)}")

    WL = sp.csr_matrix(model.weights(model.depth).T)  # (n_labels, n_features + 1)
    bias = np.float32(model.bias)

    def exhaustive(q):
        x = sp.csc_matrix((np.append(q[1], bias), np.append(q[0], model.n_features),
                           [0, q[0].size + 1]), shape=(model.n_features + 1, 1))
        s = (WL @ x).toarray().ravel()
        top = np.argpartition(-s, 10)[:10]
        return top[np.argsort(-s[top])]

    ns = time_calls(exhaustive, queries, 1)
    print(f"  baseline: scipy W_L^T x over all {model.n_labels:,} labels + top-10  {percentiles(ns)}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
