"""The message format and its checks: bad requests get errors that say what and why."""

import numpy as np
import pytest

from systems.minips import message as M


def test_round_trip_keeps_keys_values_and_extra_arrays():
    keys = np.array([1, 5, 9], np.uint64)
    vals = np.arange(6, dtype=np.float32).reshape(3, 2) - 2.5
    extra = [np.array([0.1, -3e300]), np.arange(6, dtype=np.int32).reshape(2, 3) - 2]
    meta, k, v, got = M.decode(M.encode({"op": "push"}, keys, vals, extra))
    assert meta["op"] == "push"
    assert k.dtype == np.uint64 and np.array_equal(k, keys)
    assert v.dtype == np.float32 and v.shape == (3, 2) and np.array_equal(v, vals)
    assert len(got) == 2
    for g, want in zip(got, extra, strict=True):  # dtype, shape and every value survive
        assert g.dtype == want.dtype and g.shape == want.shape and np.array_equal(g, want)


@pytest.mark.parametrize("keys,msg", [
    (np.array([3, 2], np.uint64), r"sorted and unique, but key\[0\]=3 >= key\[1\]=2"),
    (np.array([1, 1], np.uint64), "sorted and unique"),
    (np.array([1, 100], np.uint64), "unknown key 100: outside the key space"),
    (np.array([1.0, 2.0]), "1-D uint64 array, got float64"),
])
def test_bad_keys_are_named(keys, msg):
    with pytest.raises(M.PSError, match=msg) as e:
        M.check_keys(keys, 100)
    assert e.value.code == "INVALID"


def test_bad_values_are_named():
    with pytest.raises(M.PSError, match="3 keys x 2 values per key need 6 values, got 5"):
        M.check_vals(np.zeros(5, np.float32), 3, 2)
    with pytest.raises(M.PSError, match="must be float32, got float64"):
        M.check_vals(np.zeros(6), 3, 2)


def test_garbage_bytes_are_invalid_not_a_crash():
    with pytest.raises(M.PSError, match="malformed message"):
        M.decode(b"not a message at all")
