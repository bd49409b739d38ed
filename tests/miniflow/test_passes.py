"""Graph passes: same results with each pass on or off, and each pass doing what it says."""

import numpy as np
import pytest

import systems.miniflow as mf

from .helpers import BACKENDS

# A new pass (exercise 2) adds its GraphOptions flag to PASSES, and its PassStats name
# to STATS_NAME where the two differ; ALL_OFF turns every pass off, a new one too.
PASSES = ["constant_folding", "common_subexpression", "pruning", "fusion"]
STATS_NAME = {"common_subexpression": "cse"}
ALL_OFF = mf.GraphOptions.all_off()


def _model():
    g = mf.Graph()
    rng = np.random.default_rng(0)
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 6])
        w = mf.Variable(rng.standard_normal((6, 4)).astype(np.float32))
        # foldable; once folded, its two operands are dead ends for pruning to remove
        scale = mf.constant(2.0, name="two") * mf.constant(1.5, name="one_and_a_half") + 1.0
        h1 = mf.tanh(x @ w) * scale
        h2 = mf.tanh(x @ w) * scale  # a duplicate sub-graph: CSE merges it
        # "* 1.0" and an identity nobody fetches: nothing for the passes here to remove
        # (exercise 2's algebraic simplification has them)
        h = mf.identity((h1 + h2) * 1.0)
        y = mf.nn.softmax(h - mf.reduce_mean(h1, 1, keepdims=True))
        loss = mf.reduce_sum(y * y)
        (dw,) = mf.gradients(loss, [w])
    return g, x, [y, loss, dw]



@pytest.mark.parametrize("option", PASSES + ["all"])
def test_each_pass_on_or_off_gives_identical_results(option):
    g, x, fetches = _model()
    xv = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    only = mf.GraphOptions(**{p: option in (p, "all") for p in PASSES})
    off = ALL_OFF
    if option == "pruning":
        # Alone, pruning has nothing to do (ir.build copies only what the fetches need);
        # its work is what folding leaves dead. So: folding without, then with, pruning.
        off = mf.GraphOptions(constant_folding=True, common_subexpression=False,
                              pruning=False, fusion=False)
        only = mf.GraphOptions(constant_folding=True, common_subexpression=False,
                               pruning=True, fusion=False)
    results, names = {}, {}
    for label, opts in [("off", off), ("on", only)]:
        with mf.Session(graph=g, config=mf.ConfigProto(graph_options=opts)) as s:
            s.run(mf.global_variables_initializer())
            results[label] = s.run(fetches, {x: xv})
            plan = s.plan_for(fetches, {x: None})
            stats = plan.pass_stats
            names[label] = {n[0] for n in plan.snapshots["optimized"].nodes}
    name = STATS_NAME.get(option, option)
    if option in PASSES:
        assert stats.changes.get(name, 0) > 0, f"{option} changed nothing"
    if option in ("pruning", "all"):  # the folded product's operands are gone
        assert not {"two", "one_and_a_half"} & names["on"], names["on"]
    if option == "pruning":
        assert {"two", "one_and_a_half"} <= names["off"]  # dead, but kept without pruning
    if option in ("common_subexpression", "fusion", "all"):
        assert stats.nodes_after < stats.nodes_before
    for a, b in zip(results["off"], results["on"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_cse_never_merges_variable_reads_across_an_assign():
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.float32(1.0))
        before = v.read_value()
        with mf.control_dependencies([v.assign_add(10.0)]):
            after = v.read_value()  # same op, same input: only the control edge differs
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        assert s.run(after) == 11.0
        b, a = s.run([before, after])
        reads = [n for n in s.plan_for([before, after]).snapshots["optimized"].nodes
                 if n[1] == "ReadVariable"]
    assert a == 21.0 and len(reads) == 2


def test_cse_keeps_identical_stateful_ops_apart():
    g = mf.Graph()
    with g.as_default():
        a = mf.Variable(np.float32(1.0), name="a")
        b = mf.Variable(np.float32(1.0), name="b")  # same initial value, different state
        upd = a.assign_add(1.0)
        s_ = a + b
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        s.run(upd)
        assert s.run(s_) == 3.0
        stats = s.plan_for(s_).pass_stats
        assert stats.changes.get("cse", 0) == 0


def test_cse_never_merges_two_placeholders_of_the_same_type_and_shape():
    """Two placeholders look alike (same op, dtype, shape, no inputs) but are fed apart:
    merged, one feed would answer for both. optimizer_cse.cc skips them; ours reach the
    passes as ``_Arg`` nodes (``cse.NEVER``, and each names its own feed index), and an
    unfed one is refused before any pass runs."""
    g = mf.Graph()
    with g.as_default():
        p = mf.placeholder(mf.float32, [2])
        q = mf.placeholder(mf.float32, [2])
        d = p - q
        e = mf.tanh(p) - mf.tanh(p)  # a real duplicate beside them, which CSE does merge
    with mf.Session(graph=g) as s:
        got = s.run([d, e], {p: np.array([3.0, 1.0], np.float32),
                             q: np.array([1.0, 1.0], np.float32)})
        np.testing.assert_array_equal(got[0], [2.0, 0.0])
        np.testing.assert_array_equal(got[1], [0.0, 0.0])
        assert s.plan_for([d, e], {p: np.zeros(2, np.float32),
                                   q: np.zeros(2, np.float32)}).pass_stats.changes["cse"] == 1
    with mf.Session(graph=g) as s:  # unfed, they are still two placeholders, two errors
        with pytest.raises(mf.errors.InvalidArgumentError, match="must feed a value"):
            s.run(d, {p: np.zeros(2, np.float32)})


def test_folding_respects_the_size_cap():
    g = mf.Graph()
    with g.as_default():
        big = mf.reduce_sum(mf.constant(np.ones((100, 100), np.float32)) * 2.0, axis=0)
    for cap, folded in [(10 << 20, True), (100, False)]:
        cfg = mf.ConfigProto(graph_options=mf.GraphOptions(max_constant_bytes=cap))
        with mf.Session(graph=g, config=cfg) as s:
            np.testing.assert_array_equal(s.run(big), np.full(100, 200.0))
            plan = s.plan_for(big)
            types = [n[1] for n in plan.snapshots["optimized"].nodes]
            # with the cap, the 40 KB product may not become a constant
            assert (types == ["Const"]) == folded, types


def test_an_op_under_a_control_dependency_folds_and_keeps_the_dependency():
    # Adam's beta1_power update multiplies by cast(beta1) under a control dependency on
    # the variables' updates: the cast must fold (Grappler's FoldNode), and the constant
    # it becomes must still wait for what the cast waited for
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2])
        v = mf.Variable(np.float32(0.0), name="v")
        bump = v.assign_add(1.0)
        with mf.control_dependencies([bump]):
            k = mf.cast(mf.constant(2.0, mf.float64), mf.float32)
        y = x * k
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        for _ in range(3):
            np.testing.assert_array_equal(s.run(y, {x: np.ones(2, np.float32)}), [2.0, 2.0])
        assert s.run(v) == 3.0  # each step still ran the assignment
        nodes = s.plan_for(y, {x: None}).snapshots["optimized"].nodes
    assert "Cast" not in [n[1] for n in nodes]
    folded = next(n for n in nodes if n[1] == "Const" and n[0].startswith("Cast"))
    assert [c for c in folded[3] if "AssignAdd" in c], folded



@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_chain_of_folds_keeps_the_control_dependency_of_its_first_constant(backend):
    # cast(c) under a control dependency folds to a Const that waits for the assignment;
    # folding t * 3 from it must inherit that wait, or the assignment is pruned away
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.float32(0.0), name="v")
        inc = v.assign_add(1.0)
        c = mf.constant(np.int32(2))
        with mf.control_dependencies([inc]):
            t = mf.cast(c, mf.float32)
        u = t * 3.0
        with mf.control_dependencies([inc]):  # a user's constant with a dependency
            k = mf.constant(np.float32(5.0))
        w = k * 2.0
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        s.run(v.initializer)
        for _ in range(3):
            assert s.run(u) == 6.0
        assert s.run(v) == 3.0
        assert s.run(w) == 10.0
        assert s.run(v) == 4.0


def test_fusion_turns_an_elementwise_chain_into_one_node():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 8])
        y = mf.sigmoid(mf.tanh(x * 2.0 + 1.0) - 0.5) * x
    xv = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with mf.Session(graph=g) as s:
        got = s.run(y, {x: xv})
        types = [n[1] for n in s.plan_for(y, {x: None}).snapshots["optimized"].nodes]
    assert types.count("_FusedElementwise") == 1
    assert not {"Tanh", "Sigmoid", "Mul", "Add", "Sub"} & set(types)
    want = 1 / (1 + np.exp(-(np.tanh(xv * 2 + 1) - 0.5))) * xv
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_failing_op_inside_a_fused_chain_is_named_with_its_own_line(backend):
    g = mf.Graph()
    with g.as_default():
        a, b, c = (mf.placeholder(mf.float32, [None]) for _ in range(3))
        s1 = a + b  # the op that fails: shapes (2,) and (3,)
        out = mf.tanh(s1 * c)
    feeds = {a: np.ones(2), b: np.ones(3), c: np.ones(2)}
    msgs = {}
    for fusion in (True, False):
        cfg = mf.ConfigProto(cpu_backend=backend, graph_options=mf.GraphOptions(fusion=fusion))
        with mf.Session(graph=g, config=cfg) as s:
            with pytest.raises(mf.InvalidArgumentError) as e:
                s.run(out, feeds)
            types = [n[1] for n in s.plan_for(out, feeds).snapshots["optimized"].nodes]
        assert ("_FusedElementwise" in types) == fusion
        assert e.value.op is s1.op
        msgs[fusion] = str(e.value)
    assert msgs[True] == msgs[False]
    assert "'add' of type Add" in msgs[True] and "(2,), (3,)" in msgs[True]
    assert s1.op.created_at in msgs[True] and "test_passes.py:" in s1.op.created_at


def test_fusion_does_not_swallow_a_fetched_or_shared_intermediate():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        a = mf.tanh(x)
        b = a * 2.0
        c = a + 1.0  # a has two consumers: it must stay a node of its own
    with mf.Session(graph=g) as s:
        av, bv, cv = s.run([a, b, c], {x: np.ones(3)})
        types = [n[1] for n in s.plan_for([a, b, c], {x: None}).snapshots["optimized"].nodes]
    assert "Tanh" in types
    np.testing.assert_allclose(bv, 2 * np.tanh(1.0) * np.ones(3), rtol=1e-6)
    np.testing.assert_allclose(cv, av + 1, rtol=1e-6)


def test_passes_shrink_a_graph_with_duplicated_subgraphs_by_a_third():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 4])
        w = mf.constant(np.ones((4, 4), np.float32))
        outs = [mf.nn.relu(x @ w + 1.0) * 0.5 for _ in range(4)]  # four copies of one block
        y = mf.add_n(outs)
    with mf.Session(graph=g) as s:
        s.run(y, {x: np.ones((2, 4))})
        st = s.plan_for(y, {x: None}).pass_stats
    assert st.nodes_after <= 0.67 * st.nodes_before, st


def test_the_passes_stop_at_a_fixed_point():
    """Re-running a pass only when another pass may have given it work (passes.ENABLES)
    must still end where running every pass to exhaustion would: no pass finds more."""
    from systems.miniflow.ir import build
    from systems.miniflow.passes import run_passes
    from systems.miniflow.passes.cse import eliminate_common_subexpressions
    from systems.miniflow.passes.folding import fold_constants

    g, x, fetches = _model()
    with g.as_default():  # folding that creates duplicates, and dead ends to prune
        twice = [mf.constant(3.0) * mf.constant(2.0) + x for _ in range(2)]
        fetches = fetches + [twice[0] * twice[1]]
    pg = build(fetches, [], [x])
    stats = run_passes(pg, fusion=False)
    assert stats.changes["constant_folding"] and stats.changes["cse"]
    assert stats.changes["pruning"] > 0
    assert fold_constants(pg, 10 << 20) == 0
    assert eliminate_common_subexpressions(pg) == 0
    assert pg.prune() == 0
    # and pruning did reach its fixed point: every node left is needed by a fetch
    # (walked here independently of PlanGraph.prune), the folded operands included
    needed, stack = set(), [n for n, _ in pg.fetches] + list(pg.targets)
    while stack:
        n = stack.pop()
        if id(n) not in needed:
            needed.add(id(n))
            stack.extend([p for p, _ in n.inputs] + list(n.control_inputs))
    assert [n.name for n in pg.nodes if id(n) not in needed] == []
    assert not {"two", "one_and_a_half"} & {n.name for n in pg.nodes}


def test_pruning_removes_what_folding_and_cse_leave_dead():
    """Folding replaces a*b by a constant, leaving a and b read by nothing; CSE then merges
    the two equal folded constants and the two equal sums. Pruning must drop the dead
    operands, and only them: the results stay those of the unoptimized graph."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3], name="x")
        k1 = mf.constant(3.0, name="a") * mf.constant(2.0, name="b")
        k2 = mf.constant(1.5, name="c") * mf.constant(4.0, name="d")  # same value as k1
        y = (x + k1) * (x + k2)
    xv = np.array([-1.0, 0.5, 2.0], np.float32)
    dead = {"a", "b", "c", "d"}
    got, names, changes = {}, {}, {}
    for pruning in (False, True):
        opts = mf.GraphOptions(constant_folding=True, common_subexpression=True,
                               pruning=pruning, fusion=False)
        with mf.Session(graph=g, config=mf.ConfigProto(graph_options=opts)) as s:
            got[pruning] = s.run(y, {x: xv})
            plan = s.plan_for(y, {x: None})
        names[pruning] = [n[0] for n in plan.snapshots["optimized"].nodes]
        changes[pruning] = plan.pass_stats.changes
    assert changes[True]["constant_folding"] == 2 and changes[True]["cse"] >= 2
    assert changes[True]["pruning"] == len(dead)
    assert dead <= set(names[False])  # left behind by folding...
    assert not dead & set(names[True])  # ...and removed by pruning
    assert sorted(names[True]) == sorted(set(names[False]) - dead)  # nothing else removed
    with mf.Session(graph=g, config=mf.ConfigProto(graph_options=ALL_OFF)) as s:
        unoptimized = s.run(y, {x: xv})
    np.testing.assert_array_equal(got[True], unoptimized)
    np.testing.assert_array_equal(got[False], unoptimized)
    np.testing.assert_allclose(unoptimized, (xv + 6) ** 2, rtol=1e-6)


def test_fusion_keeps_a_fetched_intermediate_with_one_consumer():
    """a = tanh(x) feeds only b, but is fetched too: it must not vanish into b's chain."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        a = mf.tanh(x)
        b = a * 2.0
    xv = np.array([0.1, -0.5, 2.0], np.float32)
    with mf.Session(graph=g) as s:
        av, bv = s.run([a, b], {x: xv})
    np.testing.assert_allclose(av, np.tanh(xv), rtol=1e-6)
    np.testing.assert_allclose(bv, 2 * np.tanh(xv), rtol=1e-6)


def test_fusion_keeps_the_control_dependency_of_an_inner_member():
    """An inner member of a fused chain runs after its control input (an assign): the
    fused node must inherit that edge, or the assign is pruned and never runs."""
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.float32(1.0))
        x = mf.placeholder(mf.float32, [3])
        bump = v.assign(np.float32(5.0))
        with mf.control_dependencies([bump]):
            a = mf.tanh(x)
        b = mf.sigmoid(a * 2.0)
        init = mf.global_variables_initializer()
    with mf.Session(graph=g) as s:
        s.run(init)
        s.run(b, {x: np.ones(3, np.float32)})
        assert "_FusedElementwise" in _fused(s, b, {x: None})
        assert s.run(v) == 5.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_control_dependency_on_the_root_of_a_fused_chain_waits_for_the_fused_node(
        backend):
    """The reverse of the test above: an op waits for the last member of a chain that
    fusion collapses. Its control edge must move to the fused node (PlanGraph.forward
    follows moved nodes for control inputs as for data inputs); left pointing at the Tanh,
    which is no longer in the plan, placement would fail with a bare KeyError."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        v = mf.Variable(np.zeros(3, np.float32))
        r = mf.tanh(x * 2.0 + 1.0)
        with mf.control_dependencies([r.op]):
            upd = v.assign_add(mf.ones_like(x))
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        s.run(v.initializer)
        for _ in range(2):
            s.run(upd, {x: np.ones(3, np.float32)})
        np.testing.assert_array_equal(s.run(v), [2.0, 2.0, 2.0])
        nodes = {n[0]: n for n in s.plan_for(upd, {x: None}).snapshots["optimized"].nodes}
    fused = [name for name, n in nodes.items() if n[1] == "_FusedElementwise"]
    assert len(fused) == 1 and "Tanh" not in {n[1] for n in nodes.values()}
    assign = next(n for n in nodes.values() if n[1] == "AssignAdd")
    assert fused[0] in assign[3]


def test_a_fused_comparison_does_not_write_into_a_float_intermediate():
    """greater(tanh(x), 0) is bool; fused in place into tanh's float buffer it would come
    back as float 0/1 and logical_not would be a float op."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [4])
        y = mf.logical_not(mf.greater(mf.tanh(x), 0.0))
    xv = np.array([-1.0, 0.5, 2.0, -0.1], np.float32)
    with mf.Session(graph=g) as s:
        got = s.run(y, {x: xv})
        assert "_FusedElementwise" in _fused(s, y, {x: None})
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, ~(np.tanh(xv) > 0))


def _fused(s, fetches, feeds):
    return [n[1] for n in s.plan_for(fetches, feeds).snapshots["optimized"].nodes]


def test_cse_keeps_a_stateless_op_under_a_control_dependency_apart():
    """tanh(r) and, under a control dependency on an assignment, tanh(r) again: merged,
    the second's control edge would go, and with it (pruned) the assignment."""
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.float32(1.0), name="v")
        x = mf.placeholder(mf.float32, [2], name="x")
        before = mf.tanh(x)
        with mf.control_dependencies([v.assign_add(10.0)]):
            after = mf.tanh(x)
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        b, a = s.run([before, after], {x: np.array([0.5, 1.0], np.float32)})
        np.testing.assert_allclose(a, b)
        assert s.run(v) == 11.0  # the assignment ran


def test_cse_does_not_merge_copies_of_an_op_placed_on_two_devices():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3], name="x")
        with mf.device("/cpu:0"):
            a = mf.tanh(x, name="a")
        with mf.device("/cpu:1"):
            b = mf.tanh(x, name="b")
        y = a + b
    with mf.Session(graph=g, config=mf.ConfigProto(device_count={"CPU": 2})) as s:
        np.testing.assert_allclose(s.run(y, {x: np.ones(3)}), 2 * np.tanh(np.ones(3)),
                                   rtol=1e-6)
        nodes = s.plan_for(y, {x: None}).snapshots["partitioned"].nodes
    assert sorted(n[4] for n in nodes if n[1] == "Tanh") == ["/cpu:0", "/cpu:1"]


def test_no_pass_changes_the_shape_a_broadcast_gives():
    """`x * 1.0` is `x` only when the 1.0 does not broadcast x to a bigger shape: with
    x of shape (3,) and ones of shape (2, 3) the product is (2, 3). A pass that drops
    such a product by value alone (exercise 2 warns of it) makes tanh's output (3,)
    while its static shape says (2, 3). Checked with every pass on, and each alone."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        z = mf.placeholder(mf.float32, [None, 3])
        y1 = mf.tanh(x * mf.constant(np.ones((2, 3), np.float32)))
        y2 = mf.tanh(mf.constant(np.zeros((4, 1), np.float32)) + z)
    feed = {x: np.arange(3, dtype=np.float32), z: np.ones((1, 3), np.float32)}
    for opts in [mf.GraphOptions()] + [mf.GraphOptions(**{p: p == q for p in PASSES})
                                       for q in PASSES]:
        with mf.Session(graph=g, config=mf.ConfigProto(graph_options=opts)) as s:
            a, b = s.run([y1, y2], feed)
        assert a.shape == (2, 3) and b.shape == (4, 3), opts
        np.testing.assert_allclose(a, np.tanh(np.tile(np.arange(3.0), (2, 1))), rtol=1e-6)


def test_cse_keeps_ops_whose_float_attributes_differ_only_in_the_sign_of_zero():
    """0.0 == -0.0 in Python, and they hash alike, so CSE merged one_hot(off_value=0.0)
    with one_hot(off_value=-0.0): 1/b was +inf with the passes on, -inf with them off."""
    g = mf.Graph()
    with g.as_default():
        i = mf.placeholder(mf.int32, [2])
        a = mf.one_hot(i, 3, off_value=0.0)
        b = mf.one_hot(i, 3, off_value=-0.0)
        fetches = [1.0 / a, 1.0 / b]
    got = {}
    for label, opts in (("off", ALL_OFF), ("on", mf.GraphOptions())):
        with mf.Session(graph=g, config=mf.ConfigProto(graph_options=opts)) as s:
            got[label] = s.run(fetches, {i: [0, 1]})
    assert np.isneginf(got["off"][1][0, 1])
    for x, y in zip(got["off"], got["on"], strict=True):
        np.testing.assert_array_equal(x, y)


def test_cse_keeps_apart_identical_ops_that_read_different_outputs_of_one_node():
    """concat's gradient with unknown static shapes is one SplitByShapes node with two
    outputs, and the gradients of -a and -b are Neg(split:0) and Neg(split:1): the same
    op on the same node. Merged, d/db came out as d/da with the passes on."""
    g = mf.Graph()
    with g.as_default():
        a = mf.placeholder(mf.float32, [None])
        b = mf.placeholder(mf.float32, [None])
        w = mf.placeholder(mf.float32, [4])
        loss = mf.reduce_sum(mf.concat([-a, -b], 0) * w)
        ga, gb = mf.gradients(loss, [a, b])
    wv = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    feed = {a: np.zeros(2, np.float32), b: np.zeros(2, np.float32), w: wv}
    for opts in (ALL_OFF, mf.GraphOptions(), mf.GraphOptions(fusion=False)):
        with mf.Session(graph=g, config=mf.ConfigProto(graph_options=opts)) as s:
            got_a, got_b = s.run([ga, gb], feed)
        np.testing.assert_array_equal(got_a, -wv[:2])  # d(-a . w[:2])/da
        np.testing.assert_array_equal(got_b, -wv[2:])
