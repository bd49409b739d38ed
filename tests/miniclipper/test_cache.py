"""The prediction cache (systems/miniclipper/cache.py): CLOCK under a byte budget,
coalescing of concurrent identical misses, failures that forget the key."""

import asyncio
import random

import pytest

from systems.miniclipper.cache import PredictionCache


class ClockReference:
    """Clipper's PredictionCache eviction, transcribed naively (a vector and an index, as
    in src/libclipper/src/task_executor.cpp), as the oracle for ours."""

    def __init__(self, max_bytes):
        self.max, self.size, self.buf, self.hand = max_bytes, 0, [], 0
        self.entries = {}  # key -> [completed, used, nbytes]

    def fetch(self, key):
        e = self.entries.get(key)
        if e is not None:
            if e[0]:
                e[1] = True
            return
        self.entries[key] = [False, True, 0]
        self.buf.insert(self.hand, key)
        self.hand = (self.hand + 1) % len(self.buf)

    def put(self, key, nbytes):
        e = self.entries[key]
        if nbytes > self.max:
            self.buf.remove(key)
            del self.entries[key]
            self.hand = self.hand % len(self.buf) if self.buf else 0
            return
        need = self.size + nbytes - self.max
        while need > 0 and self.buf:
            k = self.buf[self.hand]
            p = self.entries[k]
            if p[1] or not p[0]:
                p[1] = False
                self.hand = (self.hand + 1) % len(self.buf)
            else:
                self.buf.pop(self.hand)
                self.hand = self.hand % len(self.buf) if self.buf else 0
                self.size -= p[2]
                need -= p[2]
                del self.entries[k]
        e[0], e[2] = True, nbytes
        self.size += nbytes


def test_clock_matches_the_reference_and_keeps_its_budget():
    async def main():
        rng = random.Random(0)
        ours, ref = PredictionCache(max_bytes=1000), ClockReference(1000)
        for _ in range(3000):
            key = rng.choice(range(60)).to_bytes(2, "little")
            status, _ = ours.fetch(key)
            ref.fetch(key)
            if status == "miss":
                nbytes = rng.choice([8, 40, 100, 200])
                ours.put(key, key.hex(), nbytes)
                ref.put(key, nbytes)
            assert ours.size_bytes <= 1000
            assert ours.size_bytes == sum(e.nbytes for e in ours.ring.values())
            assert set(ours.ring) == set(ref.entries)
        assert ours.stats.evictions > 100 and ours.stats.hits > 100
    asyncio.run(main())


def test_hit_returns_the_stored_value_and_sets_the_used_bit():
    async def main():
        c = PredictionCache(max_bytes=100)
        status, e = c.fetch(b"a")
        assert status == "miss"
        c.put(b"a", [1, 2], 16)
        c.ring[b"a"].used = False
        status, e = c.fetch(b"a")
        assert status == "hit" and e.future.result() == [1, 2] and e.used
        # "a" was used, "b" not: filling the budget evicts "b" first (second chance)
        c.fetch(b"b")
        c.put(b"b", 0, 40)
        c.ring[b"b"].used = False
        c.fetch(b"c")
        c.put(b"c", 0, 60)
        assert b"a" in c.ring and b"b" not in c.ring and c.size_bytes == 76
    asyncio.run(main())


def test_concurrent_identical_misses_coalesce_into_one():
    async def main():
        c = PredictionCache()
        results = [c.fetch(b"k") for _ in range(5)]
        assert [s for s, _ in results] == ["miss"] + ["pending"] * 4
        futures = {id(e.future) for _, e in results}
        assert len(futures) == 1  # one computation, five waiters
        c.put(b"k", "y", 1)
        assert all(e.future.result() == "y" for _, e in results)
        assert c.stats.coalesced == 4
    asyncio.run(main())


def test_a_failed_prediction_wakes_its_waiters_and_is_forgotten():
    async def main():
        c = PredictionCache()
        _, e = c.fetch(b"k")
        c.fail(b"k", TimeoutError("dropped"))
        with pytest.raises(TimeoutError):
            e.future.result()
        assert c.fetch(b"k")[0] == "miss"  # the next query tries again
    asyncio.run(main())


def test_zero_budget_still_coalesces_but_keeps_nothing():
    async def main():
        c = PredictionCache(max_bytes=0)
        _, e = c.fetch(b"k")
        assert c.fetch(b"k")[0] == "pending"
        c.put(b"k", 1.0, 8)
        assert e.future.result() == 1.0 and len(c) == 0 and c.stats.too_large == 1
    asyncio.run(main())
