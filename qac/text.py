"""Query and prefix normalisation (request path).

The canonical form follows the PECOS qp2q query preprocessing (Yadav et al., "Session-aware query
auto-completion using extreme multi-label ranking", KDD 2021, code in ``pecos/examples/qp2q``):
split the raw query on whitespace, split every token on ``'.'``, delete ``\\W+`` from every piece,
join the pieces with ``" "``, lowercase and strip.

Two deliberate refinements make the result *canonical* (so ``normalize_query`` is idempotent and
two spellings of one query compare equal):

* qp2q leaves two or more spaces where a piece became empty (``"a - b"`` -> ``"a  b"``, ``"a..b"``
  -> ``"a  b"``); here runs of spaces collapse to one (``"a b"``).
* ``str.lower`` can emit a non-word character for a few code points (``"İ".lower()`` is ``"i"`` +
  U+0307 COMBINING DOT ABOVE, which ``\\W`` matches); such characters are deleted after lowercasing.
  For every input whose qp2q output is already free of them the two outputs are identical.

Both functions are pure and called once per request; ASCII input (nearly all traffic) takes one
``str.translate`` pass plus a split/join.
"""
from __future__ import annotations

import re

__all__ = ["normalize_query", "normalize_prefix"]

# Whitespace exactly as ``str.split()`` sees it (``\s`` and ``str.isspace`` share one Unicode table),
# plus the '.' qp2q splits on.
_SEPARATORS = re.compile(r"[\s.]+")
# After separators became " ", everything else that is not a word character is deleted.
_NON_WORD = re.compile(r"[^\w ]+")


def _ascii_table() -> dict[int, int | None]:
    table: dict[int, int | None] = {}
    for code in range(128):
        char = chr(code)
        if char.isspace() or char == ".":
            table[code] = ord(" ")
        elif re.fullmatch(r"\w", char) is None:
            table[code] = None
        elif char != char.lower():
            table[code] = ord(char.lower())
    return table


_ASCII_TABLE = _ascii_table()


def normalize_query(raw: str) -> str:
    """Return the canonical form of a query (PECOS qp2q normalisation, spaces collapsed).

    Parameters
    ----------
    raw : str
        Query as typed or logged; any Unicode.

    Returns
    -------
    str
        Lowercase word characters (``\\w``: Unicode letters, digits, ``_``) separated by single
        spaces, no leading or trailing space. May be ``""`` (e.g. for ``"..."`` or ``" - "``).

    Notes
    -----
    ``normalize_query(normalize_query(q)) == normalize_query(q)`` for every string.
    """
    if raw.isascii():
        return " ".join(raw.translate(_ASCII_TABLE).split())
    text = _NON_WORD.sub("", _SEPARATORS.sub(" ", raw)).lower()
    if not text.isascii() and _NON_WORD.search(text) is not None:
        text = _NON_WORD.sub("", text)
    return " ".join(text.split())


def normalize_prefix(raw: str) -> str:
    """Return the canonical form of a typed prefix.

    Same as :func:`normalize_query`, but when ``raw`` ends with whitespace or ``'.'`` and the
    normalised text is non-empty, exactly one trailing space is kept: the user has finished a word,
    so ``"new "`` must not complete to ``"newark"``.

    For every normalised query ``q`` and cut point ``i``, ``normalize_prefix(q[:i]) == q[:i]``.

    Parameters
    ----------
    raw : str
        Prefix as typed.

    Returns
    -------
    str
        Normalised prefix, possibly ``""``.
    """
    text = normalize_query(raw)
    if text and (raw[-1] == "." or raw[-1].isspace()):
        return text + " "
    return text
