"""The executor: same results with 1 or N threads, learned costs, memory freed after the
last consumer, step stats."""

import numpy as np
import pytest

import systems.miniflow as mf
from systems.miniflow.executor import EXPENSIVE_NS


def _branches(n_branches=6, depth=3, size=96):
    g = mf.Graph()
    rng = np.random.default_rng(0)
    with g.as_default():
        x = mf.placeholder(mf.float32, [size, size])
        outs = []
        for b in range(n_branches):
            h = x
            for d in range(depth):
                w = mf.constant(rng.standard_normal((size, size)).astype(np.float32) * 0.1)
                h = mf.tanh(h @ w, name=f"b{b}_d{d}")
            outs.append(h)
        y = mf.add_n(outs)
    return g, x, y, rng.standard_normal((size, size)).astype(np.float32)


def test_results_are_identical_with_one_or_four_inter_op_threads():
    """Bit-identical, and the four-thread runs really used the pool (size 256: the
    matmuls are expensive enough to be handed off, see the next test)."""
    g, x, y, xv = _branches(size=256)
    results, threads_seen = [], set()
    for threads in (1, 4):
        cfg = mf.ConfigProto(inter_op_parallelism_threads=threads)
        with mf.Session(graph=g, config=cfg) as s:
            for _ in range(3):  # untraced: one thread runs the inline loop, four the pool
                results.append(s.run(y, {x: xv}))
            if threads == 4:  # a traced run to see where the nodes went
                md = mf.RunMetadata()
                results.append(s.run(y, {x: xv}, run_metadata=md, options=mf.RunOptions(
                    trace_level=mf.RunOptions.FULL_TRACE)))
                threads_seen = {st.thread for st in md.step_stats}
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert any("inter-op pool" in t for t in threads_seen)
    # each named after the pool thread that ran it (they were all named after the
    # driver, so the trace stacked overlapping spans on one row)
    assert all(t.startswith("inter-op pool (inter-op_") for t in threads_seen if "pool" in t)


def test_expensive_nodes_go_to_the_pool_and_cheap_ones_run_inline():
    g, x, y, xv = _branches(size=256)
    with g.as_default():
        flat = mf.reshape(y, [-1])  # a view: marked never worth a hand-off
    cfg = mf.ConfigProto(inter_op_parallelism_threads=4)
    with mf.Session(graph=g, config=cfg) as s:
        md = mf.RunMetadata()
        s.run(flat, {x: xv}, options=mf.RunOptions(trace_level=mf.RunOptions.FULL_TRACE),
              run_metadata=md)
    by_op = {}
    for st in md.step_stats:
        by_op.setdefault(st.op, set()).add("pool" if "inter-op pool" in st.thread else "inline")
    assert "pool" in by_op["MatMul"]  # 256^3 multiply-adds, 6 branches ready at once
    assert by_op["Reshape"] == {"inline"}
    assert all(st.end_us >= st.start_us for st in md.step_stats)


def test_an_expensive_node_with_nothing_to_overlap_runs_on_the_driver():
    """TF's ScheduleReady keeps the last expensive node for its own thread when it has
    nothing else to run: in a chain no other node is ready or running, so a hand-off
    would overlap with nothing."""
    g, x, y, xv = _branches(n_branches=1, depth=4, size=256)
    cfg = mf.ConfigProto(inter_op_parallelism_threads=4)
    with mf.Session(graph=g, config=cfg) as s:
        s.run(y, {x: xv})
        ex = s.plan_for(y, {x: None}).executors[0]
        k = next(i for i, n in enumerate(ex.nodes) if n.type == "MatMul")
        ex.cost_ns[k] = before = 10_000 * EXPENSIVE_NS  # 0.3 s: above any measured run
        ex.n_expensive = sum(map(ex.is_expensive, range(len(ex.nodes))))
        md = mf.RunMetadata()
        out = s.run(y, {x: xv}, options=mf.RunOptions(trace_level=mf.RunOptions.FULL_TRACE),
                    run_metadata=md)
    assert not any("inter-op pool" in st.thread for st in md.step_stats)
    assert ex.cost_ns[k] < before  # still measured, as an expensive node is in TF
    np.testing.assert_array_equal(out, _serial(g, x, y, xv))


def _serial(g, x, y, xv):
    with mf.Session(graph=g, config=mf.ConfigProto(inter_op_parallelism_threads=1)) as s:
        return s.run(y, {x: xv})


def test_cost_estimates_are_learned_and_move_nodes_inline():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [8, 8])
        y = mf.tanh(x @ mf.constant(np.eye(8, dtype=np.float32)))
    cfg = mf.ConfigProto(inter_op_parallelism_threads=2,
                         graph_options=mf.GraphOptions(fusion=False))
    with mf.Session(graph=g, config=cfg) as s:
        s.run(y, {x: np.ones((8, 8))})
        ex = s.plan_for(y, {x: None}).executors[0]
        k = next(i for i, n in enumerate(ex.nodes) if n.type == "MatMul")
        ex.cost_ns[k] = 10 * EXPENSIVE_NS  # pretend the first guess was far too high
        ex.n_expensive = sum(map(ex.is_expensive, range(len(ex.nodes))))
        seen = [ex.cost_ns[k]]
        for _ in range(60):
            s.run(y, {x: np.ones((8, 8))})
            seen.append(ex.cost_ns[k])
            if not ex.is_expensive(k):
                break
    assert not ex.is_expensive(k), seen[-5:]
    assert all(b < a for a, b in zip(seen, seen[1:], strict=False))  # decaying average
    assert ex.n_expensive == 0  # the whole step now runs inline


def test_intermediates_are_freed_after_their_last_consumer():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [1000])
        h = x
        for i in range(100):
            h = mf.tanh(h) if i % 2 else h * 1.01
    cfg = mf.ConfigProto(graph_options=mf.GraphOptions(fusion=False))
    layer = 1000 * 4
    with mf.Session(graph=g, config=cfg) as s:
        md = mf.RunMetadata()
        s.run(h, {x: np.ones(1000)}, run_metadata=md)
    # at any moment: the layer being computed and the one it reads (plus small constants);
    # no fewer: the fed first layer counted as freed without ever being counted live
    assert 2 * layer <= md.peak_live_bytes["/cpu:0"] <= 2 * layer + 1000, md.peak_live_bytes


def test_a_node_that_reads_one_tensor_twice_waits_for_it_once_and_frees_it():
    """``y * y`` has two input edges from one producer and slot. Counted per edge, the
    node waited for a second producer that never came (the step returned None for it)
    or its input was never freed (every layer stayed live)."""
    xv = np.linspace(-1.0, 1.0, 1000).astype(np.float32)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [1000])
        y = mf.tanh(x)
        z = y * y
        h, want = x, xv
        for i in range(100):
            h = mf.tanh(h) if i % 2 else h * h
            want = np.tanh(want) if i % 2 else want * want
    with mf.Session(graph=g, config=mf.ConfigProto(graph_options=mf.GraphOptions.all_off())
                    ) as s:
        got = s.run(z, {x: xv})
    assert got is not None
    np.testing.assert_allclose(got, np.tanh(xv) ** 2, rtol=1e-6)
    cfg = mf.ConfigProto(graph_options=mf.GraphOptions(fusion=False))
    layer = 1000 * 4
    with mf.Session(graph=g, config=cfg) as s:
        md = mf.RunMetadata()
        got = s.run(h, {x: xv}, run_metadata=md)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert 2 * layer <= md.peak_live_bytes["/cpu:0"] <= 2 * layer + 1000, md.peak_live_bytes


def test_step_stats_cover_every_node_once():
    g, x, y, xv = _branches(2, 2, 16)
    with mf.Session(graph=g) as s:
        md = mf.RunMetadata()
        s.run(y, {x: xv}, options=mf.RunOptions(trace_level=mf.RunOptions.FULL_TRACE),
              run_metadata=md)
        plan = s.plan_for(y, {x: None})
    names = [st.name for st in md.step_stats]
    # fed arguments, constants and variable handles are materialised once per plan
    expected = [n.name for e in plan.executors for n in e.nodes
                if n.type not in ("_Arg", "Const", "VariableV2")]
    assert sorted(names) == sorted(expected)
    assert md.pass_stats is plan.pass_stats and md.devices == ["/cpu:0"]


def test_intra_op_threads_set_the_kernels_own_thread_pools():
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    before_torch = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores the BLAS pools when the test ends
        g = mf.Graph()
        with g.as_default():
            y = mf.constant(np.ones((2, 2), np.float32)) @ mf.constant(np.eye(2,
                                                                             dtype=np.float32))
        with mf.Session(graph=g, config=mf.ConfigProto(intra_op_parallelism_threads=1)) as s:
            np.testing.assert_array_equal(s.run(y), np.ones((2, 2)))
            blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            assert blas and all(n == 1 for n in blas)
            assert torch.get_num_threads() == 1
    torch.set_num_threads(before_torch)


@pytest.mark.parametrize("how", ["run_metadata", "trace", "expensive"])
def test_a_kernel_error_on_the_driver_loop_names_the_op_on_one_device(how):
    """The driver loop (stats, traces, or expensive nodes on a pool) runs even on one
    device, where the step has no rendezvous to abort: the error must still be the op's."""
    g = mf.Graph()
    with g.as_default():
        y = mf.placeholder(mf.float32, [None, None])
        big = mf.placeholder(mf.float32, [256, 256])
        r = mf.reshape(y, [4])  # fails at run time: 6 elements
        z = mf.reduce_sum(r) + mf.reduce_sum(big @ big) + mf.reduce_sum(big @ big * 2.0)
    feeds = {y: np.zeros((2, 3)), big: np.ones((256, 256))}
    kwargs = {"run_metadata": mf.RunMetadata()} if how == "run_metadata" else \
        {"options": mf.RunOptions(trace_level=mf.RunOptions.FULL_TRACE)} if how == "trace" \
        else {}
    cfg = mf.ConfigProto(inter_op_parallelism_threads=4, device_count={"GPU": 0})
    with mf.Session(graph=g, config=cfg) as s:
        with pytest.raises(mf.InvalidArgumentError) as e:
            s.run(z, feeds, **kwargs)
    msg = str(e.value)
    assert "'Reshape'" in msg and "(2, 3)" in msg and "test_executor.py:" in msg


def test_no_kernel_on_a_gpu_is_expensive():
    """TF's OpKernel constructor sets expensive_ only off the GPU (framework/op_kernel.cc):
    a GPU kernel only enqueues work, so a hand-off to the pool would overlap nothing."""
    from systems.miniflow.backend_torch import torch_backend
    from systems.miniflow.executor import Executor
    from systems.miniflow.ir import Node

    def nodes():
        c = Node("c", "Const", [], [], {"value": np.ones((2, 2), np.float32)},
                 [(mf.float32, (2, 2))])
        mm = Node("mm", "MatMul", [(c, 0), (c, 0)], [], {"transpose_a": False,
                                                          "transpose_b": False},
                  [(mf.float32, (2, 2))], est_seconds=1.0)  # as slow as it gets
        return [c, mm], mm

    for device, n_expensive in (("/cpu:0", 1), ("/gpu:0", 0)):
        ns, mm = nodes()
        ex = Executor(ns, device, torch_backend("cpu"), None, [(mm, 0)])
        assert ex.n_expensive == n_expensive, device


def test_a_constant_under_a_control_dependency_waits_for_it():
    """bump -> (control) c = constant -> (control) read: the read sees the bump. A Const
    that carries control inputs must not be precomputed into the step's template (the
    partitioner's cross-device control dummies are such Consts)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        v = mf.Variable(np.float32(0.0))
        bump = v.assign_add(mf.reduce_sum(mf.tanh(x) * 0.0 + 1.0))  # += 3, after a chain
        with mf.control_dependencies([bump]):
            c = mf.constant(np.float32(1.0))
        with mf.control_dependencies([c]):
            r = v.read_value()
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        assert s.run(r, {x: np.ones(3, np.float32)}) == 3.0


def test_a_fetched_intermediate_survives_the_driver_loop():
    """With step stats the driver loop runs; a fetched tensor that another op also reads
    must not be freed after that reader (same result as the inline loop)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [4])
        a = mf.tanh(x)
        b = a * 2.0
    xv = np.arange(4, dtype=np.float32)
    cfg = mf.ConfigProto(graph_options=mf.GraphOptions(fusion=False))
    with mf.Session(graph=g, config=cfg) as s:
        md = mf.RunMetadata()
        av, bv = s.run([a, b], {x: xv},
                       options=mf.RunOptions(trace_level=mf.RunOptions.FULL_TRACE),
                       run_metadata=md)
    np.testing.assert_allclose(av, np.tanh(xv), rtol=1e-6)
    np.testing.assert_allclose(bv, 2 * np.tanh(xv), rtol=1e-6)


def test_the_cost_estimate_decays_by_tensorflows_factor_of_ten(monkeypatch):
    """new = (9 * old + measured) / 10 (TF's kCostDecay): with the measured time bounded by
    a few ms, one update from 100 ms must land in [90 ms, 90 ms + 1 ms]."""
    from systems.miniflow.executor import EXPENSIVE_NS

    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [8, 8])
        y = mf.tanh(x @ mf.constant(np.eye(8, dtype=np.float32)))
        z = mf.sigmoid(x @ mf.constant(np.eye(8, dtype=np.float32)))
    cfg = mf.ConfigProto(inter_op_parallelism_threads=2,
                         graph_options=mf.GraphOptions(fusion=False))
    with mf.Session(graph=g, config=cfg) as s:
        s.run([y, z], {x: np.ones((8, 8))})
        ex = s.plan_for([y, z], {x: None}).executors[0]
        ks = [i for i, n in enumerate(ex.nodes) if n.type == "MatMul"]
        for k in ks:
            ex.cost_ns[k] = 100e6
        ex.n_expensive = sum(map(ex.is_expensive, range(len(ex.nodes))))
        assert ex.n_expensive and 100e6 > EXPENSIVE_NS
        s.run([y, z], {x: np.ones((8, 8))})
        for k in ks:
            assert 90e6 <= ex.cost_ns[k] <= 91e6, ex.cost_ns[k]


def _define_once(name, kernel):
    from systems.miniflow.op_def import OP_DEFS, OpDef, define

    if name not in OP_DEFS:
        define(OpDef(name, lambda ins, a: [(ins[0].dtype, ins[0].shape)],
                     lambda a, be, res: kernel, stateful=True))


def test_a_failed_step_returns_only_after_the_work_it_handed_to_the_pool():
    """A node failing on the driver raised at once while an expensive node (a variable
    update, say) still ran on the pool: its write landed after run() had raised, over
    what the user did next (a Variable.load to roll back, a restore)."""
    import threading
    import time

    from systems.miniflow.op_def import make_op

    log, busy = [], threading.Event()

    def slow_write(x):
        busy.set()
        time.sleep(0.3)
        log.append("written")
        return x
    _define_once("TestSlowWrite", slow_write)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        d = mf.placeholder(mf.int32, [2])
        written = make_op("TestSlowWrite", [x]).outputs[0]
        bad = mf.constant([4, 6]) // d
    cfg = mf.ConfigProto(inter_op_parallelism_threads=2)
    with mf.Session(graph=g, config=cfg) as s:
        feed = {x: np.ones(3, np.float32), d: np.array([1, 2], np.int32)}
        s.run([written, bad], feed)
        ex = s.plan_for([written, bad], {x: None, d: None}).executors[0]
        k = next(i for i, n in enumerate(ex.nodes) if n.type == "TestSlowWrite")
        ex.cost_ns[k] = 10_000 * EXPENSIVE_NS  # worth a hand-off
        ex.n_expensive = sum(map(ex.is_expensive, range(len(ex.nodes))))
        log.clear()
        busy.clear()
        with pytest.raises(mf.InvalidArgumentError, match="FloorDiv|ZeroDivision|divi"):
            s.run([written, bad], {**feed, d: np.array([0, 2], np.int32)})
        assert busy.is_set()  # the write did start on the pool (the case at hand)
        assert log == ["written"]  # and had finished when run() raised


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_in_a_kernel_is_ctrl_c_on_the_driver_loop_too(error):
    """The inline loop let a KeyboardInterrupt through; the driver loop (a traced run, a
    pool, several devices) turned it into an InvalidArgumentError, which a loop that
    skips bad batches would swallow."""
    from systems.miniflow.op_def import make_op

    def interrupted(x):
        raise error()
    _define_once(f"TestRaises{error.__name__}", interrupted)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        y = make_op(f"TestRaises{error.__name__}", [x]).outputs[0]
    with mf.Session(graph=g) as s:
        for kw in ({}, {"options": mf.RunOptions(trace_level=mf.RunOptions.FULL_TRACE),
                        "run_metadata": mf.RunMetadata()}):
            with pytest.raises(error):
                s.run(y, {x: np.ones(3, np.float32)}, **kw)
