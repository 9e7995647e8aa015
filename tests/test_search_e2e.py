"""Search end to end on a slice of the real AOL log: build, in-process service, real server, kill -9.

The index is built from one week of the shared log (items = sites clicked that week); requests are
real query events of the following days.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from qac.logs import read_aol_log
from retrieval.arms.base import Context
from retrieval.catalog import normalize_url
from retrieval.growth import AOL_GROWTH, CLOSED, CatalogGrowth
from serving import client
from serving import state as st
from serving.search_service import SEARCH_DIR, SearchService, load_engine
from serving.search_types import SearchContext, UnknownDecision, UnknownItem
from serving.validation import InvalidArgument

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SINCE, BUILD_UNTIL, ASK_UNTIL = "2006-03-01", "2006-03-08", "2006-03-10"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, aol_log) -> Path:
    from retrieval.build import build_all

    out = tmp_path_factory.mktemp("search-e2e") / "artifacts"
    build_all(aol_log, out, since=BUILD_SINCE, until=BUILD_UNTIL, progress=False)
    return out


@pytest.fixture(scope="module")
def asks(aol_log):
    """Real (user, query, time, clicked site keys) events after the build week."""
    log = read_aol_log(aol_log, since=BUILD_UNTIL, until=ASK_UNTIL)
    out = [(e.user_id, e.query, e.timestamp, [normalize_url(u) for u in e.click_urls])
           for e in log.events if e.click_urls]
    assert len(out) > 300
    return out[:300]


def _service(artifacts: Path, state_dir: Path) -> SearchService:
    ce = load_engine(artifacts / SEARCH_DIR / "aol")
    return SearchService({ce.name: ce}, st.StateStore(state_dir), seed=0)


def _ctx(user, ts):
    return SearchContext(session_id="", user_id=user, previous_queries=(), timestamp=ts)


def test_search_returns_ranked_catalogue_items_with_arms(artifacts, asks, tmp_path):
    svc = _service(artifacts, tmp_path / "state")
    try:
        ce = svc.engines["aol"]
        n_hit = 0
        for user, query, ts, clicked in asks[:100]:
            res, r = svc.search_with_retrieval(query, _ctx(user, ts), 10, "aol", 20)
            assert res.decision_id and len(res.hits) <= 10
            assert len({h.item_id for h in res.hits}) == len(res.hits)
            assert all(ce.catalog.id_of(h.item_id) is not None for h in res.hits)
            assert all(h.arms and set(h.arms) <= set(ce.engine.arm_names) for h in res.hits)
            assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
            assert int(r.decision.allocation.sum()) <= 20 and len(r.union_ids) <= 20
            assert 0 < r.decision.propensity <= 1
            n_hit += any(ce.catalog.id_of(k) in set(r.union_ids.tolist()) for k in clicked)
        assert n_hit > 20  # the union finds real clicked sites for real queries
    finally:
        svc.close()


def test_feedback_errors_and_duplicates(artifacts, asks, tmp_path):
    svc = _service(artifacts, tmp_path / "state")
    try:
        user, query, ts, _ = asks[0]
        res = svc.search(query, _ctx(user, ts), 10, "aol")
        item = res.hits[0].item_id
        first = svc.feedback(res.decision_id, item, None, 0, ts)
        again = svc.feedback(res.decision_id, item, None, 0, ts)
        assert not first.duplicate and first.reward == 1.0
        assert again.duplicate and again.reward == 0.0
        assert svc.store.counts()["n_feedback"] == 1
        with pytest.raises(UnknownDecision):
            svc.feedback("no-such-decision", item, None, 0, ts)
        # AOL sites are an open catalogue: a malformed key is refused naming the field, nothing committed
        for bad, why in (("Not-A-Site.example", "expected 'not-a-site.example'"), ("http://x.org", "expected 'x.org'"),
                         ("a b.com", "whitespace"), ("x" * 300 + ".com", "longer than 256"), ("-/-", "no letter")):
            with pytest.raises(InvalidArgument, match=f"clicked_item_id: .*{why}"):
                svc.feedback(res.decision_id, bad, None, 0, ts)
        assert svc.store.counts()["n_feedback"] == 1 and svc.engines["aol"].n_grown == 0
        completion = svc.record_completion(_ctx(user, ts), "wea", ["weather", "weather com"])
        assert not svc.feedback(completion, None, "weather", 0, ts).duplicate
        with pytest.raises(UnknownItem):
            svc.feedback(completion, None, "not offered", 1, ts)
    finally:
        svc.close()


def _feedback_stream(svc, asks):
    """Search then click every logged site (a site outside the catalogue grows it); returns the
    acknowledged events."""
    acked = []
    for user, query, ts, clicked in asks:
        res = svc.search(query, _ctx(user, ts), 10, "aol")
        for key in clicked:
            svc.feedback(res.decision_id, key, None, 0, ts)
            acked.append((res.decision_id, key))
    return acked


def _assert_same_state(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _stack_only(ce, budget):
    """A policy that gives the whole budget to the stacked fusion arm (an untrained bandit's choice
    is arbitrary; this makes the union the stack's top ``budget``)."""
    from retrieval.pipeline import ARM_FEATURES, CONTEXT_FEATURES
    from retrieval.policy import FixedPolicy, allocation_menu

    names = ce.engine.arm_names
    action = int(np.flatnonzero(allocation_menu(len(names), budget)[:, names.index("stack")] == budget)[0])
    return FixedPolicy(len(names), len(CONTEXT_FEATURES), len(ARM_FEATURES), action=action)


def test_a_click_on_a_new_site_grows_the_open_catalogue_and_search_returns_it(artifacts, asks, tmp_path):
    """Through a real gRPC server (in process, port 0) over the real search service: Feedback on a new
    site adds it, and later Search answers list it with its key and text."""
    from qac.completer import Completer
    from serving.server import ServerConfig, create_server

    ce = load_engine(artifacts / SEARCH_DIR / "aol")
    ce.engine.policy = _stack_only(ce, 20)
    svc = SearchService({ce.name: ce}, st.StateStore(tmp_path / "state"), seed=0)
    server, port = create_server(ServerConfig(host="127.0.0.1", port=0), Completer.load(artifacts), svc)
    server.start()
    target = f"127.0.0.1:{port}"
    try:
        n_built, user = ce.catalog.n_items, asks[0][0]
        key, query = "zqxnewsite.example/shop", "zqx new site"
        assert ce.catalog.id_of(key) is None
        decision_id, items = client.search(target, query, k=20, catalog="aol", user_id=user)
        assert key not in [i[0] for i in items]
        assert client.feedback(target, decision_id, clicked_item_id=key) == (False, 0.0)  # a miss for this query
        assert ce.catalog.id_of(key) == n_built and ce.grown_keys() == [key]
        assert ce.catalog.text(n_built) == "zqxnewsite example shop"
        assert client.feedback(target, decision_id, clicked_item_id=key)[0] and ce.n_grown == 1  # duplicate
        # the policy learns nothing from a site no allocation could have held; the online arms do
        assert ce.engine.n_feedback == 0
        decision_id, items = client.search(target, query, k=20, catalog="aol", user_id=user)
        hit = [(text, arms) for item_id, text, _, arms in items if item_id == key]
        assert hit == [("zqxnewsite example shop", ("stack",))]
        ctx = Context(user_id=user, timestamp=int(time.time()))
        listed = {a.name for a in ce.engine.arms if n_built in a.retrieve(query, ctx, 20)[0].tolist()}
        assert {"memory", "history", "stack"} <= listed and not listed & {"bm25", "semantic", "chargram"}
        # known when this decision was made: the click rewards the policy
        assert client.feedback(target, decision_id, clicked_item_id=key) == (False, 1.0)
        assert ce.engine.n_feedback == 1
    finally:
        server.stop(None).wait()
        svc.close()


def test_closed_catalogue_and_growth_cap(artifacts, asks, tmp_path):
    """Home Depot-style closed catalogue: an unknown item is an error. At the cap, a click on a new
    site is committed (the next build reads it) but grows nothing; a restart reproduces that."""
    from serving.search_service import catalog_growth

    # the build records the catalogue's rule; artifacts from before it get the catalogue's default
    assert load_engine(artifacts / SEARCH_DIR / "aol").growth == AOL_GROWTH
    assert catalog_growth("homedepot", None) == CLOSED and catalog_growth("aol", None) == AOL_GROWTH
    assert catalog_growth("aol", {"max_grown_items": 0, "max_key_chars": 256}) == CLOSED
    user, query, ts, _ = asks[0]
    ce = load_engine(artifacts / SEARCH_DIR / "aol")
    ce.growth = CLOSED
    svc = SearchService({ce.name: ce}, st.StateStore(tmp_path / "closed"), seed=0)
    try:
        res = svc.search(query, _ctx(user, ts), 10, "aol")
        with pytest.raises(UnknownItem, match="not-a-site.example"):
            svc.feedback(res.decision_id, "not-a-site.example", None, 0, ts)
        assert svc.store.counts()["n_feedback"] == 0 and ce.n_grown == 0
    finally:
        svc.close()

    cap = CatalogGrowth(max_grown_items=2)
    state_dir = tmp_path / "capped"
    ce = load_engine(artifacts / SEARCH_DIR / "aol")
    ce.growth = cap
    svc = SearchService({ce.name: ce}, st.StateStore(state_dir), seed=0)
    res = svc.search(query, _ctx(user, ts), 10, "aol")
    for i in range(4):
        assert not svc.feedback(res.decision_id, f"new{i}.example", None, 0, ts).duplicate
    assert ce.grown_keys() == ["new0.example", "new1.example"] and ce.catalog.id_of("new3.example") is None
    assert svc.store.counts()["n_feedback"] == 4  # every click committed
    want = svc.state._arrays()
    svc.store.close()  # crash-like: no final snapshot, the restart replays all four events
    ce2 = load_engine(artifacts / SEARCH_DIR / "aol")
    ce2.growth = cap
    again = SearchService({ce2.name: ce2}, st.StateStore(state_dir), seed=0)
    try:
        assert again.recovery.n_replayed == 4 and ce2.grown_keys() == ["new0.example", "new1.example"]
        _assert_same_state(again.state._arrays(), want)
    finally:
        again.close()


def test_recovery_from_snapshot_equals_full_replay(artifacts, asks, tmp_path):
    state_dir = tmp_path / "state"
    svc = _service(artifacts, state_dir)
    acked = _feedback_stream(svc, asks[:150])
    live = svc.state._arrays()
    svc.store.snapshot(svc.state, force=True)
    _feedback_stream(svc, asks[150:200])
    live_after = svc.state._arrays()
    grown_live, grown_after = len(live["aol/grown_keys_ptr"]) - 1, svc.engines["aol"].n_grown
    svc.store.close()  # no final snapshot: the next start must replay the tail after the snapshot
    assert acked
    # clicks on sites outside the build's catalogue grew it, before the snapshot and after it
    assert 0 < grown_live < grown_after

    again = _service(artifacts, state_dir)
    try:
        assert again.recovery.snapshot_seq > 0 and again.recovery.n_replayed > 0
        _assert_same_state(again.state._arrays(), live_after)
        assert again.engines["aol"].grown_keys() == svc.engines["aol"].grown_keys()
        assert any(not np.array_equal(live[k], live_after[k]) for k in live)  # the tail changed the state
    finally:
        again.close()


class _Server:
    def __init__(self, artifacts: Path, state: Path, log: Path, *extra: str):
        self._log = open(log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", "--artifacts", str(artifacts), "--state", str(state),
             "--port", "0", *extra], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True)
        deadline = time.monotonic() + 180
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("serving on ") or not line:
                break
        if not line.startswith("serving on "):
            self.proc.kill()
            raise AssertionError(f"server did not start: {line!r}\n{log.read_text()}")
        self.target = line.split("serving on ", 1)[1].strip()

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()


def test_kill_9_during_a_feedback_stream_loses_nothing_acknowledged(artifacts, asks, tmp_path):
    state_dir = tmp_path / "state"
    server = _Server(artifacts, state_dir, tmp_path / "serve1.log")
    decisions = []
    for n, (user, query, ts, clicked) in enumerate(asks):
        decision_id, items = client.search(server.target, query, k=10, catalog="aol", user_id=user)
        for item_id, *_ in items[:3]:
            decisions.append((decision_id, item_id))
        if n % 3 == 0:  # and a click on a site outside the catalogue: the open catalogue grows
            decisions.append((decision_id, f"site{n}.new.example"))
    acked: list[tuple[str, str]] = []
    errors: list[Exception] = []

    def stream():
        for decision_id, item_id in decisions:
            try:
                client.feedback(server.target, decision_id, clicked_item_id=item_id)
            except grpc.RpcError as exc:  # the server died under us: the rest is unacknowledged
                errors.append(exc)
                return
            acked.append((decision_id, item_id))

    t = threading.Thread(target=stream)
    t.start()
    while len(acked) < len(decisions) // 2 and t.is_alive():
        time.sleep(0.002)
    server.kill9()
    t.join(30)
    assert len(acked) >= len(decisions) // 2 and errors, "the kill must land in the middle of the stream"

    # Every acknowledged event is in the durable log, exactly once.
    store = st.StateStore(state_dir)
    try:
        events = list(store.events_after(0))
    finally:
        store.close()
    committed = {(e.decision_id, e.item) for e in events}
    assert set(acked) <= committed
    assert len(committed) - len(acked) <= 1  # at most the one in flight when the process died

    grown_acked = [key for _, key in acked if key.endswith(".new.example")]
    assert grown_acked

    # The restarted server recovers that state and serves again.
    server2 = _Server(artifacts, state_dir, tmp_path / "serve2.log")
    try:
        decision_id, items = client.search(server2.target, asks[0][1], k=5, catalog="aol")
        assert decision_id and items
        dup, _ = client.feedback(server2.target, *acked[0])
        assert dup  # already applied before the crash: counted once
        # A new site clicked after the restart grows the recovered catalogue; a malformed key is refused.
        decision_id, _ = client.search(server2.target, "zqx grown site", k=10, catalog="aol", user_id="u-grow")
        assert client.feedback(server2.target, decision_id, clicked_item_id="zqxgrown.example") == (False, 0.0)
        with pytest.raises(grpc.RpcError) as err:
            client.feedback(server2.target, decision_id, clicked_item_id="HTTP://Bad.Example/")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "clicked_item_id" in err.value.details() and "bad.example" in err.value.details()
        # Complete attaches to its top completions the first results of searching them (same path).
        completions = client.complete(server2.target, "weather", [], k=5, preview_k=2, preview_completions=2,
                                      catalog="aol")
        assert len(completions) == 5
        for text, _, _, preview_id, items in completions[:2]:
            assert preview_id and 1 <= len(items) <= 2
            assert all(item_id and arms for item_id, _, _, arms in items)
            # the preview's decision is a real logged search decision: feedback on it is accepted
            assert client.feedback(server2.target, preview_id, clicked_item_id=items[0][0]) == (False, 1.0)
        assert all(not preview_id for *_, preview_id, _ in completions[2:])
    finally:
        assert server2.stop() == 0

    # The recovered in-memory state equals a from-scratch replay of the whole committed log.
    recovered = _service(artifacts, state_dir)
    try:
        rec = recovered.state._arrays()
        all_events = list(recovered.store.events_after(0))
        assert recovered.recovery.last_seq == all_events[-1].seq
        assert all_events[:len(events)] == events  # the log before the crash is untouched
        grown = recovered.engines["aol"].grown_keys()
        assert set(grown_acked) <= set(grown) and "zqxgrown.example" in grown  # every acknowledged new site
    finally:
        recovered.store.close()
    fresh = _service(artifacts, tmp_path / "fresh")
    try:
        for e in all_events:
            fresh.state.apply(e)
        replayed = fresh.state._arrays()
    finally:
        fresh.store.close()
    for k in rec:
        np.testing.assert_array_equal(rec[k], replayed[k], err_msg=k)


def test_completion_feedback_is_learned_online_and_recovered_from_the_state(artifacts, asks, tmp_path):
    """Accepted suggestions and issued queries reach the completer before Feedback returns, are
    counted once, and a restarted service (snapshot + replay) has them again."""
    from qac.completer import Completer
    from serving.validation import InvalidArgument

    state = tmp_path / "state"
    comp = Completer.load(artifacts)
    ce = load_engine(artifacts / SEARCH_DIR / "aol")
    svc = SearchService({ce.name: ce}, st.StateStore(state), seed=0, completer=comp)
    user, ts, issued = "777", asks[0][2], "zqx brand new query"
    ctx = SearchContext(session_id="s", user_id=user, previous_queries=("weather",), timestamp=ts)
    shown = [c.text for c in comp.complete(["weather"], "zqx", 5, user_id=user, timestamp=ts)]
    assert issued not in shown
    decision = svc.record_completion(ctx, "zqx", shown)
    first = svc.feedback(decision, None, None, 0, ts + 5, issued_query=issued)
    assert not first.duplicate and first.reward == 0.0
    assert svc.feedback(decision, None, None, 0, ts + 5, issued_query=issued).duplicate
    assert comp.user_history.count(user, issued)[0] == 1 and comp.follow_up.count("weather", issued)[0] == 1
    assert comp.arm_complete("user_history", ["weather"], "zqx", 5, user_id=user, timestamp=ts) == [issued]
    if shown:
        assert svc.feedback(decision, None, shown[0], 0, ts + 6).reward == 1.0
    searched = svc.search(asks[1][1], ctx, 5)
    with pytest.raises(InvalidArgument, match="issued_query needs a Complete decision"):
        svc.feedback(searched.decision_id, None, None, 0, ts, issued_query=issued)
    want = comp.online_state_arrays()
    svc.close()

    again = Completer.load(artifacts)
    ce2 = load_engine(artifacts / SEARCH_DIR / "aol")
    svc2 = SearchService({ce2.name: ce2}, st.StateStore(state), seed=0, completer=again)
    try:
        got = again.online_state_arrays()
        assert sorted(got) == sorted(want)
        for key in want:
            assert np.array_equal(got[key], want[key]), key
        assert again.user_history.count(user, issued)[0] == 1
    finally:
        svc2.close()


# ------------------------------------------------------------------ several processes, one state
def _shared_service(artifacts: Path, state_dir: Path, completer=None) -> SearchService:
    ce = load_engine(artifacts / SEARCH_DIR / "aol")
    return SearchService({ce.name: ce}, st.StateStore(state_dir, shared=True), seed=0, completer=completer)


def _assert_same_arrays(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_services_sharing_a_state_directory_learn_from_each_others_feedback(artifacts, asks, tmp_path):
    """Two services on one shared state directory (as two server processes would be): decisions
    logged by one take feedback through the other, and each applies the other's events (search
    and completion feedback) before it answers, reaching the state of one process replaying the log."""
    from qac.completer import Completer

    state_dir = tmp_path / "state"
    svcs = [_shared_service(artifacts, state_dir, Completer.load(artifacts)) for _ in range(2)]
    try:
        n = 0
        for i, (user, query, ts, clicked) in enumerate(asks[:120]):
            a, b = svcs[i % 2], svcs[1 - i % 2]
            res = a.search(query, _ctx(user, ts), 10, "aol")
            for key in clicked:  # sites outside the catalogue too: both grow it, in seq order
                assert not b.feedback(res.decision_id, key, None, 0, ts).duplicate  # logged by the other
                assert a.feedback(res.decision_id, key, None, 0, ts).duplicate  # counted once
                n += 1
        completion = svcs[0].record_completion(_ctx("777", asks[0][2]), "wea", ["weather", "weather com"])
        assert svcs[1].feedback(completion, None, "weather", 0, asks[0][2]).reward == 1.0
        assert n > 20
        before = svcs[0].state._arrays()
        last = svcs[1].store.applied_seq
        assert svcs[0].store.applied_seq < last  # svcs[0] has not seen the last events yet
        svcs[0].search(asks[0][1], _ctx(asks[0][0], asks[0][2]), 5)  # a Search catches up first
        assert svcs[0].store.applied_seq == last
        after = [s.state._arrays() for s in svcs]
        assert any(not np.array_equal(before[k], after[0][k]) for k in before)
        _assert_same_arrays(after[0], after[1])
        grown = [s.engines["aol"].grown_keys() for s in svcs]
        assert grown[0] and grown[0] == grown[1]  # the same new sites under the same ids
        assert svcs[0].state.completer.user_history.count("777", "weather")[0] == 1  # completion feedback too
        events = list(svcs[0].store.events_after(0))
    finally:
        for s in svcs:
            s.close()
    fresh = SearchService({"aol": load_engine(artifacts / SEARCH_DIR / "aol")}, st.StateStore(tmp_path / "fresh"),
                          seed=0, completer=Completer.load(artifacts))
    try:
        for e in events:
            fresh.state.apply(e)
        _assert_same_arrays(fresh.state._arrays(), after[0])
    finally:
        fresh.close()


def test_two_server_processes_on_one_state_survive_kill_9_of_one(artifacts, asks, tmp_path):
    """Two real ``qac serve --shared-state`` processes on one state directory: Search on one,
    Feedback on the other, one killed with SIGKILL mid-stream; every acknowledged event is in the log
    once, the survivor's final snapshot covers the whole log, and recovery equals a full replay."""
    state_dir = tmp_path / "state"
    servers = [_Server(artifacts, state_dir, tmp_path / f"serve{i}.log", "--shared-state") for i in range(2)]
    decisions = []
    for i, (user, query, ts, clicked) in enumerate(asks[:120]):
        decision_id, items = client.search(servers[i % 2].target, query, k=10, catalog="aol", user_id=user)
        decisions += [(i, decision_id, item_id) for item_id, *_ in items[:2]]
    acked: list[tuple[str, str]] = []
    errors: list[Exception] = []

    def stream():
        for i, decision_id, item_id in decisions:
            target = servers[1 - i % 2].target  # feedback to the process that did not log the decision
            try:
                dup, reward = client.feedback(target, decision_id, clicked_item_id=item_id)
            except grpc.RpcError as exc:  # servers[0] died under us: that event is unacknowledged
                errors.append(exc)
                continue
            assert not dup and reward == 1.0
            acked.append((decision_id, item_id))

    t = threading.Thread(target=stream)
    t.start()
    while len(acked) < len(decisions) // 3 and t.is_alive():
        time.sleep(0.002)
    servers[0].kill9()
    t.join(60)
    assert errors and len(acked) >= len(decisions) // 2, "the kill must land mid-stream; the survivor goes on"
    # The survivor answers with the state that includes the dead process's acknowledged feedback.
    assert client.feedback(servers[1].target, *acked[0])[0]  # duplicate, whichever process took it
    assert servers[1].stop() == 0

    store = st.StateStore(state_dir)
    try:
        events = list(store.events_after(0))
        snapshot_seq = store.snapshot_seqs()[-1]
    finally:
        store.close()
    committed = [(e.decision_id, e.item) for e in events]
    assert len(set(committed)) == len(committed) and set(acked) <= set(committed)
    assert len(committed) - len(acked) <= 1  # at most the one in flight on the killed process
    assert snapshot_seq == events[-1].seq  # the survivor caught up before its final snapshot

    recovered = _service(artifacts, state_dir)
    fresh = _service(artifacts, tmp_path / "fresh")
    try:
        for e in events:
            fresh.state.apply(e)
        _assert_same_arrays(recovered.state._arrays(), fresh.state._arrays())
    finally:
        recovered.close()
        fresh.close()


def test_processes_share_the_port_and_the_search_state(artifacts, asks, tmp_path):
    """``qac serve --processes 2``: Search, Feedback and previews on one port, over several
    connections (the kernel spreads them over the processes), all on one state directory."""
    server = _Server(artifacts, tmp_path / "state", tmp_path / "serve.log", "--processes", "2")
    try:
        n_feedback = 0
        for user, query, ts, _ in asks[:16]:
            # client.search and client.feedback open a new connection (channel) per call
            decision_id, items = client.search(server.target, query, k=5, catalog="aol", user_id=user)
            assert decision_id
            if items:  # a real query may retrieve nothing from the one-week catalogue
                dup, reward = client.feedback(server.target, decision_id, clicked_item_id=items[0][0])
                assert not dup and reward == 1.0
                n_feedback += 1
        assert n_feedback >= 8
        completions = client.complete(server.target, "weather", [], k=3, preview_k=2, preview_completions=1,
                                      catalog="aol")
        assert completions and completions[0][3]
    finally:
        assert server.stop() == 0
    store = st.StateStore(tmp_path / "state")
    try:
        assert store.counts()["n_feedback"] == n_feedback
    finally:
        store.close()
