"""The search service's side of the gRPC contract: plain types, no grpc, no protobuf.

:class:`serving.servicer.QueryServiceServicer` answers ``Search``, ``Feedback`` and the previews of
``Complete`` by calling an object that satisfies :class:`SearchServiceLike` (the real one is
``retrieval.service``'s, loaded by ``retrieval.service.load_search_service(artifacts_dir,
state_dir)``). This module defines what crosses that boundary, so both sides and the tests can
use it without importing grpc or the retrieval stack.

Errors the servicer maps to gRPC status codes (anything else is INTERNAL):

- :class:`UnknownDecision` -> NOT_FOUND ``"decision_id: unknown decision <id>"``
- :class:`UnknownCatalog` -> INVALID_ARGUMENT ``"catalog: unknown catalog <name> (have: a, b)"``
- :class:`UnknownItem` -> INVALID_ARGUMENT ``"action: item <id> was not among the decision's results"``
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class SearchContext:
    """Who is asking, and when (the request's ``Session``).

    Parameters
    ----------
    session_id : str
        Opaque client session id ("" if none).
    user_id : str
        Opaque user id ("" for anonymous users).
    previous_queries : tuple of str
        Earlier queries of the session, oldest first, raw (un-normalised) as the client sent them.
    timestamp : int
        Unix seconds (UTC) of the request: the client's ``session.timestamp``, or the server's
        receive time when the client sent none.
    """

    session_id: str
    user_id: str
    previous_queries: tuple[str, ...]
    timestamp: int


@dataclass(frozen=True)
class SearchHit:
    """One ranked item.

    Parameters
    ----------
    item_id : str
        The item's key in its catalogue (product uid, normalised site URL).
    text : str
        Display text.
    score : float
        Ranker score, higher is better; comparable only within one result list.
    arms : tuple of str
        Names of the retrieval arms that proposed the item (e.g. ``("bm25", "memory")``).
    """

    item_id: str
    text: str
    score: float
    arms: tuple[str, ...]


@dataclass(frozen=True)
class SearchResult:
    """The answer to one search: a logged decision and its ranked hits.

    Parameters
    ----------
    decision_id : str
        Id of the logged decision (at most 64 characters, so it fits ``FeedbackRequest``).
    hits : list of SearchHit
        Best first, at most ``k``.
    model_version : str
        Version of the search artifacts that answered ("" if unknown).
    """

    decision_id: str
    hits: list[SearchHit]
    model_version: str = ""


@dataclass(frozen=True)
class FeedbackOutcome:
    """What recording one feedback event did.

    Parameters
    ----------
    duplicate : bool
        True if the same event (same decision, same clicked item or accepted suggestion) was
        already recorded; then nothing changed and ``reward`` is 0.
    reward : float
        Reward credited to the decision's policy by this event.
    """

    duplicate: bool
    reward: float


class SearchError(LookupError):
    """Base of the errors a search service raises for a request that refers to unknown things."""


class UnknownDecision(SearchError):
    """``decision_id`` does not name a decision the service logged (NOT_FOUND)."""

    def __init__(self, decision_id: str) -> None:
        super().__init__(f"unknown decision {decision_id}")
        self.decision_id = decision_id


class UnknownCatalog(SearchError):
    """``catalog`` is not served (INVALID_ARGUMENT naming ``catalog``).

    Parameters
    ----------
    catalog : str
        The requested name.
    available : sequence of str
        The catalogues the service has, reported to the client.
    """

    def __init__(self, catalog: str, available: Sequence[str] = ()) -> None:
        self.catalog = catalog
        self.available = tuple(available)
        super().__init__(f"unknown catalog {catalog} (have: {', '.join(self.available)})")


class UnknownItem(SearchError):
    """The clicked item is not in a closed catalogue (Home Depot), or the accepted suggestion was not
    in the decision's results (INVALID_ARGUMENT naming ``action``). An open catalogue (AOL sites,
    ``retrieval.growth``) adds a well-formed new site instead.

    Parameters
    ----------
    item_id : str
        The clicked item id or accepted suggestion text.
    kind : str
        ``"item"`` or ``"suggestion"``, used in the message.
    """

    def __init__(self, item_id: str, kind: str = "item") -> None:
        self.item_id = item_id
        self.kind = kind
        super().__init__(f"{kind} {item_id} was not among the decision's results")


class SearchServiceLike(Protocol):
    """What the servicer needs from a search service.

    Optional: ``warmup()`` (called before the server reports SERVING), ``close()`` (called once
    on graceful shutdown, after in-flight requests finished; the state store writes its final
    snapshot there) and ``sync()`` (called before a Complete: apply the feedback other server
    processes logged to a shared state directory). All methods are called concurrently from the
    server's worker threads.
    """

    def search(self, query: str, context: SearchContext, k: int, catalog: str) -> SearchResult:
        """Rank items of ``catalog`` ("" = default) for the raw ``query``; log the decision.

        Raises
        ------
        UnknownCatalog
        """
        ...

    def feedback(self, decision_id: str, clicked_item_id: str | None, accepted_suggestion: str | None,
                 position: int, timestamp: int) -> FeedbackOutcome:
        """Record (durably, before returning) what the user did; exactly one of
        ``clicked_item_id`` / ``accepted_suggestion`` is not None. ``timestamp`` in Unix seconds.

        Raises
        ------
        UnknownDecision, UnknownItem
        serving.validation.InvalidArgument
            Naming ``clicked_item_id``: a new site for an open catalogue that is not a well-formed
            normalised key (``retrieval.growth.check_site_key``).
        """
        ...

    def record_completion(self, context: SearchContext, prefix: str, completions: list[str]) -> str:
        """Log a completion list (raw ``prefix`` as typed, completions best first) as a decision;
        returns its id, which ``feedback(..., accepted_suggestion=...)`` refers to."""
        ...
