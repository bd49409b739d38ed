"""From (feeds, fetches, targets) to executors: the pipeline a Session runs once per
distinct request and then caches (DirectSession::GetOrCreateExecutors in
tensorflow/core/common_runtime/direct_session.cc):

    prune + feeds  ->  graph passes  ->  place  ->  device-specific kernel rewrites
                   ->  partition  ->  one executor per device
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

from .backend import NUMPY
from .backend_torch import torch_backend
from .errors import InvalidArgumentError
from .executor import Executor
from .graph import Operation, Tensor
from .ir import PlanGraph, build
from .partition import partition, senders_first
from .passes import PassStats, run_passes
from .passes.remapper import remap
from .placement import place, variable_groups


class Snapshot:
    """A graph at one stage of the pipeline, for DOT export and for tests.

    Passes rewrite nodes in place, so a snapshot copies each node's edges when it is
    taken; it spells them out as names only when someone reads ``nodes`` (most plans
    are never drawn, and formatting every edge cost a few ms per plan)."""

    def __init__(self, nodes) -> None:
        self._raw = [(n, tuple(n.inputs), tuple(n.control_inputs), n.device) for n in nodes]
        self._nodes: list | None = None

    @property
    def nodes(self) -> list[tuple[str, str, list[str], list[str], str]]:
        """(name, type, inputs as 'name:index', control input names, device) per node."""
        if self._nodes is None:
            self._nodes = [(n.name, n.type, [f"{p.name}:{i}" for p, i in ins],
                            [c.name for c in ctrl], dev) for n, ins, ctrl, dev in self._raw]
        return self._nodes

    @property
    def fused_members(self) -> dict[str, list[str]]:
        """The op types inside each fused node, by its name (for its label in DOT)."""
        return {n.name: [t for t, *_ in n.attrs["body"]] for n, *_ in self._raw
                if n.type == "_FusedElementwise"}


@dataclass
class Plan:
    executors: list[Executor]
    fetch_map: list[tuple[int, int]]  # per fetch: (executor, position in its fetch list)
    feeds: list[Tensor]
    pass_stats: PassStats
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    build_seconds: float = 0.0
    # executors in an order where each runs after every executor it receives from, to
    # run one after another on the client's thread; None to run them concurrently
    sequential: list[int] | None = None

    @property
    def devices(self) -> list[str]:
        return [e.device for e in self.executors]


def backend_for(device: str, cpu_backend: str) -> Any:
    if device.startswith("/gpu"):
        return torch_backend("cuda:" + device.split(":")[1])
    return NUMPY if cpu_backend == "numpy" else torch_backend("cpu")


def build_plan(fetches: list[Tensor], targets: list[Operation], feeds: list[Tensor],
               devices: list[str], config: Any, resources: Any) -> Plan:
    # Building a plan allocates thousands of small objects, which would trigger full
    # cyclic-GC passes over everything the process holds (torch alone is ~10^5 objects):
    # those passes, not the work, dominated plan time. Nothing built here is cyclic garbage.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_plan(fetches, targets, feeds, devices, config, resources)
    finally:
        if was_enabled:
            gc.enable()


def _build_plan(fetches: list[Tensor], targets: list[Operation], feeds: list[Tensor],
                devices: list[str], config: Any, resources: Any) -> Plan:
    t0 = time.perf_counter()
    pg: PlanGraph = build(fetches, targets, feeds)
    for n in pg.nodes:
        if n.type == "Placeholder":
            a = n.attrs
            raise InvalidArgumentError(
                f"You must feed a value for placeholder tensor '{a['name']}' with dtype "
                f"{a['dtype'].name}, needed to compute the fetches", n.op)
    snapshots = {"pruned": Snapshot(pg.nodes)}
    go = config.graph_options
    stats = run_passes(pg, constant_folding=go.constant_folding, cse=go.common_subexpression,
                       pruning=go.pruning, fusion=go.fusion,
                       max_constant_bytes=go.max_constant_bytes)
    snapshots["optimized"] = Snapshot(pg.nodes)
    graph = (fetches[0] if fetches else targets[0]).graph
    n_ops, groups = resources.variable_groups
    if n_ops != len(graph._ops):  # recomputed only when the graph has grown
        resources.variable_groups = n_ops, groups = (len(graph._ops),
                                                     variable_groups(graph.get_operations()))
    place(pg, devices, config.allow_soft_placement, resources.variable_devices, groups)
    # kernel choices that depend on where a node landed
    torch_devices = {d for d in devices if backend_for(d, config.cpu_backend).name == "torch"}
    if config.kernel_library is not None:  # before the remapper: it tunes plain MatMuls
        from .tuned import use_tuned_kernels

        stats.add("tuned_kernels", use_tuned_kernels(pg, torch_devices))
    for name, n in (remap(pg, torch_devices) if config.graph_options.remapping
                    else {}).items():
        if n:
            stats.add(name, n)
    if torch_devices:
        snapshots["optimized"] = Snapshot(pg.nodes)
    if config.log_device_placement:
        for n in pg.nodes:
            print(f"{n.name}: ({n.type}) {n.device}")
    parts = partition(pg)
    snapshots["partitioned"] = Snapshot([n for nodes in parts.values() for n in nodes])
    order = sorted(parts, key=lambda d: (d != "/cpu:0", d))  # the client's device first
    executors, fetch_map = [], []
    per_device_fetches: dict[str, list] = {d: [] for d in order}
    for p, i in pg.fetches:
        fetch_map.append((order.index(p.device), len(per_device_fetches[p.device])))
        per_device_fetches[p.device].append((p, i))
    for d in order:
        executors.append(Executor(parts[d], d, backend_for(d, config.cpu_backend), resources,
                                  per_device_fetches[d]))
    return Plan(executors, fetch_map, feeds, stats, snapshots, time.perf_counter() - t0,
                senders_first(order, parts))

