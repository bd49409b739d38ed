"""check_numerics, add_check_numerics_ops, group."""

import numpy as np
import pytest

import systems.miniflow as mf

from .helpers import BACKENDS, evaluate, session


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_numerics_and_its_gradient_check_on_both_backends(backend):
    """On the torch backend too (its all_finite), a NaN names the op that made it and the
    user's line. The gradient passes through unchanged (TF's CheckNumerics gradient) and
    is itself checked, as "gradient of <message>": here sqrt's gradient at 0 is inf."""
    g = mf.Graph()
    with g.as_default():
        p = mf.placeholder(mf.float64, [3])
        logp = mf.check_numerics(mf.log(p), message="log p")
        x = mf.placeholder(mf.float64, [3])
        sq = mf.check_numerics(x * x, message="square")
        (dx,) = mf.gradients(mf.reduce_sum(sq), [x])
        (d_root,) = mf.gradients(mf.reduce_sum(mf.sqrt(sq)), [x])
    xv = np.array([-1.5, 0.5, 2.0])
    with session(g, backend) as s:
        np.testing.assert_allclose(s.run(logp, {p: [1.0, np.e, 1.0]}), [0.0, 1.0, 0.0])
        with pytest.raises(mf.InvalidArgumentError) as e:
            s.run(logp, {p: [1.0, -1.0, 1.0]})
        np.testing.assert_allclose(s.run(dx, {x: xv}), 2 * xv)  # d(x * x)/dx, through the check
        np.testing.assert_allclose(s.run(d_root, {x: xv}), np.sign(xv))
        with pytest.raises(mf.InvalidArgumentError, match="gradient of square: Tensor had "
                                                          "NaN or Inf"):
            s.run(d_root, {x: np.array([0.0, 1.0, 2.0])})
    msg = str(e.value)
    assert "log p: Tensor had NaN or Inf" in msg and "(Log) created at" in msg
    assert "test_control_ops.py:" in msg


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


def test_add_check_numerics_ops_does_not_rerun_initializers_or_updates():
    """Checking an Assign or ApplyGradientDescent output would run it: TF skips those ref
    outputs, so [train, check] must train exactly like train alone."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 2], name="x")
        w = mf.Variable(np.ones((2, 1), np.float32), name="w")
        loss = mf.reduce_mean(mf.square(mf.matmul(x, w)))
        train = mf.train.GradientDescentOptimizer(0.1).minimize(loss)
        check = mf.add_check_numerics_ops()
    checked = {c.inputs[0].op.type for c in check.control_inputs}
    assert "ReadVariable" in checked and "MatMul" in checked
    assert not checked & {"Assign", "ApplyGradientDescent", "VariableV2"}
    feed = {x: np.ones((3, 2), np.float32)}
    losses = {}
    for with_check in (False, True):
        with mf.Session(graph=g) as s:
            s.run(mf.global_variables_initializer())
            for _ in range(5):
                s.run([train, check] if with_check else train, feed)
            losses[with_check] = s.run(loss, feed)
    # numpy oracle: d/dw mean((x w)^2) = 2 x^T x w / n, five steps of w -= 0.1 * grad
    xv, wv = feed[x], np.ones((2, 1), np.float32)
    for _ in range(5):
        wv = wv - 0.1 * 2 * xv.T @ (xv @ wv) / 3
    np.testing.assert_allclose(losses[True], np.mean((xv @ wv) ** 2), rtol=1e-5)
    assert losses[True] == losses[False]


def test_control_dependencies_and_group_take_variables():
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.float32(2.0), name="v")
        with mf.control_dependencies([v]):
            out = mf.identity(mf.constant(6.0))
        grp = mf.group(v, out)
        with pytest.raises(TypeError, match="group: 3 is not an op"):
            mf.group(3)
    assert evaluate(g, out) == 6.0 and evaluate(g, grp) is None
