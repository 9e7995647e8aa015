"""The search decision payload's array encodings (serving.search_service.encode_ids / decode_ids,
encode_floats / decode_floats)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from serving.search_service import decode_floats, decode_ids, encode_floats, encode_ids


@pytest.mark.parametrize("ids", [[], [0], [5, 2**31 - 1, 0, 17], list(range(1000))])
def test_ids_round_trip_through_json(ids):
    arr = np.asarray(ids, dtype=np.int32)
    text = json.dumps({"union": encode_ids(arr)})
    back = decode_ids(json.loads(text)["union"])
    assert back.dtype == np.int32 and back.tolist() == ids


def test_payloads_logged_as_int_lists_still_decode():
    assert decode_ids([3, 1, 2]).tolist() == [3, 1, 2] and decode_ids([3, 1, 2]).dtype == np.int32


@pytest.mark.parametrize("bad", ["not base64!", "AAA=", "AAAAAAA="])
def test_bad_encodings_raise(bad):
    with pytest.raises(ValueError):
        decode_ids(bad)


def test_policy_features_round_trip_exactly_through_json():
    rng = np.random.default_rng(0)
    x = rng.normal(size=13).astype(np.float32)
    arm_x = np.vstack([rng.normal(size=(5, 5)), [[np.float32(1e-45), -0.0, 3.4e38, 1.0, 0.0]]]).astype(np.float32)
    text = json.dumps({"x": encode_floats(x), "arm_x": encode_floats(arm_x)})
    p = json.loads(text)
    got_x, got_arm_x = decode_floats(p["x"], (-1,)), decode_floats(p["arm_x"], (6, -1))
    assert got_x.dtype == got_arm_x.dtype == np.float32 and got_arm_x.shape == (6, 5)
    np.testing.assert_array_equal(got_x.view(np.int32), x.view(np.int32))
    np.testing.assert_array_equal(got_arm_x.view(np.int32), arm_x.view(np.int32))
    assert decode_floats(encode_floats(np.zeros(0, np.float32)), (-1,)).shape == (0,)


def test_policy_features_logged_as_json_floats_still_decode():
    # Payloads written before the base64 form hold float32 values as JSON floats (``tolist``).
    x = np.array([0.1, 1.0, -2.5], dtype=np.float32)
    back = decode_floats(json.loads(json.dumps(x.tolist())), (-1,))
    np.testing.assert_array_equal(back, x)
    assert decode_floats([[1.0, 2.0], [3.0, 4.0]], (2, -1)).tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("bad,shape", [("not base64!", (-1,)), ("AAA=", (-1,)), ("AAAAAAAA", (3, -1)),
                                       ([1.0, "a"], (-1,))])
def test_bad_float_encodings_raise(bad, shape):
    with pytest.raises(ValueError):
        decode_floats(bad, shape)
