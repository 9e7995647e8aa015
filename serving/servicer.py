"""gRPC servicer for ``qac.v1.QueryService``: protobuf in, domain call, protobuf out.

Thin on purpose (STYLE.md point 8): it validates (``serving.validation``), converts the request
to plain Python values, calls ``completer.complete(previous_queries, prefix, k)`` or the search
service (:class:`serving.search_types.SearchServiceLike`: ``search``, ``feedback``,
``record_completion``) and converts the result back. All ranking logic lives behind those calls
and is tested without a socket.

Status codes
------------
INVALID_ARGUMENT
    Bad request, details ``"<field>: <reason>"`` (from :class:`serving.validation.InvalidArgument`,
    or ``qac.completer.CompletionError``, both carrying ``.field`` and ``.message``), and
    :class:`~serving.search_types.UnknownCatalog` (``"catalog: ..."``) /
    :class:`~serving.search_types.UnknownItem` (``"action: ..."``).
NOT_FOUND
    Feedback for a decision the search service does not know
    (:class:`~serving.search_types.UnknownDecision`, ``"decision_id: unknown decision <id>"``).
UNAVAILABLE
    No completer loaded yet (health reports NOT_SERVING in that window); every RPC answers this.
UNIMPLEMENTED
    Search, Feedback, or Complete with ``preview_k > 0`` on a server without a search service.
INTERNAL
    Anything else; the traceback is logged server-side and never sent to the client.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, NoReturn, Protocol, Sequence

import grpc

from serving.pb.qac.v1 import qac_service_pb2
from serving.search_types import (
    SearchContext,
    SearchHit,
    SearchServiceLike,
    UnknownCatalog,
    UnknownDecision,
    UnknownItem,
)
from serving.validation import (
    InvalidArgument,
    RequestLimits,
    UndecodableRequest,
    decode_complete_request,
    decode_feedback_request,
    decode_search_request,
    validate_complete_request,
    validate_feedback_request,
    validate_search_request,
)

logger = logging.getLogger(__name__)

SERVICE_NAME = qac_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
LOADING_MESSAGE = "model is loading; retry later"
NO_SEARCH_MESSAGE = "search is not configured on this server"


class CompletionLike(Protocol):
    text: str
    score: float
    source: str


class CompleterLike(Protocol):
    """What the servicer needs from a completer (``qac.completer.Completer`` satisfies it).

    Optional: a ``version`` attribute (reported as ``model_version``) and a ``warmup()`` method
    (called by the server before it reports SERVING).
    """

    def complete(self, previous_queries: list[str], prefix: str, k: int, *, user_id: str = "",
                 timestamp: int = 0) -> Sequence[CompletionLike]:
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


def _abort_for(exc: Exception, context: grpc.ServicerContext, what: str) -> NoReturn:
    """Map an exception from the completer or the search service to a status, and abort."""
    if isinstance(exc, UnknownDecision):
        context.abort(grpc.StatusCode.NOT_FOUND, f"decision_id: unknown decision {exc.decision_id}")
    if isinstance(exc, UnknownCatalog):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"catalog: unknown catalog {exc.catalog} (have: {', '.join(exc.available)})")
    if isinstance(exc, UnknownItem):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"action: {exc.kind} {exc.item_id} was not among the decision's results")
    if _is_client_error(exc):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.message}")
    logger.exception("%s failed", what)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _unix_seconds(message: Any, field: str) -> int:
    """``message.<field>`` (a Timestamp) in Unix seconds, or the server's time if it is unset."""
    if message.HasField(field):
        return int(getattr(message, field).seconds)
    return int(time.time())


def _sync(search_service: SearchServiceLike) -> None:
    """Call the search service's optional ``sync()`` (bring the online state to the shared log)."""
    sync = getattr(search_service, "sync", None)
    if sync is not None:
        sync()


def _search_context(session: qac_service_pb2.Session) -> SearchContext:
    return SearchContext(
        session_id=session.session_id,
        user_id=session.user_id,
        previous_queries=tuple(session.previous_queries),
        timestamp=_unix_seconds(session, "timestamp"),
    )


def _search_items(hits: Sequence[SearchHit]) -> list[qac_service_pb2.SearchItem]:
    return [
        qac_service_pb2.SearchItem(item_id=h.item_id, text=h.text, score=float(h.score), arms=list(h.arms))
        for h in hits
    ]


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
    search_service : SearchServiceLike or None
        The object answering ``search``, ``feedback`` and ``record_completion``; ``None`` = this
        server has no search (Search, Feedback and previews answer UNIMPLEMENTED, and
        ``CompleteResponse.decision_id`` is empty). Install it before the completer: the
        completer being set is what ends the loading window.
    """

    def __init__(self, completer: CompleterLike | None = None,
                 limits: RequestLimits = RequestLimits(),
                 search_service: SearchServiceLike | None = None) -> None:
        self._completer = completer
        self._search_service = search_service
        self.limits = limits

    @property
    def completer(self) -> CompleterLike | None:
        return self._completer

    def set_completer(self, completer: CompleterLike) -> None:
        self._completer = completer

    @property
    def search_service(self) -> SearchServiceLike | None:
        return self._search_service

    def set_search_service(self, search_service: SearchServiceLike | None) -> None:
        self._search_service = search_service

    # ----------------------------------------------------------------------------- Complete

    def Complete(self, request: Any, context: grpc.ServicerContext) -> qac_service_pb2.CompleteResponse:
        # Read both once: a concurrent swap can't split this request.
        completer, search_service = self._completer, self._search_service
        try:
            previous_queries, prefix, k = self._to_domain(request)
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.message}")
        if completer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, LOADING_MESSAGE)
        if request.preview_k > 0 and search_service is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, NO_SEARCH_MESSAGE)
        try:
            search_context = _search_context(request.session)
            if search_service is not None:
                _sync(search_service)  # other processes' feedback first (user histories, follow-ups)
            results = completer.complete(previous_queries, prefix, k, user_id=search_context.user_id,
                                         timestamp=search_context.timestamp)
            # Built in place (repeated-field add): about half the cost of constructing each message.
            response = qac_service_pb2.CompleteResponse(model_version=str(getattr(completer, "version", "") or ""))
            add = response.completions.add
            for c in results:
                start, end = getattr(c, "highlight", (0, 0))
                add(text=c.text, score=float(c.score), source=c.source, highlight_start=start, highlight_end=end)
            completions = response.completions
            if search_service is not None:
                if request.preview_k > 0:
                    n_previews = request.preview_completions or self.limits.default_preview_completions
                    for completion in completions[:n_previews]:
                        found = search_service.search(completion.text, search_context,
                                                      int(request.preview_k), request.catalog)
                        completion.preview.extend(_search_items(found.hits))
                        completion.preview_decision_id = found.decision_id
                # Logged last, so a request that failed above leaves no completion decision behind.
                response.decision_id = search_service.record_completion(
                    search_context, prefix, [c.text for c in completions])
            return response
        except Exception as exc:
            _abort_for(exc, context, f"Complete (k={k}, prefix of {len(prefix)} chars, "
                                     f"{len(previous_queries)} previous queries, "
                                     f"preview_k={request.preview_k})")

    def _to_domain(self, request: Any) -> tuple[list[str], str, int]:
        """Validated ``(previous_queries oldest first, raw prefix, k)``; raises InvalidArgument."""
        if isinstance(request, UndecodableRequest):
            raise request.to_error()
        validate_complete_request(request, self.limits)
        return list(request.session.previous_queries), request.prefix, int(request.k)

    # ----------------------------------------------------------------------------- Search

    def _search_service_or_abort(self, context: grpc.ServicerContext) -> SearchServiceLike:
        search_service = self._search_service
        if self._completer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, LOADING_MESSAGE)
        if search_service is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, NO_SEARCH_MESSAGE)
        return search_service

    def Search(self, request: Any, context: grpc.ServicerContext) -> qac_service_pb2.SearchResponse:
        search_service = self._search_service_or_abort(context)
        try:
            if isinstance(request, UndecodableRequest):
                raise request.to_error()
            validate_search_request(request, self.limits)
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.message}")
        try:
            result = search_service.search(request.query, _search_context(request.session),
                                           int(request.k), request.catalog)
            return qac_service_pb2.SearchResponse(
                items=_search_items(result.hits),
                decision_id=result.decision_id,
                model_version=str(result.model_version or ""),
            )
        except Exception as exc:
            _abort_for(exc, context, f"Search (k={request.k}, query of {len(request.query)} chars, "
                                     f"catalog={request.catalog!r})")

    # ----------------------------------------------------------------------------- Feedback

    def Feedback(self, request: Any, context: grpc.ServicerContext) -> qac_service_pb2.FeedbackResponse:
        search_service = self._search_service_or_abort(context)
        try:
            if isinstance(request, UndecodableRequest):
                raise request.to_error()
            validate_feedback_request(request, self.limits)
        except InvalidArgument as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.message}")
        action = request.WhichOneof("action")
        try:
            outcome = search_service.feedback(
                request.decision_id,
                request.clicked_item_id if action == "clicked_item_id" else None,
                request.accepted_suggestion if action == "accepted_suggestion" else None,
                int(request.position),
                _unix_seconds(request, "timestamp"),
                issued_query=request.issued_query if action == "issued_query" else None,
            )
            return qac_service_pb2.FeedbackResponse(duplicate=bool(outcome.duplicate),
                                                    reward=float(outcome.reward))
        except Exception as exc:
            _abort_for(exc, context, f"Feedback ({action}, position={request.position})")


def rpc_method_handlers(servicer: QueryServiceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Method handlers for ``qac.v1.QueryService`` with the UTF-8-tolerant request deserializer.

    The generated ``add_QueryServiceServicer_to_server`` hard-wires
    ``CompleteRequest.FromString`` as the deserializer, which turns invalid UTF-8 into an opaque
    INTERNAL before the servicer runs; so the handlers are built here instead, with
    :func:`serving.validation.decode_complete_request` (and its Search/Feedback twins), and
    registered by :func:`add_to_server` exactly as the generated function would.
    """
    return {
        "Complete": grpc.unary_unary_rpc_method_handler(
            servicer.Complete,
            request_deserializer=decode_complete_request,
            response_serializer=qac_service_pb2.CompleteResponse.SerializeToString,
        ),
        "Search": grpc.unary_unary_rpc_method_handler(
            servicer.Search,
            request_deserializer=decode_search_request,
            response_serializer=qac_service_pb2.SearchResponse.SerializeToString,
        ),
        "Feedback": grpc.unary_unary_rpc_method_handler(
            servicer.Feedback,
            request_deserializer=decode_feedback_request,
            response_serializer=qac_service_pb2.FeedbackResponse.SerializeToString,
        ),
    }


def register_handlers(server: Any, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    """Register ``handlers`` (method name -> handler) of ``service_name`` on a grpc or grpc.aio server,
    exactly as generated ``add_..._to_server`` functions do."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    # Registered handlers skip grpc's per-call generic lookup (what generated code does, too).
    server.add_registered_method_handlers(service_name, handlers)


def add_to_server(servicer: QueryServiceServicer, server: grpc.Server) -> None:
    """Register ``servicer`` on ``server`` (drop-in for the generated ``add_..._to_server``)."""
    register_handlers(server, SERVICE_NAME, rpc_method_handlers(servicer))
