"""Artifact store: round trip, memory mapping, atomic replacement, corruption detection."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qac.artifacts import (
    ArtifactError,
    arrays_to_strings,
    load_artifact,
    save_artifact,
    strings_to_arrays,
)


def _components(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a": ({"alpha": 1.5}, {"x": rng.random(17, dtype=np.float32), "ids": np.arange(5, dtype=np.int32)}),
        "b": ({}, {"m": rng.integers(0, 9, size=(3, 4)).astype(np.int64)}),
    }


def test_round_trip_is_exact_and_memory_mapped(tmp_path):
    comps = _components()
    save_artifact(tmp_path / "art", "test", {"p": 3}, comps)
    art = load_artifact(tmp_path / "art", "test", verify=True)
    assert art.kind == "test" and art.params == {"p": 3}
    for name, (params, arrays) in comps.items():
        got_params, got_arrays = art.component(name)
        assert got_params == params
        assert set(got_arrays) == set(arrays)
        for key, arr in arrays.items():
            np.testing.assert_array_equal(got_arrays[key], arr)
            assert got_arrays[key].dtype == arr.dtype
            assert isinstance(got_arrays[key], np.memmap)
            assert not got_arrays[key].flags.writeable


def test_replacing_keeps_only_the_new_artifact(tmp_path):
    save_artifact(tmp_path / "art", "test", {"v": 1}, _components(1))
    save_artifact(tmp_path / "art", "test", {"v": 2}, _components(2))
    assert load_artifact(tmp_path / "art").params == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_failed_write_leaves_previous_artifact_untouched(tmp_path):
    save_artifact(tmp_path / "art", "test", {"v": 1}, _components(1))
    bad = {"a": ({}, {"obj": np.array([object()], dtype=object)})}
    with pytest.raises(ValueError, match="object arrays"):
        save_artifact(tmp_path / "art", "test", {"v": 2}, bad)
    assert load_artifact(tmp_path / "art").params == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "manifest.json").unlink(), "not an artifact directory"),
        (lambda d: (d / "a.x.npy").unlink(), "missing array file a.x.npy"),
        (lambda d: (d / "manifest.json").write_text("{"), "unreadable manifest"),
        (lambda d: np.save(d / "a.x.npy", np.zeros(17, np.float64)), "manifest says"),
    ],
)
def test_damaged_artifact_raises_clear_error(tmp_path, damage, message):
    save_artifact(tmp_path / "art", "test", {}, _components())
    damage(tmp_path / "art")
    with pytest.raises(ArtifactError, match=message):
        load_artifact(tmp_path / "art")


def test_checksum_mismatch_detected_with_verify(tmp_path):
    save_artifact(tmp_path / "art", "test", {}, _components())
    path = tmp_path / "art" / "a.ids.npy"
    arr = np.load(path)
    arr[0] = 42
    np.save(path, arr)
    load_artifact(tmp_path / "art")  # same dtype/shape: only the checksum can tell
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(tmp_path / "art", verify=True)


def test_wrong_kind_and_version(tmp_path):
    save_artifact(tmp_path / "art", "test", {}, _components())
    with pytest.raises(ArtifactError, match="expected 'completion'"):
        load_artifact(tmp_path / "art", "completion")
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version"):
        load_artifact(tmp_path / "art")


@pytest.mark.parametrize("strings", [[], [""], ["a", "", "héllo wörld", "日本語", "x" * 1000]])
def test_strings_round_trip(strings):
    flat, ptr = strings_to_arrays(strings)
    assert flat.dtype == np.uint8 and ptr.dtype == np.int64 and len(ptr) == len(strings) + 1
    assert arrays_to_strings(flat, ptr) == strings
