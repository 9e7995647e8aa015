"""gRPC servicer for ``qac.v1.QueryService``: protobuf in, domain call, protobuf out.

Thin on purpose (STYLE.md point 8): it validates (``serving.validation``), converts the request
to plain Python values, calls ``completer.complete(previous_queries, prefix, k)`` and converts
the result back. All ranking logic lives in the completer and is tested without a socket.

Status codes
------------
INVALID_ARGUMENT
    Bad request, details ``"<field>: <reason>"`` (from :class:`serving.validation.InvalidArgument`,
    or ``qac.completer.CompletionError``, both carrying ``.field`` and ``.message``).
UNAVAILABLE
    No completer loaded yet (health reports NOT_SERVING in that window).
INTERNAL
    Anything else; the traceback is logged server-side and never sent to the client.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Protocol, Sequence

import grpc

from serving.pb.qac.v1 import qac_service_pb2
from serving.validation import (
    InvalidArgument,
    RequestLimits,
    UndecodableRequest,
    decode_complete_request,
    validate_complete_request,
)

logger = logging.getLogger(__name__)

SERVICE_NAME = qac_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


class CompletionLike(Protocol):
    text: str
    score: float
    source: str


class CompleterLike(Protocol):
    """What the servicer needs from a completer (``qac.completer.Completer`` satisfies it).

    Optional: a ``version`` attribute (reported as ``model_version``) and a ``warmup()`` method
    (called by the server before it reports SERVING).
    """

    def complete(self, previous_queries: list[str], prefix: str, k: int) -> Sequence[CompletionLike]:
        ...


def _is_client_error(exc: BaseException) -> bool:
    """True for errors that mean "bad request" rather than "server fault"."""
    if isinstance(exc, InvalidArgument):
        return True
    # A CompletionError can only exist if qac.completer was imported, so look it up instead of
    # importing it: the servicer stays importable (and fast to import) without the model stack.
    completer_module = sys.modules.get("qac.completer")
    completion_error = getattr(completer_module, "CompletionError", None)
    return isinstance(completion_error, type) and isinstance(exc, completion_error)


class QueryServiceServicer:
    """Implements ``qac.v1.QueryService``.

    Parameters
    ----------
    completer : CompleterLike or None
        The object answering ``complete``; ``None`` until loaded (requests then get UNAVAILABLE).
        Replace it with :meth:`set_completer` (a single attribute swap, so in-flight requests
        finish on the completer they started with).
    limits : RequestLimits
        Request size limits.
    """

    def __init__(self, completer: CompleterLike | None = None,
                 limits: RequestLimits = RequestLimits()) -> None:
        self._completer = completer
        self.limits = limits

    @property
    def completer(self) -> CompleterLike | None:
        return self._completer

    def set_completer(self, completer: CompleterLike) -> None:
        self._completer = completer

    def Complete(self, request: Any, context: grpc.ServicerContext) -> qac_service_pb2.CompleteResponse:
        completer = self._completer  # read once: a concurrent swap can't split this request
        try:
            previous_queries, prefix, k = self._to_domain(request)
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.message}")
        if completer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "model is loading; retry later")
        try:
            results = completer.complete(previous_queries, prefix, k)
            return qac_service_pb2.CompleteResponse(
                completions=[
                    qac_service_pb2.Completion(text=c.text, score=float(c.score), source=c.source)
                    for c in results
                ],
                model_version=str(getattr(completer, "version", "") or ""),
            )
        except Exception as exc:
            if _is_client_error(exc):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.message}")
            logger.exception("Complete failed (k=%d, prefix of %d chars, %d previous queries)",
                             k, len(prefix), len(previous_queries))
            context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def _to_domain(self, request: Any) -> tuple[list[str], str, int]:
        """Validated ``(previous_queries oldest first, raw prefix, k)``; raises InvalidArgument."""
        if isinstance(request, UndecodableRequest):
            raise request.to_error()
        validate_complete_request(request, self.limits)
        return list(request.session.previous_queries), request.prefix, int(request.k)


def rpc_method_handlers(servicer: QueryServiceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Method handlers for ``qac.v1.QueryService`` with the UTF-8-tolerant request deserializer.

    The generated ``add_QueryServiceServicer_to_server`` hard-wires
    ``CompleteRequest.FromString`` as the deserializer, which turns invalid UTF-8 into an opaque
    INTERNAL before the servicer runs; so the handlers are built here instead, with
    :func:`serving.validation.decode_complete_request`, and registered by
    :func:`add_to_server` exactly as the generated function would.
    """
    return {
        "Complete": grpc.unary_unary_rpc_method_handler(
            servicer.Complete,
            request_deserializer=decode_complete_request,
            response_serializer=qac_service_pb2.CompleteResponse.SerializeToString,
        ),
    }


def add_to_server(servicer: QueryServiceServicer, server: grpc.Server) -> None:
    """Register ``servicer`` on ``server`` (drop-in for the generated ``add_..._to_server``)."""
    handlers = rpc_method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # Registered handlers skip grpc's per-call generic lookup (what generated code does, too).
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
