"""Fusion of elementwise chains into one node.

``tanh(x @ w + b) * 0.5`` is three elementwise ops after the matmul: run separately,
each reads and writes a whole tensor and costs the executor one dispatch. Fused, the
chain is one node whose kernel runs the three functions back to back, writing each into
the buffer the previous one allocated (numpy ufuncs take ``out=``): one dispatch, one
allocation, memory touched once per step instead of once per op. This is the job of
TensorFlow's Grappler remapper and of XLA's loop fusion; on a GPU it is where a
generated kernel replaces the chain (miniansor tunes such kernels).

A producer joins its consumer's fused node when both are elementwise, on the same
device, and the producer's output goes nowhere else (not to another op, not to a
fetch, not as a control edge): then no one outside can observe the intermediate. Fused
groups are trees; the root is the one member whose output leaves the group. The fused
node keeps its members' ops: if one fails at run time, the error names that op and its
line, exactly as it would without fusion.
"""

from __future__ import annotations

import numpy as np

from ..errors import MemberError
from ..ir import Node, PlanGraph
from ..op_def import OP_DEFS, OpDef, define


def _make_fused_kernel(attrs, be, res):
    """One Python function running the chain; intermediates live in a small list ``env``
    (external inputs first, then one entry per step) and are written in place when a
    step's result has the shape and dtype of an intermediate it consumes."""
    body = attrs["body"]
    n_ext = 1 + max((j for _, _, args, _ in body for is_tmp, j in args if not is_tmp),
                    default=-1)
    steps = []
    for k, (op_type, op_attrs, args, out_dtype) in enumerate(body):
        fn = OP_DEFS[op_type].make_kernel(op_attrs, be, res)
        idx = tuple(n_ext + j if is_tmp else j for is_tmp, j in args)
        cand = -1
        if be.name == "numpy" and isinstance(fn, np.ufunc) and len(idx) <= 2:
            # an intermediate input of the same dtype may receive the result
            for (is_tmp, j), e in zip(args, idx, strict=True):
                if is_tmp and body[j][3] == out_dtype:
                    cand = e
                    break
        steps.append((fn, idx, cand, n_ext + k))
    pad = [None] * len(body)
    ndarray = np.ndarray  # ufuncs on 0-d inputs return numpy scalars, which cannot be out=
    member_ops = attrs["member_ops"]

    def fused(*ext):
        env = [*ext, *pad]
        try:  # free unless something raises (Python 3.11's zero-cost exceptions)
            for fn, idx, cand, out in steps:
                if len(idx) == 1:
                    a = env[idx[0]]
                    env[out] = fn(a, out=a) if cand >= 0 and type(a) is ndarray else fn(a)
                    continue
                vals = [env[i] for i in idx]
                if cand >= 0:
                    v = env[cand]
                    w = vals[1] if vals[0] is v else vals[0]
                    if type(v) is ndarray and (w.shape == v.shape or not w.ndim):
                        env[out] = fn(*vals, out=v)
                        continue
                env[out] = fn(*vals)
        except Exception as e:  # name the member that failed, not the chain's root
            k = out - n_ext
            raise MemberError(member_ops[k], e, [env[i] for i in idx]) from e
        return env[-1]
    return fused


def _fused_shape(ins, attrs):
    raise RuntimeError("_FusedElementwise nodes are made by the fusion pass, not by users")


define(OpDef("_FusedElementwise", _fused_shape, _make_fused_kernel, elementwise=True))


def fuse_elementwise(pg: PlanGraph) -> int:
    """Fuse elementwise chains; returns the number of nodes removed."""
    cons = pg.consumers()
    fetched = {id(n) for n, _ in pg.fetches}
    targets = {id(n) for n in pg.targets}

    def elementwise(n: Node) -> bool:
        d = OP_DEFS.get(n.type)
        return d is not None and d.elementwise and len(n.out_specs) == 1

    parent: dict[int, Node] = {}  # producer -> the consumer it fuses into
    for n in pg.nodes:
        users = cons.get(n, [])
        if (elementwise(n) and id(n) not in fetched and id(n) not in targets
                and len({id(u) for u in users}) == 1):
            c = users[0]
            if (elementwise(c) and c.device == n.device
                    and all(p is not n for p in c.control_inputs)):
                parent[id(n)] = c

    roots: dict[int, Node] = {}

    def root(n: Node) -> Node:
        path = []
        while id(n) in parent and id(n) not in roots:
            path.append(n)
            n = parent[id(n)]
        r = roots.get(id(n), n)
        for m in path:  # path compression: each chain is walked once
            roots[id(m)] = r
        return r

    fused_into = {id(c) for c in parent.values()}

    groups: dict[int, list[Node]] = {}
    for n in pg.nodes:  # topological order, so members come before their consumers
        if id(n) in parent or id(n) in fused_into:
            groups.setdefault(id(root(n)), []).append(n)

    collapsed, removed = [], 0
    for members in groups.values():
        if len(members) < 2:
            continue
        top = members[-1]
        index = {id(m): k for k, m in enumerate(members)}
        ext: list = []
        ext_at: dict[tuple[int, int], int] = {}  # a list search here made the pass
        body = []                                 # quadratic in a long gradient chain
        for m in members:
            args = []
            for p, i in m.inputs:
                if id(p) in index:
                    args.append((True, index[id(p)]))
                else:
                    if (id(p), i) not in ext_at:
                        ext_at[id(p), i] = len(ext)
                        ext.append((p, i))
                    args.append((False, ext_at[id(p), i]))
            body.append((m.type, m.attrs, args, m.out_specs[0][0]))
        controls = {id(c): c for m in members for c in m.control_inputs if id(c) not in index}
        fused = Node(f"{top.name}/fused", "_FusedElementwise", ext, list(controls.values()),
                     {"body": body, "members": [m.name for m in members],
                      "member_ops": [m.op for m in members]}, top.out_specs,
                     top.device, top.op, top.created_at)
        collapsed.append((members, fused))
        removed += len(members) - 1
    pg.collapse(collapsed)
    return removed
