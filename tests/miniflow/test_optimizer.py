"""Optimizers against torch.optim on the same model, the same data, the same init."""

import numpy as np
import pytest
import torch

import systems.miniflow as mf

from .helpers import evaluate


def _run_miniflow(make_opt, steps, w0, xv, yv):
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, xv.shape)
        y = mf.placeholder(mf.int32, yv.shape)
        w = mf.Variable(w0.copy(), name="w")
        loss = mf.reduce_mean(mf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=mf.tanh(x @ w)))
        train = make_opt().minimize(loss)
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        for _ in range(steps):
            s.run(train, {x: xv, y: yv})
        return s.run(w)


def _run_torch(make_opt, steps, w0, xv, yv):
    w = torch.tensor(w0.copy(), requires_grad=True)
    opt = make_opt([w])
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.tanh(torch.tensor(xv) @ w),
                                                 torch.tensor(yv, dtype=torch.long))
        loss.backward()
        opt.step()
    return w.detach().numpy()


@pytest.mark.parametrize("name,ours,theirs", [
    ("sgd", lambda: mf.train.GradientDescentOptimizer(0.3),
     lambda p: torch.optim.SGD(p, lr=0.3)),
    ("momentum", lambda: mf.train.MomentumOptimizer(0.1, 0.9),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    ("nesterov", lambda: mf.train.MomentumOptimizer(0.1, 0.9, use_nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    # TF's Adam folds the bias corrections into the step size, so its epsilon meets an
    # unscaled sqrt(v) while torch's meets a corrected one: with a tiny epsilon both are
    # the same update.
    ("adam", lambda: mf.train.AdamOptimizer(0.05, epsilon=1e-12),
     lambda p: torch.optim.Adam(p, lr=0.05, eps=1e-12)),
])
def test_optimizer_trajectory_matches_torch(name, ours, theirs):
    rng = np.random.default_rng(0)
    w0 = rng.normal(0, 0.5, (5, 3))
    xv = rng.standard_normal((8, 5))
    yv = rng.integers(0, 3, 8).astype(np.int32)
    got = _run_miniflow(ours, 7, w0, xv, yv)
    want = _run_torch(theirs, 7, w0, xv, yv)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert not np.allclose(got, w0)


def test_minimize_with_global_step_and_var_list():
    g = mf.Graph()
    with g.as_default():
        a = mf.Variable(np.float32(3.0), name="a")
        b = mf.Variable(np.float32(3.0), name="b")
        step = mf.Variable(np.int32(0), name="step", trainable=False)
        loss = a * a + b * b
        train = mf.train.GradientDescentOptimizer(0.25).minimize(loss, global_step=step,
                                                                 var_list=[a])
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        for _ in range(2):
            s.run(train)
        assert s.run(a) == pytest.approx(3.0 * 0.5 ** 2)  # a <- a - 0.25 * 2a
        assert s.run(b) == 3.0 and s.run(step) == 2


def test_slots_live_next_to_their_variable():
    g = mf.Graph()
    with g.as_default():
        with mf.device("/cpu:1"):
            w = mf.Variable(np.ones(4, np.float32), name="w")
        opt = mf.train.AdamOptimizer(0.1)
        train = opt.minimize(mf.reduce_sum(w * w))
        m = opt.get_slot(w, "m")
    assert m.op.name == "w/Adam" and m.device == "/cpu:1" and not m.trainable
    with mf.Session(graph=g, config=mf.ConfigProto(device_count={"CPU": 2})) as s:
        s.run(mf.global_variables_initializer())
        s.run(train)
        np.testing.assert_allclose(s.run(m), 0.1 * 2 * np.ones(4), rtol=1e-6)


def test_no_gradient_for_any_variable_is_an_error():
    g = mf.Graph()
    with g.as_default():
        mf.Variable(1.0, name="unused")
        loss = mf.constant(2.0) * 3.0
        with pytest.raises(ValueError, match="No gradients provided for any variable"):
            mf.train.GradientDescentOptimizer(0.1).minimize(loss)


def test_a_variable_never_changes_shape():
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.zeros(3, np.float32), name="v")
        delta = mf.placeholder(mf.float32, None)
        grow = mf.assign_add(v, delta)
        with pytest.raises(mf.errors.GraphBuildError, match="gradient must have the var"):
            mf.train.GradientDescentOptimizer(0.1).apply_gradients(
                [(mf.constant(np.ones((2, 3), np.float32)), v)])
    with pytest.raises(mf.errors.InvalidArgumentError, match=r"AssignAdd requires .*\(2, 3\)"):
        evaluate(g, grow, {delta: np.ones((2, 3), np.float32)})


def test_adam_with_a_large_epsilon_follows_tensorflows_formula():
    """TF's ApplyAdam: lr_t = lr*sqrt(1-b2^t)/(1-b1^t); w -= lr_t*m/(sqrt(v)+eps). With
    eps=1e-12 (the torch comparison) where eps sits is invisible; with eps=0.1 it is not.
    Oracle: the formula in numpy, gradients from torch."""
    rng = np.random.default_rng(0)
    w0, xv = rng.normal(0, 0.5, (5, 3)), rng.standard_normal((8, 5))
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 0.1
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, xv.shape)
        w = mf.Variable(w0.copy(), name="w")
        loss = mf.reduce_sum(mf.square(mf.tanh(x @ w)))
        train = mf.train.AdamOptimizer(lr, b1, b2, eps).minimize(loss)
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        for _ in range(5):
            s.run(train, {x: xv})
        got = s.run(w)
    want, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for t in range(1, 6):
        tw = torch.tensor(want, requires_grad=True)
        (torch.tanh(torch.tensor(xv) @ tw) ** 2).sum().backward()
        grad = tw.grad.numpy()
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad
        lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        want = want - lr_t * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("make_opt", [
    lambda: mf.train.GradientDescentOptimizer(0.1),
    lambda: mf.train.MomentumOptimizer(0.1, 0.9),
    lambda: mf.train.AdamOptimizer(0.1),
])
def test_a_gradient_of_unknown_static_shape_is_checked_when_the_step_runs(make_opt):
    """The gradient's shape is unknown at build time: the Apply op must refuse a (1,) or
    (2, 3) gradient for a (3,) variable at run time instead of broadcasting it."""
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.zeros(3, np.float32), name="v")
        grad = mf.placeholder(mf.float32, None)
        step = make_opt().apply_gradients([(grad, v)])
        init = mf.global_variables_initializer()
    with mf.Session(graph=g) as s:
        s.run(init)
        s.run(step, {grad: np.ones(3, np.float32)})  # the right shape is fine
        for bad in (np.ones(1, np.float32), np.ones((2, 3), np.float32)):
            with pytest.raises(mf.errors.InvalidArgumentError,
                               match=r"has shape \(3,\) but its gradient"):
                s.run(step, {grad: bad})
        assert s.run(v).shape == (3,)


def test_a_variable_initialised_from_another_starts_at_its_value():
    """``tf.Variable(w)`` reads ``w``; ours made a numpy object array of the Variable and
    failed with an unrelated "cannot convert dtype('O')"."""
    with mf.Graph().as_default():
        w = mf.Variable(np.arange(3, dtype=np.float32), name="w")
        v = mf.Variable(w, name="v")
        assert v.dtype == w.dtype and v.shape == w.shape
        with mf.Session() as s:
            s.run(mf.global_variables_initializer())
            s.run(w.assign(w * 10))  # v is its own variable, not an alias of w
            np.testing.assert_array_equal(s.run(v), [0, 1, 2])


def test_two_updates_of_one_variable_in_one_step_both_land_whatever_the_thread_count():
    """Each Apply kernel replaces the variable's array: two of them run at once by the
    inter-op pool both read the old value, and a whole update vanished (w = -128 where
    -150 was due, with four threads; exact with one)."""
    n = 512  # large enough for both updates to be handed to the pool
    g = mf.Graph()
    with g.as_default():
        w = mf.Variable(np.zeros((n, n), np.float32), name="w")
        g1 = mf.constant(np.ones((n, n), np.float32))
        g2 = mf.constant(np.full((n, n), 2.0, np.float32))
        train = mf.group(mf.train.GradientDescentOptimizer(1.0).apply_gradients([(g1, w)]),
                         mf.train.GradientDescentOptimizer(1.0).apply_gradients([(g2, w)]),
                         w.assign_add(mf.constant(np.full((n, n), 0.5, np.float32))))
    with mf.Session(graph=g, config=mf.ConfigProto(inter_op_parallelism_threads=4)) as s:
        s.run(w.initializer)
        for _ in range(30):
            s.run(train)
        np.testing.assert_array_equal(s.run(w), np.full((n, n), -75.0, np.float32))


def test_adam_advances_its_beta_powers_only_after_every_variables_update():
    """Each ApplyAdam reads beta1^t and beta2^t; the step's assignments of beta^(t+1)
    must run after all of them (a control dependency), or a variable updated after
    the advance takes its bias correction from the next step. Without the dependency
    the results were still right, but only because the executor happened to run the
    reads first."""
    g = mf.Graph()
    with g.as_default():
        a = mf.Variable(np.ones(3, np.float32), name="a")
        b = mf.Variable(np.ones(2, np.float32), name="b")
        mf.train.AdamOptimizer(0.1).minimize(mf.reduce_sum(a * a) + mf.reduce_sum(b))
    ops = g.get_operations()
    applies = {op.name for op in ops if op.type == "ApplyAdam"}
    advances = [op for op in ops if op.type == "Assign" and op.inputs[0].op.name in
                ("beta1_power", "beta2_power") and op.inputs[1].op.type != "Const"]
    assert len(applies) == 2 and len(advances) == 2

    def ancestors(op, seen):
        for p in [t.op for t in op.inputs] + list(op.control_inputs):
            if p.name not in seen:
                seen.add(p.name)
                ancestors(p, seen)
        return seen
    for op in advances:
        assert applies <= ancestors(op, set()), op.name
