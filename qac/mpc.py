"""Most-popular completion (MPC) with back-off over a marisa-trie of the training queries.

MPC ranks the training queries that start with the typed prefix by their training frequency
(Bar-Yossef & Kraus, "Context-sensitive query auto-completion", WWW 2011). It is the
fallback of the completer (no session, or the model returned fewer than k) and the baseline every
completion evaluation reports.

Layout (flat arrays, no node objects):

- ``trie``: a ``marisa_trie.Trie`` over the distinct normalised queries; ``counts[trie[q]]`` is the
  frequency of ``q`` (marisa key ids are not in sorted order).
- ``heavy_trie``: a second ``marisa_trie.Trie`` over the *heavy* prefixes, those that more than
  ``heavy_threshold`` queries complete; ``heavy_top[heavy_trie[p]]`` is the row of the top
  ``n_stored`` completions of ``p`` as query key ids (``-1`` padded).
- ``global_top``: the top ``n_stored`` queries overall (the empty prefix; back-off ends there).

Every ranking orders by count descending, ties by the query string ascending (Python ``str`` order,
which equals UTF-8 byte order). A prefix that is not heavy has at most ``heavy_threshold``
completions, so enumerating them from the trie is cheap.
"""
from __future__ import annotations

import os.path
from bisect import bisect_left
from collections.abc import Mapping, Sequence

import marisa_trie
import numpy as np

__all__ = ["MostPopularCompletion"]

FORMAT_VERSION = 1
_MAX_CHAR = 0x10FFFF


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_prefix(prefix) -> str:
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {type(prefix).__name__}")
    return prefix


def _block_end(sorted_queries: list[str], prefix: str, lo: int, hi: int) -> int:
    """End of the block of ``sorted_queries[lo:hi]`` that starts with ``prefix`` (non-empty).

    Every string that starts with ``prefix`` lies in ``[prefix, successor)`` where the successor
    increments the last character; that range holds nothing else.
    """
    last = ord(prefix[-1])
    if last < _MAX_CHAR:
        return bisect_left(sorted_queries, prefix[:-1] + chr(last + 1), lo, hi)
    end = lo
    while end < hi and sorted_queries[end].startswith(prefix):
        end += 1
    return end


def _heavy_blocks(sorted_queries: list[str], threshold: int) -> list[tuple[str, int, int]]:
    """Every non-empty prefix completed by more than ``threshold`` queries, with its block.

    Returns ``(prefix, lo, hi)`` with ``sorted_queries[lo:hi]`` exactly the queries starting with
    ``prefix``. Walks the heavy part of the character trie implied by the sorted order: the children
    of a heavy prefix are found by one binary search each, so the cost is
    O(n_children_of_heavy_prefixes * log n), never proportional to the sum of block sizes.
    """
    out: list[tuple[str, int, int]] = []
    n = len(sorted_queries)
    if n <= threshold:
        return out
    stack = [("", 0, n)]
    while stack:
        prefix, lo, hi = stack.pop()
        if prefix:
            out.append((prefix, lo, hi))
        depth = len(prefix)
        i = lo
        # Queries are distinct, so at most the first query of the block equals the prefix.
        if i < hi and len(sorted_queries[i]) == depth:
            i += 1
        while i < hi:
            child = prefix + sorted_queries[i][depth]
            j = _block_end(sorted_queries, child, i, hi)
            if j - i > threshold:
                stack.append((child, i, j))
            i = j
    return out


class MostPopularCompletion:
    """Exact most-popular completions of a prefix, with back-off to shorter prefixes.

    Build with :meth:`build`; persist with :meth:`to_arrays` / :meth:`from_arrays`; call
    :meth:`warmup` after loading for serving. Stored rows are decoded to Python strings on first use
    and kept (about 11 MB for the 362k-query AOL sample at the defaults); queries are safe to run
    from several threads.

    Attributes
    ----------
    n_stored : int
        Length of each precomputed row (the largest ``k`` answered from a stored row).
    heavy_threshold : int
        A prefix completed by more than this many queries gets a stored row.
    n_queries : int
    n_heavy : int
        Number of heavy non-empty prefixes (rows of ``heavy_top``).
    """

    def __init__(
        self,
        trie: marisa_trie.Trie,
        counts: np.ndarray,
        heavy_trie: marisa_trie.Trie,
        heavy_top: np.ndarray,
        global_top: np.ndarray,
        *,
        n_stored: int,
        heavy_threshold: int,
    ) -> None:
        self.n_stored = _check_int("n_stored", n_stored, 1)
        self.heavy_threshold = _check_int("heavy_threshold", heavy_threshold, 1)
        n = len(trie)
        n_heavy = len(heavy_trie)
        counts, heavy_top, global_top = np.asarray(counts), np.asarray(heavy_top), np.asarray(global_top)
        if counts.dtype != np.int64 or counts.shape != (n,):
            raise ValueError(f"counts must be int64 of shape ({n},), got {counts.dtype} {counts.shape}")
        if heavy_top.dtype != np.int32 or heavy_top.shape != (n_heavy, self.n_stored):
            raise ValueError(
                f"heavy_top must be int32 of shape ({n_heavy}, {self.n_stored}), "
                f"got {heavy_top.dtype} {heavy_top.shape}"
            )
        if global_top.dtype != np.int32 or global_top.shape != (self.n_stored,):
            raise ValueError(
                f"global_top must be int32 of shape ({self.n_stored},), got {global_top.dtype} {global_top.shape}"
            )
        for name, ids in (("heavy_top", heavy_top), ("global_top", global_top)):
            if ids.size and (ids.min() < -1 or ids.max() >= n):
                raise ValueError(f"{name} must hold query key ids in [-1, {n}), got [{ids.min()}, {ids.max()}]")
        self._trie = trie
        self._sorted: list[str] | None = None
        self._count_map: dict[str, int] | None = None
        self._counts = counts
        # Python-side views for the request path: indexing a numpy array per element and
        # marisa's restore_key (~1 us each) dominate a 10-item answer otherwise.
        self._neg_counts: list[int] = (-np.asarray(counts, dtype=np.int64)).tolist()
        self._row_cache: dict[int, list[tuple[str, int]]] = {}
        self._pairs: list[tuple[str, int] | None] = [None] * n
        self._global_rows: list[tuple[str, int]] = self._decode_row(global_top)
        self._heavy_trie = heavy_trie
        self._heavy_top = heavy_top
        self._global_top = global_top
        self.n_queries = n
        self.n_heavy = n_heavy

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        queries: Sequence[str],
        counts: np.ndarray,
        *,
        n_stored: int = 32,
        heavy_threshold: int = 16,
    ) -> "MostPopularCompletion":
        """Build the trie, the per-prefix top-``n_stored`` rows and the global top.

        Parameters
        ----------
        queries : sequence of str, length n_queries
            Distinct, non-empty normalised queries (see ``qac.text.normalize_query``).
        counts : array-like of shape (n_queries,), integer, >= 0
            Training frequency of each query; coerced to int64.
        n_stored : int, default 32
            Completions stored per heavy prefix.
        heavy_threshold : int, default 16
            A prefix completed by more than this many queries is heavy (gets a stored row).

        Returns
        -------
        MostPopularCompletion

        Raises
        ------
        ValueError
            Naming the field: ``queries`` not a sequence of distinct non-empty str (or not encodable
            as UTF-8), ``counts`` of the wrong length / non-integer / negative, ``n_stored`` or
            ``heavy_threshold`` < 1.
        """
        n_stored = _check_int("n_stored", n_stored, 1)
        heavy_threshold = _check_int("heavy_threshold", heavy_threshold, 1)
        if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
            raise ValueError(f"queries must be a sequence of str, got {type(queries).__name__}")
        queries = list(queries)
        for q in queries:
            if not isinstance(q, str) or not q:
                raise ValueError(f"queries must be non-empty str, got {q!r}")
        counts_arr = np.asarray(counts)
        if counts_arr.ndim != 1 or counts_arr.shape[0] != len(queries):
            raise ValueError(f"counts must have shape ({len(queries)},), got {counts_arr.shape}")
        if counts_arr.size and not np.issubdtype(counts_arr.dtype, np.integer):
            raise ValueError(f"counts must be integers, got {counts_arr.dtype}")
        counts_arr = counts_arr.astype(np.int64, copy=False)
        if counts_arr.size and counts_arr.min() < 0:
            raise ValueError("counts must be >= 0")

        n = len(queries)
        order = sorted(range(n), key=queries.__getitem__)
        sorted_queries = [queries[i] for i in order]
        for a, b in zip(sorted_queries, sorted_queries[1:]):
            if a == b:
                raise ValueError(f"queries must be distinct, {a!r} repeats")
        try:
            trie = marisa_trie.Trie(sorted_queries)
        except UnicodeEncodeError as exc:
            raise ValueError(f"queries must be encodable as UTF-8: {exc}") from None

        # Per sorted position: marisa key id and count; then the global rank of each position
        # (count desc, string asc == sorted position asc, hence the stable sort).
        key_of_pos = np.fromiter((trie[q] for q in sorted_queries), dtype=np.int32, count=n)
        sorted_counts = counts_arr[np.asarray(order, dtype=np.int64)] if n else counts_arr
        counts_by_key = np.empty(n, dtype=np.int64)
        counts_by_key[key_of_pos] = sorted_counts
        pos_of_rank = np.argsort(-sorted_counts, kind="stable")
        rank_of_pos = np.empty(n, dtype=np.int64)
        rank_of_pos[pos_of_rank] = np.arange(n, dtype=np.int64)

        def top_row(lo: int, hi: int) -> np.ndarray:
            ranks = rank_of_pos[lo:hi]
            if hi - lo > n_stored:
                ranks = np.partition(ranks, n_stored - 1)[:n_stored]
            ranks = np.sort(ranks)
            row = np.full(n_stored, -1, dtype=np.int32)
            row[: ranks.size] = key_of_pos[pos_of_rank[ranks]]
            return row

        global_top = top_row(0, n)
        blocks = _heavy_blocks(sorted_queries, heavy_threshold)
        heavy_trie = marisa_trie.Trie([p for p, _, _ in blocks])
        heavy_top = np.full((len(blocks), n_stored), -1, dtype=np.int32)
        for prefix, lo, hi in blocks:
            heavy_top[heavy_trie[prefix]] = top_row(lo, hi)
        return cls(
            trie,
            counts_by_key,
            heavy_trie,
            heavy_top,
            global_top,
            n_stored=n_stored,
            heavy_threshold=heavy_threshold,
        )

    # ---------------------------------------------------------------- queries
    def __len__(self) -> int:
        return self.n_queries

    def __contains__(self, query: object) -> bool:
        return isinstance(query, str) and query in self._trie

    def sorted_queries(self) -> list[str]:
        """Every training query in code-point order (built on first use, then kept: ~60 bytes a query,
        plus ~40 for the query -> count map of :meth:`count_of` built with it)."""
        queries = self._sorted
        if queries is None:
            items = sorted(self._trie.items())
            neg = self._neg_counts
            queries = [q for q, _ in items]
            # The map shares the list's strings; set before the list, so a reader that sees the
            # list also sees the map.
            self._count_map = {q: -neg[i] for q, i in items}
            self._sorted = queries
        return queries

    def has_prefix(self, prefix: str) -> bool:
        """Whether some training query starts with ``prefix`` (``""``: whether there is any query).

        A binary search over :meth:`sorted_queries` (cheaper than marisa's prefix iteration)."""
        return self.has_at_least(prefix, 1)

    def has_at_least(self, prefix: str, n: int) -> bool:
        """Whether at least ``n`` (>= 1) training queries start with ``prefix`` (one binary search)."""
        queries = self.sorted_queries()
        j = bisect_left(queries, prefix) + n - 1
        return j < len(queries) and queries[j].startswith(prefix)

    def _block(self, prefix: str) -> tuple[list[str], int, int]:
        """``(sorted_queries, lo, hi)`` with ``sorted_queries[lo:hi]`` the queries starting with ``prefix``."""
        queries = self.sorted_queries()
        if not prefix:
            return queries, 0, len(queries)
        lo = bisect_left(queries, prefix)
        return queries, lo, _block_end(queries, prefix, lo, len(queries))

    def n_completions(self, prefix: str) -> int:
        """How many training queries start with ``prefix`` (two binary searches)."""
        _, lo, hi = self._block(prefix)
        return hi - lo

    def matched_length(self, prefix: str) -> int:
        """Length of the longest leading part of ``prefix`` that some training query starts with.

        In sorted order the queries sharing the longest common prefix with ``prefix`` are next to
        its insertion point, so one binary search and two common-prefix scans give it."""
        queries = self.sorted_queries()
        i = bisect_left(queries, prefix)
        return max((len(os.path.commonprefix((queries[j], prefix))) for j in (i - 1, i) if 0 <= j < len(queries)),
                   default=0)

    def next_chars(self, head: str) -> list[str]:
        """The distinct characters that follow ``head`` in training queries, in code-point order
        (one binary search per character found)."""
        queries = self.sorted_queries()
        out: list[str] = []
        n = len(head)
        i = bisect_left(queries, head)
        while i < len(queries):
            q = queries[i]
            if not q.startswith(head):
                break
            if len(q) == n:
                i += 1
                continue
            c = q[n]
            out.append(c)
            if ord(c) == _MAX_CHAR:
                break
            i = bisect_left(queries, head + chr(ord(c) + 1), i)
        return out

    def count_of(self, query: str) -> int:
        """:meth:`count` without the argument check (request path; ``query`` must be a str).

        One dict lookup once :meth:`sorted_queries` has been built (``Completer.warmup`` builds it;
        cheaper than a marisa lookup on a cold cache); the trie before that."""
        count_map = self._count_map
        if count_map is not None:
            return count_map.get(query, 0)
        key = self._trie.get(query)
        return 0 if key is None else -self._neg_counts[key]

    def count(self, query: str) -> int:
        """Training frequency of ``query`` (0 if it is not a training query)."""
        if not isinstance(query, str):
            raise ValueError(f"query must be a str, got {type(query).__name__}")
        return self.count_of(query)

    def _decode_row(self, row: np.ndarray) -> list[tuple[str, int]]:
        # A popular query sits in the rows of many nested prefixes: decode it once and share the
        # (query, count) tuple (halves the memory of a fully warmed model on AOL).
        restore = self._trie.restore_key
        neg = self._neg_counts
        pairs = self._pairs
        out = []
        for i in row.tolist():
            if i < 0:  # -1 pads only the tail of a row
                break
            pair = pairs[i]
            if pair is None:
                pair = pairs[i] = (restore(i), -neg[i])
            out.append(pair)
        return out

    def _heavy_row(self, heavy: int) -> list[tuple[str, int]]:
        # Decoded lazily and kept: at most n_heavy rows. Concurrent first requests may decode
        # the same row or query twice; both store equal values, so no lock is needed.
        rows = self._row_cache.get(heavy)
        if rows is None:
            rows = self._decode_row(self._heavy_top[heavy])
            self._row_cache[heavy] = rows
        return rows

    def warmup(self) -> None:
        """Decode every stored row now, so no request pays for the first decode of its prefix."""
        for heavy in range(self.n_heavy):
            self._heavy_row(heavy)

    def _enumerate(self, prefix: str, k: int) -> list[tuple[str, int]]:
        count_map = self._count_map
        if count_map is not None:
            # After warm-up: the prefix's block of the sorted list (a slice) instead of a marisa
            # prefix walk (cheaper for the light prefixes that come here).
            queries, lo, hi = self._block(prefix)
            ranked = sorted(queries[lo:hi], key=lambda q: (-count_map[q], q))
            return [(q, count_map[q]) for q in ranked[:k]]
        neg = self._neg_counts
        ranked = sorted([(neg[i], q) for q, i in self._trie.items(prefix)])
        return [(q, -c) for c, q in ranked[:k]]

    def _enumerate_all(self, k: int) -> list[tuple[str, int]]:
        # Everything with a count >= the k-th largest count, then an exact sort of that tie group.
        counts = self._counts
        n = counts.shape[0]
        if k >= n:
            keys = np.arange(n)
        else:
            kth = np.partition(counts, n - k)[n - k]
            keys = np.flatnonzero(counts >= kth)
        restore = self._trie.restore_key
        ranked = sorted(((-int(counts[i]), restore(int(i))) for i in keys))
        return [(q, -c) for c, q in ranked[:k]]

    def top_k(self, prefix: str, k: int) -> list[tuple[str, int]]:
        """Exact top-``k`` training queries that start with ``prefix``.

        Parameters
        ----------
        prefix : str
            Normalised prefix; ``""`` gives the globally most popular queries. A query equal to the
            prefix counts as a completion of it.
        k : int, >= 0

        Returns
        -------
        list of (query, count)
            At most ``k``, by count descending, ties by query ascending.

        Raises
        ------
        ValueError
            ``prefix`` not a str, ``k`` not an int or negative.

        Notes
        -----
        Heavy prefix and ``k <= n_stored``: the stored row. Light prefix: enumerate its at most
        ``heavy_threshold`` completions and sort. Heavy prefix with ``k > n_stored``: enumerate every
        completion (slow, exact).
        """
        prefix = _check_prefix(prefix)
        k = _check_int("k", k, 0)
        if k == 0:
            return []
        if not prefix:
            if k <= self.n_stored:
                return self._global_rows[:k]
            return self._enumerate_all(k)
        heavy = self._heavy_trie.get(prefix)
        if heavy is not None and k <= self.n_stored:
            return self._heavy_row(heavy)[:k]
        return self._enumerate(prefix, k)

    def top_k_backoff(self, prefix: str, k: int) -> list[tuple[str, int, int]]:
        """Top-``k`` completions of ``prefix``, backing off to shorter prefixes to fill ``k``.

        Completions of the full prefix come first; while fewer than ``k`` have been found, the next
        shorter prefix (``prefix[:-1]``, ``prefix[:-2]``, ... down to ``""``) adds its best
        completions not returned yet.

        Returns
        -------
        list of (query, count, matched_len)
            ``matched_len`` is the length (characters) of the prefix that produced the completion;
            non-increasing along the list, each group by count descending, ties by query.

        Raises
        ------
        ValueError
            ``prefix`` not a str, ``k`` not an int or negative.
        """
        prefix = _check_prefix(prefix)
        k = _check_int("k", k, 0)
        out: list[tuple[str, int, int]] = []
        seen: set[str] = set()
        n_read = -1  # completions of the last prefix read (fewer than k, all in `out` by now)
        for length in range(len(prefix), -1, -1):
            if len(out) >= k:
                break
            sub = prefix[:length]
            # A shorter prefix with no more completions than the last one read has nothing new:
            # one binary search instead of reading its top k again.
            if n_read >= 0 and not self.has_at_least(sub, n_read + 1):
                continue
            # Everything returned so far completes `sub` too, so its top k holds at least
            # k - len(out) new completions whenever `sub` has that many.
            top = self.top_k(sub, k)
            n_read = len(top)
            for query, count in top:
                if query not in seen:
                    seen.add(query)
                    out.append((query, count, length))
                    if len(out) == k:
                        break
        return out

    # ------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)`` for ``qac.artifacts``.

        Arrays: ``trie`` and ``heavy_trie`` uint8 (``marisa_trie.Trie.tobytes()``), ``counts`` int64
        (n_queries,) by key id, ``heavy_top`` int32 (n_heavy, n_stored), ``global_top`` int32
        (n_stored,); query key ids, -1 padded.
        """
        params = {
            "format_version": FORMAT_VERSION,
            "n_stored": self.n_stored,
            "heavy_threshold": self.heavy_threshold,
            "n_queries": self.n_queries,
            "n_heavy": self.n_heavy,
        }
        arrays = {
            "trie": np.frombuffer(self._trie.tobytes(), dtype=np.uint8).copy(),
            "heavy_trie": np.frombuffer(self._heavy_trie.tobytes(), dtype=np.uint8).copy(),
            "counts": np.asarray(self._counts, dtype=np.int64),
            "heavy_top": np.asarray(self._heavy_top, dtype=np.int32),
            "global_top": np.asarray(self._global_top, dtype=np.int32),
        }
        return params, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "MostPopularCompletion":
        """Rebuild from :meth:`to_arrays` output; arrays may be read-only memory maps (not written).

        Raises
        ------
        ValueError
            Unknown ``format_version``, a missing array, or shapes/dtypes inconsistent with params.
        """
        version = params.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"format_version must be {FORMAT_VERSION}, got {version!r}")
        for name in ("trie", "heavy_trie", "counts", "heavy_top", "global_top"):
            if name not in arrays:
                raise ValueError(f"arrays is missing {name!r}")
        trie = marisa_trie.Trie().frombytes(bytes(np.asarray(arrays["trie"], dtype=np.uint8)))
        heavy_trie = marisa_trie.Trie().frombytes(bytes(np.asarray(arrays["heavy_trie"], dtype=np.uint8)))
        if len(trie) != params.get("n_queries") or len(heavy_trie) != params.get("n_heavy"):
            raise ValueError(
                f"n_queries/n_heavy are {params.get('n_queries')}/{params.get('n_heavy')} but the tries "
                f"hold {len(trie)}/{len(heavy_trie)} keys"
            )
        return cls(
            trie,
            arrays["counts"],
            heavy_trie,
            arrays["heavy_top"],
            arrays["global_top"],
            n_stored=params.get("n_stored"),
            heavy_threshold=params.get("heavy_threshold"),
        )
