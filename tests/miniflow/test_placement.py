"""The placer: explicit requests, colocation groups, soft placement, cost-based choice."""

import numpy as np
import pytest

import systems.miniflow as mf
from systems.miniflow.placement import PlacementError


def _devices_by_name(sess, fetches, feeds=None):
    plan = sess.plan_for(fetches, feeds)
    return {n[0]: n[4] for n in plan.snapshots["partitioned"].nodes}


def test_explicit_device_requests_are_honoured():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [4], name="x")
        with mf.device("/cpu:1"):
            y = mf.tanh(x, name="y")
        z = mf.identity(y * 2.0, name="z")
    cfg = mf.ConfigProto(device_count={"CPU": 2})
    with mf.Session(graph=g, config=cfg) as s:
        s.run(z, {x: np.ones(4)})
        dev = _devices_by_name(s, z, {x: None})
    assert dev["y"] == "/cpu:1"


def test_variables_are_colocated_with_every_op_that_takes_their_reference():
    g = mf.Graph()
    with g.as_default():
        with mf.device("/cpu:1"):
            v = mf.Variable(np.zeros(3, np.float32), name="v")
        with mf.device("/cpu:0"):  # a read or an update made in another device's scope
            upd = v.assign_add(np.ones(3, np.float32), name="upd")  # goes with the
            with mf.control_dependencies([upd]):  # variable, as TF's placer puts it
                after = mf.identity(v, name="after")  # (a PlacementError before)
    cfg = mf.ConfigProto(device_count={"CPU": 2})
    with mf.Session(graph=g, config=cfg) as s:
        s.run(v.initializer)
        assert s.run(after).tolist() == [1.0, 1.0, 1.0]
        dev = _devices_by_name(s, after)
        assert dev["v"] == dev["upd"] == dev["v/read_1"] == "/cpu:1" and dev["after"] == "/cpu:0"
    g2 = mf.Graph()
    with g2.as_default():
        with mf.device("/cpu:1"):
            v = mf.Variable(np.zeros(3, np.float32), name="v")
        upd = v.assign_add(np.ones(3, np.float32), name="upd")  # ...or asking nothing
        rd = v.read_value()
    with mf.Session(graph=g2, config=cfg) as s:
        s.run(v.initializer)
        s.run(upd)
        dev = _devices_by_name(s, upd)
        assert dev["v"] == dev["upd"] == "/cpu:1"
        np.testing.assert_array_equal(s.run(rd), np.ones(3))


def test_missing_device_is_an_error_unless_soft_placement_is_allowed():
    g = mf.Graph()
    with g.as_default():
        with mf.device("/gpu:3"):
            y = mf.add(mf.constant(1.0), 1.0, name="ona")
    with mf.Session(graph=g, config=mf.ConfigProto(device_count={"GPU": 0})) as s:
        # named by the user's op, not by what constant folding made of it ('ona/folded')
        with pytest.raises(PlacementError, match="operation 'ona' \\(created at .*test_placem"
                                                 ".*/gpu:3 was requested but the session has "
                                                 "only /cpu:0"):
            s.run(y)
    soft = mf.ConfigProto(device_count={"GPU": 0}, allow_soft_placement=True)
    with mf.Session(graph=g, config=soft) as s:
        assert s.run(y) == 2.0


def test_cost_based_placer_spreads_independent_heavy_branches():
    g = mf.Graph()
    rng = np.random.default_rng(0)
    with g.as_default():
        x = mf.placeholder(mf.float32, [256, 256], name="x")
        branches = []
        for i in range(2):
            h = x
            for j in range(3):
                h = mf.tanh(h @ mf.constant(rng.standard_normal((256, 256)).astype(np.float32)
                                            * 0.05), name=f"b{i}_{j}")
            branches.append(h)
        y = mf.add_n(branches)
    cfg = mf.ConfigProto(device_count={"CPU": 2})
    xv = rng.standard_normal((256, 256)).astype(np.float32)
    with mf.Session(graph=g, config=cfg) as s:
        two = s.run(y, {x: xv})
        dev = _devices_by_name(s, y, {x: None})
    used = {dev[f"b{i}_{j}/fused"] if f"b{i}_{j}/fused" in dev else dev[f"b{i}_{j}"]
            for i in range(2) for j in range(3)}
    assert used == {"/cpu:0", "/cpu:1"}
    with mf.Session(graph=g) as s:
        np.testing.assert_allclose(two, s.run(y, {x: xv}), rtol=1e-5)


def test_a_variable_stays_on_its_first_device_across_runs():
    # Each run places only its own subgraph. The initializer run alone would put each
    # variable (and each Adam slot) wherever its Assign is cheapest; the training run,
    # which takes a weight and its two slots in one ApplyAdam, must find all three on
    # one device, and where their values already are (found on a GPU, 2026-11-27).
    from systems.miniflow import digits

    m = digits.build("mlp", "cpu")
    with mf.Session(graph=m["graph"],
                    config=mf.ConfigProto(device_count={"CPU": 4})) as s:
        s.run(m["init"])
        Xtr, _, ytr, _ = digits.load_split()
        feed = {m["x"]: Xtr[:64], m["y"]: ytr[:64]}
        s.run(m["train"], feed)
        where = {}
        for fetch, fd in ((m["init"], None), (m["train"], feed)):
            plan = s.plan_for(fetch, fd)
            for ex in plan.executors:
                for n in ex.nodes:
                    if n.type == "VariableV2":
                        where.setdefault(n.attrs["var_name"], set()).add(ex.device)
    assert all(len(devs) == 1 for devs in where.values()), where
    for v in ("hidden/w", "logits/b"):
        assert where[f"{v}/Adam"] == where[f"{v}/Adam_1"] == where[v]


def test_the_placer_keeps_a_cheap_consumer_next_to_its_big_input():
    """Two heavy branches land on two CPUs; each branch's row sum (cheap, but its input is
    256 KB) must stay on its branch's device: moving it costs a transfer that finishes
    later (the white paper's greedy placer counts the input's transfer time)."""
    g = mf.Graph()
    rng = np.random.default_rng(0)
    with g.as_default():
        x = mf.placeholder(mf.float32, [256, 256], name="x")
        sums = []
        for i in range(2):
            h = x
            for j in range(3):
                h = mf.tanh(h @ mf.constant(rng.standard_normal((256, 256)).astype(np.float32)
                                            * 0.05), name=f"b{i}_{j}")
            sums.append(mf.reduce_sum(h, 1, name=f"sum{i}"))
        y = mf.add_n(sums)
    cfg = mf.ConfigProto(device_count={"CPU": 2})
    with mf.Session(graph=g, config=cfg) as s:
        s.run(y, {x: rng.standard_normal((256, 256)).astype(np.float32)})
        plan = s.plan_for(y, {x: None})
        dev = {n[0]: n[4] for n in plan.snapshots["partitioned"].nodes}
    producers = [dev.get(f"b{i}_2/fused", dev.get(f"b{i}_2")) for i in range(2)]
    assert set(producers) == {"/cpu:0", "/cpu:1"}, dev
    for i in range(2):
        assert dev[f"sum{i}"] == producers[i], (i, dev)


@pytest.mark.parametrize("transpose_a", [False, True])
def test_the_cost_of_a_matmul_counts_its_inner_dimension_when_a_is_transposed(transpose_a):
    """C[64, 10] = A^T B with A of shape [1000, 64]: the inner dimension is 1000, so
    2 x 1000 x 640 FLOPs. Read from A's last axis (64) the estimate was about 16x too low,
    and the placer's finish times with it."""
    from systems.miniflow.ir import Node
    from systems.miniflow.placement import node_cost

    a_shape = (1000, 64) if transpose_a else (64, 1000)
    a = Node("a", "_Arg", [], [], {"index": 0}, [(mf.float32, a_shape)])
    b = Node("b", "_Arg", [], [], {"index": 1}, [(mf.float32, (1000, 10))])
    mm = Node("mm", "MatMul", [(a, 0), (b, 0)], [],
              {"transpose_a": transpose_a, "transpose_b": False}, [(mf.float32, (64, 10))])
    c = node_cost(mm)
    assert c.flops == 2 * 1000 * 64 * 10
    assert c.bytes_read == (64 * 1000 + 1000 * 10) * 4 and c.bytes_written == 64 * 10 * 4
