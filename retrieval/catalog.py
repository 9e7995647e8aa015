"""Item catalogues, graded judgments and click events for the search half (build code).

Two sources of items and interactions (``../shared/data``, see its README):

- **Home Depot** product search (Kaggle 2016): items are products (key = ``product_uid``, text = the
  product title normalised by the catalogue's search analyzer, :mod:`retrieval.analyzer`); interactions are graded human judgments (grade 1..3, the mean of about
  three raters) of (search term, product) pairs.
- **AOL 2006** click log: items are the clicked sites, keyed by their normalised URL
  (:func:`normalize_url`: lowercase, no scheme, no leading ``www.``, no trailing ``/``) with the URL's
  alphanumeric tokens as text (:func:`url_text`); interactions are the click rows
  (:func:`click_events`, one per (query event, clicked URL)).

An item id is the ``int32`` position of the item in its :class:`Catalog`. Every text here is
normalised by the catalogue's search analyzer (``retrieval.analyzer``; AOL and the default:
:func:`qac.text.normalize_query`), the same function the request path applies to a query of that
catalogue, so a query token and an item token compare equal exactly when they should.
"""
from __future__ import annotations

import csv
import gzip
import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from qac.artifacts import arrays_to_strings, strings_to_arrays
from qac.logs import LogReadResult, QueryEvent
from retrieval.analyzer import get_analyzer

__all__ = [
    "Catalog",
    "normalize_url",
    "url_text",
    "load_homedepot_catalog",
    "Judgment",
    "load_judgments",
    "split_by_query",
    "ClickEvent",
    "click_events",
    "aol_catalog",
    "expanded_texts",
]

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://")
# Unicode letters and digits; "_" is a separator in URLs (``\w`` would keep it).
_URL_TOKEN = re.compile(r"[^\W_]+")
_HD_PRODUCTS_HEADER = ["product_uid", "product_title"]
_HD_JUDGMENTS_HEADER = ["search_term", "product_uid", "relevance"]


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """Return the catalogue key of a clicked URL.

    Lowercase, surrounding whitespace stripped, scheme (``http://``, ``https://``, ...) removed, one
    leading ``www.`` removed, trailing ``/`` removed: ``"http://www.Example.com/"`` ->
    ``"example.com"``. Paths are kept (``"http://a.org/b/"`` -> ``"a.org/b"``); the AOL log is
    domain-level, so they rarely occur.

    Parameters
    ----------
    url : str

    Returns
    -------
    str
        Possibly ``""`` (e.g. for ``"http://"``); callers drop empty keys.

    Raises
    ------
    TypeError
        ``url`` is not a str.
    """
    if not isinstance(url, str):
        raise TypeError(f"url: expected str, got {type(url).__name__}")
    key = _SCHEME.sub("", url.strip().lower(), count=1)
    if key.startswith("www."):
        key = key[4:]
    return key.rstrip("/")


def url_text(key: str) -> str:
    """Return the text of a URL item: its alphanumeric tokens joined by single spaces.

    ``"en.wikipedia.org"`` -> ``"en wikipedia org"``; ``"my_site.co.uk/a-b"`` ->
    ``"my site co uk a b"``. Tokens are maximal runs of Unicode letters and digits, so the result is
    a fixed point of :func:`qac.text.normalize_query` for a lowercase key.

    Parameters
    ----------
    key : str
        A normalised URL (:func:`normalize_url`).

    Returns
    -------
    str
    """
    if not isinstance(key, str):
        raise TypeError(f"key: expected str, got {type(key).__name__}")
    return " ".join(_URL_TOKEN.findall(key.lower()))


# ---------------------------------------------------------------------------------------------
# Catalog
# ---------------------------------------------------------------------------------------------


class Catalog:
    """The items a search arm can return: item id = position.

    Parameters
    ----------
    keys : sequence of str, length n_items
        Distinct external keys (product uid, normalised URL).
    texts : sequence of str, length n_items
        Normalised item texts (may be ``""``).

    Raises
    ------
    ValueError
        Lengths differ, a key repeats, or more than 2**31 - 1 items.
    TypeError
        A key or text is not a str.
    """

    def __init__(self, keys: Sequence[str], texts: Sequence[str]) -> None:
        keys = list(keys)
        texts = list(texts)
        if len(keys) != len(texts):
            raise ValueError(f"texts: expected {len(keys)} texts (one per key), got {len(texts)}")
        if len(keys) > np.iinfo(np.int32).max:
            raise ValueError(f"keys: at most {np.iinfo(np.int32).max} items, got {len(keys)}")
        for name, values in (("keys", keys), ("texts", texts)):
            if not set(map(type, values)) <= {str}:
                bad = next(i for i, v in enumerate(values) if not isinstance(v, str))
                raise TypeError(f"{name}[{bad}]: expected str, got {type(values[bad]).__name__}")
        self._keys = keys
        self._texts = texts
        self._id_of = {key: i for i, key in enumerate(keys)}
        if len(self._id_of) != len(keys):
            seen: set[str] = set()
            dup = next(k for k in keys if k in seen or seen.add(k))
            raise ValueError(f"keys: duplicate key {dup!r}")

    @property
    def n_items(self) -> int:
        """Number of items."""
        return len(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> list[str]:
        """Item keys in id order (a copy)."""
        return list(self._keys)

    @property
    def texts(self) -> list[str]:
        """Item texts in id order (a copy)."""
        return list(self._texts)

    def key(self, item_id: int) -> str:
        """Key of item ``item_id``; ``IndexError`` when out of range."""
        if not 0 <= item_id < len(self._keys):
            raise IndexError(f"item_id {item_id} out of range [0, {len(self._keys)})")
        return self._keys[item_id]

    def text(self, item_id: int) -> str:
        """Text of item ``item_id``; ``IndexError`` when out of range."""
        if not 0 <= item_id < len(self._keys):
            raise IndexError(f"item_id {item_id} out of range [0, {len(self._keys)})")
        return self._texts[item_id]

    def add(self, key: str, text: str) -> int:
        """Append an item (an open catalogue's site first clicked while serving, :mod:`retrieval.growth`).

        Returns its id, ``n_items`` before the call. Readers on other threads see either the
        catalogue before or after (the text and id are in place before the key resolves).

        Raises
        ------
        TypeError
            ``key`` or ``text`` is not a str.
        ValueError
            ``key`` is already an item, or the catalogue holds 2**31 - 1 items.
        """
        for name, value in (("key", key), ("text", text)):
            if not isinstance(value, str):
                raise TypeError(f"{name}: expected str, got {type(value).__name__}")
        if key in self._id_of:
            raise ValueError(f"key: {key!r} is already item {self._id_of[key]}")
        item_id = len(self._keys)
        if item_id >= np.iinfo(np.int32).max:
            raise ValueError(f"keys: at most {np.iinfo(np.int32).max} items")
        self._texts.append(text)
        self._keys.append(key)
        self._id_of[key] = item_id
        return item_id

    def id_of(self, key: str) -> int | None:
        """Item id of ``key``, or ``None`` when the key is not in the catalogue."""
        return self._id_of.get(key)

    def ids_of(self, keys: Iterable[str]) -> np.ndarray:
        """Item ids of ``keys`` as int32, ``-1`` for unknown keys."""
        get = self._id_of.get
        return np.array([get(k, -1) for k in keys], dtype=np.int32)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Catalog):
            return NotImplemented
        return self._keys == other._keys and self._texts == other._texts

    def __repr__(self) -> str:
        return f"Catalog(n_items={self.n_items})"

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``({"n_items"}, {keys_flat, keys_ptr, texts_flat, texts_ptr})``: UTF-8 uint8 + int64 ptr."""
        keys_flat, keys_ptr = strings_to_arrays(self._keys)
        texts_flat, texts_ptr = strings_to_arrays(self._texts)
        return {"n_items": self.n_items}, {
            "keys_flat": keys_flat, "keys_ptr": keys_ptr,
            "texts_flat": texts_flat, "texts_ptr": texts_ptr,
        }

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "Catalog":
        """Inverse of :meth:`to_arrays` (arrays may be read-only memory maps; they are decoded)."""
        keys = arrays_to_strings(arrays["keys_flat"], arrays["keys_ptr"])
        texts = arrays_to_strings(arrays["texts_flat"], arrays["texts_ptr"])
        if len(keys) != int(params["n_items"]):
            raise ValueError(f"n_items: params say {params['n_items']}, arrays hold {len(keys)} keys")
        return cls(keys, texts)


# ---------------------------------------------------------------------------------------------
# Home Depot
# ---------------------------------------------------------------------------------------------


def _read_tsv(path: str | os.PathLike, header: list[str]) -> list[list[str]]:
    """Rows of a gzip (or plain) UTF-8 TSV after checking its header; no quoting."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0] != header:
        got = rows[0] if rows else None
        raise ValueError(f"{path}: header is {got!r}, expected {header!r} (tab-separated)")
    body = rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: expected {len(header)} columns, got {len(row)}")
    return body


def load_homedepot_catalog(products_tsv_gz: str | os.PathLike, analyzer: str = "qp2q") -> Catalog:
    """Load the Home Depot product catalogue.

    Parameters
    ----------
    products_tsv_gz : path
        ``products.tsv.gz`` (gzip or plain UTF-8 TSV) with header ``product_uid  product_title``.
    analyzer : str
        Search analyzer whose ``normalize`` gives the item text (:mod:`retrieval.analyzer`; the
        default ``"qp2q"`` is :func:`qac.text.normalize_query`).

    Returns
    -------
    Catalog
        In file order; key = ``product_uid`` (stripped), text = the normalised ``product_title``.

    Raises
    ------
    ValueError
        Wrong header, wrong column count, or a repeated ``product_uid``.
    """
    rows = _read_tsv(products_tsv_gz, _HD_PRODUCTS_HEADER)
    normalize = get_analyzer(analyzer).normalize
    return Catalog([r[0].strip() for r in rows], [normalize(r[1]) for r in rows])


@dataclass(frozen=True)
class Judgment:
    """One graded (query, item) pair.

    Attributes
    ----------
    query : str
        Normalised search term.
    item_key : str
        Catalogue key (``product_uid``).
    grade : float
        Relevance, 1 (irrelevant) .. 3 (highly relevant) for Home Depot.
    """

    query: str
    item_key: str
    grade: float


def load_judgments(path: str | os.PathLike, analyzer: str = "qp2q") -> list[Judgment]:
    """Load graded judgments (Home Depot ``judgments.train.tsv.gz``).

    Parameters
    ----------
    path : path
        Gzip or plain UTF-8 TSV with header ``search_term  product_uid  relevance``.
    analyzer : str
        Search analyzer whose ``normalize`` gives the query (default ``"qp2q"``:
        :func:`qac.text.normalize_query`); use the one the catalogue's artifact was built with.

    Returns
    -------
    list of Judgment
        In file order, ``query`` = the normalised search term. Rows whose search term normalises
        to ``""`` are dropped (no arm can answer them). Repeated (query, item) pairs are kept as they
        are (two raw spellings may normalise to one query).

    Raises
    ------
    ValueError
        Wrong header or column count, or a relevance that is not a finite number.
    """
    rows = _read_tsv(path, _HD_JUDGMENTS_HEADER)
    normalize = get_analyzer(analyzer).normalize
    norm = {raw: normalize(raw) for raw in dict.fromkeys(r[0] for r in rows)}
    out = []
    for line, (term, uid, rel) in enumerate(rows, start=2):
        query = norm[term]
        if not query:
            continue
        try:
            grade = float(rel)
        except ValueError:
            raise ValueError(f"{path}:{line}: relevance is not a number: {rel!r}") from None
        if not np.isfinite(grade):
            raise ValueError(f"{path}:{line}: relevance is not finite: {rel!r}")
        out.append(Judgment(query, uid.strip(), grade))
    return out


def split_by_query(
    judgments: Sequence[Judgment], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Judgment], list[Judgment]]:
    """Split judgments so that every query goes wholly to train or to test.

    The distinct queries, sorted, are permuted by ``numpy.random.default_rng(seed)``; the first
    ``round(test_fraction * n_queries)`` of the permutation are test queries. Both sides keep the
    input order.

    Parameters
    ----------
    judgments : sequence of Judgment
    test_fraction : float
        In the open interval (0, 1).
    seed : int

    Returns
    -------
    (train, test) : two lists of Judgment

    Raises
    ------
    ValueError
        ``test_fraction`` outside (0, 1) or not a number; ``seed`` not an int.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)) \
            or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    queries = sorted({j.query for j in judgments})
    perm = np.random.default_rng(int(seed)).permutation(len(queries))
    n_test = int(round(float(test_fraction) * len(queries)))
    test_queries = {queries[i] for i in perm[:n_test].tolist()}
    train = [j for j in judgments if j.query not in test_queries]
    test = [j for j in judgments if j.query in test_queries]
    return train, test


# ---------------------------------------------------------------------------------------------
# AOL clicks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClickEvent:
    """One click: a query event of a user and one site it clicked.

    Attributes
    ----------
    user_id : str
    query : str
        Normalised query.
    timestamp : int
        Unix seconds of the query.
    item_key : str
        Normalised clicked URL (:func:`normalize_url`), never ``""``.
    """

    user_id: str
    query: str
    timestamp: int
    item_key: str


def click_events(log_read_result: LogReadResult | Iterable[QueryEvent]) -> list[ClickEvent]:
    """One :class:`ClickEvent` per (query event, distinct normalised clicked URL).

    Parameters
    ----------
    log_read_result : LogReadResult or iterable of QueryEvent
        As :func:`qac.logs.read_aol_log` returns it (events grouped by user, chronological within a
        user).

    Returns
    -------
    list of ClickEvent
        In event order (so time-ordered per user); the clicks of one event in log order. URLs that
        normalise to ``""`` are dropped, and two URLs of one event with the same key count once.
    """
    events = log_read_result.events if isinstance(log_read_result, LogReadResult) else log_read_result
    key_of: dict[str, str] = {}
    out: list[ClickEvent] = []
    for event in events:
        keys = []
        for url in event.click_urls:
            key = key_of.get(url)
            if key is None:
                key = key_of[url] = normalize_url(url)
            if key and key not in keys:
                keys.append(key)
        for key in keys:
            out.append(ClickEvent(event.user_id, event.query, event.timestamp, key))
    return out


def aol_catalog(click_events: Iterable[ClickEvent]) -> Catalog:
    """The catalogue of clicked sites.

    Parameters
    ----------
    click_events : iterable of ClickEvent

    Returns
    -------
    Catalog
        One item per distinct ``item_key``, ids in sorted key order (so the catalogue does not depend
        on the order of the events), text = :func:`url_text` of the key.
    """
    keys = sorted({c.item_key for c in click_events})
    return Catalog(keys, [url_text(k) for k in keys])


def expanded_texts(catalog: Catalog, click_events: Iterable[ClickEvent]) -> list[str]:
    """Item texts expanded with the queries that clicked each item (document expansion).

    ``text(item) + " " + " ".join(queries of the click events on item)``, one query per click event
    in event order, so a query that led to many clicks on an item weighs more in its term
    frequencies (BM25 saturates them with ``k1``). Pass only *training* clicks. Clicks on keys that
    are not in ``catalog`` are ignored.

    Parameters
    ----------
    catalog : Catalog
    click_events : iterable of ClickEvent

    Returns
    -------
    list of str, length catalog.n_items
        Normalised texts (single spaces, no leading/trailing space).
    """
    extra: list[list[str]] = [[] for _ in range(catalog.n_items)]
    id_of = catalog.id_of
    for c in click_events:
        i = id_of(c.item_key)
        if i is not None:
            extra[i].append(c.query)
    texts = catalog.texts
    return [" ".join(filter(None, [t, *e])) for t, e in zip(texts, extra)]
