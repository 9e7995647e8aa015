"""retrieval.growth and the growth path of the catalogue and the pipeline: keys, config, the grown
items' ranker text features against the slow reference, and a pipeline that grows."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.arms.base import Context
from retrieval.arms.history import build_history_arm
from retrieval.arms.memory import build_memory_arm
from retrieval.arms.popularity import PopularityArm
from retrieval.catalog import Catalog, url_text
from retrieval.growth import AOL_GROWTH, CLOSED, CatalogGrowth, GrownTextIndex, check_site_key
from retrieval.pipeline import RetrieveAndRank, Retrieval
from retrieval.ranker_features import ItemTextIndex, candidate_features, reference_candidate_features

BASE = ["google com", "yahoo com", "weather com", "bank of america com", "en wikipedia org"]
GROWN = ["myspace com", "weather gov", "zqxnews co uk", "", "bank zqxnews zqxnews"]


# ---------------------------------------------------------------------------------------------
# Keys and config
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["example.com", "a.org/b", "en.wikipedia.org", "münchen.de", "x" * 256, "1.2"])
def test_check_site_key_accepts_normalised_keys(key):
    assert check_site_key(key, 256) == key


@pytest.mark.parametrize("key, message", [
    ("", "empty site key"),
    ("x" * 257, "longer than 256 characters"),
    ("Example.com", "not a normalised URL \\(expected 'example.com'"),
    ("http://example.com", "expected 'example.com'"),
    ("www.example.com", "expected 'example.com'"),
    ("example.com/", "expected 'example.com'"),
    ("exa mple.com", "whitespace or control"),
    ("example.com\n", "whitespace or control"),
    ("a\x00b", "whitespace or control"),
    ("-./-", "no letter or digit"),
    (None, "expected a str"),
    (b"example.com", "expected a str"),
])
def test_check_site_key_rejects(key, message):
    with pytest.raises(ValueError, match=message):
        check_site_key(key, 256)


@pytest.mark.parametrize("field, value", [("max_grown_items", -1), ("max_grown_items", 1.5),
                                          ("max_grown_items", True), ("max_key_chars", 0),
                                          ("max_key_chars", "256")])
def test_growth_config_rejects(field, value):
    with pytest.raises(ValueError, match=f"CatalogGrowth.{field}"):
        CatalogGrowth(**{field: value})


def test_growth_defaults():
    assert not CLOSED.open and AOL_GROWTH.open and AOL_GROWTH.max_grown_items == 100_000


def test_catalog_add():
    cat = Catalog(["a.com", "b.org"], ["a com", "b org"])
    assert cat.add("c.net", "c net") == 2
    assert cat.n_items == 3 and cat.id_of("c.net") == 2 and cat.key(2) == "c.net" and cat.text(2) == "c net"
    with pytest.raises(ValueError, match="already item 0"):
        cat.add("a.com", "a com")
    with pytest.raises(TypeError, match="text"):
        cat.add("d.com", None)
    assert cat.n_items == 3 and cat.id_of("d.com") is None


# ---------------------------------------------------------------------------------------------
# Ranker text features of grown items
# ---------------------------------------------------------------------------------------------
def _reference(base, texts, query, stats):
    idf = {t: float(base.idf[i]) for i, t in enumerate(base.vocab)}
    arm = np.zeros((len(texts), 1), np.float32)
    return reference_candidate_features(query, texts, arm, idf, base.unseen_idf, base.avg_len, stats)


@pytest.mark.parametrize("query", ["weather", "myspace", "zqxnews", "zqxnews bank", "bank zqxnews zqxnews",
                                   "weather gov", "co uk", "", "unknownword"])
def test_grown_text_features_equal_reference_with_build_statistics(query):
    base = ItemTextIndex.build(BASE)
    grown = GrownTextIndex(base)
    grown.append(GROWN[:2])
    grown.append(GROWN[2:])
    idx = grown.index()
    assert idx.n_items == len(GROWN) and grown.n_base == len(BASE)
    local = np.array([4, 0, 2, 1, 3], dtype=np.int32)
    stats = np.zeros((len(GROWN), 3), np.float32)
    got = candidate_features(query, local, np.zeros((local.size, 1), np.float32), idx, stats)
    want = _reference(base, [GROWN[i] for i in local], query, stats[local])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the base index is untouched and still answers for base items
    assert base.n_items == len(BASE) and "zqxnews" not in base.term_id


def test_an_index_taken_earlier_does_not_change_when_items_are_appended():
    base = ItemTextIndex.build(BASE)
    grown = GrownTextIndex(base)
    grown.append(["myspace com"])
    before = grown.index()
    f0 = candidate_features("myspace", np.array([0], np.int32), np.zeros((1, 0), np.float32), before,
                            np.zeros((1, 3), np.float32))
    grown.append([f"site{i} com" for i in range(100)])  # several reallocations of the buffers
    assert before.n_items == 1 and grown.index().n_items == 101
    f1 = candidate_features("myspace", np.array([0], np.int32), np.zeros((1, 0), np.float32), before,
                            np.zeros((1, 3), np.float32))
    np.testing.assert_array_equal(f0, f1)


def test_index_with_match_block_cannot_grow():
    with pytest.raises(ValueError, match="match block"):
        GrownTextIndex(ItemTextIndex.build(BASE, match_features=True))


# ---------------------------------------------------------------------------------------------
# The pipeline grows
# ---------------------------------------------------------------------------------------------
class _FixedRanker:
    def score(self, X):
        return X[:, 0].astype(np.float32)


def _pipeline():
    ids = np.array([0, 1, 2, 0], np.int32)
    ts = np.array([100, 200, 300, 400], np.int64)
    q = ["google", "yahoo", "weather", "google"]
    arms = [build_memory_arm(q, ids, ts, BASE), PopularityArm.build(ids.tolist(), len(BASE)),
            build_history_arm(["u"] * 4, q, ids, ts, len(BASE))]
    text = ItemTextIndex.build(BASE)
    stats = np.full((len(BASE), 3), 0.5, np.float32)
    return RetrieveAndRank(arms, None, _FixedRanker(), text, stats, lambda q: 0, lambda q: False)


def test_pipeline_grow_tells_every_online_arm_and_features_cover_grown_items():
    eng = _pipeline()
    n = len(BASE)
    eng.grow([url_text("myspace.com"), url_text("zqxnews.co.uk")])
    assert eng.n_items == n + 2 and all(a.n_items == n + 2 for a in eng.arms)
    ctx = Context(user_id="u", timestamp=500)
    for a in eng.arms:
        a.observe("zqxnews", n + 1, ctx)
    lists = [a.retrieve("zqxnews", ctx, 10) for a in eng.arms]
    assert all(n + 1 in ids.tolist() for ids, _ in lists)
    r = Retrieval("zqxnews", 10, [x[0] for x in lists], [x[1] for x in lists], np.zeros(1, np.float32),
                  np.zeros((3, 1), np.float32), None, np.array([n + 1, 0, n], np.int32), ctx,
                  np.array([10, 10, 10], np.int64))
    ids = np.array([n + 1, 0, n], np.int32)
    X = eng.features(r, ids)
    base_only = eng.features(r, ids[1:2])
    np.testing.assert_array_equal(X[1], base_only[0])  # a base item's row is as before growing
    arm_block = X[:, -6:]  # 3 arm scores + 3 proposed flags: the grown item is proposed by all three
    np.testing.assert_array_equal(arm_block[0, 3:], [1, 1, 1])
    want = _reference(eng.text_index, ["myspace com", "zqxnews co uk"], "zqxnews", np.zeros((2, 3), np.float32))
    np.testing.assert_allclose(X[[2, 0], :want.shape[1] - 2], want[[0, 1], :-2], rtol=0, atol=1e-5)
    assert np.all(X[[0, 2], eng.text_index.n_text_features:eng.text_index.n_text_features + 3] == 0)
    top, scores, _ = eng.rank(r, 3)
    assert top.tolist()[0] == n + 1  # the text match puts the new site first (ranker = bm25 column)


def test_pipeline_with_a_term_pair_column_cannot_grow():
    eng = _pipeline()
    eng.pair_model = object()  # any term-pair model: its term hashes end at the build's vocabulary
    with pytest.raises(ValueError, match="term-pair"):
        eng.grow([url_text("myspace.com")])
    assert eng.n_items == len(BASE)  # refused before any arm grew
