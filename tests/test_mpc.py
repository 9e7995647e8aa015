"""MostPopularCompletion against a brute-force twin (sorted(filter(startswith)))."""
from __future__ import annotations

import csv
import gzip
import random
from collections import Counter
from itertools import islice

import numpy as np
import pytest

from qac.mpc import MostPopularCompletion

from qac.text import normalize_query


KS = (1, 5, 10, 50, 100)
ALPHABET = "ab c\u00e9\u65e5"  # ASCII, space, a 2-byte and a 3-byte UTF-8 character


# ------------------------------------------------------------------ brute-force twin
def rank(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """All (query, count) pairs by count descending, ties by query ascending."""
    return sorted(pairs, key=lambda qc: (-qc[1], qc[0]))


def brute_top_k(ranked: list[tuple[str, int]], prefix: str, k: int) -> list[tuple[str, int]]:
    """``ranked`` from :func:`rank`; filtering keeps its order."""
    return list(islice(((q, c) for q, c in ranked if q.startswith(prefix)), k))


def brute_backoff(ranked: list[tuple[str, int]], prefix: str, k: int) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    # Every completion of a non-empty prefix[:length] starts with prefix[:1]: scan those only.
    first = [(q, c) for q, c in ranked if q.startswith(prefix[:1])]
    for length in range(len(prefix), -1, -1):
        if len(out) >= k:
            break
        for q, c in first if length else ranked:
            if len(out) == k:
                break
            if q.startswith(prefix[:length]) and q not in seen:
                seen.add(q)
                out.append((q, c, length))
    return out


def random_corpus(seed: int, n: int, max_len: int = 7, max_count: int = 5):
    rng = random.Random(seed)
    queries: set[str] = set()
    while len(queries) < n:
        queries.add("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, max_len))))
    queries_list = list(queries)
    rng.shuffle(queries_list)
    # A small count range makes ties frequent, so the string tie-break is exercised.
    counts = np.array([rng.randint(0, max_count) for _ in queries_list], dtype=np.int64)
    return queries_list, counts


def test_prefixes(queries: list[str], seed: int, n_random: int = 200) -> list[str]:
    rng = random.Random(seed)
    prefixes = {""}
    for q in rng.sample(queries, min(len(queries), 300)):
        prefixes.update(q[:i] for i in range(1, len(q) + 1))
    for _ in range(n_random):  # mostly prefixes with few or no completions
        prefixes.add("".join(rng.choice(ALPHABET + "xz\U0001f600") for _ in range(rng.randint(1, 5))))
    return sorted(prefixes)


test_prefixes.__test__ = False  # a helper, not a test


@pytest.mark.parametrize(
    "seed, n, n_stored, heavy_threshold",
    [(0, 400, 4, 8), (1, 1500, 32, 64), (2, 50, 3, 2), (3, 800, 16, 16), (4, 10, 32, 64)],
)
@pytest.mark.parametrize("warm", [False, True])
def test_top_k_matches_brute_force(seed, n, n_stored, heavy_threshold, warm):
    queries, counts = random_corpus(seed, n)
    mpc = MostPopularCompletion.build(queries, counts, n_stored=n_stored, heavy_threshold=heavy_threshold)
    if warm:  # light prefixes then read the sorted list's block instead of walking the trie
        mpc.warmup()
        mpc.sorted_queries()
    pairs = rank(list(zip(queries, counts.tolist())))
    n_heavy_seen = 0
    for prefix in test_prefixes(queries, seed):
        n_completions = sum(q.startswith(prefix) for q in queries)
        n_heavy_seen += bool(prefix) and n_completions > heavy_threshold
        expected = brute_top_k(pairs, prefix, max(KS))
        for k in KS:
            assert mpc.top_k(prefix, k) == expected[:k], (prefix, k)
    if n > heavy_threshold:
        assert n_heavy_seen > 0  # the stored-row path was exercised


@pytest.mark.parametrize("seed", [20, 21])
def test_prefix_counts_and_matched_length_match_brute_force(seed):
    queries, counts = random_corpus(seed, 500)
    mpc = MostPopularCompletion.build(queries, counts, n_stored=4, heavy_threshold=8)
    stored = list(mpc.sorted_queries())
    for prefix in test_prefixes(queries, seed):
        n = sum(q.startswith(prefix) for q in stored)
        assert mpc.n_completions(prefix) == n, prefix
        for at_least in (1, 2, 7):
            assert mpc.has_at_least(prefix, at_least) == (n >= at_least), (prefix, at_least)
        want = max(l for l in range(len(prefix) + 1) if any(q.startswith(prefix[:l]) for q in stored))
        assert mpc.matched_length(prefix) == want, prefix


@pytest.mark.parametrize("seed, n_stored, heavy_threshold", [(5, 4, 8), (6, 32, 64), (7, 2, 3)])
def test_heavy_prefixes_are_exactly_the_heavy_ones(seed, n_stored, heavy_threshold):
    queries, counts = random_corpus(seed, 600)
    mpc = MostPopularCompletion.build(queries, counts, n_stored=n_stored, heavy_threshold=heavy_threshold)
    all_prefixes = {q[:i] for q in queries for i in range(1, len(q) + 1)}
    heavy = {p for p in all_prefixes if sum(q.startswith(p) for q in queries) > heavy_threshold}
    assert mpc.n_heavy == len(heavy)
    params, arrays = mpc.to_arrays()
    assert arrays["heavy_top"].shape == (len(heavy), n_stored)


@pytest.mark.parametrize("seed", [10, 11])
def test_backoff_matches_brute_force(seed):
    queries, counts = random_corpus(seed, 300)
    mpc = MostPopularCompletion.build(queries, counts, n_stored=4, heavy_threshold=6)
    pairs = rank(list(zip(queries, counts.tolist())))
    rng = random.Random(seed)
    prefixes = test_prefixes(queries, seed, n_random=100)
    # Prefixes that fall off the trie after a few matching characters.
    prefixes += [q + "".join(rng.choice("xz\u00e9") for _ in range(rng.randint(1, 3))) for q in queries[:100]]
    for prefix in prefixes:
        # The greedy back-off list for k is the first k of the list for a larger k.
        expected = brute_backoff(pairs, prefix, max(KS))
        for k in KS:
            got = mpc.top_k_backoff(prefix, k)
            assert got == expected[:k], (prefix, k)
            assert len(got) == min(k, len(queries))


def test_backoff_groups_and_matched_len():
    queries = ["apple", "apply", "applet", "banana", "band", "apex"]
    counts = np.array([5, 3, 3, 9, 1, 7], dtype=np.int64)
    mpc = MostPopularCompletion.build(queries, counts, n_stored=2, heavy_threshold=1)
    assert mpc.top_k_backoff("applz", 4) == [
        ("apple", 5, 4),
        ("applet", 3, 4),
        ("apply", 3, 4),
        ("apex", 7, 2),
    ]
    assert mpc.top_k_backoff("zzz", 2) == [("banana", 9, 0), ("apex", 7, 0)]
    assert mpc.top_k_backoff("band", 3) == [("band", 1, 4), ("banana", 9, 3), ("apex", 7, 0)]
    assert mpc.top_k_backoff("", 100) == brute_backoff(rank(list(zip(queries, counts.tolist()))), "", 100)
    assert mpc.top_k_backoff("apple", 0) == []


def test_tie_break_by_string_and_prefix_itself():
    queries = ["ab", "abc", "abd", "abb", "b"]
    counts = np.array([2, 2, 2, 5, 2], dtype=np.int64)
    for n_stored, heavy_threshold in [(32, 64), (2, 1)]:
        mpc = MostPopularCompletion.build(queries, counts, n_stored=n_stored, heavy_threshold=heavy_threshold)
        assert mpc.top_k("ab", 10) == [("abb", 5), ("ab", 2), ("abc", 2), ("abd", 2)]
        assert mpc.top_k("ab", 2) == [("abb", 5), ("ab", 2)]
        assert mpc.top_k("", 3) == [("abb", 5), ("ab", 2), ("abc", 2)]
        assert mpc.top_k("abc", 5) == [("abc", 2)]
        assert mpc.top_k("abx", 5) == []
        assert mpc.top_k("abcd", 5) == []


def test_max_code_point_prefix():
    top = "\U0010ffff"
    queries = ["a" + top, "a" + top + "b", "a" + top + top, "b", "a"]
    counts = np.array([1, 4, 2, 3, 1], dtype=np.int64)
    mpc = MostPopularCompletion.build(queries, counts, n_stored=2, heavy_threshold=1)
    pairs = rank(list(zip(queries, counts.tolist())))
    for prefix in ["", "a", "a" + top, "a" + top + top, top]:
        for k in (1, 2, 5):
            assert mpc.top_k(prefix, k) == brute_top_k(pairs, prefix, k)


def test_count_len_contains():
    queries, counts = random_corpus(20, 200)
    mpc = MostPopularCompletion.build(queries, counts)
    assert len(mpc) == 200
    for q, c in zip(queries, counts.tolist()):
        assert q in mpc
        assert mpc.count(q) == c
    assert "\U0001f600" not in mpc
    assert 3 not in mpc
    assert mpc.count("\U0001f600") == 0
    # count_of: the trie before sorted_queries() is built, the query -> count map after; same answers.
    probes = queries + ["\U0001f600", "", queries[0] + "x"]
    before = [mpc.count_of(q) for q in probes]
    assert mpc.sorted_queries() == sorted(queries)
    assert [mpc.count_of(q) for q in probes] == before == [mpc.count(q) for q in probes]


def test_empty_build():
    mpc = MostPopularCompletion.build([], np.zeros(0, dtype=np.int64))
    assert len(mpc) == 0
    assert mpc.top_k("", 5) == [] and mpc.top_k("a", 5) == [] and mpc.top_k("", 100) == []
    assert mpc.top_k_backoff("abc", 5) == []
    mpc2 = MostPopularCompletion.from_arrays(*mpc.to_arrays())
    assert len(mpc2) == 0


def test_round_trip_through_read_only_memmaps(tmp_path):
    queries, counts = random_corpus(30, 700)
    mpc = MostPopularCompletion.build(queries, counts, n_stored=4, heavy_threshold=8)
    params, arrays = mpc.to_arrays()
    assert arrays["trie"].dtype == np.uint8 and arrays["heavy_trie"].dtype == np.uint8
    assert arrays["counts"].dtype == np.int64 and arrays["counts"].shape == (700,)
    assert arrays["heavy_top"].dtype == np.int32 and arrays["global_top"].dtype == np.int32
    import json

    params = json.loads(json.dumps(params))
    loaded = {}
    for name, arr in arrays.items():
        np.save(tmp_path / f"mpc.{name}.npy", arr)
        loaded[name] = np.load(tmp_path / f"mpc.{name}.npy", mmap_mode="r", allow_pickle=False)
        assert not loaded[name].flags.writeable
    before = {name: np.array(arr) for name, arr in loaded.items()}
    mpc2 = MostPopularCompletion.from_arrays(params, loaded)
    mpc2.warmup()
    assert len(mpc2) == len(mpc) and mpc2.n_heavy == mpc.n_heavy
    for prefix in test_prefixes(queries, 30, n_random=50):
        for k in (1, 10, 50):
            assert mpc2.top_k(prefix, k) == mpc.top_k(prefix, k)
            assert mpc2.top_k_backoff(prefix, k) == mpc.top_k_backoff(prefix, k)
    for name, arr in loaded.items():
        np.testing.assert_array_equal(arr, before[name])
    # Serialising a loaded model gives the same arrays back.
    params3, arrays3 = mpc2.to_arrays()
    assert params3 == params
    for name in arrays:
        np.testing.assert_array_equal(arrays3[name], arrays[name])


# ------------------------------------------------------------------ invalid input tables
@pytest.mark.parametrize(
    "queries, counts, kwargs, match",
    [
        (["a", "b", "a"], None, {}, "queries must be distinct"),
        (["a", ""], None, {}, "queries must be non-empty"),
        (["a", None], None, {}, "queries must be non-empty str"),
        ("abc", np.ones(3, dtype=np.int64), {}, "queries must be a sequence"),
        (["a\ud800"], None, {}, "queries must be encodable as UTF-8"),
        (["a", "b"], np.ones(3, dtype=np.int64), {}, r"counts must have shape \(2,\)"),
        (["a", "b"], np.ones((2, 1), dtype=np.int64), {}, "counts must have shape"),
        (["a", "b"], np.array([1.5, 2.0]), {}, "counts must be integers"),
        (["a", "b"], np.array([1, -1]), {}, "counts must be >= 0"),
        (["a"], None, {"n_stored": 0}, "n_stored must be >= 1"),
        (["a"], None, {"heavy_threshold": 0}, "heavy_threshold must be >= 1"),
        (["a"], None, {"n_stored": 2.0}, "n_stored must be an int"),
    ],
)
def test_build_invalid_input(queries, counts, kwargs, match):
    counts = np.ones(len(queries), dtype=np.int64) if counts is None else counts
    with pytest.raises(ValueError, match=match):
        MostPopularCompletion.build(queries, counts, **kwargs)


@pytest.mark.parametrize(
    "prefix, k, match",
    [
        ("a", -1, "k must be >= 0"),
        ("a", 1.0, "k must be an int"),
        ("a", True, "k must be an int"),
        ("a", "3", "k must be an int"),
        (None, 3, "prefix must be a str"),
        (b"a", 3, "prefix must be a str"),
    ],
)
def test_query_invalid_input(prefix, k, match):
    mpc = MostPopularCompletion.build(["a", "ab"], np.array([1, 2]))
    with pytest.raises(ValueError, match=match):
        mpc.top_k(prefix, k)
    with pytest.raises(ValueError, match=match):
        mpc.top_k_backoff(prefix, k)


def test_count_invalid_input():
    mpc = MostPopularCompletion.build(["a"], np.array([1]))
    with pytest.raises(ValueError, match="query must be a str"):
        mpc.count(None)


def _broken(change):
    queries, counts = random_corpus(40, 100)
    params, arrays = MostPopularCompletion.build(queries, counts, n_stored=4, heavy_threshold=8).to_arrays()
    arrays = dict(arrays)
    change(params, arrays)
    return params, arrays


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, a: p.update(format_version=99), "format_version must be 1"),
        (lambda p, a: a.pop("heavy_top"), "arrays is missing 'heavy_top'"),
        (lambda p, a: p.update(n_queries=5), "n_queries/n_heavy"),
        (lambda p, a: a.update(counts=a["counts"][:-1]), "counts must be int64 of shape"),
        (lambda p, a: a.update(counts=a["counts"].astype(np.int32)), "counts must be int64"),
        (lambda p, a: a.update(heavy_top=a["heavy_top"][:, :2]), "heavy_top must be int32 of shape"),
        (lambda p, a: a.update(global_top=a["global_top"].astype(np.int64)), "global_top must be int32"),
        (lambda p, a: p.update(n_stored=0), "n_stored must be >= 1"),
        (lambda p, a: a.update(heavy_top=a["heavy_top"] + 1000), "heavy_top must hold query key ids"),
        (lambda p, a: a.update(global_top=np.full_like(a["global_top"], -7)), "global_top must hold query key ids"),
    ],
)
def test_from_arrays_invalid_input(change, match):
    params, arrays = _broken(change)
    with pytest.raises(ValueError, match=match):
        MostPopularCompletion.from_arrays(params, arrays)


# ------------------------------------------------------------------ real data
def _aol_event_counts(path) -> Counter:
    """Normalised query -> number of query events (distinct AnonID, Query, QueryTime)."""
    events = set()
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for row in reader:
            if len(row) >= 3:
                events.add((row[0], row[1], row[2]))
    counts: Counter = Counter()
    for raw, n in Counter(raw for _, raw, _ in events).items():
        q = normalize_query(raw)
        if q:
            counts[q] += n
    return counts


def test_real_aol_log_against_brute_force(aol_log):
    counter = _aol_event_counts(aol_log)
    queries = list(counter)
    counts = np.array([counter[q] for q in queries], dtype=np.int64)
    mpc = MostPopularCompletion.build(queries, counts)
    assert len(mpc) == len(queries) > 10_000
    assert mpc.n_heavy > 100
    pairs = rank(list(zip(queries, counts.tolist())))
    rng = random.Random(0)
    prefixes = ["", "w", "www", "goo", "ebay", "zzzzqx", "my", "how to"]
    prefixes += [q[: rng.randint(1, min(8, len(q)))] for q in rng.sample(queries, 6)]
    for prefix in prefixes:
        expected = brute_top_k(pairs, prefix, 100)
        for k in (10, 50):
            assert mpc.top_k(prefix, k) == expected[:k], prefix
        assert mpc.top_k_backoff(prefix + "\u00e9qx", 10) == brute_backoff(pairs, prefix + "\u00e9qx", 10)
