"""Placement: choose a device for every node.

Abadi et al. 2016 section 3.3 describes placement as constraint satisfaction: feasible
devices per op, colocation groups, a device that satisfies each group. The open-source
placer (tensorflow/core/common_runtime/placer.cc, colocation_graph.cc) does steps 1 and 2
below and then takes the first feasible device. Our step 3 instead follows the cost-based
greedy heuristic of the TensorFlow white paper (Abadi et al. 2015, section 3.2.1), which
open-source TF never released:

1. **Honour explicit requests** (``with mf.device("/cpu:1")``). A request for a device
   that does not exist is an error, unless ``allow_soft_placement`` lets it fall back.
2. **Colocate**: some nodes must share a device. A Variable and every op that takes its
   reference (reads, assignments, optimizer updates) form one *colocation group*; groups
   are found with union-find and placed as a unit. Conflicting requests inside one group
   are an error naming both ops, even with ``allow_soft_placement`` (TF's placer lets the
   variable's device win over its ref consumers' requests,
   ``ColocationGraph::ColocateResourceOrRefEdge``; we make the user pick, a
   simplification, and build a Variable's own reads and updates on its device).
3. **Cost-based placement of the rest**: the white paper's greedy heuristic simulates the
   execution in topological order and puts each node where it would *finish soonest*,
   counting its compute time on that device and the time to bring its inputs across from
   other devices. We estimate compute from the op's FLOPs and bytes on a nominal roofline
   per device (:mod:`common.cost`); the placer needs relative costs, not exact ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.cost import DeviceSpec, OpCost
from common.devices import H100_SXM

from . import errors
from .ir import Node, PlanGraph
from .op_def import OP_DEFS

# Nominal rates for virtual CPU devices: one share of a modern core (not measured here,
# so that placement does not depend on a probe and is the same on every machine).
NOMINAL_CPU = DeviceSpec("nominal CPU", {"fp32": 50e9}, 10e9, "nominal", "2026")
TRANSFER_BYTES_PER_S = 10e9  # a Send/Recv between devices: one copy through host memory
TRANSFER_FIXED_S = 5e-6  # the rendezvous hand-off itself
UNKNOWN_DIM = 32  # assumed size of an unknown (batch) dimension, for cost estimates


class PlacementError(errors.InvalidArgumentError, ValueError):
    """No device satisfies an op's constraints: TF raises InvalidArgumentError from
    ``Session.run`` (so ``except tf.errors.InvalidArgumentError`` catches it); it was a
    ValueError here first, and stays one for callers that catch that."""


def node_cost(n: Node) -> OpCost:
    """FLOPs and bytes of one node, from its static output shapes (unknown dims = 32)."""
    outs = ins = out_elements = 0
    for dt, s in n.out_specs:
        k = _elements(s)
        out_elements += k
        outs += k * dt.size
    for p, i in n.inputs:
        dt, s = p.out_specs[i]
        ins += _elements(s) * dt.size
    if n.type == "MatMul" and n.inputs:
        a_shape = n.inputs[0][0].out_specs[n.inputs[0][1]][1]
        k = (a_shape[-2] if n.attrs.get("transpose_a") else a_shape[-1]) if a_shape else None
        flops = 2.0 * (UNKNOWN_DIM if k is None else k) * _elements(n.out_specs[0][1])
    elif n.type in ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"):
        f = n.inputs[1][0].out_specs[n.inputs[1][1]][1] if n.type != "Conv2DBackpropFilter" \
            else None
        taps = _elements(f[:3]) if f else 9 * 16
        flops = 2.0 * taps * _elements(n.out_specs[0][1])
    else:
        d = OP_DEFS.get(n.type)
        per = d.flops_per_element if d else 1.0
        flops = per * out_elements
    return OpCost(flops, ins, outs, n.name)


def estimate_seconds(n: Node, device: str) -> float:
    spec = H100_SXM if device.startswith("/gpu") else NOMINAL_CPU
    c = node_cost(n)
    dtype = "fp32" if spec is NOMINAL_CPU else "tf32"
    return max(c.flops / spec.peak(dtype), c.bytes / spec.mem_bandwidth) + 1e-6


@dataclass
class _UnionFind:
    parent: dict  # element -> its parent (roots point to themselves)

    def find(self, x):
        while self.parent.setdefault(x, x) != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        self.parent[self.find(a)] = self.find(b)


def colocation_groups(pg: PlanGraph) -> dict[int, list[Node]]:
    """Union-find over the must-share-a-device relation: Variables and their ref users."""
    uf = _UnionFind({})
    for n in pg.nodes:
        uf.find(id(n))
        for p, _ in n.inputs:
            if p.type == "VariableV2":
                uf.union(id(n), id(p))
    groups: dict[int, list[Node]] = {}
    for n in pg.nodes:
        groups.setdefault(uf.find(id(n)), []).append(n)
    return groups


def variable_groups(ops: list) -> dict[str, list[str]]:
    """Variables that one op of the whole graph takes by reference together (an
    ``ApplyAdam`` takes a variable and its two slots): variable name -> its group."""
    uf = _UnionFind({})
    for op in ops:
        refs = [t.op.attrs["var_name"] for t in op.inputs if t.op.type == "VariableV2"]
        for r in refs:
            uf.union(r, refs[0])
    groups: dict[str, list[str]] = {}
    for v in list(uf.parent):
        groups.setdefault(uf.find(v), []).append(v)
    return {v: groups[uf.find(v)] for v in uf.parent}


def place(pg: PlanGraph, devices: list[str], allow_soft_placement: bool = False,
          variable_devices: dict[str, str] | None = None,
          var_groups: dict[str, list[str]] | None = None) -> None:
    """Assign ``node.device`` for every node (in place).

    ``variable_devices`` (variable name -> device) is the session's record of where each
    variable lives; it is read and updated. Each ``Session.run`` places only the
    subgraph it runs, but a variable's value stays where its first run put it, so later
    runs must place its colocation group there again; and variables that some op of the
    whole graph (``var_groups``) takes together must start on one device, even when the
    run that first places them (the initializer) does not contain that op. TF gets the
    same stability by placing the whole graph once per session."""
    groups = colocation_groups(pg)
    group_of = {id(n): key for key, members in groups.items() for n in members}
    fixed: dict[int, str] = {}
    lives = variable_devices if variable_devices is not None else {}
    var_groups = var_groups or {}
    group_vars = {key: [m.attrs["var_name"] for m in members if m.type == "VariableV2"]
                  for key, members in groups.items()}
    for key, members in groups.items():
        wanted = {}
        for m in members:
            if m.type == "VariableV2" and m.attrs["var_name"] in lives:
                where = lives[m.attrs["var_name"]]
                if m.device and m.device != where and m.device in devices:
                    raise PlacementError(
                        f"Variable '{_user_name(m)}' was requested on {m.device} but already "
                        f"lives on {where} in this session")
                wanted[where] = m
                continue
            if m.device:
                dev = m.device
                if dev not in devices:
                    if not allow_soft_placement:
                        raise PlacementError(
                            f"Cannot assign a device for operation '{_user_name(m)}' (created at "
                            f"{m.created_at}): {dev} was requested but the session has only "
                            f"{', '.join(devices)}. Set allow_soft_placement=True in "
                            f"ConfigProto to fall back.")
                    continue
                wanted[dev] = m
        if len(wanted) > 1:
            (d1, m1), (d2, m2) = list(wanted.items())[:2]
            raise PlacementError(
                f"Cannot colocate '{_user_name(m1)}' on {d1} with '{_user_name(m2)}' on {d2}: "
                f"they share a variable's reference and must be on one device (soft "
                f"placement does not settle this: pick one device){errors.where(m2.op)}")
        if wanted:
            fixed[key] = next(iter(wanted))

    # Cost-based greedy placement: earliest finish time, in topological order.
    free_at = {d: 0.0 for d in devices}
    finish: dict[int, float] = {}
    where: dict[int, str] = {}
    for n in pg.nodes:
        key = group_of[id(n)]
        if key not in fixed:  # a variable of this group was placed earlier in this loop
            known = [lives[v] for v in group_vars[key] if v in lives]
            if known:
                fixed[key] = known[0]
        if key in fixed:
            choices = [fixed[key]]
        elif n.type == "_Arg":
            choices = [devices[0]]  # feeds arrive from the client on the first device
        else:
            choices = devices
        best, best_t, best_cost = choices[0], float("inf"), 0.0
        for d in choices:
            ready = 0.0
            for p, i in n.inputs:
                t = finish[id(p)]
                if where[id(p)] != d:
                    dt, shape = p.out_specs[i]
                    nbytes = dt.size * (1 if shape is None else
                                        _elements(shape))
                    t += TRANSFER_FIXED_S + nbytes / TRANSFER_BYTES_PER_S
                ready = max(ready, t)
            for c in n.control_inputs:
                ready = max(ready, finish[id(c)])
            cost = estimate_seconds(n, d)
            t_done = max(ready, free_at[d]) + cost
            if t_done < best_t - 1e-12:
                best, best_t, best_cost = d, t_done, cost
        where[id(n)] = best
        finish[id(n)] = best_t
        free_at[best] = best_t
        fixed.setdefault(key, best)  # the rest of its colocation group follows it
        n.device = best
        n.est_seconds = best_cost
        if n.type == "VariableV2":
            for v in var_groups.get(n.attrs["var_name"], [n.attrs["var_name"]]):
                lives.setdefault(v, best)


def _elements(shape) -> int:
    """Elements of a static shape, an unknown dimension (or rank) counted as 32."""
    if shape is None:
        return UNKNOWN_DIM
    k = 1
    for d in shape:
        k *= UNKNOWN_DIM if d is None else d
    return k


def _user_name(n) -> str:
    """The name of the op the user built (a pass may have replaced it: ``Add/folded``)."""
    return n.op.name if n.op is not None else n.name
