"""The ``qac`` command: build, serve, complete, evaluate, split, demo.

Only this module (the CLI) configures logging. Command names and JSON keys are a contract other
tools depend on (see README).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _write_json(path: str, obj: dict) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a report."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def cmd_build(args: argparse.Namespace) -> int:
    from qac.config import BuildConfig
    from retrieval.build import build_all

    overrides = json.loads(args.config) if args.config else {}
    if args.trie_depth is not None:
        overrides["trie_depth"] = args.trie_depth
    config = BuildConfig.from_dict({**BuildConfig().to_dict(), **overrides})
    blocklist = None
    if args.blocklist:
        from qac.blocklist import Blocklist

        blocklist = Blocklist.load(args.blocklist)
    result = build_all(args.log, args.out, completion_config=config, catalog=args.catalog, judgments=args.judgments,
                       since=args.since, until=args.until, search=not args.no_search, progress=not args.quiet,
                       blocklist=blocklist)
    print(result["completion"].format())
    for name, rep in result["search"].items():
        secs = ", ".join(f"{k} {v:.1f} s" for k, v in rep["seconds"].items())
        print(f"search {name}: {rep['n_items']:,} items, {rep['n_interactions']:,} interactions; {secs}")
    print(f"artifacts written to {args.out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.server import main_serve

    return main_serve(args) or 0


def cmd_complete(args: argparse.Namespace) -> int:
    from serving.client import main_complete

    return main_complete(args) or 0


def cmd_search(args: argparse.Namespace) -> int:
    from serving.client import main_search

    return main_search(args) or 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from serving.client import main_feedback

    return main_feedback(args) or 0


def cmd_evaluate_completion(args: argparse.Namespace) -> int:
    from qac.completer import Completer
    from qac.evaluate import evaluate_completion

    comp = Completer.load(args.artifacts)
    if args.inference:
        comp = comp.with_inference(**json.loads(args.inference))
    if args.without_arms:
        comp = comp.without_arms(args.without_arms.split(","))
    result = evaluate_completion(args.artifacts, args.log, seed=args.seed, since=args.since, until=args.until,
                                 max_points=args.max_points, completer=comp, online=args.online,
                                 per_arm=not args.no_arms, progress=lambda s: print(s, file=sys.stderr, flush=True))
    _write_json(args.json, result)
    mpc = result["baselines"]["mpc"]
    print(f"n_points={result['n_points']}  {'online' if args.online else 'static'}  "
          f"MRR@10={result['mrr@10']:.4f} (MPC {mpc['mrr@10']:.4f})  "
          f"success@10={result['success@10']:.4f} (MPC {mpc['success@10']:.4f})  bleu={result['bleu']:.4f}")
    for name, rep in result.get("arms", {}).items():
        print(f"  arm {name:>12}: MRR@10={rep['mrr@10']:.4f}")
    if "cascade" in result["baselines"]:
        print(f"  cascade (no ranker): MRR@10={result['baselines']['cascade']['mrr@10']:.4f}")
    for b, r in result["by_prefix_length"].items():
        print(f"  prefix {b:>4}: MRR@10={r['mrr@10']:.4f} (MPC {mpc['by_prefix_length'][b]['mrr@10']:.4f})  "
              f"n={r['n_points']}")
    lat = result["latency_ms"]
    print(f"  latency: p50={lat['p50']:.3f} ms  p99={lat['p99']:.3f} ms")
    print(f"report written to {args.json}")
    return 0


def cmd_evaluate_search(args: argparse.Namespace) -> int:
    from serving.evaluate_search import evaluate_search_judgments, evaluate_search_log

    def say(s):
        print(s, file=sys.stderr, flush=True)

    if bool(args.log) == bool(args.judgments):
        raise ValueError("give exactly one of --log (AOL click replay) or --judgments (graded judgments)")
    if args.log:
        result = evaluate_search_log(args.artifacts, args.log, seed=args.seed, max_events=args.max_events, progress=say)
        print(f"n_events={result['n_events']}  recall@20={result['recall@20']:.4f}  recall@100={result['recall@100']:.4f}  "
              f"mrr@10={result['mrr@10']:.4f}  best fixed arm {result['best_fixed_arm']['name']} "
              f"{result['best_fixed_arm']['recall@20']:.4f}  oracle single arm {result['oracle_single_arm']['recall@20']:.4f}")
    else:
        result = evaluate_search_judgments(args.artifacts, args.judgments, seed=args.seed, progress=say)
        print(f"n_queries={result['n_queries']}  recall@100={result['recall@100']:.4f}  ndcg@10={result['ndcg@10']:.4f} "
              f"(BM25 order {result['baselines']['bm25_order_ndcg@10']:.4f})")
    for name, r in result["arms"].items():
        print(f"  arm {name:<11} " + "  ".join(f"{k}={v:.4f}" for k, v in r.items()))
    lat = result["latency_ms"]
    print(f"  Search latency: p50={lat['p50']:.2f} ms  p99={lat['p99']:.2f} ms")
    _write_json(args.json, result)
    print(f"report written to {args.json}")
    return 0


def cmd_evaluate_sessions(args: argparse.Namespace) -> int:
    from qac.sessions_eval import evaluate_splitters, format_table

    result = evaluate_splitters(args.gold)
    _write_json(args.json, result)
    print(format_table(result))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    if bool(args.log) == bool(args.judgments):
        raise ValueError("give exactly one of --log (split at --at) or --judgments (split by search term)")
    if args.log:
        from qac.logs import split_log_file

        if not args.at:
            raise ValueError("--at is required with --log")
        split_log_file(args.log, args.train, args.test, args.at)
        print(f"wrote {args.train} (before {args.at}) and {args.test} (from {args.at})")
    else:
        from retrieval.splits import write_judgments_split

        n_train, n_test = write_judgments_split(args.judgments, args.train, args.test, args.test_fraction, args.seed)
        print(f"wrote {args.train} ({n_train} judgments) and {args.test} ({n_test}), split by search term")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from serving.demo import run_demo

    return run_demo(args)


def cmd_bench_load(args: argparse.Namespace) -> int:
    from bench.load import main as load_main

    return load_main(args.bench_argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qac", description="Session-aware query autocompletion service")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build the completion index from an AOL-format log")
    b.add_argument("--log", required=True, help="AOL-format log (gzip or TSV)")
    b.add_argument("--out", required=True, help="artifact directory to write (atomically)")
    b.add_argument("--since", help="use events from this date (YYYY-MM-DD)")
    b.add_argument("--until", help="use events before this date (YYYY-MM-DD)")
    b.add_argument("--trie-depth", type=int, help="trie depth of the hybrid label tree")
    b.add_argument("--config", help="JSON object of BuildConfig overrides")
    b.add_argument("--catalog", help="Home Depot products.tsv.gz (search over products; needs --judgments)")
    b.add_argument("--judgments", help="Home Depot graded judgments (training part) for --catalog")
    b.add_argument("--no-search", action="store_true", help="build the completion index only")
    b.add_argument("--blocklist", help="file of terms (one per line): queries containing one are left out of the "
                   "completion index, and the terms are applied again at query time")
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    b.set_defaults(func=cmd_build)

    s = sub.add_parser("serve", help="serve the gRPC API")
    s.add_argument("--artifacts", required=True, help="artifact directory from `qac build`")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    s.add_argument("--max-workers", type=int, default=8,
                   help="threads answering RPCs (--mode threads) or running health/reflection (asyncio)")
    s.add_argument("--mode", choices=("threads", "asyncio"), default=None,
                   help="grpc thread-pool server or grpc.aio server answering on its event loop "
                        "(default: threads; README 'Load test')")
    s.add_argument("--processes", type=int, default=1,
                   help="N > 1: N processes sharing the port (SO_REUSEPORT) and the --state directory")
    s.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT (used by --processes)")
    s.add_argument("--switch-interval-ms", type=float, default=None,
                   help="GIL switch interval of the serving process in ms (Python's default 5; README 'Load test')")
    s.add_argument("--no-search", action="store_true", help="serve completion only, even if search/ exists")
    s.add_argument("--state", help="state directory (SQLite event log + snapshots) for Search/Feedback")
    s.add_argument("--shared-state", action="store_true",
                   help="open --state together with other server processes (used by --processes)")
    s.add_argument("--blocklist", help="file of terms (one per line) no completion may contain, on top of the "
                   "artifact's build-time blocklist")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("complete", help="ask a running server for completions")
    c.add_argument("--target", default="127.0.0.1:50051")
    c.add_argument("--prefix", required=True)
    c.add_argument("--previous", action="append", default=[], help="a previous query (repeat, oldest first)")
    c.add_argument("--k", type=int, default=10)
    c.add_argument("--session-id", default="")
    c.add_argument("--user-id", default="")
    c.add_argument("--preview-k", type=int, default=0, help="attach this many search results to top completions")
    c.add_argument("--preview-completions", type=int, default=0, help="how many completions get previews (0: 3)")
    c.add_argument("--catalog", default="", help="item catalogue of the previews")
    c.set_defaults(func=cmd_complete)

    q = sub.add_parser("search", help="ask a running server to search")
    q.add_argument("--target", default="127.0.0.1:50051")
    q.add_argument("--query", required=True)
    q.add_argument("--previous", action="append", default=[], help="a previous query (repeat, oldest first)")
    q.add_argument("--k", type=int, default=10)
    q.add_argument("--catalog", default="")
    q.add_argument("--session-id", default="")
    q.add_argument("--user-id", default="")
    q.set_defaults(func=cmd_search)

    f = sub.add_parser("feedback", help="report a click or an accepted suggestion to a running server")
    f.add_argument("--target", default="127.0.0.1:50051")
    f.add_argument("--decision-id", required=True)
    f.add_argument("--item", help="clicked item id")
    f.add_argument("--suggestion", help="accepted suggestion")
    f.add_argument("--issued-query", help="the query the user issued after a Complete (not a suggestion)")
    f.add_argument("--position", type=int, default=0)
    f.set_defaults(func=cmd_feedback)

    e = sub.add_parser("evaluate", help="offline evaluation")
    esub = e.add_subparsers(dest="what", required=True)
    ec = esub.add_parser("completion", help="replay a test log (DESIGN.md protocol)")
    ec.add_argument("--artifacts", required=True)
    ec.add_argument("--log", required=True, help="AOL-format test log")
    ec.add_argument("--json", required=True, help="output JSON path")
    ec.add_argument("--seed", type=int, default=0)
    ec.add_argument("--since")
    ec.add_argument("--until")
    ec.add_argument("--max-points", type=int)
    ec.add_argument("--inference", help='JSON object of InferenceConfig overrides, e.g. \'{"beam_size": 20}\'; '
                    'PECOS behaviour: \'{"prefix_constrained": false, "suffix_completions": false, '
                    '"ranked": false}\'')
    ec.add_argument("--online", action="store_true",
                    help="replay in time order and feed back each issued query after its point (online learning)")
    ec.add_argument("--without-arms", help="comma-separated arms left out of the ranked union (ablation)")
    ec.add_argument("--no-arms", action="store_true", help="skip the per-arm and cascade scores (faster)")
    ec.set_defaults(func=cmd_evaluate_completion)
    eq = esub.add_parser("search", help="replay a click log through Search+Feedback, or score judgments")
    eq.add_argument("--artifacts", required=True)
    eq.add_argument("--log", help="AOL-format test log (replayed in time order; the bandit learns online)")
    eq.add_argument("--judgments", help="Home Depot test judgments (search_term, product_uid, relevance)")
    eq.add_argument("--json", required=True)
    eq.add_argument("--seed", type=int, default=0)
    eq.add_argument("--max-events", type=int, help="replay only the first N query events")
    eq.set_defaults(func=cmd_evaluate_search)
    es = esub.add_parser("sessions", help="session splitter vs human session boundaries")
    es.add_argument("--gold", required=True, help="aol_gayo_avello_sessions.csv.gz")
    es.add_argument("--json", required=True)
    es.set_defaults(func=cmd_evaluate_sessions)

    sp = sub.add_parser("split", help="dev splits: an AOL-format log at a date, or judgments by search term")
    sp.add_argument("--log")
    sp.add_argument("--at", help="YYYY-MM-DD: rows before go to --train, the rest to --test")
    sp.add_argument("--judgments", help="judgments TSV to split by search term")
    sp.add_argument("--test-fraction", type=float, default=0.2)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--train", required=True)
    sp.add_argument("--test", required=True)
    sp.set_defaults(func=cmd_split)

    d = sub.add_parser("demo", help="build from the shared data, serve, answer real requests")
    d.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--n-requests", type=int, default=12)
    d.add_argument("--rebuild", action="store_true")
    d.set_defaults(func=cmd_demo)

    bn = sub.add_parser("bench", help="benchmarks")
    bsub = bn.add_subparsers(dest="benchmark", required=True)
    # Its options belong to bench.load (`qac bench load --help`); they are passed through unparsed.
    bsub.add_parser("load", add_help=False, help="open-loop gRPC load test against a local server"
                    ).set_defaults(func=cmd_bench_load)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "func", None) is not cmd_bench_load:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.bench_argv = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"qac {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
