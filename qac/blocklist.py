"""Blocklist of terms no completion may contain (applied at build time and at query time).

A term is one or more words; it is normalised like a query (``qac.text.normalize_query``) and
matches a completion when its words occur contiguously among the completion's words (whole words:
the term ``ass`` blocks ``ass hat`` but not ``class``).

File format: UTF-8 text, one term per line; blank lines and lines starting with ``#`` are ignored.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from qac.text import normalize_query


class BlocklistError(ValueError):
    """A blocklist file that cannot be read (names the file and line)."""


class Blocklist:
    """Whole-word term matcher.

    Parameters
    ----------
    terms : iterable of str
        Raw terms; each is normalised; terms that normalise to ``""`` are rejected.

    Raises
    ------
    BlocklistError
        A term that is empty after normalisation.
    """

    def __init__(self, terms: Iterable[str] = ()):
        single: set[str] = set()
        multi: set[str] = set()
        for i, raw in enumerate(terms):
            term = normalize_query(raw)
            if not term:
                raise BlocklistError(f"terms[{i}]: {raw!r} is empty after normalisation")
            (multi if " " in term else single).add(term)
        self._single = frozenset(single)
        self._multi = tuple(sorted(multi))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Blocklist":
        """Read a blocklist file (see the module docstring).

        Raises
        ------
        BlocklistError
            Unreadable file, invalid UTF-8, or a line that is empty after normalisation.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BlocklistError(f"{path}: cannot read blocklist: {exc}") from None
        terms = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not normalize_query(line):
                raise BlocklistError(f"{path}:{n}: {line!r} is empty after normalisation")
            terms.append(line)
        return cls(terms)

    @property
    def terms(self) -> list[str]:
        """Normalised terms, sorted."""
        return sorted(self._single | set(self._multi))

    def __len__(self) -> int:
        return len(self._single) + len(self._multi)

    def __bool__(self) -> bool:
        return len(self) > 0

    def union(self, other: "Blocklist") -> "Blocklist":
        return Blocklist(self.terms + other.terms)

    def blocks(self, text: str) -> bool:
        """Whether a normalised completion contains a blocked term (whole words)."""
        if not self:
            return False
        words = text.split()
        if self._single and not self._single.isdisjoint(words):
            return True
        if self._multi:
            padded = f" {' '.join(words)} "
            return any(f" {t} " in padded for t in self._multi)
        return False
