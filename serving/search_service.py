"""The search service behind the gRPC servicer: retrieve-and-rank engines plus durable online state.

``DIR/search/<catalog>/`` holds one search artifact per item catalogue (``retrieval.build``). Each is
loaded into a :class:`retrieval.pipeline.RetrieveAndRank`. Every Search and Complete answer is logged
as a decision in the state store (``serving.state``) before the call returns; every Feedback is
committed, then applied to the online state (bandit, memory index, popularity, user history) in
commit order, so a restart that loads the last snapshot and replays later events reaches exactly the
acknowledged state. A decision's payload carries everything its feedback needs (query, context,
policy features, allocation, propensity, each arm's list, the catalogue's size), so applying
feedback never re-runs retrieval and replay is deterministic.

Open catalogues (AOL sites, :mod:`retrieval.growth`): a Feedback click on a well-formed site key that
is not an item is committed like any click, and applying it adds the site as the next item (unless
``max_grown_items`` sites were added already); the snapshot records the grown keys, so snapshot +
later events reproduce them exactly. Such a click rewards nobody in the policy (no allocation could
hold an item that did not exist when the decision was made); a later click on the site does. Home
Depot stays closed: an unknown product is :class:`~serving.search_types.UnknownItem`.
"""
from __future__ import annotations

import base64
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from qac.artifacts import arrays_to_strings, load_artifact, strings_to_arrays
from qac.text import normalize_query
from retrieval.analyzer import get_analyzer
from retrieval.arms.base import Context
from retrieval.catalog import Catalog, url_text
from retrieval.growth import AOL_GROWTH, CLOSED, CatalogGrowth, check_site_key
from retrieval.pipeline import RetrieveAndRank, Retrieval
from retrieval.policy import Decision
from serving import state as st
from serving.validation import InvalidArgument
from serving.search_types import (
    FeedbackOutcome,
    SearchContext,
    SearchHit,
    SearchResult,
    UnknownCatalog,
    UnknownDecision,
    UnknownItem,
)

logger = logging.getLogger(__name__)

SEARCH_DIR = "search"


def _arm_classes() -> dict:
    from retrieval.arms.bm25 import BM25Arm
    from retrieval.arms.chargram import CharGramArm
    from retrieval.arms.fusion import FusionArm
    from retrieval.arms.history import UserHistoryArm
    from retrieval.arms.memory import MemoryArm
    from retrieval.arms.popularity import PopularityArm
    from retrieval.arms.semantic import SemanticArm
    from retrieval.arms.stack import StackedFusionArm

    return {c.name: c for c in (BM25Arm, CharGramArm, MemoryArm, SemanticArm, PopularityArm, UserHistoryArm,
                                FusionArm, StackedFusionArm)}


def _policy_class(kind: str):
    from retrieval import policy as P

    return {"fixed": P.FixedPolicy, "epsilon_greedy": P.EpsilonGreedyLinear, "linucb": P.LinUCBPolicy,
            "thompson": P.LinearThompsonPolicy, "joint": P.JointRidgePolicy}[kind]


def _ranker_class(kind: str):
    from retrieval import ranker as R

    return {"Ranker": R.Ranker, "LinearRanker": R.LinearRanker}[kind]


@dataclass
class CatalogEngine:
    """One catalogue: its items, its pipeline and its default candidate budget."""

    name: str
    catalog: Catalog
    engine: RetrieveAndRank
    budget: int
    version: str
    # The catalogue's query normalisation (retrieval.analyzer; "qp2q" = qac.text.normalize_query).
    normalize: Callable[[str], str] = normalize_query
    # Whether (and how far) the catalogue grows with clicks on new sites (retrieval.growth).
    growth: CatalogGrowth = CLOSED

    def __post_init__(self) -> None:
        self.n_built = self.catalog.n_items

    @property
    def n_grown(self) -> int:
        """Items added while serving (ids ``n_built ..``)."""
        return self.catalog.n_items - self.n_built

    def grown_keys(self) -> list[str]:
        """Keys of the items added while serving, in id order."""
        return self.catalog.keys[self.n_built:]

    def check_new_item(self, key: str) -> None:
        """Validate ``key`` as a new site of this open catalogue (:func:`retrieval.growth.check_site_key`).

        Raises
        ------
        UnknownItem
            The catalogue is closed (``growth.max_grown_items == 0``).
        InvalidArgument
            Naming ``clicked_item_id``: the key is not a well-formed normalised site key.
        """
        if not self.growth.open:
            raise UnknownItem(key, "item")
        try:
            check_site_key(key, self.growth.max_key_chars)
        except ValueError as exc:
            raise InvalidArgument("clicked_item_id", str(exc)) from None

    def add_item(self, key: str) -> int | None:
        """Add the site ``key`` (validated by :meth:`check_new_item`) as the next item, text = its URL
        tokens; ``None`` (nothing added) when the catalogue is closed or holds ``max_grown_items``
        grown items already. Deterministic, so replaying the feedback log grows the same items.
        Call under the state lock."""
        if not self.growth.open or self.n_grown >= self.growth.max_grown_items:
            return None
        text = url_text(key)
        self.engine.grow([text])  # arms and ranker first: the id resolves only once they know it
        return self.catalog.add(key, text)


def load_engine(path: Path) -> CatalogEngine:
    """Load one ``search`` artifact directory into a :class:`CatalogEngine` (arrays memory-mapped)."""
    from retrieval.pair_model import TermPairModel
    from retrieval.ranker_features import ItemTextIndex

    art = load_artifact(path, "search")
    p = art.params
    catalog = Catalog.from_arrays(*art.component("catalog"))
    classes = _arm_classes()
    arms = [classes[name].from_arrays(*art.component(f"arm_{name}")) for name in p["arms"]]
    for arm in arms:
        # Arms over their siblings' lists read the served arms themselves: the Home Depot fusion
        # shares the catalogue's char-trigram arm, the AOL stacked fusion pools every arm.
        bind = getattr(arm, "bind", None)
        if bind is not None:
            bind(arms)
    pp, pa = art.component("policy")
    policy = _policy_class(pp["kind"]).from_arrays(pp, pa)
    rp, ra = art.component("ranker")
    ranker = _ranker_class(p["ranker_kind"]).from_arrays(rp, ra)
    text_index = ItemTextIndex.from_arrays(*art.component("text_index"))
    for arm in arms:
        # The Home Depot fusion's scorer stores its own copy of the ranker's text index.
        share = getattr(arm, "share_text_index", None)
        if share is not None:
            share(text_index)
    item_stats = np.asarray(art.component("item_stats")[1]["item_stats"])
    # Home Depot artifacts since the term-pair column carry its model; older ones have none.
    pair_model = TermPairModel.from_arrays(*art.component("pair_model")) if "pair_model" in art.components else None
    qa = art.component("query_counts")[1]
    counts = dict(zip(arrays_to_strings(qa["queries_flat"], qa["queries_ptr"]), np.asarray(qa["counts"]).tolist()))
    engine = RetrieveAndRank(arms, policy, ranker, text_index, item_stats,
                             query_freq=lambda q: counts.get(q, 0), in_memory=lambda q: q in counts,
                             ranker_arms=p.get("ranker_arms"), ranker_budget=p.get("ranker_budget"),
                             pair_model=pair_model)
    return CatalogEngine(p["catalog"], catalog, engine, int(p["config"]["default_budget"]),
                         f"{p['catalog']}@{p.get('built_at', '')}",
                         get_analyzer(p.get("analyzer", "qp2q")).normalize,
                         catalog_growth(p["catalog"], p["config"].get("growth")))


def catalog_growth(catalog: str, recorded: dict | None) -> CatalogGrowth:
    """The growth rule of a search artifact: the one its build config recorded, else (artifacts built
    before the rule existed) the catalogue's default: AOL sites open (:data:`retrieval.growth.AOL_GROWTH`),
    everything else closed."""
    if recorded is not None:
        return CatalogGrowth(**recorded)
    return AOL_GROWTH if catalog == "aol" else CLOSED


def _encode_le(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode("ascii")


def _decode_le(value, dtype: str, out_dtype, what: str) -> np.ndarray:
    """Inverse of :func:`_encode_le` (a 1-d array); a JSON list is read as it is."""
    if isinstance(value, str):
        raw = base64.b64decode(value, validate=True)
        size = np.dtype(dtype).itemsize
        if len(raw) % size:
            raise ValueError(f"{what}: {len(raw)} bytes is not a whole number of {np.dtype(out_dtype).name}")
        return np.frombuffer(raw, dtype=dtype).astype(out_dtype)
    return np.asarray(value, dtype=out_dtype)


def encode_ids(ids: np.ndarray) -> str:
    """Item ids (int32, shape (n,)) as base64 of their little-endian bytes: the decision payload's
    form of the arm lists and the union (cheaper to JSON-encode and smaller than ~700 ints per Search)."""
    return _encode_le(ids, "<i4")


def decode_ids(value) -> np.ndarray:
    """Inverse of :func:`encode_ids`, int32 (n,); a JSON list of ints (payloads logged before the
    base64 form) is read as it is.

    Raises
    ------
    ValueError
        ``value`` is neither base64 of whole int32s nor a list of ints.
    """
    return _decode_le(value, "<i4", np.int32, "ids")


def encode_floats(values: np.ndarray) -> str:
    """float32 values (any shape, read in C order) as base64 of their little-endian bytes: the decision
    payload's form of the policy features ``x`` and ``arm_x``: exact, shorter and cheaper to encode
    than JSON floats."""
    return _encode_le(values, "<f4")


def decode_floats(value, shape: tuple) -> np.ndarray:
    """Inverse of :func:`encode_floats`: float32 of ``shape`` (``-1`` allowed once); a JSON (nested)
    list of numbers (payloads logged before the base64 form) is read as it is.

    Raises
    ------
    ValueError
        ``value`` is neither base64 of whole float32s nor a list of numbers, or does not fit ``shape``.
    """
    if isinstance(value, str):
        return _decode_le(value, "<f4", np.float32, "floats").reshape(shape)
    return np.asarray(value, dtype=np.float32).reshape(shape)


def retrieval_payload(name: str, r: Retrieval, ctx: Context, shown: list[str], n_items: int) -> dict:
    """JSON payload of a search decision: everything its feedback (and a replay) needs; item id
    arrays as :func:`encode_ids` strings, the policy features as :func:`encode_floats` strings;
    ``n_items`` = the catalogue's size when the arms were asked (a click on an item grown since does
    not reward the policy)."""
    d = r.decision
    return {
        "catalog": name, "query": r.query, "budget": r.budget, "n_items": int(n_items),
        "context": {"user_id": ctx.user_id, "timestamp": ctx.timestamp, "session_position": ctx.session_position},
        "x": encode_floats(r.x), "arm_x": encode_floats(r.arm_x),
        "action": d.action, "allocation": d.allocation.tolist(), "propensity": d.propensity, "explored": d.explored,
        "arm_ids": [encode_ids(ids) for ids in r.arm_ids], "union": encode_ids(r.union_ids), "shown": shown,
    }


def retrieval_from_payload(p: dict) -> tuple[Retrieval, Context]:
    """Inverse of :func:`retrieval_payload` (scores are not needed for feedback and stay empty)."""
    arm_ids = [decode_ids(ids) for ids in p["arm_ids"]]
    decision = Decision(int(p["action"]), np.asarray(p["allocation"], dtype=np.int32), float(p["propensity"]),
                        bool(p["explored"]), int(p["budget"]))
    r = Retrieval(p["query"], int(p["budget"]), arm_ids, [np.zeros(len(a), np.float32) for a in arm_ids],
                  decode_floats(p["x"], (-1,)), decode_floats(p["arm_x"], (len(arm_ids), -1)), decision,
                  decode_ids(p["union"]))
    c = p["context"]
    return r, Context(user_id=c["user_id"], timestamp=int(c["timestamp"]), session_position=int(c["session_position"]))


class SearchOnlineState:
    """The online state of every catalogue (bandit, online arms, arm hit rates) and of the completer
    (user histories, global counts, follow-ups): a ``serving.state`` ``OnlineState``. ``apply`` is
    deterministic: it replays a committed feedback event from its payloads only."""

    def __init__(self, engines: dict[str, CatalogEngine], completer=None):
        self.engines = engines
        self.completer = completer
        self.n_completion_feedback = 0

    def apply(self, event: st.FeedbackEvent) -> None:
        if event.kind != "search":
            self.n_completion_feedback += 1
            if self.completer is not None:
                d = event.decision
                ts = int(event.payload.get("timestamp") or d.get("timestamp") or 0)
                self.completer.observe(d.get("user_id", ""), d.get("previous_query", ""), event.item, ts)
            return
        ce = self.engines[event.decision["catalog"]]
        r, ctx = retrieval_from_payload(event.decision)
        item_id = ce.catalog.id_of(event.item)
        if item_id is None:
            # A site first clicked now (validated before commit): an open catalogue adds it, unless
            # at its cap; then the committed click waits for the next build.
            item_id = ce.add_item(event.item)
            if item_id is None:
                return
        # Decisions logged before the field: every accepted click was on an item known then.
        known_then = item_id < int(event.decision.get("n_items", item_id + 1))
        ce.engine.feedback(r, item_id, ctx, reward_policy=known_then)

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {"n_completion_feedback": np.array([self.n_completion_feedback], np.int64)}
        if self.completer is not None:
            for k, v in self.completer.online_state_arrays().items():
                out[f"completion/{k}"] = np.asarray(v)
        for name, ce in self.engines.items():
            e = ce.engine
            for k, v in e.policy.state_arrays().items():
                out[f"{name}/policy/{k}"] = np.asarray(v)
            for arm in e.arms:
                if hasattr(arm, "state_arrays"):
                    for k, v in arm.state_arrays().items():
                        out[f"{name}/arm_{arm.name}/{k}"] = np.asarray(v)
            out[f"{name}/hits"] = e.hits.copy()
            out[f"{name}/n_feedback"] = np.array([e.n_feedback], np.int64)
            flat, ptr = strings_to_arrays(ce.grown_keys())
            out[f"{name}/grown_keys_flat"], out[f"{name}/grown_keys_ptr"] = flat, ptr
        return out

    @staticmethod
    def _load_grown(ce: CatalogEngine, keys: list[str]) -> None:
        """Bring ``ce``'s grown items to a snapshot's ``keys`` (before its arms' states, which refer to
        them); the items grown so far must be their prefix, as after recovery's fresh start."""
        have = ce.grown_keys()
        if keys[:len(have)] != have:
            raise ValueError(f"{ce.name}: snapshot's grown items do not extend the {len(have)} grown so far")
        for key in keys[len(have):]:
            if ce.add_item(key) is None:
                raise ValueError(f"{ce.name}: snapshot holds {len(keys)} grown items, the cap is "
                                 f"{ce.growth.max_grown_items}")

    def to_snapshot(self) -> bytes:
        return st.pack_arrays(self._arrays(), {"catalogs": sorted(self.engines)})

    def load_snapshot(self, blob: bytes) -> None:
        _, arrays = st.unpack_arrays(blob)
        self.n_completion_feedback = int(arrays["n_completion_feedback"][0])
        if self.completer is not None:
            self.completer.reset_online()
            mine = {k[len("completion/"):]: v for k, v in arrays.items() if k.startswith("completion/")}
            if mine:
                self.completer.load_online_state(mine)
        for name, ce in self.engines.items():
            e = ce.engine

            def sub(prefix):
                return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

            if f"{name}/grown_keys_ptr" in arrays:
                self._load_grown(ce, arrays_to_strings(arrays[f"{name}/grown_keys_flat"],
                                                       arrays[f"{name}/grown_keys_ptr"]))
            e.policy.load_state(sub(f"{name}/policy/"))
            for arm in e.arms:
                if hasattr(arm, "load_state"):
                    arm.load_state(sub(f"{name}/arm_{arm.name}/"))
            e.hits = np.array(arrays[f"{name}/hits"], dtype=np.float64)
            e.n_feedback = int(arrays[f"{name}/n_feedback"][0])


class SearchService:
    """Implements the servicer's search interface (``serving.search_types.SearchServiceLike``)."""

    def __init__(self, engines: dict[str, CatalogEngine], store: st.StateStore, seed: int | None = None,
                 completer=None):
        if not engines:
            raise ValueError("engines: no search catalogue to serve")
        self.engines = engines
        self.default_catalog = "aol" if "aol" in engines else sorted(engines)[0]
        self.store = store
        self.state = SearchOnlineState(engines, completer)
        self._seed = np.random.SeedSequence(seed)
        self._local = threading.local()
        self.recovery = store.recover(self.state)

    def _rng(self) -> np.random.Generator:
        rng = getattr(self._local, "rng", None)
        if rng is None:
            rng = self._local.rng = np.random.default_rng(self._seed.spawn(1)[0])
        return rng

    def engine(self, catalog: str) -> CatalogEngine:
        name = catalog or self.default_catalog
        ce = self.engines.get(name)
        if ce is None:
            raise UnknownCatalog(name, sorted(self.engines))
        return ce

    def search(self, query: str, context: SearchContext, k: int, catalog: str = "",
               budget: int | None = None) -> SearchResult:
        """Retrieve (bandit-chosen arms), rank, log the decision durably, return the top ``k``."""
        return self.search_with_retrieval(query, context, k, catalog, budget)[0]

    def search_with_retrieval(self, query: str, context: SearchContext, k: int, catalog: str = "",
                              budget: int | None = None) -> tuple[SearchResult, Retrieval]:
        """:meth:`search`, also returning the :class:`Retrieval` (arm lists, decision, union) for evaluation."""
        ce = self.engine(catalog)
        q = ce.normalize(query)
        ctx = Context(user_id=context.user_id, previous_queries=tuple(context.previous_queries),
                      timestamp=int(context.timestamp), session_position=len(context.previous_queries))
        self.sync()
        n_items = ce.catalog.n_items
        r = ce.engine.retrieve(q, ctx, budget or ce.budget, self._rng())
        ids, scores, proposed = ce.engine.rank(r, k)
        keys = [ce.catalog.key(i) for i in ids.tolist()]
        decision_id = uuid.uuid4().hex
        self.store.record_decision(decision_id, "search", retrieval_payload(ce.name, r, ctx, keys, n_items))
        names = ce.engine.arm_names
        hits = [SearchHit(key, ce.catalog.text(i), float(s), tuple(n for n, m in zip(names, row) if m))
                for key, i, s, row in zip(keys, ids.tolist(), scores.tolist(), proposed.tolist())]
        return SearchResult(decision_id, hits, ce.version), r

    def feedback(self, decision_id: str, clicked_item_id: str | None, accepted_suggestion: str | None,
                 position: int, timestamp: int, *, issued_query: str | None = None) -> FeedbackOutcome:
        """Commit the event, then apply it to the online state (in commit order). Duplicates count once.

        ``issued_query`` (the query the user issued after a Complete, not one of its suggestions) is
        accepted for completion decisions only and learned like an accepted suggestion."""
        item = next(v for v in (clicked_item_id, accepted_suggestion, issued_query, "") if v is not None)

        def validate(event: st.FeedbackEvent) -> None:
            if issued_query is not None:
                if event.kind != "complete":
                    raise InvalidArgument("action", "issued_query needs a Complete decision")
                return
            if event.kind == "search":
                if clicked_item_id is None:
                    raise UnknownItem(item, "suggestion")
                ce = self.engines[event.decision["catalog"]]
                if ce.catalog.id_of(item) is None:
                    ce.check_new_item(item)  # an open catalogue's new site, or an error
            elif accepted_suggestion is None or item not in event.decision.get("completions", ()):
                raise UnknownItem(item, "suggestion")

        payload = {"timestamp": int(timestamp)}
        if issued_query is not None:
            payload["action"] = "issued_query"
        try:
            res = st.apply_feedback(self.store, self.state, decision_id, item, position, payload, validate=validate)
        except st.UnknownDecision:
            raise UnknownDecision(decision_id) from None
        if res.duplicate:
            return FeedbackOutcome(duplicate=True, reward=0.0)
        ev = res.event
        if ev.kind == "search":
            ce = self.engines[ev.decision["catalog"]]
            reward = 1.0 if ce.catalog.id_of(item) in set(decode_ids(ev.decision["union"]).tolist()) else 0.0
        else:
            reward = 0.0 if issued_query is not None else 1.0
        return FeedbackOutcome(duplicate=False, reward=reward)

    def sync(self) -> None:
        """Shared state directory (several server processes): apply the feedback the other processes
        committed since this one last did, in seq order. Does not wait if another thread is applying
        events; a no-op for a store this process has alone. A failed apply marks the store diverged
        (logged; Feedback then refuses) without failing the caller's request."""
        if self.store.shared and not self.store.diverged:
            try:
                self.store.catch_up(self.state, blocking=False)
            except st.StateDiverged:
                pass  # already logged by the store; health and Feedback report it

    def record_completion(self, context: SearchContext, prefix: str, completions: list[str]) -> str:
        """Log a Complete answer as a decision (so Feedback can accept one of its suggestions)."""
        decision_id = uuid.uuid4().hex
        prev = context.previous_queries[-1] if context.previous_queries else ""
        self.store.record_decision(decision_id, "complete", {
            "prefix": prefix, "completions": list(completions), "user_id": context.user_id,
            "previous_query": prev, "timestamp": int(context.timestamp)})
        return decision_id

    def warmup(self) -> None:
        for ce in self.engines.values():
            for arm in ce.engine.arms:
                arm.warmup()
            warm = getattr(ce.engine.ranker, "warmup", None)
            if warm is not None:
                warm()
            r = ce.engine.retrieve("warm up", Context(), ce.budget, np.random.default_rng(0))
            ce.engine.rank(r, 10)

    def close(self) -> None:
        self.store.close(self.state)


def catalog_analyzer(artifacts_dir: str | os.PathLike, catalog: str) -> str:
    """Name of the search analyzer ``DIR/search/<catalog>`` was built with ("qp2q" when unrecorded)."""
    return load_artifact(Path(artifacts_dir) / SEARCH_DIR / catalog, "search").params.get("analyzer", "qp2q")


def load_search_service(artifacts_dir: str | os.PathLike, state_dir: str | os.PathLike | None = None,
                        completer=None, *, shared: bool = False) -> SearchService:
    """Load every ``DIR/search/<catalog>`` artifact and open (or create) the state directory.

    ``state_dir`` defaults to ``<artifacts_dir>.state`` beside the artifacts. ``completer`` (a
    ``qac.completer.Completer``) gets the completion feedback (accepted suggestions, issued queries)
    online and in the snapshots, and is brought to the acknowledged state by the recovery.
    ``shared``: open the state directory together with other server processes
    (``serving.state.StateStore(shared=True)``; ``qac serve --processes N``).
    """
    root = Path(artifacts_dir) / SEARCH_DIR
    engines = {}
    for path in sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()):
        ce = load_engine(path)
        engines[ce.name] = ce
    state = Path(state_dir) if state_dir else Path(str(Path(artifacts_dir).absolute()) + ".state")
    state.mkdir(parents=True, exist_ok=True)
    return SearchService(engines, st.StateStore(state, shared=shared), completer=completer)
