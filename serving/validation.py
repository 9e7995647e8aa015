"""Request validation for the gRPC API: pure functions, no grpc import.

Every check raises :class:`InvalidArgument` naming the offending field in the request's own
words (``prefix``, ``k``, ``session.previous_queries[3]``), which the servicer turns into
``INVALID_ARGUMENT`` with the details ``"<field>: <reason>"``.

Invalid UTF-8 needs special handling: python protobuf refuses to parse a message whose
``string`` field is not valid UTF-8, so the servicer would never see the request and grpc would
answer a generic ``INTERNAL "Exception deserializing request!"``. :func:`decode_complete_request`
(and its twins :func:`decode_search_request`, :func:`decode_feedback_request`) is therefore
installed as the method's request deserializer: when the strict parse fails it re-parses the same
bytes as ``qac.v1.internal.Raw<Message>`` (identical field numbers, ``bytes`` instead of
``string``) to find the first field that does not decode, and returns an
:class:`UndecodableRequest` that the servicer reports like any other invalid argument.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable

from google.protobuf.message import DecodeError

from serving.pb.qac.v1 import internal_raw_pb2, qac_service_pb2


class InvalidArgument(ValueError):
    """A request field has a bad value.

    Parameters
    ----------
    field : str
        Path of the field in the request, e.g. ``"session.previous_queries[3]"``.
    message : str
        Why it is bad, e.g. ``"longer than 512 characters"``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class RequestLimits:
    """Upper bounds on what a single request may carry (lengths in Unicode code points).

    ``max_query_chars`` bounds previous queries, ``SearchRequest.query`` and
    ``FeedbackRequest.accepted_suggestion``; ``max_k`` bounds both ``Complete`` and ``Search``.
    ``default_preview_completions`` is what ``CompleteRequest.preview_completions == 0`` means.
    """

    max_prefix_chars: int = 256
    max_k: int = 100
    max_previous_queries: int = 32
    max_query_chars: int = 512
    max_id_chars: int = 128
    max_catalog_chars: int = 32
    max_decision_id_chars: int = 64
    max_item_id_chars: int = 256
    max_position: int = 1000
    max_preview_k: int = 10
    max_preview_completions: int = 10
    default_preview_completions: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{f.name} must be a positive int, got {value!r}")
        if self.default_preview_completions > self.max_preview_completions:
            raise ValueError(
                f"default_preview_completions must be <= max_preview_completions "
                f"({self.max_preview_completions}), got {self.default_preview_completions!r}"
            )


@dataclass(frozen=True)
class UndecodableRequest:
    """Stand-in for a request whose bytes could not be parsed as a ``CompleteRequest``.

    Returned (not raised) by :func:`decode_complete_request`, because an exception raised in a
    grpc request deserializer becomes an opaque ``INTERNAL`` status before the servicer runs.
    """

    field: str
    message: str

    def to_error(self) -> InvalidArgument:
        return InvalidArgument(self.field, self.message)


def _session_strings(raw_session: internal_raw_pb2.RawSession) -> list[tuple[str, bytes]]:
    return [
        ("session.session_id", raw_session.session_id),
        ("session.user_id", raw_session.user_id),
        *((f"session.previous_queries[{i}]", q) for i, q in enumerate(raw_session.previous_queries)),
    ]


def _complete_strings(raw: internal_raw_pb2.RawCompleteRequest) -> list[tuple[str, bytes]]:
    session = _session_strings(raw.session) if raw.HasField("session") else []
    return [*session, ("prefix", raw.prefix), ("catalog", raw.catalog)]


def _search_strings(raw: internal_raw_pb2.RawSearchRequest) -> list[tuple[str, bytes]]:
    session = _session_strings(raw.session) if raw.HasField("session") else []
    return [*session, ("query", raw.query), ("catalog", raw.catalog)]


def _feedback_strings(raw: internal_raw_pb2.RawFeedbackRequest) -> list[tuple[str, bytes]]:
    action = raw.WhichOneof("action")
    return [("decision_id", raw.decision_id), *([(action, getattr(raw, action))] if action else [])]


def _first_non_utf8_field(candidates: Iterable[tuple[str, bytes]]) -> str | None:
    """Path of the first ``bytes`` value (in field-number order) that is not valid UTF-8."""
    for name, value in candidates:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return name
    return None


def _decode(data: bytes, strict_type, raw_type,
            strings: Callable[[object], Iterable[tuple[str, bytes]]]):
    """Strict parse of ``data`` as ``strict_type``; on failure, diagnose with the lenient twin."""
    try:
        return strict_type.FromString(data)
    except DecodeError:
        pass
    not_a_message = UndecodableRequest(
        "request", f"not a valid {strict_type.DESCRIPTOR.full_name} message"
    )
    try:
        raw = raw_type.FromString(data)
    except DecodeError:
        return not_a_message
    field = _first_non_utf8_field(strings(raw))
    if field is None:
        # Strict parse failed for a reason other than UTF-8 that the lenient twin tolerates.
        return not_a_message
    return UndecodableRequest(field, "not valid UTF-8")


def decode_complete_request(data: bytes) -> qac_service_pb2.CompleteRequest | UndecodableRequest:
    """Parse wire bytes into a ``CompleteRequest``, naming the field if a string is not UTF-8.

    Parameters
    ----------
    data : bytes
        Serialized ``qac.v1.CompleteRequest``.

    Returns
    -------
    CompleteRequest, or UndecodableRequest
        The latter with ``field`` = the first string field that is not valid UTF-8 (e.g.
        ``"session.previous_queries[0]"``, message ``"not valid UTF-8"``), or ``field="request"``
        when the bytes are not a protobuf message at all.
    """
    return _decode(data, qac_service_pb2.CompleteRequest, internal_raw_pb2.RawCompleteRequest,
                   _complete_strings)


def decode_search_request(data: bytes) -> qac_service_pb2.SearchRequest | UndecodableRequest:
    """As :func:`decode_complete_request`, for ``qac.v1.SearchRequest`` (fields ``session.*``,
    ``query``, ``catalog``)."""
    return _decode(data, qac_service_pb2.SearchRequest, internal_raw_pb2.RawSearchRequest,
                   _search_strings)


def decode_feedback_request(data: bytes) -> qac_service_pb2.FeedbackRequest | UndecodableRequest:
    """As :func:`decode_complete_request`, for ``qac.v1.FeedbackRequest`` (fields
    ``decision_id``, ``clicked_item_id``, ``accepted_suggestion``)."""
    return _decode(data, qac_service_pb2.FeedbackRequest, internal_raw_pb2.RawFeedbackRequest,
                   _feedback_strings)


def _check_length(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters (got {len(value)})")


# google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z. Times
# before the Unix epoch are rejected too: no query log predates it, and Unix seconds stay >= 0.
_MAX_TIMESTAMP_SECONDS = 253_402_300_799


def _check_timestamp(field: str, timestamp) -> None:
    if not 0 <= timestamp.seconds <= _MAX_TIMESTAMP_SECONDS:
        raise InvalidArgument(field, f"seconds must be in 0..{_MAX_TIMESTAMP_SECONDS} "
                                     f"(1970-01-01..9999-12-31), got {timestamp.seconds}")
    if not 0 <= timestamp.nanos <= 999_999_999:
        raise InvalidArgument(field, f"nanos must be in 0..999999999, got {timestamp.nanos}")


def _check_range(field: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise InvalidArgument(field, f"must be in {lo}..{hi} (got {value})")


def _validate_session(request, limits: RequestLimits) -> None:
    if not request.HasField("session"):
        raise InvalidArgument("session", "is required")
    session = request.session
    _check_length("session.session_id", session.session_id, limits.max_id_chars)
    _check_length("session.user_id", session.user_id, limits.max_id_chars)
    n_previous = len(session.previous_queries)
    if n_previous > limits.max_previous_queries:
        raise InvalidArgument(
            "session.previous_queries",
            f"more than {limits.max_previous_queries} queries (got {n_previous})",
        )
    for i, query in enumerate(session.previous_queries):
        _check_length(f"session.previous_queries[{i}]", query, limits.max_query_chars)
    if session.HasField("timestamp"):
        _check_timestamp("session.timestamp", session.timestamp)


def validate_complete_request(
    request: qac_service_pb2.CompleteRequest, limits: RequestLimits = RequestLimits()
) -> None:
    """Check a parsed ``CompleteRequest`` against ``limits``.

    Raises
    ------
    InvalidArgument
        For the first violation found, checked in this order: ``session`` missing;
        ``session.session_id`` / ``session.user_id`` longer than ``max_id_chars``; more than
        ``max_previous_queries`` previous queries; ``session.previous_queries[i]`` longer than
        ``max_query_chars``; ``session.timestamp`` outside 1970..9999 or with bad nanos;
        ``prefix`` blank (empty after stripping whitespace) or longer than ``max_prefix_chars``;
        ``k`` outside ``1..max_k`` (0, i.e. unset, is invalid); ``preview_k`` outside
        ``0..max_preview_k``; ``preview_completions`` outside ``0..max_preview_completions``;
        ``catalog`` longer than ``max_catalog_chars``.
    """
    _validate_session(request, limits)
    if not request.prefix.strip():
        raise InvalidArgument("prefix", "must not be empty or only whitespace")
    _check_length("prefix", request.prefix, limits.max_prefix_chars)
    _check_range("k", request.k, 1, limits.max_k)
    _check_range("preview_k", request.preview_k, 0, limits.max_preview_k)
    _check_range("preview_completions", request.preview_completions, 0, limits.max_preview_completions)
    _check_length("catalog", request.catalog, limits.max_catalog_chars)


def validate_search_request(
    request: qac_service_pb2.SearchRequest, limits: RequestLimits = RequestLimits()
) -> None:
    """Check a parsed ``SearchRequest`` against ``limits``.

    Raises
    ------
    InvalidArgument
        For the first violation found: the ``session`` checks of
        :func:`validate_complete_request`; ``query`` blank or longer than ``max_query_chars``;
        ``k`` outside ``1..max_k``; ``catalog`` longer than ``max_catalog_chars``.
    """
    _validate_session(request, limits)
    if not request.query.strip():
        raise InvalidArgument("query", "must not be empty or only whitespace")
    _check_length("query", request.query, limits.max_query_chars)
    _check_range("k", request.k, 1, limits.max_k)
    _check_length("catalog", request.catalog, limits.max_catalog_chars)


def validate_feedback_request(
    request: qac_service_pb2.FeedbackRequest, limits: RequestLimits = RequestLimits()
) -> None:
    """Check a parsed ``FeedbackRequest`` against ``limits``.

    Raises
    ------
    InvalidArgument
        For the first violation found: ``decision_id`` empty or longer than
        ``max_decision_id_chars``; ``action`` unset, or its value empty; ``clicked_item_id``
        longer than ``max_item_id_chars`` / ``accepted_suggestion`` or ``issued_query`` longer than
        ``max_query_chars``; ``position`` outside ``0..max_position``; ``timestamp`` outside
        1970..9999 or with bad nanos.
    """
    if not request.decision_id:
        raise InvalidArgument("decision_id", "is required")
    _check_length("decision_id", request.decision_id, limits.max_decision_id_chars)
    action = request.WhichOneof("action")
    if action is None:
        raise InvalidArgument("action", "exactly one of clicked_item_id, accepted_suggestion or issued_query "
                                        "is required")
    value = getattr(request, action)
    if not value.strip():
        raise InvalidArgument("action", f"{action} must not be empty or only whitespace")
    if action == "clicked_item_id":
        _check_length("clicked_item_id", value, limits.max_item_id_chars)
    else:
        _check_length(action, value, limits.max_query_chars)
    _check_range("position", request.position, 0, limits.max_position)
    if request.HasField("timestamp"):
        _check_timestamp("timestamp", request.timestamp)
