"""Looking at a graph and at a step: DOT drawings and Chrome traces.

* :func:`to_dot` draws the user's graph, or a plan's graph after pruning, after the
  passes, or after partitioning (one cluster per device, Send/Recv in red): the three
  stages of ``Session.run`` side by side. Render with ``dot -Tsvg`` or any Graphviz
  viewer. TensorBoard's graph view plays this role for TensorFlow.
* :func:`step_trace` turns a step's ``RunMetadata.step_stats`` into a Chrome trace
  (one row per device and executor thread; an arrow from each Send to its Recv), as
  TensorFlow's ``tensorflow/python/client/timeline.py`` does, through
  :class:`common.trace.TraceWriter`.
"""

from __future__ import annotations

from collections import defaultdict

from common.trace import TraceWriter

from .graph import Graph
from .plan import Plan, Snapshot

_COLORS = {"_Send": "red", "_Recv": "red", "VariableV2": "lightblue",
           "_FusedElementwise": "gold", "_Arg": "palegreen", "Const": "gray90"}


def _quote(s: str) -> str:
    return '"' + s.replace('"', r"\"") + '"'


def to_dot(source: Graph | Plan, stage: str = "optimized") -> str:
    """DOT text of a Graph, or of a Plan at ``stage`` ('pruned', 'optimized', 'partitioned')."""
    fused: dict[str, list[str]] = {}
    if isinstance(source, Graph):
        nodes = [(op.name, op.type, [t.name for t in op.inputs],
                  [c.name for c in op.control_inputs], op.device)
                 for op in source.get_operations()]
    else:
        snap: Snapshot = source.snapshots[stage]
        nodes, fused = snap.nodes, snap.fused_members
    lines = ["digraph G {", "  rankdir=TB;", '  node [shape=box, style=filled, fontsize=10];']
    by_device: dict[str, list] = defaultdict(list)
    for n in nodes:
        by_device[n[4] if stage == "partitioned" else ""].append(n)
    for dev, members in by_device.items():
        indent = "  "
        if dev:
            lines.append(f"  subgraph {_quote('cluster_' + dev)} {{")
            lines.append(f"    label={_quote(dev)};")
            indent = "    "
        for name, op_type, *_ in members:
            color = _COLORS.get(op_type, "white")
            label = name + "\n" + op_type
            if name in fused:  # which ops the fusion pass put inside
                label += "\n(" + ", ".join(fused[name]) + ")"
            lines.append(f"{indent}{_quote(name)} [label={_quote(label)}, "
                         f"fillcolor={color}];")
        if dev:
            lines.append("  }")
    for name, _, inputs, controls, _ in nodes:
        for inp in inputs:
            lines.append(f"  {_quote(inp.rsplit(':', 1)[0])} -> {_quote(name)};")
        for c in controls:
            lines.append(f"  {_quote(c)} -> {_quote(name)} [style=dashed];")
    # the transfer itself: each Send to the Recv of its rendezvous key (a name has no
    # reliable pairing: guessing the Recv's name lost the arrow of any op named "a_to_b")
    keys = {n.name: n.attrs["key"] for e in getattr(source, "executors", ())
            for n in e.nodes if n.type in ("_Send", "_Recv")}
    recv_of = {keys[n[0]]: n[0] for n in nodes if n[1] == "_Recv" and n[0] in keys}
    for name, op_type, *_ in nodes:
        recv = recv_of.get(keys.get(name)) if op_type == "_Send" else None
        if recv is not None:
            lines.append(f"  {_quote(name)} -> {_quote(recv)} [color=red, style=bold];")
    lines.append("}")
    return "\n".join(lines)


def step_trace(run_metadata, plan: Plan | None = None, process_name: str = "miniflow step"
               ) -> TraceWriter:
    """A Chrome trace of one step: a span per node, a row per device thread."""
    w = TraceWriter(process_name)
    rows: dict[str, int] = {}
    keys: dict[str, str] = {}
    if plan is not None:
        for e in plan.executors:
            for n in e.nodes:
                if n.type in ("_Send", "_Recv"):
                    keys[n.name] = n.attrs["key"]
    for st in run_metadata.step_stats:
        row = f"{st.device} / {st.thread}"
        if row not in rows:
            rows[row] = len(rows) + 1
            w.name_thread(row, tid=rows[row])
        tid = rows[row]
        w.complete(st.name, st.start_us, st.end_us - st.start_us, cat=st.op, tid=tid,
                   args={"op": st.op, "device": st.device, "output_bytes": st.output_bytes})
        if st.name in keys:
            op_start = st.op == "_Send"
            w.flow(keys[st.name], start=op_start, ts_us=st.start_us if op_start else
                   st.end_us, name="transfer", tid=tid)
    return w
