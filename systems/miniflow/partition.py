"""Partitioning: one subgraph per device, joined by Send/Recv pairs.

Abadi et al. 2016 section 3.3 (and the 2015 white paper, section 3.2.2): after placement
the graph is split into one subgraph per device, each cross-device edge replaced by a
Send/Recv pair that meet in a rendezvous under a key naming the tensor and the two
devices (tensorflow/core/graph/graph_partition.cc, framework/rendezvous.h). All
consumers of one tensor on one device share a single Recv, so a tensor crosses to a
device at most once per step. A control edge that crosses devices becomes a Send/Recv of
a dummy value, so the ordering holds across executors too.

A Recv is *asynchronous*: it registers a callback in the rendezvous and returns, so a
waiting Recv never holds a thread (TF's ``RecvOp`` is an ``AsyncOpKernel``). The
executor's inline loop waits for a Recv in place only where no one can be waiting for
its own thread (see executor.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .dtypes import bool_
from .ir import Node, PlanGraph
from .op_def import OpDef, define

if TYPE_CHECKING:
    from .executor import Executor, StepContext


class Rendezvous:
    """A per-step table where a Send leaves a value and a Recv picks it up (either may
    come first). Keys are ``"tensor;src_device;dst_device"``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._waiters: dict[str, Callable[[Any], None]] = {}
        self.aborted: BaseException | None = None

    def send(self, key: str, value: Any) -> None:
        with self._lock:
            waiter = self._waiters.pop(key, None)
            if waiter is None:
                self._values[key] = value
                return
        waiter(value, None)

    def recv_async(self, key: str, done: Callable[[Any, BaseException | None], None]) -> None:
        """Call ``done(value, error)`` once the value is here (maybe right now)."""
        with self._lock:
            if self.aborted is None and key not in self._values:
                self._waiters[key] = done
                return
            value = self._values.pop(key, None)
        done(value, self.aborted)

    def abort(self, error: BaseException) -> None:
        """A partition failed: wake every waiting Recv with the error, so no executor
        waits forever for a value that will never be sent."""
        with self._lock:
            if self.aborted is None:
                self.aborted = error
            waiters, self._waiters = list(self._waiters.values()), {}
        for w in waiters:
            w(None, error)


def _send_kernel(attrs, be, res):
    key = attrs["key"]
    return lambda x: res.rendezvous.send(key, x)


define(OpDef("_Send", lambda ins, a: [], _send_kernel, stateful=True, expensive=False))
# _Recv has no synchronous kernel: the executor calls rendezvous.recv_async itself.
define(OpDef("_Recv", lambda ins, a: [(a["dtype"], a["shape"])], lambda a, be, res: None,
             stateful=True, expensive=False))


def partition(pg: PlanGraph) -> dict[str, list[Node]]:
    """Split placed nodes by device, inserting Send/Recv for every crossing edge."""
    parts: dict[str, list[Node]] = {}
    for n in pg.nodes:
        parts.setdefault(n.device, []).append(n)
    recvs: dict[tuple[int, int, str], Node] = {}
    added: dict[str, list[Node]] = {d: [] for d in parts}

    def recv_for(p: Node, i: int, dst: str) -> Node:
        k = (id(p), i, dst)
        if k not in recvs:
            # unique by construction (#n): the passes name the nodes they make (a/fused,
            # a/folded) without checking the graph, where a user op may hold that name,
            # and two pairs of one key would hand each other's tensors over
            key = f"{p.name}:{i};{p.device};{dst}#{len(recvs)}"
            dt, shape = p.out_specs[i]
            send = Node(f"{p.name}/_send_{i}_to_{dst.strip('/').replace(':', '_')}",
                        "_Send", [(p, i)], [], {"key": key}, [], p.device, p.op, p.created_at)
            recv = Node(f"{p.name}/_recv_{i}_on_{dst.strip('/').replace(':', '_')}",
                        "_Recv", [], [], {"key": key, "dtype": dt, "shape": shape,
                                          "src_device": p.device}, [(dt, shape)], dst,
                        p.op, p.created_at)
            added[p.device].append(send)
            added[dst].append(recv)
            recvs[k] = recv
        return recvs[k]

    def control_recv_for(p: Node, dst: str) -> Node:
        k = (id(p), -1, dst)
        if k not in recvs:
            key = f"{p.name}:control;{p.device};{dst}#{len(recvs)}"
            dummy = Node(f"{p.name}/_control_dummy", "Const", [], [p],
                         {"value": np.zeros((), np.bool_)}, [(bool_, ())], p.device)
            send = Node(f"{p.name}/_send_control_to_{dst}", "_Send", [(dummy, 0)], [],
                        {"key": key}, [], p.device)
            recv = Node(f"{p.name}/_recv_control_on_{dst}", "_Recv", [], [],
                        {"key": key, "dtype": bool_, "shape": (), "src_device": p.device},
                        [(bool_, ())], dst)
            added[p.device] += [dummy, send]
            added[dst].append(recv)
            recvs[k] = recv
        return recvs[k]

    for n in pg.nodes:
        n.inputs = [(recv_for(p, i, n.device), 0) if p.device != n.device else (p, i)
                    for p, i in n.inputs]
        n.control_inputs = [control_recv_for(c, n.device) if c.device != n.device else c
                            for c in n.control_inputs]
    for d, extra in added.items():
        parts[d].extend(extra)
    return parts


def senders_first(order: list[str], parts: dict[str, list]) -> list[int] | None:
    """Executor indices in a topological order of "sends to" between partitions (Kahn's
    algorithm on a few devices), when the partitions may run one after another: all but
    the client's are GPUs, whose kernels only enqueue work, so running them in turn
    loses no overlap (CPU partitions compute, and overlap on their own threads). None if
    not, or if two partitions send to each other."""
    if not all(d.startswith("/gpu") for d in order[1:]):
        return None
    senders = {d: {n.attrs["src_device"] for n in parts[d] if n.type == "_Recv"}
               for d in order}
    done: list[str] = []
    while len(done) < len(order):
        ready = [d for d in order if d not in done and senders[d] <= set(done)]
        if not ready:
            return None
        done.append(ready[0])
    return [order.index(d) for d in done]


def run_partitions(executors: list[Executor], step: StepContext,
                   start: Callable[[str, Callable[[], None]], Any],
                   order: list[int] | None = None) -> list[list[Any]]:
    """Run every partition's executor for one step; first error wins.

    With ``order`` (the client's partition and GPU partitions that send only "forward",
    e.g. feeds from /cpu:0 to a GPU, listed senders first) they run one after another on
    the calling thread, each finding its received values already sent. A GPU partition
    only enqueues kernels, so running it on another thread overlaps nothing, and the hop
    costs two thread wake-ups and GIL hand-offs per step (tens of microseconds in Python;
    TF's C++ executors pay a few). Otherwise they run concurrently: the first on the
    calling thread, and ``start(device, fn)`` runs each other one on its device's thread
    and returns a future."""
    results: list[Any] = [None] * len(executors)
    errors: list[BaseException] = []
    if order is not None:
        step.recvs_ready = True
        for i in order:
            results[i] = executors[i].run(step)
        return results

    def go(i: int) -> None:
        try:
            results[i] = executors[i].run(step)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            step.rendezvous.abort(e)

    futures = [start(executors[i].device, lambda i=i: go(i))
               for i in range(1, len(executors))]
    go(0)
    for f in futures:
        f.result()
    if errors:
        raise errors[0]
    return results
