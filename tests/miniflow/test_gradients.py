"""Symbolic autodiff: central differences, second derivatives against torch, path
aggregation, and the gradient registry."""

import numpy as np
import pytest
import torch

import systems.miniflow as mf

from .helpers import BACKENDS, arrays, evaluate


def _numeric_grad(f, x, eps=1e-6):
    """Central differences of a scalar function of x (float64), one coordinate at a time."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (f(xp) - f(xm)) / (2 * eps)
    return g


@pytest.mark.parametrize("name,build", [
    ("tanh-matmul-logsoftmax", lambda x, w: mf.nn.log_softmax(mf.tanh(x @ w))),
    ("broadcast-div-pow", lambda x, w: (x / (mf.abs(w[:, 0]) + 1.0)) ** 2.0),
    ("reduce-max-minus-mean", lambda x, w: mf.reduce_max(x @ w, 1) - mf.reduce_mean(x, 1)),
])
def test_gradient_matches_central_differences(name, build):
    rng = np.random.default_rng(0)
    xv, wv = arrays(rng, (3, 4)), arrays(rng, (4, 5))
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, (3, 4))
        out = build(x, mf.constant(wv))
        weights = mf.constant(arrays(rng, out.shape, 0.5, 1.5))
        loss = mf.reduce_sum(out * weights)
        (dx,) = mf.gradients(loss, [x])
    with mf.Session(graph=g) as s:
        got = s.run(dx, {x: xv})
        numeric = _numeric_grad(lambda v: s.run(loss, {x: v}), xv)
    np.testing.assert_allclose(got, numeric, rtol=1e-5, atol=1e-7,
                               err_msg=f"{name}: analytic gradient vs central differences")


@pytest.mark.parametrize("name,mf_fn,torch_fn", [
    ("tanh", mf.tanh, torch.tanh),
    ("sigmoid*x", lambda x: mf.sigmoid(x) * x, lambda x: torch.sigmoid(x) * x),
    ("exp/(1+x^2)", lambda x: mf.exp(x) / (1.0 + x * x), lambda x: torch.exp(x) / (1 + x * x)),
    ("relu(x)^3", lambda x: mf.nn.relu(x) ** 3.0, lambda x: torch.relu(x) ** 3),
    ("log(1+x^2)", lambda x: mf.log(1.0 + mf.square(x)), lambda x: torch.log(1 + x ** 2)),
])
def test_second_derivatives_of_elementwise_ops_match_torch(name, mf_fn, torch_fn):
    xv = np.linspace(-1.5, 1.7, 7)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, [None])
        (d1,) = mf.gradients(mf.reduce_sum(mf_fn(x)), [x])
        (d2,) = mf.gradients(mf.reduce_sum(d1), [x])
    got1, got2 = evaluate(g, [d1, d2], {x: xv})
    t = torch.tensor(xv, requires_grad=True)
    (t1,) = torch.autograd.grad(torch_fn(t).sum(), t, create_graph=True)
    (t2,) = torch.autograd.grad(t1.sum(), t)
    np.testing.assert_allclose(got1, t1.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(got2, t2.numpy(), rtol=1e-9, atol=1e-12)


def test_second_derivative_through_matmul_matches_torch():
    rng = np.random.default_rng(0)
    av, bv = arrays(rng, (3, 4)), arrays(rng, (4, 2))
    g = mf.Graph()
    with g.as_default():
        a, b = mf.placeholder(mf.float64, (3, 4)), mf.placeholder(mf.float64, (4, 2))
        y = mf.reduce_sum(mf.tanh(a @ b) ** 2.0)
        da, db = mf.gradients(y, [a, b])
        hvp = mf.gradients(mf.reduce_sum(da * 0.5) + mf.reduce_sum(db), [a, b])
    got = evaluate(g, hvp, {a: av, b: bv})
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (av, bv))
    gy = torch.autograd.grad((torch.tanh(ta @ tb) ** 2).sum(), (ta, tb), create_graph=True)
    want = torch.autograd.grad((gy[0] * 0.5).sum() + gy[1].sum(), (ta, tb))
    for gv, w in zip(got, want, strict=True):
        np.testing.assert_allclose(gv, w.numpy(), rtol=1e-9, atol=1e-12)


def test_partial_gradients_from_several_paths_are_summed():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [])
        y = x * x + 3.0 * x + mf.exp(x)  # three paths from x to y
        (dx,) = mf.gradients(y, [x])
        assert any(op.type == "AddN" for op in g.get_operations())
    got = evaluate(g, dx, {x: 0.5})
    np.testing.assert_allclose(got, 2 * 0.5 + 3 + np.exp(0.5), rtol=1e-6)


def test_partial_gradients_of_several_ys_are_summed_in_the_order_of_ys():
    """TF's gradients_util queues ys as a list, so the same graph always sums its
    partial gradients in the same order (float addition is not associative); a set of
    ops iterated by address changed the order, and the float bits, build to build."""
    orders, values = set(), set()
    for _ in range(20):
        g = mf.Graph()
        with g.as_default():
            x = mf.placeholder(mf.float32, [1], name="x")
            ys = [x * np.float32(1e8), x * np.float32(1.0), x * np.float32(-1e8)]
            (dx,) = mf.gradients(ys, [x])
        orders.add(tuple(t.op.name for t in dx.op.inputs))
        values.add(float(evaluate(g, dx, {x: np.ones(1, np.float32)})[0]))
    assert orders == {("gradients/mul_grad/Mul", "gradients/mul_1_grad/Mul",
                       "gradients/mul_2_grad/Mul")}  # TF 2.21's names, to the letter
    assert values == {0.0}  # (1e8 + 1) rounds to 1e8 in float32, then - 1e8


def test_every_read_of_a_variable_contributes_to_its_gradient():
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(2.0, name="v")
        y = v * 3.0 + v.read_value() * v.read_value()  # 3v + v^2 via three reads
        (dv,) = mf.gradients(y, [v])
    assert evaluate(g, dv) == pytest.approx(3 + 2 * 2.0)


def test_unconnected_inputs_get_none_and_integer_inputs_get_no_gradient():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2])
        z = mf.placeholder(mf.float32, [2])
        labels = mf.constant(np.array([1, 0], np.int32))
        loss = mf.reduce_sum(mf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=mf.reshape(x, [1, 2]) * mf.ones_like(mf.reshape(x, [2, 1]))))
        dx, dz, dl = mf.gradients(loss, [x, z, labels])
    assert dz is None and dl is None and dx is not None


def test_stop_gradient_blocks_the_path():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [])
        y = x * mf.stop_gradient(x * 2.0)  # d/dx = 2x, not 4x
        (dx,) = mf.gradients(y, [x])
    assert evaluate(g, dx, {x: 3.0}) == pytest.approx(6.0)


def test_register_gradient_for_a_new_op_and_missing_gradient_error():
    from systems.miniflow.op_def import OP_DEFS, OpDef, define, make_op

    if "TimesThree" not in OP_DEFS:
        define(OpDef("TimesThree", lambda ins, a: [(ins[0].dtype, ins[0].shape)],
                     lambda a, be, res: lambda x: x * 3))

        @mf.RegisterGradient("TimesThree")
        def _times_three_grad(op, g):
            return (g * 3.0,)
    if "NoGradYet" not in OP_DEFS:
        define(OpDef("NoGradYet", lambda ins, a: [(ins[0].dtype, ins[0].shape)],
                     lambda a, be, res: lambda x: x))
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [])
        y = make_op("TimesThree", [x * x]).outputs[0]
        (dx,) = mf.gradients(y, [x])
        z = make_op("NoGradYet", [x]).outputs[0]
        with pytest.raises(LookupError, match="No gradient defined for operation .*NoGradYet"):
            mf.gradients(z, [x])
    assert evaluate(g, dx, {x: 2.0}) == pytest.approx(12.0)


def test_grad_ys_weights_the_outputs():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        (dx,) = mf.gradients(x * x, [x], grad_ys=[mf.constant(np.array([1.0, 0.0, 2.0],
                                                                       np.float32))])
    np.testing.assert_allclose(evaluate(g, dx, {x: np.array([1.0, 2.0, 3.0])}), [2, 0, 12])


def test_sign_has_tensorflows_zero_gradient_and_comparisons_have_none():
    """TF registers Sign's gradient as zeros (math_grad.py, _SignGrad), like torch's, so
    gradients(sign(x)) and abs's second derivative are zero tensors, not None; the
    comparisons are NotDifferentiable: None."""
    xv = np.array([-1.5, 0.25, 2.0])
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, [3])
        (d_sign,) = mf.gradients(mf.reduce_sum(mf.sign(x)), [x])
        (d_abs,) = mf.gradients(mf.reduce_sum(mf.abs(x)), [x])
        (d2_abs,) = mf.gradients(mf.reduce_sum(d_abs), [x])
        (d_xsign,) = mf.gradients(mf.reduce_sum(x * mf.sign(x)), [x])  # |x| another way
        compared = [mf.gradients(f(x, 1.0), [x])[0] for f in
                    (mf.less, mf.less_equal, mf.greater_equal, mf.not_equal)]
    assert compared == [None] * 4
    assert d_sign is not None and d2_abs is not None
    got = evaluate(g, [d_sign, d2_abs, d_xsign], {x: xv})
    t = torch.tensor(xv, requires_grad=True)
    (t_sign,) = torch.autograd.grad(torch.sign(t).sum(), t)
    (t_abs,) = torch.autograd.grad(torch.abs(t).sum(), t, create_graph=True)
    (t2_abs,) = torch.autograd.grad(t_abs.sum(), t)
    np.testing.assert_array_equal(got[0], t_sign.numpy(force=True))
    np.testing.assert_array_equal(got[1], t2_abs.numpy(force=True))
    np.testing.assert_array_equal(got[0], np.zeros(3))
    np.testing.assert_allclose(got[2], np.sign(xv))


def test_no_gradient_makes_an_op_a_dead_end_for_gradients():
    """After mf.no_gradient('T'), an op of type T passes no gradient to its inputs (other
    paths still do); without it, differentiating through T is a LookupError."""
    from systems.miniflow.op_def import OP_DEFS, OpDef, define, make_op

    for t in ("Doubled", "DoubledNoGrad"):
        if t not in OP_DEFS:
            define(OpDef(t, lambda ins, a: [(ins[0].dtype, ins[0].shape)],
                         lambda a, be, res: lambda x: x * 2))
    mf.no_gradient("DoubledNoGrad")
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [])
        y = make_op("DoubledNoGrad", [x * x]).outputs[0]
        (alone,) = mf.gradients(y, [x])
        (other_path,) = mf.gradients(y + 3.0 * x, [x])
        with pytest.raises(LookupError, match="No gradient defined for operation .*Doubled"):
            mf.gradients(make_op("Doubled", [x]).outputs[0], [x])
    assert alone is None
    assert evaluate(g, [y, other_path], {x: 2.0}) == [8.0, 3.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_where_gradients_match_torch_when_the_condition_broadcasts_and_g_is_inf(backend):
    c = np.array([[True], [False], [True], [False]])
    xv, yv = np.array([[0.0, 1.0, 4.0]]), np.array([[9.0, 0.0, 1.0]])
    g = mf.Graph()
    with g.as_default():
        x, y = mf.placeholder(mf.float64, [None, 3]), mf.constant(yv)
        out = mf.sqrt(mf.where(mf.constant(c), x, y))  # d sqrt at 0 is inf
        gx, gy = mf.gradients(mf.reduce_sum(out), [x, y])
    got_x, got_y = evaluate(g, [gx, gy], {x: xv}, backend)
    tx, ty = torch.tensor(xv, requires_grad=True), torch.tensor(yv, requires_grad=True)
    torch.sqrt(torch.where(torch.tensor(c), tx, ty)).sum().backward()
    np.testing.assert_array_equal(got_x, tx.grad.numpy())  # (1, 3), inf where taken
    np.testing.assert_array_equal(got_y, ty.grad.numpy())  # 0, not NaN, where not taken


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_gradient_of_a_one_input_concat_has_its_input_shape(backend):
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 2])
        (gx,) = mf.gradients(mf.reduce_sum(mf.concat([x], 0) * 3.0), [x])
    np.testing.assert_array_equal(evaluate(g, gx, {x: np.ones((3, 2), np.float32)}, backend),
                                  np.full((3, 2), 3.0))


SECOND_ORDER = {
    "slice": (lambda x: x[1:] ** 3.0, lambda x: x[1:] ** 3),
    "gather": (lambda x: mf.gather(x, np.array([0, 2])) ** 3.0, lambda x: x[[0, 2]] ** 3),
    "concat": (lambda x: mf.concat([x, x * x], 0) ** 2.0,
               lambda x: torch.cat([x, x * x], 0) ** 2),
    "xent": (lambda x: mf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=np.array([1, 0, 2, 1]), logits=x),
        lambda x: torch.nn.functional.cross_entropy(x, torch.tensor([1, 0, 2, 1]),
                                                    reduction="none")),
}


@pytest.mark.parametrize("case", sorted(SECOND_ORDER))
@pytest.mark.parametrize("static", [True, False])
def test_second_derivatives_match_torch(case, static):
    """d/dx of |dL/dx|^2 (a gradient penalty): the gradient ops of slicing, gather,
    concat and the cross-entropy were declared non-differentiable or dropped the term,
    so this came out None, 0, or short of a part."""
    build, ref = SECOND_ORDER[case]
    xv = np.random.default_rng(0).uniform(0.5, 1.5, (4, 3))
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, [4, 3] if static else [None, 3])
        (gx,) = mf.gradients(mf.reduce_sum(build(x)), [x])
        (ggx,) = mf.gradients(mf.reduce_sum(gx * gx), [x])
    tx = torch.tensor(xv, requires_grad=True)
    (tg,) = torch.autograd.grad(ref(tx).sum(), tx, create_graph=True)
    (tgg,) = torch.autograd.grad((tg * tg).sum(), tx)
    assert ggx is not None
    np.testing.assert_allclose(evaluate(g, ggx, {x: xv}), tgg.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batched_matmul_with_an_unknown_batch_has_gradients(backend):
    """x (?, T, D) @ W (D, H), the ordinary sequence batch: the gradient refused to build
    because x's batch size is unknown; it is found when the step runs."""
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5))
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, [None, 3, 4])
        w = mf.constant(wv)
        gx, gw = mf.gradients(mf.reduce_sum(mf.matmul(x, w) ** 2.0), [x, w])
    tx = torch.tensor(xv, requires_grad=True)
    tw = torch.tensor(wv, requires_grad=True)
    ((tx @ tw) ** 2).sum().backward()
    got_x, got_w = evaluate(g, [gx, gw], {x: xv}, backend)
    np.testing.assert_allclose(got_x, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got_w, tw.grad.numpy(), rtol=1e-12)


def test_add_gradient_to_an_unknown_dim_fed_as_1_against_a_known_dim():
    """x (?, 3) is fed as (1, 3) and broadcast against y (4, 3): x's gradient must be
    summed over axis 0 at run time (the static shapes cannot decide it). Oracle: torch."""
    rng = np.random.default_rng(0)
    xv, yv = rng.standard_normal((1, 3)), rng.standard_normal((4, 3))
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, [None, 3])
        y = mf.constant(yv)
        gx, gy = mf.gradients(mf.reduce_sum((x + y) * y), [x, y])
    tx = torch.tensor(xv, requires_grad=True)
    ty = torch.tensor(yv, requires_grad=True)
    ((tx + ty) * ty).sum().backward()
    got_x, got_y = evaluate(g, [gx, gy], {x: xv})
    np.testing.assert_allclose(got_x, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got_y, ty.grad.numpy(), rtol=1e-12)


def test_transpose_gradient_inverts_a_non_involutive_permutation():
    """perm (1, 2, 0) is not its own inverse: the gradient must use argsort(perm)."""
    rng = np.random.default_rng(1)
    xv = rng.standard_normal((2, 3, 4))
    wv = rng.standard_normal((3, 4, 2))
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, (2, 3, 4))
        (gx,) = mf.gradients(mf.reduce_sum(mf.transpose(x, (1, 2, 0)) * mf.constant(wv)), [x])
    tx = torch.tensor(xv, requires_grad=True)
    (tx.permute(1, 2, 0) * torch.tensor(wv)).sum().backward()
    np.testing.assert_allclose(evaluate(g, gx, {x: xv}), tx.grad.numpy(), rtol=1e-12)


def test_add_gradient_of_an_unknown_batch_column_against_a_row():
    """x (?, 1) + y (1, 4): the axes to sum for x (axis 1) are static although x's batch
    is not; x's gradient keeps its (?, 1) shape. Oracle: torch."""
    rng = np.random.default_rng(2)
    xv, yv = rng.standard_normal((5, 1)), rng.standard_normal((1, 4))
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, [None, 1])
        y = mf.constant(yv)
        (gx,) = mf.gradients(mf.reduce_sum(mf.square(x + y)), [x])
    tx = torch.tensor(xv, requires_grad=True)
    ((tx + torch.tensor(yv)) ** 2).sum().backward()
    got = evaluate(g, gx, {x: xv})
    assert got.shape == (5, 1)
    np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-12)


def test_mean_over_an_unknown_batch_to_a_vector_has_torchs_gradient():
    """reduce_mean(x, 0) of x (?, 3): the output (3,) is known, x's size is not; each
    element's gradient is 1/N, not 1/(3N). Oracle: torch."""
    rng = np.random.default_rng(3)
    xv, wv = rng.standard_normal((4, 3)), rng.standard_normal(3)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, [None, 3])
        (gx,) = mf.gradients(mf.reduce_sum(mf.reduce_mean(x, 0) * mf.constant(wv)), [x])
    tx = torch.tensor(xv, requires_grad=True)
    (tx.mean(0) * torch.tensor(wv)).sum().backward()
    np.testing.assert_allclose(evaluate(g, gx, {x: xv}), tx.grad.numpy(), rtol=1e-12)


def test_reduce_max_gradient_is_split_among_tied_maxima():
    """Ties share the gradient equally (TF's _MaxGrad; torch.amax does the same)."""
    xv = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, (2, 4))
        (gx,) = mf.gradients(mf.reduce_sum(mf.reduce_max(x, 1)), [x])
    tx = torch.tensor(xv, requires_grad=True)
    torch.amax(tx, 1).sum().backward()
    np.testing.assert_allclose(evaluate(g, gx, {x: xv}), tx.grad.numpy(), rtol=1e-12)


def test_batched_matmul_gradient_sums_over_a_broadcast_batch_of_one():
    """a (1, 3, 4) @ b (5, 4, 2): a's gradient is summed over the 5 batches to (1, 3, 4)."""
    rng = np.random.default_rng(4)
    av, bv = rng.standard_normal((1, 3, 4)), rng.standard_normal((5, 4, 2))
    g = mf.Graph()
    with g.as_default():
        a, b = mf.placeholder(mf.float64, (1, 3, 4)), mf.placeholder(mf.float64, (5, 4, 2))
        ga, gb = mf.gradients(mf.reduce_sum(mf.square(mf.matmul(a, b))), [a, b])
    ta, tb = torch.tensor(av, requires_grad=True), torch.tensor(bv, requires_grad=True)
    ((ta @ tb) ** 2).sum().backward()
    got_a, got_b = evaluate(g, [ga, gb], {a: av, b: bv})
    assert got_a.shape == (1, 3, 4)
    np.testing.assert_allclose(got_a, ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got_b, tb.grad.numpy(), rtol=1e-12)


def test_integer_tensors_never_receive_gradients():
    """TF backpropagates only through floating tensors: d(int expr)/d(int x) is None,
    even when every op on the path has a registered gradient."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.int32, [3])
        assert mf.gradients(x * x + x, [x]) == [None]


def test_gradients_are_built_in_the_graph_of_ys_not_the_default_one():
    """TF enters the graph of ys and xs; this used to look for paths in the default graph,
    return [None] and leave ops there."""
    g2 = mf.Graph()
    with g2.as_default():
        a = mf.constant(3.0, name="a")
        b = a * a
    default_ops = len(mf.get_default_graph().get_operations())
    (da,) = mf.gradients(b, a)  # outside g2.as_default()
    assert da is not None and da.graph is g2
    assert len(mf.get_default_graph().get_operations()) == default_ops
    with mf.Session(graph=g2) as s:
        assert s.run(da) == 6.0
    with mf.Graph().as_default():
        c = mf.constant(1.0)
        with pytest.raises(ValueError, match="xs .* is from a different graph"):
            mf.gradients(b, c)


def test_gradients_name_none_is_the_default_scope_and_no_ys_gives_nones():
    """name=None is TF's default "gradients" under the current scope (it briefly meant
    "the top level"); no ys at all is one None per x, whatever graph the xs are in."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [], name="x")
        with mf.name_scope("outer"):
            y = x * x
            (dx,) = mf.gradients(y, [x], name=None)
    assert dx.op.name.startswith("outer/gradients/"), dx.op.name
    assert mf.gradients([], [x]) == [None]


def test_the_gradient_wrt_a_tensor_never_differentiates_the_op_that_made_it():
    """A gradient penalty differentiated w.r.t. the gradient itself: dx is the output of
    Conv2DBackpropInput, which has no gradient. d(sum dx^2)/d dx = 2 dx needs none, but
    the op that made dx was differentiated anyway (a LookupError here; elsewhere, gradient
    ops nobody used). TF's _StopOps skips an x's op unless it depends on another x."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [1, 4, 4, 1])
        w = mf.Variable(np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1), name="w")
        dx, = mf.gradients(mf.reduce_sum(mf.nn.conv2d(x, w)), x)
        penalty = mf.reduce_sum(dx * dx)
        before = len(g.get_operations())
        g_dx, = mf.gradients(penalty, dx)
        assert not any("Conv2DBackpropInput_grad" in op.name
                       for op in g.get_operations()[before:])
        y = x * x
        z = y * 3.0
        gx, gy = mf.gradients(z, [x, y])  # y depends on x: its op is differentiated
    xv = np.random.default_rng(0).standard_normal((1, 4, 4, 1)).astype(np.float32)
    with mf.Session(graph=g) as s:
        s.run(w.initializer)
        dxv, gv, gxv, gyv = s.run([dx, g_dx, gx, gy], {x: xv})
    np.testing.assert_allclose(gv, 2 * dxv, rtol=1e-6)
    np.testing.assert_allclose(gxv, 6 * xv, rtol=1e-6)
    np.testing.assert_allclose(gyv, np.full_like(xv, 3.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_and_transpose_of_a_tensor_of_unknown_rank_train(backend):
    """``placeholder(float32)`` without a shape is the common TF1 idiom. The gradient of
    its matmul with a Variable died in a bare TypeError (the static shape of the
    gradient is unknown too), and ``transpose(x)`` of it could not be built (TF
    reverses the axes when the step runs)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32)
        w = mf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2), name="w")
        z = mf.matmul(x, w)
        y = mf.reduce_sum(z * mf.transpose(mf.transpose(z))) + \
            mf.reduce_sum(mf.transpose(x) @ z)
        (dw, dx) = mf.gradients(y, [w, x])
    xv = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    xt, wt = torch.tensor(xv, requires_grad=True), torch.tensor(
        np.arange(6, dtype=np.float32).reshape(3, 2), requires_grad=True)
    zt = xt @ wt
    yt = (zt * zt).sum() + (xt.T @ zt).sum()
    yt.backward()
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        s.run(w.initializer)
        got = s.run([y, dw, dx], {x: xv})
    np.testing.assert_allclose(got[0], yt.item(), rtol=1e-4)
    np.testing.assert_allclose(got[1], wt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[2], xt.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_grad_ys_are_one_per_y_and_become_tensors_of_its_dtype():
    """grad_ys were used as given: a Python list came back as the "gradient" itself, a
    numpy float64 array failed deep in ReluGrad, and too few were a bare IndexError."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        y = x * 2.0
        (same,) = mf.gradients(x, x, grad_ys=[[1.0, 2.0, 3.0]])
        (relu,) = mf.gradients(mf.nn.relu(x), x, grad_ys=[np.array([1.0, 2.0, 3.0])])
        v = mf.Variable(np.array([1.0, 2.0, 3.0], np.float32), name="gy")
        (var,) = mf.gradients(y, x, grad_ys=[v])  # a Variable is its value, as in TF
        with pytest.raises(ValueError, match="passed 1 grad_ys for 2 ys"):
            mf.gradients([y, y * 3.0], x, grad_ys=[mf.ones_like(y)])
        with pytest.raises(TypeError, match="grad_ys .* is int32, but its y .* is float32"):
            mf.gradients(y, x, grad_ys=[mf.constant([1, 2, 3])])
        with pytest.raises(ValueError, match=r"grad_ys .* has shape \(\), but its y .*"
                                             r"has shape \(3,\)"):
            mf.gradients(y, x, grad_ys=[1.0])  # failed inside Mul's gradient at run time
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        got = s.run([same, relu, var], {x: np.array([1.0, -1.0, 2.0], np.float32)})
    np.testing.assert_array_equal(got[0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(got[1], [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(got[2], [2.0, 4.0, 6.0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,padding", [(1, "VALID"), (2, "VALID"), (1, "SAME")])
def test_second_derivatives_through_conv_and_pooling_match_torch(backend, stride, padding):
    """A gradient penalty (the gradient's norm, differentiated again) through a conv,
    a max pool and an average pool: the backprop ops had no gradients of their own, so
    it failed to build. Oracle: torch's double backward."""
    rng = np.random.default_rng(0)
    xv, fv = rng.standard_normal((2, 9, 9, 3)), rng.standard_normal((3, 3, 3, 4)) * 0.3
    g = mf.Graph()
    with g.as_default():
        x, f = mf.placeholder(mf.float64, xv.shape), mf.placeholder(mf.float64, fv.shape)
        h = mf.nn.max_pool2d(mf.nn.conv2d(x, f, stride, padding), 2, 2, "VALID")
        a = mf.nn.avg_pool2d(h, 2, 1, "VALID")
        (gx,) = mf.gradients(mf.reduce_sum(a * a * a), [x])
        grads = mf.gradients(mf.reduce_sum(gx * gx), [f, x])
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        d_f, d_x = s.run(grads, {x: xv, f: fv})

    xt = torch.tensor(xv.transpose(0, 3, 1, 2), requires_grad=True)
    ft = torch.tensor(fv.transpose(3, 2, 0, 1), requires_grad=True)
    ht = torch.nn.functional.conv2d(xt, ft, stride=stride,
                                    padding="same" if padding == "SAME" else 0)
    at = torch.nn.functional.avg_pool2d(torch.nn.functional.max_pool2d(ht, 2, 2), 2, 1)
    (gxt,) = torch.autograd.grad((at ** 3).sum(), xt, create_graph=True)
    t_f, t_x = torch.autograd.grad((gxt ** 2).sum(), [ft, xt])
    np.testing.assert_allclose(d_f, t_f.numpy().transpose(2, 3, 1, 0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d_x, t_x.numpy().transpose(0, 2, 3, 1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (1, "VALID"),
                                            (2, "VALID")])
def test_the_gradient_of_a_filter_gradient_matches_torchs_double_backward(backend, stride,
                                                                          padding):
    """Conv2DBackpropFilter's own gradient (nn_grad.py), with respect to the input and to
    the upstream gradient: a penalty on the filter's gradient needs it, and the gradient
    penalty above goes through Conv2DBackpropInput only. SAME at stride 2 pads the odd
    extra row at the bottom, as TF. Oracle: torch's double backward."""
    rng = np.random.default_rng(stride)
    xv, fv = rng.standard_normal((2, 6, 5, 3)), rng.standard_normal((3, 2, 3, 4))
    g = mf.Graph()
    with g.as_default():
        x, f = mf.placeholder(mf.float64, xv.shape), mf.placeholder(mf.float64, fv.shape)
        y = mf.nn.conv2d(x, f, stride, padding)
        wv, vv = rng.standard_normal(tuple(y.shape)), rng.standard_normal(fv.shape)
        # fed, not constants: folded at plan time, the numpy kernels would do the work
        w, v = mf.placeholder(mf.float64, wv.shape), mf.placeholder(mf.float64, vv.shape)
        (df,) = mf.gradients(mf.reduce_sum(y * w), [f])
        assert df.op.type == "Conv2DBackpropFilter"
        grads = mf.gradients(mf.reduce_sum(df * v), [x, w])
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        d_x, d_w = s.run(grads, {x: xv, f: fv, w: wv, v: vv})

    xt, ft, wt = (torch.tensor(a, requires_grad=True) for a in (xv, fv, wv))
    xc = xt.permute(0, 3, 1, 2)
    if padding == "SAME":  # TF pads the odd extra at the bottom/right
        def pads(size, k):
            tot = max((-(-size // stride) - 1) * stride + k - size, 0)
            return tot // 2, tot - tot // 2
        (pt, pb), (pl, pr) = pads(6, 3), pads(5, 2)
        xc = torch.nn.functional.pad(xc, (pl, pr, pt, pb))
    yt = torch.nn.functional.conv2d(xc, ft.permute(3, 2, 0, 1), stride=stride)
    (dft,) = torch.autograd.grad((yt.permute(0, 2, 3, 1) * wt).sum(), ft, create_graph=True)
    t_x, t_w = torch.autograd.grad((dft * torch.tensor(vv)).sum(), [xt, wt])
    np.testing.assert_allclose(d_x, t_x.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d_w, t_w.numpy(), rtol=1e-9, atol=1e-9)
