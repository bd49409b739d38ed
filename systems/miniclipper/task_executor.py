"""The task executor: cache, model queues, and one batching loop per replica (§4).

Mirrors Clipper's ``TaskExecutor`` (``src/libclipper/include/clipper/task_executor.hpp``):
``schedule_predictions`` looks each (model, input) up in the prediction cache, and only a
miss becomes a task in that model's queue; each connected replica runs a loop that takes
the next batch from its model's queue, sends it to its container, completes the cache's
futures with the outputs, and tells its batch-size controller how long the batch took.

What happens when things go wrong (beyond Clipper, which logs and moves on):

* a model that fails its batch (exception, wrong output count or type) fails those
  tasks only, with :class:`ModelError`; the queries answer with the default output and
  the error as the explanation;
* a container that dies or stops answering: its in-flight batch is put back in the
  queue (unless past its deadline), so another replica, or the restarted one, serves it
  within the SLO; the replica's loop ends and the supervisor is told to restart it;
* a batch in flight past its SLO (its replica may be hung, which is found only after
  20 SLOs): a new query for one of its inputs is queued anew instead of joining it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from common import rpc
from common.stalls import LoopWatchdog
from common.trace import TraceWriter, now_us

from .batching import BatchController, BatchingConfig, make_controller
from .cache import PredictionCache
from .container import SERVICE
from .datatypes import PredictTask, decode_outputs, encode_batch, input_keys, model_seed
from .metrics import Metrics
from .queues import ModelQueue, TaskExpired

MAX_RETRIES = 2
# A container that has not answered a batch in 20x its SLO, and RPC_TIMEOUT_FLOOR_S at
# least, is taken as hung (SIGSTOPped, deadlocked, swapping): the batch is retried and the
# replica restarted. The floor keeps a short SLO from condemning a container over one
# slow batch; a test sets it lower through the environment, as for supervisor.py's
# restart settings.
RPC_TIMEOUT_FLOOR_S = float(os.environ.get("CLIPPER_RPC_TIMEOUT_FLOOR_S", "5.0"))
STALL_EXCUSED_S = 1.0  # a stall of the frontend this long excuses one timeout (_send)
log = logging.getLogger("miniclipper.executor")


class ModelError(Exception):
    """A model failed the batch this query was in."""


class ModelStopped(Exception):
    """The query's model version was stopped (``delete_versioned_model``) while the query
    waited for it; the default output says so instead of blaming the SLO."""


class ContainerDied(Exception):
    """The query's container died (or hung) and retrying on another replica ran out of
    attempts, or its model has no replica left; the default output says so instead of
    blaming the SLO. (A query whose deadline passes first answers at its SLO, as an SLO
    miss: it cannot wait to learn why its batch is late.)"""


@dataclass
class ModelInfo:
    input_type: str
    batching: BatchingConfig
    max_queue: int
    seed: int = 0  # datatypes.model_seed(model), made once


@dataclass
class Replica:
    """A connected container: where it listens and the controller that sizes its batches."""

    model: tuple[str, str]
    replica_id: int
    address: str
    pid: int
    controller: BatchController
    channel: Any = None
    stream: Any = None  # the persistent PredictStream call (Clipper's container connection)
    loop: asyncio.Task | None = None
    inflight: list[PredictTask] = field(default_factory=list)
    batches: int = 0


class TaskExecutor:
    """Queues per model version, a batching loop per replica, the cache in front."""

    def __init__(self, cache: PredictionCache, metrics: Metrics,
                 on_replica_failure: Callable[[Replica, str], None],
                 tracer: TraceWriter | None = None,
                 rpc_timeout_floor_s: float = RPC_TIMEOUT_FLOOR_S):
        self.cache, self.metrics, self.tracer = cache, metrics, tracer
        self.on_replica_failure = on_replica_failure
        self.rpc_timeout_floor_s = rpc_timeout_floor_s
        self.models: dict[tuple[str, str], ModelInfo] = {}
        self.queues: dict[tuple[str, str], ModelQueue] = {}
        self.replicas: dict[tuple[str, str], dict[int, Replica]] = {}
        self.batch_log: dict[tuple[str, str], deque] = {}
        self.unavailable: dict[tuple[str, str], str] = {}  # model -> why no replica runs
        self.stopping: dict[tuple[str, str], str] = {}  # model -> why (stop_model)
        self.watchdog = LoopWatchdog()  # our own stalls excuse a late reply (_send)
        self._batch_ids = itertools.count()
        self._traced_pids: set[int] = set()  # container rows named in the trace already

    def add_model(self, model: tuple[str, str], input_type: str, batching: BatchingConfig,
                  max_queue: int = 1024) -> None:
        self.models[model] = ModelInfo(input_type, batching, max_queue, model_seed(model))
        self.queues[model] = ModelQueue(model, max_queue, on_drop=self._dropped)
        self.replicas.setdefault(model, {})
        self.batch_log[model] = deque(maxlen=20000)

    def no_replicas(self, model: tuple[str, str], why: str) -> None:
        """The supervisor gave up on the model's last replica: answer what waits for it,
        and every new query until a replica runs again, with ``why`` (instead of letting
        each sit in the queue until its SLO runs out, explained as an SLO miss)."""
        self.unavailable[model] = why
        for t in self.queues[model].take_all():
            self._fail(t, ContainerDied(why))

    def stop_model(self, model: tuple[str, str], why: str) -> None:
        """A model version is being stopped: answer what waits for it at once with
        ``why`` (else each task would wait for its deadline and read as an SLO miss), and
        so too each batch its replicas give back as they stop, rather than retrying it on
        the next replica to be stopped."""
        self.stopping[model] = why
        for t in self.queues[model].take_all():
            self._fail(t, ModelStopped(why))

    def remove_model(self, model: tuple[str, str]) -> None:
        """Forget a model version that has no replicas left (a deployment that failed,
        or one stopped)."""
        for table in (self.models, self.queues, self.replicas, self.batch_log,
                      self.unavailable, self.stopping):
            table.pop(model, None)

    def set_batching(self, model: tuple[str, str], batching: BatchingConfig) -> None:
        """Swap every replica's controller (a fresh one learns from scratch)."""
        self.models[model].batching = batching
        for rep in self.replicas[model].values():
            rep.controller = make_controller(batching)

    def _fail(self, task: PredictTask, exc: BaseException) -> None:
        self.cache.fail(task.key, exc, task.future)

    def _dropped(self, task: PredictTask) -> None:
        self._fail(task, TaskExpired(
            f"deadline passed while queued for {task.model[0]}:{task.model[1]}"))

    def schedule(self, model: tuple[str, str], inputs: list[Any], deadline: float,
                 slo: float, traced: bool = False, query_id: int = 0,
                 placed: list[PredictTask] | None = None) -> list[asyncio.Future]:
        """One future per input for ``model``'s output: from the cache when present, else
        from a task queued for the model. Raises :class:`.queues.QueueFull` (nothing of
        this call stays queued then) or KeyError for an unknown model. The tasks queued
        are added to ``placed`` (see :meth:`schedule_all`)."""
        queue, info = self.queues[model], self.models[model]
        keys = input_keys(info.seed, inputs)
        futures, new = [], []
        now = time.monotonic()
        renewed: dict[bytes, Any] = {}  # keys renewed by this call: later copies join
        for x, key, (status, entry) in zip(inputs, keys, self.cache.fetch_many(keys),
                                           strict=True):
            if key in renewed:
                status, entry = "pending", renewed[key]
            elif status == "pending" and entry.task is not None and entry.task.sent and \
                    now - entry.task.sent > entry.task.slo:
                # its batch is in flight past its SLO: the replica may be hung (found only
                # after 20 SLOs). Joining it would leave this query, and every later one
                # for the input, waiting on that replica while others idle: queue it
                # anew instead (a hedged request, as in Dean & Barroso's "The Tail at
                # Scale"; beyond Clipper, whose later queries join the pending one)
                status, entry = "miss", self.cache.renew(key)
                renewed[key] = entry
            if status == "miss":
                entry.task = PredictTask(model, x, deadline, slo, entry.future, key,
                                         traced=traced, query_id=query_id)
                new.append(entry.task)
            elif status == "pending" and entry.task is not None:
                queue.promote(entry.task, deadline)  # served by the earlier deadline
                entry.task.slo = min(entry.task.slo, slo)  # and its batch sized for it
            futures.append(entry.future)
        if new and model in self.stopping:  # a query pinned to a version being stopped
            for t in new:  # (queued now, it would outlive the queue and wait out its SLO)
                self._fail(t, ModelStopped(self.stopping[model]))
        elif new and model in self.unavailable:
            for t in new:
                self._fail(t, ContainerDied(self.unavailable[model]))
        elif new:
            try:
                queue.put(new)
            except Exception as e:
                for t in new:
                    self._fail(t, e)
                raise
            if placed is not None:
                placed.extend(new)
        return futures

    def schedule_all(self, calls: list[tuple[tuple[str, str], list[Any], int]],
                     deadline: float, slo: float, traced: bool = False,
                     ) -> list[list[asyncio.Future]]:
        """:meth:`schedule` for each ``(model, inputs, query_id)`` of one request, all or
        none: when a later model refuses (QueueFull), the tasks queued for the earlier
        ones are taken back, so a 429 means nothing of the request stays queued (left,
        they filled the other models' bounded queues with work nobody waits for)."""
        placed: list[PredictTask] = []
        try:
            return [self.schedule(model, inputs, deadline, slo, traced, qid, placed)
                    for model, inputs, qid in calls]
        except Exception as e:
            for t in placed:  # no await since they were queued: no query joined them
                self.queues[t.model].remove(t)
                self._fail(t, e)
            raise

    def add_replica(self, model: tuple[str, str], replica_id: int, address: str,
                    pid: int) -> Replica:
        rep = Replica(model, replica_id, address, pid,
                      make_controller(self.models[model].batching))
        rep.channel = rpc.aio_channel(address)
        rep.stream = rpc.stream(rep.channel, SERVICE, "PredictStream")()
        self.replicas[model][replica_id] = rep
        self.unavailable.pop(model, None)
        rep.loop = asyncio.ensure_future(self._run(rep))
        return rep

    async def remove_replica(self, model: tuple[str, str], replica_id: int) -> None:
        rep = self.replicas.get(model, {}).pop(replica_id, None)
        if rep is None:
            return
        if rep.loop and not rep.loop.done() and rep.loop is not asyncio.current_task():
            rep.loop.cancel()
            await asyncio.gather(rep.loop, return_exceptions=True)
        rep.stream.cancel()
        await rep.channel.close()

    def _retry(self, tasks: list[PredictTask]) -> None:
        now = time.monotonic()
        again = []
        for t in tasks:
            t.enqueued = t.sent = 0.0
            if t.model in self.stopping:
                self._fail(t, ModelStopped(self.stopping[t.model]))
            elif t.deadline > now and t.retries < MAX_RETRIES:
                t.retries += 1
                again.append(t)
            else:
                why = "the deadline passed" if t.deadline <= now else \
                    f"{MAX_RETRIES} retries were spent"
                self._fail(t, ContainerDied(
                    f"model {t.model[0]}:{t.model[1]}: its container died and {why}"))
        if again:
            self.queues[tasks[0].model].put(again, bounded=False)

    async def _exchange(self, rep: Replica, req: bytes) -> Any:
        await rep.stream.write(req)
        return await rep.stream.read()

    async def _send(self, rep: Replica, req: bytes, batch_id: int, timeout: float,
                    ) -> tuple[dict[str, Any], list[Any], list[int]]:
        """One batch over the replica's stream: write it, read its reply. Raises on a
        dead, hung (``timeout``) or confused (wrong ``batch_id``) container.

        A timeout during which this frontend itself did not run for a second or more
        (SIGSTOP, a stalled VM: ``common.stalls``) is not the container's fault: its
        reply may be waiting unread in the socket. The batch then gets one more
        ``timeout``; before, a pause of 7 s restarted every replica with a batch in
        flight, reloading healthy models just as the backlog had to be served."""
        self.watchdog.start()
        t0 = time.monotonic()
        exchange = asyncio.ensure_future(self._exchange(rep, req))
        try:
            try:
                resp = await asyncio.wait_for(asyncio.shield(exchange), timeout)
            except TimeoutError:
                if self.watchdog.stalled_since(t0) < STALL_EXCUSED_S:
                    raise
                resp = await asyncio.wait_for(asyncio.shield(exchange), timeout)
        finally:
            exchange.cancel()  # (done: no-op) timed out, or this loop was cancelled
        if resp is grpc.aio.EOF:
            raise ConnectionError("the container closed its stream")
        meta, outputs, sizes = decode_outputs(resp)
        if meta.get("batch_id") != batch_id:
            raise ConnectionError(f"reply to batch {meta.get('batch_id')} while waiting "
                                  f"for batch {batch_id}")
        return meta, outputs, sizes

    async def _run(self, rep: Replica) -> None:
        """The replica's batching loop (Clipper ``TaskExecutor``'s per-container loop)."""
        model, queue, cache = rep.model, self.queues[rep.model], self.cache
        info, m = self.models[model], self.metrics
        label = f"{model[0]}:{model[1]}"
        batch_log = self.batch_log[model]
        try:
            while True:
                cfg = info.batching
                batch = await queue.get_batch(rep.controller.batch_size, cfg.max_delay_s,
                                              cfg.slo_fraction)
                rep.inflight = batch
                batch_id = next(self._batch_ids)
                sent = time.monotonic()
                for t in batch:
                    t.sent = sent
                ts_us = now_us()
                traced = self.tracer is not None and any(t.traced for t in batch)
                slo = min(t.slo for t in batch)
                # hung: 20x the SLO, RPC_TIMEOUT_FLOOR_S at least
                timeout = max(self.rpc_timeout_floor_s, 20 * max(t.slo for t in batch))
                try:
                    req = encode_batch([t.input for t in batch], info.input_type,
                                       {"batch_id": batch_id})
                    meta, outputs, sizes = await self._send(rep, req, batch_id, timeout)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # grpc.aio.AioRpcError, timeout: dead or hung
                    rep.inflight = []
                    self._retry(batch)
                    self.on_replica_failure(rep, f"{type(e).__name__}: {e}")
                    return
                latency = time.monotonic() - sent
                rep.inflight = []
                rep.batches += 1
                m.model_batch_size.observe(label, len(batch))
                m.model_batch_latency.observe(label, latency)
                if meta.get("error"):
                    m.model_errors.inc(label)
                    err = ModelError(f"model {label} failed its batch: {meta['error']}")
                    for t in batch:
                        self._fail(t, err)
                else:
                    m.model_predictions.inc(label, len(batch))
                    cache.complete(batch, outputs, sizes)
                    rep.controller.update_batch_size(len(batch), latency,
                                                     slo * cfg.slo_fraction)
                batch_log.append((sent, len(batch), latency, rep.controller.batch_size,
                                  rep.replica_id))
                if traced:
                    self._trace_batch(rep, batch, batch_id, ts_us, meta)
        except asyncio.CancelledError:
            if rep.inflight:
                self._retry(rep.inflight)
            raise
        except Exception as e:  # noqa: BLE001 - a bug in this loop must not stop the
            log.exception("replica loop of %s failed", label)  # model for good: treat it
            if rep.inflight:                                 # as a replica failure
                self._retry(rep.inflight)
                rep.inflight = []
            self.on_replica_failure(rep, f"replica loop failed: {type(e).__name__}: {e}")

    def _trace_batch(self, rep: Replica, batch: list[PredictTask], batch_id: int,
                     ts_us: float, meta: dict[str, Any]) -> None:
        """Spans for a sampled query: its wait in the queue, the RPC, and the container's
        compute on the container's own process row, joined by a flow arrow."""
        tw, end = self.tracer, now_us()
        name = f"{rep.model[0]}:{rep.model[1]}"
        # one batch in flight per replica, so one row per model replica never overlaps;
        # replicas of different models share no row (their calls overlap in time)
        tid = tw.row_for(f"rpc {name} replica {rep.replica_id}", ts_us, end)
        for t in batch:
            if t.traced:  # queries wait side by side: each wait on a row where it nests
                t0 = t.enqueued * 1e6
                tw.complete(f"queue {name}", t0, ts_us - t0, cat="queue",
                            tid=tw.row_for("queue", t0, ts_us), args={"query_id": t.query_id})
        tw.complete(f"rpc Predict {name} x{len(batch)}", ts_us, end - ts_us, cat="rpc",
                    tid=tid, args={"batch_id": batch_id, "replica": rep.replica_id})
        tw.flow(f"batch{batch_id}", start=True, ts_us=ts_us + 1, tid=tid)
        if "t0" in meta and "pid" in meta:
            pid = int(meta["pid"])
            tw.complete(f"container predict x{len(batch)}", meta["t0"], meta["t1"] - meta["t0"],
                        cat="container", pid=pid, tid=pid, args={"batch_id": batch_id})
            tw.flow(f"batch{batch_id}", start=False, ts_us=meta["t0"] + 1, pid=pid, tid=pid)
            if pid not in self._traced_pids:  # one name per row, not one per batch
                self._traced_pids.add(pid)
                tw.name_process(f"container {name} replica {rep.replica_id}", pid=pid)
