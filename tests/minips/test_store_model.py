"""Stateful: KVStore (update/assign/drop/replace/rows/range/get, values and state) vs a dict.

Model-based (hypothesis) tests from a stateful audit (2026-11-28): the real code and
a brute-force model take the same random operations and must agree after each.
Raise ``MODEL_EXAMPLES`` (default 100) to search longer.
"""

import os

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from systems.minips.store import KVStore

MAX = int(os.environ.get("MODEL_EXAMPLES", 100))
L = 2
keysets = st.lists(st.integers(0, 30), max_size=12, unique=True).map(sorted)
rng_ = st.tuples(st.integers(0, 31), st.integers(0, 31)).map(sorted)


def adam_like(w, s, g):
    """An updater that touches both value and state in place."""
    s += g * g
    w -= g / (1 + s)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.st = KVStore(L)
        self.m = {}  # key -> (val, state)
        self.c = 0

    def fresh(self, n):
        self.c += 1
        return (np.arange(n * L, dtype=np.float32).reshape(-1, L) + self.c) / 7

    def zero(self):
        return (np.zeros(L, np.float32), np.zeros(L, np.float32))

    @rule(keys=keysets)
    def update(self, keys):
        g = self.fresh(len(keys))
        self.st.update(np.array(keys, np.uint64), g, adam_like)
        for i, k in enumerate(keys):
            w, s = (x.copy() for x in self.m.get(k, self.zero()))
            w, s = w[None], s[None]
            adam_like(w, s, g[i:i + 1])
            self.m[k] = (w[0], s[0])

    @rule(keys=keysets, with_state=st.booleans())
    def assign(self, keys, with_state):
        v = self.fresh(len(keys))
        s = -self.fresh(len(keys)) if with_state else None
        self.st.assign(np.array(keys, np.uint64), v, s)
        for i, k in enumerate(keys):
            old = self.m.get(k, self.zero())
            self.m[k] = (v[i].copy(), s[i].copy() if with_state else old[1])

    @rule(r=rng_)
    def drop(self, r):
        b, e = r
        self.st.drop(b, e)
        self.m = {k: x for k, x in self.m.items() if not b <= k < e}

    @rule(r=rng_, keys=keysets, data=st.data())
    def replace(self, r, keys, data):
        b, e = r
        keys = [k for k in keys if b <= k < e]
        v, s = self.fresh(len(keys)), -self.fresh(len(keys))
        flat = data.draw(st.booleans())  # a copy's arrays arrive flat off the wire
        self.st.replace(b, e, np.array(keys, np.uint64), v.ravel() if flat else v,
                        s.ravel() if flat else s)
        self.m = {k: x for k, x in self.m.items() if not b <= k < e}
        for i, k in enumerate(keys):
            self.m[k] = (v[i].copy(), s[i].copy())

    @rule(keys=keysets)
    def rows(self, keys):
        k = np.array(keys, np.uint64)
        r = self.st.rows(k)
        assert self.st.keys[r].tolist() == keys
        for key in keys:
            self.m.setdefault(key, self.zero())

    @rule(keys=keysets)
    def get(self, keys):
        got = self.st.get(np.array(keys, np.uint64))
        assert got.shape == (len(keys), L)
        want = np.array([self.m.get(k, self.zero())[0] for k in keys]).reshape(-1, L)
        np.testing.assert_array_equal(got, want)

    @rule(r=rng_)
    def range(self, r):
        b, e = r
        k, v, s = self.st.range(b, e)
        ks = sorted(x for x in self.m if b <= x < e)
        assert k.tolist() == ks
        np.testing.assert_array_equal(v, np.array([self.m[x][0] for x in ks]).reshape(-1, L))
        np.testing.assert_array_equal(s, np.array([self.m[x][1] for x in ks]).reshape(-1, L))

    @invariant()
    def same(self):
        assert self.st.keys.tolist() == sorted(self.m)
        assert self.st.vals.shape == self.st.state.shape == (len(self.m), L)
        assert self.st.keys.dtype == np.uint64 and self.st.vals.dtype == np.float32
        for i, k in enumerate(sorted(self.m)):
            np.testing.assert_array_equal(self.st.vals[i], self.m[k][0])
            np.testing.assert_array_equal(self.st.state[i], self.m[k][1])


StoreMachine.TestCase.settings = settings(max_examples=MAX // 2, stateful_step_count=25,
                                          deadline=None)
TestStoreMachine = StoreMachine.TestCase
