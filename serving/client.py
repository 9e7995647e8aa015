"""Small blocking client for ``qac.v1.QueryService`` and the ``qac complete`` / ``qac search`` /
``qac feedback`` commands."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.pb.qac.v1 import qac_service_pb2, qac_service_pb2_grpc

CompletionTuple = tuple[str, float, str]  # (text, score, source)
SearchItemTuple = tuple[str, str, float, tuple[str, ...]]  # (item_id, text, score, arms)
# (text, score, source, preview_decision_id, preview items)
PreviewedCompletionTuple = tuple[str, float, str, str, list[SearchItemTuple]]


def _session(previous_queries: Sequence[str], session_id: str, user_id: str) -> qac_service_pb2.Session:
    timestamp = Timestamp()
    timestamp.GetCurrentTime()
    return qac_service_pb2.Session(session_id=session_id, user_id=user_id,
                                   previous_queries=list(previous_queries), timestamp=timestamp)


def _item_tuples(items) -> list[SearchItemTuple]:
    return [(i.item_id, i.text, i.score, tuple(i.arms)) for i in items]


def complete_with_previews(
    target: str,
    prefix: str,
    previous_queries: Sequence[str] = (),
    k: int = 10,
    session_id: str = "",
    user_id: str = "",
    timeout: float = 5.0,
    *,
    preview_k: int = 0,
    preview_completions: int = 0,
    catalog: str = "",
) -> tuple[str, list[PreviewedCompletionTuple]]:
    """Completions of ``prefix`` with their previews and the completion decision id.

    Parameters are those of :func:`complete`.

    Returns
    -------
    decision_id : str
        The completion decision, for :func:`feedback` with ``accepted_suggestion`` ("" if the
        server has no search).
    completions : list of (text, score, source, preview_decision_id, preview)
        Best first; ``preview`` is a list of ``(item_id, text, score, arms)`` (empty, with
        ``preview_decision_id == ""``, for completions without previews).

    Raises
    ------
    grpc.RpcError
        As :func:`complete`.
    """
    request = qac_service_pb2.CompleteRequest(
        session=_session(previous_queries, session_id, user_id),
        prefix=prefix,
        k=k,
        preview_k=preview_k,
        preview_completions=preview_completions,
        catalog=catalog,
    )
    with grpc.insecure_channel(target) as channel:
        response = qac_service_pb2_grpc.QueryServiceStub(channel).Complete(request, timeout=timeout)
    return response.decision_id, [
        (c.text, c.score, c.source, c.preview_decision_id, _item_tuples(c.preview))
        for c in response.completions
    ]


def complete(
    target: str,
    prefix: str,
    previous_queries: Sequence[str] = (),
    k: int = 10,
    session_id: str = "",
    user_id: str = "",
    timeout: float = 5.0,
    *,
    preview_k: int = 0,
    preview_completions: int = 0,
    catalog: str = "",
) -> list[CompletionTuple] | list[PreviewedCompletionTuple]:
    """Ask the server at ``target`` for completions of ``prefix``.

    Parameters
    ----------
    target : str
        ``host:port``.
    prefix : str
        What the user has typed.
    previous_queries : sequence of str
        Earlier queries of the session, oldest first.
    k : int
        Number of completions wanted (1..100).
    session_id, user_id : str
    timeout : float
        Deadline in seconds.
    preview_k : int
        Search results to attach to each top completion (0..10); 0 = none.
    preview_completions : int
        How many top completions get previews (0..10); 0 = the server's default (3).
    catalog : str
        Catalogue the previews come from; "" = the server's default.

    Returns
    -------
    list of (text, score, source)
        Best first, when ``preview_k == 0``; otherwise a list of
        ``(text, score, source, preview_decision_id, preview)`` as in
        :func:`complete_with_previews` (which also returns the completion decision id).

    Raises
    ------
    grpc.RpcError
        With ``.code()`` INVALID_ARGUMENT (``.details()`` = ``"<field>: <reason>"``),
        UNAVAILABLE, UNIMPLEMENTED (previews from a server without search), DEADLINE_EXCEEDED, ...
    """
    _, results = complete_with_previews(
        target, prefix, previous_queries, k, session_id, user_id, timeout,
        preview_k=preview_k, preview_completions=preview_completions, catalog=catalog,
    )
    if preview_k == 0:
        return [(text, score, source) for text, score, source, _, _ in results]
    return results


def search(
    target: str,
    query: str,
    previous_queries: Sequence[str] = (),
    k: int = 10,
    catalog: str = "",
    session_id: str = "",
    user_id: str = "",
    timeout: float = 5.0,
) -> tuple[str, list[SearchItemTuple]]:
    """Search ``catalog`` at ``target`` for ``query``.

    Parameters
    ----------
    target : str
        ``host:port``.
    query : str
        The full query.
    previous_queries : sequence of str
        Earlier queries of the session, oldest first.
    k : int
        Number of items wanted (1..100).
    catalog : str
        Item catalogue, e.g. ``"aol"`` or ``"homedepot"``; "" = the server's default.
    session_id, user_id : str
    timeout : float
        Deadline in seconds.

    Returns
    -------
    decision_id : str
        For :func:`feedback` with ``clicked_item_id``.
    items : list of (item_id, text, score, arms)
        Best first; ``arms`` is a tuple of arm names.

    Raises
    ------
    grpc.RpcError
        INVALID_ARGUMENT (bad request or unknown catalog), UNIMPLEMENTED (server without search),
        UNAVAILABLE, DEADLINE_EXCEEDED, ...
    """
    request = qac_service_pb2.SearchRequest(
        session=_session(previous_queries, session_id, user_id), query=query, k=k, catalog=catalog,
    )
    with grpc.insecure_channel(target) as channel:
        response = qac_service_pb2_grpc.QueryServiceStub(channel).Search(request, timeout=timeout)
    return response.decision_id, _item_tuples(response.items)


def feedback(
    target: str,
    decision_id: str,
    clicked_item_id: str | None = None,
    accepted_suggestion: str | None = None,
    position: int = 0,
    timeout: float = 5.0,
    issued_query: str | None = None,
) -> tuple[bool, float]:
    """Report a click on ``clicked_item_id``, the acceptance of ``accepted_suggestion``, or the query
    the user issued after a completion (``issued_query``, not one of the suggestions).

    Parameters
    ----------
    target : str
        ``host:port``.
    decision_id : str
        From :func:`search` (or a completion's ``preview_decision_id``) for a click, from
        :func:`complete_with_previews` for an accepted suggestion.
    clicked_item_id, accepted_suggestion, issued_query : str or None
        At most one may be given (the server rejects a request with none, naming ``action``).
    position : int
        0-based position of the item / suggestion in the response.
    timeout : float
        Deadline in seconds.

    Returns
    -------
    duplicate : bool
        True if the server had already recorded this event (then ``reward`` is 0).
    reward : float

    Raises
    ------
    ValueError
        If more than one action is given.
    grpc.RpcError
        NOT_FOUND (unknown decision), INVALID_ARGUMENT, UNIMPLEMENTED, UNAVAILABLE, ...
    """
    if sum(v is not None for v in (clicked_item_id, accepted_suggestion, issued_query)) > 1:
        raise ValueError("give at most one of clicked_item_id, accepted_suggestion and issued_query")
    timestamp = Timestamp()
    timestamp.GetCurrentTime()
    request = qac_service_pb2.FeedbackRequest(decision_id=decision_id, position=position,
                                              timestamp=timestamp)
    if clicked_item_id is not None:
        request.clicked_item_id = clicked_item_id
    if accepted_suggestion is not None:
        request.accepted_suggestion = accepted_suggestion
    if issued_query is not None:
        request.issued_query = issued_query
    with grpc.insecure_channel(target) as channel:
        response = qac_service_pb2_grpc.QueryServiceStub(channel).Feedback(request, timeout=timeout)
    return response.duplicate, response.reward


def check_health(target: str, service: str = "", timeout: float = 5.0) -> str:
    """Health status name of ``service`` at ``target`` ("" = the whole server).

    Returns
    -------
    str
        ``"SERVING"``, ``"NOT_SERVING"``, ...

    Raises
    ------
    grpc.RpcError
        If the server is unreachable (UNAVAILABLE) or does not know ``service`` (NOT_FOUND).
    """
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _format_previous(previous_queries: Sequence[str]) -> str:
    return " > ".join(repr(q) for q in previous_queries) if previous_queries else "(none)"


def _format_items(items: Sequence[SearchItemTuple], indent: str = "") -> list[str]:
    id_width = max(len("item"), *(len(item_id) for item_id, _, _, _ in items))
    arms = [",".join(a) for _, _, _, a in items]
    arms_width = max(len("arms"), *(len(a) for a in arms))
    lines = [f"{indent}{'#':>3}  {'score':>8}  {'item':<{id_width}}  {'arms':<{arms_width}}  text"]
    for rank, ((item_id, text, score, _), arm_names) in enumerate(zip(items, arms), start=1):
        lines.append(f"{indent}{rank:>3}  {score:>8.4f}  {item_id:<{id_width}}  "
                     f"{arm_names:<{arms_width}}  {text}")
    return lines


def format_completions(prefix: str, previous_queries: Sequence[str],
                       results: Sequence[CompletionTuple] | Sequence[PreviewedCompletionTuple],
                       decision_id: str = "") -> str:
    """A small plain-text table of ``results`` under a header naming the session and prefix.

    ``results`` are ``(text, score, source)`` or, with previews, ``(text, score, source,
    preview_decision_id, preview)``; a non-empty preview is printed indented under its completion.
    A non-empty ``decision_id`` is printed last.
    """
    lines = [f"previous: {_format_previous(previous_queries)}", f"prefix:   {prefix!r}"]
    if not results:
        lines.append("(no completions)")
    else:
        source_width = max(len("source"), *(len(r[2]) for r in results))
        lines.append(f"{'#':>3}  {'score':>8}  {'source':<{source_width}}  completion")
        for rank, result in enumerate(results, start=1):
            text, score, source = result[:3]
            lines.append(f"{rank:>3}  {score:>8.4f}  {source:<{source_width}}  {text}")
            if len(result) == 5 and result[4]:
                lines.append(f"       preview (decision {result[3]}):")
                lines.extend(_format_items(result[4], indent="       "))
    if decision_id:
        lines.append(f"decision: {decision_id}")
    return "\n".join(lines)


def format_search_results(query: str, previous_queries: Sequence[str], decision_id: str,
                          items: Sequence[SearchItemTuple]) -> str:
    """A small plain-text table of search ``items`` under a header naming the session and query,
    and the decision id (for ``qac feedback``) last."""
    lines = [f"previous: {_format_previous(previous_queries)}", f"query:    {query!r}"]
    lines.extend(_format_items(items) if items else ["(no results)"])
    lines.append(f"decision: {decision_id}")
    return "\n".join(lines)


def format_feedback(duplicate: bool, reward: float) -> str:
    """One line saying whether the event was recorded, and its reward."""
    if duplicate:
        return "duplicate: already recorded, nothing changed (reward 0)"
    return f"recorded: reward {reward:.4f}"


def _print_rpc_error(exc: grpc.RpcError) -> int:
    print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1


def main_complete(args: argparse.Namespace) -> int:
    """``qac complete``: args has ``target``, ``prefix``, ``previous``, ``k``, ``session_id``,
    ``user_id``, and optionally ``preview_k``, ``preview_completions``, ``catalog``. Prints the
    table (with previews and the decision id when the server gives them); returns 0, or 1 on an
    RPC error (printed to stderr)."""
    previous = list(args.previous or ())
    preview_k = getattr(args, "preview_k", 0) or 0
    try:
        decision_id, results = complete_with_previews(
            args.target, args.prefix, previous, k=args.k, session_id=args.session_id,
            user_id=args.user_id, preview_k=preview_k,
            preview_completions=getattr(args, "preview_completions", 0) or 0,
            catalog=getattr(args, "catalog", "") or "",
        )
    except grpc.RpcError as exc:
        return _print_rpc_error(exc)
    print(format_completions(args.prefix, previous, results, decision_id))
    return 0


def main_search(args: argparse.Namespace) -> int:
    """``qac search``: args has ``target``, ``query``, ``previous`` (list), ``k``, ``catalog``,
    ``session_id``, ``user_id``. Prints the table and the decision id; returns 0, or 1 on an RPC
    error (printed to stderr)."""
    previous = list(getattr(args, "previous", None) or ())
    try:
        decision_id, items = search(
            args.target, args.query, previous, k=args.k, catalog=getattr(args, "catalog", "") or "",
            session_id=getattr(args, "session_id", "") or "", user_id=getattr(args, "user_id", "") or "",
        )
    except grpc.RpcError as exc:
        return _print_rpc_error(exc)
    print(format_search_results(args.query, previous, decision_id, items))
    return 0


def main_feedback(args: argparse.Namespace) -> int:
    """``qac feedback``: args has ``target``, ``decision_id``, ``item``, ``suggestion``,
    ``issued_query``, ``position``; exactly one of ``item`` / ``suggestion`` / ``issued_query`` must be
    given. Prints the outcome; returns 0, 2 for a usage error, or 1 on an RPC error (printed to stderr)."""
    item, suggestion = getattr(args, "item", None), getattr(args, "suggestion", None)
    issued = getattr(args, "issued_query", None)
    if sum(v is not None for v in (item, suggestion, issued)) != 1:
        print("error: give exactly one of --item, --suggestion and --issued-query", file=sys.stderr)
        return 2
    try:
        duplicate, reward = feedback(args.target, args.decision_id, clicked_item_id=item,
                                     accepted_suggestion=suggestion, issued_query=issued,
                                     position=getattr(args, "position", 0) or 0)
    except grpc.RpcError as exc:
        return _print_rpc_error(exc)
    print(format_feedback(duplicate, reward))
    return 0
