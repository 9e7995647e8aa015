"""Search-side text analysis: how item texts and queries become index terms, per catalogue.

Two analyzers, chosen per catalogue at build time and recorded in the artifact (arm params, text
index params, ``params["analyzer"]`` of the search artifact), so serving analyses exactly as the
index was built:

- ``"qp2q"`` (AOL, and the default of every artifact that predates this module): the completion
  side's :func:`qac.text.normalize_query`, terms = its whitespace tokens. Unchanged behaviour.
- ``"product"`` (Home Depot): product titles and search terms are full of sizes and hyphenated
  compounds that ``normalize_query`` glues together (``"1/2-in."`` -> ``"12in"``,
  ``"12-Gauge"`` -> ``"12gauge"``). This analyzer

  1. lowercases, decodes the ``&amp;`` the catalogue carries, deletes apostrophes (``"men's"`` -> ``"mens"``), reads a double quote after a
     digit as inches (``3"`` -> ``3 in``) and gives a bare leading decimal point its zero
     (``".75"`` -> ``"0.75"``);
  2. cuts the text into maximal runs of letters and numbers, where a number may carry one decimal
     point or one fraction slash (``1.9``, ``1/2``): every other character separates, and so does
     a change between digits and letters (``"2x4"`` -> ``2 x 4``, ``"4-pack"`` -> ``4 pack``,
     ``"1-1/4"`` -> ``1 1/4``); trailing decimal zeros go (``"8.0"`` -> ``8``).

  That gives :meth:`Analyzer.normalize`, the canonical *surface* form (a fixed point of itself,
  used as the query key of the catalogue: query counts, memory index, evaluation). The index
  terms (:meth:`Analyzer.terms`) then map unit words to one spelling (``inches``/``inch`` ->
  ``in``, ``feet``/``foot`` -> ``ft``, ``gallons`` -> ``gal``, ...) and strip plurals with a
  light S-stemmer (Harman, "How effective is suffixing?", JASIS 1991: ``-ies`` -> ``-y`` unless
  ``-eies``/``-aies``; ``-es`` -> ``-e`` unless ``-aes``/``-ees``/``-oes``, but ``-es`` dropped after a sibilant; ``-s`` dropped unless
  ``-us``/``-ss``), applied to alphabetic words of four or more letters.

:meth:`Analyzer.compounds` adds, for BM25, the concatenation of every two adjacent alphabetic
terms of at least three letters (``"door bell"`` -> ``doorbell``, ``"flash lights"`` ->
``flashlight``), so a compound written as one word or two matches either way.

Invariants (tested): ``normalize(normalize(x)) == normalize(x)`` and
``terms(normalize(x)) == terms(x)``, so a query may be normalised once by the service and again by
an arm without changing its terms.
"""
from __future__ import annotations

import re
from functools import lru_cache

from qac.text import normalize_query

__all__ = ["ANALYZERS", "Analyzer", "get_analyzer", "s_stem", "UNIT_TERMS"]

ANALYZERS = ("qp2q", "product")

_INCH_QUOTE = re.compile(r'(?<=\d)\s*["\u201d\u2033]')
_LEADING_POINT = re.compile(r"(?<![\w.])\.(?=\d)")
_APOSTROPHES = re.compile(r"['\u2019\u2032`]")
# A number with at most one decimal point or fraction slash, or a run of letters (no digits, no "_").
_TOKEN = re.compile(r"\d+(?:[./]\d+)?|[^\W\d_]+")

UNIT_TERMS = {
    "inch": "in", "inches": "in", "in": "in",
    "foot": "ft", "feet": "ft", "ft": "ft",
    "gallon": "gal", "gallons": "gal", "gal": "gal",
    "pound": "lb", "pounds": "lb", "lbs": "lb", "lb": "lb",
    "ounce": "oz", "ounces": "oz", "oz": "oz",
    "volt": "v", "volts": "v",
    "watt": "w", "watts": "w",
    "amps": "amp", "amperes": "amp", "ampere": "amp",
    "millimeter": "mm", "millimeters": "mm",
    "centimeter": "cm", "centimeters": "cm",
    "yard": "yd", "yards": "yd",
    "quart": "qt", "quarts": "qt",
    "sqft": "sq ft",
}


def s_stem(word: str) -> str:
    """Harman's S-stemmer (1991) on one lowercase word; words shorter than 4 letters or with a
    non-letter are returned as they are.

    ``"hinges"`` -> ``"hinge"``, ``"batteries"`` -> ``"battery"``, ``"glass"`` -> ``"glass"``,
    ``"cactus"`` -> ``"cactus"``, ``"shoes"`` -> ``"shoe"`` (``-oes`` falls through to the
    ``-s`` rule).
    One refinement: after a sibilant (``-xes``, ``-ches``, ``-shes``, ``-sses``, ``-zzes``) the whole
    ``-es`` goes, so ``"boxes"`` meets ``"box"`` (Harman's rule would give ``"boxe"``).
    """
    if len(word) < 4 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith(("xes", "ches", "shes", "sses", "zzes")):
        return word[:-2]
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def _strip_decimal_zeros(tok: str) -> str:
    if "." not in tok:
        return tok
    head, tail = tok.split(".", 1)
    tail = tail.rstrip("0")
    return f"{head}.{tail}" if tail else head


class Analyzer:
    """One named analyzer (see the module docstring). Stateless; get one with :func:`get_analyzer`.

    Parameters
    ----------
    name : {"qp2q", "product"}

    Raises
    ------
    ValueError
        Unknown name.
    """

    def __init__(self, name: str = "qp2q") -> None:
        if name not in ANALYZERS:
            raise ValueError(f"analyzer: must be one of {ANALYZERS}, got {name!r}")
        self.name = name
        self._terms_cache: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"Analyzer({self.name!r})"

    def normalize(self, text: str) -> str:
        """Canonical surface form of ``text`` (single spaces, lowercase; may be ``""``)."""
        if self.name == "qp2q":
            return normalize_query(text)
        s = _APOSTROPHES.sub("", text.lower().replace("&amp;", "&"))
        s = _INCH_QUOTE.sub(" in ", s)
        s = _LEADING_POINT.sub("0.", s)
        return " ".join(_strip_decimal_zeros(t) for t in _TOKEN.findall(s))

    def terms(self, text: str) -> list[str]:
        """Index terms of ``text`` in order, repeats kept (term frequency). ``text`` may be raw."""
        if self.name == "qp2q":
            return normalize_query(text).split()
        cached = self._terms_cache.get(text)
        if cached is not None:
            return list(cached)
        out: list[str] = []
        for tok in self.normalize(text).split():
            unit = UNIT_TERMS.get(tok)
            if unit is not None:
                out.extend(unit.split())
            else:
                out.append(s_stem(tok))
        if len(self._terms_cache) >= 8192:
            self._terms_cache.clear()
        self._terms_cache[text] = out
        return list(out)

    @staticmethod
    def compounds(terms: list[str]) -> list[str]:
        """Concatenations of adjacent alphabetic ``terms`` both of length >= 3, in order."""
        return [a + b for a, b in zip(terms, terms[1:])
                if len(a) >= 3 and len(b) >= 3 and a.isalpha() and b.isalpha()]


@lru_cache(maxsize=None)
def get_analyzer(name: str = "qp2q") -> Analyzer:
    """The shared :class:`Analyzer` of that name (``ValueError`` for an unknown name)."""
    return Analyzer(name)
