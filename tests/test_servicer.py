"""Servicer, validation and server lifecycle against an in-process server on 127.0.0.1:0."""
from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
import threading
import types
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from serving import client
from serving.pb.qac.v1 import internal_raw_pb2, qac_service_pb2, qac_service_pb2_grpc
from serving.server import ServerConfig, create_server, serve
from serving.validation import (
    InvalidArgument,
    RequestLimits,
    UndecodableRequest,
    decode_complete_request,
)

COMPLETE_METHOD = "/qac.v1.QueryService/Complete"


# --------------------------------------------------------------------------- fakes and fixtures

@dataclass(frozen=True)
class FakeCompletion:
    text: str
    score: float
    source: str


class FakeCompleter:
    """Derives its answers from the input, so a test can tell the request really got through."""

    version = "fake-7"

    def __init__(self, error: BaseException | None = None):
        self.calls: list[tuple[list[str], str, int]] = []
        self.n_warmups = 0
        self.error = error

    def warmup(self) -> None:
        self.n_warmups += 1

    def complete(self, previous_queries, prefix, k, *, user_id="", timestamp=0):
        self.calls.append((previous_queries, prefix, k))
        if self.error is not None:
            raise self.error
        stem = prefix.strip().lower()
        source = f"after:{previous_queries[-1]}" if previous_queries else "no-session"
        return [FakeCompletion(f"{stem} {i}", float(k - i) / k, source) for i in range(k)]


@pytest.fixture
def start_server():
    servers = []

    def start(completer=None, **config):
        server, port = create_server(ServerConfig(**config), completer)
        server.start()
        servers.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None).wait()


@pytest.fixture
def channel_to():
    channels = []

    def open_channel(target):
        channel = grpc.insecure_channel(target)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


def valid_request(**overrides) -> qac_service_pb2.CompleteRequest:
    request = qac_service_pb2.CompleteRequest(
        session=qac_service_pb2.Session(
            session_id="s-1", user_id="u-1", previous_queries=["cheap flights", "weather"]
        ),
        prefix="Weather B",
        k=5,
    )
    for name, value in overrides.items():
        setattr(request, name, value)
    return request


def call(channel, request, timeout=5.0):
    return qac_service_pb2_grpc.QueryServiceStub(channel).Complete(request, timeout=timeout)


def raw_call(channel, payload: bytes, timeout=5.0):
    """Send raw bytes (no client-side serialization, so invalid UTF-8 reaches the server)."""
    method = channel.unary_unary(
        COMPLETE_METHOD,
        request_serializer=None,
        response_deserializer=qac_service_pb2.CompleteResponse.FromString,
    )
    return method(payload, timeout=timeout)


# --------------------------------------------------------------------------- happy path

def test_complete_converts_request_and_response(start_server, channel_to):
    fake = FakeCompleter()
    _, target = start_server(fake)
    response = call(channel_to(target), valid_request(k=3))

    assert fake.calls == [(["cheap flights", "weather"], "Weather B", 3)]
    assert [c.text for c in response.completions] == ["weather b 0", "weather b 1", "weather b 2"]
    assert [c.score for c in response.completions] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert {c.source for c in response.completions} == {"after:weather"}
    assert response.model_version == "fake-7"
    assert fake.n_warmups == 1


def test_unicode_and_empty_session_round_trip(start_server, channel_to):
    fake = FakeCompleter()
    _, target = start_server(fake)
    request = valid_request(k=1)
    request.prefix = "Café Ü"
    del request.session.previous_queries[:]
    response = call(channel_to(target), request)
    assert [(c.text, c.source) for c in response.completions] == [("café ü 0", "no-session")]


def test_model_version_falls_back_to_empty(start_server, channel_to):
    class NoVersion:
        def complete(self, previous_queries, prefix, k, *, user_id="", timestamp=0):
            return [FakeCompletion(prefix, 1.0, "mpc")]

    _, target = start_server(NoVersion())
    response = call(channel_to(target), valid_request())
    assert response.model_version == ""
    assert [c.text for c in response.completions] == ["Weather B"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"prefix": "p" * 256},
        {"k": 1},
        {"k": 100},
        {"previous_queries": ["q"] * 32},
        {"previous_queries": ["q" * 512]},
        {"session_id": "s" * 128, "user_id": "u" * 128},
        {"prefix": "ü" * 256},  # the limit counts characters, not UTF-8 bytes
    ],
)
def test_values_at_the_limits_are_accepted(start_server, channel_to, overrides):
    fake = FakeCompleter()
    _, target = start_server(fake)
    request = valid_request()
    for name, value in overrides.items():
        if name in ("prefix", "k"):
            setattr(request, name, value)
        elif name == "previous_queries":
            request.session.previous_queries[:] = value
        else:
            setattr(request.session, name, value)
    response = call(channel_to(target), request)
    assert len(response.completions) == request.k
    assert len(fake.calls) == 1


# --------------------------------------------------------------------------- invalid input table

def _without_session(r):
    r.ClearField("session")


def _set(attr, value):
    def mutate(r):
        setattr(r, attr, value)
    return mutate


def _set_session(attr, value):
    def mutate(r):
        setattr(r.session, attr, value)
    return mutate


def _previous(queries):
    def mutate(r):
        r.session.previous_queries[:] = queries
    return mutate


INVALID_REQUESTS = [
    # (id, mutation, expected details prefix)
    ("no session", _without_session, "session: is required"),
    ("empty prefix", _set("prefix", ""), "prefix: must not be empty"),
    ("blank prefix", _set("prefix", " \t\n "), "prefix: must not be empty"),
    ("long prefix", _set("prefix", "p" * 257), "prefix: longer than 256 characters (got 257)"),
    ("k unset", _set("k", 0), "k: must be in 1..100 (got 0)"),
    ("k negative", _set("k", -3), "k: must be in 1..100 (got -3)"),
    ("k too large", _set("k", 101), "k: must be in 1..100 (got 101)"),
    ("too many previous", _previous(["q"] * 33), "session.previous_queries: more than 32 queries (got 33)"),
    ("long previous", _previous(["a", "b", "c", "q" * 513]),
     "session.previous_queries[3]: longer than 512 characters (got 513)"),
    ("long session id", _set_session("session_id", "s" * 129),
     "session.session_id: longer than 128 characters (got 129)"),
    ("long user id", _set_session("user_id", "u" * 129),
     "session.user_id: longer than 128 characters (got 129)"),
]


@pytest.mark.parametrize("mutate, details", [c[1:] for c in INVALID_REQUESTS],
                         ids=[c[0] for c in INVALID_REQUESTS])
def test_invalid_request_is_invalid_argument(start_server, channel_to, mutate, details):
    fake = FakeCompleter()
    _, target = start_server(fake)
    request = valid_request()
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        call(channel_to(target), request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(details)
    assert fake.calls == []


def _raw_request(prefix=b"weather b", previous=(b"weather",), session_id=b"s", user_id=b"u", k=5):
    raw = internal_raw_pb2.RawCompleteRequest(prefix=prefix, k=k)
    raw.session.session_id = session_id
    raw.session.user_id = user_id
    raw.session.previous_queries.extend(previous)
    return raw.SerializeToString()


INVALID_UTF8 = [
    ("previous[0]", _raw_request(previous=[b"caf\xe9"]), "session.previous_queries[0]: not valid UTF-8"),
    ("previous[2]", _raw_request(previous=[b"a", b"b", b"\xff\xfe", b"d"]),
     "session.previous_queries[2]: not valid UTF-8"),
    ("prefix truncated", _raw_request(prefix=b"caf\xc3"), "prefix: not valid UTF-8"),
    ("prefix surrogate", _raw_request(prefix=b"x\xed\xa0\x80"), "prefix: not valid UTF-8"),
    ("prefix overlong", _raw_request(prefix=b"\xc0\xaf"), "prefix: not valid UTF-8"),
    ("session id", _raw_request(session_id=b"\x80"), "session.session_id: not valid UTF-8"),
    ("user id", _raw_request(user_id=b"\xff"), "session.user_id: not valid UTF-8"),
    ("first bad field wins", _raw_request(prefix=b"\xff", previous=[b"\xff"]),
     "session.previous_queries[0]: not valid UTF-8"),
    ("not protobuf", b"\xff\xff\xff", "request: not a valid qac.v1.CompleteRequest message"),
]


@pytest.mark.parametrize("payload, details", [c[1:] for c in INVALID_UTF8], ids=[c[0] for c in INVALID_UTF8])
def test_invalid_utf8_is_invalid_argument_naming_the_field(start_server, channel_to, payload, details):
    fake = FakeCompleter()
    _, target = start_server(fake)
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel_to(target), payload)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == details
    assert fake.calls == []


def test_raw_path_accepts_valid_bytes(start_server, channel_to):
    fake = FakeCompleter()
    _, target = start_server(fake)
    response = raw_call(channel_to(target), _raw_request(prefix="Köln".encode(), k=2))
    assert [c.text for c in response.completions] == ["köln 0", "köln 1"]
    assert fake.calls == [(["weather"], "Köln", 2)]


def test_decode_complete_request_without_a_socket():
    request = valid_request()
    assert decode_complete_request(request.SerializeToString()) == request
    assert decode_complete_request(_raw_request(previous=[b"ok", b"\xff"])) == UndecodableRequest(
        "session.previous_queries[1]", "not valid UTF-8"
    )


# --------------------------------------------------------------------------- errors from the completer

def test_completer_invalid_argument_maps_to_invalid_argument(start_server, channel_to):
    _, target = start_server(FakeCompleter(error=InvalidArgument("prefix", "normalises to nothing")))
    with pytest.raises(grpc.RpcError) as info:
        call(channel_to(target), valid_request(prefix="!!!"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "prefix: normalises to nothing"


def test_completion_error_maps_to_invalid_argument(start_server, channel_to, monkeypatch):
    # Stand-in for qac.completer (looked up in sys.modules, never imported by the servicer).
    class CompletionError(ValueError):
        def __init__(self, field, message):
            super().__init__(f"{field}: {message}")
            self.field, self.message = field, message

    module = types.ModuleType("qac.completer")
    module.CompletionError = CompletionError
    monkeypatch.setitem(sys.modules, "qac.completer", module)
    _, target = start_server(FakeCompleter(error=CompletionError("session.previous_queries", "bad")))
    with pytest.raises(grpc.RpcError) as info:
        call(channel_to(target), valid_request())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "session.previous_queries: bad"


def test_unexpected_error_is_internal_without_details(start_server, channel_to, caplog):
    secret = "/srv/artifacts/secret-path index 12 out of bounds"
    _, target = start_server(FakeCompleter(error=IndexError(secret)))
    with caplog.at_level(logging.ERROR, logger="serving.servicer"):
        with pytest.raises(grpc.RpcError) as info:
            call(channel_to(target), valid_request())
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error"
    assert secret not in (info.value.debug_error_string() or "")
    assert any(r.exc_info and secret in str(r.exc_info[1]) for r in caplog.records)


# --------------------------------------------------------------------------- health, reflection, lifecycle

def _health(channel, service=""):
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def test_health_not_serving_until_completer_is_warmed_up(start_server, channel_to):
    server, target = start_server(completer=None)
    channel = channel_to(target)
    assert _health(channel) == "NOT_SERVING"
    assert _health(channel, "qac.v1.QueryService") == "NOT_SERVING"
    with pytest.raises(grpc.RpcError) as info:
        call(channel, valid_request())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    fake = FakeCompleter()
    server.set_completer(fake)
    assert fake.n_warmups == 1
    assert _health(channel) == "SERVING"
    assert client.check_health(target, "qac.v1.QueryService") == "SERVING"
    assert len(call(channel, valid_request()).completions) == 5

    with pytest.raises(grpc.RpcError) as info:
        _health(channel, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_failed_warmup_keeps_not_serving(start_server, channel_to):
    class BadWarmup(FakeCompleter):
        def warmup(self):
            raise RuntimeError("kernel compile failed")

    server, target = start_server(completer=None)
    with pytest.raises(RuntimeError):
        server.set_completer(BadWarmup())
    assert _health(channel_to(target)) == "NOT_SERVING"
    assert server.servicer.completer is None


def test_graceful_stop_reports_not_serving_and_finishes_in_flight_calls(start_server, channel_to):
    entered, release = threading.Event(), threading.Event()

    class Slow(FakeCompleter):
        def complete(self, previous_queries, prefix, k, *, user_id="", timestamp=0):
            entered.set()
            release.wait(10)
            return super().complete(previous_queries, prefix, k)

    server, target = start_server(Slow())
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=call(channel_to(target), valid_request(k=2))))
    worker.start()
    assert entered.wait(5)
    stopped = server.stop(grace=10)
    status = server.health.Check(health_pb2.HealthCheckRequest(service=""), None).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    release.set()
    worker.join(10)
    assert stopped.wait(10)
    assert [c.text for c in result["r"].completions] == ["weather b 0", "weather b 1"]


def test_reflection_lists_services(start_server, channel_to):
    _, target = start_server(FakeCompleter())
    database = ProtoReflectionDescriptorDatabase(channel_to(target))
    assert set(database.get_services()) >= {
        "qac.v1.QueryService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
    }
    service = descriptor_pool.DescriptorPool(database).FindServiceByName("qac.v1.QueryService")
    assert service.methods_by_name["Complete"].input_type.full_name == "qac.v1.CompleteRequest"
    assert service.methods_by_name["Search"].input_type.full_name == "qac.v1.SearchRequest"
    assert service.methods_by_name["Feedback"].input_type.full_name == "qac.v1.FeedbackRequest"


def test_second_server_cannot_share_a_port(start_server):
    _, target = start_server(FakeCompleter())
    port = int(target.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="could not bind"):
        create_server(ServerConfig(port=port))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"port": -1}, "port"),
        ({"port": 65536}, "port"),
        ({"max_workers": 0}, "max_workers"),
        ({"grace_seconds": -1.0}, "grace_seconds"),
        ({"max_concurrent_rpcs": 0}, "max_concurrent_rpcs"),
        ({"host": ""}, "host"),
        ({"limits": {"max_k": 5}}, "limits"),
        ({"switch_interval_ms": 0.0}, "switch_interval_ms"),
        ({"switch_interval_ms": 5000.0}, "switch_interval_ms"),
    ],
)
def test_server_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ServerConfig(**kwargs)


@pytest.mark.parametrize("field", ["max_prefix_chars", "max_k", "max_previous_queries",
                                   "max_query_chars", "max_id_chars", "max_catalog_chars",
                                   "max_decision_id_chars", "max_item_id_chars", "max_position",
                                   "max_preview_k", "max_preview_completions",
                                   "default_preview_completions"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_request_limits_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        RequestLimits(**{field: value})


def test_request_limits_default_previews_within_max():
    with pytest.raises(ValueError, match="default_preview_completions"):
        RequestLimits(max_preview_completions=2)  # default 3 > max 2
    assert RequestLimits(max_preview_completions=2, default_preview_completions=2).default_preview_completions == 2


def test_custom_limits_are_enforced(start_server, channel_to):
    _, target = start_server(FakeCompleter(), limits=RequestLimits(max_k=3))
    with pytest.raises(grpc.RpcError) as info:
        call(channel_to(target), valid_request(k=4))
    assert info.value.details() == "k: must be in 1..3 (got 4)"


def test_serve_loads_prints_ready_line_and_stops():
    out, stop = io.StringIO(), threading.Event()
    fake = FakeCompleter()
    seen_artifacts = []

    def load(artifacts):
        seen_artifacts.append(artifacts)
        return fake

    result = {}
    runner = threading.Thread(target=lambda: result.update(rc=serve(
        ServerConfig(artifacts="/nowhere", grace_seconds=1.0), load, out=out, stop_event=stop)))
    runner.start()
    try:
        for _ in range(200):
            if out.getvalue():
                break
            stop.wait(0.025)
        line = out.getvalue()
        assert line.startswith("serving on 127.0.0.1:") and line.endswith("\n")
        target = line.split()[-1]
        assert client.check_health(target) == "SERVING"
        assert client.complete(target, "ab", k=1) == [("ab 0", 1.0, "no-session")]
    finally:
        stop.set()
        runner.join(10)
    assert result["rc"] == 0
    assert seen_artifacts == ["/nowhere"] and fake.n_warmups == 1


def test_serve_sets_the_gil_switch_interval():
    before = sys.getswitchinterval()
    try:
        rc = serve(ServerConfig(artifacts="/nowhere", grace_seconds=0.0, switch_interval_ms=0.5),
                   lambda artifacts: (_ for _ in ()).throw(OSError("no artifacts")), out=io.StringIO(),
                   stop_event=threading.Event())
        assert rc == 1 and sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


def test_serve_returns_1_when_loading_fails():
    out = io.StringIO()

    def load(artifacts):
        raise FileNotFoundError(artifacts)

    assert serve(ServerConfig(artifacts="/nowhere"), load, out=out, stop_event=threading.Event()) == 1
    assert out.getvalue() == ""


# --------------------------------------------------------------------------- client helpers

def test_client_complete_and_cli_functions(start_server, capsys):
    _, target = start_server(FakeCompleter())
    assert client.complete(target, "Ab", ["x", "y"], k=2) == [
        ("ab 0", 1.0, "after:y"), ("ab 1", 0.5, "after:y"),
    ]
    args = argparse.Namespace(target=target, prefix="Ab", previous=["y"], k=2, session_id="s", user_id="u")
    assert client.main_complete(args) == 0
    printed = capsys.readouterr().out
    assert "'y'" in printed and "ab 1" in printed and "after:y" in printed

    args.prefix = " "
    assert client.main_complete(args) == 1
    assert "INVALID_ARGUMENT: prefix: must not be empty" in capsys.readouterr().err


def test_format_completions():
    table = client.format_completions("wea", ["cheap flights", "weather"],
                                      [("weather boston", 0.91234, "xr_linear"), ("weather", 0.5, "mpc")])
    lines = table.splitlines()
    assert lines[0] == "previous: 'cheap flights' > 'weather'"
    assert lines[1] == "prefix:   'wea'"
    assert lines[3].split() == ["1", "0.9123", "xr_linear", "weather", "boston"]
    assert lines[4].split() == ["2", "0.5000", "mpc", "weather"]
    assert client.format_completions("x", [], []).splitlines()[-1] == "(no completions)"


def test_serving_imports_stay_light():
    code = (
        "import sys, serving.server, serving.client, serving.servicer, serving.validation, "
        "serving.search_types\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sklearn', 'scipy', 'numba', 'numpy', 'pandas', 'retrieval'} "
        "or m.startswith(('qac.build', 'qac.completer')))\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
