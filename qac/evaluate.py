"""Static completion evaluation under the DESIGN.md protocol (PECOS qp2q).

The test log is normalised and cut into sessions exactly like the training log; every consecutive
(previous, next) pair is one test point with ONE prefix of the next query, its length uniform in
1..len, seeded. Each point is answered by :meth:`qac.completer.Completer.complete` from the raw
strings, and by the most-popular-completion baseline over the same training queries.
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
        Use this loaded completer instead of loading ``artifact_dir``.

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
    model_scorer, mpc_scorer = CompletionScorer(K), CompletionScorer(K)
    latencies: list[int] = []
    timer = time.perf_counter_ns
    for i, p in enumerate(points):
        prev = [p.prev_query] if p.prev_query else []
        t0 = timer()
        result = comp.complete(prev, p.prefix, K)
        latencies.append(timer() - t0)
        seen = p.next_query in comp.mpc
        model_scorer.add(p.next_query, p.prefix, [c.text for c in result], seen)
        mpc_scorer.add(p.next_query, p.prefix, [q for q, _, _ in comp.mpc.top_k_backoff(p.prefix, K)], seen)
        if (i + 1) % 5000 == 0:
            say(f"  {i + 1:,}/{len(points):,} points")
    out = model_scorer.report()
    out["latency_ms"] = latency_ms(latencies)
    out["baselines"] = {"mpc": mpc_scorer.report()}
    out["config"] = {"k": K, "seed": seed, "session_gap_seconds": gap, "inference": asdict(comp.inference),
                     "artifacts": str(artifact_dir), "test_log": str(test_log),
                     "n_malformed_rows": log.n_malformed}
    out["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                      "cpu_count": os.cpu_count()}
    return out
