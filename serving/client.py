"""Small blocking client for ``qac.v1.QueryService`` and the ``qac complete`` command."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.pb.qac.v1 import qac_service_pb2, qac_service_pb2_grpc

CompletionTuple = tuple[str, float, str]


def complete(
    target: str,
    prefix: str,
    previous_queries: Sequence[str] = (),
    k: int = 10,
    session_id: str = "",
    user_id: str = "",
    timeout: float = 5.0,
) -> list[CompletionTuple]:
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

    Returns
    -------
    list of (text, score, source)
        Best first.

    Raises
    ------
    grpc.RpcError
        With ``.code()`` INVALID_ARGUMENT (``.details()`` = ``"<field>: <reason>"``),
        UNAVAILABLE, DEADLINE_EXCEEDED, ...
    """
    timestamp = Timestamp()
    timestamp.GetCurrentTime()
    request = qac_service_pb2.CompleteRequest(
        session=qac_service_pb2.Session(
            session_id=session_id,
            user_id=user_id,
            previous_queries=list(previous_queries),
            timestamp=timestamp,
        ),
        prefix=prefix,
        k=k,
    )
    with grpc.insecure_channel(target) as channel:
        response = qac_service_pb2_grpc.QueryServiceStub(channel).Complete(request, timeout=timeout)
    return [(c.text, c.score, c.source) for c in response.completions]


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


def format_completions(prefix: str, previous_queries: Sequence[str],
                       results: Sequence[CompletionTuple]) -> str:
    """A small plain-text table of ``results`` under a header naming the session and prefix."""
    previous = " > ".join(repr(q) for q in previous_queries) if previous_queries else "(none)"
    lines = [f"previous: {previous}", f"prefix:   {prefix!r}"]
    if not results:
        lines.append("(no completions)")
        return "\n".join(lines)
    source_width = max(len("source"), *(len(source) for _, _, source in results))
    lines.append(f"{'#':>3}  {'score':>8}  {'source':<{source_width}}  completion")
    for rank, (text, score, source) in enumerate(results, start=1):
        lines.append(f"{rank:>3}  {score:>8.4f}  {source:<{source_width}}  {text}")
    return "\n".join(lines)


def main_complete(args: argparse.Namespace) -> int:
    """``qac complete``: args has ``target``, ``prefix``, ``previous``, ``k``, ``session_id``,
    ``user_id``. Prints the table; returns 0, or 1 on an RPC error (printed to stderr)."""
    previous = list(args.previous or ())
    try:
        results = complete(args.target, args.prefix, previous, k=args.k,
                           session_id=args.session_id, user_id=args.user_id)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(format_completions(args.prefix, previous, results))
    return 0
