"""Semantic (XR-Linear) arm: features equal scikit-learn's, training pairs are recalled, round trip."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from retrieval.arms.base import Context
from retrieval.arms.semantic import SemanticArm, SemanticConfig, build_semantic_arm, word_bigram_text
from tests.retrieval.arm_contract import ArmContract

COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
THINGS = ["shoes", "hat", "garden hose", "kitchen sink", "lamp", "drill", "paint", "ladder"]
ITEM_TEXTS = [f"{c} {t}" for t in THINGS for c in COLOURS] + ["never queried item", "another one"]


def training_pairs():
    queries, items = [], []
    for j, text in enumerate(ITEM_TEXTS[:-2]):
        colour, thing = text.split(" ", 1)
        queries += [text, f"{thing} {colour}", f"{colour} {thing} cheap"]
        items += [j, j, j]
    return queries, items


@pytest.fixture(scope="module")
def arm() -> SemanticArm:
    q, i = training_pairs()
    return build_semantic_arm(q, i, ITEM_TEXTS, SemanticConfig(max_leaf_size=4, beam_size=4, n_threads=1))



class TestSemanticArmContract(ArmContract):
    def make_arm(self):
        q, i = training_pairs()
        arm = build_semantic_arm(q, i, ITEM_TEXTS, SemanticConfig(max_leaf_size=4, n_threads=1))
        return arm, ["red shoes", "hat", "green garden hose", "lamp black cheap"]

def test_training_pairs_are_recalled(arm):
    q, items = training_pairs()
    top1 = [arm.retrieve(qq, Context(), 1)[0].tolist() for qq in q]
    top5 = [arm.retrieve(qq, Context(), 5)[0].tolist() for qq in q]
    assert np.mean([i in t for i, t in zip(items, top5)]) >= 0.95
    assert np.mean([t[:1] == [i] for i, t in zip(items, top1)]) >= 0.8


def test_features_equal_sklearn_twin(arm):
    q, _ = training_pairs()
    distinct = sorted(set(q))
    word = TfidfVectorizer(token_pattern=r"\S+", lowercase=False, ngram_range=(1, 2), dtype=np.float64).fit(distinct)
    char = TfidfVectorizer(analyzer="char", ngram_range=(3, 3), lowercase=False, dtype=np.float64).fit(distinct)
    # Our word block names a bigram "a+b"; scikit-learn names it "a b". Map columns by name.
    ours_word = [t.replace("+", " ") for t in arm.featurizer.word.get_feature_names_out()]
    assert sorted(ours_word) == sorted(word.get_feature_names_out())
    assert arm.featurizer.char.get_feature_names_out() == list(char.get_feature_names_out())
    w_col = {t: j for j, t in enumerate(word.get_feature_names_out())}
    perm = np.array([w_col[t] for t in ours_word])
    for text in ["red shoes", "shoes red cheap", "garden hose garden", "unknown words", "hat"]:
        ref = sp.hstack([word.transform([text])[:, perm], char.transform([text])]).tocsr()
        ref = normalize(ref).toarray().ravel()
        xi, xd = arm.featurize(text)
        got = np.zeros(arm.featurizer.n_features)
        got[xi] = xd
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_word_bigram_text():
    assert word_bigram_text("a b c") == "a b c a+b b+c"
    assert word_bigram_text("a") == "a"
    assert word_bigram_text("") == ""


def test_round_trip_read_only(arm):
    params, arrays = arm.to_arrays()
    ro = {}
    for k, v in arrays.items():
        v = np.array(v, copy=True)
        v.setflags(write=False)
        ro[k] = v
    loaded = SemanticArm.from_arrays(params, ro)
    loaded.warmup()
    for q in ["red shoes", "hat blue", "kitchen", "zzz", "ladder yellow cheap"]:
        a, b = arm.retrieve(q, Context(), 20), loaded.retrieve(q, Context(), 20)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_every_item_is_a_label(arm):
    assert arm.n_items == len(ITEM_TEXTS)
    # With a beam as wide as the widest level, every label is reachable.
    wide = SemanticArm(SemanticConfig(beam_size=len(ITEM_TEXTS), max_leaf_size=4), arm.featurizer, arm.model)
    ids, _ = wide.retrieve("red shoes", Context(), len(ITEM_TEXTS))
    assert sorted(ids.tolist()) == list(range(len(ITEM_TEXTS)))


@pytest.mark.parametrize("field, value", [
    ("beam_size", 0), ("post_processor", "relu"), ("max_leaf_size", 1), ("tree_seed", -1), ("min_df", 0),
    ("C", 0.0), ("threshold", -1.0), ("n_threads", 0),
])
def test_config_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        SemanticConfig(**{field: value})


def test_build_rejects_bad_pairs():
    with pytest.raises(ValueError, match="same length"):
        build_semantic_arm(["a"], [0, 1], ITEM_TEXTS)
    with pytest.raises(ValueError, match="item_ids"):
        build_semantic_arm(["a"], [len(ITEM_TEXTS)], ITEM_TEXTS)
    with pytest.raises(ValueError, match="queries"):
        build_semantic_arm([""], [0], ITEM_TEXTS)
    with pytest.raises(ValueError, match="item_texts"):
        build_semantic_arm([], [], [])


def test_from_arrays_rejects_unknown_format(arm):
    params, arrays = arm.to_arrays()
    with pytest.raises(ValueError, match="format"):
        SemanticArm.from_arrays({**params, "format": "nope"}, arrays)
