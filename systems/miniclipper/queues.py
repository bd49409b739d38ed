"""One queue per model version: earliest deadline first, bounded, expired tasks dropped.

Mirrors ``ModelQueue`` in Clipper's ``src/libclipper/include/clipper/task_executor.hpp``:
a priority queue ordered by each task's deadline (arrival + the query's SLO), from which
an *idle replica pulls* its next batch (``get_batch``), so a fast replica simply comes
back more often and no load balancer is needed. Before a batch is taken, tasks whose
deadline has passed are removed (``remove_tasks_with_elapsed_deadlines``): their query has
already answered with the default output, and sending them would only delay the rest.

Two additions:

* **a bound** (beyond Clipper, as Triton's ``max_queue_size`` and TF Serving's
  ``max_enqueued_batches``): a full queue rejects new work at once with
  :class:`QueueFull`, which the frontend turns into HTTP 429 / gRPC RESOURCE_EXHAUSTED,
  instead of letting the queue, and every query's latency, grow without bound;
* **delayed batching** (Clipper §4.3.2; clipper-v0 ``wait_time_nanos``): when fewer than
  a full batch are waiting, wait up to ``max_delay_s`` after the oldest arrival for more,
  but never so long that a waiting query is left too little of its SLO to be served;
* **one input shape per batch** (as Triton's dynamic batcher, which batches only
  requests of one shape unless a model accepts ragged batches): an app registered
  without ``input_length`` takes inputs of any length, and one client's input of the
  wrong length, batched with others', would make a vectorised model fail the whole
  batch, everyone's queries with it. Clipper batches them together.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

from .datatypes import InputError, PredictTask


class QueueFull(Exception):
    """The model's queue is at its bound; the query is rejected, not queued."""

    def __init__(self, model: tuple[str, str], bound: int):
        super().__init__(f"the queue of model {model[0]}:{model[1]} holds its bound of "
                         f"{bound} queries; retry later")
        self.model, self.bound = model, bound


class TaskExpired(Exception):
    """A task dropped from its queue because its deadline passed before a replica took it."""


class ModelQueue:
    """An EDF queue of :class:`PredictTask` for one model version.

    A task's place in the queue is the *earliest* deadline among the queries waiting
    for it, and it is dropped at the *latest* (``task.deadline``): a query that
    coalesces onto a queued task (same model and input, see :mod:`.cache`) moves it up
    when it is in more of a hurry (:meth:`promote`) and keeps it alive when it can wait
    longer. The heap may then hold an old entry of a task; only the entry matching
    ``_key[task]`` counts, the others are skipped when they surface.
    """

    def __init__(self, model: tuple[str, str], max_len: int = 1024,
                 on_drop: Callable[[PredictTask], None] | None = None):
        self.model, self.max_len = model, max_len
        self.on_drop = on_drop or (lambda task: None)
        self._heap: list[tuple[float, int, PredictTask]] = []
        self._key: dict[int, tuple[float, int]] = {}  # id(task) -> its live entry's (key, seq)
        # the tightest "leave by" any task pushed since the queue was last empty could ask
        # of a delayed batch (see _leave_by): kept as tasks come, so a replica waiting for
        # a fuller batch need not rescan the queue at every arrival. It may remember a
        # task another replica took already; then a batch leaves early, never late.
        self._tight = float("inf")
        self._reserve = 0.0
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._key)

    def _push(self, task: PredictTask, key: float) -> None:
        seq = next(self._seq)
        self._key[id(task)] = (key, seq)
        heapq.heappush(self._heap, (key, seq, task))
        self._tight = min(self._tight, key - self._reserve * task.slo)

    @staticmethod
    def _urgent(task: PredictTask, now: float) -> float:
        """The earliest deadline of a query still waiting for ``task`` (else its last)."""
        w = task.waits
        while w and w[0] <= now:
            heapq.heappop(w)
        return min(w[0], task.deadline) if w else task.deadline

    def _live(self, entry: tuple[float, int, PredictTask]) -> bool:
        return self._key.get(id(entry[2])) == entry[:2]

    def _forget(self, task: PredictTask) -> None:
        del self._key[id(task)]
        if not self._key:
            self._tight = float("inf")

    def _pop_live(self) -> PredictTask | None:
        while self._heap:
            entry = heapq.heappop(self._heap)
            if self._live(entry):
                self._forget(entry[2])
                return entry[2]
        return None

    def put(self, tasks: list[PredictTask], *, bounded: bool = True) -> None:
        """Enqueue all of ``tasks`` or none: raises :class:`QueueFull` over the bound.
        ``bounded=False`` re-admits tasks that were already accepted (a retry after a
        replica died)."""
        if bounded and len(tasks) > self.max_len:  # retrying later cannot help: a 400
            raise InputError(f"a request of {len(tasks)} queries can never fit the queue "
                             f"of model {self.model[0]}:{self.model[1]} (bound "
                             f"{self.max_len}); send it in smaller batches")
        if bounded and len(self) + len(tasks) > self.max_len:
            self._drop_expired(time.monotonic())
            if len(self) + len(tasks) > self.max_len:
                raise QueueFull(self.model, self.max_len)
        now = time.monotonic()
        for t in tasks:
            t.enqueued = t.enqueued or now
            self._push(t, self._urgent(t, now))
        self._changed.set()

    def promote(self, task: PredictTask, deadline: float) -> None:
        """A query with ``deadline`` now waits for ``task`` too: serve the task by the
        earlier of the two (if it is still queued), drop it only after the later."""
        if not task.waits:
            task.waits.append(task.deadline)
        heapq.heappush(task.waits, deadline)
        task.deadline = max(task.deadline, deadline)
        live = self._key.get(id(task))
        if live is not None and deadline < live[0]:
            self._push(task, deadline)
            self._changed.set()  # a delayed batch may have to leave sooner

    def remove(self, task: PredictTask) -> None:
        """Take ``task`` out, if it is still queued (its heap entry is skipped later)."""
        if id(task) in self._key:
            self._forget(task)

    def take_all(self) -> list[PredictTask]:
        """Empty the queue (its model has no replica left to serve it)."""
        tasks = [e[2] for e in sorted(self._heap, key=lambda e: e[:2]) if self._live(e)]
        self._heap.clear()
        self._key.clear()
        self._tight = float("inf")
        return tasks

    def _drop_expired(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            task = entry[2]
            if not self._live(entry):
                continue  # an old entry of a task that was promoted or taken
            if task.deadline > now:  # its most urgent query is past, another still waits
                self._push(task, self._urgent(task, now))
                continue
            self._forget(task)
            self.dropped += 1
            self.on_drop(task)

    async def _wait_change(self, timeout: float | None) -> None:
        self._changed.clear()
        if timeout is None:
            await self._changed.wait()
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def _leave_by(self, max_delay_s: float, reserve: float) -> float:
        """When a delayed batch must leave: ``max_delay_s`` after the oldest arrival, and
        early enough that every waiting task keeps ``reserve`` of its SLO to be run in
        (the share the batch-size controllers give a batch, ``slo_fraction``)."""
        live = [(k, t) for k, s, t in self._heap if self._key.get(id(t)) == (k, s)]
        head = min(t.enqueued for _, t in live)
        return min(head + max_delay_s, min(k - reserve * t.slo for k, t in live))

    async def get_batch(self, max_size: int, max_delay_s: float = 0.0,
                        reserve: float = 0.5) -> list[PredictTask]:
        """Wait for work, then take up to ``max_size`` live tasks, earliest deadline first.

        With ``max_delay_s > 0`` and fewer than ``max_size`` waiting, wait for the batch
        to fill until :meth:`_leave_by`, recomputed whenever the queue changes (a query
        of a shorter SLO may arrive meanwhile).
        """
        while True:
            self._drop_expired(time.monotonic())
            if not self._key:
                await self._wait_change(None)
                continue
            if max_delay_s > 0 and len(self) < max_size:
                # one full scan, then only what arrives can bring the time forward
                self._reserve = reserve
                until = self._leave_by(max_delay_s, reserve)
                self._tight = float("inf")
                while self._key and len(self) < max_size and \
                        (left := min(until, self._tight) - time.monotonic()) > 0:
                    await self._wait_change(left)
                self._drop_expired(time.monotonic())
            batch, other = [], []
            # look past at most max_size tasks of other shapes: a rare shape at the head
            # (one client's odd input) must not cost a scan of the whole queue
            while len(batch) < max_size and len(other) < max_size and \
                    (t := self._pop_live()) is not None:
                (batch if not batch or _shape(t) == _shape(batch[0]) else other).append(t)
            now = time.monotonic()
            for t in other:  # another shape: back in its place, for a batch of its own
                self._push(t, self._urgent(t, now))
            if self._key:
                self._changed.set()  # let another idle replica take the rest
            if batch:
                return batch


def _shape(task: PredictTask) -> tuple[int, ...] | None:
    """What must agree across a batch: a numeric input's shape (strings and bytes are
    lists of items to a model, of any length)."""
    return getattr(task.input, "shape", None)
