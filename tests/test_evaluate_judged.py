"""Home Depot judged evaluation on a small real slice: the learned fusion arm is built, served with
its shared char-trigram arm, and `evaluate_search_judgments` reports fixed allocations and what-if
policies consistently."""
from __future__ import annotations

import gzip
from dataclasses import replace

import numpy as np
import pytest

from retrieval.arms.base import Context
from retrieval.build import build_search_homedepot
from retrieval.policy import PolicyConfig
from retrieval.ranker import RankerConfig
from retrieval.splits import write_judgments_split
from serving.evaluate_search import evaluate_search_judgments
from serving.search_service import load_engine


@pytest.fixture(scope="module")
def hd_slice(shared_data, tmp_path_factory):
    """Products judged for the first 400 search terms, with every judgment of those products."""
    d = tmp_path_factory.mktemp("hd")
    with gzip.open(shared_data / "homedepot" / "judgments.train.tsv.gz", "rt", encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    terms: list = []
    for r in rows:
        t = r.split("\t", 1)[0]
        if t not in terms:
            terms.append(t)
        if len(terms) == 400:
            break
    keep_terms = set(terms)
    picked = [r for r in rows if r.split("\t", 1)[0] in keep_terms]
    uids = {r.split("\t")[1] for r in picked}
    with gzip.open(shared_data / "homedepot" / "products.tsv.gz", "rt", encoding="utf-8") as f:
        p_header, *products = f.read().splitlines()
    (d / "products.tsv").write_text("\n".join([p_header, *[p for p in products if p.split("\t", 1)[0] in uids]]) + "\n",
                                    encoding="utf-8")
    (d / "judgments.tsv").write_text("\n".join([header, *picked]) + "\n", encoding="utf-8")
    write_judgments_split(d / "judgments.tsv", d / "train.tsv", d / "test.tsv", 0.25, 0)
    grid = (RankerConfig(objective="regression", n_trees=10, learning_rate=0.3, max_leaf_nodes=7, min_samples_leaf=5),)
    build_search_homedepot(d / "products.tsv", d / "train.tsv", d / "art" / "search" / "homedepot", ranker_grid=grid)
    return d


def test_learned_fusion_is_served_with_the_shared_chargram(hd_slice):
    ce = load_engine(hd_slice / "art" / "search" / "homedepot")
    names = ce.engine.arm_names
    fusion = ce.engine.arms[names.index("fusion")]
    assert fusion.scorer is not None and fusion.same_as == [None, "chargram"]
    assert fusion.arms[1] is ce.engine.arms[names.index("chargram")]
    assert ce.engine.pool_depths() == {"chargram": fusion.depth}
    assert ce.engine.policy.config.ridge == 1000.0
    # The scorer's stored copy of the ranker's text index is replaced by the ranker's own object.
    assert fusion.scorer.text_index is ce.engine.text_index


def test_judged_evaluation_menu_and_policy_override(hd_slice):
    art, test = hd_slice / "art", hd_slice / "test.tsv"
    base = evaluate_search_judgments(art, test)
    assert "menu" not in base and 0.0 <= base["recall@100"] <= 1.0 and base["n_queries"] > 50
    what_if = evaluate_search_judgments(art, test, policy_config=PolicyConfig(kind="joint", ridge=1000.0),
                                        menu_recalls=True)
    # The artifact's policy is a fresh joint ridge-1000 model: the same replay, decision for decision.
    assert what_if["recall@100"] == base["recall@100"] and what_if["ndcg@10"] == base["ndcg@10"]
    recalls = np.array([m["recall@100"] for m in what_if["menu"]])
    assert len(recalls) == len(what_if["menu"]) > 6
    assert what_if["oracle_allocation"] >= recalls.max() - 1e-12
    fusion_only = [m for m in what_if["menu"] if m["allocation"]["fusion"] == 100]
    assert fusion_only[0]["recall@100"] == pytest.approx(what_if["arms"]["fusion"]["recall@100"])


def test_pair_column_is_served_and_an_artifact_without_it_still_answers(hd_slice):
    from retrieval.build import HOMEDEPOT_BUILD_CONFIG
    from retrieval.pair_model import TermPairModel
    from retrieval.ranker_features import candidate_features

    ce = load_engine(hd_slice / "art" / "search" / "homedepot")
    eng = ce.engine
    assert isinstance(eng.pair_model, TermPairModel) and eng.pair_model.config == HOMEDEPOT_BUILD_CONFIG.pair
    r = eng.retrieve("vanity with sink", Context(), 50, np.random.default_rng(0))
    ids = np.asarray(r.union_ids[:20], dtype=np.int32)
    feats = eng.features(r, ids)
    nt = eng.text_index.n_text_features
    assert feats.shape[1] == eng.ranker.n_features
    np.testing.assert_array_equal(feats[:, nt], eng.pair_model.score("vanity with sink", ids, eng.text_index))
    # An artifact written before the pair column (no pair_model component, ranker without the column).
    grid = (RankerConfig(objective="regression", n_trees=5, learning_rate=0.3, max_leaf_nodes=7, min_samples_leaf=5),)
    old = hd_slice / "old" / "search" / "homedepot"
    build_search_homedepot(hd_slice / "products.tsv", hd_slice / "train.tsv", old, ranker_grid=grid,
                           config=replace(HOMEDEPOT_BUILD_CONFIG, pair=None))
    old_ce = load_engine(old)
    assert old_ce.engine.pair_model is None
    r = old_ce.engine.retrieve("vanity with sink", Context(), 50, np.random.default_rng(0))
    ids = np.asarray(r.union_ids[:20], dtype=np.int32)
    np.testing.assert_array_equal(
        old_ce.engine.features(r, ids),
        candidate_features(r.query, ids, np.zeros((ids.size, 0), np.float32), old_ce.engine.text_index,
                           old_ce.engine.item_stats))
    ranked, scores, _ = old_ce.engine.rank(r, 10)
    assert len(ranked) == min(10, r.union_ids.size) and np.all(np.diff(scores) <= 0)
