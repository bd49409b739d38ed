"""The runtime's copy of the graph: what a Session prunes, rewrites, places and splits.

TensorFlow's DirectSession never executes the user's Python graph: it takes the GraphDef,
keeps the subgraph the requested fetches need, replaces fed tensors by arguments
(``subgraph::RewriteGraphForExecution``), and hands that copy to the optimizer, the
placer and the partitioner (tensorflow/core/common_runtime/direct_session.cc). A
:class:`PlanGraph` is that copy here: plain :class:`Node` records that graph passes may
rewrite freely without touching the user's graph.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .graph import Operation, Tensor
from .op_def import OpDef, define

Ref = tuple["Node", int]  # (producer, output index)

# A fed tensor becomes an _Arg: its value is put in place before the step starts.
define(OpDef("_Arg", lambda ins, a: [], lambda a, be, res: None, stateful=True,
             expensive=False))


@dataclass(eq=False)
class Node:
    name: str
    type: str
    inputs: list[Ref]
    control_inputs: list[Node]
    attrs: dict[str, Any]
    out_specs: list[tuple[Any, Any]]  # (DType, static shape) per output
    device: str = ""  # requested before placement, assigned after
    op: Operation | None = None  # the user's op, for error messages
    created_at: str = ""
    est_seconds: float = 0.0  # the placer's cost estimate on the chosen device

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.type} on {self.device or '?'}>"


@dataclass
class PlanGraph:
    nodes: list[Node]
    fetches: list[Ref]
    targets: list[Node]
    args: list[Node] = field(default_factory=list)  # one _Arg node per fed tensor

    def forward(self, moved: dict[tuple[int, int], Ref],
                moved_nodes: dict[int, Node] | None = None) -> None:
        """Rewire every input, control input and fetch through ``moved``
        ((id(node), output) -> new ref) and ``moved_nodes`` (id(node) -> node), in one pass
        over the graph. Passes collect their replacements and apply them here."""
        moved_nodes = moved_nodes or {}

        def fix(r: Ref) -> Ref:
            while (id(r[0]), r[1]) in moved:
                r = moved[(id(r[0]), r[1])]
            return r

        def fix_node(c: Node) -> Node:
            while id(c) in moved_nodes:
                c = moved_nodes[id(c)]
            return c

        for n in self.nodes:
            n.inputs = [fix(r) for r in n.inputs]
            if n.control_inputs:
                n.control_inputs = list({id(c): c for c in map(fix_node, n.control_inputs)}
                                        .values())
        self.fetches = [fix(r) for r in self.fetches]
        self.targets = [fix_node(t) for t in self.targets]

    def collapse(self, groups: list[tuple[list[Node], Node]]) -> None:
        """Replace each group of nodes by one new node, which takes the place (in the
        topological order) and the output 0 of the group's last member: a fused chain's
        root, or the end of a MatMul + epilogue chain."""
        replaced: dict[int, tuple[Node, bool]] = {}
        moved, moved_nodes = {}, {}
        for members, new in groups:
            top = members[-1]
            for m in members:
                replaced[id(m)] = (new, m is top)
            moved[(id(top), 0)] = (new, 0)
            moved_nodes[id(top)] = new
        nodes = []
        for n in self.nodes:
            r = replaced.get(id(n))
            if r is None:
                nodes.append(n)
            elif r[1]:
                nodes.append(r[0])
        self.nodes = nodes
        self.forward(moved, moved_nodes)

    def consumers(self) -> dict[Node, list[Node]]:
        out: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for p, _ in n.inputs:
                out.setdefault(p, []).append(n)
            for p in n.control_inputs:
                out.setdefault(p, []).append(n)
        return out

    def topo_order(self) -> list[Node]:
        """Kahn's algorithm; the order of ``nodes`` breaks ties, so it is deterministic."""
        indeg = {n: len({id(p) for p, _ in n.inputs} | {id(c) for c in n.control_inputs})
                 for n in self.nodes}
        cons = self.consumers()
        q = deque(n for n in self.nodes if indeg[n] == 0)
        order = []
        while q:
            n = q.popleft()
            order.append(n)
            seen = set()
            for c in cons.get(n, []):
                if id(c) in seen:
                    continue
                seen.add(id(c))
                indeg[c] -= 1
                if indeg[c] == 0:
                    q.append(c)
        if len(order) != len(self.nodes):
            raise RuntimeError("the graph has a cycle")
        return order

    def prune(self) -> int:
        """Drop nodes that no fetch or target needs; returns how many were dropped."""
        keep: set[int] = set()
        stack = [r[0] for r in self.fetches] + list(self.targets)
        while stack:
            n = stack.pop()
            if id(n) in keep:
                continue
            keep.add(id(n))
            stack.extend(p for p, _ in n.inputs)
            stack.extend(n.control_inputs)
        before = len(self.nodes)
        self.nodes = [n for n in self.nodes if id(n) in keep]
        return before - len(self.nodes)


def build(fetches: Iterable[Tensor], targets: Iterable[Operation],
          feeds: Iterable[Tensor]) -> PlanGraph:
    """Copy the part of the user's graph that ``fetches``/``targets`` need, with each fed
    tensor replaced by an ``_Arg`` node (so whatever computed it is not run)."""
    fetches, targets, feeds = list(fetches), list(targets), list(feeds)
    fed = {(t.op, t.value_index): i for i, t in enumerate(feeds)}
    args = [Node(f"_arg_{t.op.name}_{t.value_index}", "_Arg", [], [],
                 {"index": i, "tensor": t.name}, [(t.dtype, t.shape)], "/cpu:0", t.op,
                 t.op.created_at) for i, t in enumerate(feeds)]
    # 1. which ops are needed: walk back from the fetches, stopping at fed tensors
    needed: set[int] = set()
    stack = [t.op for t in fetches if (t.op, t.value_index) not in fed] + targets
    while stack:
        op = stack.pop()
        if op.id in needed:
            continue
        needed.add(op.id)
        stack.extend(t.op for t in op.inputs if (t.op, t.value_index) not in fed)
        stack.extend(op.control_inputs)
    # 2. copy them in creation order, which is a topological order (inputs exist first)
    copies: dict[int, Node] = {}

    def ref(t: Tensor) -> Ref:
        k = fed.get((t.op, t.value_index))
        return (args[k], 0) if k is not None else (copies[t.op.id], t.value_index)

    nodes = list(args)
    graph = fetches[0].op.graph if fetches else targets[0].graph if targets else None
    graph_ops = graph._ops if graph is not None else []
    # A variable's initializer runs before every read of it in the same step, so that
    # Variable(v + 1.0) initialises in any order, as TF1 guards such an initial value
    # (variables.py _try_guard_against_uninitialized_dependencies); the initializer is
    # made before any read, so it is already copied when a read is
    inits = {k: op for k, op in (graph.initializers if graph is not None else {}).items()
             if op.id in needed}
    for op in graph_ops:
        if op.id not in needed:
            continue
        controls = [copies[c.id] for c in op.control_inputs]
        init = inits.get(op.attrs.get("var_name")) if op.type == "ReadVariable" else None
        if init is not None and init.id in copies and copies[init.id] not in controls:
            controls.append(copies[init.id])
        n = Node(op.name, op.type, [ref(t) for t in op.inputs], controls, dict(op.attrs),
                 [(t.dtype, t.shape) for t in op.outputs], op.device, op, op.created_at)
        copies[op.id] = n
        nodes.append(n)
    return PlanGraph(nodes, _fetch_after_writes(nodes, [ref(t) for t in fetches]),
                     [copies[op.id] for op in targets], args)


def _fetch_after_writes(nodes: list[Node], fetches: list[Ref]) -> list[Ref]:
    """A fetched variable is read after every write of it in the same step. TF1 fetches
    a ref variable by reference, so ``_, step = sess.run([train, global_step])`` returns
    the step *after* the train op's increment; our reads are snapshots, which the
    executor may take before the update. So a fetched read of a variable that the step
    also writes (an op other than a read takes its reference) is ordered after those
    writers: the read itself when nothing else uses it, else a read of its own (moving
    one the computation uses would make a cycle: the update depends on it)."""
    used = {id(p) for m in nodes for p, _ in m.inputs} | \
        {id(c) for m in nodes for c in m.control_inputs}
    out, late = [], {}
    for n, i in fetches:
        if n.type == "ReadVariable" and id(n) not in late:
            writers = [m for m in nodes if m.type not in ("ReadVariable", "VariableV2")
                       and any(p is n.inputs[0][0] for p, _ in m.inputs)]
            late[id(n)] = n
            if writers and id(n) not in used:  # moved last: the list stays topological
                n.control_inputs = n.control_inputs + [w for w in writers
                                                       if w not in n.control_inputs]
                nodes.remove(n)
                nodes.append(n)
            elif writers:
                late[id(n)] = Node(f"{n.name}/_after_writes", n.type, list(n.inputs),
                                   writers, dict(n.attrs), list(n.out_specs), n.device, n.op,
                                   n.created_at)
                nodes.append(late[id(n)])
        out.append((late.get(id(n), n), i))
    return out
