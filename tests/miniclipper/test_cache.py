"""The prediction cache (systems/miniclipper/cache.py): CLOCK under a byte budget,
coalescing of concurrent identical misses, failures that forget the key."""

import asyncio
import random

import pytest

from systems.miniclipper.cache import ENTRY_BYTES, PredictionCache


class ClockReference:
    """Clipper's PredictionCache eviction, transcribed naively (a vector and an index, as
    in src/libclipper/src/task_executor.cpp), as the oracle for ours. Two edge cases follow
    ours, not Clipper's: an output larger than the whole budget is not kept (Clipper's
    ``put`` on a pending entry never checks its size), and the new entry is completed
    after the sweep that makes room for it (Clipper completes it first, so a long sweep
    could evict it)."""

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
        ours, ref = PredictionCache(max_bytes=1000, entry_bytes=0), ClockReference(1000)
        for _ in range(3000):
            key = rng.choice(range(60)).to_bytes(2, "little")
            status, _ = ours.fetch(key)
            ref.fetch(key)
            if status == "miss":
                nbytes = rng.choice([8, 40, 100, 200])
                ours.put(key, key.hex(), nbytes)
                ref.put(key, nbytes + len(key))  # an entry is charged its key too
            assert ours.size_bytes <= 1000
            assert ours.size_bytes == sum(e.nbytes for e in ours.ring.values())
            assert set(ours.ring) == set(ref.entries)
        assert ours.stats.evictions > 100 and ours.stats.hits > 100
    asyncio.run(main())


def test_a_hit_returns_the_stored_value():
    async def main():
        c = PredictionCache(max_bytes=100, entry_bytes=0)
        status, e = c.fetch(b"a")
        assert status == "miss"
        c.put(b"a", [1, 2], 16)
        status, e = c.fetch(b"a")
        assert status == "hit" and e.future.result() == [1, 2]
        assert (c.stats.lookups, c.stats.hits) == (2, 1)
    asyncio.run(main())


def test_clock_gives_a_used_entry_a_second_chance():
    """CLOCK's own rule (a new eviction policy replaces this test with its own): a hit
    sets the used bit, and the hand passes a used entry once before evicting it."""
    async def main():
        c = PredictionCache(max_bytes=100, entry_bytes=0)
        c.fetch(b"a")
        c.put(b"a", [1, 2], 16)
        c.ring[b"a"].used = False
        assert c.fetch(b"a")[1].used
        # "a" was used, "b" not: filling the budget evicts "b" first (second chance)
        c.fetch(b"b")
        c.put(b"b", 0, 40)
        c.ring[b"b"].used = False
        c.fetch(b"c")
        c.put(b"c", 0, 60)
        assert b"a" in c.ring and b"b" not in c.ring and c.size_bytes == 17 + 61
    asyncio.run(main())


def test_a_hot_key_stays_and_keys_never_asked_again_leave():
    """What any sensible eviction policy does, whatever its rule: a key asked for
    between every insertion is nearly always a hit, and keys never asked for again do
    not hold the cache for ever. (Evicting the newest entry passes every other test in
    this file.) LRU would hit the hot key every time; CLOCK misses it once every
    `room` insertions, because a new entry starts with its used bit set (as in
    Clipper), so the hot key's bit says no more than a newcomer's."""
    async def main():
        room = 8
        c = PredictionCache(max_bytes=room * 10, entry_bytes=0)
        hits = 0
        for i in range(40):
            if c.fetch(b"h")[0] == "hit":
                hits += 1
            else:
                c.put(b"h", 0, 9)
            key = b"%02d" % i
            c.fetch(key)
            c.put(key, 0, 8)
        assert hits >= 40 * (room - 1) / room - 1, hits
        assert c.size_bytes <= c.max_bytes
        assert not {b"%02d" % i for i in range(30)} & set(c.ring)
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


def test_outputs_of_no_bytes_still_count_against_the_budget():
    """An empty-string label is 0 bytes of output, but its entry is not free: without
    the per-entry charge the ring grew without bound under any budget."""
    async def main():
        c = PredictionCache(max_bytes=10_000)
        for i in range(2000):
            key = i.to_bytes(16, "little")
            c.fetch(key)
            c.put(key, "", 0)
        per_entry = ENTRY_BYTES + 16
        assert len(c) == 10_000 // per_entry and c.size_bytes == len(c) * per_entry
        assert c.stats.evictions == 2000 - len(c)
    asyncio.run(main())


def test_fetch_many_answers_as_fetch_one_by_one():
    """A request's keys are looked up in one call (task_executor.schedule); statuses,
    shared futures, used bits and statistics must be what fetching each key in turn gives,
    duplicates within the request included."""
    async def main():
        rng = random.Random(1)
        one, many = (PredictionCache(max_bytes=400, entry_bytes=0),
                     PredictionCache(max_bytes=400, entry_bytes=0))
        for _ in range(200):
            keys = [rng.choice(range(30)).to_bytes(2, "little") for _ in range(rng.randint(1, 8))]
            want = [one.fetch(k) for k in keys]
            got = many.fetch_many(keys)
            assert [s for s, _ in got] == [s for s, _ in want]
            for (_, a), (_, b), (_, c), (_, d) in zip(got, got[1:] + got[:1],
                                                      want, want[1:] + want[:1], strict=True):
                assert (a is b) == (c is d)  # same key in one request: one shared entry
            for k, (s, _) in zip(keys, want, strict=True):
                if s == "miss" and rng.random() < 0.7:
                    one.put(k, k.hex(), 40)
                    many.put(k, k.hex(), 40)
            assert set(one.ring) == set(many.ring)
            assert [e.used for e in one.ring.values()] == [e.used for e in many.ring.values()]
        assert one.stats == many.stats and one.stats.hits > 50 and one.stats.coalesced > 20
    asyncio.run(main())


def test_a_pending_prediction_is_never_evicted_and_its_waiters_are_answered():
    """A full cache and a pending miss; completed entries pour in and force the
    clock hand round. The pending entry must survive (its future is completed by
    put), else its waiters are never woken and answer defaults at the SLO."""
    async def main():
        c = PredictionCache(max_bytes=1000, entry_bytes=0)
        _, pending = c.fetch(b"pending")
        for i in range(40):
            key = b"k%03d" % i
            c.fetch(key)
            c.put(key, i, 100)
        assert b"pending" in c.ring
        c.put(b"pending", "y", 10)
        assert pending.future.done() and pending.future.result() == "y"
        assert c.size_bytes <= 1000
    asyncio.run(main())


def test_a_stuck_tasks_failure_leaves_the_entry_renewed_for_later_queries_alone():
    """A query that would join a task stuck on a hung replica gets a new entry
    (renew); the stuck task failing later must not fail that entry's waiters."""
    async def main():
        c = PredictionCache()
        status, old = c.fetch(b"k")
        new = c.renew(b"k")
        assert c.fetch(b"k") == ("pending", new)
        c.fail(b"k", RuntimeError("container died"), old.future)  # the stuck task's
        assert not new.future.done() and c.fetch(b"k")[1] is new
        c.put(b"k", 7.0, 8)  # whichever task answers completes the entry
        assert await new.future == 7.0 and c.fetch(b"k")[0] == "hit"
        c.fail(b"k", RuntimeError("late"), new.future)  # completed: nothing to fail
        return c.fetch(b"k")[0], status
    assert asyncio.run(main()) == ("hit", "miss")
