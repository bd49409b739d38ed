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
  a full batch are waiting, wait up to ``max_delay_s`` after the oldest arrival for more.
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
    """An EDF queue of :class:`PredictTask` for one model version."""

    def __init__(self, model: tuple[str, str], max_len: int = 1024,
                 on_drop: Callable[[PredictTask], None] | None = None):
        self.model, self.max_len = model, max_len
        self.on_drop = on_drop or (lambda task: None)
        self._heap: list[tuple[float, int, PredictTask]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, tasks: list[PredictTask], *, bounded: bool = True) -> None:
        """Enqueue all of ``tasks`` or none: raises :class:`QueueFull` over the bound.
        ``bounded=False`` re-admits tasks that were already accepted (a retry after a
        replica died)."""
        if bounded and len(tasks) > self.max_len:  # retrying later cannot help: a 400
            raise InputError(f"a request of {len(tasks)} queries can never fit the queue "
                             f"of model {self.model[0]}:{self.model[1]} (bound "
                             f"{self.max_len}); send it in smaller batches")
        if bounded and len(self._heap) + len(tasks) > self.max_len:
            self._drop_expired(time.monotonic())
            if len(self._heap) + len(tasks) > self.max_len:
                raise QueueFull(self.model, self.max_len)
        now = time.monotonic()
        for t in tasks:
            t.enqueued = t.enqueued or now
            heapq.heappush(self._heap, (t.deadline, next(self._seq), t))
        self._changed.set()

    def take_all(self) -> list[PredictTask]:
        """Empty the queue (its model has no replica left to serve it)."""
        tasks = [t for _, _, t in self._heap]
        self._heap.clear()
        return tasks

    def _drop_expired(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, task = heapq.heappop(self._heap)
            if task.deadline > now:  # a coalesced duplicate extended it: re-key, keep it
                heapq.heappush(self._heap, (task.deadline, next(self._seq), task))
                continue
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

    async def get_batch(self, max_size: int, max_delay_s: float = 0.0) -> list[PredictTask]:
        """Wait for work, then take up to ``max_size`` live tasks, earliest deadline first.

        With ``max_delay_s > 0`` and fewer than ``max_size`` waiting, wait until
        ``max_delay_s`` after the oldest waiting task arrived (never past its deadline)
        for the batch to fill.
        """
        while True:
            self._drop_expired(time.monotonic())
            if not self._heap:
                await self._wait_change(None)
                continue
            if max_delay_s > 0 and len(self._heap) < max_size:
                head = min(t.enqueued for _, _, t in self._heap)
                until = min(head + max_delay_s, self._heap[0][2].deadline)
                while len(self._heap) < max_size and (left := until - time.monotonic()) > 0:
                    await self._wait_change(left)
                self._drop_expired(time.monotonic())
            n = min(max_size, len(self._heap))
            batch = [heapq.heappop(self._heap)[2] for _ in range(n)]
            if self._heap:
                self._changed.set()  # let another idle replica take the rest
            if batch:
                return batch
