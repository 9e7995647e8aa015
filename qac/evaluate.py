"""Completion evaluation under the DESIGN.md protocol (PECOS qp2q), static or online.

The test log is normalised and cut into sessions exactly like the training log; every consecutive
(previous, next) pair is one test point with ONE prefix of the next query, its length uniform in
1..len, seeded. Each point is answered by :meth:`qac.completer.Completer.complete` from the raw
strings (with the point's user and time), by every completion arm alone (``arms.NAME``), by the
cascade without the learned ranker (``baselines.cascade``) and by the most-popular-completion
baseline over the same training queries (``baselines.mpc``).

Static: the completer never learns during the replay. Online (``online=True``): points are replayed
in time order and after each one the query the user issued is fed back
(:meth:`~qac.completer.Completer.observe`), so the next points see it -- what a serving process
receiving Feedback does.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict
import time
from typing import Callable


from qac.completer import Completer
from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions
from qac.metrics import CompletionScorer, latency_ms

K = 10


def evaluate_completion(
    artifact_dir: str | os.PathLike,
    test_log: str | os.PathLike,
    *,
    seed: int = 0,
    since=None,
    until=None,
    max_points: int | None = None,
    completer: Completer | None = None,
    progress: Callable[[str], None] | None = None,
    online: bool = False,
    per_arm: bool = True,
) -> dict:
    """Replay ``test_log`` through the completer and the MPC baseline.

    Parameters
    ----------
    artifact_dir : path
        Completion artifact from ``qac build``.
    test_log : path
        AOL-format log of the test period.
    seed : int
        Seed of the test prefixes (qp2q uses one uniform prefix per pair).
    since, until : date or ISO string, optional
        Restrict test events to ``[since, until)``.
    max_points : int, optional
        Evaluate only the first N points (in session order), for quick checks.
    completer : Completer, optional
        Use this loaded completer instead of loading ``artifact_dir`` (its online state is reset
        before and after an online replay).
    online : bool
        Replay in time order, feeding back each point's issued query.
    per_arm : bool
        Also score every arm alone and the cascade (a few times slower).

    Returns
    -------
    dict with ``n_points``, ``mrr@10``, ``success@10``, ``bleu``, ``by_prefix_length``,
    ``by_seen``, ``latency_ms`` (``p50``, ``p99``: one in-process ``complete`` call, raw strings to
    final list, after warm-up) and ``baselines.mpc`` (same metrics).
    """
    say = progress or (lambda s: None)
    comp = completer or Completer.load(artifact_dir)
    comp.warmup()
    gap = comp.config.session_gap_seconds
    log = read_aol_log(test_log, since=since, until=until)
    sessions = split_sessions(log.events, SessionConfig(gap))
    points = make_points(sessions, seed)
    if max_points is not None:
        points = points[:max_points]
    say(f"{len(points):,} test points from {len(sessions):,} sessions")
    if online:
        points = sorted(points, key=lambda q: q.timestamp)
        comp.reset_online()
    arm_names = list(comp.arms) if per_arm else []
    cascade = comp.with_inference(ranked=False) if per_arm and comp.pipeline is not None else None
    model_scorer, mpc_scorer = CompletionScorer(K), CompletionScorer(K)
    arm_scorers = {a: CompletionScorer(K) for a in arm_names}
    cascade_scorer = CompletionScorer(K)
    latencies: list[int] = []
    timer = time.perf_counter_ns
    for i, p in enumerate(points):
        prev = [p.prev_query] if p.prev_query else []
        t0 = timer()
        result = comp.complete(prev, p.prefix, K, user_id=p.user_id, timestamp=p.timestamp)
        latencies.append(timer() - t0)
        seen = p.next_query in comp.mpc
        model_scorer.add(p.next_query, p.prefix, [c.text for c in result], seen)
        mpc_scorer.add(p.next_query, p.prefix, [q for q, _, _ in comp.mpc.top_k_backoff(p.prefix, K)], seen)
        for a in arm_names:
            arm_scorers[a].add(p.next_query, p.prefix, comp.arm_complete(a, prev, p.prefix, K, user_id=p.user_id,
                                                                         timestamp=p.timestamp), seen)
        if cascade is not None:
            cascade_scorer.add(p.next_query, p.prefix, [c.text for c in cascade.complete(prev, p.prefix, K)], seen)
        if online:
            comp.observe(p.user_id, p.prev_query, p.next_query, p.timestamp)
        if (i + 1) % 5000 == 0:
            say(f"  {i + 1:,}/{len(points):,} points")
    if online:
        comp.reset_online()
    out = model_scorer.report()
    out["latency_ms"] = latency_ms(latencies)
    out["baselines"] = {"mpc": mpc_scorer.report()}
    if cascade is not None:
        out["baselines"]["cascade"] = cascade_scorer.report()
    out["arms"] = {a: sc.report() for a, sc in arm_scorers.items()}
    for a, rep in out["arms"].items():
        out[f"arms.{a}.mrr@10"] = rep["mrr@10"]
    out["config"] = {"k": K, "seed": seed, "session_gap_seconds": gap, "inference": asdict(comp.inference),
                     "artifacts": str(artifact_dir), "test_log": str(test_log), "online": online,
                     "ranked": comp.pipeline is not None, "n_malformed_rows": log.n_malformed}
    out["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                      "cpu_count": os.cpu_count()}
    return out
