"""The search decision payload's item-id encoding (serving.search_service.encode_ids / decode_ids)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from serving.search_service import decode_ids, encode_ids


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
