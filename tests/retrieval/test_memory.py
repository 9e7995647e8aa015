"""Memory index arm: exact decayed counts, observed-overrides-predicted, snapshots and replay."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.arms.base import Context
from retrieval.arms.memory import DecayedPostings, MemoryArm, MemoryConfig, build_memory_arm, top_n
from tests.retrieval.arm_contract import ArmContract, OnlineArmContract

DAY = 86400
TEXTS = ["red running shoes", "blue running shoes", "green garden hat", "garden hose", "wikipedia org",
         "red hat", "kitchen sink", "bathroom sink faucet"]
CLICKS = [  # (query, item, timestamp, weight)
    ("running shoes", 0, 1 * DAY, 1.0),
    ("running shoes", 1, 2 * DAY, 1.0),
    ("running shoes", 1, 40 * DAY, 1.0),
    ("hat", 2, 3 * DAY, 1.0),
    ("hat", 5, 4 * DAY, 2.0),
    ("wiki", 4, 5 * DAY, 1.0),
    ("sink", 6, 6 * DAY, 1.0),
]


def make_arm(config: MemoryConfig | None = None) -> MemoryArm:
    # A tiny catalogue: keep every term in the predicted index (the default drops terms in > 20%).
    config = MemoryConfig(max_df_fraction=1.0) if config is None else config
    q, i, t, w = zip(*CLICKS)
    return build_memory_arm(q, i, t, TEXTS, weights=w, config=config)


def slow_count(clicks, query, item, t, half_life_days=30.0):
    """The formula, click by click: sum w * 0.5 ** ((t - t_c) / half_life)."""
    hl = half_life_days * DAY
    return sum(w * 0.5 ** ((t - tc) / hl) for q, i, tc, w in clicks if q == query and i == item)


def readonly_copy(arrays):
    out = {}
    for k, v in arrays.items():
        v = np.array(v, copy=True)
        v.setflags(write=False)
        out[k] = v
    return out



class TestMemoryArmContract(ArmContract, OnlineArmContract):
    def make_arm(self):
        return make_arm(), ["running shoes", "hat", "red", "garden", "sink", "wiki page"]

    def make_observations(self, arm):
        return [("running shoes", 2, Context(timestamp=50 * DAY), 1.0), ("brand new", 3, Context(), 2.0),
                ("hat", 5, Context(timestamp=45 * DAY), 0.5), ("red", 7, Context(timestamp=60 * DAY), 1.0)]

# ---- exact decay ----------------------------------------------------------------------------


def test_decayed_count_equals_slow_twin_with_out_of_order_clicks():
    rng = np.random.default_rng(0)
    offline = [("q", int(rng.integers(3)), int(rng.integers(0, 100 * DAY)), float(rng.uniform(0.5, 2)))
               for _ in range(40)]
    online = [("q" if rng.random() < 0.7 else "p", int(rng.integers(3)), int(rng.integers(0, 120 * DAY)),
               float(rng.uniform(0.5, 2))) for _ in range(60)]  # times not sorted: out-of-order clicks
    q, i, t, w = zip(*offline)
    arm = build_memory_arm(q, i, t, ["a", "b", "c"], weights=w)
    for qq, ii, tt, ww in online:
        arm.observe(qq, ii, Context(timestamp=tt), weight=ww)
    for at in (0, 50 * DAY, 130 * DAY, 400 * DAY):
        for query in ("q", "p"):
            for item in range(3):
                want = slow_count(offline + online, query, item, at)
                got = arm.observed_count(query, item, at)
                assert got == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_build_equals_observing_every_click():
    q, i, t, w = zip(*CLICKS)
    # Observed side only: the replayed arm's predicted documents are not expanded.
    config = MemoryConfig(predicted_weight=0.0)
    built = make_arm(config)
    replayed = build_memory_arm([], [], [], TEXTS, config=config)
    for qq, ii, tt, ww in CLICKS:
        replayed.observe(qq, ii, Context(timestamp=tt), weight=ww)
    assert replayed.clock == built.clock == 40 * DAY
    for qq in set(q):
        a = built.retrieve(qq, Context(timestamp=50 * DAY), 10)
        b = replayed.retrieve(qq, Context(timestamp=50 * DAY), 10)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


def test_ranking_recency_weighted_and_clock_default():
    arm = make_arm(MemoryConfig(predicted_weight=0.0, max_df_fraction=1.0))
    ids, scores = arm.retrieve("running shoes", Context(), 10)
    # Item 1: clicks at day 2 and day 40; item 0: one click at day 1; clock = day 40.
    assert ids.tolist() == [1, 0]
    assert scores[0] == np.float32(1 + 0.5 ** (38 / 30))
    assert scores[1] == np.float32(0.5 ** (39 / 30))
    later = arm.retrieve("running shoes", Context(timestamp=70 * DAY), 10)
    assert later[0].tolist() == [1, 0]
    assert later[1][0] == pytest.approx(scores[0] * 0.5, rel=1e-6)


# ---- predicted side and override --------------------------------------------------------------


def test_unseen_query_backs_off_to_predicted_queries():
    arm = make_arm()
    # "garden" was never a training query; items 2 and 3 carry it in their text.
    ids, scores = arm.retrieve("garden", Context(), 10)
    assert set(ids.tolist()) == {2, 3}
    assert scores[0] == np.float32(arm.config.predicted_weight)
    # "wiki" reaches item 4 through its expanded document only (query "wiki" led to it) even for a
    # query that merely shares the word.
    ids, _ = arm.retrieve("wiki page", Context(), 10)
    assert ids.tolist() == [4]
    assert arm.retrieve("nothing matches", Context(), 10)[0].size == 0


def test_observed_clicks_override_predicted_score():
    arm = make_arm(MemoryConfig(predicted_weight=0.5, max_df_fraction=1.0))
    ctx = Context(timestamp=40 * DAY)
    ids, scores = arm.retrieve("red", ctx, 10)  # no clicks: all predicted, best worth 0.5
    pred = dict(zip(ids.tolist(), scores.tolist()))
    assert max(pred.values()) == pytest.approx(0.5)
    assert {0, 5} <= set(pred)
    # A tiny click on item 5 replaces its predicted score by its (smaller) observed count.
    arm.observe("red", 5, ctx, weight=0.01)
    ids2, scores2 = arm.retrieve("red", ctx, 10)
    got = dict(zip(ids2.tolist(), scores2.tolist()))
    assert got[5] == np.float32(0.01)
    for item, s in got.items():
        if item != 5:
            # The other items keep predicted scores in the same units (the max is over all items).
            assert s == pytest.approx(pred[item], rel=1e-6)
    assert ids2[-1] == 5
    # A strong click moves it to the top.
    arm.observe("red", 5, ctx, weight=3.0)
    ids3, scores3 = arm.retrieve("red", ctx, 10)
    assert ids3[0] == 5 and scores3[0] == pytest.approx(3.01)


def test_predicted_weight_zero_disables_predicted_side():
    arm = make_arm(MemoryConfig(predicted_weight=0.0, max_df_fraction=1.0))
    assert arm.retrieve("garden", Context(), 10)[0].size == 0
    assert arm.retrieve("hat", Context(), 10)[0].tolist() == [5, 2]


def test_max_df_fraction_drops_ubiquitous_terms():
    arm = build_memory_arm([], [], [], ["a com", "b com", "c com", "d org"], config=MemoryConfig(max_df_fraction=0.5))
    assert arm.retrieve("com", Context(), 10)[0].size == 0
    assert arm.retrieve("b com", Context(), 10)[0].tolist() == [1]


# ---- online state ---------------------------------------------------------------------------


EVENTS = [("running shoes", 0, 41 * DAY, 1.0), ("new query", 7, 42 * DAY, 1.0), ("hat", 2, 43 * DAY, 0.5),
          ("running shoes", 0, 10 * DAY, 2.0), ("sink faucet", 7, 44 * DAY, 1.0), ("new query", 6, 0, 1.0)]
QUERIES = ["running shoes", "new query", "hat", "sink", "sink faucet", "red", "garden hose", "query"]


def results(arm, t=0):
    return [arm.retrieve(q, Context(timestamp=t), 20) for q in QUERIES]


def assert_same_results(a, b):
    for (ia, sa), (ib, sb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(sa, sb)


def test_state_round_trip_reproduces_retrieve_exactly():
    arm = make_arm()
    for q, i, t, w in EVENTS:
        arm.observe(q, i, Context(timestamp=t), weight=w)
    params, arrays = arm.to_arrays()
    loaded = MemoryArm.from_arrays(params, readonly_copy(arrays))
    loaded.load_state(readonly_copy(arm.state_arrays()))
    assert loaded.clock == arm.clock
    for t in (0, 60 * DAY):
        assert_same_results(results(arm, t), results(loaded, t))


def test_replay_from_snapshot_reaches_identical_state():
    arm = make_arm()
    for q, i, t, w in EVENTS[:2]:
        arm.observe(q, i, Context(timestamp=t), weight=w)
    snapshot = {k: v.copy() for k, v in arm.state_arrays().items()}
    params, arrays = arm.to_arrays()
    for q, i, t, w in EVENTS[2:]:
        arm.observe(q, i, Context(timestamp=t), weight=w)
    restarted = MemoryArm.from_arrays(params, readonly_copy(arrays))
    restarted.load_state(snapshot)
    for q, i, t, w in EVENTS[2:]:
        restarted.observe(q, i, Context(timestamp=t), weight=w)
    a, b = arm.state_arrays(), restarted.state_arrays()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
    assert_same_results(results(arm), results(restarted))


def test_load_state_replaces_online_part():
    arm = make_arm()
    empty_state = arm.state_arrays()
    before = results(arm)
    arm.observe("brand new", 3, Context(timestamp=50 * DAY))
    assert arm.retrieve("brand new", Context(), 5)[0].tolist()[0] == 3
    arm.load_state(empty_state)
    assert_same_results(before, results(arm))


def test_from_arrays_does_not_write_into_arrays():
    params, arrays = make_arm().to_arrays()
    ro = readonly_copy(arrays)
    arm = MemoryArm.from_arrays(params, ro)
    arm.warmup()
    arm.observe("running shoes", 0, Context(timestamp=90 * DAY))  # online delta only
    assert arm.retrieve("running shoes", Context(), 5)[0][0] == 0


# ---- invalid input --------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("half_life_days", 0), ("half_life_days", float("nan")), ("predicted_weight", -1.0), ("k1", -0.1),
    ("b", 1.5), ("max_df_fraction", 0.0), ("expand_min_weight", -1), ("half_life_days", True),
])
def test_config_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        MemoryConfig(**{field: value})


@pytest.mark.parametrize("query, item, weight, match", [
    ("", 0, 1.0, "query"), ("...", 0, 1.0, "query"), (None, 0, 1.0, "query"), ("q", -1, 1.0, "item_id"),
    ("q", len(TEXTS), 1.0, "item_id"), ("q", 1.5, 1.0, "item_id"), ("q", True, 1.0, "item_id"),
    ("q", 0, -1.0, "weight"), ("q", 0, float("inf"), "weight"),
])
def test_observe_rejects(query, item, weight, match):
    arm = make_arm()
    with pytest.raises(ValueError, match=match):
        arm.observe(query, item, Context(), weight=weight)


@pytest.mark.parametrize("n", [-1, 1.5, True, "3"])
def test_retrieve_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n"):
        make_arm().retrieve("hat", Context(), n)


def test_build_rejects_bad_clicks():
    with pytest.raises(ValueError, match="same length"):
        build_memory_arm(["a"], [0, 1], [0], TEXTS)
    with pytest.raises(ValueError, match="item_ids"):
        build_memory_arm(["a"], [99], [0], TEXTS)
    with pytest.raises(ValueError, match="weights"):
        build_memory_arm(["a"], [0], [0], TEXTS, weights=[-1.0])


def test_from_arrays_rejects_bad_format_and_arrays():
    params, arrays = make_arm().to_arrays()
    with pytest.raises(ValueError, match="format"):
        MemoryArm.from_arrays({**params, "format": "x"}, arrays)
    bad = dict(arrays)
    bad["click_post_items"] = bad["click_post_items"] + 100
    with pytest.raises(ValueError, match="click_post_items"):
        MemoryArm.from_arrays(params, bad)
    with pytest.raises(ValueError, match="missing"):
        MemoryArm.from_arrays(params, {k: v for k, v in arrays.items() if k != "bm25_data"})


def test_load_state_rejects_bad_snapshot():
    arm = make_arm()
    state = arm.state_arrays()
    with pytest.raises(ValueError, match="clock"):
        arm.load_state({k: v for k, v in state.items() if k != "clock"})
    arm.observe("x", 1, Context(timestamp=1))
    state = arm.state_arrays()
    state["online_post_items"] = state["online_post_items"] + 100
    with pytest.raises(ValueError, match="online_post_items"):
        arm.load_state(state)


# ---- helpers --------------------------------------------------------------------------------


def test_top_n_equals_full_sort_with_ties():
    rng = np.random.default_rng(1)
    for m in (0, 1, 5, 50, 1000):
        ids = rng.permutation(5000)[:m].astype(np.int32)
        scores = rng.integers(0, 7, size=m).astype(np.float64)  # many ties
        for n in (0, 1, 3, 10, 2000):
            got = top_n(ids, scores, n)
            order = sorted(range(m), key=lambda j: (-np.float32(scores[j]), ids[j]))[:n]
            np.testing.assert_array_equal(got[0], ids[order])
            np.testing.assert_array_equal(got[1], scores[order].astype(np.float32))


def test_decayed_postings_build_groups_pairs():
    p = DecayedPostings.build(["b", "a", "b", "b"], [3, 1, 3, 0], [0, 0, 30 * DAY, 5], [1.0, 1.0, 1.0, 2.0],
                              30 * DAY)
    assert p.n_keys == 2
    ids, counts = p.counts("b", 30 * DAY)
    assert ids.tolist() == [0, 3]
    np.testing.assert_allclose(counts, [2.0 * 0.5 ** ((30 * DAY - 5) / (30 * DAY)), 1.5], rtol=1e-12)


def test_last_times_merge_offline_and_online_clicks():
    p = DecayedPostings.build(["b", "a", "b", "b"], [3, 1, 3, 0], [0, 0, 30 * DAY, 5], [1.0, 1.0, 1.0, 2.0],
                              30 * DAY)
    assert [x.tolist() for x in p.last_times("b")] == [[0, 3], [5, 30 * DAY]]
    p.add("b", 0, 1.0, 40 * DAY)   # later than the offline click: the latest moves
    p.add("b", 3, 1.0, 10 * DAY)   # out of order: the offline 30 days stays the latest
    p.add("b", 7, 1.0, 2 * DAY)    # online only
    p.add("c", 2, 1.0, 3 * DAY)    # key known online only
    ids, last = p.last_times("b")
    assert ids.dtype == np.int32 and last.dtype == np.int64
    assert ids.tolist() == [0, 3, 7] and last.tolist() == [40 * DAY, 30 * DAY, 2 * DAY]
    assert [x.tolist() for x in p.last_times("c")] == [[2], [3 * DAY]]
    assert [x.tolist() for x in p.last_times("zz")] == [[], []]


def test_counts_read_while_another_thread_adds_clicks_never_fails():
    """Search threads read the online clicks while a Feedback thread adds to the same key (threads
    mode). Iterating the live dict failed with "dictionary changed size during iteration"; so did a
    ``list(dict.items())`` snapshot, when a garbage collection inside it ran a Python finalizer and
    the interpreter switched threads there (the writer's cyclic garbage with ``__del__`` and a low
    collection threshold make that frequent: this test failed in 3 of 5 runs on that code)."""
    import gc
    import sys
    import threading

    from retrieval.arms.memory import DecayedPostings

    class Finalized:
        def __del__(self):
            sum(range(50))  # Python code inside a collection: a thread switch can happen here

    d = DecayedPostings.build(["k"], np.array([0]), np.array([0]), np.array([1.0]), 3600.0)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer():
        for i in range(1, 6001):
            d.add("k", i % 3000 + 1, 1.0, i)  # new items, then repeat clicks (entries replaced)
            if i % 7 == 0:
                garbage = Finalized()
                garbage.cycle = garbage
        done.set()

    def reader():
        try:
            while not done.is_set():
                ids, counts = d.counts("k", 10_000)
                assert ids.size == counts.size and np.all(counts > 0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    old, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    gc.set_threshold(50, 1, 1)
    try:
        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(old)
        gc.set_threshold(*thresholds)
    assert not errors, errors[0]
    ids, counts = d.counts("k", 6000)
    assert ids.size == 3001
