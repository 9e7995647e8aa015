"""Completion quality metrics: MRR@k, Success@k and rank-weighted sentence BLEU.

Protocol as PECOS ``examples/qp2q`` (Yadav et al., KDD 2021): exact string match of the true next
query against the ranked suggestions; BLEU of every suggestion against the true query, weighted by
1/rank and normalised by the sum of weights.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def reciprocal_rank(target: str, suggestions: Sequence[str], k: int = 10) -> float:
    """1/rank of ``target`` among the first ``k`` suggestions, 0.0 if absent."""
    for i, s in enumerate(suggestions[:k]):
        if s == target:
            return 1.0 / (i + 1)
    return 0.0


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(reference: Sequence[str], hypothesis: Sequence[str], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU of token lists with uniform weights up to ``max_n``.

    Papineni et al. (2002) modified n-gram precisions with brevity penalty, smoothed as Chen & Cherry
    (2014) method 1: an order with no matching n-gram gets precision ``epsilon / n_hyp_ngrams``
    (with at least 1 in the denominator). Returns 0.0 when no unigram matches or the hypothesis is
    empty (the conventions of NLTK's ``sentence_bleu`` with ``SmoothingFunction().method1``).
    """
    if not hypothesis or not reference:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = _ngrams(hypothesis, n)
        ref = _ngrams(reference, n)
        matched = sum(min(c, ref[g]) for g, c in hyp.items())
        total = max(1, sum(hyp.values()))
        if matched == 0:
            if n == 1:
                return 0.0
            log_p += math.log(epsilon / total)
        else:
            log_p += math.log(matched / total)
    c, r = len(hypothesis), len(reference)
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * math.exp(log_p / max_n)


def rank_weighted_bleu(target: str, suggestions: Sequence[str], k: int = 10) -> float:
    """sum_i BLEU(target, s_i) / i over the top ``k``, divided by sum_i 1/i (0.0 if no suggestion)."""
    ref = target.split()
    num = den = 0.0
    for i, s in enumerate(suggestions[:k]):
        w = 1.0 / (i + 1)
        num += w * sentence_bleu(ref, s.split())
        den += w
    return num / den if den > 0 else 0.0


def latency_ms(ns) -> dict:
    """``p50``, ``p90``, ``p99``, ``mean`` (milliseconds) and ``n`` of durations in nanoseconds
    (all 0 for no durations): the ``latency_ms`` block of the evaluation reports."""
    import numpy as np

    a = np.asarray(ns, dtype=np.float64) / 1e6
    if a.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0, "n": 0}
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


def prefix_bucket(prefix_len: int) -> str:
    """Prefix-length bucket used in reports: ``"1-3"``, ``"4-7"`` or ``"8+"``."""
    if prefix_len <= 3:
        return "1-3"
    if prefix_len <= 7:
        return "4-7"
    return "8+"


class CompletionScorer:
    """Accumulates MRR@k, Success@k and BLEU per test point, overall and by bucket."""

    def __init__(self, k: int = 10):
        self.k = k
        self._rows: list[tuple[float, float, float, str, bool]] = []

    def add(self, target: str, prefix: str, suggestions: Sequence[str], seen: bool) -> float:
        """Score one test point; returns its reciprocal rank."""
        rr = reciprocal_rank(target, suggestions, self.k)
        bleu = rank_weighted_bleu(target, suggestions, self.k)
        self._rows.append((rr, 1.0 if rr > 0 else 0.0, bleu, prefix_bucket(len(prefix)), seen))
        return rr

    @staticmethod
    def _summary(rows, k: int) -> dict:
        n = len(rows)
        if n == 0:
            return {"n_points": 0, f"mrr@{k}": 0.0, f"success@{k}": 0.0, "bleu": 0.0}
        return {
            "n_points": n,
            f"mrr@{k}": sum(r[0] for r in rows) / n,
            f"success@{k}": sum(r[1] for r in rows) / n,
            "bleu": sum(r[2] for r in rows) / n,
        }

    def report(self) -> dict:
        """JSON-able dict: overall metrics, ``by_prefix_length`` and ``by_seen`` breakdowns."""
        out = self._summary(self._rows, self.k)
        out["by_prefix_length"] = {
            b: self._summary([r for r in self._rows if r[3] == b], self.k) for b in ("1-3", "4-7", "8+")
        }
        out["by_seen"] = {
            "seen": self._summary([r for r in self._rows if r[4]], self.k),
            "unseen": self._summary([r for r in self._rows if not r[4]], self.k),
        }
        return out
