"""DOT export at each pipeline stage, and the Chrome trace of a step."""

import json

import numpy as np
import pytest

import systems.miniflow as mf
from systems.miniflow.viz import step_trace, to_dot


def _two_device_step(x_name="x"):
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [4], name=x_name)
        with mf.device("/cpu:1"):
            y = mf.tanh(x * 3.0, name="y")
        z = mf.reduce_sum(y * y, name="z")
    s = mf.Session(graph=g, config=mf.ConfigProto(device_count={"CPU": 2}))
    md = mf.RunMetadata()
    s.run(z, {x: np.ones(4)}, options=mf.RunOptions(trace_level=mf.RunOptions.FULL_TRACE),
          run_metadata=md)
    return g, s, s.plan_for(z, {x: None}), md


def test_dot_shows_each_stage_and_the_transfers():
    g, s, plan, _ = _two_device_step()
    raw = to_dot(g)
    assert raw.startswith("digraph G {") and '"x" -> "mul"' in raw
    opt = to_dot(plan, "optimized")
    assert "_FusedElementwise" in opt or "Tanh" in opt
    part = to_dot(plan, "partitioned")
    assert 'subgraph "cluster_/cpu:0"' in part and 'subgraph "cluster_/cpu:1"' in part
    assert "_Send" in part and "_Recv" in part and "color=red" in part
    s.close()


def test_step_trace_is_valid_chrome_json_with_rows_and_flows(tmp_path):
    _, s, plan, md = _two_device_step()
    path = step_trace(md, plan).save(tmp_path / "t.json")
    doc = json.loads(path.read_text())
    ev = doc["traceEvents"]
    spans = [e for e in ev if e["ph"] == "X"]
    assert {e["name"] for e in spans} == {st.name for st in md.step_stats}
    rows = [e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"]
    assert any(r.startswith("/cpu:0") for r in rows) and any(r.startswith("/cpu:1")
                                                             for r in rows)
    starts = {e["id"] for e in ev if e["ph"] == "s"}
    ends = {e["id"] for e in ev if e["ph"] == "f"}
    assert starts and starts == ends  # every Send has its Recv
    s.close()


@pytest.mark.parametrize("x_name", ["x", "x_to_y"])
def test_each_send_has_a_bold_red_edge_to_its_recv_and_only_partitions_are_clusters(x_name):
    """Paired by rendezvous key: the Recv's name guessed from the Send's lost the arrow
    of a tensor whose op is named, say, "x_to_y"."""
    _, s, plan, _ = _two_device_step(x_name)
    part = to_dot(plan, "partitioned")
    nodes = plan.snapshots["partitioned"].nodes
    sends = [n[0] for n in nodes if n[1] == "_Send"]
    key = {n.name: n.attrs["key"] for e in plan.executors for n in e.nodes
           if n.type in ("_Send", "_Recv")}
    assert sends and any(x_name in n for n in sends)
    for name in sends:
        recv = next(n[0] for n in nodes if n[1] == "_Recv" and key[n[0]] == key[name])
        assert f'"{name}" -> "{recv}" [color=red, style=bold];' in part
    for stage in ("pruned", "optimized"):
        assert "subgraph" not in to_dot(plan, stage)
    s.close()


def test_a_transfer_arrow_starts_at_the_send_and_ends_at_the_recv(tmp_path):
    _, s, plan, md = _two_device_step()
    doc = json.loads(step_trace(md, plan).save(tmp_path / "t.json").read_text())
    spans = {e["name"]: e for e in doc["traceEvents"] if e["ph"] == "X"}
    ops = {st.name: st.op for st in md.step_stats}
    flows = [e for e in doc["traceEvents"] if e["ph"] in ("s", "f")]
    assert flows
    for e in flows:
        # the span on the same row that the arrow's end touches
        here = [n for n, sp in spans.items() if sp["tid"] == e["tid"] and
                sp["ts"] <= e["ts"] <= sp["ts"] + sp["dur"] and ops[n] in ("_Send", "_Recv")]
        assert here, e
        assert {ops[n] for n in here} == {"_Send" if e["ph"] == "s" else "_Recv"}, (e, here)
    s.close()


def test_a_fused_node_is_labelled_with_the_ops_inside_it():
    """Exercise 1 asks where a new elementwise op lands in fusion: the fused node's label
    lists its members' op types, in order (it used to say only _FusedElementwise)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [4], name="x")
        y = mf.reduce_sum(mf.sigmoid(mf.tanh(x * 3.0)), name="y")
    with mf.Session(graph=g) as s:
        s.run(y, {x: np.ones(4, np.float32)})
        dot = to_dot(s.plan_for(y, {x: None}), "optimized")
    assert dot.count("_FusedElementwise") == 1
    assert "_FusedElementwise\n(Mul, Tanh, Sigmoid)" in dot, dot
