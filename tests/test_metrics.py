"""Completion metrics against hand-computed values."""
from __future__ import annotations

import math

import pytest

from qac.metrics import CompletionScorer, prefix_bucket, rank_weighted_bleu, reciprocal_rank, sentence_bleu


def test_reciprocal_rank():
    assert reciprocal_rank("b", ["a", "b", "c"]) == 0.5
    assert reciprocal_rank("z", ["a", "b"]) == 0.0
    assert reciprocal_rank("k", [str(i) for i in range(10)] + ["k"]) == 0.0  # rank 11 is outside @10


def test_bleu_identical_sentence_is_one():
    s = "new york city hotels".split()
    assert sentence_bleu(s, s) == pytest.approx(1.0)


def test_bleu_no_unigram_match_is_zero():
    assert sentence_bleu("a b c d".split(), "x y".split()) == 0.0


def test_bleu_smoothed_short_hypothesis_by_hand():
    # ref "new york city", hyp "new york": p1 = 2/2, p2 = 1/1, p3 = eps/1 (no trigram), p4 = eps/1,
    # brevity penalty exp(1 - 3/2).
    ref, hyp = "new york city".split(), "new york".split()
    expected = math.exp(1 - 3 / 2) * math.exp((math.log(1) + math.log(1) + 2 * math.log(0.1)) / 4)
    assert sentence_bleu(ref, hyp) == pytest.approx(expected)


def test_bleu_clips_repeated_ngrams():
    # hyp "the the the": unigram matches clipped to the reference count 1 -> p1 = 1/3.
    ref, hyp = "the cat".split(), "the the the".split()
    p = [1 / 3, 0.1 / 2, 0.1 / 1, 0.1 / 1]
    expected = math.exp(sum(math.log(x) for x in p) / 4)  # c=3 > r=2: no brevity penalty
    assert sentence_bleu(ref, hyp) == pytest.approx(expected)


def test_rank_weighted_bleu_weights_by_reciprocal_rank():
    target = "a b c d"
    sugg = ["x", "a b c d"]  # BLEU 0 at rank 1, 1 at rank 2
    assert rank_weighted_bleu(target, sugg) == pytest.approx((0.5 * 1.0) / (1 + 0.5))
    assert rank_weighted_bleu(target, []) == 0.0


@pytest.mark.parametrize("n, bucket", [(1, "1-3"), (3, "1-3"), (4, "4-7"), (7, "4-7"), (8, "8+"), (40, "8+")])
def test_prefix_bucket(n, bucket):
    assert prefix_bucket(n) == bucket


def test_scorer_report_breakdowns():
    sc = CompletionScorer(10)
    sc.add("abc", "a", ["abc"], seen=True)
    sc.add("abd", "abcd", ["x", "abd"], seen=False)
    sc.add("zz", "zzzzzzzz", ["y"], seen=False)
    r = sc.report()
    assert r["n_points"] == 3
    assert r["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert r["success@10"] == pytest.approx(2 / 3)
    assert r["by_prefix_length"]["1-3"]["mrr@10"] == pytest.approx(1.0)
    assert r["by_prefix_length"]["4-7"]["mrr@10"] == pytest.approx(0.5)
    assert r["by_prefix_length"]["8+"]["n_points"] == 1
    assert r["by_seen"]["seen"]["n_points"] == 1 and r["by_seen"]["unseen"]["mrr@10"] == pytest.approx(0.25)


def test_latency_ms():
    from qac.metrics import latency_ms

    r = latency_ms([1_000_000, 3_000_000])  # 1 ms, 3 ms
    assert r["p50"] == pytest.approx(2.0) and r["mean"] == pytest.approx(2.0) and r["n"] == 2
    assert r["p99"] == pytest.approx(2.98)
    assert latency_ms([])["n"] == 0
