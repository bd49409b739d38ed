"""Building graphs: names, scopes, devices, control dependencies, and build-time errors
that name the op, the shapes and the user's line."""

import inspect
import os

import numpy as np
import pytest

import systems.miniflow as mf


def test_names_are_unique_and_scoped_like_tensorflow():
    g = mf.Graph()
    with g.as_default():
        a = mf.constant(1.0, name="a")
        b = mf.constant(2.0, name="a")
        with mf.name_scope("layer"):
            c = a + b
            with mf.name_scope("inner"):
                d = mf.identity(c, name="out")
        with mf.name_scope("layer"):
            e = mf.identity(c)
        v = mf.Variable(np.zeros(3, np.float32), name="w")
    assert (a.name, b.name) == ("a:0", "a_1:0")
    assert c.name == "layer/add:0" and d.name == "layer/inner/out:0"  # +: add, not Add
    assert e.name == "layer_1/Identity:0"
    assert {op.name for op in g.get_operations()} >= {"w", "w/initial_value", "w/Assign",
                                                      "w/read"}
    assert g.get_tensor_by_name("layer/add:0") is c
    assert v.name == "w:0"
    with pytest.raises(KeyError, match="no operation named 'nope'"):
        g.get_operation_by_name("nope")


def test_device_and_control_dependency_scopes_are_recorded():
    g = mf.Graph()
    with g.as_default():
        a = mf.constant(1.0)
        with mf.device("/device:CPU:1"):
            b = a * 2.0
            with mf.device("gpu:0"):
                c = b + 1.0
        with mf.control_dependencies([b]):
            d = a + 3.0
            with mf.control_dependencies(None):
                e = a + 4.0
    assert b.op.device == "/cpu:1" and c.op.device == "/gpu:0" and a.op.device == ""
    assert d.op.control_inputs == [b.op] and e.op.control_inputs == []
    with pytest.raises(ValueError, match="not understood"):
        with g.as_default(), mf.device("/tpu:0"):
            pass


def test_shape_and_dtype_inference_at_build_time():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 4])
        w = mf.constant(np.ones((4, 3), np.float32))
        y = mf.nn.relu(x @ w + mf.constant(np.zeros(3, np.float32)))
        s = mf.reduce_sum(y, axis=1, keepdims=True)
        r = mf.reshape(y, [-1])
        f = mf.nn.conv2d(mf.placeholder(mf.float32, [2, 8, 8, 1]),
                         mf.constant(np.ones((3, 3, 1, 5), np.float32)), 2, "SAME")
    assert y.shape == (None, 3) and y.dtype == mf.float32
    assert s.shape == (None, 1) and r.shape == (None,)
    assert f.shape == (2, 4, 4, 5)


def test_a_shape_error_names_the_op_both_shapes_and_the_users_line():
    g = mf.Graph()
    with g.as_default():
        a = mf.placeholder(mf.float32, [None, 4], name="a")
        b = mf.placeholder(mf.float32, [3, 5], name="b")
        with pytest.raises(mf.GraphBuildError) as e:
            a @ b  # this line is in the message
    msg = str(e.value)
    assert "MatMul" in msg and "inner dimensions differ: 4 vs 3" in msg
    assert "a:0 has shape (?, 4)" in msg and "b:0 has shape (3, 5)" in msg
    assert "test_graph.py:" in msg


def test_dtype_mismatch_is_refused_without_silent_promotion():
    g = mf.Graph()
    with g.as_default():
        a = mf.constant(np.ones(2, np.float32))
        b = mf.constant(np.ones(2, np.int32))
        with pytest.raises(mf.GraphBuildError, match="same dtype"):
            a + b
        c = a * 2  # a Python number takes the tensor's dtype
    assert c.dtype == mf.float32


def test_every_op_records_where_the_user_created_it():
    """created_at is this file and the line of the call that built the op, also for ops
    built inside miniflow on the user's behalf (a Variable's read, a gradient's ops)."""
    here = os.path.abspath(__file__)
    g = mf.Graph()
    with g.as_default():
        x, x_line = mf.placeholder(mf.float32, [2]), inspect.currentframe().f_lineno
        y, y_line = mf.tanh(x), inspect.currentframe().f_lineno
        v, v_line = mf.Variable(np.ones(2, np.float32)), inspect.currentframe().f_lineno
        loss = mf.reduce_sum(y * v)
        (dx,), dx_line = mf.gradients(loss, [x]), inspect.currentframe().f_lineno
    assert x.op.created_at == f"{here}:{x_line}"
    assert y.op.created_at == f"{here}:{y_line}"
    assert v.value().op.created_at == v.initializer.created_at == f"{here}:{v_line}"
    assert dx.op.created_at == f"{here}:{dx_line}"
    assert len({x_line, y_line, v_line, dx_line}) == 4


def test_numpy_on_the_left_defers_to_tensor_operators():
    """A numpy scalar or array on the left must build the reflected op with the operands
    in order: 2 - x and 2 / x, not x - 2 and x / 2 (a commutative Mul cannot tell)."""
    g = mf.Graph()
    xv = np.array([0.5, -4.0, 8.0], np.float32)
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        ys = [np.float32(2.0) * x, np.float32(2.0) - x, np.float32(2.0) / x,
              np.array([1.0, 2.0, 3.0], np.float32) - x, np.float32(2.0) ** x]
    assert all(isinstance(y, mf.Tensor) and y.dtype == mf.float32 for y in ys)
    assert [y.op.type for y in ys] == ["Mul", "Sub", "RealDiv", "Sub", "Pow"]
    with mf.Session(graph=g) as s:
        got = s.run(ys, {x: xv})
    want = [2 * xv, 2 - xv, 2 / xv, np.array([1, 2, 3], np.float32) - xv, 2 ** xv]
    for v, w in zip(got, want, strict=True):
        np.testing.assert_allclose(v, w, rtol=1e-6)


def test_tensors_and_variables_are_neither_bools_nor_iterable():
    """TF1 graph mode raises TypeError: a tensor has no value until a Session runs it."""
    with mf.Graph().as_default():
        x = mf.placeholder(mf.float32, [None], name="x")
        k = mf.constant(np.zeros((2, 3), np.float32))
        w = mf.Variable(np.zeros(3, np.float32), name="w")
        with pytest.raises(TypeError, match="Greater:0.*as a Python bool"):
            bool(x > 0.0)
        with pytest.raises(TypeError, match="as a Python bool"):
            if w:
                pass
        for t in (x, k, w):
            with pytest.raises(TypeError, match="not iterable"):
                iter(t)
        with pytest.raises(TypeError, match="not iterable"):
            a, b = k
        assert x is not None and k[1].shape == (3,)  # identity tests and indexing still work


def test_default_graph_is_the_innermost_as_default_and_reset_replaces_the_global_one():
    """TF1: ops go to get_default_graph(); as_default() nests; reset_default_graph()
    gives a fresh global graph and is an error inside an as_default() block."""
    mf.reset_default_graph()
    g0 = mf.get_default_graph()
    c0 = mf.constant(1.0, name="c")  # no graph named: the global default
    assert c0.graph is g0 and g0.get_operations() == [c0.op]
    g1, g2 = mf.Graph(), mf.Graph()
    with g1.as_default():
        assert mf.get_default_graph() is g1
        with g2.as_default():
            assert mf.get_default_graph() is g2 and mf.constant(2.0).graph is g2
        assert mf.get_default_graph() is g1
        with pytest.raises(AssertionError, match="inside a 'with graph.as_default"):
            mf.reset_default_graph()
    assert mf.get_default_graph() is g0
    with mf.Session() as s:  # a Session without a graph runs the default one
        assert s.run(c0) == 1.0
    mf.reset_default_graph()
    g3 = mf.get_default_graph()
    assert g3 is not g0 and g3.get_operations() == []
    assert mf.constant(3.0, name="c").name == "c:0"  # names start over in the new graph
    with pytest.raises(ValueError, match="not an element of this session's graph"):
        with mf.Session() as s:
            s.run(c0)
    mf.reset_default_graph()


def test_convert_to_tensor_follows_tensorflow():
    """Tensors pass through (a dtype that differs is refused, not cast); Variables give
    their value; Python numbers become float32/int32, numpy values keep their dtype."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2])
        v = mf.Variable(np.float64(1.5), name="v")
        assert mf.convert_to_tensor(x) is x and mf.convert_to_tensor(x, mf.float32) is x
        with pytest.raises(ValueError, match="expected a int32 tensor"):
            mf.convert_to_tensor(x, mf.int32)
        with pytest.raises(TypeError):
            mf.convert_to_tensor(2.5, mf.int32)  # would lose the fraction
        tv = mf.convert_to_tensor(v)
        cases = [mf.convert_to_tensor([1, 2]), mf.convert_to_tensor([1.0, 2]),
                 mf.convert_to_tensor(np.arange(3, dtype=np.int64)),
                 mf.convert_to_tensor(np.float64(0.5)), mf.convert_to_tensor(2**40),
                 mf.convert_to_tensor([1, 2], mf.float64)]
    assert tv is v.value() and tv.dtype == mf.float64
    assert [t.dtype for t in cases] == [mf.int32, mf.float32, mf.int64, mf.float64, mf.int64,
                                        mf.float64]
    assert [t.op.type for t in cases] == ["Const"] * 6
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        got = s.run([tv] + cases)
    want = [1.5, [1, 2], [1.0, 2.0], [0, 1, 2], 0.5, 2**40, [1.0, 2.0]]
    for val, w, t in zip(got, want, [tv] + cases, strict=True):
        assert np.asarray(val).dtype == t.dtype.np_dtype
        np.testing.assert_array_equal(val, w)


@pytest.mark.parametrize("value, dtype, why", [
    (70000.0, mf.float16, "overflows float16"), (1e300, mf.float32, "overflows float32"),
    (70000, mf.float16, "overflows float16"), (2**64, mf.float32, "not a number"),
    (2.5, mf.int32, "without losing its fraction"), (2**40, mf.int32, "out of range"),
    (True, mf.float32, None), (float("inf"), mf.float16, None), (3, mf.float16, None),
    (2**60 + 2**36 + 1, mf.float32, None)])  # one rounding, as numpy's own cast
def test_python_numbers_keep_their_value_or_are_refused(value, dtype, why):
    """A Python number meeting a tensor takes its dtype only if its value survives
    (TF's _AssertCompatible): an overflow to inf is refused, an inf stays inf; the
    scalar fast path for floats agrees with numpy's own cast."""
    g = mf.Graph()
    with g.as_default():
        if why is not None:
            with pytest.raises(TypeError, match=why):
                mf.constant(value, dtype)
            return
        c = mf.constant(value, dtype)
    with mf.Session(graph=g) as s:
        got = s.run(c)
    assert got.dtype == dtype.np_dtype
    np.testing.assert_array_equal(got, np.asarray(value).astype(dtype.np_dtype))


def test_a_name_asked_for_twice_is_never_given_to_two_ops():
    """'a', 'a' made 'a' and 'a_1'; asking for 'a_1' then returned 'a_1' again, and two
    ops of one name swap values between devices (Send/Recv keys are names)."""
    g = mf.Graph()
    with g.as_default():
        a = mf.constant(1.0, name="a")
        a1 = mf.constant(2.0, name="a")
        a2 = mf.constant(3.0, name="a_1")
    assert [t.op.name for t in (a, a1, a2)] == ["a", "a_1", "a_1_1"]
    assert g.get_tensor_by_name("a_1:0") is a1
    g = mf.Graph()
    with g.as_default():
        with mf.device("/cpu:0"):
            x = mf.constant([1.0, 2.0], name="x")
            y = mf.multiply(x, 100000.0, name="y")
        with mf.device("/cpu:1"):
            z = mf.add(y, mf.multiply(x, 2.0, name="y_1"), name="y_1")
    with mf.Session(graph=g, config=mf.ConfigProto(device_count={"CPU": 2})) as s:
        np.testing.assert_allclose(s.run(z), [100002.0, 200004.0])


def test_control_inputs_from_another_graph_are_refused():
    """The plan finds ops by their index in their own graph: a foreign control input used
    to be swapped for this graph's op of the same index (an unrelated AssignAdd ran)."""
    g1, g2 = mf.Graph(), mf.Graph()
    with g1.as_default():
        counter = mf.Variable(1.0, name="counter")
        counter.assign_add(1.0)
    with g2.as_default():
        foreign = mf.constant(0.0, name="c")
    with g1.as_default():
        with pytest.raises(ValueError, match="control input c is from a different graph"):
            with mf.control_dependencies([foreign]):
                pass
        with pytest.raises(ValueError, match="control input c is from a different graph"):
            mf.group(foreign, counter.initializer)
        out = mf.identity(counter.value())
    with mf.Session(graph=g1) as s:  # nothing was left behind by the refusals
        s.run(counter.initializer)
        s.run(out)
        assert s.run(counter) == 1.0


def test_name_scopes_reenter_and_reset_as_in_tensorflow():
    """TF's Graph.name_scope: a scope captured with ``as`` (ending in '/') re-enters that
    scope exactly (it used to give 's//b'); None or '' goes back to the top level."""
    g = mf.Graph()
    with g.as_default():
        with mf.name_scope("s") as sc:
            a = mf.constant(1.0, name="a")
        with mf.name_scope(sc) as again:
            b = mf.constant(1.0, name="b")
        with mf.name_scope("o"):
            with mf.name_scope(None) as top:
                t = mf.constant(1.0, name="t")
            with mf.name_scope(""):
                u = mf.constant(1.0, name="u")
            v = mf.constant(1.0, name="v")
    assert (sc, again, top) == ("s/", "s/", "")
    assert [x.op.name for x in (a, b, t, u, v)] == ["s/a", "s/b", "t", "u", "o/v"]


def test_a_device_function_is_refused_clearly():
    with pytest.raises(TypeError, match="device functions are not supported"):
        with mf.device(lambda op: "/cpu:0"):
            pass


def test_scopes_belong_to_the_thread_that_opened_them(race):
    """As in TF (``Graph._thread_local``): a name scope, device or control dependency
    opened in one thread never applies to ops another thread builds in the same graph,
    and none is left open when the threads are done. They used to be the graph's: half
    of a plain thread's ops took the other's device, and the graph could stay stuck in a
    scope for good."""
    g = mf.Graph()
    built: dict[str, list] = {"A": [], "B": []}

    def a():
        with g.as_default():
            for _ in range(200):
                with mf.name_scope("A"), mf.device("/cpu:1"):
                    built["A"].append(mf.constant(1.0, name="c").op)

    def b():
        with g.as_default():
            for _ in range(200):
                built["B"].append(mf.constant(2.0, name="c").op)

    race(a, b, switch_s=1e-6)
    assert all(op.device == "" and "/" not in op.name for op in built["B"])
    assert all(op.device.endswith("cpu:1") and op.name.startswith("A") for op in built["A"])
    names = [op.name for op in g.get_operations()]
    assert len(names) == len(set(names)) == 400
    with g.as_default():
        after = mf.constant(3.0, name="after").op
    assert after.name == "after" and after.device == ""


def test_a_name_handed_out_is_never_handed_out_again(race):
    """A Variable picks its name, builds its initial value, then takes the name. A
    name handed out but not yet taken used to be handed out again (asked for as
    ``v_1``), and the Variable failed with "'v_1' is empty or already taken". As TF's
    ``_names_in_use``, every name handed out is held from then on."""
    g = mf.Graph()
    assert [g.unique_name(n) for n in ("v", "v", "v_1", "v_1")] == \
        ["v", "v_1", "v_1_1", "v_1_2"]
    made: list = []

    def variables():
        with g.as_default():
            made.extend(mf.Variable(1.0, name="w").op for _ in range(150))

    def constants():
        with g.as_default():
            made.extend(mf.constant(1.0, name=f"w_{i}").op for i in range(1, 150))

    race(variables, constants, switch_s=1e-6)
    names = [op.name for op in g.get_operations()]
    assert len(names) == len(set(names)) and len(made) == 299


def test_tf1_positional_arguments_and_dtype_names_mean_what_they_mean_in_tf1():
    """tf.compat.v1.Variable(value, False) freezes it (trainable is the second
    positional): here it was read as the name and the variable was trained. TF reads
    "float" and Python's float as float32 (dtypes.py _STRING_TO_TF, _PYTHON_TO_TF), where
    numpy reads float64. TF1's optimizers take use_locking before the name:
    MomentumOptimizer(lr, m, True) asked for locking, not for Nesterov."""
    with mf.Graph().as_default():
        frozen = mf.Variable(np.ones(2, np.float32), False)
        w = mf.Variable(np.ones(2, np.float32), name="w")
        assert not frozen.trainable and mf.trainable_variables() == [w]
        with pytest.raises(TypeError, match="trainable must be True or False, got 'named' "
                                            r"\(a name goes in name=\)"):
            mf.Variable(1.0, "named")
        assert mf.Variable(1.0, None).trainable and not mf.Variable(1.0, np.bool_(False)) \
            .trainable  # None is TF1's default: trainable
        assert mf.placeholder("float").dtype == mf.float32
        assert mf.cast(w, float).dtype == mf.float32 and mf.cast(w, "double").dtype == mf.float64
        assert mf.cast(w, bool).dtype == mf.bool_ and mf.cast(w, "half").dtype == mf.float16
        assert not mf.train.MomentumOptimizer(0.1, 0.9, True)._nesterov
        assert mf.train.GradientDescentOptimizer(0.1, False)._name == "GradientDescent"
        assert mf.train.AdamOptimizer(0.1, 0.9, 0.999, 1e-8, False)._name == "Adam"


def test_get_shape_answers_tf1s_tensorshape_methods():
    """x.get_shape().as_list() (TF1's CNN tutorials flatten with it) raised AttributeError
    on a tuple; the result still equals the plain shape tuple."""
    with mf.Graph().as_default():
        x = mf.placeholder(mf.float32, [None, 7, 7, 16])
        v = mf.Variable(np.zeros((2, 3), np.float32))
        unknown = mf.placeholder(mf.float32)
    s = x.get_shape()
    assert s.as_list() == [None, 7, 7, 16] and s.ndims == 4 and not s.is_fully_defined()
    assert s == (None, 7, 7, 16) and s[1:] == (7, 7, 16)
    assert v.get_shape().as_list() == [2, 3] and v.get_shape().is_fully_defined()
    assert unknown.get_shape().ndims is None
    with pytest.raises(ValueError, match="unknown rank"):
        unknown.get_shape().as_list()
    assert s == [None, 7, 7, 16] and s[1:].as_list() == [7, 7, 16]  # as TF's TensorShape
    with mf.Graph().as_default():  # a shape handed on keeps an unknown rank unknown
        again = mf.placeholder(mf.float32, unknown.get_shape())
        assert again.shape is None and unknown.get_shape() != ()
        tail = mf.placeholder(mf.float32, unknown.get_shape()[1:])  # unknown too
        assert tail.shape is None and unknown.get_shape()[0] is None


def test_tf1s_older_spellings_and_argument_orders_are_taken():
    """reduce_*(reduction_indices=, keep_dims=), softmax(dim=), argmax(x, 1, "name") (TF1's
    third positional is the name; it was read as the output dtype) and
    argmax(dimension=), and get_slot of a slot never made (None in TF1; a KeyError)."""
    x_value = np.array([[1.0, 5.0], [7.0, 3.0]], np.float32)
    g = mf.Graph()
    with g.as_default():
        x = mf.constant(x_value)
        s = mf.reduce_sum(x, reduction_indices=[1], keep_dims=True)
        m = mf.reduce_max(x, reduction_indices=0)
        p = mf.nn.softmax(x, dim=0)
        a, b = mf.argmax(x, 1, "pred"), mf.argmax(x, dimension=0)
        w = mf.Variable(x_value)
        assert mf.train.MomentumOptimizer(0.1, 0.9).get_slot(w, "momentum") is None
    assert a.op.name == "pred" and a.dtype == mf.int64
    with mf.Session(graph=g) as sess:
        got = sess.run([s, m, p, a, b])
    assert got[0].tolist() == [[6.0], [10.0]] and got[1].tolist() == [7.0, 5.0]
    np.testing.assert_allclose(got[2], np.exp(x_value) / np.exp(x_value).sum(0), rtol=1e-6)
    assert got[3].tolist() == [1, 0] and got[4].tolist() == [1, 0]


def test_gather_like_ops_bias_add_and_assign_take_tf1s_positional_arguments():
    """gather's third positional is TF1's validate_indices (it was the axis: columns
    instead of rows), zeros_like/ones_like's second is the dtype (it was the name),
    bias_add's third is data_format (it was the name, and NCHW added along the last
    axis), and assign's use_locking/read_value are TF1's (use_locking was a TypeError,
    or by position the op's name)."""
    p_value = np.arange(9, dtype=np.float32).reshape(3, 3)
    g = mf.Graph()
    with g.as_default():
        p, idx = mf.constant(p_value), mf.constant([0, 2])
        rows, cols = mf.gather(p, idx, True), mf.gather(p, idx, axis=1)
        z, o = mf.zeros_like(p, mf.int32), mf.ones_like(p, "int64", name="ones")
        z_default = mf.zeros_like(p)
        b = mf.nn.bias_add(p, mf.constant([1.0, 2.0, 3.0]), "NHWC", "biased")
        with pytest.raises(ValueError, match="channels-last.*got 'NCHW'"):
            mf.nn.bias_add(p, mf.constant([1.0, 2.0, 3.0]), "NCHW")
        with pytest.raises(NotImplementedError, match="batch_dims"):
            mf.gather(p, idx, batch_dims=1)
        v = mf.Variable(np.zeros(2, np.float32))
        up = v.assign_add(np.ones(2, np.float32), True, "up")
        set_op = v.assign(np.full(2, 5.0, np.float32), use_locking=True, read_value=False)
        down = mf.assign_sub(v, np.ones(2, np.float32), True, "down")
        with pytest.raises(NotImplementedError, match="validate_shape"):
            mf.assign(v, np.zeros(3, np.float32), False)
    assert (z.dtype, o.dtype, z_default.dtype) == (mf.int32, mf.int64, mf.float32)
    assert (o.op.name, b.op.name, up.op.name, down.op.name) == ("ones", "biased", "up", "down")
    assert isinstance(set_op, mf.Operation)
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        got = s.run([rows, cols, z, o, b])
        assert s.run(up).tolist() == [1.0, 1.0]
        s.run(set_op)
        assert s.run(down).tolist() == [4.0, 4.0]
    np.testing.assert_array_equal(got[0], p_value[[0, 2]])
    np.testing.assert_array_equal(got[1], p_value[:, [0, 2]])
    assert got[2].dtype == np.int32 and not got[2].any() and got[3].dtype == np.int64
    np.testing.assert_array_equal(got[4], p_value + [1.0, 2.0, 3.0])


def test_tf1s_later_arguments_of_gradients_matmul_minimize_saver_and_strided_slice():
    """The arguments tests/miniflow/test_tf1_signatures.py lines up, doing what TF1's do:
    unconnected gradients as zeros, adjoint as transpose, minimize's grad_loss weighting
    the loss, and what is left out (strided_slice's masks, Saver's positional reshape)
    refused rather than taken as something else."""
    a_value = np.arange(6, dtype=np.float32).reshape(2, 3)
    g = mf.Graph()
    with g.as_default():
        a, b = mf.constant(a_value), mf.constant(np.ones((2, 4), np.float32))
        ab = mf.matmul(a, b, False, False, True)  # adjoint_a: a^T b
        w = mf.Variable(np.float32(2.0), name="w")
        unused = mf.Variable(np.float32(1.0), name="unused")
        loss = w * w
        dw, dz = mf.gradients(loss, [w, unused], None, "g", False, False, None, (), "zero")
        assert mf.gradients(loss, [unused]) == [None]
        step = mf.train.GradientDescentOptimizer(0.25).minimize(
            loss, None, [w], 1, None, False, "train", mf.constant(np.float32(2.0)))
        assert step.name == "train"  # TF1's train op has the scope's own name
        gs = mf.Variable(np.int64(0), False, name="global_step")
        counted = mf.train.GradientDescentOptimizer(0.0).minimize(loss, gs, name="count")
        assert counted.name == "count" and counted.type == "AssignAdd"
        with pytest.raises(ValueError, match="only one of transpose and adjoint"):
            mf.matmul(a, b, True, False, True)
        with pytest.raises(NotImplementedError, match="shrink_axis_mask not implemented"):
            mf.strided_slice(a, [0, 0], [1, 3], [1, 1], 0, 0, 0, 0, 1)
        with pytest.raises(TypeError):
            mf.train.Saver([w], 3)  # TF1's second positional is reshape
    with mf.Session(graph=g) as s:
        s.run(mf.variables_initializer([w, unused, gs]))
        s.run(counted)
        assert s.run(gs) == 1
        np.testing.assert_array_equal(s.run(ab), a_value.T @ np.ones((2, 4), np.float32))
        assert s.run([dw, dz]) == [4.0, 0.0]
        s.run(step)  # w -= 0.25 * (2 * 2w), grad_loss 2 doubling the gradient
        assert s.run(w) == 0.0


def test_tf1s_keyword_names_for_conv_and_pooling_are_taken():
    """tf.compat.v1.nn.conv2d(input, filter=...), max_pool(value=...), data_format="NHWC"
    were TypeErrors; another data format is refused by name."""
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    fv = rng.standard_normal((3, 3, 2, 5)).astype(np.float32)
    g = mf.Graph()
    with g.as_default():
        x, f = mf.constant(xv), mf.constant(fv)
        a = mf.nn.conv2d(x, filter=f, strides=1, padding="SAME", data_format="NHWC")
        b = mf.nn.conv2d(x, f, 1, "SAME")
        c = mf.nn.max_pool(value=x, ksize=2, strides=2, padding="VALID", data_format="NHWC")
        d = mf.nn.max_pool(x, 2, 2, "VALID")
        e = mf.nn.max_pool(x, 2, 2, "VALID", "NHWC", "pool")  # TF's positional order
        assert e.name == "pool:0"
        with pytest.raises(ValueError, match="data_format must be 'NHWC', got 'NCHW'"):
            mf.nn.max_pool(x, 2, 2, "VALID", "NCHW")  # was taken as the op's name
        with pytest.raises(TypeError, match="positional"):
            mf.nn.conv2d(x, f, 1, "SAME", True)  # TF1's use_cudnn_on_gpu, not a name
        with pytest.raises(ValueError, match="data_format must be 'NHWC', got 'NCHW'"):
            mf.nn.avg_pool(value=x, ksize=2, strides=2, data_format="NCHW")
        with pytest.raises(TypeError, match="give the input, ksize and strides"):
            mf.nn.max_pool(x)
    with mf.Session(graph=g) as s:
        av, bv, cv, dv = s.run([a, b, c, d])
    np.testing.assert_array_equal(av, bv)
    np.testing.assert_array_equal(cv, dv)
