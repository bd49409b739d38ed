"""Stateful: PredictionCache (fetch_many with duplicates, interleaved pending entries,
put, fail, CLOCK eviction under a byte budget) against a vector-and-hand CLOCK model.

Model-based (hypothesis) tests from a stateful audit (2026-11-28): the real code and
a brute-force model take the same random operations and must agree after each.
Raise ``MODEL_EXAMPLES`` (default 100) to search longer.
"""

import asyncio
import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from systems.miniclipper.cache import PredictionCache

MAX = int(os.environ.get("MODEL_EXAMPLES", 100))
KEYS = [bytes([i]) * (1 + i % 3) for i in range(10)]  # keys of 1..3 bytes
ENTRY = 5


class ClockModel:
    def __init__(self, max_bytes):
        self.max, self.size, self.buf, self.hand = max_bytes, 0, [], 0
        self.e = {}  # key -> [completed, used, nbytes]

    def _remove(self, key):
        i = self.buf.index(key)
        self.buf.pop(i)
        if i < self.hand:
            self.hand -= 1
        self.hand = self.hand % len(self.buf) if self.buf else 0
        del self.e[key]

    def fetch(self, key):
        x = self.e.get(key)
        if x is None:
            self.e[key] = [False, True, 0]
            self.buf.insert(self.hand, key)
            self.hand = (self.hand + 1) % len(self.buf)
            return "miss"
        if x[0]:
            x[1] = True
            return "hit"
        return "pending"

    def put(self, key, nbytes):
        x = self.e.get(key)
        if x is None or x[0]:
            return "noop"
        nb = nbytes + ENTRY + len(key)
        if nb > self.max:
            self._remove(key)
            return "too_large"
        need, ev = self.size + nb - self.max, 0
        while need > 0:
            k = self.buf[self.hand]
            p = self.e[k]
            if p[1] or not p[0]:
                p[1] = False
                self.hand = (self.hand + 1) % len(self.buf)
            else:
                self._remove(k)
                self.size -= p[2]
                need -= p[2]
                ev += 1
        x[0], x[2] = True, nb
        self.size += nb
        return ev

    def fail(self, key):
        x = self.e.get(key)
        if x is None or x[0]:
            return False
        self._remove(key)
        return True


class CacheMachine(RuleBasedStateMachine):
    @initialize(max_bytes=st.sampled_from([0, 9, 30, 60, 150]))
    def setup(self, max_bytes):
        self.loop = asyncio.new_event_loop()
        self.c = PredictionCache(max_bytes=max_bytes, entry_bytes=ENTRY)
        self.m = ClockModel(max_bytes)
        self.futures = {}  # key -> future of the live entry
        self.values = {}

    def teardown(self):
        if hasattr(self, "loop"):
            self.loop.close()

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4))
    def fetch_many(self, keys):
        async def go():
            return self.c.fetch_many(keys)
        got = self.loop.run_until_complete(go())
        want = [self.m.fetch(k) for k in keys]
        assert [s for s, _ in got] == want
        for k, (s, e) in zip(keys, got, strict=True):
            if s == "miss":
                self.futures[k] = e.future
            assert e.future is self.futures[k]
            if s == "hit":
                assert e.future.result() == self.values[k]

    @rule(k=st.sampled_from(KEYS), nbytes=st.integers(0, 40))
    def put(self, k, nbytes):
        before = self.c.stats.evictions
        want = self.m.put(k, nbytes)
        fut = self.futures.get(k)
        pending = fut is not None and not fut.done()
        self.c.put(k, ("v", k, nbytes), nbytes)
        if pending:
            assert fut.result() == ("v", k, nbytes)
            self.values[k] = ("v", k, nbytes)
        if isinstance(want, int):
            assert self.c.stats.evictions - before == want

    @rule(k=st.sampled_from(KEYS))
    def fail(self, k):
        fut = self.futures.get(k)
        failed = self.m.fail(k)
        self.c.fail(k, TimeoutError("x"))
        if failed:
            assert isinstance(fut.exception(), TimeoutError)

    @invariant()
    def same(self):
        if not hasattr(self, "m"):
            return
        m = self.m
        assert list(self.c.ring) == m.buf[m.hand:] + m.buf[:m.hand]
        for k, e in self.c.ring.items():
            assert [e.completed, e.used, e.nbytes] == m.e[k], k
        assert self.c.size_bytes == m.size <= max(m.max, 0)
        assert self.c.size_bytes == sum(e.nbytes for e in self.c.ring.values())


CacheMachine.TestCase.settings = settings(max_examples=MAX, stateful_step_count=40,
                                          deadline=None)
TestCacheMachine = CacheMachine.TestCase
