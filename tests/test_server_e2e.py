"""End to end: build real artifacts, run ``qac serve`` as a separate process, talk gRPC to it."""
from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.conftest import ASK_UNTIL, BUILD_UNTIL, completion_points  # noqa: E402
from serving import client  # noqa: E402
from tests.test_servicer import INVALID_REQUESTS, INVALID_UTF8, valid_request  # noqa: E402
from serving.pb.qac.v1 import internal_raw_pb2, qac_service_pb2, qac_service_pb2_grpc  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0
SOURCES = {"xr_linear", "mpc", "user_history", "follow_up", "suffix", "typo", "mpc_backoff"}


class ServerProcess:
    """``python -m serving.cli serve`` in its own process, ready once it prints its address."""

    def __init__(self, artifacts: Path, stderr_path: Path, extra_args: tuple[str, ...] = ()):
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", "--artifacts", str(artifacts), "--port", "0",
             *extra_args],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.target = self._wait_ready()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _wait_ready(self) -> str:
        try:
            line = self.lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            line = None
        if not line or not line.startswith("serving on "):
            self.kill()
            raise AssertionError(f"server not ready (first stdout line {line!r}); stderr:\n"
                                 f"{self.stderr_path.read_text()}")
        return line.split("serving on ", 1)[1].strip()

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


@pytest.fixture(scope="module")
def artifacts(small_artifacts) -> Path:
    return small_artifacts


@pytest.fixture(scope="module")
def in_process(artifacts):
    from qac.completer import Completer

    comp = Completer.load(artifacts)
    comp.warmup()
    return comp


@pytest.fixture(scope="module")
def real_points(aol_log):
    """Real completion points (previous query, prefix, next query) from the day after the build slice."""
    return completion_points(aol_log, BUILD_UNTIL, ASK_UNTIL, 200)


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    proc = ServerProcess(artifacts, tmp_path_factory.mktemp("e2e-logs") / "serve.stderr")
    yield proc
    proc.terminate()


def test_health_is_serving(server):
    assert client.check_health(server.target) == "SERVING"
    assert client.check_health(server.target, "qac.v1.QueryService") == "SERVING"


def test_grpc_answers_equal_in_process_answers(server, in_process, real_points):
    n_model = 0
    for p in real_points:
        prev = [p.prev_query] if p.prev_query else []
        over_grpc = client.complete(server.target, p.prefix, prev, k=10, session_id="e2e", user_id=p.user_id)
        # The client stamps the request with its clock; ages of years make a second's skew invisible in float32.
        local = in_process.complete(prev, p.prefix, 10, user_id=p.user_id, timestamp=int(time.time()))
        assert [(t, src) for t, _, src in over_grpc] == [(c.text, c.source) for c in local]
        assert [s for _, s, _ in over_grpc] == pytest.approx([c.score for c in local], rel=1e-6)
        assert len({t for t, _, _ in over_grpc}) == len(over_grpc)
        assert {src for _, _, src in over_grpc} <= SOURCES
        n_model += any(src == "xr_linear" for _, _, src in over_grpc)
    # With two weeks of training data the session model has a completion for about half the prefixes.
    assert n_model > len(real_points) // 4


def test_model_completions_start_with_the_prefix(server, real_points):
    for p in real_points[:50]:
        for text, _, src in client.complete(server.target, p.prefix, [p.prev_query], k=10):
            if src in ("xr_linear", "mpc", "suffix"):
                assert text.startswith(p.prefix)


def test_prefix_only_completion_and_model_version(server):
    with grpc.insecure_channel(server.target) as channel:
        response = qac_service_pb2_grpc.QueryServiceStub(channel).Complete(
            qac_service_pb2.CompleteRequest(session=qac_service_pb2.Session(), prefix="Weather ", k=3),
            timeout=10,
        )
    texts = [c.text for c in response.completions]
    assert len(texts) == 3 and all(t.startswith("weather ") for t in texts)
    assert [(c.highlight_start, c.highlight_end) for c in response.completions] == [(0, len("weather "))] * 3
    assert response.model_version


@pytest.mark.parametrize("mutate, details", [c[1:] for c in INVALID_REQUESTS], ids=[c[0] for c in INVALID_REQUESTS])
def test_bad_input_table_against_the_real_server(server, mutate, details):
    request = valid_request()
    mutate(request)
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            qac_service_pb2_grpc.QueryServiceStub(channel).Complete(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(details)


@pytest.mark.parametrize("payload, details", [c[1:] for c in INVALID_UTF8], ids=[c[0] for c in INVALID_UTF8])
def test_bad_utf8_table_against_the_real_server(server, payload, details):
    with grpc.insecure_channel(server.target) as channel:
        method = channel.unary_unary("/qac.v1.QueryService/Complete", request_serializer=None,
                                     response_deserializer=qac_service_pb2.CompleteResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            method(payload, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == details


def test_invalid_argument_over_the_wire(server):
    with pytest.raises(grpc.RpcError) as info:
        client.complete(server.target, "weather", k=0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("k: ")


def test_invalid_utf8_over_the_wire(server):
    raw = internal_raw_pb2.RawCompleteRequest(prefix=b"weather", k=3)
    raw.session.previous_queries.append(b"caf\xe9")
    with grpc.insecure_channel(server.target) as channel:
        method = channel.unary_unary("/qac.v1.QueryService/Complete", request_serializer=None,
                                     response_deserializer=qac_service_pb2.CompleteResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            method(raw.SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "session.previous_queries[0]: not valid UTF-8"


def test_concurrent_requests_agree_with_single_requests(server, real_points):
    asks = [(p.prefix, [p.prev_query]) for p in real_points[:32]]
    expected = [client.complete(server.target, prefix, prev, k=4) for prefix, prev in asks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda a: client.complete(server.target, a[0], a[1], k=4), asks))
    assert all(expected) and answers == expected


def test_complete_command(server):
    result = subprocess.run(
        [sys.executable, "-m", "serving.cli", "complete", "--target", server.target,
         "--prefix", "weather", "--previous", "news", "--k", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    expected = client.complete(server.target, "weather", ["news"], k=3)
    assert expected and all(text in result.stdout for text, _, _ in expected)


def test_sigterm_shuts_down_cleanly(artifacts, tmp_path):
    proc = ServerProcess(artifacts, tmp_path / "serve.stderr")
    assert client.check_health(proc.target) == "SERVING"
    assert proc.terminate() == 0
    assert proc.lines.get(timeout=5) is None  # nothing printed after the ready line
    with pytest.raises(grpc.RpcError) as info:
        client.check_health(proc.target, timeout=1.0)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_bad_artifacts_exit_nonzero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "serving.cli", "serve", "--artifacts", str(tmp_path / "missing"), "--port", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "serving on" not in result.stdout
