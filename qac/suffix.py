"""Synthetic completions from popular query suffixes, for prefixes no training query completes.

Mitra & Craswell, "Query Auto-Completion for Rare Prefixes", CIKM 2015: most prefixes typed in a
real log are rare, and the query the user ends up issuing was often never seen whole, but its end
("... advice", "... york city") is common. Every training query contributes each of its word-boundary
suffixes ("new york city" -> "new york city", "york city", "city") with the query's count; a
prefix ``head + tail`` (``head`` ending at a word boundary of the prefix) is completed to
``head + s`` for the most popular suffixes ``s`` that start with ``tail``. Longer tails (more typed
context) are tried first.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from qac.mpc import MostPopularCompletion


def query_suffixes(query: str) -> list[str]:
    """Word-boundary suffixes of a normalised query, longest first (the query itself included)."""
    words = query.split(" ")
    return [" ".join(words[i:]) for i in range(len(words))]


class SuffixCompletion:
    """Most-popular completion over query suffixes, used to synthesise unseen completions.

    Parameters
    ----------
    index : MostPopularCompletion
        Top-k structure over the distinct suffixes with their summed counts.
    """

    def __init__(self, index: MostPopularCompletion):
        self.index = index

    @classmethod
    def build(cls, query_counts: Iterable[tuple[str, int]]) -> "SuffixCompletion":
        """Build from ``(normalised query, count)`` pairs (count = training query events)."""
        counts: Counter = Counter()
        for q, c in query_counts:
            for s in query_suffixes(q):
                counts[s] += c
        suffixes = sorted(counts)
        return cls(MostPopularCompletion.build(suffixes, np.fromiter((counts[s] for s in suffixes),
                                                                     dtype=np.int64, count=len(suffixes))))

    def __len__(self) -> int:
        return len(self.index)

    def complete(self, prefix: str, k: int, exclude: set[str] | frozenset = frozenset()) -> list[tuple[str, int, int]]:
        """Up to ``k`` synthetic completions of a normalised ``prefix``.

        Returns
        -------
        list of (completion, suffix count, n_context_chars), best first: completions from the longest
        tail (most typed context) first, each tail's suffixes by count; completions in ``exclude``
        and duplicates are skipped. Every completion starts with ``prefix``.
        """
        out: list[tuple[str, int, int]] = []
        if k <= 0:
            return out
        taken = set(exclude)
        start = prefix.find(" ") + 1
        while 0 < start < len(prefix):
            head, tail = prefix[:start], prefix[start:]
            for s, c in self.index.top_k(tail, k):
                text = head + s
                if text not in taken:
                    taken.add(text)
                    out.append((text, c, len(tail)))
                    if len(out) == k:
                        return out
            start = prefix.find(" ", start) + 1
        return out

    def warmup(self) -> None:
        self.index.warmup()

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        return self.index.to_arrays()

    @classmethod
    def from_arrays(cls, params: dict, arrays) -> "SuffixCompletion":
        return cls(MostPopularCompletion.from_arrays(params, arrays))
