"""Open catalogues: items first clicked while serving become catalogue items online.

On AOL an item is a clicked site, and a fifth of a week's clicks are on sites nobody clicked in the
training log (README, "Search (dev splits)"). With a closed catalogue such a click can never be
retrieved, however often it recurs. An *open* catalogue adds the site at its first Feedback click
(next item id, text = its URL tokens, :func:`retrieval.catalog.url_text`); from then on the arms that
learn from feedback (memory index, user history, popularity, and the stacked fusion arm over them)
can return it, and the ranker scores it like any item (text features against the build's
vocabulary and IDF, zero build-time item statistics). Arms built offline (BM25, the semantic and
char-trigram indexes) never return a grown item: their indexes end at the build's items.

Growth is driven only by committed feedback events (``serving.search_service.SearchOnlineState``),
so replaying the event log reproduces the grown items exactly, and snapshots carry their keys.

Memory bound: at most :attr:`CatalogGrowth.max_grown_items` items are added after the build. Once
the cap is reached, clicks on further new sites are still committed (the next build reads them
from the log and includes the sites) but add no item until then. Per grown item the service holds
its key and text (at most ``max_key_chars`` characters each), one popularity count and its token
ids and character trigrams for the ranker; the clicks on it live in the same online click
statistics as every other item's.

Home Depot products stay a closed catalogue (``max_grown_items = 0``): an unknown product is an
error, as before.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from retrieval.catalog import normalize_url, url_text

__all__ = ["CatalogGrowth", "CLOSED", "AOL_GROWTH", "check_site_key", "GrownTextIndex"]


@dataclass(frozen=True)
class CatalogGrowth:
    """How a catalogue may grow while serving (saved in the search artifact's build config).

    Parameters
    ----------
    max_grown_items : int >= 0
        Items that may be added after the build; 0 = a closed catalogue.
    max_key_chars : int >= 1
        Longest key (normalised URL) accepted for a new item, in characters; the Feedback RPC
        bounds ``clicked_item_id`` to 256 characters as well.

    Raises
    ------
    ValueError
        A bound of the wrong type or out of range.
    """

    max_grown_items: int = 0
    max_key_chars: int = 256

    def __post_init__(self) -> None:
        for name, low in (("max_grown_items", 0), ("max_key_chars", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"CatalogGrowth.{name} must be an int >= {low}, got {value!r}")

    @property
    def open(self) -> bool:
        """True when items may be added while serving."""
        return self.max_grown_items > 0


CLOSED = CatalogGrowth()
# 100,000 sites, about the build's catalogue (95k sites on the dev split; its test week added 6.1k).
# A grown site costs about 0.5 KB (catalogue entry + the ranker's token ids and trigrams, measured
# with tracemalloc over 20k 18-character keys), so ~50 MB at the cap; a few KB at the 256-character
# key bound (trigrams are 8 bytes each), so well under 1 GB at the cap in the worst case.
AOL_GROWTH = CatalogGrowth(max_grown_items=100_000)


def check_site_key(key, max_chars: int) -> str:
    """Validate the key of a site to be added: a non-empty normalised URL with a word in it.

    Parameters
    ----------
    key : str
        Must equal :func:`retrieval.catalog.normalize_url` of itself (lowercase, no scheme, no
        leading ``www.``, no trailing ``/``), hold no whitespace or control character, hold at least
        one letter or digit (its text, :func:`retrieval.catalog.url_text`, is not empty) and be at
        most ``max_chars`` characters long.
    max_chars : int

    Returns
    -------
    str
        ``key``.

    Raises
    ------
    ValueError
        Saying what is wrong (and, for an unnormalised URL, its normalised form).
    """
    if not isinstance(key, str):
        raise ValueError(f"expected a str, got {type(key).__name__}")
    if not key:
        raise ValueError("empty site key")
    if len(key) > max_chars:
        raise ValueError(f"site key longer than {max_chars} characters ({len(key)})")
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise ValueError(f"site key {key!r} holds whitespace or control characters")
    norm = normalize_url(key)
    if norm != key:
        raise ValueError(f"site key {key!r} is not a normalised URL (expected {norm!r}: lowercase, "
                         "no scheme, no leading www., no trailing /)")
    if not url_text(key):
        raise ValueError(f"site key {key!r} holds no letter or digit")
    return key


class _Buffer:
    """A 1-d array that grows by appending, with doubling capacity; ``view()`` is the filled prefix.

    Appends only write past the filled prefix (or into a new buffer), so a view taken earlier never
    changes under a reader."""

    def __init__(self, dtype, initial: Sequence = ()) -> None:
        init = np.asarray(initial, dtype=dtype)
        self._buf = np.empty(max(16, 2 * init.size), dtype=dtype)
        self._buf[:init.size] = init
        self._n = init.size

    def append(self, values) -> None:
        values = np.asarray(values, dtype=self._buf.dtype)
        need = self._n + values.size
        if need > self._buf.size:
            bigger = np.empty(max(need, 2 * self._buf.size), dtype=self._buf.dtype)
            bigger[:self._n] = self._buf[:self._n]
            self._buf = bigger
        self._buf[self._n:need] = values
        self._n = need

    def view(self) -> np.ndarray:
        return self._buf[:self._n]


class GrownTextIndex:
    """The ranker's text index (``retrieval.ranker_features.ItemTextIndex``) of the grown items.

    Grown item ``j`` (item id ``n_base + j``) is indexed against the *build's* vocabulary and IDF:
    its terms (by the base index's analyzer) become the base term ids; a term outside that
    vocabulary (new sites often bring new words) gets an id past it, and a query holding that term
    matches it with the IDF of an unseen term, as
    :func:`retrieval.ranker_features.reference_candidate_features` defines it for a term outside the
    IDF table (and, as there, a query with such a term never counts as a phrase match). Character
    trigrams are taken as the build takes them; the average document length stays the build's. So
    a grown item's text features are the reference's with the build's statistics.

    Parameters
    ----------
    base : ItemTextIndex
        The served (build's) index; never written. Without the match block (``match_features``
        False: the AOL ranker's), whose kernel reads per-term flags of the build's vocabulary only.

    Raises
    ------
    ValueError
        ``base`` has the match block.

    Notes
    -----
    :meth:`index` returns an index-shaped object (a shallow copy of ``base`` with the grown items'
    arrays and ``n_items`` = number of grown items) for :func:`retrieval.ranker_features.candidate_features`
    on *local* ids ``item_id - n_base``. Appends never change an index returned earlier.
    """

    def __init__(self, base) -> None:
        from retrieval.analyzer import get_analyzer

        if base.match_features:
            raise ValueError("base: a text index with the match block cannot grow (its term flags end at the build)")
        self.base = base
        self.n_base = int(base.n_items)
        self._terms = get_analyzer(base.analyzer).terms
        self._tok = _Buffer(np.int32)
        self._tok_ptr = _Buffer(np.int64, [0])
        self._tri = _Buffer(np.int64)
        self._tri_ptr = _Buffer(np.int64, [0])
        self._extra: dict[str, int] = {}  # terms outside the build's vocabulary -> ids from n_terms
        self._lock = threading.Lock()
        self._index = self._make_index()

    @property
    def n_grown(self) -> int:
        return self._index.n_items

    def _make_index(self):
        idx = copy.copy(self.base)
        idx.tok_flat, idx.tok_ptr = self._tok.view(), self._tok_ptr.view()
        idx.tri_flat, idx.tri_ptr = self._tri.view(), self._tri_ptr.view()
        idx.n_items = idx.tok_ptr.size - 1
        idx.query_arrays = self._query_arrays
        return idx

    def _query_arrays(self, query: str):
        """The base index's query arrays with the query's out-of-vocabulary terms given the ids of
        the same terms in grown items (``q_seq`` keeps ``-1`` for them: no phrase match)."""
        arrays = self.base.query_arrays(query)
        q_terms = arrays[0]
        if not self._extra or q_terms.size == 0 or q_terms.min() >= 0:
            return arrays
        q_terms = q_terms.copy()
        distinct = list(dict.fromkeys(self._terms(query)))
        for j in np.flatnonzero(q_terms < 0).tolist():
            q_terms[j] = self._extra.get(distinct[j], -1)
        return (q_terms, *arrays[1:])

    def append(self, texts: Sequence[str]) -> None:
        """Index ``texts`` as the next grown items (ids ``n_base + n_grown``, ...)."""
        from retrieval.ranker_features import _trigram_keys

        term_id = self.base.term_id
        n_terms = len(self.base.vocab)
        with self._lock:
            for text in texts:
                tokens = self._terms(text)
                for t in tokens:
                    if t not in term_id and t not in self._extra:
                        self._extra[t] = n_terms + len(self._extra)
                self._tok.append([term_id.get(t, self._extra.get(t)) for t in tokens])
                self._tok_ptr.append([self._tok_ptr.view()[-1] + len(tokens)])
                tri = _trigram_keys(" ".join(tokens))
                self._tri.append(tri)
                self._tri_ptr.append([self._tri_ptr.view()[-1] + len(tri)])
            self._index = self._make_index()

    def index(self):
        """The grown items' index as of now (see the class notes)."""
        return self._index
