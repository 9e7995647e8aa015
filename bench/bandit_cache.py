"""Record every arm's candidate list for each event of an AOL search replay, for offline policy work.

Usage::

    /work/venv/bin/python -m bench.bandit_cache --artifacts runs/dev/full_art --log runs/dev/test.tsv.gz \
        --out runs/dev/bandit_cache_test.npz [--depth 100]

The replay mirrors ``serving.evaluate_search.replay_log`` event for event (same order, same session
context, same normalisation, the online arms observe every clicked catalogue item exactly as
``RetrieveAndRank.feedback`` does), but without the state store, the policy or the ranker. The online
arms (memory index, popularity, user history) do not depend on the policy's choices -- every arm
observes every click whatever the allocation -- so the recorded lists are exactly the lists any policy
would see in ``qac evaluate search``; a policy can then be replayed over the cache in seconds
(``bench.bandit_sim``).

Saved arrays (one row per query event with clicks, ``n_arms`` arms, ``depth`` candidates):
``ids`` int32 (n, n_arms, depth) (-1 padded), ``scores`` float32 (n, n_arms, depth), ``n_ret`` int32
(n, n_arms), ``click_ptr`` int64 (n + 1,) / ``click_items`` int32 (clicked item ids, -1 when the site is
not in the catalogue), ``timestamp`` int64, ``session_position`` int32, ``query_freq`` int64,
``in_memory`` bool, ``has_user`` bool, ``query_flat``/``query_ptr`` (normalised queries, UTF-8).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from qac.artifacts import strings_to_arrays
from qac.logs import read_aol_log
from qac.text import normalize_query
from retrieval.arms.base import Context
from retrieval.catalog import normalize_url
from serving.search_service import SEARCH_DIR, load_engine


def record(artifacts, test_log, depth: int = 100, max_events: int | None = None, progress=print) -> dict:
    ce = load_engine(Path(artifacts) / SEARCH_DIR / "aol")
    eng = ce.engine
    n_arms = len(eng.arms)
    log = read_aol_log(test_log)
    events = sorted((e for e in log.events if e.click_urls and e.query), key=lambda e: (e.timestamp, e.user_id))
    if max_events is not None:
        events = events[:max_events]
    n = len(events)
    ids = np.full((n, n_arms, depth), -1, dtype=np.int32)
    scores = np.zeros((n, n_arms, depth), dtype=np.float32)
    n_ret = np.zeros((n, n_arms), dtype=np.int32)
    click_ptr = np.zeros(n + 1, dtype=np.int64)
    click_items: list[int] = []
    ts = np.zeros(n, dtype=np.int64)
    pos = np.zeros(n, dtype=np.int32)
    qfreq = np.zeros(n, dtype=np.int64)
    in_mem = np.zeros(n, dtype=bool)
    has_user = np.zeros(n, dtype=bool)
    queries = []
    last_query: dict[str, tuple[int, list[str]]] = {}
    t0 = time.time()
    for i, e in enumerate(events):
        prev_t, prev_q = last_query.get(e.user_id, (0, []))
        session = prev_q if e.timestamp - prev_t <= 1800 else []
        prevs = tuple(session[-8:])
        q = normalize_query(e.query)
        ctx = Context(user_id=e.user_id, previous_queries=prevs, timestamp=int(e.timestamp),
                      session_position=len(prevs))
        for a, arm in enumerate(eng.arms):
            aid, sc = arm.retrieve(q, ctx, depth)
            m = len(aid)
            ids[i, a, :m] = aid
            scores[i, a, :m] = sc
            n_ret[i, a] = m
        ts[i], pos[i] = e.timestamp, len(prevs)
        qfreq[i], in_mem[i], has_user[i] = eng.query_freq(q), eng.in_memory(q), bool(e.user_id)
        queries.append(q)
        fctx = Context(user_id=e.user_id, timestamp=int(e.timestamp), session_position=len(prevs))
        for url in e.click_urls:
            item = ce.catalog.id_of(normalize_url(url))
            click_items.append(-1 if item is None else int(item))
            if item is not None:
                for arm in eng.arms:
                    observe = getattr(arm, "observe", None)
                    if observe is not None:
                        observe(q, int(item), fctx)
        click_ptr[i + 1] = len(click_items)
        last_query[e.user_id] = (e.timestamp, (session + [e.query])[-8:])
        if progress and (i + 1) % 5000 == 0:
            progress(f"  {i + 1:,}/{n:,} events, {time.time() - t0:.0f} s")
    qf, qp = strings_to_arrays(queries)
    return {"ids": ids, "scores": scores, "n_ret": n_ret, "click_ptr": click_ptr,
            "click_items": np.array(click_items, dtype=np.int32), "timestamp": ts, "session_position": pos,
            "query_freq": qfreq, "in_memory": in_mem, "has_user": has_user, "query_flat": qf, "query_ptr": qp,
            "arm_names": np.array(eng.arm_names)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--max-events", type=int, default=None)
    args = ap.parse_args(argv)
    out = record(args.artifacts, args.log, args.depth, args.max_events)
    np.savez(args.out, **out)
    print(f"{len(out['timestamp']):,} query events, {len(out['click_items']):,} clicks -> {args.out}")


if __name__ == "__main__":
    main()
