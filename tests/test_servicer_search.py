"""Search, Feedback and Complete previews: servicer, validation, server lifecycle and client,
against an in-process server on 127.0.0.1:0 and a fake search service."""
from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
import threading
import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from serving import client, server as server_module
from serving.pb.qac.v1 import internal_raw_pb2, qac_service_pb2, qac_service_pb2_grpc
from serving.search_types import (
    FeedbackOutcome,
    SearchContext,
    SearchHit,
    SearchResult,
    UnknownCatalog,
    UnknownDecision,
    UnknownItem,
)
from serving.server import ServerConfig, create_server, search_loader_for, serve
from serving.validation import (
    InvalidArgument,
    UndecodableRequest,
    decode_feedback_request,
    decode_search_request,
)
from tests.test_servicer import FakeCompleter
from tests.test_servicer import valid_request as valid_complete_request

NO_SEARCH = "search is not configured on this server"
T0 = 1_146_000_000  # 2006-04-25T21:20:00Z


# --------------------------------------------------------------------------- fakes and fixtures

class FakeSearchService:
    """Derives hits from the query, catalogue and session, logs decisions and counts each feedback
    event once, so a test can tell every value really got through the servicer."""

    def __init__(self, catalogs=("aol", "homedepot"), error: BaseException | None = None):
        self.catalogs = tuple(catalogs)
        self.error = error
        self.calls: list[tuple] = []
        self.decisions: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.recorded: set[tuple[str, str]] = set()
        self.total_reward = 0.0
        self.n_warmups = 0
        self.n_closes = 0
        self._lock = threading.Lock()

    def warmup(self) -> None:
        self.n_warmups += 1

    def close(self) -> None:
        self.n_closes += 1

    def _new_decision(self, kind: str, members: tuple[str, ...]) -> str:
        decision_id = f"d-{len(self.decisions):04d}"
        self.decisions[decision_id] = (kind, members)
        return decision_id

    def search(self, query, context, k, catalog):
        with self._lock:
            self.calls.append(("search", query, context, k, catalog))
            if self.error is not None:
                raise self.error
            name = catalog or self.catalogs[0]
            if name not in self.catalogs:
                raise UnknownCatalog(catalog, self.catalogs)
            words = query.lower().split()
            arms = ("bm25", "history") if context.previous_queries else ("bm25",)
            hits = [
                SearchHit(f"{name}/{'-'.join(words)}/{i}", f"{' '.join(words)} item {i}", (k - i) / k,
                          arms if i % 2 == 0 else ("popularity",))
                for i in range(k)
            ]
            decision_id = self._new_decision("search", tuple(h.item_id for h in hits))
            return SearchResult(decision_id, hits, f"fake-search-{name}")

    def record_completion(self, context, prefix, completions):
        with self._lock:
            self.calls.append(("record_completion", context, prefix, list(completions)))
            if self.error is not None:
                raise self.error
            return self._new_decision("completion", tuple(completions))

    def feedback(self, decision_id, clicked_item_id, accepted_suggestion, position, timestamp, *, issued_query=None):
        with self._lock:
            self.calls.append(("feedback", decision_id, clicked_item_id, accepted_suggestion, position,
                               timestamp))
            if self.error is not None:
                raise self.error
            if decision_id not in self.decisions:
                raise UnknownDecision(decision_id)
            _, members = self.decisions[decision_id]
            value = clicked_item_id if clicked_item_id is not None else accepted_suggestion
            if value not in members:
                raise UnknownItem(value, "item" if clicked_item_id is not None else "suggestion")
            if (decision_id, value) in self.recorded:
                return FeedbackOutcome(duplicate=True, reward=0.0)
            self.recorded.add((decision_id, value))
            reward = 1.0 / (1 + position)
            self.total_reward += reward
            return FeedbackOutcome(duplicate=False, reward=reward)

    def calls_of(self, kind):
        return [c for c in self.calls if c[0] == kind]


@pytest.fixture
def start_server():
    servers = []

    def start(completer="fake", search_service=None, **config):
        completer = FakeCompleter() if completer == "fake" else completer
        server, port = create_server(ServerConfig(**config), completer, search_service)
        server.start()
        servers.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None).wait()


@pytest.fixture
def stub_to():
    channels = []

    def open_stub(target):
        channel = grpc.insecure_channel(target)
        channels.append(channel)
        return qac_service_pb2_grpc.QueryServiceStub(channel)

    yield open_stub
    for channel in channels:
        channel.close()


def _timestamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def search_request(**overrides) -> qac_service_pb2.SearchRequest:
    request = qac_service_pb2.SearchRequest(
        session=qac_service_pb2.Session(session_id="s-1", user_id="u-1", previous_queries=["weather"],
                                        timestamp=_timestamp(T0)),
        query="Cheap Flights",
        k=3,
        catalog="homedepot",
    )
    for name, value in overrides.items():
        setattr(request, name, value)
    return request


def feedback_request(**overrides) -> qac_service_pb2.FeedbackRequest:
    request = qac_service_pb2.FeedbackRequest(decision_id="d-0000", clicked_item_id="aol/x/0", position=0,
                                              timestamp=_timestamp(T0 + 5))
    for name, value in overrides.items():
        setattr(request, name, value)
    return request


def raw_call(stub_channel_target, method: str, payload: bytes, response_type, timeout=5.0):
    """Send raw bytes to ``/qac.v1.QueryService/<method>`` (invalid UTF-8 reaches the server)."""
    with grpc.insecure_channel(stub_channel_target) as channel:
        call = channel.unary_unary(f"/qac.v1.QueryService/{method}", request_serializer=None,
                                   response_deserializer=response_type.FromString)
        return call(payload, timeout=timeout)


def _error_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------- Search: happy path

def test_search_converts_request_and_response(start_server, stub_to):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    response = stub_to(target).Search(search_request(), timeout=5)

    assert fake.calls == [
        ("search", "Cheap Flights", SearchContext("s-1", "u-1", ("weather",), T0), 3, "homedepot"),
    ]
    assert [i.item_id for i in response.items] == [
        "homedepot/cheap-flights/0", "homedepot/cheap-flights/1", "homedepot/cheap-flights/2",
    ]
    assert [i.text for i in response.items] == [f"cheap flights item {i}" for i in range(3)]
    assert [i.score for i in response.items] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert [list(i.arms) for i in response.items] == [["bm25", "history"], ["popularity"], ["bm25", "history"]]
    assert response.decision_id == "d-0000"
    assert response.model_version == "fake-search-homedepot"
    assert fake.n_warmups == 1


def test_search_defaults_catalog_and_time(start_server, stub_to):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    request = search_request(catalog="")
    request.session.ClearField("timestamp")
    del request.session.previous_queries[:]
    before = int(time.time())
    response = stub_to(target).Search(request, timeout=5)
    after = int(time.time())

    (_, _, context, _, catalog), = fake.calls
    assert catalog == ""  # the service resolves its default
    assert before <= context.timestamp <= after  # unset = the server's receive time
    assert context.previous_queries == ()
    assert response.items[0].item_id == "aol/cheap-flights/0" and list(response.items[0].arms) == ["bm25"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"query": "q" * 512},
        {"query": "ü" * 512},  # characters, not UTF-8 bytes
        {"k": 1},
        {"k": 100},
        {"catalog": "c" * 32},
    ],
)
def test_search_values_at_the_limits_are_accepted(start_server, stub_to, overrides):
    fake = FakeSearchService(catalogs=("homedepot", "c" * 32))
    _, target = start_server(search_service=fake)
    response = stub_to(target).Search(search_request(**overrides), timeout=5)
    assert len(response.items) == search_request(**overrides).k
    assert len(fake.calls) == 1


# --------------------------------------------------------------------------- invalid input tables

def _clear(field):
    def mutate(r):
        r.ClearField(field)
    return mutate


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


def _session_time(seconds, nanos=0):
    def mutate(r):
        r.session.timestamp.CopyFrom(_timestamp(seconds, nanos))
    return mutate


# (id, mutation, expected details); session checks are the same for Complete and Search.
INVALID_SESSION = [
    ("no session", _clear("session"), "session: is required"),
    ("too many previous", _previous(["q"] * 33), "session.previous_queries: more than 32 queries (got 33)"),
    ("long previous", _previous(["a", "q" * 513]),
     "session.previous_queries[1]: longer than 512 characters (got 513)"),
    ("long session id", _set_session("session_id", "s" * 129),
     "session.session_id: longer than 128 characters (got 129)"),
    ("long user id", _set_session("user_id", "u" * 129), "session.user_id: longer than 128 characters (got 129)"),
    ("time before 1970", _session_time(-1),
     "session.timestamp: seconds must be in 0..253402300799 (1970-01-01..9999-12-31), got -1"),
    ("time after 9999", _session_time(253_402_300_800),
     "session.timestamp: seconds must be in 0..253402300799 (1970-01-01..9999-12-31), got 253402300800"),
    ("bad nanos", _session_time(T0, -1), "session.timestamp: nanos must be in 0..999999999, got -1"),
]

INVALID_SEARCH = INVALID_SESSION + [
    ("empty query", _set("query", ""), "query: must not be empty or only whitespace"),
    ("blank query", _set("query", " \t\n"), "query: must not be empty or only whitespace"),
    ("long query", _set("query", "q" * 513), "query: longer than 512 characters (got 513)"),
    ("k unset", _set("k", 0), "k: must be in 1..100 (got 0)"),
    ("k negative", _set("k", -1), "k: must be in 1..100 (got -1)"),
    ("k too large", _set("k", 101), "k: must be in 1..100 (got 101)"),
    ("long catalog", _set("catalog", "c" * 33), "catalog: longer than 32 characters (got 33)"),
]


@pytest.mark.parametrize("mutate, details", [c[1:] for c in INVALID_SEARCH], ids=[c[0] for c in INVALID_SEARCH])
def test_invalid_search_is_invalid_argument(start_server, stub_to, mutate, details):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    request = search_request()
    mutate(request)
    error = _error_of(stub_to(target).Search, request, timeout=5)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == details
    assert fake.calls == []


def _action(field, value):
    def mutate(r):
        setattr(r, field, value)  # setting one member of the oneof clears the other
    return mutate


INVALID_FEEDBACK = [
    ("no decision", _set("decision_id", ""), "decision_id: is required"),
    ("long decision", _set("decision_id", "d" * 65), "decision_id: longer than 64 characters (got 65)"),
    ("no action", _clear("clicked_item_id"),
     "action: exactly one of clicked_item_id, accepted_suggestion or issued_query is required"),
    ("empty item", _action("clicked_item_id", ""), "action: clicked_item_id must not be empty or only whitespace"),
    ("blank item", _action("clicked_item_id", "  "),
     "action: clicked_item_id must not be empty or only whitespace"),
    ("empty suggestion", _action("accepted_suggestion", ""),
     "action: accepted_suggestion must not be empty or only whitespace"),
    ("long item", _action("clicked_item_id", "i" * 257), "clicked_item_id: longer than 256 characters (got 257)"),
    ("long suggestion", _action("accepted_suggestion", "s" * 513),
     "accepted_suggestion: longer than 512 characters (got 513)"),
    ("position negative", _set("position", -1), "position: must be in 0..1000 (got -1)"),
    ("position too large", _set("position", 1001), "position: must be in 0..1000 (got 1001)"),
    ("time before 1970", lambda r: r.timestamp.CopyFrom(_timestamp(-5)),
     "timestamp: seconds must be in 0..253402300799 (1970-01-01..9999-12-31), got -5"),
    ("bad nanos", lambda r: r.timestamp.CopyFrom(_timestamp(T0, 1_000_000_000)),
     "timestamp: nanos must be in 0..999999999, got 1000000000"),
]


@pytest.mark.parametrize("mutate, details", [c[1:] for c in INVALID_FEEDBACK],
                         ids=[c[0] for c in INVALID_FEEDBACK])
def test_invalid_feedback_is_invalid_argument(start_server, stub_to, mutate, details):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    request = feedback_request()
    mutate(request)
    error = _error_of(stub_to(target).Feedback, request, timeout=5)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == details
    assert fake.calls == []


def test_feedback_values_at_the_limits_are_accepted(start_server, stub_to):
    fake = FakeSearchService()
    fake.decisions["d" * 64] = ("search", ("i" * 256,))
    _, target = start_server(search_service=fake)
    response = stub_to(target).Feedback(
        feedback_request(decision_id="d" * 64, clicked_item_id="i" * 256, position=1000), timeout=5)
    assert (response.duplicate, response.reward) == (False, pytest.approx(1 / 1001))
    assert fake.calls == [("feedback", "d" * 64, "i" * 256, None, 1000, T0 + 5)]


INVALID_PREVIEWS = [
    ("preview_k negative", _set("preview_k", -1), "preview_k: must be in 0..10 (got -1)"),
    ("preview_k too large", _set("preview_k", 11), "preview_k: must be in 0..10 (got 11)"),
    ("preview_completions negative", _set("preview_completions", -1), "preview_completions: must be in 0..10 (got -1)"),
    ("preview_completions too large", _set("preview_completions", 11),
     "preview_completions: must be in 0..10 (got 11)"),
    ("long catalog", _set("catalog", "c" * 33), "catalog: longer than 32 characters (got 33)"),
    ("time before 1970", _session_time(-1),
     "session.timestamp: seconds must be in 0..253402300799 (1970-01-01..9999-12-31), got -1"),
]


@pytest.mark.parametrize("with_search", [True, False], ids=["search", "no-search"])
@pytest.mark.parametrize("mutate, details", [c[1:] for c in INVALID_PREVIEWS],
                         ids=[c[0] for c in INVALID_PREVIEWS])
def test_invalid_preview_is_invalid_argument(start_server, stub_to, mutate, details, with_search):
    fake, completer = FakeSearchService(), FakeCompleter()
    _, target = start_server(completer, fake if with_search else None)
    request = valid_complete_request(preview_k=2)
    mutate(request)
    error = _error_of(stub_to(target).Complete, request, timeout=5)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == details
    assert fake.calls == [] and completer.calls == []


# --------------------------------------------------------------------------- invalid UTF-8

def _raw_session(raw, previous=(b"weather",), session_id=b"s", user_id=b"u"):
    raw.session.session_id = session_id
    raw.session.user_id = user_id
    raw.session.previous_queries.extend(previous)


def _raw_search(query=b"cheap flights", catalog=b"aol", **session) -> bytes:
    raw = internal_raw_pb2.RawSearchRequest(query=query, k=2, catalog=catalog)
    _raw_session(raw, **session)
    return raw.SerializeToString()


def _raw_feedback(decision_id=b"d-0000", item=None, suggestion=None) -> bytes:
    raw = internal_raw_pb2.RawFeedbackRequest(decision_id=decision_id, position=1)
    if item is not None:
        raw.clicked_item_id = item
    if suggestion is not None:
        raw.accepted_suggestion = suggestion
    return raw.SerializeToString()


def _raw_complete(prefix=b"weather b", catalog=b"") -> bytes:
    raw = internal_raw_pb2.RawCompleteRequest(prefix=prefix, k=3, preview_k=2, catalog=catalog)
    _raw_session(raw)
    return raw.SerializeToString()


INVALID_UTF8 = [
    # (id, method, payload, details)
    ("search session id", "Search", _raw_search(session_id=b"\x80"), "session.session_id: not valid UTF-8"),
    ("search user id", "Search", _raw_search(user_id=b"\xff"), "session.user_id: not valid UTF-8"),
    ("search previous[1]", "Search", _raw_search(previous=[b"ok", b"caf\xe9"]),
     "session.previous_queries[1]: not valid UTF-8"),
    ("search query", "Search", _raw_search(query=b"caf\xc3"), "query: not valid UTF-8"),
    ("search catalog", "Search", _raw_search(catalog=b"\xedcat"), "catalog: not valid UTF-8"),
    ("search first bad field wins", "Search", _raw_search(query=b"\xff", catalog=b"\xff"), "query: not valid UTF-8"),
    ("search not protobuf", "Search", b"\xff\xff\xff", "request: not a valid qac.v1.SearchRequest message"),
    ("feedback decision", "Feedback", _raw_feedback(decision_id=b"\xc0\xaf", item=b"x"),
     "decision_id: not valid UTF-8"),
    ("feedback item", "Feedback", _raw_feedback(item=b"x\xed\xa0\x80"), "clicked_item_id: not valid UTF-8"),
    ("feedback suggestion", "Feedback", _raw_feedback(suggestion=b"caf\xe9"), "accepted_suggestion: not valid UTF-8"),
    ("feedback not protobuf", "Feedback", b"\xff\xff\xff", "request: not a valid qac.v1.FeedbackRequest message"),
    ("complete catalog", "Complete", _raw_complete(catalog=b"\xff"), "catalog: not valid UTF-8"),
    ("complete prefix before catalog", "Complete", _raw_complete(prefix=b"\xff", catalog=b"\xff"),
     "prefix: not valid UTF-8"),
]
RESPONSE_TYPES = {"Search": qac_service_pb2.SearchResponse, "Feedback": qac_service_pb2.FeedbackResponse,
                  "Complete": qac_service_pb2.CompleteResponse}


@pytest.mark.parametrize("method, payload, details", [c[1:] for c in INVALID_UTF8], ids=[c[0] for c in INVALID_UTF8])
def test_invalid_utf8_is_invalid_argument_naming_the_field(start_server, method, payload, details):
    fake, completer = FakeSearchService(), FakeCompleter()
    _, target = start_server(completer, fake)
    error = _error_of(raw_call, target, method, payload, RESPONSE_TYPES[method])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == details
    assert fake.calls == [] and completer.calls == []


def test_raw_path_accepts_valid_bytes(start_server):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    response = raw_call(target, "Search", _raw_search(query="Köln Dom".encode(), catalog=b""),
                        qac_service_pb2.SearchResponse)
    assert [i.item_id for i in response.items] == ["aol/köln-dom/0", "aol/köln-dom/1"]
    response = raw_call(target, "Feedback", _raw_feedback(item="aol/köln-dom/1".encode()),
                        qac_service_pb2.FeedbackResponse)
    assert (response.duplicate, response.reward) == (False, 0.5)


def test_decode_functions_without_a_socket():
    request = search_request()
    assert decode_search_request(request.SerializeToString()) == request
    assert decode_search_request(_raw_search(previous=[b"\xff"])) == UndecodableRequest(
        "session.previous_queries[0]", "not valid UTF-8")
    request = feedback_request(accepted_suggestion="weather boston")
    assert decode_feedback_request(request.SerializeToString()) == request
    assert decode_feedback_request(_raw_feedback(suggestion=b"\xff")) == UndecodableRequest(
        "accepted_suggestion", "not valid UTF-8")


# --------------------------------------------------------------------------- without a search service

def test_without_search_service_search_and_feedback_are_unimplemented(start_server, stub_to):
    _, target = start_server(search_service=None)
    stub = stub_to(target)
    for call, request in ((stub.Search, search_request()), (stub.Feedback, feedback_request()),
                          (stub.Complete, valid_complete_request(preview_k=1))):
        error = _error_of(call, request, timeout=5)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert error.details() == NO_SEARCH


def test_without_search_service_complete_has_no_decision(start_server, stub_to):
    completer = FakeCompleter()
    _, target = start_server(completer, None)
    response = stub_to(target).Complete(valid_complete_request(k=2), timeout=5)
    assert [c.text for c in response.completions] == ["weather b 0", "weather b 1"]
    assert response.decision_id == ""
    assert all(not c.preview and c.preview_decision_id == "" for c in response.completions)


def test_search_is_unavailable_while_loading(start_server, stub_to):
    fake = FakeSearchService()
    server, target = start_server(completer=None, search_service=fake)
    error = _error_of(stub_to(target).Search, search_request(), timeout=5)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    server.set_completer(FakeCompleter())
    assert stub_to(target).Search(search_request(), timeout=5).decision_id == "d-0000"


# --------------------------------------------------------------------------- errors from the search service

def test_unknown_decision_is_not_found(start_server, stub_to):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    error = _error_of(stub_to(target).Feedback, feedback_request(decision_id="d-9999"), timeout=5)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "decision_id: unknown decision d-9999"


def test_unknown_catalog_is_invalid_argument(start_server, stub_to):
    _, target = start_server(search_service=FakeSearchService())
    error = _error_of(stub_to(target).Search, search_request(catalog="books"), timeout=5)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "catalog: unknown catalog books (have: aol, homedepot)"


def test_unknown_item_is_invalid_argument_naming_action(start_server, stub_to):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    stub = stub_to(target)
    decision_id = stub.Search(search_request(), timeout=5).decision_id
    error = _error_of(stub.Feedback, feedback_request(decision_id=decision_id, clicked_item_id="aol/other/0"),
                      timeout=5)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "action: item aol/other/0 was not among the decision's results"
    error = _error_of(stub.Feedback, feedback_request(decision_id=decision_id, accepted_suggestion="x"),
                      timeout=5)
    assert error.details() == "action: suggestion x was not among the decision's results"
    assert fake.recorded == set()


def test_search_service_invalid_argument_passes_through(start_server, stub_to):
    fake = FakeSearchService(error=InvalidArgument("query", "normalises to nothing"))
    _, target = start_server(search_service=fake)
    error = _error_of(stub_to(target).Search, search_request(query="!!!"), timeout=5)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "query: normalises to nothing"


@pytest.mark.parametrize("method", ["Search", "Feedback", "Complete"])
def test_unexpected_search_error_is_internal_without_details(start_server, stub_to, caplog, method):
    secret = "/srv/state/events.sqlite3 is locked"
    _, target = start_server(search_service=FakeSearchService(error=OSError(secret)))
    request = {"Search": search_request(), "Feedback": feedback_request(),
               "Complete": valid_complete_request(preview_k=2)}[method]
    with caplog.at_level(logging.ERROR, logger="serving.servicer"):
        error = _error_of(getattr(stub_to(target), method), request, timeout=5)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert secret not in (error.debug_error_string() or "")
    assert any(r.exc_info and secret in str(r.exc_info[1]) for r in caplog.records)


# --------------------------------------------------------------------------- feedback

def test_duplicate_feedback_is_counted_once(start_server, stub_to):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    stub = stub_to(target)
    search = stub.Search(search_request(), timeout=5)
    clicked = search.items[1].item_id
    first = stub.Feedback(feedback_request(decision_id=search.decision_id, clicked_item_id=clicked, position=1),
                          timeout=5)
    again = stub.Feedback(feedback_request(decision_id=search.decision_id, clicked_item_id=clicked, position=1),
                          timeout=5)
    assert (first.duplicate, first.reward) == (False, 0.5)
    assert (again.duplicate, again.reward) == (True, 0.0)
    assert fake.recorded == {(search.decision_id, clicked)} and fake.total_reward == 0.5
    assert len(fake.calls_of("feedback")) == 2  # both reached the service; it counted one

    other = stub.Feedback(feedback_request(decision_id=search.decision_id, clicked_item_id=search.items[0].item_id),
                          timeout=5)
    assert (other.duplicate, other.reward) == (False, 1.0)  # another item of the same decision is a new event


def test_feedback_converts_request(start_server, stub_to):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    stub = stub_to(target)
    decision_id = stub.Search(search_request(), timeout=5).decision_id
    stub.Feedback(feedback_request(decision_id=decision_id, clicked_item_id="homedepot/cheap-flights/2",
                                   position=2), timeout=5)
    request = feedback_request(decision_id=decision_id, clicked_item_id="homedepot/cheap-flights/0")
    request.ClearField("timestamp")
    before = int(time.time())
    stub.Feedback(request, timeout=5)
    after = int(time.time())
    first, second = fake.calls_of("feedback")
    assert first == ("feedback", decision_id, "homedepot/cheap-flights/2", None, 2, T0 + 5)
    assert second[1:5] == (decision_id, "homedepot/cheap-flights/0", None, 0)
    assert before <= second[5] <= after


def test_accepted_suggestion_refers_to_the_completion_decision(start_server, stub_to):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    stub = stub_to(target)
    request = valid_complete_request(k=3)
    request.session.timestamp.CopyFrom(_timestamp(T0))
    response = stub.Complete(request, timeout=5)

    texts = [c.text for c in response.completions]
    assert fake.calls_of("record_completion") == [
        ("record_completion", SearchContext("s-1", "u-1", ("cheap flights", "weather"), T0), "Weather B", texts),
    ]
    assert response.decision_id == "d-0000" and fake.calls_of("search") == []
    outcome = stub.Feedback(qac_service_pb2.FeedbackRequest(
        decision_id=response.decision_id, accepted_suggestion=texts[1], position=1), timeout=5)
    assert (outcome.duplicate, outcome.reward) == (False, 0.5)
    assert fake.calls_of("feedback")[0][1:5] == (response.decision_id, None, texts[1], 1)


# --------------------------------------------------------------------------- previews

def test_previews_are_attached_to_the_top_completions(start_server, stub_to):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    stub = stub_to(target)
    request = valid_complete_request(k=5, preview_k=2, catalog="homedepot")
    request.session.timestamp.CopyFrom(_timestamp(T0))
    response = stub.Complete(request, timeout=5)

    context = SearchContext("s-1", "u-1", ("cheap flights", "weather"), T0)
    texts = [c.text for c in response.completions]
    assert texts == [f"weather b {i}" for i in range(5)]
    # Default preview_completions (0) = 3, each searched with the completion text, preview_k, catalog.
    assert fake.calls_of("search") == [("search", t, context, 2, "homedepot") for t in texts[:3]]
    for c in response.completions[:3]:
        slug = c.text.replace(" ", "-")
        assert [i.item_id for i in c.preview] == [f"homedepot/{slug}/0", f"homedepot/{slug}/1"]
        assert [list(i.arms) for i in c.preview] == [["bm25", "history"], ["popularity"]]
        assert fake.decisions[c.preview_decision_id] == ("search", tuple(i.item_id for i in c.preview))
    assert len({c.preview_decision_id for c in response.completions[:3]}) == 3
    assert all(not c.preview and c.preview_decision_id == "" for c in response.completions[3:])
    # The completion list is its own decision, logged after the previews.
    assert fake.decisions[response.decision_id] == ("completion", tuple(texts))
    assert fake.calls[-1][0] == "record_completion"

    # A click on a preview item is feedback on the preview's search decision.
    top = response.completions[0]
    outcome = stub.Feedback(qac_service_pb2.FeedbackRequest(
        decision_id=top.preview_decision_id, clicked_item_id=top.preview[1].item_id, position=1), timeout=5)
    assert (outcome.duplicate, outcome.reward) == (False, 0.5)


@pytest.mark.parametrize("k, preview_completions, n_with_preview", [(4, 10, 4), (4, 1, 1), (2, 0, 2), (5, 3, 3)])
def test_preview_completions_bounds_the_previewed_completions(start_server, stub_to, k, preview_completions,
                                                            n_with_preview):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    response = stub_to(target).Complete(
        valid_complete_request(k=k, preview_k=1, preview_completions=preview_completions), timeout=5)
    assert [len(c.preview) for c in response.completions] == [1] * n_with_preview + [0] * (k - n_with_preview)
    assert len(fake.calls_of("search")) == n_with_preview


def test_default_preview_completions_comes_from_limits(start_server, stub_to):
    from serving.validation import RequestLimits

    fake = FakeSearchService()
    _, target = start_server(search_service=fake, limits=RequestLimits(default_preview_completions=1))
    response = stub_to(target).Complete(valid_complete_request(k=3, preview_k=1), timeout=5)
    assert [len(c.preview) for c in response.completions] == [1, 0, 0]


def test_preview_with_unknown_catalog_is_invalid_argument_and_logs_no_completion(start_server, stub_to):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    error = _error_of(stub_to(target).Complete, valid_complete_request(preview_k=2, catalog="books"), timeout=5)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "catalog: unknown catalog books (have: aol, homedepot)"
    assert fake.calls_of("record_completion") == []


# --------------------------------------------------------------------------- server lifecycle

def test_create_server_warms_up_search_and_close_is_explicit(start_server):
    fake = FakeSearchService()
    server, _ = start_server(search_service=fake)
    assert fake.n_warmups == 1 and server.servicer.search_service is fake
    server.close_search_service()
    assert fake.n_closes == 1


def _run_serve(config, load, load_search):
    out, stop = io.StringIO(), threading.Event()
    result = {}
    runner = threading.Thread(target=lambda: result.update(rc=serve(config, load, load_search, out=out,
                                                                      stop_event=stop)))
    runner.start()
    for _ in range(400):
        if out.getvalue() or "rc" in result:
            break
        stop.wait(0.025)
    return out, stop, runner, result


def test_serve_loads_search_service_and_closes_it_on_shutdown():
    fake = FakeSearchService()
    seen = []

    def load_search(artifacts, state_dir, completer=None):
        seen.append((artifacts, state_dir))
        return fake

    config = ServerConfig(artifacts="/nowhere", state_dir="/state", grace_seconds=1.0)
    out, stop, runner, result = _run_serve(config, lambda artifacts: FakeCompleter(), load_search)
    try:
        target = out.getvalue().split()[-1]
        assert client.check_health(target, "qac.v1.QueryService") == "SERVING"
        decision_id, items = client.search(target, "lamp", k=1)
        assert (decision_id, [i[0] for i in items]) == ("d-0000", ["aol/lamp/0"])
        assert fake.n_closes == 0
    finally:
        stop.set()
        runner.join(10)
    assert result["rc"] == 0
    assert seen == [("/nowhere", "/state")]
    assert fake.n_warmups == 1 and fake.n_closes == 1


def test_serve_returns_1_and_closes_search_when_the_completer_warmup_fails():
    fake = FakeSearchService()

    class BadWarmup(FakeCompleter):
        def warmup(self):
            raise RuntimeError("kernel compile failed")

    out, stop, runner, result = _run_serve(ServerConfig(artifacts="/nowhere"), lambda a: BadWarmup(),
                                           lambda a, s, c=None: fake)
    runner.join(10)
    assert result["rc"] == 1 and out.getvalue() == ""
    assert fake.n_closes == 1


def test_serve_returns_1_and_closes_search_when_its_warmup_fails():
    class BadSearchWarmup(FakeSearchService):
        def warmup(self):
            raise RuntimeError("no arms")

    fake = BadSearchWarmup()
    out, stop, runner, result = _run_serve(ServerConfig(artifacts="/nowhere"), lambda a: FakeCompleter(),
                                           lambda a, s, c=None: fake)
    runner.join(10)
    assert result["rc"] == 1 and out.getvalue() == ""
    assert fake.n_closes == 1


def test_serve_returns_1_when_the_search_service_fails_to_load():
    def load_search(artifacts, state_dir, completer=None):
        raise FileNotFoundError(f"{artifacts}/search/manifest.json")

    out, stop, runner, result = _run_serve(ServerConfig(artifacts="/nowhere"), lambda a: FakeCompleter(),
                                           load_search)
    runner.join(10)
    assert result["rc"] == 1 and out.getvalue() == ""


def test_search_is_served_only_if_the_artifacts_have_a_search_dir(tmp_path):
    assert search_loader_for(tmp_path) is None
    assert search_loader_for(None) is None
    (tmp_path / "search").write_text("not a directory")
    assert search_loader_for(tmp_path) is None
    (tmp_path / "search").unlink()
    (tmp_path / "search").mkdir()
    assert search_loader_for(tmp_path) is server_module.load_search_service


@pytest.mark.parametrize("has_search, state", [(True, "/var/qac"), (True, None), (False, "/var/qac"), (False, None)])
def test_main_serve_passes_state_and_search_loader(tmp_path, monkeypatch, has_search, state):
    if has_search:
        (tmp_path / "search").mkdir()
    seen = {}

    def fake_serve(config, load_completer, load_search_service=None):
        seen.update(config=config, load_search_service=load_search_service)
        return 0

    monkeypatch.setattr(server_module, "serve", fake_serve)
    args = argparse.Namespace(artifacts=str(tmp_path), host="127.0.0.1", port=0, max_workers=2)
    if state is not None:
        args.state = state
    assert server_module.main_serve(args) == 0
    assert seen["config"].state_dir == state
    assert seen["load_search_service"] is (server_module.load_search_service if has_search else None)


def test_search_types_import_no_grpc():
    code = "import sys, serving.search_types\nprint(sorted(m for m in sys.modules if m.startswith(('grpc', 'google'))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- client helpers

def test_client_search_feedback_and_previews(start_server):
    fake = FakeSearchService()
    _, target = start_server(search_service=fake)
    decision_id, items = client.search(target, "Desk Lamp", ["lamp"], k=2, catalog="homedepot",
                                       session_id="s", user_id="u")
    assert decision_id == "d-0000"
    assert items == [("homedepot/desk-lamp/0", "desk lamp item 0", 1.0, ("bm25", "history")),
                     ("homedepot/desk-lamp/1", "desk lamp item 1", 0.5, ("popularity",))]
    context = fake.calls[0][2]
    assert (context.session_id, context.user_id, context.previous_queries) == ("s", "u", ("lamp",))
    assert client.feedback(target, decision_id, clicked_item_id=items[1][0], position=1) == (False, 0.5)
    assert client.feedback(target, decision_id, clicked_item_id=items[1][0], position=1) == (True, 0.0)
    with pytest.raises(ValueError, match="at most one"):
        client.feedback(target, decision_id, clicked_item_id="a", accepted_suggestion="b")
    error = _error_of(client.feedback, target, decision_id)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("action: ")

    assert client.complete(target, "Ab", k=2) == [("ab 0", 1.0, "no-session"), ("ab 1", 0.5, "no-session")]
    with_previews = client.complete(target, "Ab", k=2, preview_k=1, preview_completions=1, catalog="aol")
    assert with_previews[0][:3] == ("ab 0", 1.0, "no-session")
    assert with_previews[0][4] == [("aol/ab-0/0", "ab 0 item 0", 1.0, ("bm25",))]
    assert with_previews[0][3] in fake.decisions and with_previews[1][3:] == ("", [])
    completion_decision, _ = client.complete_with_previews(target, "Ab", k=2)
    assert client.feedback(target, completion_decision, accepted_suggestion="ab 1", position=1) == (False, 0.5)


def test_cli_functions(start_server, capsys):
    _, target = start_server(search_service=FakeSearchService())
    args = argparse.Namespace(target=target, query="Desk Lamp", previous=["lamp"], k=2, catalog="",
                              session_id="s", user_id="u")
    assert client.main_search(args) == 0
    printed = capsys.readouterr().out
    assert "aol/desk-lamp/1" in printed and "bm25,history" in printed and "decision: d-0000" in printed

    args = argparse.Namespace(target=target, decision_id="d-0000", item="aol/desk-lamp/1", suggestion=None,
                              position=1)
    assert client.main_feedback(args) == 0
    assert capsys.readouterr().out.strip() == "recorded: reward 0.5000"
    assert client.main_feedback(args) == 0
    assert capsys.readouterr().out.startswith("duplicate:")
    args.decision_id = "d-4242"
    assert client.main_feedback(args) == 1
    assert "NOT_FOUND: decision_id: unknown decision d-4242" in capsys.readouterr().err
    args.suggestion = "lamp"
    assert client.main_feedback(args) == 2
    args.item = args.suggestion = None
    assert client.main_feedback(args) == 2

    args = argparse.Namespace(target=target, prefix="Ab", previous=[], k=2, session_id="", user_id="",
                              preview_k=1, catalog="")
    assert client.main_complete(args) == 0
    printed = capsys.readouterr().out
    assert "preview (decision d-0001)" in printed and "aol/ab-0/0" in printed and "decision: d-0003" in printed


def test_format_helpers():
    items = [("p-1", "cordless drill", 0.91234, ("bm25", "memory")), ("p-22", "drill bits", 0.5, ())]
    lines = client.format_search_results("drill", ["saw"], "d-7", items).splitlines()
    assert lines[0] == "previous: 'saw'" and lines[1] == "query:    'drill'"
    assert lines[2].split() == ["#", "score", "item", "arms", "text"]
    assert lines[3].split() == ["1", "0.9123", "p-1", "bm25,memory", "cordless", "drill"]
    assert lines[4].split() == ["2", "0.5000", "p-22", "drill", "bits"]
    assert lines[-1] == "decision: d-7"
    assert client.format_search_results("x", [], "d-8", []).splitlines()[2:] == ["(no results)", "decision: d-8"]
    assert client.format_feedback(False, 0.25) == "recorded: reward 0.2500"
    assert client.format_feedback(True, 0.0).startswith("duplicate:")

    table = client.format_completions("dr", [], [("drill", 0.9, "mpc", "d-1", items[:1]), ("dryer", 0.5, "mpc", "", [])],
                                      decision_id="d-0")
    lines = table.splitlines()
    assert lines[3].split() == ["1", "0.9000", "mpc", "drill"]
    assert lines[4].strip() == "preview (decision d-1):"
    assert lines[6].split()[:3] == ["1", "0.9123", "p-1"]
    assert lines[7].split() == ["2", "0.5000", "mpc", "dryer"]
    assert lines[-1] == "decision: d-0"
