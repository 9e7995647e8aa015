"""Kernels of the completion arms against slow exact twins: keyed query counts, typo variants,
the blocklist matcher, online MPC counts (small synthetic inputs)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from qac.arms import GLOBAL_KEY, MpcArm, TypoArm, recency_score
from qac.blocklist import Blocklist, BlocklistError
from qac.history import KeyedQueryCounts
from qac.mpc import MostPopularCompletion
from retrieval.arms.base import Context


def _random_events(rng: random.Random, n: int):
    keys = ["u1", "u2", "u3", "new york", ""]
    words = ["new", "york", "news", "weather", "ne", "n", "yo"]
    return [(rng.choice(keys), " ".join(rng.choice(words) for _ in range(rng.randint(1, 3))), rng.randint(0, 10**6))
            for _ in range(n)]


def _twin(events):
    """Slow exact twin: key -> query -> (count, last)."""
    out: dict = {}
    for k, q, t in events:
        c, last = out.setdefault(k, {}).get(q, (0, 0))
        out[k][q] = (c + 1, max(last, t))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_keyed_counts_equal_the_twin_static_online_and_after_a_snapshot(seed):
    rng = random.Random(seed)
    static, online = _random_events(rng, 300), _random_events(rng, 200)
    store = KeyedQueryCounts.from_arrays(*KeyedQueryCounts.build(static).to_arrays())
    for k, q, t in online:
        store.observe(k, q, t)
    twin = _twin(static + online)
    for key in ["u1", "u2", "u3", "new york", "", "nobody"]:
        for prefix in ["", "n", "ne", "new ", "new york", "w", "zz"]:
            want = {q: v for q, v in twin.get(key, {}).items() if q.startswith(prefix)}
            assert store.lookup(key, prefix) == want
        for q, v in twin.get(key, {}).items():
            assert store.count(key, q) == v
        assert store.count(key, "never issued") == (0, 0)
    # snapshot of the online part into a fresh store from the same arrays
    again = KeyedQueryCounts.from_arrays(*KeyedQueryCounts.build(static).to_arrays())
    again.load_state(store.state_arrays())
    assert all(again.lookup(k, "") == store.lookup(k, "") for k in ["u1", "u2", "u3", "new york", ""])
    again.reset_online()
    assert again.lookup("u1", "") == {q: v for q, v in _twin(static).get("u1", {}).items()}


def test_keyed_counts_reject_inconsistent_arrays():
    params, arrays = KeyedQueryCounts.build([("u", "a", 1), ("u", "b", 2)]).to_arrays()
    bad = dict(arrays, counts=arrays["counts"][:1])
    with pytest.raises(ValueError, match="entries"):
        KeyedQueryCounts.from_arrays(params, bad)


def _mpc(queries):
    counts = {}
    for q in queries:
        counts[q] = counts.get(q, 0) + 1
    keys = sorted(counts)
    return MostPopularCompletion.build(keys, np.array([counts[q] for q in keys], dtype=np.int64))


def _brute_variants(prefix: str, alphabet: str, valid) -> set[str]:
    """Every string at edit distance 1 from ``prefix`` (Damerau: adjacent transposition included)."""
    out = set()
    for i in range(len(prefix) + 1):
        if i < len(prefix):
            out.add(prefix[:i] + prefix[i + 1:])
            for c in alphabet:
                out.add(prefix[:i] + c + prefix[i + 1:])
        for c in alphabet:
            out.add(prefix[:i] + c + prefix[i:])
        if i + 1 < len(prefix):
            out.add(prefix[:i] + prefix[i + 1] + prefix[i] + prefix[i + 2:])
    out.discard(prefix)
    return {v for v in out if v and valid(v)}


@pytest.mark.parametrize("prefix", ["waether", "wheather", "weathr", "nwe york", "new yrok", "amazn", "xyzzy"])
def test_typo_variants_equal_brute_force_edit_distance_one(prefix):
    queries = ["weather", "weather channel", "new york", "new york times", "amazon", "amazing", "news",
               "wheat", "whether", "new yorker", "ne york"]
    mpc = _mpc(queries)
    arm = TypoArm(mpc, min_exact=3, window=len(prefix))  # window = whole prefix: exhaustive
    alphabet = sorted({c for q in queries for c in q})
    want = _brute_variants(prefix, "".join(alphabet), mpc.has_prefix)
    # Edits after the first mismatch cannot give a valid prefix, so the exhaustive window is exact.
    assert set(arm.variants(prefix)) == want


def test_typo_arm_completes_a_misspelt_prefix_and_leaves_exact_ones_alone():
    mpc = _mpc(["weather"] * 5 + ["weather channel"] * 3 + ["wealth"])
    arm = TypoArm(mpc, min_exact=2)
    texts, scores = arm.retrieve("waeth", Context(), 10)
    assert texts == ["weather", "weather channel"] and scores == [5.0, 3.0]
    assert arm.retrieve("weat", Context(), 10) == ([], [])  # the exact prefix has enough (2)
    assert TypoArm(mpc, min_exact=3).retrieve("weat", Context(), 10) == (["wealth"], [1.0])
    assert arm.variants("we") == []  # too short to correct


def test_typo_arm_reads_only_the_variants_with_the_most_completions():
    # "cat" has 2 completions (< min_exact), and a dozen variants at its last character.
    queries = ["cat", "cats"] + [f"ca{c}{i}" for c in "bdefghijklmn" for i in range(ord(c) - ord("a"))]
    mpc = _mpc(queries)
    arm = TypoArm(mpc, min_exact=3, max_expansions=3)
    found = arm.variants("cat")
    assert set(found) >= {f"ca{c}" for c in "bdefghijklmn"} and len(found) > 3
    # The three most completed variants: the deletion 'ca' (all queries), then 'can' (13), 'cam' (12).
    assert arm.expansions("cat") == ["ca", "can", "cam"]
    texts, _ = arm.retrieve("cat", Context(), 50)
    brute = {t: float(c) for v in ("ca", "can", "cam") for t, c in mpc.top_k(v, 50) if not t.startswith("cat")}
    assert texts == sorted(brute, key=lambda t: (-brute[t], t))[:50]
    assert TypoArm(mpc, min_exact=3, max_expansions=50).expansions("cat") == found


@pytest.mark.parametrize("seed", [0, 1])
def test_typo_arm_equals_brute_force_top_n_of_every_variant_completion(seed):
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcde "))
    queries = ["".join(rng.choice(alphabet, size=rng.integers(3, 9))).strip() or "a" for _ in range(600)]
    # Small stored rows: both the head-row path and the variant-by-variant path run.
    counts = {}
    for q in queries:
        counts[q] = counts.get(q, 0) + 1
    keys = sorted(counts)
    mpc = MostPopularCompletion.build(keys, np.array([counts[q] for q in keys], dtype=np.int64),
                                      n_stored=4, heavy_threshold=6)
    arm = TypoArm(mpc, min_exact=5, max_expansions=10_000)
    fallbacks = []  # the prefixes answered variant by variant (the head's stored row was not enough)
    arm.expansions = (lambda f: (lambda prefix: fallbacks.append(prefix) or f(prefix)))(arm.expansions)
    prefixes = sorted({q[:j] for q in keys for j in range(3, len(q) + 1)} |
                      {"".join(rng.choice(alphabet, size=5)) for _ in range(100)})
    n_checked = 0
    for prefix in prefixes:
        for n in (3, 10):
            got = arm.retrieve(prefix, Context(), n)
            if not arm.needed(prefix):
                assert got == ([], [])
                continue
            vs = arm.variants(prefix)
            want = sorted(((q, float(c)) for q, c in counts.items()
                           if any(q.startswith(v) for v in vs) and not q.startswith(prefix)),
                          key=lambda qc: (-qc[1], qc[0]))[:n]
            assert got == ([q for q, _ in want], [c for _, c in want]), (prefix, n)
            n_checked += 1
    n_fallback = len(fallbacks)
    assert n_checked > 300 and 50 < n_fallback < n_checked, (n_checked, n_fallback)


def test_mpc_arm_adds_online_counts_exactly():
    mpc = _mpc(["news"] * 3 + ["new york"] * 2 + ["newark"])
    online = KeyedQueryCounts.from_dict({})
    arm = MpcArm(mpc, online)
    assert arm.retrieve("new", Context(), 2) == (["news", "new york"], [3.0, 2.0])
    for _ in range(3):
        online.observe(GLOBAL_KEY, "newark", 10)
    online.observe(GLOBAL_KEY, "new zealand", 11)
    assert arm.retrieve("new", Context(), 3) == (["newark", "news", "new york"], [4.0, 3.0, 2.0])
    assert arm.count("new zealand") == 1 and arm.count("newark") == 4


def test_recency_score_prefers_frequent_then_recent():
    now = 100 * 86400
    assert recency_score(5, now, now) > recency_score(1, now, now)
    assert recency_score(2, now - 86400, now) > recency_score(2, now - 30 * 86400, now)
    assert recency_score(1, 0, 0) == pytest.approx(np.log(2) + 1)


def test_blocklist_matches_whole_words_and_phrases(tmp_path):
    bl = Blocklist(["Bad", "very bad phrase"])
    assert bl.blocks("a bad day") and bl.blocks("bad")
    assert not bl.blocks("badminton") and not bl.blocks("a baddie")
    assert bl.blocks("this very bad phrase here") and bl.blocks("very bad")  # "bad" alone is blocked
    assert not Blocklist(["very bad phrase"]).blocks("very bad")
    path = tmp_path / "block.txt"
    path.write_text("# comment\n\nfoo bar\nBAZ\n", encoding="utf-8")
    assert Blocklist.load(path).terms == ["baz", "foo bar"]
    path.write_text("ok\n ... \n", encoding="utf-8")
    with pytest.raises(BlocklistError, match=r":2: "):
        Blocklist.load(path)
    with pytest.raises(BlocklistError, match="cannot read"):
        Blocklist.load(tmp_path / "missing.txt")
