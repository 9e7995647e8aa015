"""User-history arm: the items the requesting user clicked before, by recency-weighted frequency.

For user ``u``, item ``i``, query ``q`` at time ``t`` (Unix seconds)::

    score(u, i, q, t) = c(u, i, t) + word_boost * mean over distinct words w of q of c(u, i, w, t)

    c(u, i, t)    = sum over u's clicks on i             of weight * 0.5 ** ((t - t_c) / half_life)
    c(u, i, w, t) = same sum restricted to clicks whose query contains the word w

so an item is boosted (up to ``1 + word_boost`` times its count) when the user clicked it for
queries sharing words with the current one. Counts decay lazily as in the memory index
(:mod:`retrieval.arms.memory`: ``(value, last_time)`` per pair, exact), so the ranking of a user's
items does not depend on ``t`` apart from the word boost. ``t`` is ``context.timestamp``, or the
arm's clock (the latest timestamp seen) when that is 0.

Only the requesting user's own items are ever returned: an anonymous request (``user_id == ""``)
or an unknown user gets an empty result. Scores are float32 descending, ties by item id ascending.

Data layout: two :class:`retrieval.arms.memory.DecayedPostings`: ``user`` (key = user id) and
``word`` (key = ``user_id + "\\x00" + word``), each offline flat arrays plus an online delta that
``state_arrays`` / ``load_state`` snapshot.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from qac.text import normalize_query
from retrieval.arms.base import Context, check_n, check_query, empty_result
from retrieval.arms.memory import SECONDS_PER_DAY, DecayedPostings, OnlineClickArm, _is_num, _prefixed, top_n

__all__ = ["HistoryConfig", "UserHistoryArm", "build_history_arm"]

FORMAT = "history_arm/1"
_SEP = "\x00"


@dataclasses.dataclass(frozen=True)
class HistoryConfig:
    """Parameters of the user-history arm.

    Parameters
    ----------
    half_life_days : float > 0
        A click's weight halves every ``half_life_days`` days.
    word_boost : float >= 0
        Extra weight of the clicks made for queries sharing words with the current query.
    """

    half_life_days: float = 30.0
    word_boost: float = 1.0

    def __post_init__(self) -> None:
        if not (_is_num(self.half_life_days) and self.half_life_days > 0):
            raise ValueError(f"HistoryConfig.half_life_days must be > 0, got {self.half_life_days!r}")
        if not (_is_num(self.word_boost) and self.word_boost >= 0):
            raise ValueError(f"HistoryConfig.word_boost must be >= 0, got {self.word_boost!r}")

    @property
    def half_life_seconds(self) -> float:
        return float(self.half_life_days) * SECONDS_PER_DAY


def _word_keys(user_id: str, query: str) -> list[str]:
    return [user_id + _SEP + w for w in dict.fromkeys(query.split())]


class UserHistoryArm(OnlineClickArm):
    """The user's own clicked items (module docstring). Build with :func:`build_history_arm`.

    Attributes
    ----------
    name : str
        ``"history"``.
    config : HistoryConfig
    clock : int
        Latest timestamp seen, the evaluation time when ``context.timestamp == 0``.
    """

    name = "history"

    def __init__(self, config: HistoryConfig, n_items: int, users: DecayedPostings, words: DecayedPostings,
                 clock: int) -> None:
        self.config = config
        self._init_clock(n_items, clock)
        self.users = users
        self.words = words

    def retrieve(self, query: str, context: Context, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` of ``context.user_id``'s clicked items (see the module docstring).

        Returns
        -------
        ids : int32 (<= n,), scores : float32 (<= n,), descending, ties by id ascending;
        empty for an anonymous or unknown user.

        Raises
        ------
        ValueError
            ``n`` not an int >= 0, or ``query`` not a str.
        """
        n = check_n(n)
        query = normalize_query(check_query(query))
        user = context.user_id
        if n == 0 or not user:
            return empty_result()
        t = self._time(context)
        ids, counts = self.users.counts(user, t)
        if ids.size == 0:
            return empty_result()
        boost = self.config.word_boost
        keys = _word_keys(user, query) if boost > 0 else []
        if keys:
            extra = np.zeros(ids.size, dtype=np.float64)
            for key in keys:
                w_ids, w_counts = self.words.counts(key, t)
                if w_ids.size:
                    # Word postings are a subset of the user's items, both sorted by id.
                    extra[np.searchsorted(ids, w_ids)] += w_counts
            counts = counts + extra * (boost / len(keys))
        return top_n(ids, counts, n)

    def user_items(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """``context.user_id``'s clicked items at ``context.timestamp``: ids int32 ascending and
        decayed counts float64, both (m,); empty for an anonymous or unknown user."""
        if not context.user_id:
            return empty_result()
        return self.users.counts(context.user_id, self._time(context))

    def seconds_since_clicks(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """``context.user_id``'s clicked items and the seconds from the latest click on each to
        ``context.timestamp`` (the arm's clock when 0), clipped at 0: ids int32 ascending and float64,
        both (m,); empty for an anonymous or unknown user."""
        if not context.user_id:
            return empty_result()[0], np.zeros(0, dtype=np.float64)
        ids, last = self.users.last_times(context.user_id)
        return ids, np.maximum(self._time(context) - last, 0).astype(np.float64)

    def warmup(self) -> None:
        """No kernels; touches the lookup path once."""
        self.retrieve("", Context(), 1)

    def observe(self, query: str, item_id: int, context: Context, weight: float = 1.0) -> None:
        """Record that ``context.user_id`` clicked ``item_id`` for ``query`` at ``context.timestamp``
        (0: the arm's clock); advances the clock. Anonymous clicks (``user_id == ""``) are ignored.

        Raises
        ------
        ValueError
            ``query`` not a str, item id out of range, negative or non-finite weight.
        """
        query = normalize_query(check_query(query))
        self._check_click(item_id, weight)
        user = context.user_id
        if not user:
            return
        t = self._time(context)
        item, weight = int(item_id), float(weight)
        self.users.add(user, item, weight, t)
        for key in _word_keys(user, query):
            self.words.add(key, item, weight, t)
        self._advance(t)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Online part only: ``user_*`` and ``word_*`` deltas (:class:`DecayedPostings`) and ``clock``."""
        out = {f"user_{k}": v for k, v in self.users.state_arrays().items()}
        out.update({f"word_{k}": v for k, v in self.words.state_arrays().items()})
        out.update(self._clock_state())
        return out

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Replace the online part by a :meth:`state_arrays` snapshot.

        Raises
        ------
        ValueError
            Missing or inconsistent arrays, or an item id out of range.
        """
        clock = self._checked_state(arrays, ("user_", "word_"))
        users_state, words_state = _prefixed(arrays, "user_"), _prefixed(arrays, "word_")
        # Validate both before replacing either, so a bad snapshot leaves the arm unchanged.
        for name, sub in (("user", users_state), ("word", words_state)):
            missing = [k for k in DecayedPostings.ARRAY_KEYS if k not in sub]
            if missing:
                raise ValueError(f"state: missing {name}_ arrays {missing}")
        self.users.load_state(users_state)
        self.words.load_state(words_state)
        self.clock = clock

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)`` of the offline part: ``user_*`` and ``word_*`` postings."""
        arrays = {f"user_{k}": v for k, v in self.users.offline_arrays().items()}
        arrays.update({f"word_{k}": v for k, v in self.words.offline_arrays().items()})
        params = {"format": FORMAT, "config": dataclasses.asdict(self.config), "n_items": self._n_items,
                  "clock": self._built_clock}
        return params, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "UserHistoryArm":
        """Inverse of :meth:`to_arrays` (online part empty); arrays may be read-only memory maps.

        Raises
        ------
        ValueError
            Unknown format, missing or inconsistent arrays.
        """
        if params.get("format") != FORMAT:
            raise ValueError(f"params.format must be {FORMAT!r}, got {params.get('format')!r}")
        config = HistoryConfig(**params["config"])
        n_items = int(params["n_items"])
        users = DecayedPostings(_prefixed(arrays, "user_"), config.half_life_seconds)
        words = DecayedPostings(_prefixed(arrays, "word_"), config.half_life_seconds)
        for name, p in (("user", users), ("word", words)):
            if p.post_items.size and (p.post_items.min() < 0 or p.post_items.max() >= n_items):
                raise ValueError(f"{name}_post_items must lie in [0, {n_items})")
        return cls(config, n_items, users, words, int(params["clock"]))


def build_history_arm(user_ids: Sequence[str], queries: Sequence[str], item_ids, timestamps, n_items: int,
                      weights=None, config: HistoryConfig | None = None) -> UserHistoryArm:
    """Build the user-history arm from training clicks (build code).

    Parameters
    ----------
    user_ids : sequence of str, length n_clicks
        Clicking user of every click; clicks with ``""`` are skipped.
    queries : sequence of str, length n_clicks
        Normalised query of every click.
    item_ids : int array (n_clicks,), in ``[0, n_items)``
    timestamps : int array (n_clicks,), Unix seconds
    n_items : int
    weights : float array (n_clicks,), optional (default 1), >= 0
    config : HistoryConfig

    Returns
    -------
    UserHistoryArm

    Raises
    ------
    ValueError
        Lengths differ, an item id is out of range or a weight is negative / not finite.
    """
    config = HistoryConfig() if config is None else config
    if not isinstance(config, HistoryConfig):
        raise ValueError("config must be a HistoryConfig")
    users, queries = list(user_ids), list(queries)
    items = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    times = np.asarray(timestamps, dtype=np.int64).reshape(-1)
    w = np.ones(items.size) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (len(users) == len(queries) == items.size == times.size == w.size):
        raise ValueError("user_ids, queries, item_ids, timestamps and weights must have the same length")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item_ids must lie in [0, {n_items})")
    if w.size and (not np.all(np.isfinite(w)) or w.min() < 0):
        raise ValueError("weights must be finite and >= 0")
    keep = np.fromiter(map(bool, users), dtype=bool, count=len(users))
    hl = config.half_life_seconds
    user_post = DecayedPostings.build([u for u, k in zip(users, keep) if k], items[keep], times[keep], w[keep], hl)
    word_keys: list[str] = []
    word_rows: list[int] = []
    for j, (u, q) in enumerate(zip(users, queries)):
        if u:
            ks = _word_keys(u, normalize_query(q))
            word_keys.extend(ks)
            word_rows.extend([j] * len(ks))
    rows = np.array(word_rows, dtype=np.int64)
    word_post = DecayedPostings.build(word_keys, items[rows], times[rows], w[rows], hl)
    clock = int(times.max()) if times.size else 0
    return UserHistoryArm(config, n_items, user_post, word_post, clock)
