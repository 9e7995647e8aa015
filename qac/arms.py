"""Completion arms: each proposes candidate completions with scores for (session, prefix).

Every arm has ``name`` and ``retrieve(prefix, context, n) -> (texts, scores)`` -- the interface of
the search arms (``retrieval.arms.base``) with completion strings as the item keys -- so the
completion path runs through the same retrieve-and-rank pipeline as Search
(``qac.ranking.CompletionPipeline``). ``prefix`` is normalised (``qac.text.normalize_prefix``);
``context`` is a ``retrieval.arms.base.Context`` whose ``previous_queries`` are normalised.
``texts`` is a list of str, best first; ``scores`` a list of float (higher is better, arm-specific).

Arms (issue 4): the session-aware XR-Linear model, global most-popular completion with online
counts, the user's own history, the session follow-up memory, synthetic suffix completions,
a typo-tolerant arm (edit distance 1 on the prefix, only when the exact prefix has fewer than
``min_exact`` completions) and MPC back-off to shorter prefixes (the last resort, same condition).
"""
from __future__ import annotations

import heapq
import math
import threading

from qac.history import KeyedQueryCounts
from qac.mpc import MostPopularCompletion
from qac.suffix import SuffixCompletion

GLOBAL_KEY = ""
SECONDS_PER_DAY = 86400.0


class _LastCall:
    """Per-thread memo of the last call: ``get(key, compute)`` returns ``compute()``, or the value of
    the previous call in this thread when its key was equal. One request of the ranked path asks a
    history store the same question twice (an arm's lookup, then the ranker's features); keys must
    change whenever the answer can."""

    def __init__(self):
        self._local = threading.local()

    def get(self, key, compute):
        last = getattr(self._local, "last", None)
        if last is not None and last[0] == key:
            return last[1]
        value = compute()
        self._local.last = (key, value)
        return value


def _top(cands: dict[str, float], n: int) -> tuple[list[str], list[float]]:
    """Top ``n`` of ``{text: score}`` by score descending, ties by text."""
    if len(cands) > n:
        best = heapq.nsmallest(n, cands.items(), key=lambda kv: (-kv[1], kv[0]))
    else:
        best = sorted(cands.items(), key=lambda kv: (-kv[1], kv[0]))
    return [t for t, _ in best], [s for _, s in best]


def recency_score(count: int, last_seen: int, now: int) -> float:
    """Frequency-and-recency score of a history entry: ``log(1 + count) + 1 / (1 + age_days)``.

    ``now`` = 0 (unknown) counts the entry as fresh."""
    age = max(0.0, (now - last_seen) / SECONDS_PER_DAY) if now else 0.0
    return math.log1p(count) + 1.0 / (1.0 + age)


class XrLinearArm:
    """The session-aware XR-Linear model (prefix-constrained beam search); score = path score."""

    name = "xr_linear"

    def __init__(self, completer):
        self.completer = completer

    def retrieve(self, prefix: str, context, n: int):
        if not prefix:
            return [], []
        prev = context.previous_queries[-1] if context.previous_queries else ""
        inf = self.completer.inference
        # A prefix-constrained beam returns only labels in range: its top n is all the arm needs.
        ids, scores = self.completer.model_candidates(
            prev, prefix, n if inf.prefix_constrained else max(n, inf.n_model_candidates))
        labels = self.completer.labels
        return [labels[i] for i in ids[:n]], scores[:n]


class MpcArm:
    """Most-popular completion: training counts plus online counts (queries issued since the build).

    Exact: the static top ``n`` merged with every online-counted query under the prefix is the top
    ``n`` by total count (a query without online count is in the static top ``n`` whenever it is in
    the total top ``n``). Score = total count.
    """

    name = "mpc"

    def __init__(self, mpc: MostPopularCompletion, online: KeyedQueryCounts):
        self.mpc = mpc
        self.online = online

    def count(self, query: str) -> int:
        """Total count of a query (training + online)."""
        return self.mpc.count_of(query) + self.online.online_count(GLOBAL_KEY, query)

    def retrieve(self, prefix: str, context, n: int):
        if not prefix:
            return [], []
        static = self.mpc.top_k(prefix, n)
        extra = self.online.lookup(GLOBAL_KEY, prefix)
        if not extra:
            return [t for t, _ in static], [float(c) for _, c in static]
        cands = {t: float(c) for t, c in static}
        for t, (c, _) in extra.items():
            cands[t] = float(self.mpc.count(t) + c)
        return _top(cands, n)


class KeyedHistoryArm:
    """Entries of one key of a :class:`KeyedQueryCounts` that start with the prefix, by
    :func:`recency_score`. Subclasses say which key a request reads."""

    name = ""

    def __init__(self, store: KeyedQueryCounts):
        self.store = store
        self._last = _LastCall()

    def key(self, context) -> str | None:
        raise NotImplementedError

    def entries(self, prefix: str, context) -> dict[str, tuple[int, int]]:
        """``store.lookup(key, prefix)`` (memoised per thread until the store changes; do not mutate)."""
        key = self.key(context)
        if not key or not prefix:
            return {}
        return self._last.get((self.store.version, key, prefix), lambda: self.store.lookup(key, prefix))

    def retrieve(self, prefix: str, context, n: int):
        found = self.entries(prefix, context)
        if not found:
            return [], []
        now = context.timestamp
        return _top({t: recency_score(c, ts, now) for t, (c, ts) in found.items()}, n)


class UserHistoryArm(KeyedHistoryArm):
    """The user's own earlier queries (training log + online feedback), by frequency and recency."""

    name = "user_history"

    def key(self, context) -> str | None:
        return context.user_id or None


class FollowUpArm(KeyedHistoryArm):
    """Queries that followed the session's previous query in training sessions (+ online)."""

    name = "follow_up"

    def key(self, context) -> str | None:
        return context.previous_queries[-1] if context.previous_queries else None


class SuffixArm:
    """Synthetic completions: typed words + popular query suffixes (Mitra & Craswell, CIKM 2015);
    score = suffix count."""

    name = "suffix"

    def __init__(self, suffix: SuffixCompletion):
        self.suffix = suffix

    def retrieve(self, prefix: str, context, n: int):
        if not prefix:
            return [], []
        found = self.suffix.complete(prefix, n)
        return [t for t, _, _ in found], [float(c) for _, c, _ in found]


class _ShortPrefixArm:
    """An arm used only when the exact prefix has fewer than ``min_exact`` MPC completions."""

    def __init__(self, mpc: MostPopularCompletion, min_exact: int):
        self.mpc = mpc
        self.min_exact = int(min_exact)

    def needed(self, prefix: str) -> bool:
        return bool(prefix) and not self.mpc.has_at_least(prefix, self.min_exact)


class TypoArm(_ShortPrefixArm):
    """Completions of prefixes at edit distance 1 (deletion, transposition, substitution, insertion).

    Edits are tried only at the last ``window + 1`` positions up to where the typed prefix stops
    matching any training query (a typo cannot come after that point, and is nearly always just
    before it); substitutions and insertions use only the characters that actually follow the
    unedited head in training queries (``MostPopularCompletion.next_chars``). Score = MPC count of
    the completion. Candidates that start with the typed prefix itself are left to the exact arms.

    With ``window`` 0 every variant starts with the same unedited head, so the answer is the top
    ``n`` by count of the head's completions that start with some variant: read from the head's
    stored top row (one lookup) whenever that row is all of the head's completions or already holds
    ``n`` of them (then exact). Otherwise (and for ``window`` > 0) the variants are read one by one,
    at most ``max_expansions`` of them, those with the most training completions first
    (Elasticsearch's fuzzy ``max_expansions`` bound): each variant's top ``n``, merged by count.
    """

    name = "typo"

    def __init__(self, mpc: MostPopularCompletion, min_exact: int = 10, window: int = 0,
                 max_expansions: int = 8):
        super().__init__(mpc, min_exact)
        self.window = int(window)
        self.max_expansions = int(max_expansions)

    def _edit_position(self, prefix: str) -> int:
        return min(self.mpc.matched_length(prefix), len(prefix) - 1)

    def variants(self, prefix: str) -> list[str]:
        """Distinct edit-distance-1 variants of ``prefix`` (prefixes of 3+ characters) that some
        training query starts with, nearest edit position to the mismatch first."""
        L = len(prefix)
        if L < 3:
            return []
        has = self.mpc.has_prefix
        out: dict[str, None] = {}
        start = self._edit_position(prefix)
        for i in range(start, max(0, start - self.window) - 1, -1):
            head = prefix[:i]
            rest = prefix[i + 1:]
            v = head + rest  # deletion of prefix[i]
            if v and has(v):
                out.setdefault(v, None)
            if i + 1 < L and prefix[i] != prefix[i + 1]:
                v = head + prefix[i + 1] + prefix[i] + prefix[i + 2:]  # transposition
                if has(v):
                    out.setdefault(v, None)
            for c in self.mpc.next_chars(head):
                if c != prefix[i]:
                    v = head + c + rest  # substitution (valid by construction when nothing follows)
                    if not rest or has(v):
                        out.setdefault(v, None)
                    v = head + c + prefix[i:]  # insertion before prefix[i]
                    if has(v):
                        out.setdefault(v, None)
        out.pop(prefix, None)
        return list(out)

    @staticmethod
    def one_edit_at(prefix: str, i: int, query: str) -> bool:
        """Whether ``query`` (which starts with ``prefix[:i]``) starts with a variant of ``prefix``
        edited at position ``i`` (deletion, transposition, substitution or insertion there)."""
        typed, rest = prefix[i], prefix[i + 1:]
        if query.startswith(rest, i):  # deletion of prefix[i]
            return bool(i or rest)
        if rest and typed != rest[0] and query.startswith(rest[0] + typed + rest[1:], i):  # transposition
            return True
        if len(query) <= i or query[i] == typed:
            return False
        # substitution of prefix[i], or insertion before it
        return query.startswith(rest, i + 1) or query.startswith(prefix[i:], i + 1)

    def expansions(self, prefix: str) -> list[str]:
        """The variants whose completions are read one by one: all of them, or the
        ``max_expansions`` with the most training completions (ties: nearest the mismatch first)."""
        found = self.variants(prefix)
        if len(found) <= self.max_expansions:
            return found
        size = self.mpc.n_completions
        return [v for _, _, v in heapq.nsmallest(
            self.max_expansions, ((-size(v), j, v) for j, v in enumerate(found)))]

    def retrieve(self, prefix: str, context, n: int):
        if len(prefix) < 3 or not self.needed(prefix):
            return [], []
        cands: dict[str, float] = {}
        if self.window == 0:
            i = self._edit_position(prefix)
            mpc = self.mpc
            row = mpc.top_k(prefix[:i], mpc.n_stored)
            one_edit = self.one_edit_at
            for t, c in row:
                if not t.startswith(prefix) and one_edit(prefix, i, t):
                    cands[t] = float(c)
                    if len(cands) == n:
                        return list(cands), list(cands.values())  # the row is by count, ties by text
            if len(row) < mpc.n_stored or not mpc.has_at_least(prefix[:i], mpc.n_stored + 1):
                return list(cands), list(cands.values())  # the row was every completion of the head
        for v in self.expansions(prefix):
            # Only a deletion variant can be completed by the typed prefix's own completions, and
            # those are fewer than min_exact: reading that many more keeps the merge exact.
            for t, c in self.mpc.top_k(v, n + self.min_exact if prefix.startswith(v) else n):
                if not t.startswith(prefix):
                    cands[t] = float(c)
        return _top(cands, n)


class BackoffArm(_ShortPrefixArm):
    """MPC of shorter prefixes (``prefix[:-1]``, ...), so an answer is never empty; score =
    ``matched_chars + count / (count + 1)`` (longer matches first, then popularity)."""

    name = "mpc_backoff"

    def retrieve(self, prefix: str, context, n: int):
        if not self.needed(prefix):
            return [], []
        texts, scores = [], []
        for t, c, matched in self.mpc.top_k_backoff(prefix, n):
            if matched < len(prefix):
                texts.append(t)
                scores.append(matched + c / (c + 1.0))
        return texts, scores
