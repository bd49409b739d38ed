"""The dataflow executor: runs one device's partition of a plan, once per step.

This follows tensorflow/core/common_runtime/executor.cc (Abadi et al. 2016, section 5,
and the 2015 white paper, section 3.1):

* Before any step, every node becomes a *node item*: its kernel (instantiated once),
  where its inputs and outputs live in a flat array of value slots, and its successors.
* A step starts with a *pending count* per node (how many producers it waits for); nodes
  whose count is zero are ready. Running a node decrements its successors' counts; a
  successor that reaches zero is ready. No global order is ever computed: the data
  dependencies alone schedule the graph, so independent branches can run concurrently.
* **Cheap nodes run inline** on the thread that made them ready; **expensive ones go to
  the inter-op thread pool**. Which is which is *learned*: each kernel carries a cost
  estimate, updated from measured run times as a decaying average
  (``new = (9 * old + measured) / 10``, TF's ``kCostDecay = 10``), and a node is expensive
  while its estimate is above a threshold. Our estimates only move a node from expensive
  to cheap, as in TF 2.2 (which cleared the expensive bit for good); current TF still
  times a cheap kernel one run in 16, so it can turn expensive again. TF starts every
  kernel at 100M cycles; we start from the op's roofline cost
  (:func:`.placement.estimate_seconds`), so a plan is sensible from its first step.
  Our threshold is 30 us, not TF's 8000 cycles: a hand-off to a Python thread costs tens of
  microseconds, so only ops slower than that are worth handing off. And as in TF, an
  expensive node that could overlap with nothing (no other node ready or running) is
  run by the thread that made it ready instead of being handed off. On a GPU no kernel
  is expensive, as in TF: it only enqueues work on a stream.
* **Host memory**: a kernel that reads an input on the host (a shape, a count, axes:
  ``OpDef.host_inputs``, TF's ``HostMemory`` annotations) gets it as a host array even on
  a GPU, so a constant or received value read only that way is never uploaded, and never
  read back, which on a GPU would wait for the stream.
* **Memory**: a value slot is cleared after its last consumer runs (reference counts),
  so an intermediate lives only as long as something still needs it; with
  ``RunMetadata`` the step reports its peak live bytes and per-node step stats.

Two loops implement this. The *driver loop* is the algorithm above: it runs cheap nodes
itself, sends expensive ones to the pool and receives their results (and Recv
deliveries) through a queue, so only the driver ever touches the step's counters. The
*inline loop* runs when every node is cheap (the common case for small ops and on a
GPU): one thread, and then the order the dataflow algorithm picks is the same every step,
so it is recorded once (:meth:`Executor._record_schedule`) and replayed. A Recv there
waits for its value in place, which is safe when its sender has already run (partitions
run one after another, see :func:`.partition.run_partitions`) or when this partition sends nothing
(no one can be waiting for it). TensorFlow's C++ executor can afford to recount every
step; in Python, the counting would cost more than the small kernels it schedules.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import NUMPY
from .errors import InvalidArgumentError, MemberError, OpError
from .ir import Node, Ref
from .op_def import OP_DEFS
from .placement import estimate_seconds

EXPENSIVE_NS = 30_000
COST_DECAY = 10


@dataclass
class NodeStats:
    """One node's step stats (TF's NodeExecStats)."""

    name: str
    op: str
    device: str
    thread: str
    start_us: float
    end_us: float
    output_bytes: int


@dataclass
class StepContext:
    feeds: list[Any]  # by _Arg index
    rendezvous: Any
    pool: Any = None  # concurrent.futures.ThreadPoolExecutor, or None for one thread
    stats: list[NodeStats] | None = None
    track_memory: bool = False
    peak_bytes: dict[str, int] = field(default_factory=dict)
    # partitions run one after another, senders first: every Recv's value is already
    # in the rendezvous when its executor starts (see partition.run_partitions)
    recvs_ready: bool = False


class Executor:
    def __init__(self, nodes: list[Node], device: str, backend: Any, resources: Any,
                 fetches: list[Ref]):
        self.device, self.backend, self.nodes = device, backend, nodes
        index = {id(n): k for k, n in enumerate(nodes)}
        slot_of: dict[tuple[int, int], int] = {}
        for n in nodes:
            for i in range(len(n.out_specs)):
                slot_of[(id(n), i)] = len(slot_of)
        self.n_slots = len(slot_of)
        uses = [0] * self.n_slots
        succ: list[set[int]] = [set() for _ in nodes]
        pending = [0] * len(nodes)
        self.items, self.arg_slots, self.recv_keys = [], [], {}
        self.expensive_marker = []
        self.cost_ns = []
        self.resources = resources
        on_host = self._host_memory_nodes(nodes, backend)
        self.host_recvs = {k for k, n in enumerate(nodes) if n.type == "_Recv" and on_host[k]}
        # A partition that sends nothing is waited on by no one, so it may wait for each of
        # its Recvs in turn without risk of deadlock, and run on the inline loop.
        self.recv_inline = not any(n.type == "_Send" for n in nodes)
        # TF marks every GPU kernel inexpensive: it only enqueues work on a stream, so
        # handing it to another thread would cost more than the launch (OpKernel's
        # constructor sets expensive_ = device_type != DEVICE_GPU, framework/op_kernel.cc)
        on_gpu = device.startswith("/gpu")
        for k, n in enumerate(nodes):
            ins = tuple(slot_of[(id(p), i)] for p, i in n.inputs)
            outs = tuple(slot_of[(id(n), i)] for i in range(len(n.out_specs)))
            producers = {index[id(p)] for p, _ in n.inputs} | \
                {index[id(c)] for c in n.control_inputs}
            pending[k] = len(producers)
            for p in producers:
                succ[p].add(k)
            for s in set(ins):
                uses[s] += 1
            d = OP_DEFS[n.type]
            if n.type == "_Arg":
                kernel = None
                self.arg_slots.append((n.attrs["index"], outs[0], k))
            elif n.type == "_Recv":
                self.recv_keys[k] = n.attrs["key"]
                kernel = self._blocking_recv(n.attrs["key"], k in self.host_recvs)
            else:
                # a constant read only on the host is never uploaded (TF's int32 Const on
                # a GPU is a HostConstantOp, kernels/constant_op.cc)
                kernel = d.make_kernel(n.attrs, NUMPY if on_host[k] else backend, resources)
                kernel = self._upload_host_values(n, kernel, backend, on_host[k])
            self.expensive_marker.append(d.expensive and not on_gpu)
            self.cost_ns.append((n.est_seconds or estimate_seconds(n, device)) * 1e9)
            self.items.append([kernel, ins, outs[0] if len(outs) == 1 else -1, outs, (),
                               tuple(set(ins))])
        for k, item in enumerate(self.items):
            item[4] = tuple(sorted(succ[k]))
            self.items[k] = tuple(item)
        self.fetch_slots = [slot_of[(id(p), i)] for p, i in fetches]
        for s in self.fetch_slots:
            uses[s] += 1  # fetched values survive the step
        # _Arg nodes are complete before the step starts: their values are the feeds. So
        # are Consts and variable handles: their values never change, so they are computed
        # once, here, into a template of the step's value slots (TF runs them every step;
        # in Python each skipped node is half a microsecond saved per step).
        self.template: list[Any] = [None] * self.n_slots
        presets = [k for _, _, k in self.arg_slots]
        for k, n in enumerate(nodes):
            if n.type in ("Const", "VariableV2") and not n.control_inputs:
                self.template[self.items[k][2]] = self.items[k][0]()
                presets.append(k)
        for k in presets:
            for j in self.items[k][4]:
                pending[j] -= 1
            pending[k] = -1
        self.pending0 = pending
        self.uses0 = uses
        self.roots = [k for k, c in enumerate(pending) if c == 0]
        self.has_recv = bool(self.recv_keys)
        self.n_expensive = sum(map(self.is_expensive, range(len(nodes))))
        self.schedule = self._record_schedule()

    @staticmethod
    def _upload_host_values(n: Node, kernel: Any, backend: Any, on_host: bool) -> Any:
        """Shape and Size answer on the host even on a torch device (as TF's do); a kernel
        that reads one through an ordinary input (``concat([shape(x)[:1], [-1]], 0)``,
        ``shape(x) * 2``) gets it uploaded first, int32 as declared. Only such nodes are
        wrapped, once, when the plan is built: the hot loop stays as it was."""
        if backend.name == "numpy" or on_host or n.type in ("StridedSlice", "_Send"):
            # a slice of a shape stays a host array (a gather's grad reads it), and a
            # Send passes it on as it is (the receiver adopts it where it runs)
            return kernel

        def host_valued(p: Node) -> bool:
            return p.type in ("Shape", "Size") or \
                (p.type == "StridedSlice" and host_valued(p.inputs[0][0]))
        host = OP_DEFS[n.type].host_inputs
        slots = tuple(j for j, (p, _) in enumerate(n.inputs)
                      if host_valued(p) and j not in host)
        if not slots:
            return kernel

        def run(*args):
            args = list(args)
            for j in slots:
                args[j] = backend.asarray(np.asarray(args[j], np.int32))
            return kernel(*args)
        return run

    @staticmethod
    def _host_memory_nodes(nodes: list[Node], backend: Any) -> list[bool]:
        """Per node: is it a Const or a Recv whose every reader takes it through a
        host-memory input (``OpDef.host_inputs``)? Then its value stays on the host: a shape
        that GPU kernels read would otherwise live on the GPU and be copied back every
        step, a device-to-host copy that waits for the stream. TF decides this per kernel
        argument (``MemoryTypesForNode``, framework/memory_types.cc)."""
        if backend.name == "numpy":
            return [False] * len(nodes)
        readers: dict[int, list[bool]] = {}
        for n in nodes:
            host = OP_DEFS[n.type].host_inputs
            for j, (p, _) in enumerate(n.inputs):
                readers.setdefault(id(p), []).append(j in host)
        return [n.type in ("Const", "_Recv") and bool(readers.get(id(n)))
                and all(readers[id(n)]) for n in nodes]

    def _blocking_recv(self, key: str, host: bool) -> Callable[[], Any]:
        """A Recv for the inline loop: wait here until the value is sent."""
        resources = self.resources

        def recv() -> Any:
            box: queue.SimpleQueue = queue.SimpleQueue()
            resources.rendezvous.recv_async(key, lambda v, err: box.put((v, err)))
            v, err = box.get()
            if err is not None:
                raise err
            return self._adopt(v, host)
        return recv

    def _record_schedule(self) -> list[tuple]:
        """The order the dataflow algorithm runs nodes in on one thread, and what to free
        after each. With a FIFO ready queue that order depends only on the graph, so the
        inline loop computes it once (here, by running the pending-count algorithm without
        kernels) and replays it every step, freeing each value right after its last reader
        in that order: the same order and the same peak memory as counting every step,
        without the counting. Steps that need the pool, or Recvs that might wait on this
        partition, use the driver loop."""
        pending = self.pending0.copy()
        ready = deque(self.roots)
        order = []
        while ready:
            k = ready.popleft()
            order.append(k)
            for j in self.items[k][4]:
                pending[j] -= 1
                if not pending[j]:
                    ready.append(j)
        last_reader: dict[int, int] = {}
        for pos, k in enumerate(order):
            for s in self.items[k][1]:
                last_reader[s] = pos
        keep = set(self.fetch_slots)
        frees: list[list[int]] = [[] for _ in order]
        for slot, pos in last_reader.items():
            if slot not in keep:
                frees[pos].append(slot)
        steps = []
        for pos, k in enumerate(order):
            kernel, ins, out, outs, _, _ = self.items[k]
            a = ins[0] if ins else -1
            b = ins[1] if len(ins) > 1 else -1
            steps.append((kernel, len(ins), a, b, ins, out, outs, tuple(frees[pos]), k))
        return steps

    def is_expensive(self, k: int) -> bool:
        return self.expensive_marker[k] and self.cost_ns[k] > EXPENSIVE_NS

    def run(self, step: StepContext) -> list[Any]:
        vals = self.template.copy()
        for idx, slot, _ in self.arg_slots:
            vals[slot] = self.backend.asarray(step.feeds[idx])
        if ((not self.has_recv or self.recv_inline or step.recvs_ready) and step.stats is None
                and not step.track_memory and (step.pool is None or not self.n_expensive)):
            self._run_inline(vals)
        else:
            self._run_driver(vals, self.pending0.copy(), self.uses0.copy(), step)
        return [vals[s] for s in self.fetch_slots]

    def _run_inline(self, vals: list) -> None:
        k = -1  # the node being run, named by the error handler below
        try:
            for kernel, n, a, b, ins, out, outs, frees, k in self.schedule:  # noqa: B007
                if n == 2:
                    r = kernel(vals[a], vals[b])
                elif n == 1:
                    r = kernel(vals[a])
                elif n == 0:
                    r = kernel()
                else:
                    r = kernel(*[vals[s] for s in ins])
                if out >= 0:
                    vals[out] = r
                elif outs:
                    for s, v in zip(outs, r, strict=True):
                        vals[s] = v
                for s in frees:
                    vals[s] = None
        except Exception as e:
            raise self._error(k, e, vals) from e

    def _run_driver(self, vals: list, pending: list, uses: list, step: StepContext) -> None:
        items, be, template = self.items, self.backend, self.template
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        ready = deque(self.roots)
        remaining = sum(1 for c in pending if c >= 0)
        live = [0, 0]  # current, peak bytes: the feeds are live from the start (each
        if step.track_memory:  # is subtracted when its last reader is done, as any value)
            live[0] = live[1] = sum(be.nbytes(vals[s]) for _, s, _ in self.arg_slots)

        def timed(k: int, args: list) -> tuple[int, Any, BaseException | None, float, float]:
            t0 = time.perf_counter_ns()
            try:
                r = items[k][0](*args)
                err = None
            except BaseException as e:  # noqa: BLE001 (handed back to the driver)
                r, err = None, e
            return k, r, err, t0, time.perf_counter_ns()

        def pooled(k: int, args: list) -> tuple:
            # named here, on the pool's thread: the driver that takes the result from the
            # inbox would name itself, and the trace would stack every pool node on its row
            return (*timed(k, args), f"inter-op pool ({threading.current_thread().name})")

        def complete(k: int, r: Any, t0: float, t1: float, thread: str) -> None:
            nonlocal remaining
            _, ins, out, outs, succ, frees = items[k]
            outputs = (r,) if out >= 0 else (tuple(r) if outs else ())
            for s, v in zip(outs, outputs, strict=True):
                vals[s] = v
            nbytes = sum(be.nbytes(v) for v in outputs) if outs and (
                step.track_memory or step.stats is not None) else 0
            if step.track_memory:
                live[0] += nbytes
                live[1] = max(live[1], live[0])
            for s in frees:
                uses[s] -= 1
                if not uses[s]:
                    if step.track_memory and template[s] is None:  # constants are not live
                        live[0] -= be.nbytes(vals[s])                 # activations
                    vals[s] = None
            if step.stats is not None:
                n = self.nodes[k]
                step.stats.append(NodeStats(n.name, n.type, self.device, thread,
                                            t0 / 1e3, t1 / 1e3, nbytes))
            remaining -= 1
            for j in succ:
                pending[j] -= 1
                if not pending[j]:
                    ready.append(j)

        driver = f"{self.device} driver"
        in_flight = 0
        failure: tuple[int, BaseException] | None = None  # the step's first error
        while remaining:
            while ready and failure is None:
                k = ready.popleft()
                if k in self.recv_keys:
                    in_flight += 1
                    step.rendezvous.recv_async(
                        self.recv_keys[k],
                        lambda v, err, k=k: inbox.put((k, v, err, time.perf_counter_ns(),
                                                       time.perf_counter_ns(), "recv")))
                    continue
                args = [vals[s] for s in items[k][1]]
                expensive = step.pool is not None and self.is_expensive(k)
                # TF's ScheduleReady keeps the last expensive node for the thread that
                # made it ready when that thread has nothing else to run (executor.cc's
                # "tail recursion optimization"). Here the driver must also stay free to
                # dispatch whatever the pool finishes, so it keeps a node only when
                # nothing else is ready or in flight: then a hand-off overlaps nothing.
                if expensive and (ready or in_flight):
                    in_flight += 1
                    fut = step.pool.submit(pooled, k, args)
                    fut.add_done_callback(lambda f: inbox.put(f.result()))
                    continue
                k, r, err, t0, t1 = timed(k, args)
                if err is not None:
                    failure = (k, err)
                    break
                if expensive:
                    self._update_cost(k, t1 - t0)
                complete(k, r, t0, t1, driver)
            if failure is not None:
                # dispatch nothing more, but wait for what is still running before the
                # step reports its error, as TF's ExecutorState waits until no op is
                # outstanding: a variable update left on the pool would otherwise land
                # after run() raised, over whatever the user did next (load, restore)
                if step.rendezvous is not None:
                    step.rendezvous.abort(failure[1])  # wakes this step's pending Recvs
                while in_flight:
                    inbox.get()
                    in_flight -= 1
                self._fail(step, *failure, vals)
            if not remaining:
                break
            if not in_flight:
                raise RuntimeError(f"executor on {self.device} stalled with {remaining} nodes "
                                   f"left: the graph has a dependency that never resolves")
            k, r, err, t0, t1, where = inbox.get()
            in_flight -= 1
            if err is not None:
                failure = (k, err)
                continue
            if where == "recv":
                r = self._adopt(r, k in self.host_recvs)
            else:  # the pool's
                self._update_cost(k, t1 - t0)
            complete(k, r, t0, t1, where)
        if step.track_memory:
            step.peak_bytes[self.device] = live[1]

    def _update_cost(self, k: int, measured_ns: float) -> None:
        """Fold a measured run time into node ``k``'s cost estimate (TF's
        ``KernelStats::UpdateCostEstimate``); we measure only expensive nodes, so an
        estimate that falls below the threshold stays there (as in TF 2.2; current TF
        also samples cheap kernels, one run in 16)."""
        was = self.is_expensive(k)
        self.cost_ns[k] = ((COST_DECAY - 1) * self.cost_ns[k] + measured_ns) / COST_DECAY
        self.n_expensive -= was and not self.is_expensive(k)

    def _adopt(self, v: Any, host: bool = False) -> Any:
        """A value from another device, in this device's array type (TF's CopyTensor), or
        as a host array where only host-memory inputs read it."""
        if host or self.backend.name == "numpy":
            return self.backend.to_numpy(v) if not hasattr(v, "__array_interface__") else v
        return self.backend.asarray(v)

    def _fail(self, step: StepContext, k: int, err: BaseException, vals: list) -> None:
        # a one-device step has no rendezvous (no other executor waits on this one)
        if step.rendezvous is not None:
            step.rendezvous.abort(err)
        if not isinstance(err, Exception):  # Ctrl-C, SystemExit: the user's, not an op's
            raise err                         # error (as from the inline loop)
        raise self._error(k, err, vals) from err

    def _error(self, k: int, e: BaseException, vals: list) -> BaseException:
        op, inputs = self.nodes[k].op, [vals[s] for s in self.items[k][1]]
        if isinstance(e, MemberError):  # an op inside a fused node failed: blame it
            op, inputs, e = e.op or op, e.inputs, e.error
        if isinstance(e, OpError):
            if e.op is None and op is not None:
                e.op = op
                e.args = (e.message + f" (op '{op.name}' of type {op.type}, created at "
                          f"{op.created_at})",)
            return e
        shapes = ", ".join(str(tuple(getattr(v, "shape", ()))) if v is not None else "?"
                           for v in inputs)
        return InvalidArgumentError(f"{type(e).__name__}: {e} [inputs: {shapes or 'none'}; "
                                    f"device {self.device}]", op)

