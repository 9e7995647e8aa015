"""Benchmark: most-popular completion (``qac.mpc``) build time and top-k latency on real AOL queries.

Usage::

    /work/venv/bin/python -m bench.bench_mpc [--data DIR] [--n-prefixes 20000] [--repeats 3]
        [--thresholds 64,32,16] [--out results.json]

Corpora (normalised with ``qac.text.normalize_query``; empty results dropped):

- ``aol_1M``: the 1,000,000-row query sample (``aol/aol_2006_1M_queries.txt.gz``, 365,977 distinct
  raw strings); counts = rows per normalised query.
- ``aol_top1000``: the top-1000-users click log; counts = query events (distinct AnonID, Query,
  QueryTime), as ``qac.build`` counts them.

Prefixes: ``--n-prefixes`` rows drawn (seeded, so frequency-weighted) from the corpus's own log,
normalised, cut to a length uniform in 1..8 (at most the query length). Every timed call is
``top_k(prefix, 10)``; latency is wall time per call (``perf_counter_ns``) in microseconds, reported
as median / p90 / p99 / max, split by whether the prefix has a stored row (heavy) or not (light).
"cold" is the first pass over the prefixes right after build (stored rows decoded lazily on first
use); "warm" is after ``warmup()``.

Baseline, same run, same prefixes: a numpy array of the sorted queries, ``np.searchsorted`` for the
prefix's block and a stable ``argsort`` of the negated counts in the block. Every MPC answer is
checked against the baseline's answer (``n_mismatch`` must be 0).
"""
from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.common import machine_info

from qac.mpc import MostPopularCompletion

try:
    from qac.text import normalize_query
except ImportError:  # pragma: no cover - only while qac.text is being written
    import re

    _NON_WORD = re.compile(r"\W+")

    def normalize_query(raw: str) -> str:
        tokens = (_NON_WORD.sub("", t) for w in raw.split() for t in w.split("."))
        return " ".join(t for t in tokens if t).lower().strip()


K = 10
MAX_PREFIX_LEN = 8


def read_1m(path: Path) -> list[str]:
    """Normalised non-empty query of every row (header ``Query``)."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        header = fh.readline().rstrip("\n")
        if header != "Query":
            raise ValueError(f"{path}: expected header 'Query', got {header!r}")
        rows = [normalize_query(line.rstrip("\n")) for line in fh]
    return [q for q in rows if q]


def read_top1000(path: Path) -> list[str]:
    """Normalised non-empty query of every query event (distinct AnonID, Query, QueryTime)."""
    events = set()
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        fh.readline()
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3:
                events.add((parts[0], parts[1], parts[2]))
    rows = [normalize_query(q) for _, q, _ in sorted(events)]
    return [q for q in rows if q]


def draw_prefixes(rows: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(rows), size=n)
    lengths = rng.integers(1, MAX_PREFIX_LEN + 1, size=n)
    return [rows[i][: min(int(length), len(rows[i]))] for i, length in zip(picks.tolist(), lengths.tolist())]


class SortedArrayBaseline:
    """Brute-force scan: block of the prefix in a sorted numpy array, argsort of its counts."""

    def __init__(self, queries: list[str], counts: np.ndarray) -> None:
        order = sorted(range(len(queries)), key=queries.__getitem__)
        self.sorted_queries = np.array([queries[i] for i in order])
        self.neg_counts = -counts[np.asarray(order)]

    def top_k(self, prefix: str, k: int) -> list[tuple[str, int]]:
        s = self.sorted_queries
        lo = int(np.searchsorted(s, prefix, side="left"))
        if prefix:
            # Normalised queries never hold U+10FFFF, so incrementing the last character is safe here.
            hi = int(np.searchsorted(s, prefix[:-1] + chr(ord(prefix[-1]) + 1), side="left"))
        else:
            hi = s.shape[0]
        # Stable sort: ties keep sorted (string ascending) order.
        top = np.argsort(self.neg_counts[lo:hi], kind="stable")[:k] + lo
        return [(str(s[i]), -int(self.neg_counts[i])) for i in top.tolist()]


def time_calls(fn, prefixes: list[str], k: int) -> np.ndarray:
    out = np.empty(len(prefixes), dtype=np.float64)
    clock = time.perf_counter_ns
    for j, p in enumerate(prefixes):
        t0 = clock()
        fn(p, k)
        out[j] = clock() - t0
    return out / 1000.0


def summary(us: np.ndarray) -> dict:
    if us.size == 0:
        return {"n": 0}
    return {
        "n": int(us.size),
        "median_us": round(float(np.median(us)), 2),
        "p90_us": round(float(np.percentile(us, 90)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "max_us": round(float(us.max()), 1),
        "mean_us": round(float(us.mean()), 2),
    }


def bench_corpus(name: str, rows: list[str], args) -> dict:
    counter = Counter(rows)
    queries = list(counter)
    counts = np.array([counter[q] for q in queries], dtype=np.int64)
    prefixes = draw_prefixes(rows, args.n_prefixes, seed=0)
    result: dict = {
        "corpus": name,
        "n_rows": len(rows),
        "n_queries": len(queries),
        "n_prefixes": len(prefixes),
        "n_distinct_prefixes": len(set(prefixes)),
        "k": K,
    }

    t0 = time.perf_counter()
    baseline = SortedArrayBaseline(queries, counts)
    result["baseline_build_s"] = round(time.perf_counter() - t0, 3)
    gc.collect()
    base_us = time_calls(baseline.top_k, prefixes, K)
    result["baseline_top_k"] = summary(base_us)
    expected = [baseline.top_k(p, K) for p in prefixes]

    result["mpc"] = []
    for threshold in args.thresholds:
        build_s = []
        for _ in range(args.repeats):
            gc.collect()
            t0 = time.perf_counter()
            mpc = MostPopularCompletion.build(queries, counts, n_stored=32, heavy_threshold=threshold)
            build_s.append(time.perf_counter() - t0)
        params, arrays = mpc.to_arrays()
        heavy = np.array([p != "" and p in mpc._heavy_trie for p in prefixes])
        gc.collect()
        cold = time_calls(mpc.top_k, prefixes, K)
        t0 = time.perf_counter()
        mpc.warmup()
        warmup_s = time.perf_counter() - t0
        gc.collect()
        warm = time_calls(mpc.top_k, prefixes, K)
        backoff = time_calls(mpc.top_k_backoff, prefixes, K)
        n_mismatch = sum(mpc.top_k(p, K) != e for p, e in zip(prefixes, expected))
        result["mpc"].append({
            "n_stored": 32,
            "heavy_threshold": threshold,
            "build_s": [round(s, 3) for s in build_s],
            "build_s_median": round(statistics.median(build_s), 3),
            "n_heavy": params["n_heavy"],
            "array_bytes": {key: int(arr.nbytes) for key, arr in arrays.items()},
            "warmup_s": round(warmup_s, 3),
            "top_k_cold": summary(cold),
            "top_k_warm": summary(warm),
            "top_k_warm_heavy": summary(warm[heavy]),
            "top_k_warm_light": summary(warm[~heavy]),
            "top_k_backoff_warm": summary(backoff),
            "n_checked": len(prefixes),
            "n_mismatch": int(n_mismatch),
            "example": {p: mpc.top_k(p, 3) for p in ("", "w", "goo", "how to")},
        })
    return result


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    default_data = Path(os.environ.get("QAC_SHARED_DATA", repo.parent / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data)
    ap.add_argument("--n-prefixes", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--thresholds", default="64,32,16",
                    help="heavy_threshold values to run (the first is the default 64)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    args.thresholds = [int(t) for t in args.thresholds.split(",")]

    report = {"machine": machine_info(), "corpora": []}
    print(json.dumps(report["machine"]), flush=True)
    for name, reader, path in [
        ("aol_1M", read_1m, args.data / "aol" / "aol_2006_1M_queries.txt.gz"),
        ("aol_top1000", read_top1000, args.data / "aol" / "aol_top1000_users.before_2006-05-25.tsv.gz"),
    ]:
        t0 = time.perf_counter()
        rows = reader(path)
        read_s = time.perf_counter() - t0
        res = bench_corpus(name, rows, args)
        res["read_normalise_s"] = round(read_s, 2)
        report["corpora"].append(res)
        print(json.dumps(res, ensure_ascii=False), flush=True)
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    bad = sum(m["n_mismatch"] for c in report["corpora"] for m in c["mpc"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
