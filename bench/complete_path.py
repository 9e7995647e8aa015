"""Where a served Complete spends its time, in process (no socket): the part of the load test's
Complete latency that is not the gRPC floor (Echo).

Usage::

    python -m bench.complete_path --artifacts runs/dev/full_art --log runs/dev/test.tsv.gz [--n 3000]

Times, over the same real requests as ``bench.load``'s ``complete`` mix (the first 500 are warm-up
and not counted): ``QueryServiceServicer.Complete`` + response serialisation without a search service
(what ``qac serve --processes N`` runs) and with one (each Complete also commits a completion
decision to the SQLite state log), ``Completer.complete`` alone, and
``SearchService.record_completion`` alone (in a temporary state directory).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_info
from bench.load import build_workload, latency_summary_ms

WARMUP = 500


class _Context:
    """The one ServicerContext method the servicer calls."""

    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")


def _time(fn, requests) -> dict:
    ns = []
    for r in requests:
        t = time.perf_counter_ns()
        fn(r)
        ns.append(time.perf_counter_ns() - t)
    return latency_summary_ms(ns[WARMUP:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, required=True, help="artifact directory with search/")
    ap.add_argument("--log", type=Path, required=True, help="AOL-format log (the requests)")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.n <= WARMUP:
        print(f"--n must be > {WARMUP}", file=sys.stderr)
        return 2

    from qac.completer import Completer
    from serving.search_service import load_search_service
    from serving.search_types import SearchContext
    from serving.servicer import QueryServiceServicer

    requests = build_workload({"complete"}, args.log, Path(), seed=0, max_points=args.n).complete
    completer = Completer.load(args.artifacts)
    completer.warmup()
    ctx = _Context()
    with tempfile.TemporaryDirectory(prefix="complete-path-") as state:
        search = load_search_service(args.artifacts, state)
        try:
            search.warmup()
            alone = QueryServiceServicer(completer)
            logged = QueryServiceServicer(completer, search_service=search)
            context = SearchContext(session_id="s", user_id="u", previous_queries=(), timestamp=0)
            result = {
                "machine": machine_info(), "n_timed": len(requests) - WARMUP,
                "servicer_complete_no_search_ms": _time(lambda r: alone.Complete(r, ctx).SerializeToString(), requests),
                "servicer_complete_with_decision_log_ms": _time(
                    lambda r: logged.Complete(r, ctx).SerializeToString(), requests),
                "completer_complete_ms": _time(
                    lambda r: completer.complete(list(r.session.previous_queries), r.prefix, r.k), requests),
                "record_completion_ms": _time(
                    lambda r: search.record_completion(context, r.prefix, [r.prefix] * 10), requests),
            }
        finally:
            search.close()
    for key, v in result.items():
        if key.endswith("_ms"):
            print(f"{key:<42} p50 {v['p50']:.3f} ms  p99 {v['p99']:.3f} ms  (n={v['n']})")
    print(f"load average {result['machine']['loadavg_1m']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
