"""Benchmark: what one RPC costs the server, closed loop (one request at a time), by RPC kind.

Usage::

    python -m bench.rpc_cost --artifacts runs/dev/final_art [--rpcs echo,complete,search_aol]
        [--n 600] [--gap-ms 0,2,10] [--server-cpus 0] [--client-cpus 1] [--json OUT]

The open-loop load test (:mod:`bench.load`) reports the server's CPU per request under a given
arrival rate, where queueing, idle gaps and thread hand-offs all play a part. This benchmark takes
them out: it starts ``qac serve`` on 127.0.0.1 (through this module, which wraps the servicer's
``Complete`` and ``Search`` handlers to record their own thread CPU time), sends ``--n`` requests of
each kind one after the other from the real dev test log (the load test's request sets), and reports
per kind:

- the client-seen latency (p50 / p99, ms);
- the server process's CPU per request (``/proc/PID/stat`` user + system, ms): handler + gRPC;
- the handler's thread CPU per request (``time.thread_time_ns`` around the handler, ms), so that
  ``process - handler`` is what the gRPC plumbing costs (compare the ``echo`` row, which has no
  handler of ours).

``--gap-ms`` repeats each kind with the client sleeping that many milliseconds after every answer
(rows ``KIND@GAPms``; the default ``0`` gives rows named ``KIND``): an open-loop server at a moderate
rate idles between requests, and on a VM whose idle CPU the host takes back, the next request then
finds its caches cold. Gap 0 is that comparison's baseline, in the same run.

Baseline in the same run: the ``echo`` RPC (``qac.v1.Echo``), the floor Python gRPC costs. The machine
info and load average go into the JSON; the server's CPU per request moves with what else the machine
runs (README, "Load test").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import machine_info, write_json

KINDS = ("echo", "complete", "search_aol")
STATS_PREFIX = "rpc_cost handler stats: "


# ------------------------------------------------------------------ the instrumented server side

def serve_instrumented(argv: list[str]) -> int:
    """``qac serve ARGS`` with ``Complete``/``Search`` wrapped to record their thread CPU time (ns);
    at exit one ``STATS_PREFIX + JSON`` line on stderr: ``{rpc: [thread_cpu_ns, ...]}``."""
    from serving import cli
    from serving.servicer import QueryServiceServicer

    stats: dict[str, list[int]] = {"Complete": [], "Search": []}
    lock = threading.Lock()

    def wrap(name: str) -> None:
        handler = getattr(QueryServiceServicer, name)

        def timed(self, request, context):
            c0 = time.thread_time_ns()
            try:
                return handler(self, request, context)
            finally:
                spent = time.thread_time_ns() - c0
                with lock:
                    stats[name].append(spent)

        setattr(QueryServiceServicer, name, timed)

    for name in stats:
        wrap(name)
    try:
        return cli.main(argv)
    finally:
        print(STATS_PREFIX + json.dumps(stats), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- the client side

def run(artifacts: Path, kinds: list[str], n: int, warmup: int, server_cpus, client_cpus, log: Path,
        progress=print, gaps_ms: tuple[float, ...] = (0.0,)) -> dict:
    """Start the instrumented server, send each kind closed loop, stop the server; the report dict."""
    import grpc

    from bench import load
    from serving.pb.qac.v1 import echo_pb2, echo_pb2_grpc, qac_service_pb2_grpc

    workload = load.build_workload({"complete", "search_aol"} & set(kinds) or {"complete"}, log, None, 0,
                                   max(n + warmup, 1))
    report: dict = {"machine": machine_info(), "config": {"artifacts": str(artifacts), "n": n, "warmup": warmup,
                                                          "kinds": kinds, "log": str(log), "gaps_ms": list(gaps_ms)}}
    names = {g: (lambda kind: kind) if list(gaps_ms) == [0.0] else (lambda kind, g=g: f"{kind}@{g:g}ms")
             for g in gaps_ms}
    with tempfile.TemporaryDirectory(prefix="qac-rpc-cost-") as tmp:
        server = load.SpawnedServer(artifacts, "threads", 8, 1, Path(tmp) / "state", Path(tmp) / "serve.log",
                                    module="bench.rpc_cost", cpus=server_cpus)
        own = os.sched_getaffinity(0)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        report["server"] = {"command": server.command, "cpus": server.cpus}
        report["config"]["client_cpus_in_effect"] = sorted(os.sched_getaffinity(0))
        rows = {}
        try:
            with grpc.insecure_channel(server.target) as channel:
                stub = qac_service_pb2_grpc.QueryServiceStub(channel)
                echo = echo_pb2_grpc.EchoStub(channel)
                send = {"echo": lambda i: echo.Echo(echo_pb2.EchoRequest(), timeout=10),
                        "complete": lambda i: stub.Complete(workload.complete[i % len(workload.complete)], timeout=10),
                        "search_aol": lambda i: stub.Search(workload.search_aol[i % len(workload.search_aol)],
                                                            timeout=10)}
                for kind in kinds:
                    for i in range(warmup):
                        send[kind](i)
                    for gi, gap in enumerate(gaps_ms):
                        latencies = []
                        c0 = load.cpu_seconds([server.pid])
                        for i in range(warmup + gi * n, warmup + (gi + 1) * n):
                            t0 = time.perf_counter_ns()
                            send[kind](i)
                            latencies.append(time.perf_counter_ns() - t0)
                            if gap:
                                time.sleep(gap / 1e3)
                        cpu_ms = (load.cpu_seconds([server.pid]) - c0) * 1e3 / n
                        name = names[gap](kind)
                        rows[name] = {"latency_ms": load.latency_summary_ms(latencies), "gap_ms": gap,
                                      "server_cpu_ms_per_request": cpu_ms, "loadavg_1m": os.getloadavg()[0]}
                        progress(f"{name:11s} n={n}  client-seen p50 {rows[name]['latency_ms']['p50']:.3f} ms "
                                 f"p99 {rows[name]['latency_ms']['p99']:.3f} ms  server CPU {cpu_ms:.3f} ms/request")
        finally:
            report["server"]["exit_code"] = server.stop()
            os.sched_setaffinity(0, own)
        handler = _handler_stats(Path(tmp) / "serve.log")
    # Handler samples, in send order: the warm-up requests, then n per gap.
    for kind, rpc in (("complete", "Complete"), ("search_aol", "Search")):
        if kind in kinds:
            samples = handler.get(rpc, [])
            for gi, gap in enumerate(gaps_ms):
                name = names[gap](kind)
                cpu = rows[name]["handler_thread_cpu_ms"] = load.latency_summary_ms(
                    samples[warmup + gi * n:warmup + (gi + 1) * n])
                progress(f"{name:11s} handler thread CPU mean {cpu['mean'] or 0.0:.3f} ms")
    report["rpcs"] = rows
    return report


def _handler_stats(log_path: Path) -> dict:
    for line in reversed(log_path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.startswith(STATS_PREFIX):
            return json.loads(line[len(STATS_PREFIX):])
    raise RuntimeError(f"the server left no handler stats in {log_path}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the spawned, instrumented server
        return serve_instrumented(argv)
    from bench.load import DEFAULT_LOG, parse_cpus

    ap = argparse.ArgumentParser(prog="python -m bench.rpc_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--rpcs", default=",".join(KINDS), help=f"comma-separated, of {KINDS}")
    ap.add_argument("--n", type=int, default=600, help="timed requests per kind")
    ap.add_argument("--warmup", type=int, default=100, help="untimed requests per kind first")
    ap.add_argument("--server-cpus", default=None, metavar="LIST")
    ap.add_argument("--client-cpus", default=None, metavar="LIST")
    ap.add_argument("--log", type=Path, default=DEFAULT_LOG, help="AOL-format log the requests come from")
    ap.add_argument("--gap-ms", default="0", metavar="LIST",
                    help="comma-separated idle gaps after each answer, ms (each kind measured at each)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    try:
        kinds = [k.strip() for k in args.rpcs.split(",") if k.strip()]
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"--rpcs: unknown {bad}, choose from {KINDS}")
        if args.n < 1 or args.warmup < 0:
            raise ValueError("--n must be >= 1 and --warmup >= 0")
        try:
            gaps = tuple(float(g) for g in args.gap_ms.split(",") if g.strip())
        except ValueError:
            raise ValueError(f"--gap-ms {args.gap_ms!r}: comma-separated numbers of milliseconds") from None
        if not gaps or len(set(gaps)) != len(gaps) or any(not 0 <= g <= 1000 for g in gaps):
            raise ValueError(f"--gap-ms {args.gap_ms!r}: distinct values in 0..1000")
        server_cpus = parse_cpus(args.server_cpus) if args.server_cpus else None
        client_cpus = parse_cpus(args.client_cpus) if args.client_cpus else None
        if not Path(args.log).is_file():
            raise ValueError(f"--log {args.log}: no such file")
    except ValueError as exc:
        print(f"bench.rpc_cost: error: {exc}", file=sys.stderr)
        return 2
    report = run(args.artifacts, kinds, args.n, args.warmup, server_cpus, client_cpus, args.log,
                 progress=lambda s: print(s, flush=True), gaps_ms=gaps)
    print(f"machine: {report['machine']}")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
