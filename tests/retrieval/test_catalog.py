"""retrieval.catalog: URL keys, catalogue persistence, Home Depot loaders, query split, AOL clicks."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from qac.logs import QueryEvent
from qac.text import normalize_query
from retrieval.catalog import (
    Catalog,
    ClickEvent,
    Judgment,
    aol_catalog,
    click_events,
    expanded_texts,
    load_homedepot_catalog,
    load_judgments,
    normalize_url,
    split_by_query,
    url_text,
)


@pytest.mark.parametrize("url, key", [
    ("http://www.Example.com/", "example.com"),
    ("https://WWW.example.com", "example.com"),
    ("http://en.wikipedia.org/", "en.wikipedia.org"),
    ("www.foo.org//", "foo.org"),
    ("http://a.org/b/", "a.org/b"),
    ("  http://www.x.com/  ", "x.com"),
    ("http://wwwx.com/", "wwwx.com"),
    ("http://", ""),
])
def test_normalize_url(url, key):
    assert normalize_url(url) == key
    assert normalize_url(key) == key  # idempotent


@pytest.mark.parametrize("key, text", [
    ("en.wikipedia.org", "en wikipedia org"),
    ("my_site.co.uk/a-b", "my site co uk a b"),
    ("", ""),
    ("café.fr", "café fr"),
])
def test_url_text(key, text):
    assert url_text(key) == text
    assert normalize_query(text) == text


def test_catalog_round_trip_and_lookup(tmp_path):
    cat = Catalog(["k1", "ключ", "k3"], ["a b", "", "текст"])
    assert cat.n_items == 3 and cat.id_of("ключ") == 1 and cat.id_of("nope") is None
    params, arrays = cat.to_arrays()
    loaded = {}
    for k, v in arrays.items():
        np.save(tmp_path / f"{k}.npy", v)
        loaded[k] = np.load(tmp_path / f"{k}.npy", mmap_mode="r")
    assert Catalog.from_arrays(params, loaded) == cat
    assert cat.ids_of(["k3", "x"]).tolist() == [2, -1]


@pytest.mark.parametrize("keys, texts, exc, message", [
    (["a", "a"], ["", ""], ValueError, "duplicate key 'a'"),
    (["a"], [], ValueError, "expected 1 texts"),
    (["a", 1], ["", ""], TypeError, r"keys\[1\]"),
    (["a"], [None], TypeError, r"texts\[0\]"),
])
def test_catalog_invalid(keys, texts, exc, message):
    with pytest.raises(exc, match=message):
        Catalog(keys, texts)


def test_split_by_query_keeps_queries_whole():
    js = [Judgment(f"q{i % 37}", str(i), 1.0 + i % 3) for i in range(300)]
    train, test = split_by_query(js, 0.2, seed=3)
    assert len(train) + len(test) == len(js)
    assert not {j.query for j in train} & {j.query for j in test}
    assert len({j.query for j in test}) == round(0.2 * 37)
    assert split_by_query(js, 0.2, seed=3) == (train, test)
    assert split_by_query(list(reversed(js)), 0.2, seed=3)[1] == list(reversed(test))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, "0.2", None, True])
def test_split_by_query_invalid_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_query([], fraction)


def test_click_events_and_aol_catalog():
    events = [
        QueryEvent("1", "wiki", 10, ("http://en.wikipedia.org/", "http://www.en.wikipedia.org")),
        QueryEvent("1", "news", 20, ("http://www.cnn.com/",)),
        QueryEvent("2", "wiki", 5, ("http://",)),
    ]
    clicks = click_events(events)
    assert clicks == [ClickEvent("1", "wiki", 10, "en.wikipedia.org"), ClickEvent("1", "news", 20, "cnn.com")]
    cat = aol_catalog(clicks)
    assert cat.keys == ["cnn.com", "en.wikipedia.org"] and cat.texts == ["cnn com", "en wikipedia org"]
    texts = expanded_texts(cat, clicks + [ClickEvent("3", "free encyclopedia", 1, "en.wikipedia.org"),
                                          ClickEvent("3", "x", 1, "not.in.catalog")])
    assert texts == ["cnn com news", "en wikipedia org wiki free encyclopedia"]


def test_loaders_check_headers(tmp_path):
    bad = tmp_path / "bad.tsv.gz"
    with gzip.open(bad, "wt") as f:
        f.write("uid\ttitle\n1\tx\n")
    with pytest.raises(ValueError, match="header"):
        load_homedepot_catalog(bad)
    with pytest.raises(ValueError, match="header"):
        load_judgments(bad)
    plain = tmp_path / "j.tsv"
    plain.write_text("search_term\tproduct_uid\trelevance\nAngle  Bracket\t1\t2.5\n...\t2\t3\nx\t3\tabc\n")
    with pytest.raises(ValueError, match="relevance is not a number"):
        load_judgments(plain)


def test_homedepot_real_files(shared_data):
    cat = load_homedepot_catalog(shared_data / "homedepot" / "products.tsv.gz")
    assert cat.n_items == 54667
    assert cat.text(cat.id_of("100001")) == "simpson strongtie 12gauge angle"
    js = load_judgments(shared_data / "homedepot" / "judgments.train.tsv.gz")
    assert len(js) == 59497 and js[0] == Judgment("angle bracket", "100001", 3.0)
    assert all(cat.id_of(j.item_key) is not None for j in js)
    train, test = split_by_query(js, seed=0)
    assert 0.15 < len(test) / len(js) < 0.25
