"""Stateful: key caching through worker FilterChains and server KeyCaches (with eviction,
server restarts, forget) against a model LRU; the receiver always gets the exact keys
back, or CACHE_MISS exactly when it does not hold the list.

Model-based (hypothesis) tests from a stateful audit (2026-11-28): the real code and
a brute-force model take the same random operations and must agree after each.
Raise ``MODEL_EXAMPLES`` (default 100) to search longer.
"""

import os
from collections import OrderedDict

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from systems.minips.filters import (
    Compress,
    FilterChain,
    KeyCache,
    KeyCaching,
    decode_request,
    key_signature,
)
from systems.minips.message import PSError

MAX = int(os.environ.get("MODEL_EXAMPLES", 100))
POOL = [np.arange(i, i + n, dtype=np.uint64) * (i + 1) for i, n in
        enumerate([2, 3, 4, 5, 8, 10, 3, 20])]
WORKERS, SERVERS = ["w0", "w1"], ["s0", "s1"]
CACHE_BYTES = 200  # 25 keys: lists are evicted often


class ModelLRU:
    def __init__(self, max_bytes):
        self.max, self.d = max_bytes, OrderedDict()

    def put(self, k, nbytes):
        if k in self.d:
            self.d.move_to_end(k)
            return
        self.d[k] = nbytes
        while sum(self.d.values()) > self.max and self.d:
            self.d.popitem(last=False)

    def get(self, k):
        if k in self.d:
            self.d.move_to_end(k)
            return True
        return False


class KeyCachingMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.chains = {w: FilterChain([KeyCaching(min_keys=3), Compress("zlib", None)])
                       for w in WORKERS}
        self.caches = {s: KeyCache(CACHE_BYTES) for s in SERVERS}
        self.models = {s: ModelLRU(CACHE_BYTES) for s in SERVERS}
        self.told = {w: {s: set() for s in SERVERS} for w in WORKERS}  # sender's belief
        self.hit_keys = dict.fromkeys(WORKERS, 0)  # keys a server really took from cache

    def deliver(self, w, s, keys, vals, no_cache=False):
        meta, k, v = self.chains[w].encode(s, {"op": "push", "sender": w, "val_len": 1,
                                               "no_cache": no_cache}, keys, vals)
        sig = key_signature(keys)
        cached = keys.size >= 3 and not no_cache
        if cached:
            assert meta["key_sig"] == sig
            assert (k is None) == (sig in self.told[w][s])
            self.told[w][s].add(sig)
        else:
            assert k is not None and "key_sig" not in meta
        try:
            got_k, got_v = decode_request(meta, k, v, self.caches[s])
        except PSError as e:
            assert e.code == "CACHE_MISS" and k is None
            assert not self.models[s].get((w, sig)), "a miss on a list the server holds"
            return False
        if cached:
            if k is None:
                assert self.models[s].get((w, sig)), "a hit on a list the server lost"
                self.hit_keys[w] += keys.size
            else:
                self.models[s].put((w, sig), keys.nbytes)
        assert got_k.dtype == np.uint64 and got_k.tolist() == keys.tolist()
        np.testing.assert_array_equal(got_v, vals.ravel())
        return True

    @rule(w=st.sampled_from(WORKERS), s=st.sampled_from(SERVERS),
          i=st.integers(0, len(POOL) - 1))
    def send(self, w, s, i):
        keys = POOL[i]
        vals = (keys.astype(np.float32) / 3).reshape(-1, 1)
        if not self.deliver(w, s, keys, vals):  # what kv/recovery do on CACHE_MISS
            self.chains[w].cache_missed(s, keys.size)
            self.told[w][s].clear()
            assert self.deliver(w, s, keys, vals, no_cache=True)
        # the keys the filter says it saved are the keys servers took from their caches
        st = self.chains[w].caching.stats
        assert st.entries_in - st.entries_out == self.hit_keys[w]
        assert st.saved_bytes <= self.hit_keys[w] * 8
        assert set(self.caches[s].lists) == set(self.models[s].d)
        assert list(self.caches[s].lists) == list(self.models[s].d)  # LRU order
        assert self.caches[s].bytes == sum(self.models[s].d.values()) <= CACHE_BYTES

    @rule(s=st.sampled_from(SERVERS))
    def restart_server(self, s):
        self.caches[s] = KeyCache(CACHE_BYTES)
        self.models[s] = ModelLRU(CACHE_BYTES)

    @rule(w=st.sampled_from(WORKERS), s=st.sampled_from(SERVERS + [None]))
    def forget(self, w, s):
        self.chains[w].forget(s)
        for x in SERVERS if s is None else [s]:
            self.told[w][x].clear()


KeyCachingMachine.TestCase.settings = settings(max_examples=MAX, stateful_step_count=30,
                                               deadline=None)
TestKeyCachingMachine = KeyCachingMachine.TestCase
