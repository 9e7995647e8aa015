"""``qac evaluate search``: replay a click log through Search + Feedback, or score graded judgments.

AOL replay (``--log``): the test log's query events are replayed in time order (all users merged)
through :class:`serving.search_service.SearchService` with a fresh state directory, so the bandit and
the online arms learn during the replay exactly as in serving (every decision and feedback event is
committed). For each query event with clicks, one Search at total candidate budget B, then one
Feedback per clicked site. Every clicked site is fed back, also one outside the catalogue: the AOL
catalogue is open (:mod:`retrieval.growth`), so the site becomes an item the online arms can return
to later queries; for the query that clicked it first it is a miss. ``n_grown_items``: sites added
during the budget-20 replay; ``n_feedback_rejected``: clicks the service refused (a key it cannot
add, e.g. no letter or digit in it). Metrics are over click events (query event x clicked site):

- ``recall@B``: the clicked site is in the candidate union (B = 20 and 100, one replay each);
- ``mrr@10``: reciprocal rank of the clicked site in the ranked top 10 (budget-100 replay);
- ``arms.NAME.recall@B``: the site is in that arm's top B (each arm alone, no bandit);
- ``best_fixed_arm``: the single arm with the highest recall@20; ``oracle_single_arm``: recall@20 of
  choosing, per query, the best single arm (the site is in some arm's top 20);
- ``reward_by_day``: mean reward (clicked site in the union) per day of the budget-20 replay;
- ``latency_ms``: in-process Search (retrieval, policy, ranking; decision commit included).

Judgments (``--judgments``): every test search term is searched once at budget 100; relevant =
grade >= 2.5; ``recall@100`` is the per-query mean over terms with a relevant product;
``ndcg@10`` ranks each term's judged products by the ranker (gain = grade - 1, log2 discount);
the relevant products are then sent as Feedback so the bandit learns from the judgments in turn.
"""
from __future__ import annotations

import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from qac.logs import read_aol_log
from qac.metrics import latency_ms
from retrieval.catalog import load_judgments, normalize_url
from serving import state as st
from serving.search_service import SEARCH_DIR, SearchService, load_engine
from serving.search_types import SearchContext, UnknownItem
from serving.validation import InvalidArgument


def _service(artifacts: Path, catalog: str, state_dir: Path, seed: int) -> SearchService:
    ce = load_engine(Path(artifacts) / SEARCH_DIR / catalog)
    return SearchService({ce.name: ce}, st.StateStore(state_dir), seed=seed)


def replay_log(artifacts, test_log, budget: int, *, seed: int = 0, max_events: int | None = None,
               progress=None) -> dict:
    """One replay of an AOL-format test log at total candidate budget ``budget`` (see module doc)."""
    say = progress or (lambda s: None)
    log = read_aol_log(test_log)
    events = sorted((e for e in log.events if e.click_urls and e.query), key=lambda e: (e.timestamp, e.user_id))
    if max_events is not None:
        events = events[:max_events]
    last_query: dict[str, tuple[int, list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="qac-replay-") as tmp:
        svc = _service(artifacts, "aol", Path(tmp), seed)
        try:
            ce = svc.engines["aol"]
            names = ce.engine.arm_names
            n_clicks = hits = n_rejected = 0
            rr_sum = 0.0
            arm_hits = np.zeros(len(names), dtype=np.int64)
            oracle = 0
            by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            lat = []
            for i, e in enumerate(events):
                prev_t, prev_q = last_query.get(e.user_id, (0, []))
                session = prev_q if e.timestamp - prev_t <= 1800 else []
                ctx = SearchContext(session_id="", user_id=e.user_id, previous_queries=tuple(session[-8:]),
                                    timestamp=e.timestamp)
                t0 = time.perf_counter_ns()
                res, r = svc.search_with_retrieval(e.query, ctx, 10, "aol", budget)
                lat.append(time.perf_counter_ns() - t0)
                union = set(r.union_ids.tolist())
                ranked = [h.item_id for h in res.hits]
                day = time.strftime("%Y-%m-%d", time.gmtime(e.timestamp))
                for url in e.click_urls:
                    key = normalize_url(url)
                    item = ce.catalog.id_of(key)
                    n_clicks += 1
                    hit = item is not None and item in union
                    hits += hit
                    by_day[day][0] += hit
                    by_day[day][1] += 1
                    if key in ranked:
                        rr_sum += 1.0 / (ranked.index(key) + 1)
                    if item is not None:
                        in_arm = np.array([item in set(ids[:budget].tolist()) for ids in r.arm_ids])
                        arm_hits += in_arm
                        oracle += bool(in_arm.any())
                    try:
                        # A site outside the catalogue is a miss here; an open catalogue adds it.
                        svc.feedback(res.decision_id, key, None, ranked.index(key) if key in ranked else 0,
                                     e.timestamp)
                    except (InvalidArgument, UnknownItem):
                        n_rejected += 1
                last_query[e.user_id] = (e.timestamp, (session + [e.query])[-8:])
                if (i + 1) % 5000 == 0:
                    say(f"  budget {budget}: {i + 1:,}/{len(events):,} query events, recall so far {hits / max(n_clicks, 1):.3f}")
            n_grown = ce.n_grown
        finally:
            svc.close()
    n = max(n_clicks, 1)
    return {"n_query_events": len(events), "n_events": n_clicks, "n_feedback_rejected": n_rejected,
            "n_grown_items": n_grown, "recall": hits / n, "mrr@10": rr_sum / n,
            "arms": {a: arm_hits[j] / n for j, a in enumerate(names)}, "oracle_single_arm": oracle / n,
            "reward_by_day": {d: h / c for d, (h, c) in sorted(by_day.items())},
            "latency_ms": latency_ms(lat)}


def evaluate_search_log(artifacts, test_log, *, seed: int = 0, max_events: int | None = None, progress=None) -> dict:
    """Both replays (budget 20 and 100) and the JSON report of ``qac evaluate search --log``."""
    r20 = replay_log(artifacts, test_log, 20, seed=seed, max_events=max_events, progress=progress)
    r100 = replay_log(artifacts, test_log, 100, seed=seed, max_events=max_events, progress=progress)
    arms = {a: {"recall@20": r20["arms"][a], "recall@100": r100["arms"][a]} for a in r20["arms"]}
    best = max(arms, key=lambda a: arms[a]["recall@20"])
    return {
        "n_events": r20["n_events"], "n_query_events": r20["n_query_events"],
        "n_grown_items": r20["n_grown_items"], "n_feedback_rejected": r20["n_feedback_rejected"],
        "recall@20": r20["recall"], "recall@100": r100["recall"], "mrr@10": r100["mrr@10"],
        "arms": arms, "best_fixed_arm": {"name": best, "recall@20": arms[best]["recall@20"]},
        "oracle_single_arm": {"recall@20": r20["oracle_single_arm"], "recall@100": r100["oracle_single_arm"]},
        "reward_by_day": r20["reward_by_day"], "reward_by_day_budget100": r100["reward_by_day"],
        "latency_ms": r100["latency_ms"], "latency_ms_budget20": r20["latency_ms"],
    }


def _ndcg10(scores: np.ndarray, grades: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")[:10]
    gains = grades - 1.0
    dcg = sum(gains[j] / math.log2(i + 2) for i, j in enumerate(order))
    ideal = np.sort(gains)[::-1][:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def evaluate_search_judgments(artifacts, test_judgments, *, seed: int = 0, budget: int = 100, progress=None,
                              policy_config=None, menu_recalls: bool = False) -> dict:
    """The JSON report of ``qac evaluate search --judgments`` (see module doc).

    ``policy_config`` (``retrieval.policy.PolicyConfig``): replay with a fresh policy of this
    configuration instead of the artifact's (what-if comparisons, ``bench.judged_policy_replay``).
    ``menu_recalls``: also report ``menu``, the union recall of every fixed menu allocation (unions
    filled as served), and ``oracle_allocation``, the per-query best of them.
    """
    from retrieval.pipeline import ARM_FEATURES, CONTEXT_FEATURES, fill_depths
    from retrieval.policy import allocation_menu, build_policy
    from serving.search_service import catalog_analyzer

    # Search terms normalised as the catalogue's service does (its recorded analyzer).
    judgments = load_judgments(test_judgments, analyzer=catalog_analyzer(artifacts, "homedepot"))
    by_query: dict[str, list] = defaultdict(list)
    for j in judgments:
        by_query[j.query].append(j)
    with tempfile.TemporaryDirectory(prefix="qac-judged-") as tmp:
        svc = _service(artifacts, "homedepot", Path(tmp), seed)
        try:
            ce = svc.engines["homedepot"]
            eng, names = ce.engine, ce.engine.arm_names
            if policy_config is not None:
                eng.policy = build_policy(policy_config, len(names), len(CONTEXT_FEATURES), len(ARM_FEATURES))
            menu = allocation_menu(len(names), budget)
            recalls, arm_recalls, ndcgs, bm25_ndcgs, lat, menu_hits = [], defaultdict(list), [], [], [], []
            for qi, (q, js) in enumerate(sorted(by_query.items())):
                ids = np.array([ce.catalog.id_of(j.item_key) for j in js if ce.catalog.id_of(j.item_key) is not None],
                               dtype=np.int32)
                grades = np.array([j.grade for j in js if ce.catalog.id_of(j.item_key) is not None], dtype=np.float64)
                if ids.size == 0:
                    continue
                ctx = SearchContext(session_id="", user_id="", previous_queries=(), timestamp=0)
                t0 = time.perf_counter_ns()
                res, r = svc.search_with_retrieval(q, ctx, 10, "homedepot", budget)
                lat.append(time.perf_counter_ns() - t0)
                relevant = set(ids[grades >= 2.5].tolist())
                if relevant:
                    union = set(r.union_ids.tolist())
                    recalls.append(len(relevant & union) / len(relevant))
                    for a, aids in zip(names, r.arm_ids):
                        arm_recalls[a].append(len(relevant & set(aids[:budget].tolist())) / len(relevant))
                    if menu_recalls:
                        depths = fill_depths(r.arm_ids, menu, budget)
                        menu_hits.append([len(relevant & {i for ids, d in zip(r.arm_ids, row.tolist())
                                                          for i in ids[:d].tolist()}) / len(relevant)
                                          for row in depths])
                feats = eng.features(r, ids)
                ndcgs.append(_ndcg10(eng.ranker.score(feats), grades))
                bm25_ndcgs.append(_ndcg10(feats[:, 0], grades))
                for item in sorted(relevant):
                    svc.feedback(res.decision_id, ce.catalog.key(item), None, 0, 0)
                if progress and (qi + 1) % 500 == 0:
                    progress(f"  {qi + 1:,}/{len(by_query):,} queries")
        finally:
            svc.close()
    extra = {}
    if menu_recalls and menu_hits:
        hits = np.array(menu_hits)
        extra = {"menu": [{"allocation": dict(zip(names, row.tolist())), "recall@100": float(v)}
                          for row, v in zip(menu, hits.mean(axis=0))],
                 "oracle_allocation": float(hits.max(axis=1).mean())}
    return {
        **extra,
        "n_queries": len(ndcgs), "n_queries_with_relevant": len(recalls),
        "recall@100": float(np.mean(recalls)) if recalls else 0.0,
        "ndcg@10": float(np.mean(ndcgs)) if ndcgs else 0.0,
        "baselines": {"bm25_order_ndcg@10": float(np.mean(bm25_ndcgs)) if bm25_ndcgs else 0.0},
        "arms": {a: {"recall@100": float(np.mean(v))} for a, v in arm_recalls.items()},
        "latency_ms": latency_ms(lat),
    }
