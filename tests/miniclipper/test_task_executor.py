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
