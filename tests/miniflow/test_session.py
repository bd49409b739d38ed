"""Session.run: nested fetches, pruning to what the fetches need, the plan cache, and the
clear errors for bad feeds."""

import collections
import re

import numpy as np
import pytest

import systems.miniflow as mf


@pytest.fixture
def graph():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 2], name="x")
        y = x * 2.0
        z = mf.reduce_sum(y)
        unused = mf.placeholder(mf.float32, [], name="unused") * 3.0
    return g, x, y, z, unused


def test_nested_fetches_keep_their_structure(graph):
    g, x, y, z, _ = graph
    Pair = collections.namedtuple("Pair", "a b")
    xv = np.ones((3, 2), np.float32)
    with mf.Session(graph=g) as s:
        out = s.run({"y": y, "pair": Pair(z, [y, z]), "op": z.op}, {x: xv})
    assert set(out) == {"y", "pair", "op"} and out["op"] is None
    np.testing.assert_array_equal(out["y"], 2 * xv)
    assert isinstance(out["pair"], Pair) and out["pair"].a == 12.0
    assert out["pair"].b[1] == 12.0 and isinstance(out["pair"].b, list)


def test_pruning_runs_only_what_fetches_need(graph):
    g, x, y, z, unused = graph
    with mf.Session(graph=g) as s:
        s.run(z, {x: np.ones((1, 2))})  # 'unused' is not fed and not needed: no error
        with pytest.raises(mf.InvalidArgumentError, match="must feed a value for placeholder "
                                                          "tensor 'unused'"):
            s.run(unused)


def test_the_plan_is_built_once_per_feeds_fetches_targets(graph):
    g, x, y, z, _ = graph
    with mf.Session(graph=g) as s:
        s.run(z, {x: np.ones((1, 2))})
        p1 = s.plan_for(z, {x: None})
        s.run(z, {x: np.zeros((5, 2))})
        assert s.plan_for(z, {x: None}) is p1
        s.run([z, y], {x: np.ones((1, 2))})
        assert s.plan_for([z, y], {x: None}) is not p1
        assert len(s._plans) == 2


def test_bad_feeds_are_clear_errors(graph):
    g, x, y, z, _ = graph
    other = mf.Graph()
    with other.as_default():
        alien = mf.placeholder(mf.float32, [])
    with mf.Session(graph=g) as s:
        with pytest.raises(ValueError, match="Cannot feed value of shape \\(3,\\) for Tensor "
                                             "'x:0', which has shape '\\(\\?, 2\\)'"):
            s.run(z, {x: np.ones(3)})
        with g.as_default():
            k = mf.placeholder(mf.int32, [], name="k")
            k2 = k * 2
        with pytest.raises(TypeError, match="Cannot feed a value of dtype float64 to tensor "
                                            "'k:0' of dtype int32"):
            s.run(k2, {k: np.float64(2.5)})
        assert s.run(k2, {k: np.int64(3)}) == 6  # same kind: converted
        with pytest.raises(ValueError, match="Cannot feed int64 values to tensor 'k:0' of "
                                             "dtype int32: some are out of its range"):
            s.run(k2, {k: np.int64(2**31)})  # would wrap to -2**31, silently
        # an int fed to a float tensor rounds, as in TF (2**24 + 1 is not a float32)
        np.testing.assert_array_equal(s.run(y, {x: np.array([[2**24 + 1, 0]])}),
                                      [[2**25, 0]])
        np.testing.assert_array_equal(s.run(y, {x: np.ones((1, 2))}), [[2, 2]])  # f64 -> f32
        # a tensor both fed and fetched comes back as fed, as in TF (it used to be refused)
        fed = np.full((1, 2), 7.0, np.float32)
        got_y, got_z = s.run([y, z], {y: fed})
        np.testing.assert_array_equal(got_y, fed)
        assert got_z == 14.0 and got_y is not fed  # a copy, like every fetched array
        assert s.run(y, {y: fed}).dtype == np.float32
        assert s.plan_for([y, z], {y: None}) is not None  # the plan of that run is found
        with pytest.raises(ValueError, match="not an element of this session's graph"):
            s.run(z, {alien: 1.0})
        with pytest.raises(ValueError, match="names nothing in the graph"):
            s.run(z, {"nope:0": 1.0})
        with pytest.raises(TypeError, match="Cannot interpret fetch"):
            s.run(42)
        # after all these refusals, a good run still works
        assert s.run(z, {x: np.ones((2, 2))}) == 8.0


def test_feeding_an_intermediate_tensor_cuts_the_graph(graph):
    g, x, y, z, _ = graph
    with mf.Session(graph=g) as s:  # x is not needed when y is fed
        assert s.run(z, {y: np.full((2, 2), 0.5, np.float32)}) == 2.0


def test_a_constant_a_reshape_read_at_build_time_cannot_be_fed():
    """TF would reshape to the fed shape; ours read the constant into an attribute, so
    the feed was silently ignored. Now it is refused, and a placeholder shape works."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2, 3])
        c = mf.constant([3, 2], dtype=mf.int32, name="shape")
        y = mf.reshape(x, c, name="r")
        p = mf.placeholder(mf.int32, [2])
        z = mf.reshape(x, p)
        other = c + 1  # its other uses may still be computed from it
    with mf.Session(graph=g) as s:
        with pytest.raises(ValueError, match="Cannot feed shape:0: its value was read when r"):
            s.run(y, {x: np.ones((2, 3)), c: [6, 1]})
        assert s.run(z, {x: np.ones((2, 3)), p: [6, 1]}).shape == (6, 1)
        assert s.run(other).tolist() == [4, 3]


def test_uninitialised_variable_and_variable_state_across_runs():
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.float32(1.0), name="counter")
        inc = v.assign_add(1.0)
    with mf.Session(graph=g) as s:
        with pytest.raises(mf.FailedPreconditionError, match="uninitialized value counter"):
            s.run(v)
        s.run(v.initializer)
        for _ in range(3):
            s.run(inc)
        assert s.run(v) == 4.0
    with mf.Session(graph=g) as s2:  # state belongs to a session, not the graph
        s2.run(mf.global_variables_initializer())
        assert s2.run(v) == 1.0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_assign_sub_and_initializing_a_subset_of_variables(backend):
    """mf.assign_sub subtracts in place and returns the new value; variables_initializer
    initializes exactly its list (the rest stay uninitialized) and re-running it resets."""
    g = mf.Graph()
    with g.as_default():
        a = mf.Variable(np.float32(10.0), name="a")
        b = mf.Variable(np.array([1.0, 2.0], np.float32), name="b")
        c = mf.Variable(np.float32(5.0), name="c")
        dec_a = mf.assign_sub(a, 3.0)
        dec_b = mf.assign_sub(b, np.array([0.5, -1.0], np.float32))
        init_ab = mf.variables_initializer([a, b])
        init_none = mf.variables_initializer([])
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        s.run(init_none)
        with pytest.raises(mf.FailedPreconditionError, match="uninitialized value a"):
            s.run(a)
        assert s.run(init_ab) is None
        with pytest.raises(mf.FailedPreconditionError, match="uninitialized value c"):
            s.run(c)
        assert s.run(dec_a) == 7.0 and s.run(dec_a) == 4.0 and s.run(a) == 4.0
        np.testing.assert_array_equal(s.run(dec_b), [0.5, 3.0])
        s.run(init_ab)
        assert s.run(a) == 10.0
        np.testing.assert_array_equal(s.run(b), [1.0, 2.0])


def test_global_and_trainable_variable_collections():
    """Every Variable is global; trainable=False keeps it out of trainable_variables, and
    so out of what minimize() updates by default (TF's global_step pattern). Collections
    belong to the graph that is the default when they are read."""
    g = mf.Graph()
    with g.as_default():
        w = mf.Variable(np.float32(2.0), name="w")
        step = mf.Variable(np.float32(0.0), name="step", trainable=False)
        b = mf.Variable(np.float32(1.0), name="b")
        assert mf.global_variables() == [w, step, b]
        assert mf.trainable_variables() == [w, b]
        loss = w * b + step * step  # trained, step would move by 0.5 * 2 * step
        train = mf.train.GradientDescentOptimizer(0.5).minimize(loss)
        bump = step.assign_add(1.0)
    with mf.Graph().as_default():
        assert mf.global_variables() == [] and mf.trainable_variables() == []
    with mf.Session(graph=g) as s:
        s.run(mf.variables_initializer([w, step, b]))
        s.run(bump)
        s.run(train)
        # d/dw = b = 1, d/db = w = 2; step (trainable=False) keeps the value bump gave it
        assert s.run([w, b, step]) == [1.5, 0.0, 1.0]


def test_a_run_time_error_names_the_op_shapes_and_line():
    g = mf.Graph()
    with g.as_default():
        a = mf.placeholder(mf.float32, [None])
        b = mf.placeholder(mf.float32, [None])
        c = a + b  # shapes agree statically, not at run time
    with mf.Session(graph=g) as s:
        with pytest.raises(mf.InvalidArgumentError) as e:
            s.run(c, {a: np.ones(3), b: np.ones(4)})
    msg = str(e.value)
    assert "'add' of type Add" in msg and "(3,), (4,)" in msg and "test_session.py:" in msg


def test_fetched_arrays_are_copies_that_cannot_corrupt_state():
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.zeros(3, np.float32))
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        got = s.run(v)
        got += 5
        np.testing.assert_array_equal(s.run(v), np.zeros(3))


def test_torch_cpu_backend_gives_the_same_results():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 3])
        y = mf.nn.softmax(mf.tanh(x @ mf.constant(np.eye(3, dtype=np.float32))))
    xv = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    outs = {}
    for backend in ("numpy", "torch"):
        with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
            outs[backend] = s.run(y, {x: xv})
            assert s.plan_for(y, {x: None}).executors[0].backend.name == backend
    np.testing.assert_allclose(outs["numpy"], outs["torch"], rtol=1e-6)


def test_closed_session_refuses_to_run(graph):
    g, x, y, z, _ = graph
    s = mf.Session(graph=g)
    s.close()
    with pytest.raises(RuntimeError, match="closed Session"):
        s.run(z, {x: np.ones((1, 2))})


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_variable_does_not_alias_the_callers_arrays(backend):
    """TF's Assign copies into the variable's own buffer: changing the array that was fed
    (or loaded) after the step must not change the variable."""
    g = mf.Graph()
    with g.as_default():
        w = mf.Variable(np.zeros(3, np.float32), name="w")
        p = mf.placeholder(mf.float32, [3])
        q = mf.placeholder(mf.float32, [1, 3])
        set_w, set_w_view = w.assign(p), w.assign(mf.reshape(q, [3]))
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        s.run(w.initializer)
        a = np.array([1, 2, 3], np.float32)
        s.run(set_w, {p: a})
        a[:] = 99
        np.testing.assert_array_equal(s.run(w), [1, 2, 3])
        b = np.array([[4, 5, 6]], np.float32)
        s.run(set_w_view, {q: b})
        b[:] = 99
        np.testing.assert_array_equal(s.run(w), [4, 5, 6])
        c = np.array([7, 8, 9], np.float32)
        w.load(c, s)
        c[:] = -1
        np.testing.assert_array_equal(s.run(w), [7, 8, 9])


def test_a_mapping_fetch_comes_back_as_the_same_mapping_type():
    g = mf.Graph()
    with g.as_default():
        a, b = mf.constant(1.0), mf.constant(2.0)
    with mf.Session(graph=g) as s:
        got = s.run(collections.OrderedDict([("b", b), ("a", a)]))
    assert type(got) is collections.OrderedDict and list(got.items()) == [("b", 2.0), ("a", 1.0)]


def test_a_defaultdict_fetch_keeps_its_default_factory():
    """TF's session.py (_DictFetchMapper.build_results) rebuilds a defaultdict with its
    default_factory; miniflow calls defaultdict(zip(...)) and raises TypeError."""
    g = mf.Graph()
    with g.as_default():
        a = mf.constant(1.0)
    with mf.Session(graph=g) as s:
        got = s.run(collections.defaultdict(list, {"a": a}))
    assert type(got) is collections.defaultdict and got.default_factory is list
    assert got["a"] == 1.0 and got["missing"] == []


def test_loading_a_value_of_the_wrong_shape_into_a_variable_is_refused():
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.zeros((3, 4), np.float32), name="v")
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        with pytest.raises(ValueError, match=r"v(:0)? has shape \(3, 4\), got \(4, 3\)"):
            v.load(np.ones((4, 3), np.float32), s)
        np.testing.assert_array_equal(s.run(v), np.zeros((3, 4)))


def test_an_empty_fetch_list_returns_its_empty_structure(graph):
    """TF runs nothing and returns [] / {} (session.py: only a run with fetches or targets
    reaches the runtime); it used to raise IndexError while building a plan."""
    g, x, y, z, _ = graph
    with mf.Session(graph=g) as s:
        assert s.run([]) == [] and s.run({}) == {} and s.run({"a": []}) == {"a": []}
        with pytest.raises(ValueError, match="Cannot feed value of shape"):
            s.run([], {x: np.ones(3)})  # the feeds are still checked


def test_fetching_a_variable_by_name_gives_its_value_and_its_reference_is_not_fed():
    """``sess.run(w.name)`` ("w:0", the VariableV2 output) is the value, as in TF1; it used
    to return the handle, the string 'w'. Feeding the reference is refused (it used to be
    ignored); feeding the variable replaces its value() for one step."""
    g = mf.Graph()
    with g.as_default():
        w = mf.Variable(np.arange(3, dtype=np.float32), name="w")
        a = w * 1.0
    with mf.Session(graph=g) as s:
        s.run(w.initializer)
        for fetch in (w.name, g.get_tensor_by_name("w:0"), [w.name]):
            out = s.run(fetch)
            np.testing.assert_array_equal(out[0] if isinstance(fetch, list) else out,
                                          [0, 1, 2])
        with pytest.raises(TypeError, match="Cannot feed w:0, the reference of variable w"):
            s.run(a, {"w:0": np.ones(3, np.float32)})
        np.testing.assert_array_equal(s.run(a, {w: np.ones(3, np.float32)}), [1, 1, 1])
        np.testing.assert_array_equal(s.run(w), [0, 1, 2])  # the feed lasted one step


def test_feed_errors_say_where_the_tensor_was_made_and_refuse_graph_values(graph):
    g, x, y, z, _ = graph
    with mf.Session(graph=g) as s:
        with pytest.raises(ValueError, match=r"shape '\(\?, 2\)' \(created at .*test_session"):
            s.run(z, {x: np.ones((2, 3))})
        with pytest.raises(TypeError, match=r"of dtype float32 \(created at .*test_session"):
            s.run(z, {x: np.array([["a", "b"]])})
        for bad in (y, None):  # used to say "dtype object"
            with pytest.raises(TypeError, match="cannot be .*: feed numbers, lists or numpy"):
                s.run(z, {x: bad})


def test_session_arguments_are_type_checked_with_tf_words(graph):
    g = graph[0]
    with pytest.raises(TypeError, match=r"Did you do \"Session\(config\)\""):
        mf.Session(mf.ConfigProto())
    with pytest.raises(TypeError, match="graph must be a mf.Graph, but got int"):
        mf.Session(graph=3)
    with pytest.raises(TypeError, match="config must be a mf.ConfigProto"):
        mf.Session(graph=g, config={"device_count": {"CPU": 2}})


def test_close_waits_for_the_step_another_thread_is_running():
    """close() used to shut the inter-op pool under a running step, which then died
    with "cannot schedule new futures after shutdown"; now it waits, and later runs are
    refused."""
    import threading
    import time

    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [600, 600], name="x")  # known: matmuls are costly
        branches = []
        for b in range(4):  # four different branches (CSE would merge equal ones)
            h = x
            for _ in range(8):
                h = mf.tanh(mf.matmul(h, x) + float(b))
            branches.append(mf.reduce_sum(h))
        total = mf.add_n(branches)
    xs = np.random.default_rng(0).standard_normal((600, 600)).astype(np.float32) / 30
    config = mf.ConfigProto(inter_op_parallelism_threads=2)
    with mf.Session(graph=g, config=config) as other:
        expected = other.run(total, {x: xs})
    s = mf.Session(graph=g, config=config)  # its first step: matmuls go to the pool
    out, started = {}, threading.Event()

    def step():
        started.set()
        try:
            out["v"] = s.run(total, {x: xs})
        except Exception as e:  # noqa: BLE001 - the test reports whatever ended the step
            out["e"] = e
    t = threading.Thread(target=step)
    t.start()
    started.wait()
    while not s._lock.locked():  # the step holds the session's lock while it runs
        time.sleep(0.001)
    s.close()
    t.join()
    assert "e" not in out, out["e"]
    assert out["v"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(RuntimeError, match="closed Session"):
        s.run(total, {x: xs})


def test_as_default_makes_the_session_the_default_without_closing_it():
    g = mf.Graph()
    with g.as_default():
        c = mf.constant(3.0) * 2.0
    s = mf.Session(graph=g)
    with s.as_default():
        assert mf.get_default_session() is s and mf.get_default_graph() is g
        assert c.eval() == 6.0
    assert mf.get_default_session() is None
    assert s.run(c) == 6.0  # still open
    s.close()


def test_run_eval_and_load_use_the_default_session_and_say_when_there_is_none():
    """TF: ``op.run()``, ``t.eval()`` and ``v.load(x)`` use the default session, and
    without one raise ValueError. ``init.run()`` outside a session used to fail with an
    AttributeError on None, and ``v.load(x)`` required the session argument."""
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(1.0, name="v")
        init, t = mf.global_variables_initializer(), v + 1.0
    for call, what in ((init.run, "Operation.run()"), (t.eval, "Tensor.eval()"),
                       (lambda: v.load(5.0), "Variable.load()")):
        with pytest.raises(ValueError, match=re.escape(what) + " needs a session"):
            call()
    with mf.Session(graph=g) as s:
        init.run()
        v.load(5.0)
        assert t.eval() == 6.0 and s.run(v) == 5.0


@pytest.mark.parametrize("count", [0, -2])
def test_a_session_without_a_cpu_is_refused_when_it_is_made(count):
    """It was made with no device at all: its first run blamed the user's placeholder and
    advised soft placement, which then failed with an IndexError."""
    with pytest.raises(ValueError, match=r"device_count\['CPU'\] must be at least 1"):
        mf.Session(graph=mf.Graph(), config=mf.ConfigProto(device_count={"CPU": count}))
    with mf.Session(graph=mf.Graph(), config=mf.ConfigProto(  # a numpy count is a count
            device_count={"CPU": np.int64(2)})) as s:
        assert s.devices == ["/cpu:0", "/cpu:1"]


@pytest.mark.parametrize("threads", [1, 4])
def test_a_variable_fetched_with_its_update_is_read_after_it(threads):
    """TF1 fetches a ref variable by reference, so ``_, step = sess.run([train,
    global_step])`` returns the step after the train op's increment (TF 2.21's
    ``compat.v1`` did so in 200 runs of 200). Our read was a snapshot the executor took
    before the update, so the idiom was off by one and checkpoints were named one step
    early. Likewise a slot variable fetched beside the train op, and ``[inc, gs]``."""
    g = mf.Graph()
    with g.as_default():
        with mf.device("/cpu:1"):
            gs = mf.Variable(0, name="global_step", trainable=False)
            w = mf.Variable(np.float32(1.0), name="w")
        train = mf.train.AdamOptimizer(0.1).minimize(w * w, global_step=gs)
        inc = mf.assign_add(gs, 1)
        m = g.get_tensor_by_name("w/Adam:0")
    cfg = mf.ConfigProto(inter_op_parallelism_threads=threads, device_count={"CPU": 2})
    with mf.Session(graph=g, config=cfg) as s:
        s.run(mf.global_variables_initializer())
        for step in range(1, 21):
            _, got, wv, mv = s.run([train, gs, w, m])
            assert got == step and wv == s.run(w) and mv == s.run(m)
        assert s.run([inc, gs])[1] == 21
        s.run(w)
        names = {k: [n[0] for n in s.plan_for(f).snapshots["optimized"].nodes]
                 for k, f in (("train", [train, gs, w, m]), ("w", w))}
    assert "w/read/_after_writes" in names["train"]
    assert not any("_after_writes" in n for n in names["w"])  # no writer: one read
