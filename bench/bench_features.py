"""Featurisation benchmark: single-query ``transform_one`` latency and batch fit/transform time.

Run::

    /work/venv/bin/python -m bench.bench_features [--log PATH] [--repeats 20]

Single query: a 3-word previous query and a 10-character prefix (real pairs from the AOL log),
timed call by call with ``perf_counter_ns``; median and p99 in microseconds, next to the same input
through scikit-learn's ``TfidfVectorizer.transform`` (word + char vectorizers, ``hstack`` and
``normalize``: the straightforward way), measured in the same run. The outputs of
``transform_one`` are checked against the batch ``transform`` rows.

Batch: ``fit``, ``transform`` and ``fit_transform`` of :class:`qac.features.SessionFeaturizer` on
all (previous query, prefix) points of the log, next to scikit-learn's unweighted equivalent.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import machine_info
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from qac.features import CharTfidf, SessionFeaturizer, WordTfidf
from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions

DEFAULT_LOG = Path(__file__).resolve().parents[1].parent / "shared/data/aol/aol_top1000_users.before_2006-05-25.tsv.gz"


def time_calls(fn, inputs, repeats: int) -> np.ndarray:
    """Per-call wall times in microseconds (each input ``repeats`` times, interleaved)."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for a, b in inputs:
            t0 = clock()
            fn(a, b)
            out.append(clock() - t0)
    return np.array(out, dtype=np.float64) / 1e3


def stats(us: np.ndarray) -> str:
    return f"median {np.median(us):7.2f} us   p90 {np.percentile(us, 90):7.2f}   p99 {np.percentile(us, 99):8.2f}"


def best_of(fn, n: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per single-query input")
    parser.add_argument("--n-inputs", type=int, default=500, help="distinct single-query inputs")
    args = parser.parse_args(argv)

    print("machine:", machine_info())
    log = read_aol_log(args.log)
    points = make_points(split_sessions(log.events, SessionConfig()), seed=0)
    prev = [p.prev_query for p in points]
    prefixes = [p.prefix for p in points]
    print(f"data: {args.log.name}: {len(points)} (previous query, prefix) points")

    # ---- batch ---------------------------------------------------------------------------
    t_fit, feat = best_of(lambda: SessionFeaturizer(WordTfidf(), CharTfidf()).fit(prev, prefixes))
    t_tr, X = best_of(lambda: feat.transform(prev, prefixes))
    t_ft, X2 = best_of(lambda: SessionFeaturizer(WordTfidf(), CharTfidf()).fit_transform(prev, prefixes))
    same = (X != X2).nnz == 0

    def sk_fit_transform():
        w = TfidfVectorizer(token_pattern=r"\S+", lowercase=False, dtype=np.float32)
        c = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), lowercase=False, dtype=np.float32)
        return w, c, normalize(sp.hstack([w.fit_transform(prev), c.fit_transform(prefixes)], format="csr"))

    t_sk, (sk_word, sk_char, _) = best_of(sk_fit_transform, n=1)
    print(f"batch ({len(points)} points, X {X.shape}, nnz {X.nnz}, best of 3):")
    print(f"  SessionFeaturizer.fit            {t_fit:6.2f} s")
    print(f"  SessionFeaturizer.transform      {t_tr:6.2f} s")
    print(f"  SessionFeaturizer.fit_transform  {t_ft:6.2f} s   (equals fit + transform: {same})")
    print(f"  baseline sklearn word+char fit_transform + hstack + normalize (unweighted, 1 run) {t_sk:6.2f} s")

    # ---- single query ----------------------------------------------------------------------
    pairs = [(p.prev_query, p.next_query[:10]) for p in points
             if len(p.prev_query.split()) == 3 and len(p.next_query) >= 10][: args.n_inputs]
    Xp = feat.transform([a for a, _ in pairs], [b for _, b in pairs])
    max_err = 0.0
    for i, (a, b) in enumerate(pairs):
        idx, val = feat.transform_one(a, b)
        lo, hi = Xp.indptr[i], Xp.indptr[i + 1]
        if not np.array_equal(idx, Xp.indices[lo:hi]):
            raise SystemExit(f"transform_one indices differ from transform on {pairs[i]!r}")
        max_err = max(max_err, float(np.max(np.abs(val - Xp.data[lo:hi]), initial=0.0)))

    def sk_one(a: str, b: str):
        return normalize(sp.hstack([sk_word.transform([a]), sk_char.transform([b])], format="csr"))

    time_calls(feat.transform_one, pairs[:50], 2)  # warm caches
    ours = time_calls(feat.transform_one, pairs, args.repeats)
    cpu0 = time.thread_time_ns()
    for _ in range(args.repeats):
        for a, b in pairs:
            feat.transform_one(a, b)
    cpu_us = (time.thread_time_ns() - cpu0) / (args.repeats * len(pairs)) / 1e3
    base = time_calls(sk_one, pairs, max(1, args.repeats // 10))
    base_char = time_calls(lambda a, b: sk_char.transform([b]), pairs, max(1, args.repeats // 10))
    print(f"single query ({len(pairs)} real inputs: 3-word previous query, 10-char prefix; "
          f"{len(ours)} timed calls; max |transform_one - transform| = {max_err:.2e}):")
    print(f"  SessionFeaturizer.transform_one           {stats(ours)}   (thread CPU time, mean: {cpu_us:.2f} us)")
    print(f"  baseline sklearn word+char transform+hstack+normalize {stats(base)}")
    print(f"  baseline sklearn char TfidfVectorizer.transform only  {stats(base_char)}")
    print("machine (after):", machine_info())


if __name__ == "__main__":
    main()
