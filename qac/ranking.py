"""Learned ranking of completions: the completion instantiation of the retrieve-and-rank pipeline.

``CompletionPipeline`` is ``retrieval.pipeline.Pipeline`` with the completion arms (``qac.arms``),
a fixed policy (every arm contributes its top ``per_arm``; propensity 1) and a tree-ensemble ranker
(``retrieval.ranker.Ranker``, numba-scored) over the union, with the features of
:data:`FEATURE_NAMES`. The same :meth:`CompletionPipeline.features` builds the training rows
(:func:`ranker_training_rows`) and the serving rows.

Training (issue 4): arms built on the head of the training log, the ranker fitted on completion
points of its tail (the last ``ranker_tail_days``), replayed in time order with online feedback, as a
serving process sees them; label 1 for the query the user issued, 0 for every other candidate.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from retrieval.arms.base import Context
from retrieval.pipeline import Pipeline, Retrieval
from retrieval.policy import FixedPolicy, allocation_menu

# The arms whose union the ranker orders. MPC back-off (``qac.arms.BackoffArm``) is not among them:
# it fills a list that comes out shorter than k (dev split: leaving it out of the union cost 0.0005
# MRR@10 and saves its candidates' features on every rare prefix).
ARM_NAMES = ("xr_linear", "mpc", "user_history", "follow_up", "suffix", "typo")
# Arm scores that are counts get log1p; the others are used as they are.
_LOG_SCORE = {"mpc", "suffix", "typo"}

OTHER_FEATURES = ("log_global_count", "log_user_count", "log_user_age_days", "log_follow_count",
                  "prefix_chars", "prefix_words", "prefix_ends_word", "extra_chars", "completion_words",
                  "starts_with_prefix", "prev_word_overlap", "equals_prev", "in_session", "log_user_queries",
                  "n_candidates")
_MPC_COL = ARM_NAMES.index("mpc")
FEATURE_NAMES = tuple(f"{a}_{kind}" for a in ARM_NAMES for kind in ("score", "rrank")) + OTHER_FEATURES


class CompletionPipeline(Pipeline):
    """Completion arms -> fixed policy (all arms) -> union -> ranker.

    Parameters
    ----------
    arms : list of completion arms, in :data:`ARM_NAMES` order (a subset is allowed for ablations;
        missing arms' features are 0)
    ranker : object with ``score(float32 (m, len(FEATURE_NAMES))) -> float32 (m,)``
    mpc_arm, user_arm, follow_arm : the arms whose stores give the count features
    per_arm : int
        Candidates each arm contributes to the union.
    """

    def __init__(self, arms, ranker, mpc_arm, user_arm, follow_arm, per_arm: int = 8):
        n = len(arms)
        if 1 < n < 4:
            raise ValueError("arms: a completion pipeline needs 1 or at least 4 arms")
        self.per_arm = int(per_arm)
        # Every arm gets per_arm: the uniform menu action (the last one, n >= 4), or the single arm's.
        action = 0 if n == 1 else len(allocation_menu(n, self.per_arm * n)) - 1
        super().__init__(arms, FixedPolicy(n, 1, 1, action=action), ranker)
        self.mpc_arm = mpc_arm
        self.user_arm = user_arm
        self.follow_arm = follow_arm
        self._x = np.ones(1, dtype=np.float32)
        self._ax = np.zeros((n, 1), dtype=np.float32)
        self._cols = [ARM_NAMES.index(a.name) for a in arms]
        self._log = [a.name in _LOG_SCORE for a in arms]
        # The fixed policy's decision is the same on every call (propensity 1): made once, read-only.
        self._decision = self.policy.decide(self._x, self._ax, self.budget, np.random.default_rng(0))
        self._decision.allocation.setflags(write=False)

    @property
    def budget(self) -> int:
        return self.per_arm * len(self.arms)

    def arm_depth(self, budget: int) -> int:
        return self.per_arm

    def context_x(self, query: str, context: Context) -> np.ndarray:
        return self._x

    def arm_x(self, arm_ids: list, arm_scores: list, budget: int) -> np.ndarray:
        return self._ax

    def decide(self, x: np.ndarray, arm_x: np.ndarray, budget: int, rng: np.random.Generator):
        if budget != self.budget:
            raise ValueError(f"budget: a completion pipeline decides for {self.budget}, got {budget}")
        return self._decision

    def features(self, retrieval: Retrieval, ids: Sequence[str]) -> np.ndarray:
        """float32 (m, len(FEATURE_NAMES)) for the candidate completions ``ids`` of a retrieval."""
        prefix = retrieval.query
        ctx: Context = retrieval.context
        m = len(ids)
        row = {t: r for r, t in enumerate(ids)}
        arm_block = [[0.0] * (2 * len(ARM_NAMES)) for _ in range(m)]
        known_counts: dict[str, float] = {}
        for col, use_log, texts, scores in zip(self._cols, self._log, retrieval.arm_ids, retrieval.arm_scores):
            c0 = 2 * col
            is_mpc = col == _MPC_COL
            for rank, (t, s) in enumerate(zip(texts, scores)):
                r = row.get(t)
                if r is not None:
                    vals = arm_block[r]
                    vals[c0] = math.log1p(max(s, 0.0)) if use_log else s
                    vals[c0 + 1] = 1.0 / (1.0 + rank)
                    if is_mpc:
                        known_counts[t] = s
        prev = ctx.previous_queries[-1] if ctx.previous_queries else ""
        prev_words = set(prev.split())
        session = set(ctx.previous_queries)
        user = ctx.user_id
        now = ctx.timestamp
        # One prefix lookup per store covers every candidate that starts with the prefix.
        user_found = self.user_arm.entries(prefix, ctx) if (self.user_arm is not None and user) else None
        follow_found = self.follow_arm.entries(prefix, ctx) if (self.follow_arm is not None and prev) else None
        user_store = self.user_arm.store if user_found is not None else None
        follow_store = self.follow_arm.store if follow_found is not None else None
        count = self.mpc_arm.count
        overlap = prev_words.__contains__
        p_len = len(prefix)
        p_words = float(len(prefix.split()))
        ends_word = 1.0 if prefix.endswith(" ") else 0.0
        n_user = math.log1p(user_store.size(user)) if user_store is not None else 0.0
        fm = float(m)
        rows = []
        for t, vals in zip(ids, arm_block):
            starts = t.startswith(prefix)
            words = t.split()
            c = known_counts.get(t)
            if c is None:
                c = count(t)
            uc = ts = 0
            if user_found is not None:
                hit = user_found.get(t) if starts else user_store.count(user, t)
                if hit:
                    uc, ts = hit
            fc = 0
            if follow_found is not None:
                hit = follow_found.get(t) if starts else follow_store.count(prev, t)
                if hit:
                    fc = hit[0]
            vals.extend((
                math.log1p(c),
                math.log1p(uc),
                (math.log1p(max(0.0, (now - ts) / 86400.0)) if now else 0.0) if uc else -1.0,
                math.log1p(fc),
                p_len, p_words, ends_word,
                len(t) - p_len, len(words),
                1.0 if starts else 0.0,
                (sum(map(overlap, words)) / len(words)) if (prev_words and words) else 0.0,
                1.0 if t == prev else 0.0,
                1.0 if t in session else 0.0,
                n_user, fm,
            ))
            rows.append(vals)
        return np.array(rows, dtype=np.float32)


def ranker_training_rows(pipeline: CompletionPipeline, points, observe):
    """Feature rows of completion points replayed in time order, with online feedback after each.

    Parameters
    ----------
    pipeline : CompletionPipeline (its ranker is not used)
    points : sequence of qac.logs.CompletionPoint
    observe : callable ``(user_id, prev_query, query, timestamp) -> None``
        Online feedback after each point (the issued query), as the serving process applies it.

    Returns
    -------
    X : float32 (n_rows, len(FEATURE_NAMES)); y : float32 (n_rows,) 1 for the issued query;
    group_ptr : int64 (n_groups + 1,); stats : dict (n_points, n_groups, recall of the union)
        Only points whose issued query is in the candidate union make a group.
    """
    from qac.text import normalize_prefix

    rng = np.random.default_rng(0)
    Xs, ys, sizes = [], [], []
    n_points = n_hit = 0
    for p in sorted(points, key=lambda q: q.timestamp):
        n_points += 1
        ctx = Context(user_id=p.user_id, previous_queries=(p.prev_query,) if p.prev_query else (),
                      timestamp=int(p.timestamp))
        r = pipeline.retrieve(normalize_prefix(p.prefix), ctx, pipeline.budget, rng)
        ids = r.union_ids
        if p.next_query in ids:
            n_hit += 1
            X = pipeline.features(r, ids)
            y = np.fromiter((1.0 if t == p.next_query else 0.0 for t in ids), dtype=np.float32, count=len(ids))
            Xs.append(X)
            ys.append(y)
            sizes.append(len(ids))
        observe(p.user_id, p.prev_query, p.next_query, int(p.timestamp))
    gp = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=gp[1:])
    X = np.concatenate(Xs) if Xs else np.zeros((0, len(FEATURE_NAMES)), np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, np.float32)
    return X, y, gp, {"n_points": n_points, "n_groups": len(sizes),
                      "union_recall": n_hit / max(n_points, 1)}
