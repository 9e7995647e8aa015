"""Request validation for the gRPC API: pure functions, no grpc import.

Every check raises :class:`InvalidArgument` naming the offending field in the request's own
words (``prefix``, ``k``, ``session.previous_queries[3]``), which the servicer turns into
``INVALID_ARGUMENT`` with the details ``"<field>: <reason>"``.

Invalid UTF-8 needs special handling: python protobuf refuses to parse a message whose
``string`` field is not valid UTF-8, so the servicer would never see the request and grpc would
answer a generic ``INTERNAL "Exception deserializing request!"``. :func:`decode_complete_request`
is therefore installed as the method's request deserializer: when the strict parse fails it
re-parses the same bytes as ``qac.v1.internal.RawCompleteRequest`` (identical field numbers,
``bytes`` instead of ``string``) to find the first field that does not decode, and returns an
:class:`UndecodableRequest` that the servicer reports like any other invalid argument.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

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
    """Upper bounds on what a single request may carry (lengths in Unicode code points)."""

    max_prefix_chars: int = 256
    max_k: int = 100
    max_previous_queries: int = 32
    max_query_chars: int = 512
    max_id_chars: int = 128

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{f.name} must be a positive int, got {value!r}")


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


def _first_non_utf8_field(raw: internal_raw_pb2.RawCompleteRequest) -> str | None:
    """Path of the first ``bytes`` field (in field-number order) that is not valid UTF-8."""
    candidates: list[tuple[str, bytes]] = []
    if raw.HasField("session"):
        session = raw.session
        candidates.append(("session.session_id", session.session_id))
        candidates.append(("session.user_id", session.user_id))
        candidates.extend(
            (f"session.previous_queries[{i}]", q) for i, q in enumerate(session.previous_queries)
        )
    candidates.append(("prefix", raw.prefix))
    for name, value in candidates:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return name
    return None


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
    try:
        return qac_service_pb2.CompleteRequest.FromString(data)
    except DecodeError:
        pass
    try:
        raw = internal_raw_pb2.RawCompleteRequest.FromString(data)
    except DecodeError:
        return UndecodableRequest("request", "not a valid qac.v1.CompleteRequest message")
    field = _first_non_utf8_field(raw)
    if field is None:
        # Strict parse failed for a reason other than UTF-8 that the lenient twin tolerates.
        return UndecodableRequest("request", "not a valid qac.v1.CompleteRequest message")
    return UndecodableRequest(field, "not valid UTF-8")


def _check_length(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters (got {len(value)})")


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
        ``max_query_chars``; ``prefix`` blank (empty after stripping whitespace) or longer than
        ``max_prefix_chars``; ``k`` outside ``1..max_k`` (0, i.e. unset, is invalid).
    """
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
    if not request.prefix.strip():
        raise InvalidArgument("prefix", "must not be empty or only whitespace")
    _check_length("prefix", request.prefix, limits.max_prefix_chars)
    if not 1 <= request.k <= limits.max_k:
        raise InvalidArgument("k", f"must be in 1..{limits.max_k} (got {request.k})")
