"""The retrieve-and-rank pipeline: arms -> policy -> union -> ranker (learning to rank and retrieve).

One instance per item catalogue. For a query:

1. every arm retrieves up to ``budget`` candidates (cheap: each arm is a memory-mapped index);
2. context features (query length, frequency, whether the memory index knows the query, time of day,
   weekend, session position) and per-arm features (result count, top score, score gap, the arm's
   running hit rate) are computed;
3. the contextual bandit chooses how many of each arm's candidates enter the union (total at most
   ``budget``), logging the propensity of its choice; when arms return the same items, the budget
   they would waste goes to the next candidates of the chosen arms (:func:`fill_depths`), so the
   union holds up to ``budget`` distinct candidates;
4. the learned ranker orders the union (features: every arm's score and membership, text match,
   item statistics).

Feedback (the clicked item) is turned into a reward per arm -- the rank of the clicked item in each
arm's full list -- so the policy learns from it, and the online arms (memory index, popularity,
user history) observe the click. Everything a later replay needs is in :class:`Retrieval`, so a
logged decision can be re-applied exactly (durable state, ``serving.state``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from retrieval import _policy_kernels as _k
from retrieval.arms.base import Context
from retrieval.policy import allocation_menu

CONTEXT_FEATURES = ("bias", "log_query_chars", "n_words", "is_single_word", "has_digit", "looks_like_url",
                    "log_query_freq", "in_memory", "hour_sin", "hour_cos", "weekend", "session_position",
                    "has_user")
ARM_FEATURES = ("has_results", "log_n_results", "top_score_rel", "score_gap_rel", "hit_rate")


@dataclass
class Retrieval:
    """One query's retrieval and the bandit's decision (everything needed to replay its feedback).

    Attributes
    ----------
    query : str
        Normalised query.
    arm_ids : list of int32 arrays (catalogue items) or of lists of str (completions)
        Each arm's full candidate list (length <= budget), best first.
    arm_scores : list of float32 arrays
    x : float32 (d_ctx,)
    arm_x : float32 (n_arms, d_arm)
    decision : retrieval.policy.Decision
    union_ids : int32 (m,), m <= budget, or list of str
        Union of each arm's top ``depths[a]``, in first-seen order (arms in order).
    context : Context or None
        The request context the arms saw (kept for the ranker's features).
    depths : int64 (n_arms,), optional
        How deep the union read each arm's list (:meth:`Pipeline.union_depths`; ``arm_depths()``
        recomputes the search rule :func:`fill_depths` when absent, e.g. after a replay).
    """

    query: str
    budget: int
    arm_ids: list
    arm_scores: list
    x: np.ndarray
    arm_x: np.ndarray
    decision: object
    union_ids: np.ndarray
    context: Context | None = None
    depths: np.ndarray | None = None

    def arm_depths(self) -> np.ndarray:
        """How deep the union reads each arm's list, int64 (n_arms,): :func:`fill_depths` of the
        decision's allocation (recomputed from the lists when not stored, e.g. after a replay)."""
        if self.depths is None:
            self.depths = fill_depths(self.arm_ids, self.decision.allocation, self.budget)
        return self.depths

    def arm_ranks(self, item_id) -> np.ndarray:
        """0-based rank of ``item_id`` (an item id, or a completion string) in every arm's full list,
        -1 where absent (int32 (n_arms,))."""
        out = np.full(len(self.arm_ids), -1, dtype=np.int32)
        for a, ids in enumerate(self.arm_ids):
            if isinstance(ids, np.ndarray):
                hit = np.flatnonzero(ids == item_id)
                if hit.size:
                    out[a] = hit[0]
            elif item_id in ids:
                out[a] = ids.index(item_id)
        return out


def context_features(query: str, context: Context, query_freq: int, in_memory: bool) -> np.ndarray:
    """Query/context features for the policy, float32 (len(CONTEXT_FEATURES),), roughly unit scale."""
    words = query.split()
    ts = context.timestamp
    if ts:
        t = time.gmtime(ts)
        hour = t.tm_hour + t.tm_min / 60.0
        weekend = 1.0 if t.tm_wday >= 5 else 0.0
        hs, hc = math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24)
    else:
        hs = hc = weekend = 0.0
    return np.array([
        1.0,
        math.log1p(len(query)) / 4.0,
        min(len(words), 10) / 10.0,
        1.0 if len(words) == 1 else 0.0,
        1.0 if any(ch.isdigit() for ch in query) else 0.0,
        1.0 if ("www" in words or "com" in words or "org" in words or "net" in words) else 0.0,
        math.log1p(query_freq) / 8.0,
        1.0 if in_memory else 0.0,
        hs, hc, weekend,
        min(context.session_position, 10) / 10.0,
        1.0 if context.user_id else 0.0,
    ], dtype=np.float32)


def arm_features(arm_ids: Sequence[np.ndarray], arm_scores: Sequence[np.ndarray], budget: int,
                 hit_rate: np.ndarray) -> np.ndarray:
    """Per-arm features from the arms' lists, float32 (n_arms, len(ARM_FEATURES))."""
    out = np.zeros((len(arm_ids), len(ARM_FEATURES)), dtype=np.float32)
    for a, (ids, sc) in enumerate(zip(arm_ids, arm_scores)):
        n = len(ids)
        out[a, 0] = 1.0 if n else 0.0
        out[a, 1] = math.log1p(n) / math.log1p(max(budget, 1))
        if n:
            top = float(sc[0])
            scale = abs(top) + 1e-6
            out[a, 2] = top / (scale + 1.0)
            out[a, 3] = (top - float(sc[1])) / scale if n > 1 else 1.0
        out[a, 4] = hit_rate[a]
    return out


def fill_depths(arm_ids: Sequence[np.ndarray], allocations: np.ndarray, budget: int) -> np.ndarray:
    """How deep to read each arm's list so that the union holds ``budget`` distinct candidates.

    An allocation ``n`` (``sum(n) <= budget``) asks for arm a's top ``n_a``; when arms return the
    same item, the plain union of those prefixes is smaller than ``budget`` (measured on the AOL dev
    replay: 18.3 distinct candidates for BM25 15 + memory 5). Here the freed budget is spent on
    the next candidates of the same arms in the same proportions: arms are merged in order of
    ``(r + 1/2) / n_a`` and read until ``budget`` distinct items are taken (kernel
    ``retrieval._policy_kernels.fill_depths``). Without duplicates and with full lists the depths
    equal ``n``. Deterministic: a logged decision's depths are recomputed from its lists on feedback.

    Parameters
    ----------
    arm_ids : list of int32 arrays, one per arm, best first
    allocations : int (n_arms,) or (n_actions, n_arms)
    budget : int >= 0

    Returns
    -------
    int64 array of the shape of ``allocations``: depth per arm (``depths[a] <= len(arm_ids[a])``).
    """
    alloc = np.asarray(allocations, dtype=np.int64)
    one = alloc.ndim == 1
    alloc2 = alloc[None] if one else alloc
    n_arms = len(arm_ids)
    n_ret = np.array([len(ids) for ids in arm_ids], dtype=np.int64)
    width = int(n_ret.max()) if n_arms else 0
    ids = np.zeros((n_arms, max(width, 1)), dtype=np.int64)
    for a, arr in enumerate(arm_ids):
        ids[a, :n_ret[a]] = arr
    codes = np.zeros_like(ids)
    n_codes = _k.item_codes(ids, n_ret, codes)
    depths = np.zeros(alloc2.shape, dtype=np.int64)
    _k.fill_depths(codes, n_ret, alloc2, int(budget), np.zeros(max(n_codes, 1), dtype=np.int64), depths)
    return depths[0] if one else depths


def union_of(arm_ids: Sequence, allocation: np.ndarray):
    """Union of each arm's top ``allocation[a]`` keys, first occurrence order.

    int32 array when the arms return id arrays (catalogues), list of str when they return
    string lists (completions)."""
    seen: dict = {}
    arrays = True
    for ids, n in zip(arm_ids, allocation.tolist()):
        if isinstance(ids, np.ndarray):
            head = ids[:n].tolist()
        else:
            arrays = False
            head = ids[:n]
        for i in head:
            seen.setdefault(i, None)
    if not arrays:
        return list(seen)
    return np.fromiter(seen, dtype=np.int32, count=len(seen))


class Pipeline:
    """The retrieve-and-rank flow shared by Search and Complete: arms -> policy -> union -> ranker.

    Subclasses say what the policy and the ranker see (:meth:`context_x`, :meth:`arm_x`,
    :meth:`features`); :class:`RetrieveAndRank` is the item-search instantiation,
    ``qac.ranking.CompletionPipeline`` the completion one. Item keys are whatever the arms return:
    int32 item ids for a catalogue, completion strings for Complete (whose candidate set is open).

    Parameters
    ----------
    arms : list of objects with ``name`` and ``retrieve(query, context, n) -> (ids, scores)``
    policy : retrieval.policy policy object
        ``decide(x, arm_x, budget, rng)`` / ``update(x, arm_x, decision, arm_ranks)``.
    ranker : object with ``score(features float32 (m, f)) -> float32 (m,)``
    """

    def __init__(self, arms, policy, ranker):
        self.arms = list(arms)
        self.arm_names = [a.name for a in self.arms]
        self._pool_depths: dict[str, int] = {}  # see pool_depths()
        for arm in self.arms:
            if getattr(arm, "retrieve_pooled", None) is not None:
                for name, d in arm.pool_depths().items():
                    self._pool_depths[name] = max(self._pool_depths.get(name, 0), int(d))
        self.policy = policy
        self.ranker = ranker
        self.hits = np.zeros(len(self.arms), dtype=np.float64)
        self.n_feedback = 0

    # -- what subclasses define ----------------------------------------------------------------
    def context_x(self, query: str, context: Context) -> np.ndarray:
        """Policy context features, float32 (d_ctx,)."""
        raise NotImplementedError

    def arm_x(self, arm_ids: list, arm_scores: list, budget: int) -> np.ndarray:
        """Policy per-arm features, float32 (n_arms, d_arm)."""
        raise NotImplementedError

    def features(self, retrieval: "Retrieval", ids) -> np.ndarray:
        """Ranker features of the candidates ``ids`` of a retrieval, float32 (m, f)."""
        raise NotImplementedError

    def union_depths(self, arm_ids: list, allocation: np.ndarray, budget: int) -> np.ndarray:
        """How deep the union reads each arm's list, int64 (n_arms,) (default: the allocation)."""
        return np.asarray(allocation, dtype=np.int64)

    def policy_update(self, retrieval: "Retrieval", ranks: np.ndarray) -> None:
        """Reward the policy for one feedback event (``ranks``: the clicked item's rank per arm)."""
        self.policy.update(retrieval.x, retrieval.arm_x, retrieval.decision, ranks)

    def arm_depth(self, budget: int) -> int:
        """How many candidates each arm retrieves for a total ``budget`` (default: the whole budget,
        so the policy can give any arm all of it)."""
        return budget

    def decide(self, x: np.ndarray, arm_x: np.ndarray, budget: int, rng: np.random.Generator):
        """The policy's decision for one retrieval (default: ``policy.decide``)."""
        return self.policy.decide(x, arm_x, budget, rng)

    # -- the shared flow -------------------------------------------------------------------------
    def hit_rate(self) -> np.ndarray:
        """Running fraction of feedback events whose clicked item was in each arm's list (smoothed)."""
        return ((self.hits + 1.0) / (self.n_feedback + 2.0)).astype(np.float32)

    def pool_depths(self) -> dict[str, int]:
        """How deep the pooling arms (those with ``retrieve_pooled``) read each sibling arm's list:
        ``{arm name: depth}``, the deepest any of them asks (``arm.pool_depths()``, read when the
        pipeline is built: bind the pooling arms first)."""
        return dict(self._pool_depths)

    def retrieve(self, query: str, context: Context, budget: int, rng: np.random.Generator) -> "Retrieval":
        """Every arm's list, the policy's allocation and the candidate union for a normalised query.

        Each arm is asked once per request: an arm that a pooling arm (the AOL stack, the Home Depot
        fusion) reads deeper than the request's depth is asked at the deeper depth, the pooling arm
        gets that list, and the request keeps its head (arms return their best first, ties by id,
        so the head equals asking for fewer)."""
        arm_ids, arm_scores = [], []
        depth = self.arm_depth(budget)
        deeper = self._pool_depths
        retrieved: dict = {}
        for arm in self.arms:
            pooled = getattr(arm, "retrieve_pooled", None)  # an arm over earlier arms' lists
            if pooled is not None:
                ids, sc = pooled(query, context, depth, retrieved)
            else:
                asked = max(depth, deeper.get(arm.name, 0))
                ids, sc = arm.retrieve(query, context, asked)
                retrieved[arm.name] = (arm, ids, sc, asked)
                if asked > depth:
                    ids, sc = ids[:depth], sc[:depth]
            arm_ids.append(ids)
            arm_scores.append(sc)
        x = self.context_x(query, context)
        ax = self.arm_x(arm_ids, arm_scores, budget)
        decision = self.decide(x, ax, budget, rng)
        depths = self.union_depths(arm_ids, decision.allocation, budget)
        return Retrieval(query, budget, arm_ids, arm_scores, x, ax, decision, union_of(arm_ids, depths), context,
                         depths)

    def rank(self, retrieval: "Retrieval", k: int):
        """Top ``k`` of the union by the ranker: (ids, scores float32 (k,), proposed bool (k, n_arms)).

        ``ids`` is an int32 array for catalogue items, a list of str for completions; ties are
        broken by the key."""
        ids = retrieval.union_ids
        if len(ids) == 0:
            return ids, np.zeros(0, np.float32), np.zeros((0, len(self.arms)), bool)
        scores = self.ranker.score(self.features(retrieval, ids))
        if isinstance(ids, np.ndarray):
            order = np.lexsort((ids, -scores))[:k]
            top = ids[order]
        else:
            neg = (-scores).tolist()
            order = sorted(range(len(ids)), key=lambda i: (neg[i], ids[i]))[:k]
            top = [ids[i] for i in order]
        return top, scores[order].astype(np.float32), self._proposed(retrieval, top)

    @staticmethod
    def _proposed(retrieval: "Retrieval", ids) -> np.ndarray:
        """Which arms put each of ``ids`` into the union (within their allocation): bool (m, n_arms).
        Reported with each hit; the ranker's own arm features are :meth:`features`."""
        depths = retrieval.arm_depths().tolist()
        if isinstance(ids, np.ndarray):
            # Catalogue items: the ranker's arm-score kernel over the union heads, every score 1.
            from retrieval.ranker_features import arm_score_matrix

            heads = [aids[:n] for aids, n in zip(retrieval.arm_ids, depths)]
            return arm_score_matrix(heads, [np.ones(len(h), np.float32) for h in heads], ids) != 0
        pos = {key: r for r, key in enumerate(ids)}  # completion strings
        out = np.zeros((len(ids), len(retrieval.arm_ids)), dtype=bool)
        for a, (aids, n) in enumerate(zip(retrieval.arm_ids, depths)):
            head = aids[:n]
            for key in (head.tolist() if isinstance(head, np.ndarray) else head):
                r = pos.get(key)
                if r is not None:
                    out[r, a] = True
        return out

    def feedback(self, retrieval: "Retrieval", item_id, context: Context, *, reward_policy: bool = True) -> float:
        """Apply a click (or an accepted completion): policy reward per arm, online arms observe it.
        Returns the union reward (0/1).

        ``reward_policy=False``: only the online arms learn (a click on an item that did not exist
        when the decision was made says nothing about the decision's allocation: no allocation could
        have held it); the policy and the arms' hit rates are left alone."""
        ranks = retrieval.arm_ranks(item_id)
        if reward_policy:
            self.policy_update(retrieval, ranks)
            self.hits += ranks >= 0
            self.n_feedback += 1
        for arm in self.arms:
            observe = getattr(arm, "observe", None)
            if observe is not None:
                observe(retrieval.query, item_id, context)
        return 1.0 if bool(np.any((ranks >= 0) & (ranks < retrieval.arm_depths()))) else 0.0


class RetrieveAndRank(Pipeline):
    """Arms -> policy -> union -> ranker over one item catalogue (one instance per catalogue).

    Parameters
    ----------
    arms : list of Arm
        In the order the ranker's arm features were trained with.
    policy : retrieval.policy policy object
        ``decide(x, arm_x, budget, rng)`` / ``update(x, arm_x, decision, arm_ranks)``.
    ranker : object with ``score(features) -> float32 (m,)``
    text_index : retrieval.ranker_features.ItemTextIndex
    item_stats : float32 (n_items, n_stats)
    query_freq : callable ``str -> int``
        Training frequency of a normalised query (context feature).
    in_memory : callable ``str -> bool``
        Whether the memory index has observed clicks for the query.
    ranker_arms : list of str, optional
        The arms whose scores/membership the ranker was trained with, in that order (default: all).
    ranker_budget : int, optional
        How deep into each arm's list the ranker's arm features looked at training time; serving
        uses the same depth (default: the whole list).
    pair_model : retrieval.pair_model.TermPairModel, optional
        The term-pair model whose ``pair_score`` column the ranker was trained with (artifacts built
        before it have none, and their rankers do not read the column).

    Thread safety: ``retrieve``/``rank`` only read; ``feedback`` mutates the policy and the online
    arms and must be serialised by the caller (the state store applies feedback under one lock).
    """

    def __init__(self, arms, policy, ranker, text_index, item_stats, query_freq, in_memory,
                 ranker_arms: Sequence[str] | None = None, ranker_budget: int | None = None, pair_model=None):
        super().__init__(arms, policy, ranker)
        self.pair_model = pair_model
        names = self.arm_names if ranker_arms is None else list(ranker_arms)
        self.ranker_cols = np.array([self.arm_names.index(n) for n in names], dtype=np.int64)
        self.ranker_budget = ranker_budget
        self.text_index = text_index
        self.item_stats = item_stats
        self.query_freq = query_freq
        self.in_memory = in_memory
        self._grown = None  # retrieval.growth.GrownTextIndex once the catalogue grows

    @property
    def n_items(self) -> int:
        """Catalogue size: the build's items (the ranker's text index) plus those grown since."""
        return self.text_index.n_items + (self._grown.n_grown if self._grown is not None else 0)

    def grow(self, texts: Sequence[str]) -> None:
        """Add items with these texts after the current ones (an open catalogue, :mod:`retrieval.growth`).

        Every arm with a ``grow`` (the online arms and the stacked fusion arm) is told the new size;
        offline arms keep their build-time items and never return the new ones. The ranker scores a
        new item's text against the build's vocabulary (:class:`retrieval.growth.GrownTextIndex`),
        with zero build-time item statistics. Call under the feedback lock (as ``feedback``), before
        any arm observes a new item.

        Raises
        ------
        ValueError
            The ranker has a term-pair column (``pair_model``; closed catalogues only), or its text
            index has the match block (:class:`retrieval.growth.GrownTextIndex`).
        """
        from retrieval.growth import GrownTextIndex

        if not texts:
            return
        if self.pair_model is not None:
            raise ValueError("a ranker with a term-pair column cannot grow (its term hashes end at the build)")
        if self._grown is None:
            self._grown = GrownTextIndex(self.text_index)
        self._grown.append(texts)
        n_items = self.n_items
        for arm in self.arms:
            grow = getattr(arm, "grow", None)
            if grow is not None:
                grow(n_items)

    def context_x(self, query: str, context: Context) -> np.ndarray:
        return context_features(query, context, self.query_freq(query), self.in_memory(query))

    def arm_x(self, arm_ids: list, arm_scores: list, budget: int) -> np.ndarray:
        return arm_features(arm_ids, arm_scores, budget, self.hit_rate())

    def features(self, retrieval: Retrieval, ids: np.ndarray) -> np.ndarray:
        """Ranker features of candidates ``ids`` for a retrieval, exactly as the ranker was trained:
        the trained-with arms' scores in their top ``ranker_budget`` (0 = not proposed)."""
        from retrieval.ranker_features import arm_score_matrix, candidate_features

        cols = self.ranker_cols.tolist()
        scores_by_arm = arm_score_matrix([retrieval.arm_ids[c] for c in cols],
                                         [retrieval.arm_scores[c] for c in cols], ids, self.ranker_budget)
        ids = np.asarray(ids)
        n_base = self.text_index.n_items
        grown = ids >= n_base
        if not grown.any():
            return candidate_features(retrieval.query, ids, scores_by_arm, self.text_index, self.item_stats,
                                      pair_model=self.pair_model)
        # Items added while serving: the same features over their own index, local ids from 0 (no
        # term-pair column: ``grow`` refuses a ranker that has one).
        g_index = self._grown.index()
        # All-zero statistics as a stride-0 view: no per-request allocation as large as the grown set.
        g_stats = np.broadcast_to(np.zeros(self.item_stats.shape[1], dtype=np.float32),
                                  (g_index.n_items, self.item_stats.shape[1]))
        X_grown = candidate_features(retrieval.query, ids[grown] - n_base, scores_by_arm[grown], g_index, g_stats)
        X = np.empty((ids.size, X_grown.shape[1]), dtype=np.float32)
        X[grown] = X_grown
        X[~grown] = candidate_features(retrieval.query, ids[~grown], scores_by_arm[~grown], self.text_index,
                                       self.item_stats)
        return X

    def union_depths(self, arm_ids: list, allocation: np.ndarray, budget: int) -> np.ndarray:
        """The union is filled to ``budget`` distinct items (:func:`fill_depths`)."""
        return fill_depths(arm_ids, allocation, budget)

    def policy_update(self, retrieval: Retrieval, ranks: np.ndarray) -> None:
        if getattr(self.policy, "uses_action_hits", False):
            # Full information under the union rule actually served: every menu action's filled union.
            menu = allocation_menu(len(self.arms), retrieval.budget)
            all_depths = fill_depths(retrieval.arm_ids, menu, retrieval.budget)
            hits = ((ranks[None, :] >= 0) & (ranks[None, :] < all_depths)).any(axis=1)
            self.policy.update(retrieval.x, retrieval.arm_x, retrieval.decision, ranks, action_hits=hits)
        else:
            super().policy_update(retrieval, ranks)

    def feedback(self, retrieval: Retrieval, item_id: int, context: Context, *, reward_policy: bool = True) -> float:
        """Apply a click: policy reward per arm (unless ``reward_policy`` is False, see
        :meth:`Pipeline.feedback`), online arms observe it. Returns the union reward (0/1)."""
        return super().feedback(retrieval, int(item_id), context, reward_policy=reward_policy)
