"""The sorted (key, value) store against a dict oracle."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from systems.minips.store import KVStore
from systems.minips.updaters import Sum

keysets = st.lists(st.integers(0, 200), max_size=40, unique=True).map(sorted)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "set", "drop"]), keysets,
                          st.integers(0, 200), st.integers(1, 201)), max_size=12), keysets)
def test_store_matches_a_dict(ops, query):
    store, oracle = KVStore(2), {}
    for op, keys, a, b in ops:
        k = np.array(keys, np.uint64)
        v = np.arange(2 * len(keys), dtype=np.float32).reshape(-1, 2) + 1
        if op == "add":
            store.update(k, v, Sum())
            for i, key in enumerate(keys):
                oracle[key] = oracle.get(key, np.zeros(2, np.float32)) + v[i]
        elif op == "set":
            store.assign(k, v)
            for i, key in enumerate(keys):
                oracle[key] = v[i].copy()
        else:
            lo, hi = min(a, b - 1), max(a + 1, b)
            store.drop(lo, hi)
            oracle = {key: x for key, x in oracle.items() if not lo <= key < hi}
    got = store.get(np.array(query, np.uint64))
    want = np.array([oracle.get(q, np.zeros(2)) for q in query]).reshape(-1, 2)
    np.testing.assert_array_equal(got, want)
    assert store.keys.tolist() == sorted(oracle)
    k, v, _ = store.range(50, 150)
    in_range = [key for key in sorted(oracle) if 50 <= key < 150]
    assert k.tolist() == in_range
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v, np.array([oracle[q] for q in in_range]).reshape(-1, 2))


def test_contiguous_lookup_is_a_view_that_updates_in_place():
    store = KVStore(1)
    keys = np.arange(1000, dtype=np.uint64)
    store.assign(keys, np.zeros((1000, 1), np.float32))
    rows = store.rows(keys[100:200])
    assert rows == slice(100, 200)
    store.update(keys[100:200], np.ones((100, 1), np.float32), Sum())
    assert store.vals[100:200].sum() == 100 and store.vals.sum() == 100


def test_a_run_is_found_only_where_the_stored_keys_are_that_run():
    """The lookup's shortcut for a dense request (first key, last key and count match a
    stored run) against requests that share endpoints and count but not keys."""
    store = KVStore(1)
    stored = np.array([0, 1, 3, 4, 5, 6, 9], np.uint64)
    store.assign(stored, np.arange(7, dtype=np.float32).reshape(-1, 1))
    assert store.rows(np.array([3, 4, 5, 6], np.uint64)) == slice(2, 6)  # dense, stored
    assert store._find(np.array([0, 2, 3], np.uint64)) is None  # 2 is not stored
    assert store._find(np.array([1, 2, 3], np.uint64)) is None  # dense, but 2 missing
    assert store._find(np.array([2, 3], np.uint64)) is None  # first key missing
    got = store.get(np.array([0, 1, 3], np.uint64))  # sparse: the general path
    np.testing.assert_array_equal(got.ravel(), [0, 1, 2])


def test_keys_given_out_of_order_leave_the_store_sorted():
    """The server gathers a push's keys range by range; were they ever out of order, the
    store must still stay sorted, or every later lookup by binary search goes wrong."""
    s = KVStore()
    s.update(np.array([10, 160], np.uint64), np.ones((2, 1), np.float32), Sum())
    s.update(np.array([130, 50], np.uint64), np.array([[1.0], [2.0]], np.float32), Sum())
    assert s.keys.tolist() == [10, 50, 130, 160]
    np.testing.assert_array_equal(s.get(np.array([10, 50, 130, 160], np.uint64)).ravel(),
                                  [1, 2, 1, 1])


def test_init_sets_only_rows_not_stored_yet():
    s = KVStore()
    assert s.init(np.array([1, 3], np.uint64), np.array([[5.0], [7.0]], np.float32)) == 2
    s.update(np.array([3], np.uint64), np.ones((1, 1), np.float32), Sum())
    assert s.init(np.array([1, 2, 3], np.uint64), np.full((3, 1), 9.0, np.float32)) == 1
    np.testing.assert_array_equal(s.get(np.array([1, 2, 3], np.uint64)).ravel(), [5, 9, 8])
