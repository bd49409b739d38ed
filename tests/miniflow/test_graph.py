"""Building graphs: names, scopes, devices, control dependencies, and build-time errors
that name the op, the shapes and the user's line."""

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
    assert c.name == "layer/Add:0" and d.name == "layer/inner/out:0"
    assert e.name == "layer_1/Identity:0"
    assert {op.name for op in g.get_operations()} >= {"w", "w/initial_value", "w/Assign",
                                                      "w/read"}
    assert g.get_tensor_by_name("layer/Add:0") is c
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
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2])
        y = mf.tanh(x)
    assert y.op.created_at.endswith(f"test_graph.py:{y.op.created_at.rsplit(':', 1)[1]}")
    assert "test_graph.py" in x.op.created_at


def test_numpy_on_the_left_defers_to_tensor_operators():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2])
        y = np.float32(2.0) * x
    assert isinstance(y, mf.Tensor) and y.op.type == "Mul"


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
