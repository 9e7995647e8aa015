"""The ranked completion path on a slice of the real AOL log: arms + learned ranker, blocklist at
build and query time, highlight offsets, online learning and its snapshot, ``evaluate --online``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qac.blocklist import Blocklist
from qac.completer import Completer
from qac.config import BuildConfig
from qac.evaluate import evaluate_completion
from qac.ranking import ARM_NAMES, FEATURE_NAMES
from qac.text import normalize_prefix
from tests.conftest import completion_points

BUILD_SINCE, BUILD_UNTIL, ASK_UNTIL = "2006-03-01", "2006-03-09", "2006-03-10"
BLOCKED = ["myspace", "free porn"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, aol_log) -> Path:
    from qac.build import build_completion

    out = tmp_path_factory.mktemp("ranked") / "artifacts"
    report = build_completion(aol_log, out, BuildConfig(ranker_tail_days=3), since=BUILD_SINCE, until=BUILD_UNTIL, progress=False,
                              blocklist=Blocklist(BLOCKED))
    assert report.counts["n_blocked_events"] > 0  # the slice really has such queries
    assert report.counts["ranker_groups"] > 100
    return out


@pytest.fixture()
def comp(artifacts) -> Completer:
    c = Completer.load(artifacts)
    c.reset_online()
    return c


@pytest.fixture(scope="module")
def points(aol_log):
    return completion_points(aol_log, BUILD_UNTIL, ASK_UNTIL, 200)


def test_artifact_has_a_ranker_over_every_arm(comp):
    assert comp.pipeline is not None
    assert comp.pipeline.arm_names == list(ARM_NAMES)
    assert comp.ranker.n_features == len(FEATURE_NAMES)


def test_ranked_answers_are_distinct_unblocked_and_highlighted(comp, points):
    sources = set()
    for p in points:
        out = comp.complete([p.prev_query], p.prefix, 10, user_id=p.user_id, timestamp=p.timestamp)
        texts = [c.text for c in out]
        assert 1 <= len(out) <= 10 and len(set(texts)) == len(texts)
        assert all(a.score >= b.score for a, b in zip(out, out[1:]))  # scores follow the ranking
        assert not any(Blocklist(BLOCKED).blocks(t) for t in texts)
        norm = normalize_prefix(p.prefix)
        for c in out:
            start, end = c.highlight
            assert start == 0 and c.text[:end] == norm[:end]
            assert (end == len(norm)) == c.text.startswith(norm)
        sources.update(c.source for c in out)
    assert {"xr_linear", "mpc", "user_history"} <= sources


def test_build_time_blocklist_removed_the_queries_and_query_time_terms_add_more(artifacts, comp):
    assert comp.blocklist.terms == sorted(BLOCKED)
    assert "myspace" not in comp.mpc and comp.mpc.top_k("myspace", 5) == []
    first = comp.complete([], "ya", 10)[0].text
    extra = Completer.load(artifacts, blocklist=Blocklist([first]))
    assert first not in [c.text for c in extra.complete([], "ya", 10)]


def test_feedback_is_visible_on_the_next_call_and_survives_a_snapshot(artifacts, comp):
    user, new_query = "4242", "zqx unheard of query"
    before = comp.complete(["weather"], "zqx u", 10, user_id=user, timestamp=1_142_000_000)
    assert new_query not in [c.text for c in before]
    comp.observe(user, "weather", new_query, 1_142_000_000)
    after = comp.complete(["weather"], "zqx u", 10, user_id=user, timestamp=1_142_000_100)
    assert after[0].text == new_query and after[0].highlight == (0, 5)
    assert comp.user_history.count(user, new_query)[0] == 1
    assert comp.follow_up.count("weather", new_query)[0] == 1
    fresh = Completer.load(artifacts)
    fresh.load_online_state(comp.online_state_arrays())
    assert [c.text for c in fresh.complete(["weather"], "zqx u", 10, user_id=user, timestamp=1_142_000_100)] == \
        [c.text for c in after]


def test_serving_features_are_the_training_rows(comp, points):
    """One code path: the rows ``ranker_training_rows`` builds for a point equal the rows the ranked
    path scores for the same request, and ``rank`` orders the union by the ranker's score of them."""
    from qac.ranking import ranker_training_rows

    p = next(q for q in points if q.prev_query)
    observed = []
    X_train, y, gp, stats = ranker_training_rows(comp.pipeline, [p], lambda *a: observed.append(a))
    assert observed == [(p.user_id, p.prev_query, p.next_query, p.timestamp)]
    ctx = comp.context([p.prev_query], p.user_id, p.timestamp)
    r = comp.pipeline.retrieve(normalize_prefix(p.prefix), ctx, comp.pipeline.budget, np.random.default_rng(0))
    X = comp.pipeline.features(r, r.union_ids)
    assert X.shape == (len(r.union_ids), len(FEATURE_NAMES)) and X.dtype == np.float32
    if stats["n_groups"]:  # the issued query was in the union: the training group is this request's rows
        assert np.array_equal(X_train, X) and y.sum() == 1.0 and gp.tolist() == [0, len(X)]
    else:
        assert X_train.shape == (0, len(FEATURE_NAMES)) and p.next_query not in r.union_ids
    ids, scores, _ = comp.pipeline.rank(r, len(r.union_ids))
    want = comp.ranker.score(X)
    assert scores.tolist() == sorted(want.tolist(), reverse=True)
    assert ids == [r.union_ids[i] for i in sorted(range(len(want)), key=lambda i: (-want[i], r.union_ids[i]))]


def test_evaluate_online_replays_in_time_order_and_reports_every_arm(artifacts, aol_log, comp):
    kw = dict(since=BUILD_UNTIL, until=ASK_UNTIL, max_points=150, completer=comp)
    static = evaluate_completion(artifacts, aol_log, **kw)
    online = evaluate_completion(artifacts, aol_log, online=True, **kw)
    for rep in (static, online):
        assert rep["n_points"] == 150
        assert {f"arms.{a}.mrr@10" for a in ARM_NAMES} <= set(rep)
        assert rep["mrr@10"] > rep["baselines"]["mpc"]["mrr@10"]
    assert online["config"]["online"] and not static["config"]["online"]
    # the replay fed back the issued queries, then forgot them again
    assert comp.online.lookup("", "") == {}
    assert online["arms"]["user_history"]["success@10"] >= static["arms"]["user_history"]["success@10"]
