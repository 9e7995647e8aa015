"""Benchmark: single in-process completion latency, serving-process memory, build time.

Usage::

    python -m bench.bench_complete --log ../shared/data/aol/aol_top1000_users.before_2006-05-25.tsv.gz \
        --until 2006-05-18 --queries-since 2006-05-18 [--artifacts DIR] [--json OUT]

1. Builds the completion index from ``--log`` (events before ``--until``) unless ``--artifacts`` holds
   one already; reports the build's wall time and per-stage times.
2. Times ``Completer.complete`` (raw strings -> final list, k=10, one call at a time, after warm-up)
   on real (user, previous query, prefix, time) requests from ``--queries-since``: the ranked path
   (every completion arm + the learned ranker, issue 4) and, in the same run, the cascade without
   the ranker (issue 2's path) and most-popular-completion alone over the same trie (normalise +
   top-k with back-off). The answers are computed twice and must agree (checked, reported).
3. Starts ``qac serve`` as a real process on 127.0.0.1, sends the same requests over gRPC, and reads
   the server's resident memory (VmRSS, VmHWM) from /proc.

Targets: issue 4, ranked path with every arm p99 <= 1 ms; issue 2 (cascade) p50 <= 0.3 ms,
p99 <= 0.75 ms; serving RSS <= 500 MB.
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

from bench.common import format_row, machine_info, percentiles_us, rss_mb, write_json

DEFAULT_LOG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aol" / \
    "aol_top1000_users.before_2006-05-25.tsv.gz"


def real_requests(log: Path, since: str | None, n: int) -> list[tuple[list[str], str, str, int]]:
    """``(previous queries, prefix, user id, unix time)`` of the first ``n`` real completion points."""
    from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions

    points = make_points(split_sessions(read_aol_log(log, since=since).events, SessionConfig()), seed=0)
    return [([p.prev_query] if p.prev_query else [], p.prefix, p.user_id, p.timestamp) for p in points[:n]]


def time_calls(fn, requests, repeats: int) -> tuple[list[int], list]:
    timer = time.perf_counter_ns
    lat, answers = [], []
    for _ in range(repeats):
        for req in requests:
            t0 = timer()
            ans = fn(*req)
            lat.append(timer() - t0)
            answers.append(ans)
    return lat, answers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", type=Path, default=DEFAULT_LOG)
    ap.add_argument("--until", default="2006-05-18", help="build from events before this date")
    ap.add_argument("--queries-since", default="2006-05-18", help="requests from sessions after this date")
    ap.add_argument("--artifacts", type=Path, help="reuse this index instead of building one")
    ap.add_argument("--n", type=int, default=5000, help="distinct requests")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-server", action="store_true", help="skip the serving-process memory check")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from qac.completer import Completer
    from qac.text import normalize_prefix

    result: dict = {"machine": machine_info()}
    print(f"machine: {result['machine']}")
    tmp = None
    art = args.artifacts
    if art is None or not (art / "manifest.json").is_file():
        from qac.build import build_completion

        if art is None:
            tmp = tempfile.TemporaryDirectory(prefix="bench-complete-")
            art = Path(tmp.name) / "artifacts"
        t0 = time.perf_counter()
        report = build_completion(args.log, art, until=args.until, progress=False)
        result["build"] = {"wall_s": time.perf_counter() - t0, "stages_s": report.seconds, "counts": report.counts,
                           "artifact_mb": report.artifact_bytes / 1e6}
        print(f"build: {result['build']['wall_s']:.1f} s wall, stages {({k: round(v, 2) for k, v in report.seconds.items()})}")

    requests = real_requests(args.log, args.queries_since, args.n)
    t0 = time.perf_counter()
    comp = Completer.load(art)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    comp.warmup()
    result["load_s"], result["warmup_s"] = load_s, time.perf_counter() - t0

    cascade = comp.with_inference(ranked=False)

    def complete(prev, prefix, user, ts):
        return [(c.text, c.source) for c in comp.complete(prev, prefix, 10, user_id=user, timestamp=ts)]

    def complete_cascade(prev, prefix, user, ts):
        return [(c.text, c.source) for c in cascade.complete(prev, prefix, 10, user_id=user, timestamp=ts)]

    def mpc_baseline(prev, prefix, user, ts):
        return [q for q, _, _ in comp.mpc.top_k_backoff(normalize_prefix(prefix), 10)]

    gc.collect()
    lat, answers = time_calls(complete, requests, args.repeats)
    cascade_lat, _ = time_calls(complete_cascade, requests, args.repeats)
    base_lat, _ = time_calls(mpc_baseline, requests, args.repeats)
    n = len(requests)
    consistent = all(answers[i] == answers[i + n] for i in range(n)) if args.repeats > 1 else None
    result["ranked"] = comp.pipeline is not None
    result["complete_us"] = percentiles_us(lat)
    result["cascade_us"] = percentiles_us(cascade_lat)
    result["baseline_mpc_us"] = percentiles_us(base_lat)
    result["answers_consistent_across_repeats"] = consistent
    result["n_requests"] = n
    print(f"in-process, k=10, {n} real requests x {args.repeats} (load {load_s:.2f} s, warm-up {result['warmup_s']:.2f} s):")
    label = "every arm + ranker" if result["ranked"] else "cascade: artifact has no ranker"
    print(format_row(f"Completer.complete ({label})", result["complete_us"]))
    print(format_row("cascade without ranker (issue 2)", result["cascade_us"]))
    print(format_row("baseline: MPC only", result["baseline_mpc_us"]))
    print(f"  answers identical across repeats: {consistent}")

    if not args.no_server:
        from serving.client import complete as grpc_complete
        from serving.demo import start_server, stop_server

        proc, target = start_server(art)
        try:
            after_start = rss_mb(proc.pid)
            mismatches = 0
            for prev, prefix, user, _ in requests:
                remote = [(t, s) for t, _, s in grpc_complete(target, prefix, prev, k=10, user_id=user)]
                # the client stamps the request with its own clock
                mismatches += remote != complete(prev, prefix, user, int(time.time()))
            result["server"] = {"after_warmup": after_start, "after_requests": rss_mb(proc.pid),
                                "grpc_vs_in_process_mismatches": mismatches}
        finally:
            stop_server(proc)
        s = result["server"]
        print(f"serving process: RSS {s['after_warmup']['rss_mb']:.0f} MB after warm-up, "
              f"{s['after_requests']['rss_mb']:.0f} MB after {n} gRPC requests (peak {s['after_requests']['peak_rss_mb']:.0f} MB); "
              f"gRPC answers differing from in-process: {mismatches}")
    if args.json:
        write_json(args.json, result)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
