"""Open-loop gRPC load test of a local ``qac serve`` process, with the Echo floor in the same run.

Usage::

    python -m bench.load --artifacts runs/dev/full_art --mode threads \\
        --mix complete=100,250,500 --mix search_aol=50,100,200 --duration 10 \\
        --json runs/load/threads.json --plot runs/load/threads.png
    python -m bench.load --target 127.0.0.1:50051 --server-pid 12345 --mix complete=500 ...
    qac bench load ...   (the same options)

With ``--artifacts`` the benchmark starts ``python -m serving.cli serve`` itself (``--mode``,
``--max-workers``, ``--processes``; a temporary ``--state`` directory) and stops it at the end;
with ``--target`` it measures a server that is already running, whose pid(s) ``--server-pid`` names
(the descendants of each named pid are measured too). Targets are loopback only.

Open loop: request ``i`` of a step is *scheduled* at ``t0 + i / rate`` and sent then, whether or not
earlier requests have been answered, and its latency is measured from the scheduled time, so a
slow server (or a late client) shows up as latency instead of as a lower send rate (no coordinated
omission). A step sends ``min(rate * duration, --max-requests)`` requests and waits for each at most
``--timeout`` seconds (then it counts as DEADLINE_EXCEEDED). Requests are spread round-robin over
``--channels`` channels, each its own TCP connection, so ``--processes`` servers all get traffic.

Mixes (request sets built from real data before the first step):

``complete``
    Complete(k=10) on the (previous query, prefix) points of ``--log`` (``qac.logs.make_points``:
    sessions cut at 30 min, one seeded uniform prefix per consecutive pair), with the session.
``complete_preview``
    The same with ``preview_k=3`` (the top 3 completions each searched, catalog "aol").
``search_aol``
    Search(k=10, catalog "aol") for the real next queries of those points, with their sessions.
``search_homedepot``
    Search(k=10, catalog "homedepot") for the distinct search terms of ``--judgments``.
``feedback``
    Feedback clicking one returned item (seeded uniform position) of a Search answered earlier in
    the same run, each decision once, so every request is a durable commit. If the run has not
    collected enough decisions yet, AOL searches are sent first (closed loop, reported as
    ``feedback_setup``).
``echo``
    ``qac.v1.Echo`` with a 32-byte payload: the floor. It is measured at every offered rate of the
    run, and every row reports ``ratio_to_echo`` = its p50 / echo p50 and p99 / echo p99 at the same
    offered rate.

Every step reports achieved rate, latency percentiles from the scheduled send time
(``latency_ms``), the client's own lateness (``send_lag_ms``: actual minus scheduled send time),
errors by status code, server CPU (user+system seconds of the server processes per wall second,
from ``/proc/PID/stat``; 1.0 = one core busy) and server RSS (sum over the processes, MB, at the
step's start, end and the largest sample, sampled every 0.25 s from ``/proc/PID/status``), and the
1-minute load average. ``--soak SECONDS`` then runs every mix at once, each at its highest rate,
for that long, and reports RSS growth. Output: JSON (``--json``) and, when matplotlib is installed
(``pip install '.[bench]'``), a PNG of p50/p99/p99.9 against offered rate per mix (``--plot``).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import os
import queue
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from bench.common import machine_info

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOG = REPO_ROOT / "runs" / "dev" / "test.tsv.gz"  # the dev test week (README, "Measured results")
DEFAULT_JUDGMENTS = REPO_ROOT.parent / "shared" / "data" / "homedepot" / "judgments.train.tsv.gz"
MIX_NAMES = ("echo", "complete", "complete_preview", "search_aol", "search_homedepot", "feedback")
PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))
ECHO_PAYLOAD = b"x" * 32
RSS_SAMPLE_S = 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------- checks

def check_loopback_target(target: str) -> str:
    """Return ``target`` (``host:port``) if its host is a loopback address, else raise.

    Accepted hosts: ``localhost``, any IPv4 address in 127.0.0.0/8, ``[::1]``.

    Raises
    ------
    ValueError
        For any other host, a URI scheme (``dns:///...``, ``unix:...``), or a missing/bad port;
        the message names the target.
    """
    if not isinstance(target, str) or "/" in target or target.startswith("unix:"):
        raise ValueError(f"target {target!r}: give host:port of a loopback address (no URI schemes)")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {target!r}: expected host:port with a port in 1..65535")
    if host == "localhost":
        return target
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        loopback = ipaddress.ip_address(bare).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"target {target!r}: load tests only target loopback (127.0.0.1, localhost, [::1])")
    return target


# ----------------------------------------------------------------------------------- statistics

def latency_summary_ms(latencies_ns: Sequence[int] | np.ndarray) -> dict:
    """Percentiles of durations, in milliseconds.

    Parameters
    ----------
    latencies_ns : array-like of int, shape (n,)
        Durations in nanoseconds.

    Returns
    -------
    dict
        ``n`` and ``p50``, ``p95``, ``p99``, ``p99.9``, ``max``, ``mean`` in ms (``numpy.percentile``,
        linear interpolation); the percentiles are None when ``n == 0``.
    """
    a = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        return {"n": 0, **{k: None for k, _ in PERCENTILES}, "max": None, "mean": None}
    qs = np.percentile(a, [q for _, q in PERCENTILES])
    return {"n": int(a.size), **{k: float(v) for (k, _), v in zip(PERCENTILES, qs)},
            "max": float(a.max()), "mean": float(a.mean())}


def process_tree(pids: Sequence[int]) -> list[int]:
    """``pids`` and all their descendants (from ``/proc/PID/task/TID/children``), sorted, unique.

    Raises
    ------
    ValueError
        If a given pid does not exist.
    """
    out: set[int] = set()
    todo = list(pids)
    for pid in pids:
        if not Path(f"/proc/{pid}").is_dir():
            raise ValueError(f"server pid {pid}: no such process")
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.add(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return sorted(out)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds consumed so far by ``pids`` (``/proc/PID/stat`` fields 14, 15);
    processes that exited are skipped."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mb_total(pids: Sequence[int]) -> float:
    """Sum of VmRSS over ``pids`` in MB (shared memory-mapped pages count once per process)."""
    total_kb = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kb / 1024


# ------------------------------------------------------------------------------- open-loop core

@dataclass
class StepResult:
    """Raw outcome of one open-loop run: one entry per request, in schedule order.

    ``latency_ns[i]`` is response time minus *scheduled* send time; ``lag_ns[i]`` actual minus
    scheduled send time; ``status[i]`` the gRPC status name (``"OK"``, ``"DEADLINE_EXCEEDED"``,
    ...). ``wall_s`` is the time from the first scheduled send to the last response.
    """

    latency_ns: np.ndarray
    lag_ns: np.ndarray
    status: list[str]
    wall_s: float


async def run_open_loop(send: Callable[[int], Awaitable[Any]], rate: float, n_requests: int,
                        *, error_name: Callable[[BaseException], str] | None = None) -> StepResult:
    """Send ``n_requests`` requests at a constant arrival rate, each without waiting for the others.

    Request ``i`` is scheduled at ``t0 + i / rate`` (``t0`` = now); the coroutine ``send(i)`` is
    started at that time (all requests whose time has come are started together when the event
    loop wakes late) and its latency is measured from the scheduled time to its completion.

    Parameters
    ----------
    send : callable
        ``send(i)`` returns an awaitable that completes when request ``i`` is answered; it should
        enforce its own deadline. An exception marks the request failed (see ``error_name``).
    rate : float
        Arrival rate, requests per second (> 0).
    n_requests : int
        Number of requests (>= 1).
    error_name : callable, optional
        Maps an exception to a status name (default: its ``code().name`` if it has one, else the
        exception's class name).

    Returns
    -------
    StepResult

    Raises
    ------
    ValueError
        If ``rate <= 0`` or ``n_requests < 1``.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
    if n_requests < 1:
        raise ValueError(f"n_requests must be >= 1, got {n_requests!r}")
    name_of = error_name or _status_name
    latency = np.zeros(n_requests, dtype=np.int64)
    lag = np.zeros(n_requests, dtype=np.int64)
    status = ["OK"] * n_requests
    period_ns = 1e9 / rate
    t0 = time.perf_counter_ns()
    done_at = [t0]

    async def one(i: int, scheduled: int) -> None:
        lag[i] = time.perf_counter_ns() - scheduled
        try:
            await send(i)
        except Exception as exc:  # counted by status, never fatal to the run
            status[i] = name_of(exc)
        end = time.perf_counter_ns()
        latency[i] = end - scheduled
        done_at[0] = max(done_at[0], end)

    tasks = []
    i = 0
    while i < n_requests:
        now = time.perf_counter_ns()
        while i < n_requests and t0 + int(i * period_ns) <= now:
            tasks.append(asyncio.ensure_future(one(i, t0 + int(i * period_ns))))
            i += 1
        if i < n_requests:
            await asyncio.sleep((t0 + int(i * period_ns) - time.perf_counter_ns()) / 1e9)
    await asyncio.gather(*tasks)
    return StepResult(latency, lag, status, (done_at[0] - t0) / 1e9)


def _status_name(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return code().name
        except Exception:  # noqa: BLE001 - fall back to the class name
            pass
    return type(exc).__name__


def summarize(result: StepResult, rate: float) -> dict:
    """Per-step numbers: offered and achieved rate, latency and lag percentiles (ms), errors by status.

    ``achieved_rps`` = answered requests (any status) / ``wall_s``; ``ok_rps`` counts only OK ones.
    """
    n = len(result.status)
    codes: dict[str, int] = {}
    for s in result.status:
        if s != "OK":
            codes[s] = codes.get(s, 0) + 1
    ok = np.array([s == "OK" for s in result.status], dtype=bool)
    wall = max(result.wall_s, 1e-9)
    return {"offered_rps": float(rate), "n_requests": n, "n_ok": int(ok.sum()), "errors": codes,
            "wall_s": result.wall_s, "achieved_rps": n / wall, "ok_rps": int(ok.sum()) / wall,
            "latency_ms": latency_summary_ms(result.latency_ns[ok]),
            "send_lag_ms": latency_summary_ms(result.lag_ns)}


# ------------------------------------------------------------------------------ request sets

@dataclass
class Workload:
    """Requests per mix, built once from real data before the first step."""

    complete: list = field(default_factory=list)
    complete_preview: list = field(default_factory=list)
    search_aol: list = field(default_factory=list)
    search_homedepot: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)


def build_workload(mixes: set[str], log: Path, judgments: Path, seed: int, max_points: int) -> Workload:
    """Complete / Search requests from the real AOL log and Home Depot judgments.

    Raises
    ------
    FileNotFoundError
        If a needed data file is missing.
    ValueError
        If the data yields no requests for a requested mix.
    """
    from google.protobuf.timestamp_pb2 import Timestamp

    from serving.pb.qac.v1 import qac_service_pb2 as pb

    w = Workload()
    need_log = mixes & {"complete", "complete_preview", "search_aol", "feedback"}
    if need_log:
        from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions

        if not Path(log).is_file():
            raise FileNotFoundError(f"--log {log}: no such file")
        points = make_points(split_sessions(read_aol_log(log).events, SessionConfig()), seed=seed)
        rng = np.random.default_rng(seed)
        points = [points[j] for j in rng.permutation(len(points))[:max_points]]
        if not points:
            raise ValueError(f"--log {log}: no (previous, next) query pairs")
        for p in points:
            ts = Timestamp(seconds=int(p.timestamp))
            session = pb.Session(session_id=f"{p.user_id}-{p.timestamp}", user_id=str(p.user_id),
                                 previous_queries=[p.prev_query] if p.prev_query else [], timestamp=ts)
            w.complete.append(pb.CompleteRequest(session=session, prefix=p.prefix, k=10))
            w.complete_preview.append(pb.CompleteRequest(session=session, prefix=p.prefix, k=10, preview_k=3,
                                                         catalog="aol"))
            w.search_aol.append(pb.SearchRequest(session=session, query=p.next_query, k=10, catalog="aol"))
        w.sources["log"] = {"path": str(log), "n_points": len(points), "seed": seed}
    if "search_homedepot" in mixes:
        from retrieval.catalog import load_judgments

        if not Path(judgments).is_file():
            raise FileNotFoundError(f"--judgments {judgments}: no such file")
        terms = sorted({j.query for j in load_judgments(judgments)})
        rng = np.random.default_rng(seed)
        terms = [terms[j] for j in rng.permutation(len(terms))[:max_points]]
        for t in terms:
            w.search_homedepot.append(pb.SearchRequest(session=pb.Session(session_id="load", user_id="load"),
                                                       query=t, k=10, catalog="homedepot"))
        w.sources["judgments"] = {"path": str(judgments), "n_terms": len(terms)}
    return w


# ---------------------------------------------------------------------------------- the runner

class LoadClient:
    """grpc.aio channels to one target, and one coroutine factory per mix.

    Search answers are kept as (decision_id, item_id, position) clicks for the ``feedback`` mix;
    each is used once.
    """

    def __init__(self, target: str, n_channels: int, workload: Workload, timeout_s: float, seed: int):
        import grpc

        from serving.pb.qac.v1 import echo_pb2, echo_pb2_grpc, qac_service_pb2, qac_service_pb2_grpc

        self.pb, self.echo_pb2 = qac_service_pb2, echo_pb2
        # A local subchannel pool per channel: one TCP connection each (else grpc shares one).
        opts = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(target, options=opts) for _ in range(n_channels)]
        self.query = [qac_service_pb2_grpc.QueryServiceStub(c) for c in self.channels]
        self.echo = [echo_pb2_grpc.EchoStub(c) for c in self.channels]
        self.workload = workload
        self.timeout = timeout_s
        self.rng = np.random.default_rng(seed)
        self.clicks: list[tuple[str, str, int]] = []
        self._click_next = 0
        self._counter = 0

    async def wait_ready(self, deadline_s: float) -> None:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), deadline_s) for c in self.channels))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _keep_click(self, response: Any) -> None:
        if response.decision_id and len(response.items):
            pos = int(self.rng.integers(len(response.items)))
            self.clicks.append((response.decision_id, response.items[pos].item_id, pos))

    def sender(self, mix: str) -> Callable[[int], Awaitable[Any]]:
        """``send(i)`` for ``mix``: the i-th request of that mix (cycling through its request set).

        Raises
        ------
        ValueError
            For an unknown mix, or a mix without requests.
        """
        n_ch, timeout, w = len(self.channels), self.timeout, self.workload
        if mix == "echo":
            req = self.echo_pb2.EchoRequest(payload=ECHO_PAYLOAD)
            return lambda i: self.echo[self._next() % n_ch].Echo(req, timeout=timeout)
        if mix == "feedback":
            pb = self.pb

            async def feedback(i: int) -> Any:
                if self._click_next >= len(self.clicks):
                    raise RuntimeError("no Search decision left to click")
                decision, item, pos = self.clicks[self._click_next]
                self._click_next += 1
                req = pb.FeedbackRequest(decision_id=decision, clicked_item_id=item, position=pos)
                return await self.query[self._next() % n_ch].Feedback(req, timeout=timeout)

            return feedback
        if mix not in MIX_NAMES:
            raise ValueError(f"unknown mix {mix!r}; choose from {', '.join(MIX_NAMES)}")
        reqs = getattr(w, mix)
        if not reqs:
            raise ValueError(f"mix {mix}: no requests were built")
        if mix.startswith("complete"):
            return lambda i: self.query[self._next() % n_ch].Complete(reqs[i % len(reqs)], timeout=timeout)

        async def search(i: int) -> Any:
            response = await self.query[self._next() % n_ch].Search(reqs[i % len(reqs)], timeout=timeout)
            self._keep_click(response)
            return response

        return search

    def clicks_left(self) -> int:
        return len(self.clicks) - self._click_next

    async def collect_clicks(self, n: int) -> dict:
        """Send AOL searches one after another until ``n`` clicks are available (setup of ``feedback``)."""
        send, sent, t = self.sender("search_aol"), 0, time.perf_counter()
        offset = int(self.rng.integers(1 << 30))
        while self.clicks_left() < n:
            if sent > 4 * n + 100:
                raise RuntimeError(f"feedback setup: {sent} searches gave only {self.clicks_left()} clicks")
            await send(offset + sent)
            sent += 1
        return {"n_searches": sent, "seconds": time.perf_counter() - t}


class ServerMonitor:
    """CPU and RSS of the server processes over one step (RSS sampled in a background thread)."""

    def __init__(self, pids: Sequence[int]):
        self.pids = list(pids)

    def __enter__(self) -> "ServerMonitor":
        self.pids = process_tree(self.pids)
        self._stop = threading.Event()
        self.rss_start = self.rss_max = rss_mb_total(self.pids)
        self.cpu_start = {p: cpu_seconds([p]) for p in self.pids}
        self.t_start = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self.rss_max = max(self.rss_max, rss_mb_total(self.pids))

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = wall = time.perf_counter() - self.t_start
        self.rss_end = rss_mb_total(self.pids)
        self.rss_max = max(self.rss_max, self.rss_end)
        self.cpu_by_pid = {p: (cpu_seconds([p]) - c) / wall for p, c in self.cpu_start.items()}
        self.cpu = sum(self.cpu_by_pid.values())

    def report(self) -> dict:
        return {"server_cpu_cores": self.cpu, "server_cpu_cores_by_pid": {str(p): c for p, c in self.cpu_by_pid.items()},
                "server_rss_mb": {"start": self.rss_start, "end": self.rss_end,
                                                                "max": self.rss_max},
                "server_pids": self.pids}


def _n_requests(rate: float, duration_s: float, max_requests: int) -> int:
    return max(1, min(int(round(rate * duration_s)), max_requests))


async def run_step(client: LoadClient, rates: dict[str, float], duration_s: float, max_requests: int,
                   pids: Sequence[int]) -> dict[str, dict]:
    """Run the mixes in ``rates`` concurrently (each open loop at its rate); one row per mix."""
    setup = None
    if "feedback" in rates:
        need = _n_requests(rates["feedback"], duration_s, max_requests)
        if client.clicks_left() < need:
            setup = await client.collect_clicks(need)
    senders = {m: client.sender(m) for m in rates}
    load_start = os.getloadavg()[0]
    client_cpu, t = time.process_time(), time.perf_counter()
    with ServerMonitor(pids) as mon:
        results = await asyncio.gather(*(run_open_loop(senders[m], r, _n_requests(r, duration_s, max_requests))
                                         for m, r in rates.items()))
    client_cpu = (time.process_time() - client_cpu) / (time.perf_counter() - t)
    rows = {}
    for (m, r), res in zip(rates.items(), results):
        rows[m] = {"mix": m, **summarize(res, r), **mon.report(), "client_cpu_cores": client_cpu,
                   # Comparable across mixes only for single-mix steps (the CPU is the server's total).
                   "server_cpu_ms_per_request": 1e3 * mon.cpu * mon.wall / sum(len(x.status) for x in results),
                   "concurrent_mixes": sorted(rates),
                   "loadavg_1m": {"start": load_start, "end": os.getloadavg()[0]}}
        if m == "feedback" and setup:
            rows[m]["feedback_setup"] = setup
    return rows


def add_echo_ratios(rows: list[dict]) -> None:
    """Set ``ratio_to_echo`` (p50 and p99 over the echo row at the same, else nearest, offered rate)."""
    echo = {r["offered_rps"]: r["latency_ms"] for r in rows if r["mix"] == "echo" and r["latency_ms"]["n"]}
    for r in rows:
        if not echo or r["latency_ms"]["n"] == 0:
            r["ratio_to_echo"] = None
            continue
        at = min(echo, key=lambda x: abs(x - r["offered_rps"]))
        r["ratio_to_echo"] = {"echo_offered_rps": at,
                              "p50": r["latency_ms"]["p50"] / echo[at]["p50"],
                              "p99": r["latency_ms"]["p99"] / echo[at]["p99"]}


async def run_benchmark(target: str, pids: Sequence[int], mix_rates: dict[str, list[float]], *,
                        duration_s: float, max_requests: int, soak_s: float, workload: Workload,
                        channels: int, timeout_s: float, warmup_requests: int, seed: int,
                        pause_s: float = 1.0, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Warm up, sweep every mix over its rates (echo at every rate of the run), then soak.

    Returns
    -------
    dict
        ``steps`` (one row per mix and rate, see :func:`summarize` and :meth:`ServerMonitor.report`,
        plus ``ratio_to_echo``) and ``soak`` (rows of the concurrent soak and ``rss_growth``), or
        ``soak: None``.
    """
    client = LoadClient(target, channels, workload, timeout_s, seed)
    try:
        await client.wait_ready(30.0)
        for m in mix_rates:
            if m != "feedback":
                send = client.sender(m)
                for i in range(warmup_requests):
                    await send(i)
        gc.collect()
        gc.freeze()  # the request sets never change: keep the collector off them during steps
        all_rates = sorted({r for rates in mix_rates.values() for r in rates})
        steps = []
        for rate in all_rates:
            for m in ["echo"] + [m for m in mix_rates if m != "echo"]:
                if m != "echo" and rate not in mix_rates[m]:
                    continue
                row = (await run_step(client, {m: rate}, duration_s, max_requests, pids))[m]
                steps.append(row)
                lat = row["latency_ms"]
                progress(f"{m:<17} {rate:7.0f}/s  achieved {row['achieved_rps']:7.1f}/s  "
                         f"p50 {_ms(lat['p50'])}  p99 {_ms(lat['p99'])}  p99.9 {_ms(lat['p99.9'])}  "
                         f"errors {row['errors'] or 0}  cpu {row['server_cpu_cores']:.2f} "
                         f"(client {row['client_cpu_cores']:.2f}, lag p99 {_ms(row['send_lag_ms']['p99'])})  "
                         f"load {row['loadavg_1m']['end']:.2f}")
                await asyncio.sleep(pause_s)
        add_echo_ratios(steps)
        soak = None
        if soak_s > 0:
            rates = {m: max(r) for m, r in mix_rates.items() if m != "echo"}
            soak_rows = await run_step(client, rates, soak_s, max_requests, pids)
            rows = list(soak_rows.values())
            add_echo_ratios(steps + rows)
            any_row = rows[0]["server_rss_mb"]
            soak = {"seconds": soak_s, "rates": rates, "rows": rows,
                    "rss_growth": (any_row["end"] - any_row["start"]) / any_row["start"] if any_row["start"] else None,
                    "n_errors": sum(sum(r["errors"].values()) for r in rows)}
            for r in rows:
                progress(f"soak {r['mix']:<12} {r['offered_rps']:7.0f}/s  p50 {_ms(r['latency_ms']['p50'])}  "
                         f"p99 {_ms(r['latency_ms']['p99'])}  errors {r['errors'] or 0}")
            progress(f"soak RSS {any_row['start']:.1f} -> {any_row['end']:.1f} MB (max {any_row['max']:.1f})")
        gc.unfreeze()
        return {"steps": steps, "soak": soak}
    finally:
        await client.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An asyncio loop over ``select(2)``, whose timeout has microsecond resolution.

    The default epoll selector rounds every wait up to a whole millisecond, so sends would leave
    up to 1 ms after their scheduled time (measured here: median lag 0.88 ms vs 0.19 ms with
    select on a loaded machine); the load test only ever watches a handful of sockets, far below
    select's descriptor limit.
    """
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def _ms(v: float | None) -> str:
    return "    -   " if v is None else f"{v:7.3f}ms"


# ----------------------------------------------------------------------------------- the server

class SpawnedServer:
    """``python -m serving.cli serve`` (or ``module``'s) started by the benchmark on a free loopback port."""

    def __init__(self, artifacts: Path, mode: str, max_workers: int, processes: int, state_dir: Path,
                 log_path: Path, start_timeout_s: float = 300.0, switch_interval_ms: float | None = None,
                 module: str = "serving.cli", cpus: set[int] | None = None):
        # ``module``: what runs ``serve ARGS`` (``bench.rpc_cost`` wraps the CLI to time its handlers).
        # ``cpus``: the server's CPU mask (it inherits the mask of the thread that forks it).
        self.command = [sys.executable, "-m", module, "serve", "--artifacts", str(artifacts),
                        "--host", "127.0.0.1", "--port", "0", "--mode", mode, "--max-workers", str(max_workers),
                        "--processes", str(processes), "--state", str(state_dir)]
        if switch_interval_ms is not None:
            self.command += ["--switch-interval-ms", str(switch_interval_ms)]
        self._log = open(log_path, "w")
        own = os.sched_getaffinity(0)
        if cpus:
            os.sched_setaffinity(0, cpus)
        try:
            self.proc = subprocess.Popen(self.command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self._log,
                                         text=True)
        finally:
            os.sched_setaffinity(0, own)
        self.cpus = sorted(os.sched_getaffinity(self.proc.pid))
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        try:
            line = lines.get(timeout=start_timeout_s)
        except queue.Empty:
            line = None
        if not line or not line.startswith("serving on "):
            self.stop()
            raise RuntimeError(f"server did not start (see {log_path})")
        self.target = line.split("serving on ", 1)[1].strip()
        self.pid = self.proc.pid

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# ------------------------------------------------------------------------------------- output

def render_plot(report: dict, path: Path) -> str | None:
    """PNG of p50 / p99 / p99.9 latency (ms, log scale) against offered rate, one panel per mix,
    the echo floor (p50, p99) dashed in every panel. Returns None if written, else why not."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'qac-service[bench]' or pip install matplotlib); no plot"
    steps = report["steps"]
    present = {r["mix"] for r in steps}
    mixes = [m for m in MIX_NAMES if m in present and m != "echo"]
    echo = sorted((r["offered_rps"], r["latency_ms"]) for r in steps if r["mix"] == "echo" and r["latency_ms"]["n"])
    n = max(1, len(mixes))
    n_cols = min(n, 3)
    n_rows = -(-n // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.2 * n_cols, 4.2 * n_rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    styles = (("p50", "o-", "tab:blue"), ("p99", "s-", "tab:orange"), ("p99.9", "^-", "tab:red"))
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for ax, mix in zip(axes.flat, mixes or ["echo"]):
        rows = sorted((r["offered_rps"], r["latency_ms"]) for r in steps if r["mix"] == mix and r["latency_ms"]["n"])
        for key, style, color in styles:
            ax.plot([x for x, _ in rows], [lat[key] for _, lat in rows], style, color=color, label=key)
        if mix != "echo" and rows:
            near = [(x, lat) for x, lat in echo if x <= rows[-1][0]]  # the echo floor over this mix's rates
            for key, color in (("p50", "tab:blue"), ("p99", "tab:orange")):
                ax.plot([x for x, _ in near], [lat[key] for _, lat in near], "--", color=color, alpha=0.6,
                        label=f"echo {key}")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(mix)
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel("latency from scheduled send (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    info = report.get("server", {})
    loads = [r["loadavg_1m"]["end"] for r in steps] or [report["machine"]["loadavg_1m"]]
    fig.suptitle(f"qac serve --mode {info.get('mode', '?')} --processes {info.get('processes', '?')}: open loop, "
                 f"{report['config']['duration_s']:g} s per point; 1-min load average {min(loads):.1f}-{max(loads):.1f} "
                 f"on {report['machine']['cpu_count']} CPUs", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def format_table(report: dict) -> str:
    """Markdown table of the sweep (and soak) rows."""
    lines = ["| mix | offered/s | achieved/s | p50 ms | p95 | p99 | p99.9 | max | p50/echo | p99/echo | errors | "
             "server CPU | CPU ms/req | client CPU | RSS MB end | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    rows = list(report["steps"]) + [dict(r, mix=f"soak {r['mix']}") for r in (report.get("soak") or {}).get("rows", [])]
    for r in rows:
        lat, ratio = r["latency_ms"], r.get("ratio_to_echo") or {}

        def f(v: float | None, d: int = 2) -> str:
            return "-" if v is None else f"{v:.{d}f}"

        errs = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        lines.append(f"| {r['mix']} | {r['offered_rps']:.0f} | {r['achieved_rps']:.1f} | {f(lat['p50'])} | "
                     f"{f(lat['p95'])} | {f(lat['p99'])} | {f(lat['p99.9'])} | {f(lat['max'])} | "
                     f"{f(ratio.get('p50'))} | {f(ratio.get('p99'))} | {errs} | {r['server_cpu_cores']:.2f} | "
                     f"{r['server_cpu_ms_per_request']:.2f} | {r['client_cpu_cores']:.2f} | "
                     f"{r['server_rss_mb']['end']:.0f} | {r['loadavg_1m']['end']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- CLI

def parse_mix(spec: str) -> tuple[str, list[float]]:
    """``"complete=100,250,500"`` -> ``("complete", [100.0, 250.0, 500.0])``.

    Raises
    ------
    ValueError
        Unknown mix name, or a rate that is not a positive number.
    """
    name, sep, rates = spec.partition("=")
    if not sep or name not in MIX_NAMES:
        raise ValueError(f"--mix {spec!r}: expected NAME=RATE[,RATE...] with NAME in {', '.join(MIX_NAMES)}")
    try:
        values = sorted({float(x) for x in rates.split(",")})
    except ValueError:
        raise ValueError(f"--mix {spec!r}: rates must be numbers (requests/s)") from None
    if not values or min(values) <= 0:
        raise ValueError(f"--mix {spec!r}: rates must be > 0 requests/s")
    return name, values


def parse_cpus(spec: str) -> set[int]:
    """CPU numbers from a taskset-style list, e.g. ``"0"``, ``"0,2"``, ``"0-3"``.

    Raises
    ------
    ValueError
        Malformed list, or a CPU this process may not run on (``os.sched_getaffinity(0)``).
    """
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
            if a < 0 or b < a:
                raise ValueError
            cpus.update(range(a, b + 1))
    except ValueError:
        raise ValueError(f"CPU list {spec!r}: expected e.g. 0 or 0,2 or 0-3") from None
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise ValueError(f"CPU list {spec!r}: CPUs {sorted(cpus - allowed)} not available (have {sorted(allowed)})")
    return cpus


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="host:port of a running server (loopback only)")
    where.add_argument("--artifacts", type=Path, help="start `qac serve` on these artifacts for the run")
    ap.add_argument("--server-pid", type=int, action="append", default=[],
                    help="pid of the --target server (repeat; descendants are included)")
    ap.add_argument("--mode", choices=("threads", "asyncio"), default="threads", help="with --artifacts")
    ap.add_argument("--max-workers", type=int, default=8, help="with --artifacts")
    ap.add_argument("--processes", type=int, default=1, help="with --artifacts: server processes sharing the port and the state directory")
    ap.add_argument("--switch-interval-ms", type=float, default=None,
                    help="with --artifacts: the server's GIL switch interval (qac serve --switch-interval-ms)")
    ap.add_argument("--server-cpus", type=str, default=None, metavar="LIST",
                    help="with --artifacts: run the server (all its processes) on these CPUs only, e.g. 0")
    ap.add_argument("--client-cpus", type=str, default=None, metavar="LIST",
                    help="run this load generator on these CPUs only, e.g. 1 (keeps it off the server's cores)")
    ap.add_argument("--mix", action="append", default=[], metavar="NAME=RATE[,RATE...]",
                    help=f"a mix and its offered rates in requests/s (repeat); NAME in {', '.join(MIX_NAMES)}")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per step (default 10)")
    ap.add_argument("--max-requests", type=int, default=100_000, help="cap on requests per step and mix")
    ap.add_argument("--soak", type=float, default=0.0, help="then run every mix at once at its top rate this long (s)")
    ap.add_argument("--channels", type=int, default=4, help="client channels (one TCP connection each)")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, seconds")
    ap.add_argument("--warmup-requests", type=int, default=200, help="per mix, sequential, before the sweep")
    ap.add_argument("--log", type=Path, default=DEFAULT_LOG, help="AOL-format log for complete/search requests")
    ap.add_argument("--judgments", type=Path, default=DEFAULT_JUDGMENTS, help="Home Depot judgments (search terms)")
    ap.add_argument("--max-points", type=int, default=20_000, help="distinct requests per mix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, required=True, help="output JSON")
    ap.add_argument("--plot", type=Path, help="output PNG (needs matplotlib)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the load test; returns 0, or 2 for bad arguments (message on stderr)."""
    args = build_arg_parser().parse_args(argv)
    try:
        mix_rates = dict(parse_mix(s) for s in args.mix)
        if not mix_rates:
            raise ValueError("give at least one --mix NAME=RATE[,RATE...]")
        if args.duration <= 0 or args.soak < 0 or args.max_requests < 1 or args.channels < 1 or args.timeout <= 0:
            raise ValueError("--duration, --max-requests, --channels, --timeout must be > 0 and --soak >= 0")
        server_cpus = parse_cpus(args.server_cpus) if args.server_cpus else None
        client_cpus = parse_cpus(args.client_cpus) if args.client_cpus else None
        if server_cpus and not args.artifacts:
            raise ValueError("--server-cpus needs --artifacts (pin a --target server yourself, e.g. taskset)")
        if args.target:
            check_loopback_target(args.target)
            if not args.server_pid:
                raise ValueError("--target needs --server-pid (the server's pid, for its CPU and RSS)")
            process_tree(args.server_pid)
        workload = build_workload(set(mix_rates), args.log, args.judgments, args.seed, args.max_points)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bench.load: error: {exc}", file=sys.stderr)
        return 2

    def say(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    report: dict[str, Any] = {"machine": machine_info(), "config": {
        "mixes": mix_rates, "duration_s": args.duration, "max_requests": args.max_requests, "soak_s": args.soak,
        "channels": args.channels, "timeout_s": args.timeout, "warmup_requests": args.warmup_requests,
        "seed": args.seed, "argv": list(argv if argv is not None else sys.argv[1:]),
        "server_cpus": sorted(server_cpus) if server_cpus else None,
        "client_cpus": sorted(client_cpus) if client_cpus else None}, "workload": workload.sources}
    with tempfile.TemporaryDirectory(prefix="qac-load-") as tmp:
        server = None
        if args.artifacts:
            say(f"starting qac serve --mode {args.mode} --processes {args.processes} on {args.artifacts} ...")
            server = SpawnedServer(args.artifacts, args.mode, args.max_workers, args.processes,
                                   Path(tmp) / "state", Path(tmp) / "serve.log",
                                   switch_interval_ms=args.switch_interval_ms, cpus=server_cpus)
            target, pids = server.target, [server.pid]
            report["server"] = {"command": server.command, "mode": args.mode, "processes": args.processes,
                                "max_workers": args.max_workers, "switch_interval_ms": args.switch_interval_ms,
                                "cpus": server.cpus}
        else:
            target, pids = args.target, args.server_pid
            report["server"] = {"target": target, "pids": pids}
        check_loopback_target(target)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        report["config"]["client_cpus_in_effect"] = sorted(os.sched_getaffinity(0))
        say(f"target {target}, server pids {process_tree(pids)}, load average {os.getloadavg()}")
        loop = new_event_loop()
        try:
            report.update(loop.run_until_complete(run_benchmark(
                target, pids, mix_rates, duration_s=args.duration, max_requests=args.max_requests,
                soak_s=args.soak, workload=workload, channels=args.channels, timeout_s=args.timeout,
                warmup_requests=args.warmup_requests, seed=args.seed, progress=say)))
        finally:
            loop.close()
            if server is not None:
                report["server"]["exit_code"] = server.stop()
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    say(format_table(report))
    say(f"report written to {args.json}")
    if args.plot:
        why_not = render_plot(report, args.plot)
        say(why_not if why_not else f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
