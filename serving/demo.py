"""``qac demo``: the quick start's main job on real data.

Builds the completion index from the shared AOL log minus its last day (unless already built), starts
``qac serve`` as a real process on 127.0.0.1, checks health, sends real completion requests (sessions
and prefixes from that held-out last day, so the index has never seen them) over gRPC, prints them,
and stops the server.
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

AOL_LOG = Path("aol") / "aol_top1000_users.before_2006-05-25.tsv.gz"
HELD_OUT_DAY = "2006-05-24"


def start_server(artifacts: Path, timeout: float = 120.0, extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """Start ``qac serve`` on 127.0.0.1 with a free port; return (process, "host:port") once healthy.

    Raises
    ------
    RuntimeError
        If the server exits or does not report ``serving on HOST:PORT`` within ``timeout`` seconds.
    """
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--artifacts", str(artifacts), "--port", "0", *extra_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode} before serving")
            continue
        if line.startswith("serving on "):
            return proc, line.split("serving on ", 1)[1].strip()
    proc.kill()
    raise RuntimeError(f"server did not report serving within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM the server and wait for its graceful exit (SIGKILL after ``timeout``)."""
    proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def sample_requests(log_path: Path, n: int, seed: int = 7) -> list:
    """``n`` real completion points (previous query, prefix, true next query) from the held-out day."""
    from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions

    log = read_aol_log(log_path, since=HELD_OUT_DAY)
    points = make_points(split_sessions(log.events, SessionConfig()), seed)
    rng = random.Random(seed)
    return rng.sample(points, min(n, len(points)))


def run_demo(args: argparse.Namespace) -> int:
    from serving.client import check_health, complete, format_completions

    data = Path(args.data)
    log_path = data / AOL_LOG
    if not log_path.is_file():
        print(f"qac demo: the shared AOL log is not at {log_path} (use --data)", file=sys.stderr)
        return 2
    artifacts = Path(args.workdir) / "artifacts"
    if args.rebuild or not (artifacts / "manifest.json").is_file():
        from qac.build import build_completion

        print(f"== building the completion index from {log_path} (events before {HELD_OUT_DAY})", flush=True)
        report = build_completion(log_path, artifacts, until=HELD_OUT_DAY)
        print(report.format(), flush=True)
    else:
        print(f"== using the index already built in {artifacts} (--rebuild to rebuild)", flush=True)

    print("== starting qac serve on 127.0.0.1", flush=True)
    proc, target = start_server(artifacts)
    try:
        print(f"== server at {target}, health: {check_health(target)}", flush=True)
        requests = sample_requests(log_path, args.n_requests)
        print(f"== {len(requests)} real requests from {HELD_OUT_DAY}, a day the index has not seen\n", flush=True)
        hits = 0
        for p in requests:
            prev = [p.prev_query] if p.prev_query else []
            results = complete(target, p.prefix, prev, k=10, session_id=f"demo-{p.user_id}", user_id=p.user_id)
            rank = next((i + 1 for i, r in enumerate(results) if r[0] == p.next_query), None)
            hits += rank is not None
            print(format_completions(p.prefix, prev, results))
            print(f"   true next query: {p.next_query!r} -> {'rank ' + str(rank) if rank else 'not in top 10'}\n",
                  flush=True)
        print(f"== {hits}/{len(requests)} held-out requests had the true next query in the top 10 "
              f"(`qac evaluate completion` measures this over whole test weeks)", flush=True)
    finally:
        code = stop_server(proc)
        print(f"== server stopped (exit code {code})", flush=True)
    return 0
