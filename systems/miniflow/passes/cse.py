"""Common-subexpression elimination: one node for each distinct computation.

Two nodes that apply the same op, with the same attributes, to the same inputs, after
the same control dependencies, on the same device, compute the same value: keep the
first (tensorflow/core/graph/optimizer_cse.cc). Stateful ops are never merged (two
reads of a variable may straddle an assignment; two random ops must differ), nor are
fed arguments and placeholders. Control inputs are part of the key, so a read made
after an assignment is never merged with one made before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import PlanGraph
from ..op_def import OP_DEFS

NEVER = {"_Arg", "Placeholder", "NoOp", "_Send", "_Recv"}


def _hashable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return ("nd", v.dtype.str, v.shape, v.tobytes()) if v.size <= 4096 else ("big", id(v))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items())) if v else ()
    # by bits: 0.0 == -0.0 (and they hash alike), but one_hot(off_value=-0.0) is not
    # one_hot(off_value=0.0): 1 / it is -inf, not inf
    if isinstance(v, float):
        return ("float", v.hex())
    if isinstance(v, np.generic):
        return ("np", v.dtype.str, v.tobytes())
    return v


def eliminate_common_subexpressions(pg: PlanGraph, attr_keys: dict | None = None) -> int:
    """Merge duplicates in topological order; returns how many nodes were removed.
    ``attr_keys`` caches each node's hashable attributes across fixed-point iterations."""
    attr_keys = {} if attr_keys is None else attr_keys
    seen: dict[Any, Any] = {}
    moved, moved_nodes = {}, {}
    kept = []
    for n in pg.nodes:
        n.inputs = [moved.get((id(p), i), (p, i)) for p, i in n.inputs]
        n.control_inputs = [moved_nodes.get(id(c), c) for c in n.control_inputs]
        d = OP_DEFS.get(n.type)
        if n.type in NEVER or d is None or d.stateful or n in pg.targets:
            kept.append(n)
            continue
        attrs_key = attr_keys.get(id(n))
        if attrs_key is None:
            attrs_key = attr_keys[id(n)] = _hashable(n.attrs)
        key = (n.type, attrs_key, tuple([(id(p), i) for p, i in n.inputs]),
               tuple(sorted(map(id, n.control_inputs))) if n.control_inputs else (), n.device)
        first = seen.setdefault(key, n)
        if first is n:
            kept.append(n)
            continue
        for i in range(len(n.out_specs)):
            moved[(id(n), i)] = (first, i)
        moved_nodes[id(n)] = first
    removed = len(pg.nodes) - len(kept)
    pg.nodes = kept
    pg.forward(moved, moved_nodes)
    return removed
