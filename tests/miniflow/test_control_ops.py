"""check_numerics, add_check_numerics_ops, group."""

import numpy as np
import pytest

import systems.miniflow as mf


def test_check_numerics_names_the_op_that_made_the_nan():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2])
        y = mf.log(x)  # NaN for negative x
        z = mf.check_numerics(y * 2.0, message="scaled log")
    with mf.Session(graph=g) as s:
        np.testing.assert_allclose(s.run(z, {x: [1.0, 1.0]}), [0.0, 0.0])
        with pytest.raises(mf.InvalidArgumentError) as e:
            s.run(z, {x: [1.0, -1.0]})
    msg = str(e.value)
    assert "scaled log: Tensor had NaN or Inf" in msg and "Mul" in msg
    assert "test_control_ops.py" in msg


def test_add_check_numerics_ops_catches_the_first_bad_tensor():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2], name="x")
        a = mf.exp(x, name="grows")
        b = mf.identity(a * 0.0, name="times_zero")  # inf * 0 = NaN downstream
        check = mf.add_check_numerics_ops()
    with mf.Session(graph=g) as s:
        s.run([b, check], {x: [0.0, 1.0]})
        with pytest.raises(mf.InvalidArgumentError, match="grows:0|times_zero"):
            s.run([b, check], {x: [0.0, 1000.0]})


def test_group_runs_all_its_members():
    g = mf.Graph()
    with g.as_default():
        a = mf.Variable(np.float32(0.0))
        b = mf.Variable(np.float32(0.0))
        both = mf.group(a.assign_add(1.0), b.assign_add(2.0))
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        assert s.run(both) is None
        assert s.run([a, b]) == [1.0, 2.0]
