"""Stacked fusion arm (AOL): a learned order over the pooled lists of its sibling arms.

The bandit can only *split* a candidate budget between arms, taking each arm's top n_a; on AOL the
query/context signals do not tell which arm holds the click (README, "Search (dev splits)"). This arm
instead pools every sibling arm's top ``depth`` (BM25 over URL tokens + clicked training queries, the
memory index, the semantic XR-Linear arm, user history, character trigrams, popularity) and orders
the pool by a model of "this site is the one clicked", so one list can hold the click more often
than any single arm's list of the same length. It is the AOL counterpart of the learned fusion of
:mod:`retrieval.arms.fusion` (Home Depot), over click labels and with serving-time click features.

Features of a pool item (:func:`pool_features`, one function for training and serving):

- per sub-arm: ``1 / (k + rank)`` (1-based, 0 if not listed), ``score / top score`` and
  ``log1p(max(score, 0))``;
- item lookups at the request's time: ``log1p`` of the item's click count (popularity arm, online),
  of the decayed clicks of (query, item) and of (the session's previous query, item) in the memory
  index, and of the user's decayed clicks on the item (user history arm); the number of sub-arms
  listing the item;
- query/context: number of words, ``log1p`` of the query's length in characters, ``log1p`` of the
  query's observed clicks in the memory index, ``log1p`` of the user's clicked sites, the session
  position (so the trees can learn which arm to trust in which regime);
- ``log1p`` of the seconds since the user's latest click on the item (user history arm; ``1e9`` when
  never clicked) and whether the session already issued this query (a user back on the same results
  page a minute later, against a site last visited weeks ago). A model fitted before these two
  columns (an older artifact) is scored on the columns before them.

The model is the exported gradient-boosted trees of :class:`retrieval.ranker.Ranker` (pointwise,
label 1 for a clicked pool item), fitted on pools replayed from the *last week of the training log*
through arms built on the weeks before it, the online arms observing every click as in serving
(:func:`replay_pools`, :func:`build_stacked_fusion_arm`). The served arm reads the served siblings
(no copies), so it sees their online click updates; :meth:`StackedFusionArm.bind` wires it to them.

Inner split of the dev training log (arms built before 2006-05-11, replay of 05-11..17; the model
fitted on 05-04..10 through arms built before 05-04), recall@20 of the arm alone over all clicks:
0.5484 (depth 50); with the previous-query column 0.5501, adopted; 200 trees 0.5481, 63 leaves
0.5481, the ranker's (query, URL text) block 0.5497 (not adopted); pool depth 100 0.5513 for twice
the rows (not adopted). Best single arm (BM25) 0.5086, all depth-50 pools' union 0.629.
Second round (same split; pools cached once with :func:`replay_pools`, trees refitted on the
cache; README "Stacked fusion arm"): user recency + repeated query 0.5507, adopted (fitted on
04-27..05-03 and scored on 05-04..10: 0.6173 vs 0.6170 of that week's catalogue clicks). Not
adopted: the site's clicks since the build and the clicks of the session's two queries before the
previous one 0.5495; training on the last two / three weeks, each through arms built before it,
0.5491 / 0.5500; site-name match columns (query without spaces equal to / inside the site's name,
name inside the query, common prefix, initials) 0.5504, 0.5509 with the adopted columns; the
pool's max subtracted from six columns 0.5502; log-loss trees 0.5240.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from retrieval.arms import _kernels
from retrieval.arms.base import (
    Arm, Context, EMPTY_CONTEXT, check_growth, check_n, check_query, empty_result, pool_rank_columns, pooled_list,
)

__all__ = ["StackedFusionArm", "STACK_SUB_ARMS", "pool_features", "feature_names", "replay_contexts",
           "replay_pools", "build_stacked_fusion_arm"]

STACK_SUB_ARMS = ("bm25", "chargram", "memory", "semantic", "popularity", "history")
_PER_ARM = ("rr", "rel", "log_score")
_EXTRA = ("log_popularity", "log_query_item_clicks", "log_user_item_clicks", "log_previous_query_item_clicks",
          "n_lists", "n_words", "log_query_chars", "log_query_clicks", "log_user_items", "session_position",
          "log_seconds_since_user_click", "repeated_query")
# Columns appended after the first artifacts: a model fitted without them (an older artifact) is
# scored on the columns before them.
_N_ADDED = 2
_NEVER = 1e9  # seconds since a click that never happened (about 32 years)


def feature_names(sub_arms: Sequence[str]) -> list[str]:
    """Column names of :func:`pool_features` for these sub-arm names."""
    return [f"{a}:{f}" for a in sub_arms for f in _PER_ARM] + list(_EXTRA)


def pool_features(query: str, context: Context, arms: Sequence[Arm], depth: int,
                  k: float = 10.0, lists: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every sub-arm's top ``depth`` pooled, with one feature row per pool item.

    Parameters
    ----------
    query : str
        Normalised query.
    context : Context
    arms : sequence of Arm
        The sub-arms, in the order of the model's columns (``arm.name`` decides which lookups apply:
        ``popularity``, ``memory``, ``history``).
    depth : int >= 1
    k : float > 0
        Constant of the reciprocal-rank columns.
    lists : sequence of (ids, scores) or None
        Each sub-arm's ``retrieve(query, context, depth)`` when the caller has it already (None:
        retrieved here).

    Returns
    -------
    ids : int32 (m,), the distinct pool items ascending
    X : float32 (m, 3 * len(arms) + 12), columns :func:`feature_names`
    """
    if lists is None:
        lists = [arm.retrieve(query, context, depth) for arm in arms]
    ids, cols = pool_rank_columns(lists, k)
    X = np.zeros((ids.size, 3 * len(arms) + len(_EXTRA)), dtype=np.float32)
    if ids.size == 0:
        return ids, X
    # The sub-arms' lookups here, every row in one kernel (``_kernels.stack_pool_rows``): per-column
    # NumPy calls on ~200 rows cost more than the work.
    pop = np.zeros(0, dtype=np.float32)  # no popularity sub-arm: the column stays 0
    mem = prev = user = ago = _NO_COUNTS
    query_clicks = user_items = 0.0
    for arm in arms:
        if arm.name == "popularity":
            pop = np.asarray(arm.scores, dtype=np.float32)  # read at the pool's items only
        elif arm.name == "memory":
            mem = arm.observed(query, context)
            query_clicks = float(np.sum(mem[1]))
            if context.previous_queries:
                prev = arm.observed(context.previous_queries[-1], context)
        elif arm.name == "history":
            user = arm.user_items(context)
            user_items = float(user[0].size)
            ago = arm.seconds_since_clicks(context)
    request = np.array([min(len(query.split()), 10), math.log1p(len(query)), math.log1p(query_clicks),
                        math.log1p(user_items), min(context.session_position, 10),
                        query in context.previous_queries], dtype=np.float64)
    _kernels.stack_pool_rows(X, ids, cols, pop,
                             *_as_counts(mem), *_as_counts(prev), *_as_counts(user), *_as_counts(ago),
                             float(_NEVER), request)
    return ids, X


_NO_COUNTS = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float64))


def _as_counts(pair: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A sub-arm's (ids ascending, values) as the kernel's (int32, float64) arrays."""
    return np.asarray(pair[0], dtype=np.int32), np.asarray(pair[1], dtype=np.float64)


class StackedFusionArm(Arm):
    """Learned order over the pool of sibling arms' lists (see the module docstring).

    Parameters
    ----------
    sub_arms : sequence of str
        Names of the sibling arms it pools, in the model's column order.
    model : retrieval.ranker.Ranker
        ``score(X float32 (m, f)) -> float32 (m,)``, ``f = len(feature_names(sub_arms))``, or ``f - 2``
        for a model fitted before the user-recency and repeated-query columns (scored on the columns
        before them; ``n_columns``).
    n_items : int
        Catalogue size (the siblings must agree).
    depth : int >= 1
        How deep each sibling's list is read; the pool does not grow with ``n``.
    k : float > 0
        Reciprocal-rank constant of the features.

    Raises
    ------
    ValueError
        Empty ``sub_arms``, a model over another number of features, bad ``depth`` or ``k``;
        :meth:`bind` without one of the named arms or with another catalogue.
    RuntimeError
        :meth:`retrieve` before :meth:`bind`.
    """

    name = "stack"

    def __init__(self, sub_arms: Sequence[str], model, n_items: int, depth: int = 50, k: float = 10.0) -> None:
        sub_arms = [str(s) for s in sub_arms]
        if not sub_arms or self.name in sub_arms:
            raise ValueError(f"sub_arms: need at least one sibling arm other than {self.name!r}, got {sub_arms}")
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        if not (math.isfinite(float(k)) and float(k) > 0):
            raise ValueError(f"k must be > 0, got {k!r}")
        f = len(feature_names(sub_arms))
        self.n_columns = int(getattr(model, "n_features", f))
        if self.n_columns not in (f, f - _N_ADDED):
            raise ValueError(f"model: expects {self.n_columns} features, the pool has {f}")
        self.sub_arms = sub_arms
        self.model = model
        self.depth = int(depth)
        self.k = float(k)
        self._n_items = int(n_items)
        self.arms: list | None = None

    @property
    def n_items(self) -> int:
        return self._n_items

    def grow(self, n_items: int) -> None:
        """The catalogue now holds ``n_items`` items (an open catalogue's new sites): the pool may
        hold them once the online sub-arms observe them (bind before growing).

        Raises
        ------
        ValueError
            ``n_items`` not an int or smaller than the current catalogue.
        """
        self._n_items = check_growth(self._n_items, n_items)

    def bind(self, arms: Sequence[Arm]) -> "StackedFusionArm":
        """Read the pool from these arms (the engine's own, so online updates are seen); returns self."""
        by_name = {a.name: a for a in arms}
        missing = [s for s in self.sub_arms if s not in by_name]
        if missing:
            raise ValueError(f"bind: no arm named {missing} among {sorted(by_name)}")
        bound = [by_name[s] for s in self.sub_arms]
        if any(a.n_items != self._n_items for a in bound):
            raise ValueError(f"bind: sub-arms hold {sorted({a.n_items for a in bound})} items, expected {self._n_items}")
        self.arms = bound
        return self

    def retrieve(self, query: str, context: Context = EMPTY_CONTEXT, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` pool items by the model's score (ties by item id), see :meth:`Arm.retrieve`."""
        return self.retrieve_pooled(query, context, n, {})

    def pool_depths(self) -> dict[str, int]:
        """``{sibling arm name: depth}`` this arm reads (the pipeline asks those arms that deep)."""
        return {name: self.depth for name in self.sub_arms}

    def retrieve_pooled(self, query: str, context: Context, n: int,
                        retrieved: Mapping[str, tuple]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`retrieve` reusing the sub-arms' lists of the same request (``retrieved``: the
        pipeline's ``{name: (arm, ids, scores, asked depth)}``, see
        :func:`retrieval.arms.base.pooled_list`); a sub-arm whose list is missing or too short is
        asked again."""
        n = check_n(n)
        check_query(query)
        if self.arms is None:
            raise RuntimeError("StackedFusionArm.retrieve before bind(arms)")
        if n == 0:
            return empty_result()
        lists = [pooled_list(retrieved, arm, query, context, self.depth) for arm in self.arms]
        ids, X = pool_features(query, context, self.arms, self.depth, self.k, lists)
        if ids.size == 0:
            return empty_result()
        scores = np.asarray(self.model.score(X[:, :self.n_columns]), dtype=np.float32)
        order = np.lexsort((ids, -scores))[:n]
        return ids[order], scores[order]

    def warmup(self) -> None:
        """Compile the model's tree kernel on the served arrays (the siblings warm themselves)."""
        self.model.score(np.zeros((1, self.n_columns), dtype=np.float32))

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        mp, ma = self.model.to_arrays()
        return ({"sub_arms": self.sub_arms, "depth": self.depth, "k": self.k, "n_items": self._n_items,
                 "model": mp}, {f"m_{key}": v for key, v in ma.items()})

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "StackedFusionArm":
        """Inverse of :meth:`to_arrays`; call :meth:`bind` before serving."""
        from retrieval.ranker import Ranker

        model = Ranker.from_arrays(params["model"], {key[2:]: v for key, v in arrays.items() if key.startswith("m_")})
        return cls(params["sub_arms"], model, params["n_items"], params["depth"], params["k"])


# ---------------------------------------------------------------------------------------------
# Offline: replayed training pools and the builder
# ---------------------------------------------------------------------------------------------


def replay_contexts(events, gap_seconds: int = 1800, max_previous: int = 8):
    """``(event, Context)`` for query events in the order given, with the session context a replay
    gives Search (previous queries of the user within ``gap_seconds``, at most ``max_previous``)."""
    last: dict[str, tuple[int, list[str]]] = {}
    for e in events:
        prev_t, prev_q = last.get(e.user_id, (0, []))
        session = prev_q if e.timestamp - prev_t <= gap_seconds else []
        prevs = tuple(session[-max_previous:])
        yield e, Context(user_id=e.user_id, previous_queries=prevs, timestamp=int(e.timestamp),
                         session_position=len(prevs))
        last[e.user_id] = (e.timestamp, (session + [e.query])[-max_previous:])


def replay_pools(arms: Sequence[Arm], events, item_of: Callable[[str], int | None], depth: int, k: float = 10.0,
                 stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pools and click labels of query events replayed in time order through ``arms``.

    Every ``stride``-th event with clicks is featurised (:func:`pool_features`); after each event the
    online arms (those with ``observe``) observe its clicked catalogue items, as in serving.

    Parameters
    ----------
    arms : sequence of Arm (the sub-arms; mutated by their ``observe``)
    events : iterable of qac.logs.QueryEvent, time-ordered
    item_of : callable, clicked URL -> item id or None (not in the catalogue)
    depth, k : see :func:`pool_features`
    stride : int >= 1

    Returns
    -------
    X : float32 (n_rows, f); y : float32 (n_rows,) 1 = clicked; group_ptr : int64 (n_groups + 1,);
    n_clicks : int, clicked catalogue items over the featurised events (the recall denominator)
    """
    X_blocks, y_blocks, sizes = [], [], []
    n_clicks = 0
    online = [a for a in arms if hasattr(a, "observe")]
    for i, (e, ctx) in enumerate(replay_contexts(events)):
        clicked = {it for it in (item_of(u) for u in e.click_urls) if it is not None}
        if i % stride == 0 and clicked:
            ids, X = pool_features(e.query, ctx, arms, depth, k)
            X_blocks.append(X)
            y_blocks.append(np.fromiter((it in clicked for it in ids.tolist()), dtype=np.float32, count=ids.size))
            sizes.append(ids.size)
            n_clicks += len(clicked)
        fctx = Context(user_id=e.user_id, timestamp=int(e.timestamp), session_position=ctx.session_position)
        for it in sorted(clicked):
            for arm in online:
                arm.observe(e.query, int(it), fctx)
    f = len(feature_names([a.name for a in arms]))
    X = np.concatenate(X_blocks) if X_blocks else np.zeros((0, f), np.float32)
    y = np.concatenate(y_blocks) if y_blocks else np.zeros(0, np.float32)
    ptr = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    return X, y, ptr, n_clicks


def build_stacked_fusion_arm(events, item_of: Callable[[str], int | None], n_items: int,
                             build_arms: Callable[[list], Sequence[Arm]], *, holdout_days: float = 7.0,
                             depth: int = 50, k: float = 10.0, config=None, stride: int = 1,
                             report: dict | None = None) -> StackedFusionArm:
    """Fit the stacked fusion arm on the training log alone.

    The query events of the last ``holdout_days`` of ``events`` are replayed (:func:`replay_pools`)
    through arms that ``build_arms(earlier_events)`` builds from the events before them; label = the
    pool item was clicked. The model is :class:`retrieval.ranker.Ranker` (``config``; default 100
    pointwise regression trees of 31 leaves). Bind the returned arm to the arms built from every
    event (``StackedFusionArm.bind``).

    Parameters
    ----------
    events : sequence of qac.logs.QueryEvent (the training log's query events)
    item_of : callable, clicked URL -> item id or None
    n_items : int
    build_arms : callable, list of QueryEvent -> arms over the same catalogue, each with a ``name``

    Raises
    ------
    ValueError
        No event before or inside the hold-out window, or no clicked pool item to learn from.
    """
    from retrieval.ranker import Ranker, RankerConfig

    events = sorted((e for e in events if e.query), key=lambda e: (e.timestamp, e.user_id))
    if not events:
        raise ValueError("events: empty")
    cut = events[-1].timestamp - int(holdout_days * 86400)
    early = [e for e in events if e.timestamp <= cut]
    late = [e for e in events if e.timestamp > cut and e.click_urls]
    if not early or not late:
        raise ValueError(f"events: need events before and after the hold-out cut ({len(early)} / {len(late)})")
    arms = [a for a in build_arms(early) if a.name in STACK_SUB_ARMS]
    X, y, ptr, n_clicks = replay_pools(arms, late, item_of, depth, k, stride)
    if not y.any() or y.all():
        raise ValueError("no clicked (or no unclicked) pool item to learn from")
    cfg = config or RankerConfig(objective="regression", n_trees=100, learning_rate=0.1, max_leaf_nodes=31,
                                 min_samples_leaf=100)
    model = Ranker(cfg).fit(X, y, ptr)
    if report is not None:
        report.update({"n_groups": int(ptr.size - 1), "n_rows": int(y.size), "n_positive": int(y.sum()),
                       "pool_recall": float(y.sum() / max(n_clicks, 1)), "depth": depth,
                       "n_early_events": len(early), "holdout_days": holdout_days,
                       "sub_arms": [a.name for a in arms]})
    return StackedFusionArm([a.name for a in arms], model, n_items, depth, k)
