"""Synthetic suffix completions against a brute-force twin."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from qac.suffix import SuffixCompletion, query_suffixes


def brute_force(query_counts, prefix, k):
    """Every word-boundary split of the prefix, longest tail first; suffixes by count desc, text asc."""
    counts = Counter()
    for q, c in query_counts:
        for s in query_suffixes(q):
            counts[s] += c
    out, taken = [], set()
    starts = [i + 1 for i, ch in enumerate(prefix) if ch == " " and i + 1 < len(prefix)]
    for st in starts:
        head, tail = prefix[:st], prefix[st:]
        ranked = sorted((s for s in counts if s.startswith(tail)), key=lambda s: (-counts[s], s))
        for s in ranked[:k]:
            if head + s not in taken:
                taken.add(head + s)
                out.append((head + s, counts[s], len(tail)))
    return out[:k]


def test_query_suffixes():
    assert query_suffixes("new york city") == ["new york city", "york city", "city"]
    assert query_suffixes("ebay") == ["ebay"]


def test_hand_example():
    sc = SuffixCompletion.build([("breakup advice", 3), ("legal advice", 5), ("advise", 1), ("new york city", 2)])
    got = sc.complete("breakup advi", 3)
    assert got == [("breakup advice", 8, 4), ("breakup advise", 1, 4)]
    # no word boundary inside the prefix: nothing to synthesise
    assert sc.complete("advi", 3) == []
    # a prefix ending with a space has an empty last tail: completions come from longer tails only
    assert sc.complete("visit new york ", 5) == [("visit new york city", 2, len("new york "))]
    assert all(t.startswith("breakup advi") for t, _, _ in got)


def test_exclude_skips_known_completions():
    sc = SuffixCompletion.build([("legal advice", 5), ("advise", 1)])
    assert sc.complete("my advi", 3, exclude={"my advice"}) == [("my advise", 1, 4)]


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_on_random_logs(seed):
    rng = random.Random(seed)
    words = ["new", "york", "ne", "city", "cit", "a", "ab", "abc", "weather", "we"]
    queries = {" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(300)}
    query_counts = [(q, rng.randint(1, 20)) for q in sorted(queries)]
    sc = SuffixCompletion.build(query_counts)
    for _ in range(200):
        q = rng.choice(query_counts)[0] + " " + rng.choice(query_counts)[0]
        prefix = q[: rng.randint(1, len(q))]
        k = rng.choice([1, 3, 10, 40])
        assert sc.complete(prefix, k) == brute_force(query_counts, prefix, k)


def test_round_trip(tmp_path):
    import numpy as np

    sc = SuffixCompletion.build([("breakup advice", 3), ("legal advice", 5), ("advise", 1)])
    params, arrays = sc.to_arrays()
    for key, arr in arrays.items():
        np.save(tmp_path / f"{key}.npy", arr)
    loaded = SuffixCompletion.from_arrays(params, {k: np.load(tmp_path / f"{k}.npy", mmap_mode="r") for k in arrays})
    assert loaded.complete("breakup advi", 5) == sc.complete("breakup advi", 5)
