"""Search build config: the semantic arm's config reaches the arm it builds, from the config and the CLI."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import retrieval.build as build
from retrieval.arms.semantic import SemanticConfig
from retrieval.build import AOL_BUILD_CONFIG, HOMEDEPOT_BUILD_CONFIG, Interactions, SearchBuildConfig, build_arms
from retrieval.catalog import Catalog

COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
THINGS = ["shoes", "hat", "garden hose", "kitchen sink", "lamp", "drill", "paint", "ladder"]
TEXTS = [f"{c} {t}" for t in THINGS for c in COLOURS]


def _interactions() -> Interactions:
    queries, items = [], []
    for j, text in enumerate(TEXTS):
        colour, thing = text.split(" ", 1)
        queries += [text, f"{thing} {colour}", f"{colour} {thing} cheap"]
        items += [j, j, j]
    n = len(queries)
    return Interactions(queries, np.asarray(items, np.int32), np.arange(n, dtype=np.int64), ["u"] * n,
                        np.ones(n, np.float32))


def _semantic(config: SemanticConfig | None):
    catalog = Catalog([f"k{i}" for i in range(len(TEXTS))], TEXTS)
    return next(a for a in build_arms(catalog, _interactions(), semantic_config=config) if a.name == "semantic")


def test_build_arms_uses_the_semantic_config_and_prunes_by_its_threshold():
    default = _semantic(None)
    assert default.config == SemanticConfig()
    low = _semantic(SemanticConfig(max_leaf_size=4, n_threads=1, threshold=0.0))
    high = _semantic(SemanticConfig(max_leaf_size=4, n_threads=1, threshold=0.3))
    assert high.config.threshold == 0.3
    assert np.abs(np.asarray(high.model.W_data)).min() >= 0.3
    assert 0 < high.model.W_data.size < low.model.W_data.size


def test_catalogue_configs_keep_the_semantic_default():
    assert AOL_BUILD_CONFIG.semantic == SemanticConfig()
    assert HOMEDEPOT_BUILD_CONFIG.semantic == SemanticConfig()
    assert dataclasses.asdict(AOL_BUILD_CONFIG)["semantic"]["threshold"] == 0.1


def test_config_rejects_a_semantic_field_that_is_not_a_semantic_config():
    with pytest.raises(ValueError, match="semantic: must be a SemanticConfig, got dict"):
        SearchBuildConfig(semantic={"threshold": 0.2})


def test_cli_semantic_threshold_reaches_the_aol_build(monkeypatch, tmp_path):
    seen = {}

    def fake_build(log, out_dir, config):
        seen["config"] = config
        out_dir.mkdir(parents=True)
        return {}

    monkeypatch.setattr("qac.logs.read_aol_log", lambda path: path)
    monkeypatch.setattr(build, "build_search_aol", fake_build)
    assert build.main(["--log", "x.tsv", "--out", str(tmp_path / "a"), "--semantic-threshold", "0.2"]) == 0
    assert seen["config"] == dataclasses.replace(AOL_BUILD_CONFIG,
                                                 semantic=dataclasses.replace(SemanticConfig(), threshold=0.2))
    assert build.main(["--log", "x.tsv", "--out", str(tmp_path / "b")]) == 0
    assert seen["config"] == AOL_BUILD_CONFIG


@pytest.mark.parametrize("value, message", [("-0.1", "SemanticConfig.threshold must be >= 0"),
                                            ("nan", "SemanticConfig.threshold must be >= 0")])
def test_cli_rejects_a_bad_semantic_threshold(value, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        build.main(["--log", "x.tsv", "--out", str(tmp_path / "a"), "--semantic-threshold", value])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
