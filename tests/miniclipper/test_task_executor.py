"""The task executor's scheduling of queries onto model queues (Clipper's
``TaskExecutor``): what a query asking for an input already queued changes."""

import asyncio
import time

import numpy as np
import pytest

from systems.miniclipper.batching import BatchingConfig
from systems.miniclipper.cache import PredictionCache
from systems.miniclipper.metrics import Metrics
from systems.miniclipper.task_executor import TaskExecutor


def test_a_coalesced_query_with_a_shorter_slo_sizes_the_queued_tasks_batch():
    """The same input queued with a 1 s SLO, then asked again with 50 ms: the queued
    task must carry the 50 ms SLO (what the batch-size target and delayed batching's
    reserve are computed from), not only the earlier deadline."""
    async def main():
        ex = TaskExecutor(PredictionCache(), Metrics(), lambda rep, why: None)
        ex.add_model(("m", "1"), "floats", BatchingConfig())
        now = time.monotonic()
        ex.schedule(("m", "1"), [np.ones(3)], now + 1.0, 1.0)
        ex.schedule(("m", "1"), [np.ones(3)], now + 0.05, 0.05)
        q = ex.queues[("m", "1")]
        (task,) = q.take_all()
        return task.slo, task.deadline - now
    slo, deadline = asyncio.run(main())
    assert slo == 0.05 and deadline == pytest.approx(1.0)


def test_a_traced_container_is_named_once_not_once_per_batch():
    """Every traced batch named its container's trace row again (50 batches, 50 names)."""
    from common.trace import TraceWriter
    from systems.miniclipper.batching import make_controller
    from systems.miniclipper.datatypes import PredictTask
    from systems.miniclipper.task_executor import Replica

    tw = TraceWriter("clipper frontend")
    ex = TaskExecutor(PredictionCache(), Metrics(), lambda rep, why: None, tw)
    rep = Replica(("m", "1"), 0, "127.0.0.1:1", 4242, make_controller(BatchingConfig()))
    task = PredictTask(("m", "1"), [1.0], 0.0, 1.0, None, b"k", traced=True)
    for b in range(50):
        ex._trace_batch(rep, [task], b, 1.0, {"t0": 2.0, "t1": 3.0, "pid": 4242})
    assert len([e for e in tw.events if e["ph"] == "M" and e["pid"] == 4242]) == 1
    assert len([e for e in tw.events if e["ph"] == "X" and e["pid"] == 4242]) == 50
