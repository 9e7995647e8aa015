"""StackedFusionArm: pool features equal a slow twin, the order is the model's, the builder replays
the last week through earlier arms, binding and persistence, and the arm contract."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from qac.logs import QueryEvent
from retrieval.arms.base import Context
from retrieval.arms.bm25 import BM25Arm
from retrieval.arms.chargram import CharGramArm
from retrieval.arms.history import build_history_arm
from retrieval.arms.memory import build_memory_arm
from retrieval.arms.popularity import PopularityArm
from retrieval.pipeline import Pipeline
from retrieval.arms.stack import (
    StackedFusionArm, build_stacked_fusion_arm, feature_names, pool_features, replay_contexts, replay_pools,
)
from retrieval.ranker import RankerConfig
from tests.retrieval.arm_contract import CONTEXT, UNKNOWN_QUERIES, ArmContract

SITES = ["google com", "yahoo com", "ebay com", "weather com", "mapquest com", "myspace com", "amazon com",
         "bank of america com"]
URL = {i: f"http://www.{t.replace(' ', '')}/" for i, t in enumerate(SITES)}
ITEM_OF = {u: i for i, u in URL.items()}.get
T0 = 1_146_000_000
DAY = 86_400
# (day, user, query, clicked site)
CLICKS = [(0, "u1", "google", 0), (0, "u1", "maps", 4), (1, "u2", "ebay", 2), (1, "u2", "weather", 3),
          (2, "u3", "myspace", 5), (2, "u1", "google", 0), (3, "u2", "auction", 2), (3, "u3", "shopping", 6),
          (4, "u1", "bank", 7), (5, "u2", "weather", 3), (6, "u3", "google", 0), (8, "u1", "google", 0),
          (8, "u2", "ebay", 2), (9, "u3", "myspace", 5), (9, "u1", "maps", 4), (10, "u2", "forecast", 3),
          (11, "u3", "books", 6), (12, "u1", "bank", 7), (13, "u2", "weather", 3), (13, "u3", "search", 0)]
EVENTS = [QueryEvent(u, q, T0 + d * DAY + 60 * n, (URL[i],)) for n, (d, u, q, i) in enumerate(CLICKS)]


def tiny_arms(events, with_user_arms: bool = True):
    """bm25 / memory / chargram (/ popularity / history) over SITES from these events' clicks."""
    q = [e.query for e in events]
    ids = np.array([ITEM_OF(e.click_urls[0]) for e in events], dtype=np.int32)
    ts = np.array([e.timestamp for e in events], dtype=np.int64)
    expanded = [" ".join([t] + [e.query for e, i in zip(events, ids) if i == j]) for j, t in enumerate(SITES)]
    arms = [BM25Arm.build(expanded, b=0.0), CharGramArm.build(SITES), build_memory_arm(q, ids, ts, SITES)]
    if with_user_arms:
        arms.append(PopularityArm.build(ids.tolist(), len(SITES)))
        arms.append(build_history_arm([e.user_id for e in events], q, ids, ts, len(SITES)))
    return arms


def fitted(with_user_arms: bool = True, depth: int = 4, report=None):
    cfg = RankerConfig(objective="regression", n_trees=5, learning_rate=0.3, max_leaf_nodes=4, min_samples_leaf=1)
    arm = build_stacked_fusion_arm(EVENTS, ITEM_OF, len(SITES), lambda early: tiny_arms(early, with_user_arms),
                                   depth=depth, config=cfg, report=report)
    return arm, tiny_arms(EVENTS, with_user_arms)


def slow_features(query, context, arms, depth, k):
    lists = [a.retrieve(query, context, depth) for a in arms]
    pool = sorted({i for ids, _ in lists for i in ids.tolist()})
    rows = []
    by_name = {a.name: a for a in arms}
    mem = {}
    if "memory" in by_name:
        mem = dict(zip(*[x.tolist() for x in by_name["memory"].observed(query, context)]))
    prev = {}
    if "memory" in by_name and context.previous_queries:
        prev = dict(zip(*[x.tolist() for x in by_name["memory"].observed(context.previous_queries[-1], context)]))
    hist = {}
    last = {}
    if "history" in by_name:
        hist = dict(zip(*[x.tolist() for x in by_name["history"].user_items(context)]))
        for e in EVENTS:  # tiny_arms(EVENTS): the user's clicks are these events'
            if e.user_id == context.user_id and context.user_id:
                i = ITEM_OF(e.click_urls[0])
                last[i] = max(last.get(i, e.timestamp), e.timestamp)
    now = context.timestamp or by_name["history"].clock if "history" in by_name else 0
    for i in pool:
        row = []
        n_lists = 0
        for ids, sc in lists:
            ids = ids.tolist()
            if i in ids:
                r = ids.index(i)
                row += [1.0 / (k + r + 1), sc[r] / sc[0] if sc[0] > 0 else 0.0, math.log1p(max(sc[r], 0.0))]
                n_lists += 1
            else:
                row += [0.0, 0.0, 0.0]
        pop = by_name["popularity"].scores[i] if "popularity" in by_name else 0.0
        row += [math.log1p(pop), math.log1p(mem.get(i, 0.0)), math.log1p(hist.get(i, 0.0)),
                math.log1p(prev.get(i, 0.0)), n_lists,
                min(len(query.split()), 10), math.log1p(len(query)), math.log1p(sum(mem.values())),
                math.log1p(len(hist)), min(context.session_position, 10),
                math.log1p(max(now - last[i], 0) if i in last else 1e9), float(query in context.previous_queries)]
        rows.append(row)
    return pool, np.array(rows, dtype=np.float64).reshape(len(pool), -1)


@pytest.mark.parametrize("query", ["google", "weather", "ebay auction", "bank america", "zzz", ""])
@pytest.mark.parametrize("context", [Context(), CONTEXT, Context(user_id="u2", timestamp=T0 + 20 * DAY,
                                                                    session_position=3, previous_queries=("ebay",)),
                                     Context(user_id="u1", session_position=2, previous_queries=("maps", "google"))])
def test_pool_features_equal_slow_twin(query, context):
    arms = tiny_arms(EVENTS)
    ids, X = pool_features(query, context, arms, 3, 10.0)
    pool, expected = slow_features(query, context, arms, 3, 10.0)
    assert ids.dtype == np.int32 and X.dtype == np.float32
    assert ids.tolist() == pool
    assert X.shape == (len(pool), len(feature_names([a.name for a in arms])))
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)


def test_retrieve_is_the_model_order_of_the_pool():
    arm, arms = fitted()
    arm.bind(arms)
    for q in ["google", "weather", "maps", "shopping books"]:
        for ctx in (Context(), Context(user_id="u3", timestamp=T0 + 15 * DAY)):
            ids, scores = arm.retrieve(q, ctx, 3)
            pool, X = pool_features(q, ctx, arms, arm.depth, arm.k)
            s = arm.model.score(X)
            order = sorted(range(pool.size), key=lambda r: (-s[r], pool[r]))[:3]
            assert ids.tolist() == pool[order].tolist()
            np.testing.assert_allclose(scores, s[order], rtol=1e-6)


def test_retrieve_pooled_reuses_the_requests_lists_and_equals_retrieve():
    arm, arms = fitted()
    arm.bind(arms)
    calls = []
    for a in arms:  # count the sub-arms' retrieve calls
        a.retrieve = (lambda f, name: (lambda *args: calls.append(name) or f(*args)))(a.retrieve, a.name)
    for q in ["google", "weather", "maps", "shopping books", "zzz"]:
        ctx = Context(user_id="u3", timestamp=T0 + 15 * DAY)
        n = arm.depth + 4
        want = arm.retrieve(q, ctx, n)
        calls.clear()
        lists = {a.name: (a, *a.retrieve(q, ctx, n), n) for a in arms}
        calls.clear()
        got = arm.retrieve_pooled(q, ctx, n, lists)
        assert calls == [] and got[0].tolist() == want[0].tolist()
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
        # The request's lists missing, or shallower than the pool depth: the sub-arms are asked again.
        got = arm.retrieve_pooled(q, ctx, n, {})
        assert sorted(calls) == sorted(a.name for a in arms) and got[0].tolist() == want[0].tolist()
        calls.clear()
        short = {name: (a, ids[:2], sc[:2], 2) for name, (a, ids, sc, _) in lists.items()}
        got = arm.retrieve_pooled(q, ctx, 2, short)
        assert sorted(calls) == sorted(a.name for a in arms)
        assert got[0].tolist() == arm.retrieve(q, ctx, 2)[0].tolist()
        # Another object under a sibling's name (e.g. an arm's own copy) is never taken for it.
        calls.clear()
        copies = {name: (object(), ids, sc, asked) for name, (a, ids, sc, asked) in lists.items()}
        arm.retrieve_pooled(q, ctx, n, copies)
        assert sorted(calls) == sorted(a.name for a in arms)


def test_builder_replays_the_last_week_through_earlier_arms():
    report: dict = {}
    arm, _ = fitted(report=report)
    late = [e for e in EVENTS if e.timestamp > EVENTS[-1].timestamp - 7 * DAY]
    assert report["n_groups"] == len(late) and report["n_early_events"] == len(EVENTS) - len(late)
    assert report["sub_arms"] == arm.sub_arms == ["bm25", "chargram", "memory", "popularity", "history"]
    assert 0 < report["n_positive"] <= report["n_groups"] and 0 < report["pool_recall"] <= 1


def test_replay_lets_online_arms_observe_the_clicks():
    # "forecast" never clicked before day 10: the memory index learns it during the replay.
    arms = tiny_arms(EVENTS[:5])
    events = [QueryEvent("u9", "forecast", T0 + 20 * DAY + i, (URL[3],)) for i in range(3)]
    X, y, ptr, n_clicks = replay_pools(arms, events, ITEM_OF, depth=4)
    col = feature_names([a.name for a in arms]).index("log_query_item_clicks")
    assert n_clicks == 3 and ptr.tolist()[0] == 0 and ptr.size == 4
    clicked = [X[a:b][y[a:b] == 1, col] for a, b in zip(ptr[:-1], ptr[1:])]
    assert [c.size for c in clicked][1:] == [1, 1]
    assert clicked[1][0] > 0 and clicked[2][0] > clicked[1][0]


def test_replay_times_the_users_clicks_and_repeated_queries():
    # u9 clicks weather.com for "forecast" three times, a minute apart, in one session.
    arms = tiny_arms(EVENTS[:5])
    events = [QueryEvent("u9", "forecast", T0 + 20 * DAY + 60 * i, (URL[3],)) for i in range(3)]
    X, y, ptr, _ = replay_pools(arms, events, ITEM_OF, depth=4)
    names = feature_names([a.name for a in arms])
    ago, rep = names.index("log_seconds_since_user_click"), names.index("repeated_query")
    clicked = [X[a:b][y[a:b] == 1][0] for a, b in zip(ptr[:-1], ptr[1:])]
    assert [float(r[ago]) for r in clicked] == pytest.approx([math.log1p(1e9), math.log1p(60), math.log1p(60)])
    assert [float(r[rep]) for r in clicked] == [0.0, 1.0, 1.0]


def test_without_a_history_arm_no_user_click_is_known():
    arms = tiny_arms(EVENTS, with_user_arms=False)
    ids, X = pool_features("google", CONTEXT, arms, 4, 10.0)
    col = feature_names([a.name for a in arms]).index("log_seconds_since_user_click")
    assert ids.size > 0 and np.all(X[:, col] == np.float32(math.log1p(1e9)))


def test_replay_contexts_follow_sessions():
    evs = [QueryEvent("u", "a", 100, ()), QueryEvent("u", "b", 200, ()), QueryEvent("u", "c", 5000, ()),
           QueryEvent("v", "d", 210, ())]
    ctx = [c for _, c in replay_contexts(evs)]
    assert [c.previous_queries for c in ctx] == [(), ("a",), (), ()]
    assert [c.session_position for c in ctx] == [0, 1, 0, 0]


def test_round_trip_then_bind():
    arm, arms = fitted()
    arm.bind(arms)
    params, arrays = arm.to_arrays()
    twin = StackedFusionArm.from_arrays(json.loads(json.dumps(params)), arrays).bind(arms)
    for q in ["google", "weather", "zzz"]:
        a, b = arm.retrieve(q, CONTEXT, 5), twin.retrieve(q, CONTEXT, 5)
        assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


def test_a_model_without_the_added_columns_scores_the_columns_before_them():
    # Artifacts built before the user-recency and repeated-query columns hold a model over the first
    # columns only; they still load and score those.
    from retrieval.ranker import Ranker

    arms = tiny_arms(EVENTS)
    names = feature_names([a.name for a in arms])
    n_old = names.index("log_seconds_since_user_click")
    X, y, ptr, _ = replay_pools(arms, EVENTS, ITEM_OF, depth=4)
    cfg = RankerConfig(objective="regression", n_trees=5, learning_rate=0.3, max_leaf_nodes=4, min_samples_leaf=1)
    old = Ranker(cfg).fit(X[:, :n_old], y, ptr)
    arm = StackedFusionArm([a.name for a in arms], old, len(SITES), depth=4).bind(arms)
    assert arm.n_columns == n_old == len(names) - 2
    arm.warmup()
    ctx = Context(user_id="u1", timestamp=T0 + 20 * DAY)
    pool, Xq = pool_features("google", ctx, arms, 4, 10.0)
    ids, scores = arm.retrieve("google", ctx, 10)
    expected = old.score(Xq[:, :n_old])
    order = np.lexsort((pool, -expected))
    assert ids.tolist() == pool[order].tolist()
    np.testing.assert_allclose(scores, expected[order], rtol=1e-6)


def test_retrieve_before_bind_raises():
    arm, _ = fitted()
    with pytest.raises(RuntimeError, match="before bind"):
        arm.retrieve("google", Context(), 5)


@pytest.mark.parametrize("arms_of,message", [
    (lambda arms: arms[:2], "no arm named"),
    (lambda arms: arms[:2] + [build_memory_arm(["x"], np.array([0]), np.array([0]), ["a", "b"])] + arms[3:],
     "items, expected"),
])
def test_invalid_bind(arms_of, message):
    arm, arms = fitted()
    with pytest.raises(ValueError, match=message):
        arm.bind(arms_of(arms))


@pytest.mark.parametrize("kwargs,message", [
    ({"sub_arms": []}, "need at least one sibling"),
    ({"sub_arms": ["bm25", "stack"]}, "need at least one sibling"),
    ({"depth": 0}, "depth must be an int >= 1"),
    ({"depth": 2.0}, "depth must be an int >= 1"),
    ({"k": 0.0}, "k must be > 0"),
    ({"sub_arms": ["bm25"]}, "features, the pool has"),
])
def test_invalid_config(kwargs, message):
    arm, _ = fitted()
    kw = {"sub_arms": arm.sub_arms, "model": arm.model, "n_items": arm.n_items, "depth": 4, "k": 10.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        StackedFusionArm(**kw)


def test_builder_needs_both_sides_of_the_cut():
    with pytest.raises(ValueError, match="before and after"):
        build_stacked_fusion_arm(EVENTS[:2], ITEM_OF, len(SITES), tiny_arms, holdout_days=30)


class TestStackContract(ArmContract):
    """Over query-dependent siblings only (popularity and history list items for any query)."""

    def make_arm(self):
        arm, arms = fitted(with_user_arms=False, depth=6)
        return arm.bind(arms), ["google", "weather", "ebay", "maps"]

    def test_round_trip_through_mmap(self, arm_and_queries, tmp_path):
        arm, queries = arm_and_queries
        params, arrays = arm.to_arrays()
        loaded = {}
        for key, value in arrays.items():
            np.save(tmp_path / f"{key}.npy", value, allow_pickle=False)
            loaded[key] = np.load(tmp_path / f"{key}.npy", mmap_mode="r", allow_pickle=False)
        twin = StackedFusionArm.from_arrays(json.loads(json.dumps(params)), loaded).bind(arm.arms)
        twin.warmup()
        for q in [*queries, *UNKNOWN_QUERIES]:
            for n in (0, 1, 10):
                a, b = arm.retrieve(q, CONTEXT, n), twin.retrieve(q, CONTEXT, n)
                np.testing.assert_array_equal(a[0], b[0])
                np.testing.assert_array_equal(a[1], b[1])


class _FixedAllocation(Pipeline):
    """The pipeline's own flow with a trivial policy (one candidate per arm): enough to watch retrieve."""

    def context_x(self, query, context):
        return np.zeros(1, dtype=np.float32)

    def arm_x(self, arm_ids, arm_scores, budget):
        return np.zeros((len(arm_ids), 1), dtype=np.float32)

    def decide(self, x, arm_x, budget, rng):
        return SimpleNamespace(allocation=np.ones(len(self.arms), dtype=np.int64))


@pytest.mark.parametrize("budget", [2, 4, 9])  # below, at and above the pool depth (4)
def test_pipeline_asks_each_arm_once_and_keeps_the_requests_head(budget):
    arm, arms = fitted()
    arm.bind(arms)
    pipe = _FixedAllocation(arms + [arm], policy=None, ranker=None)
    assert pipe.pool_depths() == {a.name: arm.depth for a in arms}
    asked = []
    for a in arms:
        a.retrieve = (lambda f, name: (lambda q, c, n: asked.append((name, n)) or f(q, c, n)))(a.retrieve, a.name)
    for q in ["google", "weather", "maps", "shopping books", "zzz"]:
        ctx = Context(user_id="u3", timestamp=T0 + 15 * DAY)
        want = [a.retrieve(q, ctx, budget) for a in arms] + [arm.retrieve(q, ctx, budget)]
        asked.clear()
        r = pipe.retrieve(q, ctx, budget, np.random.default_rng(0))
        assert asked == [(a.name, max(budget, arm.depth)) for a in arms]
        for (ids, sc), got_ids, got_sc in zip(want, r.arm_ids, r.arm_scores):
            assert got_ids.tolist() == ids.tolist()
            np.testing.assert_allclose(got_sc, sc, rtol=1e-6)


def test_grown_item_enters_the_pool_through_the_online_sub_arms():
    """An open catalogue's new site (retrieval.growth): once the siblings grow and observe it, the
    stack pools and ranks it like any item; the offline siblings never list it."""
    arm, arms = fitted()
    arm.bind(arms)
    n = len(SITES)
    with pytest.raises(ValueError, match="cannot shrink"):
        arm.grow(n - 1)
    for a in [arm, *arms]:
        if hasattr(a, "grow"):
            a.grow(n + 1)
    ctx = Context(user_id="u1", timestamp=T0 + 20 * DAY)
    ids, _ = arm.retrieve("newsite", ctx, 10)
    assert n not in ids.tolist()  # grown, not yet clicked
    for _ in range(3):
        for a in arms:
            if hasattr(a, "observe"):
                a.observe("newsite", n, ctx)
    ids, scores = arm.retrieve("newsite", ctx, 10)
    assert arm.n_items == n + 1 and n in ids.tolist()
    assert ids.max() < arm.n_items and np.all(np.diff(scores) <= 0)
    offline = [a for a in arms if not hasattr(a, "grow")]
    assert offline and all(n not in a.retrieve("newsite", ctx, 10)[0].tolist() for a in offline)
    pool, X = pool_features("newsite", ctx, arms, 4)
    row = X[pool.tolist().index(n)]
    names = feature_names([a.name for a in arms])
    assert row[names.index("log_popularity")] == pytest.approx(math.log1p(3))
    assert row[names.index("log_query_item_clicks")] == pytest.approx(math.log1p(3))
