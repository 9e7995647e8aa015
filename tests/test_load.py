"""The load generator (bench.load) and the Echo floor: open-loop scheduling, loopback-only targets,
percentiles, process accounting, and Echo + the whole benchmark against real server processes.

No assertion is about how fast anything is: the open-loop checks use lower bounds that a
single-threaded slow handler guarantees whatever the machine's load.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from bench import load
from serving.echo import ECHO_SERVICE_NAME, echo_method_handlers
from serving.pb.qac.v1 import echo_pb2, echo_pb2_grpc, qac_service_pb2
from serving.servicer import register_handlers
from serving.client import check_health
from tests import test_servicer
from tests.test_server_e2e import ServerProcess
from tests.test_servicer import (  # noqa: F401 - fixtures
    INVALID_REQUESTS,
    INVALID_UTF8,
    FakeCompleter,
    call,
    channel_to,
    raw_call,
    start_server,
    valid_request,
)

SLOW_S = 0.1  # the fake handler's service time


# ----------------------------------------------------------------------------- loopback only

@pytest.mark.parametrize("target", ["127.0.0.1:50051", "localhost:1", "[::1]:443", "127.3.2.1:8080"])
def test_loopback_targets_are_accepted(target):
    assert load.check_loopback_target(target) == target


@pytest.mark.parametrize("target, message", [
    ("10.0.0.1:50051", "only target loopback"),
    ("192.168.1.20:50051", "only target loopback"),
    ("8.8.8.8:53", "only target loopback"),
    ("0.0.0.0:50051", "only target loopback"),
    ("[::2]:50051", "only target loopback"),
    ("example.com:50051", "only target loopback"),
    ("localhost.example.com:1", "only target loopback"),
    ("dns:///127.0.0.1:50051", "no URI schemes"),
    ("unix:/tmp/qac.sock", "no URI schemes"),
    ("127.0.0.1", "host:port"),
    ("127.0.0.1:0", "host:port"),
    ("127.0.0.1:http", "host:port"),
])
def test_non_loopback_targets_are_refused(target, message):
    with pytest.raises(ValueError, match=message):
        load.check_loopback_target(target)


def test_cli_refuses_a_remote_target_before_sending(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = load.main(["--target", "10.1.2.3:50051", "--server-pid", str(os.getpid()), "--mix", "echo=10",
                      "--json", str(out)])
    assert code == 2 and not out.exists()
    assert "only target loopback" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("complete", "NAME=RATE"),
    ("bogus=10", "NAME=RATE"),
    ("complete=fast", "must be numbers"),
    ("complete=0", "> 0"),
    ("complete=100,-5", "> 0"),
])
def test_bad_mix_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        load.parse_mix(spec)


@pytest.mark.parametrize("spec, message", [
    ("", "expected"), ("a", "expected"), ("3-1", "expected"), ("-1", "expected"), ("0,", "expected"),
    ("4096", "not available"),
])
def test_bad_cpu_lists(spec, message):
    with pytest.raises(ValueError, match=message):
        load.parse_cpus(spec)


def test_cpu_lists():
    first = min(os.sched_getaffinity(0))
    assert load.parse_cpus(str(first)) == {first}
    assert load.parse_cpus(f"{first}-{first},{first}") == {first}


def test_mix_spec():
    assert load.parse_mix("search_aol=200,50,50") == ("search_aol", [50.0, 200.0])


# ------------------------------------------------------------------------------- percentiles

def test_percentiles_equal_numpy_on_known_data():
    rng = np.random.default_rng(0)
    ns = rng.integers(50_000, 20_000_000, size=10_001)
    got = load.latency_summary_ms(ns)
    ms = ns / 1e6
    for key, q in (("p50", 50), ("p95", 95), ("p99", 99), ("p99.9", 99.9)):
        assert got[key] == pytest.approx(np.percentile(ms, q), rel=1e-12)
    assert got["max"] == pytest.approx(ms.max()) and got["mean"] == pytest.approx(ms.mean())
    assert got["n"] == ns.size


def test_percentiles_by_hand_and_empty():
    got = load.latency_summary_ms(np.arange(1, 101) * 1_000_000)  # 1..100 ms
    assert got["p50"] == pytest.approx(50.5) and got["p99"] == pytest.approx(99.01) and got["max"] == 100.0
    assert load.latency_summary_ms([]) == {"n": 0, "p50": None, "p95": None, "p99": None, "p99.9": None,
                                           "max": None, "mean": None}


def test_echo_ratio_uses_the_echo_row_at_the_same_or_nearest_rate():
    def row(mix, rate, p50, p99):
        return {"mix": mix, "offered_rps": rate, "latency_ms": {"n": 10, "p50": p50, "p99": p99}}

    rows = [row("echo", 100, 0.5, 1.0), row("echo", 500, 1.0, 4.0), row("complete", 500, 1.5, 2.0),
            row("complete", 400, 1.0, 2.0)]
    load.add_echo_ratios(rows)
    assert rows[2]["ratio_to_echo"] == {"echo_offered_rps": 500, "p50": 1.5, "p99": 0.5}
    assert rows[3]["ratio_to_echo"]["echo_offered_rps"] == 500
    assert rows[0]["ratio_to_echo"]["p50"] == 1.0


# ---------------------------------------------------------------------------- process stats

def test_cpu_rss_and_process_tree_of_real_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        me = os.getpid()
        assert child.pid in load.process_tree([me]) and me in load.process_tree([me])
        t = time.process_time()
        while time.process_time() - t < 0.05:
            pass
        with open(f"/proc/{me}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert load.cpu_seconds([me]) >= (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        assert load.cpu_seconds([me]) >= 0.05 - 2 / os.sysconf("SC_CLK_TCK")
        rss = load.rss_mb_total([me])
        assert rss > 1 and load.rss_mb_total([me, child.pid]) > rss
    finally:
        child.kill()
        child.wait()
    with pytest.raises(ValueError, match="no such process"):
        load.process_tree([child.pid])


# --------------------------------------------------------------------------- open-loop core

def _slow_echo_server():
    """A real grpc server with ONE worker whose Echo takes SLOW_S: requests are served one by one."""
    def slow(request, context):
        time.sleep(SLOW_S)
        return echo_pb2.EchoResponse(payload=request.payload)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    handlers = echo_method_handlers()
    handlers["Echo"] = grpc.unary_unary_rpc_method_handler(
        slow, request_deserializer=echo_pb2.EchoRequest.FromString,
        response_serializer=echo_pb2.EchoResponse.SerializeToString)
    register_handlers(server, ECHO_SERVICE_NAME, handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_open_loop_latency_is_measured_from_the_scheduled_time():
    server, port = _slow_echo_server()
    n, rate = 8, 50.0  # one request every 20 ms, each served in 100 ms, one at a time

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            await stub.Echo(echo_pb2.EchoRequest(), timeout=10)
            return await load.run_open_loop(lambda i: stub.Echo(echo_pb2.EchoRequest(payload=b"%d" % i), timeout=10),
                                            rate, n)

    try:
        loop = load.new_event_loop()
        try:
            res = loop.run_until_complete(run())
        finally:
            loop.close()
    finally:
        server.stop(0)
    assert res.status == ["OK"] * n and res.latency_ns.shape == (n,)
    # Served one by one: request i ends >= (i + 1) * SLOW_S after the start, and was scheduled at
    # i / rate, so its latency from the schedule grows by >= SLOW_S - 1 / rate per request. A
    # closed-loop client would see every request take ~SLOW_S instead.
    lower = np.array([(i + 1) * SLOW_S - i / rate for i in range(n)]) * 1e9
    assert np.all(res.latency_ns >= lower - 1e6)
    assert res.latency_ns[-1] > res.latency_ns[0] + (n - 1) * (SLOW_S - 1 / rate) * 1e9 * 0.9
    # Open loop: later requests left while the first was still being served.
    assert np.sum(res.lag_ns + np.arange(n) * 1e9 / rate < res.latency_ns[0]) >= 2
    assert res.wall_s * 1e9 >= res.latency_ns.max()


def test_open_loop_sends_exactly_n_and_counts_errors_by_status():
    calls = []

    class Failure(Exception):
        def code(self):
            return grpc.StatusCode.RESOURCE_EXHAUSTED

    async def send(i):
        calls.append(i)
        await asyncio.sleep(0.001)
        if i % 3 == 0:
            raise Failure()

    res = asyncio.run(load.run_open_loop(send, 2000.0, 30))
    assert sorted(calls) == list(range(30))
    summary = load.summarize(res, 2000.0)
    assert summary["n_requests"] == 30 and summary["n_ok"] == 20
    assert summary["errors"] == {"RESOURCE_EXHAUSTED": 10} and summary["latency_ms"]["n"] == 20
    assert summary["offered_rps"] == 2000.0 and summary["achieved_rps"] > 0


@pytest.mark.parametrize("rate, n, message", [(0, 10, "rate"), (-1, 10, "rate"), (10, 0, "n_requests")])
def test_open_loop_bad_arguments(rate, n, message):
    async def send(i):
        return None

    with pytest.raises(ValueError, match=message):
        asyncio.run(load.run_open_loop(send, rate, n))


def test_no_matplotlib_gives_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    why = load.render_plot({"steps": []}, tmp_path / "x.png")
    assert "matplotlib is not installed" in why and not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------ --mode asyncio

def test_asyncio_mode_answers_like_the_thread_pool(start_server, channel_to):
    fake = FakeCompleter()
    _, target = start_server(fake, mode="asyncio")
    ch = channel_to(target)
    response = call(ch, valid_request())
    assert [c.text for c in response.completions] == [f"weather b {i}" for i in range(5)]
    assert response.model_version == "fake-7" and fake.calls == [(["cheap flights", "weather"], "Weather B", 5)]
    assert echo_pb2_grpc.EchoStub(ch).Echo(echo_pb2.EchoRequest(payload=b"p"), timeout=5).payload == b"p"
    assert check_health(target) == "SERVING"


@pytest.fixture
def start_asyncio_server(start_server):
    return lambda completer=None, **config: start_server(completer, mode="asyncio", **config)


@pytest.mark.parametrize("mutate, details", [c[1:] for c in INVALID_REQUESTS], ids=[c[0] for c in INVALID_REQUESTS])
def test_asyncio_mode_invalid_request_table(start_asyncio_server, channel_to, mutate, details):
    test_servicer.test_invalid_request_is_invalid_argument(start_asyncio_server, channel_to, mutate, details)


def test_asyncio_mode_invalid_utf8_and_internal_errors(start_server, channel_to):
    _, target = start_server(FakeCompleter(), mode="asyncio")
    payload, details = INVALID_UTF8[0][1:]
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel_to(target), payload)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details().startswith(details)
    _, broken = start_server(FakeCompleter(error=RuntimeError("boom")), mode="asyncio")
    with pytest.raises(grpc.RpcError) as info:
        call(channel_to(broken), valid_request())
    assert info.value.code() == grpc.StatusCode.INTERNAL and info.value.details() == "internal error"


def test_bad_server_mode():
    from serving.server import ServerConfig

    with pytest.raises(ValueError, match="mode must be one of threads, asyncio"):
        ServerConfig(mode="fork")


# ------------------------------------------------------------------- real server processes

@pytest.fixture(scope="module")
def artifacts(small_artifacts):
    return small_artifacts


@pytest.fixture(scope="module")
def small_log(tmp_path_factory, aol_log):
    """The first 3,000 rows of the shared AOL log (a few hundred real completion points)."""
    import gzip

    out = tmp_path_factory.mktemp("load-log") / "log.tsv"
    with gzip.open(aol_log, "rt", encoding="utf-8") as src:
        out.write_text("".join(line for _, line in zip(range(3001), src)), encoding="utf-8")
    return out


def test_echo_and_the_load_test_against_a_real_server(artifacts, tmp_path, small_log):
    server = ServerProcess(artifacts, tmp_path / "serve.stderr")
    try:
        with grpc.insecure_channel(server.target) as ch:
            got = echo_pb2_grpc.EchoStub(ch).Echo(echo_pb2.EchoRequest(payload=b"\x00floor\xff"), timeout=10)
            assert got.payload == b"\x00floor\xff"
            # Errors raised by the sync servicer keep their status in both modes.
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary("/qac.v1.QueryService/Complete",
                               request_serializer=qac_service_pb2.CompleteRequest.SerializeToString,
                               response_deserializer=qac_service_pb2.CompleteResponse.FromString)(
                    qac_service_pb2.CompleteRequest(session=qac_service_pb2.Session(), prefix="", k=10), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        out = tmp_path / "load.json"
        code = load.main(["--target", server.target, "--server-pid", str(server.proc.pid), "--mix", "echo=40",
                          "--mix", "complete=40", "--duration", "0.5", "--warmup-requests", "5",
                          "--log", str(small_log), "--max-points", "300", "--json", str(out)])
        assert code == 0
        report = json.loads(out.read_text())
        steps = {r["mix"]: r for r in report["steps"]}
        assert set(steps) == {"echo", "complete"}
        for r in steps.values():
            assert r["n_requests"] == 20 and r["n_ok"] == 20 and r["errors"] == {}
            assert r["server_pids"] == [server.proc.pid] and r["server_rss_mb"]["end"] > 0
            assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
        assert steps["echo"]["ratio_to_echo"]["p50"] == 1.0
        assert steps["complete"]["ratio_to_echo"]["p50"] == pytest.approx(
            steps["complete"]["latency_ms"]["p50"] / steps["echo"]["latency_ms"]["p50"])
        assert report["machine"]["cpu_count"] >= 1 and "loadavg_1m" in report["machine"]
    finally:
        assert server.terminate() == 0


def test_spawned_server_and_client_run_on_the_cpus_given(artifacts, tmp_path, small_log):
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = cpus[0], cpus[-1]
    out = tmp_path / "load.json"
    own = os.sched_getaffinity(0)
    try:
        code = load.main(["--artifacts", str(artifacts), "--server-cpus", str(server_cpu),
                          "--client-cpus", str(client_cpu), "--mix", "echo=40", "--duration", "0.25",
                          "--warmup-requests", "2", "--log", str(small_log), "--max-points", "100",
                          "--json", str(out)])
    finally:
        os.sched_setaffinity(0, own)  # main() pinned this (the test) process
    assert code == 0
    report = json.loads(out.read_text())
    assert report["server"]["cpus"] == [server_cpu] and report["server"]["exit_code"] == 0
    assert report["config"]["client_cpus_in_effect"] == [client_cpu]
    assert [r["n_ok"] for r in report["steps"]] == [10]


def test_server_cpus_need_a_spawned_server(tmp_path, capsys):
    code = load.main(["--target", "127.0.0.1:1", "--server-pid", str(os.getpid()), "--server-cpus", "0",
                      "--mix", "echo=10", "--json", str(tmp_path / "r.json")])
    assert code == 2 and "--server-cpus needs --artifacts" in capsys.readouterr().err


def test_processes_share_one_port_and_serve_completion_only(artifacts, tmp_path):
    server = ServerProcess(artifacts, tmp_path / "serve.stderr", ("--processes", "2"))
    try:
        children = load.process_tree([server.proc.pid])
        assert len(children) == 3  # the parent and two servers
        with grpc.insecure_channel(server.target) as ch:
            assert echo_pb2_grpc.EchoStub(ch).Echo(echo_pb2.EchoRequest(payload=b"a"), timeout=10).payload == b"a"
        from serving import client

        assert client.complete(server.target, "ho", ["cheap flights"], k=5)
        with pytest.raises(grpc.RpcError) as err:
            client.search(server.target, "hotels")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert server.terminate() == 0


def test_processes_all_apply_the_blocklist(artifacts, tmp_path):
    from qac.completer import Completer
    from serving import client

    first = Completer.load(artifacts).complete(["cheap flights"], "ho", 5)[0].text
    term = first.split()[0]
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(term + "\n", encoding="utf-8")
    server = ServerProcess(artifacts, tmp_path / "serve.stderr", ("--processes", "2", "--blocklist", str(blocklist)))
    try:
        for _ in range(8):  # a new connection per call, so both processes answer some
            got = client.complete(server.target, "ho", ["cheap flights"], k=5)
            assert got and all(term not in text.split() for text, *_ in got)
    finally:
        assert server.terminate() == 0


# ------------------------------------------------------------------------------- bench.rpc_cost

def test_rpc_cost_times_the_handlers_of_a_real_server(artifacts, tmp_path, small_log, capsys):
    from bench import rpc_cost

    out = tmp_path / "cost.json"
    code = rpc_cost.main(["--artifacts", str(artifacts), "--rpcs", "echo,complete", "--n", "30", "--warmup", "5",
                          "--log", str(small_log), "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["server"]["exit_code"] == 0 and set(report["rpcs"]) == {"echo", "complete"}
    echo, complete = report["rpcs"]["echo"], report["rpcs"]["complete"]
    assert echo["latency_ms"]["n"] == complete["latency_ms"]["n"] == 30
    assert "handler_thread_cpu_ms" not in echo  # no handler of ours behind Echo
    handler = complete["handler_thread_cpu_ms"]
    assert handler["n"] == 30 and 0 < handler["p50"] <= handler["p99"]
    # A handler's CPU is spent within its request's wall time.
    assert handler["mean"] <= complete["latency_ms"]["mean"] and "handler thread CPU" in capsys.readouterr().out


def test_rpc_cost_repeats_each_kind_at_each_idle_gap(artifacts, tmp_path, small_log):
    from bench import rpc_cost

    out = tmp_path / "cost.json"
    code = rpc_cost.main(["--artifacts", str(artifacts), "--rpcs", "complete", "--n", "20", "--warmup", "5",
                          "--gap-ms", "0,20", "--log", str(small_log), "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rpcs"]
    assert set(rows) == {"complete@0ms", "complete@20ms"}
    for name, gap in (("complete@0ms", 0), ("complete@20ms", 20)):
        assert rows[name]["gap_ms"] == gap and rows[name]["handler_thread_cpu_ms"]["n"] == 20
    assert rpc_cost.main(["--artifacts", str(artifacts), "--gap-ms", "0,0", "--json", str(out)]) == 2  # repeated


@pytest.mark.parametrize("args, message", [
    (["--rpcs", "bogus"], "unknown"),
    (["--n", "0"], "--n must be"),
    (["--server-cpus", "x"], "CPU list"),
])
def test_rpc_cost_bad_arguments(artifacts, args, message, capsys):
    from bench import rpc_cost

    assert rpc_cost.main(["--artifacts", str(artifacts), *args]) == 2
    assert message in capsys.readouterr().err
