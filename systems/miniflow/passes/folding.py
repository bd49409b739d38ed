"""Constant folding: evaluate, once, every op whose inputs are all constants.

TensorFlow's graph optimizer does this before a graph runs
(tensorflow/core/common_runtime/constant_folding.cc): a subgraph that depends on no
placeholder, variable or random op computes the same value every step, so it is computed
at plan time and replaced by a ``Const``. The result's size is capped
(``max_constant_size_in_bytes``; TF's default is 10 MiB): folding
``zeros([10000, 10000])`` would turn a cheap op into 400 MB held in the plan.

An op with control inputs folds too, and its constant keeps them, so whatever was ordered
after those ops still is (Grappler's ``ConstantFolding::FoldNode`` forwards a folded
node's control inputs to the new ``Const``, grappler/optimizers/constant_folding.cc).
So does every constant it read: a ``Const`` that carries control inputs passes them on
to whatever is folded from it, or a chain of folds would drop the dependency (and with it
the ops it ordered, which pruning then removes).
Optimizers create such ops: Adam's ``beta1_power * cast(beta1)`` is built under a
control dependency on the updates, and unfolded its cast would run every step.
"""

from __future__ import annotations

import numpy as np

from ..backend import NUMPY
from ..ir import Node, PlanGraph
from ..op_def import OP_DEFS

NOT_FOLDABLE = {"Const", "_Arg", "Placeholder", "NoOp", "_Send", "_Recv", "CheckNumerics"}


def fold_constants(pg: PlanGraph, max_bytes: int) -> int:
    """Fold in topological order; returns the number of ops replaced by constants."""
    moved, moved_nodes = {}, {}
    folded = 0
    new_nodes: list[Node] = []
    for n in pg.nodes:
        n.inputs = [moved.get((id(p), i), (p, i)) for p, i in n.inputs]
        n.control_inputs = [moved_nodes.get(id(c), c) for c in n.control_inputs]
        if (n.type in NOT_FOLDABLE or OP_DEFS.get(n.type) is None
                or OP_DEFS[n.type].stateful or not n.out_specs
                or any(p.type != "Const" for p, _ in n.inputs)):
            new_nodes.append(n)
            continue
        try:
            kernel = OP_DEFS[n.type].make_kernel(n.attrs, NUMPY, None)
            with np.errstate(all="ignore"):  # a NaN folded is the NaN the run would give
                out = kernel(*[p.attrs["value"] for p, _ in n.inputs])
        except Exception:
            new_nodes.append(n)  # leave it to fail at run time, with the user's line
            continue
        outs = out if len(n.out_specs) > 1 else (out,)
        controls = _inherited_controls(n)
        arrays = [np.asarray(v) for v in outs]
        if sum(a.nbytes for a in arrays) > max_bytes:
            new_nodes.append(n)
            continue
        for i, (a, (dt, _)) in enumerate(zip(arrays, n.out_specs, strict=True)):
            a = a.astype(dt.np_dtype, copy=False)
            a.setflags(write=False)
            c = Node(f"{n.name}/folded_{i}" if len(arrays) > 1 else f"{n.name}/folded",
                     "Const", [], controls, {"value": a}, [(dt, a.shape)], n.device, n.op,
                     n.created_at)
            new_nodes.append(c)
            moved[(id(n), i)] = (c, 0)
            moved_nodes.setdefault(id(n), c)
        folded += 1
    pg.nodes = new_nodes
    pg.forward(moved, moved_nodes)
    return folded


def _inherited_controls(n: Node) -> list[Node]:
    """The control inputs a constant folded from ``n`` must keep: ``n``'s own and those of
    the constants it reads; a constant control input stands for its own control inputs
    (a constant has no effect to wait for). Deduplicated, in order."""
    out: dict[int, Node] = {}
    todo = list(n.control_inputs) + [p for p, _ in n.inputs]
    seen: set[int] = set()
    while todo:
        c = todo.pop(0)
        if id(c) in seen:
            continue
        seen.add(id(c))
        if c.type == "Const":
            todo.extend(c.control_inputs)
        else:
            out[id(c)] = c
    return list(out.values())
