"""User-history arm: only the user's own items, exact recency-weighted scores, snapshots and replay."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.arms.base import Context
from retrieval.arms.history import HistoryConfig, UserHistoryArm, build_history_arm
from tests.retrieval.arm_contract import ArmContract, OnlineArmContract

DAY = 86400
N_ITEMS = 10
CLICKS = [  # (user, query, item, timestamp)
    ("u1", "running shoes", 0, 1 * DAY),
    ("u1", "running shoes", 0, 2 * DAY),
    ("u1", "weather", 3, 20 * DAY),
    ("u1", "blue shoes", 1, 30 * DAY),
    ("u2", "weather", 4, 5 * DAY),
    ("u2", "garden hose", 5, 6 * DAY),
    ("", "anonymous", 9, 7 * DAY),
]


def make_arm(config: HistoryConfig | None = None) -> UserHistoryArm:
    u, q, i, t = zip(*CLICKS)
    return build_history_arm(u, q, i, t, N_ITEMS, config=config)


def slow_score(clicks, user, query, item, t, half_life_days=30.0, word_boost=1.0):
    hl = half_life_days * DAY
    decayed = [(set(q.split()), 0.5 ** ((t - tc) / hl)) for u, q, i, tc in clicks if u == user and i == item]
    words = list(dict.fromkeys(query.split()))
    base = sum(d for _, d in decayed)
    if not words:
        return base
    per_word = [sum(d for ws, d in decayed if w in ws) for w in words]
    return base + word_boost * sum(per_word) / len(words)


def readonly_copy(arrays):
    out = {}
    for k, v in arrays.items():
        v = np.array(v, copy=True)
        v.setflags(write=False)
        out[k] = v
    return out



class TestHistoryArmContract(ArmContract, OnlineArmContract):
    # Any query returns the user's items; the word boost only reorders them, and an unknown query
    # (no shared word) gets the same list as one without shared words.
    query_independent = True

    def make_arm(self):
        return make_arm(), ["unrelated words", "running shoes", "weather", "shoes"]

    def make_observations(self, arm):
        return [("weather", 7, Context(user_id="u1", timestamp=40 * DAY), 1.0),
                ("new", 8, Context(user_id="u1"), 2.0),
                ("running", 0, Context(user_id="u2", timestamp=41 * DAY), 1.0),
                ("shoes", 1, Context(user_id="u1", timestamp=1_146_000_000), 0.5)]

def test_only_the_users_own_items():
    arm = make_arm()
    for user in ("u1", "u2"):
        own = {i for u, _, i, _ in CLICKS if u == user}
        for q in ("shoes", "weather", "zzz", ""):
            ids, _ = arm.retrieve(q, Context(user_id=user), 10)
            assert set(ids.tolist()) == own
    assert arm.retrieve("weather", Context(user_id="nobody"), 10)[0].size == 0
    assert arm.retrieve("anonymous", Context(), 10)[0].size == 0  # anonymous: no history


@pytest.mark.parametrize("query", ["shoes", "running shoes", "weather", "blue", "", "shoes shoes zzz"])
@pytest.mark.parametrize("t", [30 * DAY, 90 * DAY])
def test_scores_equal_slow_twin(query, t):
    arm = make_arm()
    ids, scores = arm.retrieve(query, Context(user_id="u1", timestamp=t), 10)
    want = {i: slow_score(CLICKS, "u1", query, i, t) for i in (0, 1, 3)}
    assert sorted(ids.tolist()) == [0, 1, 3]
    for i, s in zip(ids.tolist(), scores.tolist()):
        assert s == pytest.approx(want[i], rel=1e-6)
    expected_order = sorted(want, key=lambda i: (-np.float32(want[i]), i))
    assert ids.tolist() == expected_order


def test_word_boost_promotes_items_clicked_for_similar_queries():
    arm = make_arm()
    ctx = Context(user_id="u1", timestamp=30 * DAY)
    assert arm.retrieve("weather", ctx, 10)[0][0] == 3
    assert arm.retrieve("running", ctx, 10)[0][0] == 0
    plain = make_arm(HistoryConfig(word_boost=0.0))
    a, b = plain.retrieve("weather", ctx, 10), plain.retrieve("running", ctx, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_observe_new_user_and_anonymous_ignored():
    arm = make_arm()
    arm.observe("cats", 7, Context(user_id="u3", timestamp=40 * DAY))
    assert arm.retrieve("x", Context(user_id="u3"), 5)[0].tolist() == [7]
    before = arm.state_arrays()
    arm.observe("cats", 8, Context(timestamp=41 * DAY))
    after = arm.state_arrays()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


EVENTS = [("u1", "weather today", 3, 31 * DAY), ("u3", "cats", 7, 32 * DAY), ("u2", "garden", 5, 10 * DAY),
          ("u1", "running shoes", 2, 33 * DAY), ("u2", "weather", 4, 0)]
REQUESTS = [("weather", "u1"), ("shoes", "u1"), ("cats", "u3"), ("garden", "u2"), ("x", "u4")]


def results(arm):
    return [arm.retrieve(q, Context(user_id=u), 10) for q, u in REQUESTS]


def test_state_round_trip_and_replay():
    arm = make_arm()
    for u, q, i, t in EVENTS[:2]:
        arm.observe(q, i, Context(user_id=u, timestamp=t))
    snapshot = {k: v.copy() for k, v in arm.state_arrays().items()}
    params, arrays = arm.to_arrays()
    for u, q, i, t in EVENTS[2:]:
        arm.observe(q, i, Context(user_id=u, timestamp=t))
    loaded = UserHistoryArm.from_arrays(params, readonly_copy(arrays))
    loaded.load_state(readonly_copy(arm.state_arrays()))
    for a, b in zip(results(arm), results(loaded)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    replayed = UserHistoryArm.from_arrays(params, readonly_copy(arrays))
    replayed.load_state(snapshot)
    for u, q, i, t in EVENTS[2:]:
        replayed.observe(q, i, Context(user_id=u, timestamp=t))
    sa, sb = arm.state_arrays(), replayed.state_arrays()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


@pytest.mark.parametrize("field, value", [("half_life_days", 0.0), ("half_life_days", -1), ("word_boost", -0.5),
                                          ("word_boost", float("nan"))])
def test_config_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        HistoryConfig(**{field: value})


@pytest.mark.parametrize("query, item, weight, match", [
    (None, 0, 1.0, "query"), ("q", -1, 1.0, "item_id"), ("q", N_ITEMS, 1.0, "item_id"),
    ("q", 0, -2.0, "weight"), ("q", 0, float("nan"), "weight"),
])
def test_observe_rejects(query, item, weight, match):
    with pytest.raises(ValueError, match=match):
        make_arm().observe(query, item, Context(user_id="u1"), weight=weight)


def test_load_state_rejects_missing_arrays():
    arm = make_arm()
    state = arm.state_arrays()
    with pytest.raises(ValueError, match="word_"):
        arm.load_state({k: v for k, v in state.items() if not k.startswith("word_")})


def test_seconds_since_clicks_equal_slow_twin_and_follow_observe():
    arm = make_arm()

    def slow(user, t):
        last = {}
        for u, _, i, tc in CLICKS:
            if u == user:
                last[i] = max(last.get(i, tc), tc)
        return sorted(last), [max(t - last[i], 0) for i in sorted(last)]

    for user, t in (("u1", 31 * DAY), ("u1", 10 * DAY), ("u2", 40 * DAY), ("nobody", DAY)):
        ids, ago = arm.seconds_since_clicks(Context(user_id=user, timestamp=t))
        assert ids.dtype == np.int32 and ago.dtype == np.float64
        assert (ids.tolist(), ago.tolist()) == slow(user, t)
    assert arm.seconds_since_clicks(Context())[0].size == 0
    arm.observe("weather", 3, Context(user_id="u1", timestamp=35 * DAY))
    ids, ago = arm.seconds_since_clicks(Context(user_id="u1", timestamp=36 * DAY))
    assert dict(zip(ids.tolist(), ago.tolist()))[3] == DAY
    # timestamp 0: the arm's clock, the latest click observed (35 days)
    ids, ago = arm.seconds_since_clicks(Context(user_id="u1"))
    assert dict(zip(ids.tolist(), ago.tolist())) == {0: 33 * DAY, 1: 5 * DAY, 3: 0}
