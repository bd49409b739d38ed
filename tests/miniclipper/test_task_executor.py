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


class _HungStream:
    """A container stopped mid-batch (SIGSTOP, a deadlock): it takes the batch and
    never answers."""

    async def write(self, req):
        pass

    async def read(self):
        await asyncio.sleep(3600)

    def cancel(self):
        pass


def _app_on_one_model(ex, slo_micros=20_000):
    from systems.miniclipper.query_processor import Application, QueryProcessor
    from systems.miniclipper.selection import make_policy

    qp = QueryProcessor(ex, Metrics())
    qp.current_version["m"] = "1"
    app = Application("app", "doubles", -1, slo_micros, "exp3",
                      state=make_policy("exp3").init_state([]))
    qp.apps["app"] = app
    qp.link(app, ["m"])
    return qp


def _start_replica(ex, rid, stream):
    from systems.miniclipper.batching import make_controller
    from systems.miniclipper.task_executor import Replica

    model = ("m", "1")
    rep = Replica(model, rid, "fake", 1000 + rid, make_controller(ex.models[model].batching))
    rep.stream = stream
    ex.replicas[model][rid] = rep
    rep.loop = asyncio.ensure_future(ex._run(rep))
    return rep


@pytest.mark.parametrize("feedback", [False, True])
def test_a_hung_container_is_found_after_20_slos_with_feedback_in_its_batch_too(feedback):
    """A feedback task (``/update``) carried an SLO of max(1 s, 10x the app's), and the
    hang timeout is 20x the batch's largest SLO: one feedback in a batch made the 0.4 s
    of a 20 ms app 20 s of default answers."""
    async def main():
        loop = asyncio.get_running_loop()
        failed = loop.create_future()
        ex = TaskExecutor(PredictionCache(), Metrics(),
                          lambda rep, why: failed.done() or failed.set_result(why),
                          rpc_timeout_floor_s=0.05)
        ex.add_model(("m", "1"), "doubles", BatchingConfig("static", size=8, max_size=8))
        qp = _app_on_one_model(ex)
        t0 = time.monotonic()
        jobs = [asyncio.ensure_future(qp.predict("app", [np.full(2, 1.0)], t0))]
        if feedback:
            jobs.append(asyncio.ensure_future(qp.update("app", np.full(2, 2.0), 0)))
        await asyncio.sleep(0)  # both queued before the replica takes its batch
        _start_replica(ex, 0, _HungStream())
        await asyncio.wait_for(failed, 30)
        found = time.monotonic() - t0
        for j in jobs:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        return found
    assert asyncio.run(main()) < 3.0  # 20 x 20 ms = 0.4 s; before the fix 20 s


@pytest.mark.parametrize("policy", ["exp4", "exp3"])
def test_a_request_refused_by_one_models_full_queue_leaves_nothing_in_the_others(policy):
    """An ensemble (Exp4) or a batch that Exp3 spreads over models was refused with 429
    by the second model's full queue, but its tasks stayed queued for the first: work
    nobody waited for, which filled the healthy model's queue until it refused too.
    Exp4's feedback (/update) did the same."""
    from systems.miniclipper.query_processor import Application, QueryProcessor
    from systems.miniclipper.queues import QueueFull
    from systems.miniclipper.selection import make_policy

    async def main():
        ex = TaskExecutor(PredictionCache(), Metrics(), lambda rep, why: None)
        for m in ("a", "b"):  # no replicas: nothing drains the queues, as when busy
            ex.add_model((m, "1"), "doubles", BatchingConfig(), max_queue=24)
        qp = QueryProcessor(ex, Metrics())
        qp.current_version.update(a="1", b="1")
        app = Application("ens", "doubles", -1, 10_000_000, policy,
                          state=make_policy(policy).init_state([]))
        qp.apps["ens"] = app
        qp.link(app, ["a", "b"])
        ex.schedule(("b", "1"), [np.full(2, float(i)) for i in range(24)],
                    time.monotonic() + 10, 10)  # b's queue is full
        refused = []
        for r in range(4):
            try:
                await qp.predict("ens", [np.full(2, 100.0 + 20 * r + i) for i in range(16)],
                                 time.monotonic())
            except QueueFull as e:
                refused.append(str(e))
        if policy == "exp4":  # feedback evaluates every model: all or none as well
            for r in range(3):
                with pytest.raises(QueueFull, match="model b:1"):
                    await qp.update("ens", np.full(2, 500.0 + r), 0)
        queued_a = len(ex.queues[("a", "1")])
        ex.queues[("b", "1")].take_all()  # b drains: the same inputs are welcome again
        job = asyncio.ensure_future(qp.predict(
            "ens", [np.full(2, 100.0 + i) for i in range(16)], time.monotonic()))
        await asyncio.sleep(0.01)
        queued = len(ex.queues[("a", "1")]) + len(ex.queues[("b", "1")])
        job.cancel()
        return refused, queued_a, queued
    refused, queued_a, queued = asyncio.run(main())
    assert len(refused) == 4 and all("model b:1" in r for r in refused)
    assert queued_a == 0
    assert queued >= 16  # not answered from a failed cache entry: queued anew


class _SumStream:
    """A healthy container: answers each batch with the sums of its inputs."""

    def __init__(self):
        self.replies = asyncio.Queue()

    async def write(self, req):
        from systems.miniclipper.datatypes import decode_batch, encode_outputs

        meta, xs = decode_batch(req)
        await self.replies.put(encode_outputs([float(np.sum(x)) for x in xs], len(xs),
                                              {"batch_id": meta["batch_id"]}))

    async def read(self):
        return await self.replies.get()

    def cancel(self):
        pass


def _one_replica(stream, batch=1):
    """An executor whose model's replica 0 answers through ``stream``, the app of
    ``_app_on_one_model`` (SLO 20 ms) and the input the hedging tests ask for. Call it
    inside the event loop (the replica's loop starts at once)."""
    ex = TaskExecutor(PredictionCache(), Metrics(), lambda rep, why: None,
                      rpc_timeout_floor_s=30.0)
    ex.add_model(("m", "1"), "doubles", BatchingConfig("static", size=batch, max_size=batch))
    qp = _app_on_one_model(ex)
    _start_replica(ex, 0, stream)
    return ex, qp, np.array([1.0, 2.0])


def test_queries_for_an_input_a_hung_replica_holds_go_to_a_healthy_one():
    """Replica 0 hangs holding input X; replica 1 is healthy. Every later query for X
    joined the hung task (the cache's pending entry) and answered the default until the
    hang timeout (5 s at least), while replica 1 idled: 48 of 48 in the review's run."""
    async def main():
        ex, qp, x = _one_replica(_HungStream())
        first = asyncio.ensure_future(qp.predict("app", [x], time.monotonic()))
        await asyncio.sleep(0.01)  # replica 0 took X's batch and hangs
        _start_replica(ex, 1, _SumStream())
        (answer,) = await first
        assert answer["default"]  # its batch hung: the default at the SLO
        later = [(await qp.predict("app", [x], time.monotonic()))[0] for _ in range(10)]
        return answer, later
    first, later = asyncio.run(main())
    assert [r["output"] for r in later] == [3.0] * 10  # from replica 1, none a default


class _SlowStream(_SumStream):
    """A slow, not dead, container: each answer 80 ms late (4 SLOs, far under 20)."""

    async def read(self):
        reply = await self.replies.get()
        await asyncio.sleep(0.08)
        return reply


def test_a_stuck_tasks_late_answer_still_reaches_the_queries_that_joined_it():
    """A query that re-queued the input (its batch past the SLO) took over the cache
    entry, and the slow task's answer then completed only that entry: a feedback that
    had joined the slow task waited its whole second and scored nothing."""
    async def main():
        ex, qp, x = _one_replica(_SlowStream())
        t0 = time.monotonic()
        feedback = asyncio.ensure_future(qp.update("app", x, 3.0))
        await asyncio.sleep(0.03)  # its batch is in flight past the 20 ms SLO
        _start_replica(ex, 1, _SumStream())
        (answer,) = await qp.predict("app", [x], time.monotonic())
        done = await feedback
        return answer, done, time.monotonic() - t0
    answer, done, took = asyncio.run(main())
    assert answer["output"] == 3.0 and done["ok"] and took < 0.5  # not the 1 s deadline


def test_an_input_asked_twice_in_a_request_is_queued_anew_once():
    """Each copy of an input whose batch hung renewed the entry again: two tasks for
    one input, and the first copy answered the default though it was computed."""
    async def main():
        ex, qp, x = _one_replica(_HungStream(), batch=4)
        first = asyncio.ensure_future(qp.predict("app", [x], time.monotonic()))
        await asyncio.sleep(0.01)
        _start_replica(ex, 1, _SumStream())
        await first
        await asyncio.sleep(0.03)  # X's batch is in flight past its SLO
        out = await qp.predict("app", [x, x], time.monotonic())
        sizes = [b[1] for b in ex.batch_log[("m", "1")] if b[4] == 1]
        return out, sizes
    out, sizes = asyncio.run(main())
    assert [(r["output"], r["default"]) for r in out] == [(3.0, False)] * 2
    assert sizes == [1]  # one task for both copies


def test_a_batch_whose_container_died_is_retried_max_retries_times_then_failed():
    """A poison query kills every container that takes it: its task is put back in the
    queue MAX_RETRIES times (three containers in all, with 2), then failed with
    ContainerDied. One retry more cost another container restart, and the explanation,
    which names the constant, hid it."""
    from systems.miniclipper.task_executor import MAX_RETRIES, ContainerDied

    async def main():
        ex = TaskExecutor(PredictionCache(), Metrics(), lambda rep, why: None)
        ex.add_model(("m", "1"), "doubles", BatchingConfig())
        (fut,) = ex.schedule(("m", "1"), [np.ones(2)], time.monotonic() + 30, 1.0)
        q = ex.queues[("m", "1")]
        (task,) = q.take_all()  # a replica took it; its container dies
        requeued = []
        for _ in range(MAX_RETRIES):
            ex._retry([task])
            again = q.take_all()
            requeued.append((again == [task], task.retries, fut.done()))
        ex._retry([task])  # the container of its last try dies too
        return requeued, len(q), fut
    requeued, left, fut = asyncio.run(main())
    assert MAX_RETRIES == 2
    assert requeued == [(True, 1, False), (True, 2, False)]
    assert left == 0 and isinstance(fut.exception(), ContainerDied)
    assert "its container died and 2 retries were spent" in str(fut.exception())


def test_a_batch_of_two_slos_is_sized_for_the_tighter_one():
    """Queries of a 10 ms app and a 1 s app in one batch: the controller's target is
    slo_fraction x 10 ms. Sized for the 1 s SLO, batches grow past what the 10 ms
    queries can afford."""
    from systems.miniclipper.batching import StaticBatcher
    from systems.miniclipper.task_executor import Replica

    told = []

    class _Recording(StaticBatcher):
        def update_batch_size(self, batch_size, latency_s, target_s):
            told.append((batch_size, target_s))
            return super().update_batch_size(batch_size, latency_s, target_s)

    async def main():
        cfg = BatchingConfig("static", size=2, max_size=2, slo_fraction=0.5)
        ex = TaskExecutor(PredictionCache(), Metrics(), lambda rep, why: None,
                          rpc_timeout_floor_s=30.0)
        ex.add_model(("m", "1"), "doubles", cfg)
        deadline = time.monotonic() + 30
        futures = (ex.schedule(("m", "1"), [np.full(2, 1.0)], deadline, 1.0)
                   + ex.schedule(("m", "1"), [np.full(2, 2.0)], deadline, 0.01))
        rep = Replica(("m", "1"), 0, "fake", 1000, _Recording(cfg))
        rep.stream = _SumStream()
        ex.replicas[("m", "1")][0] = rep
        rep.loop = asyncio.ensure_future(ex._run(rep))
        outs = await asyncio.wait_for(asyncio.gather(*futures), 10)
        rep.loop.cancel()
        await asyncio.gather(rep.loop, return_exceptions=True)
        return outs
    assert asyncio.run(main()) == [2.0, 4.0]
    assert told == [(2, 0.01 * 0.5)]


def test_a_query_for_a_version_being_stopped_is_answered_at_once_not_at_its_slo():
    """Between stop_model (which answers what is queued) and remove_model (which drops
    the queue), a query pinned to that version was queued, then left behind with the
    queue: it waited its whole SLO and read as an SLO miss. It is answered at once."""
    from systems.miniclipper.task_executor import ModelStopped

    async def main():
        ex = TaskExecutor(PredictionCache(), Metrics(), lambda rep, why: None)
        ex.add_model(("m", "1"), "floats", BatchingConfig())
        ex.stop_model(("m", "1"), "model m:1 was stopped (delete_versioned_model)")
        (fut,) = ex.schedule(("m", "1"), [np.ones(3)], time.monotonic() + 60, 60.0)
        await asyncio.sleep(0)
        return fut, len(ex.queues[("m", "1")].take_all())
    fut, queued = asyncio.run(main())
    assert queued == 0 and isinstance(fut.exception(), ModelStopped)
    assert "was stopped" in str(fut.exception())


def test_a_pause_of_the_frontend_itself_does_not_condemn_a_replica_that_answered():
    """The frontend stopped (SIGSTOP, a stalled VM) longer than the hang timeout while
    a batch was out: on resume the timer fired before the reply waiting in the socket
    was read, and the healthy replica was restarted (4 of 4 runs of a 7 s pause). The
    loop is blocked here for 1.5 s, three hang timeouts; the reply comes as gRPC's
    own thread hands it over once the process runs again, 0.1 s after."""
    import threading

    class _Answering(_SumStream):
        async def read(self):
            reply = await self.replies.get()
            loop, got = asyncio.get_running_loop(), asyncio.Future()
            threading.Timer(1.6, loop.call_soon_threadsafe, (got.set_result, reply)).start()
            return await got

    async def main():
        failures = []
        ex = TaskExecutor(PredictionCache(), Metrics(), lambda rep, why: failures.append(why),
                          rpc_timeout_floor_s=0.5)
        ex.add_model(("m", "1"), "doubles", BatchingConfig("static", size=1, max_size=1))
        qp = _app_on_one_model(ex, slo_micros=20_000)  # hung after max(0.5 s, 20 SLOs)
        _start_replica(ex, 0, _Answering())
        job = asyncio.ensure_future(qp.predict("app", [np.full(2, 1.5)], time.monotonic()))
        await asyncio.sleep(0.05)  # the batch is out
        time.sleep(1.5)  # the whole frontend stops
        await job  # (the default, at the 20 ms SLO)
        await asyncio.sleep(0.4)  # the reply arrives 0.1 s after the resume
        return failures, [row[1] for row in ex.batch_log[("m", "1")]]
    failures, batches = asyncio.run(main())
    assert failures == [] and batches == [1]  # the batch was answered, nobody restarted
