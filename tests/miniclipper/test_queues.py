"""Model queues (systems/miniclipper/queues.py): EDF, bounds, dropping, delayed batching."""

import asyncio
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from systems.miniclipper import queues
from systems.miniclipper.datatypes import PredictTask
from systems.miniclipper.queues import ModelQueue, QueueFull


def _task(deadline, i=0):
    return PredictTask(("m", "1"), i, deadline, 1.0, None, bytes([i]))


def test_batches_come_out_earliest_deadline_first():
    async def main():
        q = ModelQueue(("m", "1"))
        now = time.monotonic()
        q.put([_task(now + d, i) for i, d in enumerate([5, 1, 3, 2, 4])])
        first = await q.get_batch(3)
        second = await q.get_batch(3)
        return [t.input for t in first], [t.input for t in second]
    assert asyncio.run(main()) == ([1, 3, 2], [4, 0])


def test_expired_tasks_are_dropped_before_a_replica_sees_them():
    async def main():
        dropped = []
        q = ModelQueue(("m", "1"), on_drop=dropped.append)
        now = time.monotonic()
        q.put([_task(now - 0.001, 0), _task(now + 10, 1), _task(now - 0.5, 2)])
        batch = await q.get_batch(10)
        return [t.input for t in batch], sorted(t.input for t in dropped), q.dropped
    assert asyncio.run(main()) == ([1], [0, 2], 2)


def test_a_deadline_extended_by_a_coalesced_duplicate_hides_no_expired_task():
    """The cache extends a pending task's deadline when a duplicate query joins it; the
    heap still holds the old key. Expired tasks behind it must still be dropped."""
    async def main():
        dropped = []
        q = ModelQueue(("m", "1"), on_drop=dropped.append)
        now = time.monotonic()
        extended = _task(now - 0.01, 0)
        q.put([extended, _task(now - 0.005, 1), _task(now + 10, 2)])
        extended.deadline = now + 10  # what PredictionCache does for a duplicate
        batch = await q.get_batch(10)
        return sorted(t.input for t in batch), [t.input for t in dropped]
    assert asyncio.run(main()) == ([0, 2], [1])


def test_a_full_queue_rejects_all_of_a_request_and_admits_after_expiry():
    async def main():
        q = ModelQueue(("m", "1"), max_len=3)
        now = time.monotonic()
        q.put([_task(now + 0.05, i) for i in range(3)])
        with pytest.raises(QueueFull, match="holds its bound of 3"):
            q.put([_task(now + 10, 9)])
        assert len(q) == 3
        await asyncio.sleep(0.06)  # the three expire: room again
        q.put([_task(now + 10, 8), _task(now + 10, 7)])
        q.put([_task(now + 10, i) for i in range(10, 15)], bounded=False)  # a retry is
        return len(q)  # never refused
    assert asyncio.run(main()) == 7


def test_delayed_batching_waits_for_a_fuller_batch_but_not_longer_than_the_delay():
    async def main():
        q = ModelQueue(("m", "1"))
        now = time.monotonic()
        q.put([_task(now + 10, 0)])

        async def late_arrivals():
            for i in range(1, 4):
                await asyncio.sleep(0.005)
                q.put([_task(now + 10, i)])
        feeder = asyncio.ensure_future(late_arrivals())
        t0 = time.monotonic()
        full = await q.get_batch(4, max_delay_s=0.5)  # fills long before the delay
        filled_after = time.monotonic() - t0
        await feeder
        q.put([_task(now + 10, 9)])
        t0 = time.monotonic()
        lone = await q.get_batch(4, max_delay_s=0.03)  # never fills: waits the delay
        waited = time.monotonic() - t0
        return len(full), filled_after, len(lone), waited
    n_full, filled_after, n_lone, waited = asyncio.run(main())
    assert n_full == 4 and filled_after < 0.4
    assert n_lone == 1 and 0.02 <= waited < 0.4


def test_delayed_batching_leaves_each_query_its_share_of_the_slo():
    """An idle replica waiting for a fuller batch must leave in time to serve what
    waits: by ``deadline - reserve * slo`` of every queued task, also of one that came
    in during the wait with a shorter SLO. (It used to wait until the first task's
    deadline, then drop it as expired, and to miss later arrivals.)"""
    async def main():
        dropped = []
        q = ModelQueue(("m", "1"), on_drop=dropped.append)
        now = time.monotonic()
        q.put([PredictTask(("m", "1"), 0, now + 0.04, 0.04, None, b"a")])
        t0 = time.monotonic()
        lone = await q.get_batch(8, max_delay_s=0.2, reserve=0.5)
        lone_after = time.monotonic() - t0
        q.put([PredictTask(("m", "1"), 1, time.monotonic() + 1.0, 1.0, None, b"slow")])

        async def tight():
            await asyncio.sleep(0.01)
            q.put([PredictTask(("m", "1"), 2, time.monotonic() + 0.04, 0.04, None, b"fast")])
        feeder = asyncio.ensure_future(tight())
        t0 = time.monotonic()
        both = await q.get_batch(8, max_delay_s=0.3, reserve=0.5)
        both_after = time.monotonic() - t0
        await feeder
        return [t.input for t in lone], lone_after, [t.input for t in both], both_after, \
            dropped
    lone, lone_after, both, both_after, dropped = asyncio.run(main())
    assert lone == [0] and 0.01 <= lone_after < 0.035  # left at ~20 ms of its 40
    assert both == [2, 1] and both_after < 0.1 and dropped == []


def test_a_coalesced_query_in_a_hurry_moves_the_queued_task_up():
    """EDF by the most urgent query waiting for a task; dropped only after the last."""
    async def main():
        dropped = []
        q = ModelQueue(("m", "1"), on_drop=dropped.append)
        now = time.monotonic()
        shared, other = _task(now + 2.0, 0), _task(now + 1.0, 1)
        q.put([shared, other])
        q.promote(shared, now + 0.5)  # a 0.5 s query joins the 2 s one
        assert len(q) == 2 and shared.deadline == now + 2.0
        first = await q.get_batch(1)
        late = _task(now + 0.02, 2)
        q.put([late])
        q.promote(late, now + 5)  # a patient query keeps it alive past the first's
        await asyncio.sleep(0.05)
        rest = await q.get_batch(10)
        return [t.input for t in first], sorted(t.input for t in rest), dropped, len(q)
    first, rest, dropped, left = asyncio.run(main())
    assert first == [0] and rest == [1, 2] and dropped == [] and left == 0


def test_idle_replicas_share_one_queue():
    async def main():
        q = ModelQueue(("m", "1"))
        now = time.monotonic()
        pulls = [asyncio.ensure_future(q.get_batch(2)) for _ in range(3)]
        await asyncio.sleep(0.01)
        q.put([_task(now + 10, i) for i in range(6)])
        batches = await asyncio.gather(*pulls)
        return sorted(t.input for b in batches for t in b), [len(b) for b in batches]
    inputs, sizes = asyncio.run(main())
    assert inputs == list(range(6)) and sizes == [2, 2, 2]


def test_a_promoted_task_is_queued_once_and_a_wait_scans_the_queue_once(monkeypatch):
    """After its urgent deadline passed, a promoted task was re-keyed beside its older
    entry, and both counted (take_all returned it twice); and a replica waiting for a
    fuller batch rescanned the whole queue at every arrival (O(batch^2) per batch)."""
    async def main():
        q = ModelQueue(("m", "1"))
        now = time.monotonic()
        t = _task(now + 1.0)
        q.put([t])
        q.promote(t, now + 0.01)
        await asyncio.sleep(0.02)
        q._drop_expired(time.monotonic())  # the urgent query is gone; t stays for the rest
        assert q.take_all() == [t]
        scans = []
        real = ModelQueue._leave_by
        monkeypatch.setattr(ModelQueue, "_leave_by",
                            lambda self, *a: scans.append(1) or real(self, *a))
        q.put([_task(time.monotonic() + 10, 0)])

        async def feed():
            for i in range(1, 64):
                await asyncio.sleep(0)
                q.put([_task(time.monotonic() + 10, i)])
        feeder = asyncio.ensure_future(feed())
        batch = await q.get_batch(64, max_delay_s=0.5)
        await feeder
        return len(batch), len(scans)
    n, scans = asyncio.run(main())
    assert n == 64 and scans == 1


def test_a_request_that_would_overfill_a_partly_full_queue_is_refused_whole():
    """A bound of 3 with 2 queued, a request of 2: 4 > 3, so QueueFull and nothing queued."""
    async def main():
        q = ModelQueue(("m", "1"), max_len=3)
        now = time.monotonic()
        q.put([_task(now + 10, 0), _task(now + 10, 1)])
        with pytest.raises(QueueFull):
            q.put([_task(now + 10, 2), _task(now + 10, 3)])
        return len(q)
    assert asyncio.run(main()) == 2


def test_delayed_batching_counts_the_delay_from_the_oldest_arrival():
    """Tasks that queued while the replica was busy; the oldest has waited 0.1 s,
    so with max_delay 0.15 the batch must leave ~0.05 s after the call, not 0.15 s."""
    async def main():
        q = ModelQueue(("m", "1"))
        now = time.monotonic()
        q.put([_task(now + 10, 0)])
        await asyncio.sleep(0.1)
        q.put([_task(now + 10, 1)])
        t0 = time.monotonic()
        batch = await q.get_batch(8, max_delay_s=0.15)
        return len(batch), time.monotonic() - t0
    n, waited = asyncio.run(main())
    assert n == 2 and waited < 0.14, waited  # counted from the newest: 0.15 s or more


def test_edf_goes_by_the_earliest_query_still_waiting_for_a_coalesced_task(monkeypatch):
    """Queries at +10, +1 and +5 wait for A; B's at +7. Once the +1 query has answered
    its default, A's earliest waiting query is +5, ahead of B. And a promoted task that
    a dying replica hands back (TaskExecutor._retry) keeps its urgent query's place:
    the queue used to key both by the latest deadline (+10), serving B first (found by
    a stateful audit against the docstring; the machine below is that audit's model)."""

    class Clock:
        now = 100.0

        @classmethod
        def monotonic(cls):
            return cls.now

    monkeypatch.setattr(queues, "time", Clock)

    async def main():
        q = ModelQueue(("m", "1"))
        a, b = _task(110.0, 0), _task(107.0, 1)
        q.put([a, b])
        q.promote(a, 101.0)
        q.promote(a, 105.0)
        Clock.now = 102.0  # the +1 query is past
        first = [t.input for t in await q.get_batch(1)]
        q.take_all()
        Clock.now = 100.0
        c = _task(110.0, 2)
        q.put([c])
        q.promote(c, 101.0)
        taken = await q.get_batch(1)  # a replica takes C, and dies
        q.put([_task(105.0, 3)])
        taken[0].enqueued = 0.0
        q.put(taken, bounded=False)  # the retry, while the +1 query still waits
        second = [t.input for t in await q.get_batch(1)]
        return first, second
    assert asyncio.run(main()) == ([0], [2])


# ---- stateful, against the docstring: each batch holds the tasks whose earliest
# deadline among the queries *still waiting* for them is smallest, and a task is dropped
# only when no query waits for it any more. Model: per task, its queries' deadlines.
class FakeTime:
    now = 100.0

    @classmethod
    def monotonic(cls):
        return cls.now


class EDFMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self._real = queues.time
        queues.time = FakeTime
        FakeTime.now = 100.0
        self.loop = asyncio.new_event_loop()
        self.q = ModelQueue(("m", "1"), max_len=1000)
        self.waits = {}  # input -> deadlines of the queries waiting for it
        self.queued, self.taken, self.n = {}, [], 0

    def teardown(self):
        if hasattr(self, "_real"):
            queues.time = self._real
            self.loop.close()

    def urgent(self, i):
        return min((d for d in self.waits[i] if d > FakeTime.now), default=None)

    @rule(ds=st.lists(st.integers(1, 8), min_size=1, max_size=3))
    def put(self, ds):
        tasks = []
        for d in ds:
            self.n += 1
            t = PredictTask(("m", "1"), self.n, FakeTime.now + d, 1.0, None, b"")
            self.waits[self.n] = [t.deadline]
            tasks.append(t)
        self.q.put(tasks)
        self.queued.update({t.input: t for t in tasks})

    @precondition(lambda self: self.queued or self.taken)
    @rule(data=st.data(), d=st.integers(1, 8))
    def coalesce(self, data, d):
        """A query for the same input joins a queued or a taken (running) task."""
        t = data.draw(st.sampled_from(sorted(list(self.queued.values()) + self.taken,
                                             key=lambda t: t.input)))
        self.q.promote(t, FakeTime.now + d)
        self.waits[t.input].append(FakeTime.now + d)

    @precondition(lambda self: self.taken)
    @rule(data=st.data())
    def retry(self, data):
        """The replica running a batch died: its tasks still awaited come back."""
        tasks = [t for t in self.taken if self.urgent(t.input) is not None]
        self.taken = []
        if tasks:
            for t in tasks:
                t.enqueued = 0.0
            self.q.put(tasks, bounded=False)
            self.queued.update({t.input: t for t in tasks})

    @rule(dt=st.sampled_from([0.5, 1.0, 1.5]))
    def tick(self, dt):
        FakeTime.now += dt

    @precondition(lambda self: any(self.urgent(i) is not None for i in self.queued))
    @rule(k=st.integers(1, 3))
    def get_batch(self, k):
        got = self.loop.run_until_complete(self.q.get_batch(k))
        for t in got:
            del self.queued[t.input]
        for t in list(self.queued.values()):
            if self.urgent(t.input) is None:
                del self.queued[t.input]  # expired: dropped by the queue too
        assert all(self.urgent(t.input) is not None for t in got), "served an expired task"
        worst = max(self.urgent(t.input) for t in got)
        rest = [self.urgent(i) for i in self.queued]
        assert all(worst <= u for u in rest), (
            "EDF by the earliest query still waiting",
            [(t.input, self.urgent(t.input)) for t in got],
            {i: self.urgent(i) for i in self.queued})
        self.taken = got

    @invariant()
    def nothing_lost(self):
        if hasattr(self, "q"):
            alive = {i for i in self.queued if self.urgent(i) is not None}
            live = {t.input for k, q, t in self.q._heap if self.q._live((k, q, t))}
            assert alive <= live


EDFMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30,
                                        deadline=None)
TestEDFMachine = EDFMachine.TestCase


def test_a_batch_holds_inputs_of_one_shape_and_the_others_wait_their_turn():
    """One client's input of another length, batched with everyone's, made a vectorised
    model fail the whole batch: every co-batched query answered the default."""
    import numpy as np

    async def main():
        q = ModelQueue(("m", "1"))
        now = time.monotonic()
        lengths = [3, 2, 3, 3, 2, 3]
        q.put([PredictTask(("m", "1"), np.zeros(n), now + 1 + i / 100, 1.0, None,
                           bytes([i])) for i, n in enumerate(lengths)])
        first = await q.get_batch(2)
        second = await q.get_batch(8)
        third = await q.get_batch(8)
        return first, second, third, len(q)
    first, second, third, left = asyncio.run(main())
    assert [t.key for t in first] == [b"\0", b"\2"]  # EDF among the head's shape
    assert [t.key for t in second] == [b"\1", b"\4"]  # the skipped kept their places
    assert [t.key for t in third] == [b"\3", b"\5"] and left == 0


def test_a_rare_shape_at_the_head_looks_past_a_bounded_number_of_tasks(monkeypatch):
    """An odd-length input at the head popped and re-pushed the whole queue (1024 tasks)
    to make a batch of one, on the event loop, once per odd input."""
    import numpy as np

    async def main():
        q = ModelQueue(("m", "1"))
        now = time.monotonic()
        q.put([PredictTask(("m", "1"), np.zeros(2 if i == 0 else 3), now + 1 + i / 1e4,
                           1.0, None, i.to_bytes(2, "big")) for i in range(1000)])
        pops = [0]
        real = q._pop_live

        def counting():
            pops[0] += 1
            return real()
        monkeypatch.setattr(q, "_pop_live", counting)
        first = await q.get_batch(8)
        return first, pops[0], len(q)
    first, pops, left = asyncio.run(main())
    assert [len(t.input) for t in first] == [2] and left == 999
    assert pops <= 9  # the head and at most 8 others, not 1000
