"""Every op's forward value and gradient against torch autograd, on random shapes and on
both backends (numpy and torch), broadcasting included."""

import re
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import systems.miniflow as mf

from .helpers import (
    BACKENDS,
    arrays,
    broadcastable_pair,
    check_against_torch,
    evaluate,
    mf_grads,
    shapes,
    torch_grads,
)

SETTINGS = settings(max_examples=12, deadline=None)

BINARY = [
    ("add", lambda a, b: a + b, lambda a, b: a + b),
    ("sub", lambda a, b: a - b, lambda a, b: a - b),
    ("mul", lambda a, b: a * b, lambda a, b: a * b),
    ("div", lambda a, b: a / b, lambda a, b: a / b),
    ("maximum", mf.maximum, torch.maximum),
    ("minimum", mf.minimum, torch.minimum),
    ("pow", lambda a, b: mf.abs(a) ** b, lambda a, b: torch.abs(a) ** b),
]
UNARY = [
    ("neg", lambda a: -a, lambda a: -a),
    ("exp", mf.exp, torch.exp),
    ("log", lambda a: mf.log(mf.abs(a) + 0.5), lambda a: torch.log(torch.abs(a) + 0.5)),
    ("tanh", mf.tanh, torch.tanh),
    ("sigmoid", mf.sigmoid, torch.sigmoid),
    ("relu", mf.nn.relu, torch.relu),
    ("sqrt", lambda a: mf.sqrt(mf.abs(a) + 0.5), lambda a: torch.sqrt(torch.abs(a) + 0.5)),
    ("square", mf.square, torch.square),
    ("softmax", mf.nn.softmax, lambda a: torch.softmax(a, -1)),
    ("log_softmax", mf.nn.log_softmax, lambda a: torch.log_softmax(a, -1)),
    ("sum_all", mf.reduce_sum, torch.sum),
    ("mean_last_keep", lambda a: mf.reduce_mean(a, -1, keepdims=True),
     lambda a: a.mean(-1, keepdim=True)),
    ("max_first", lambda a: mf.reduce_max(a, 0), lambda a: a.amax(0)),
    ("min_last_keep", lambda a: mf.reduce_min(a, -1, keepdims=True),
     lambda a: a.amin(-1, keepdim=True)),
    ("transpose", mf.transpose, lambda a: a.permute(*reversed(range(a.dim())))),
    ("reshape", lambda a: mf.reshape(a, [-1]), lambda a: a.reshape(-1)),
    ("slice", lambda a: a[..., ::2], lambda a: a[..., ::2]),
    ("concat_self", lambda a: mf.concat([a, a * 2.0], axis=-1),
     lambda a: torch.cat([a, a * 2], -1)),
]


def _check(name, mf_fn, torch_fn, inputs, backend, rtol=1e-6):
    check_against_torch(name, mf_fn, torch_fn, inputs, backend, seed=0, rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,mf_fn,torch_fn", BINARY, ids=[b[0] for b in BINARY])
@SETTINGS
@given(pair=broadcastable_pair(), seed=st.integers(0, 1000))
def test_binary_ops_with_broadcasting(backend, name, mf_fn, torch_fn, pair, seed):
    rng = np.random.default_rng(seed)
    a, b = arrays(rng, pair[0]), arrays(rng, pair[1], 0.5, 2.0)
    if name in ("maximum", "minimum"):
        b = b + 1e-3 * np.sign(b - np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape))
                               .mean())  # keep ties (non-differentiable points) unlikely
    _check(name, mf_fn, torch_fn, [a, b], backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,mf_fn,torch_fn", UNARY, ids=[u[0] for u in UNARY])
@SETTINGS
@given(shape=shapes(1, 3), seed=st.integers(0, 1000))
def test_unary_ops_and_reductions(backend, name, mf_fn, torch_fn, shape, seed):
    _check(name, mf_fn, torch_fn, [arrays(np.random.default_rng(seed), shape)], backend)


EXTREMES = np.array([[-100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0]], np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,mf_fn,torch_fn", UNARY, ids=[u[0] for u in UNARY])
def test_unary_ops_keep_float32_and_agree_with_torch_at_large_inputs(backend, name, mf_fn,
                                                                     torch_fn):
    """The hypothesis test above draws float64 values in [-2, 2], where neither an
    overflow nor a change of dtype can show. On float32 out to +-100 every row must stay
    float32 and equal torch's float32 answer: inf only where torch overflows too (exp),
    finite where torch is (a softplus written as log(1 + exp(x)) gives inf at 100, and
    one computed in float64 returns float64: exercise 1's row is checked here too)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, EXTREMES.shape)
        y = mf_fn(x)
    with np.errstate(over="ignore"):
        got = evaluate(g, y, {x: EXTREMES}, backend)
    want = torch_fn(torch.from_numpy(EXTREMES)).numpy()
    assert got.dtype == np.float32, f"{name}: {got.dtype}"
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@SETTINGS
@given(m=st.integers(1, 5), k=st.integers(1, 5), n=st.integers(1, 5), seed=st.integers(0, 99))
def test_matmul_with_transposes(backend, ta, tb, m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = arrays(rng, (k, m) if ta else (m, k))
    b = arrays(rng, (n, k) if tb else (k, n))
    _check("matmul", lambda x, y: mf.matmul(x, y, transpose_a=ta, transpose_b=tb),
           lambda x, y: (x.T if ta else x) @ (y.T if tb else y), [a, b], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_matmul_broadcasts_the_batch(backend):
    rng = np.random.default_rng(0)
    a, b = arrays(rng, (3, 2, 4)), arrays(rng, (4, 5))
    _check("batch matmul", mf.matmul, torch.matmul, [a, b], backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
def test_gather_and_its_scatter_gradient(backend, axis):
    rng = np.random.default_rng(0)
    p = arrays(rng, (5, 4))
    idx = np.array([[0, 3], [3, 1]], np.int64)

    def mf_fn(x):
        return mf.gather(x, mf.constant(idx), axis=axis)

    def t_fn(x):
        return torch.index_select(x, axis, torch.tensor(idx.reshape(-1))).reshape(
            (2, 2, 4) if axis == 0 else (5, 2, 2))
    _check("gather", mf_fn, t_fn, [p], backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (1, "VALID"),
                                            (2, "VALID")])
@pytest.mark.parametrize("kw", [2, 3])  # 3x3 at stride 1: symmetric SAME, padded by the
def test_conv2d_matches_torch_including_tf_same_padding(backend, stride, padding, kw):
    rng = np.random.default_rng(stride)  # kernel itself; 3x2: one extra column, padded
    x, f = arrays(rng, (2, 7, 6, 3)), arrays(rng, (3, kw, 3, 4))

    def t_conv(x, f):
        xc = x.permute(0, 3, 1, 2)
        if padding == "SAME":  # TF pads the odd extra at the bottom/right
            def pads(size, k):
                out = -(-size // stride)
                tot = max((out - 1) * stride + k - size, 0)
                return tot // 2, tot - tot // 2
            (pt, pb), (pl, pr) = pads(7, 3), pads(6, kw)
            xc = torch.nn.functional.pad(xc, (pl, pr, pt, pb))
        y = torch.nn.functional.conv2d(xc, f.permute(3, 2, 0, 1), stride=stride)
        return y.permute(0, 2, 3, 1)
    _check("conv2d", lambda a, b: mf.nn.conv2d(a, b, stride, padding), t_conv, [x, f],
           backend, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pooling_valid(backend, pool):
    rng = np.random.default_rng(3)
    x = arrays(rng, (2, 6, 6, 3))
    mf_fn = (mf.nn.max_pool2d if pool == "max" else mf.nn.avg_pool2d)
    t_fn = (torch.nn.functional.max_pool2d if pool == "max" else
            torch.nn.functional.avg_pool2d)
    _check(pool, lambda a: mf_fn(a, 2, 2, "VALID"),
           lambda a: t_fn(a.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1), [x], backend)


@pytest.mark.parametrize("ksize,stride", [(2, 2), (3, 2), (3, 1)])
def test_max_pool_same_gradient_is_the_same_on_both_backends(ksize, stride):
    # SAME pads with -inf at the bottom/right; overlapping windows (3, stride 2 or 1) route
    # a gradient to an input once per window it wins. The numpy kernel is hand-written,
    # the torch one calls max_pool2d_with_indices_backward: they must agree.
    rng = np.random.default_rng(4)
    x = arrays(rng, (2, 7, 5, 3))
    w = arrays(rng, (2, -(-7 // stride), -(-5 // stride), 3))
    grads = {b: mf_grads(lambda a: mf.nn.max_pool2d(a, ksize, stride, "SAME"), [x], w, b)
             for b in BACKENDS}
    np.testing.assert_allclose(grads["torch"][0], grads["numpy"][0], rtol=1e-6)
    np.testing.assert_allclose(grads["torch"][1][0], grads["numpy"][1][0], rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_avg_pool_same_excludes_padding_from_the_average(backend):
    g = mf.Graph()
    with g.as_default():
        x = mf.constant(np.ones((1, 3, 3, 1)))
        y = mf.nn.avg_pool2d(x, 2, 2, "SAME")  # windows hanging over the edge
    from .helpers import evaluate

    np.testing.assert_allclose(evaluate(g, y, backend=backend), np.ones((1, 2, 2, 1)))


def _tf_same_pad_before(size, k, stride):
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2  # TF puts the odd extra row/column after, at the bottom/right


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ksize,stride", [(2, 2), (3, 2), (3, 1)])
def test_avg_pool_same_forward_and_gradient(backend, ksize, stride):
    """TF's SAME avg pool divides each window by its number of *valid* inputs. torch's
    avg_pool2d(count_include_pad=False) does too, with TF's leading padding given
    explicitly and ceil_mode adding the windows that hang over the bottom/right edge; its
    autograd is one oracle for the gradient, central differences are another."""
    rng = np.random.default_rng(5)
    x = arrays(rng, (2, 7, 5, 3))
    pad = (_tf_same_pad_before(7, ksize, stride), _tf_same_pad_before(5, ksize, stride))

    def t_pool(a):
        y = torch.nn.functional.avg_pool2d(a.permute(0, 3, 1, 2), ksize, stride, pad,
                                           ceil_mode=True, count_include_pad=False)
        return y.permute(0, 2, 3, 1)
    assert t_pool(torch.tensor(x)).shape == (2, -(-7 // stride), -(-5 // stride), 3)
    _check("avg_pool SAME", lambda a: mf.nn.avg_pool2d(a, ksize, stride, "SAME"), t_pool,
           [x], backend)
    # central differences of sum(w * avg_pool(x)), through a Session; w is fed, so that
    # AvgPoolGrad is not constant-folded (by the numpy kernel) but runs on ``backend``;
    # one image and one channel keep it to 70 runs
    x = x[:1, :, :, :1].copy()
    w = arrays(rng, (1, -(-7 // stride), -(-5 // stride), 1))
    g = mf.Graph()
    with g.as_default():
        xp, wp = mf.placeholder(mf.float64, x.shape), mf.placeholder(mf.float64, w.shape)
        loss = mf.reduce_sum(mf.nn.avg_pool2d(xp, ksize, stride, "SAME") * wp)
        (dx,) = mf.gradients(loss, [xp])
    eps = 1e-3  # the loss is linear in x: the difference quotient is exact up to rounding
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        got = s.run(dx, {xp: x, wp: w})
        types = [n[1] for n in s.plan_for(dx, {xp: None, wp: None}).snapshots["optimized"].nodes]
        assert "AvgPoolGrad" in types
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            xs = np.stack([x, x])
            xs[0][i] += eps
            xs[1][i] -= eps
            numeric[i] = (s.run(loss, {xp: xs[0], wp: w}) -
                          s.run(loss, {xp: xs[1], wp: w})) / (2 * eps)
    np.testing.assert_allclose(got, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_softmax_cross_entropy_matches_torch(backend):
    rng = np.random.default_rng(0)
    logits = arrays(rng, (5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    _check("xent", lambda z: mf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=mf.constant(labels.astype(np.int32)), logits=z),
        lambda z: torch.nn.functional.cross_entropy(z, torch.tensor(labels), reduction="none"),
        [logits], backend)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("bad", [-1, 4])
def test_sparse_softmax_cross_entropy_refuses_labels_out_of_range(dtype, bad):
    # as TF's CPU kernel does: a label outside [0, classes) is an error, not a silent
    # read of another row's logit
    from systems.miniflow.errors import InvalidArgumentError

    from .helpers import evaluate

    g = mf.Graph()
    with g.as_default():
        loss = mf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=mf.constant(np.array([0, bad, 1], dtype)),
            logits=mf.constant(np.zeros((3, 4), np.float32)))
    with pytest.raises(InvalidArgumentError, match=r"labels must be in \[0, 4\)"):
        evaluate(g, loss, backend="numpy")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_differentiable_ops_forward(backend):
    from .helpers import evaluate

    g = mf.Graph()
    a = np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 7.5]], np.float32)
    with g.as_default():
        x = mf.constant(a)
        outs = [mf.argmax(x, 1), mf.equal(x, 5.0), mf.cast(x, mf.int32), mf.one_hot(
            mf.constant(np.array([2, 0], np.int32)), 3), mf.shape(x), mf.size(x),
            mf.where(x > 2.0, x, -x)]
    got = evaluate(g, outs, backend=backend)
    np.testing.assert_array_equal(got[0], [1, 2])
    np.testing.assert_array_equal(got[1], a == 5)
    np.testing.assert_array_equal(got[2], a.astype(np.int32))
    np.testing.assert_array_equal(got[3], [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(got[4], [2, 3])
    assert got[5] == 6
    np.testing.assert_array_equal(got[6], np.where(a > 2, a, -a))


def evaluate_cfg(g, fetches, feeds, backend, folding):
    cfg = mf.ConfigProto(cpu_backend=backend,
                         graph_options=mf.GraphOptions(constant_folding=folding))
    with mf.Session(graph=g, config=cfg) as s:
        return s.run(fetches, feeds)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("folding", [True, False])
def test_integer_division_and_means_match_tensorflow_dtypes(backend, folding):
    """TF's truediv casts int32 to float64 first; reduce_mean and reduce_sum of ints stay
    ints (the mean divides like C++, toward zero). The static dtype must be the value's,
    with or without constant folding."""
    g = mf.Graph()
    with g.as_default():
        q = mf.constant([3, 4, -7]) / mf.constant([2, 2, 2])
        x = mf.placeholder(mf.int32, [2, 3])
        qx, m_all, m_rows, s = x / 2, mf.reduce_mean(x), mf.reduce_mean(x, 1), mf.reduce_sum(x)
    assert (q.dtype, qx.dtype) == (mf.float64, mf.float64)
    assert m_all.dtype == m_rows.dtype == s.dtype == mf.int32
    xv = np.array([[3, 4, 4], [-3, -4, -4]], np.int32)
    got = evaluate_cfg(g, [q, qx, m_all, m_rows, s], {x: xv}, backend, folding)
    tx = torch.tensor(xv)
    want = [torch.tensor([3, 4, -7]) / 2, tx / 2, torch.div(tx.sum(), 6, rounding_mode="trunc"),
            torch.div(tx.sum(1), 3, rounding_mode="trunc"), tx.sum()]
    for v, w, t in zip(got, want, [q, qx, m_all, m_rows, s], strict=True):
        assert np.asarray(v).dtype == t.dtype.np_dtype
        np.testing.assert_array_equal(v, w.numpy())


@pytest.mark.parametrize("fn", [mf.exp, mf.log, mf.tanh, mf.sigmoid, mf.sqrt])
def test_float_only_ops_refuse_integers_at_build_time(fn):
    with mf.Graph().as_default():
        with pytest.raises(TypeError) as e:
            fn(mf.constant([1, 2]))
    assert fn.__name__.capitalize() in str(e.value) and "test_ops.py:" in str(e.value)


def test_python_numbers_keep_their_value_or_are_refused():
    """A Python scalar takes the tensor's dtype only if that keeps its value (TF raises
    TypeError for int32 * 2.5); Python ints beyond int32 make int64 constants."""
    g = mf.Graph()
    with g.as_default():
        xi = mf.placeholder(mf.int32, [2])
        with pytest.raises(TypeError) as e:
            xi * 2.5
        assert "Mul" in str(e.value) and "2.5" in str(e.value)
        with pytest.raises(TypeError, match="out of range"):
            xi + 2**40
        with pytest.raises(TypeError):
            mf.constant(2.5, dtype=mf.int32)
        big, v = mf.constant(2**40), mf.Variable(2**40, name="big")
        assert big.dtype == v.dtype == mf.int64
        doubled = xi * 2
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        assert s.run(big) == 2**40 and s.run(v) == 2**40
        np.testing.assert_array_equal(s.run(doubled, {xi: [1, 2]}), [2, 4])


@pytest.mark.parametrize("op_type,build", [
    ("ConcatV2", lambda a: mf.concat([a, a], 2)),
    ("ConcatV2", lambda a: mf.concat([a, a], -3)),
    ("ArgMax", lambda a: mf.argmax(a, 5)),
    ("GatherV2", lambda a: mf.gather(a, mf.constant([0]), axis=3)),
    ("Sum", lambda a: mf.reduce_sum(a, 2)),
    ("Mean", lambda a: mf.reduce_mean(a, [0, -3])),
])
def test_out_of_range_axes_are_build_errors_naming_the_op(op_type, build):
    """TF accepts -rank <= axis < rank; anything else must not wrap to another axis."""
    with mf.Graph().as_default():
        a = mf.constant(np.zeros((2, 3), np.float32), name="a")
        with pytest.raises(mf.GraphBuildError) as e:
            build(a)
    msg = str(e.value)
    assert msg.startswith(f"{op_type}:") and "out of range" in msg
    assert "a:0 has shape (2, 3)" in msg and "test_ops.py:" in msg


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_axes_in_range_still_work(backend):
    av = np.arange(6, dtype=np.float32).reshape(2, 3)
    g = mf.Graph()
    with g.as_default():
        a = mf.constant(av)
        outs = [mf.concat([a, a], -2), mf.argmax(a, -1), mf.gather(a, mf.constant([2, 0]), axis=-1),
                mf.reduce_sum(a, -1)]
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        got = s.run(outs)
    t = torch.tensor(av)
    want = [torch.cat([t, t], -2), t.argmax(-1), t[:, [2, 0]], t.sum(-1)]
    for v, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(v, w.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn,torch_fn", [(mf.nn.softmax, torch.softmax),
                                         (mf.nn.log_softmax, torch.log_softmax)])
@pytest.mark.parametrize("axis", [0, 1, -2, 2, None])
def test_softmax_along_any_axis_and_its_gradient(backend, fn, torch_fn, axis):
    """TF1's tf.nn.softmax(logits, axis=None, name=None): a positional 1 is the axis."""
    rng = np.random.default_rng(0)
    x = arrays(rng, (2, 3, 4))
    weights = arrays(rng, (2, 3, 4))
    dim = -1 if axis is None else axis
    want, want_grads = torch_grads(lambda t: torch_fn(t, dim), [x], weights)
    got, grads = mf_grads(lambda t: fn(t, axis), [x], weights, backend)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[0], want_grads[0], rtol=1e-9, atol=1e-12)


def test_softmax_takes_its_name_by_keyword():
    with mf.Graph().as_default():
        y = mf.nn.softmax(mf.constant(np.zeros((2, 3), np.float32)), 0, name="probs")
        assert y.op.name == "probs"
        with pytest.raises(mf.GraphBuildError, match="Softmax: axis 2 is out of range"):
            mf.nn.softmax(mf.constant(np.zeros((2, 3), np.float32)), 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_div_is_python2_division_and_floordiv_rounds_down(backend):
    """TF1's tf.div: FloorDiv for integers, RealDiv for floats; // is FloorDiv."""
    xi, yi = np.array([7, -7, 6], np.int32), np.array([2, 2, -4], np.int32)
    xf = np.array([7.0, -7.0, 6.0], np.float32)
    g = mf.Graph()
    with g.as_default():
        a, b, f = mf.constant(xi), mf.placeholder(mf.int32, [3]), mf.placeholder(mf.float32, [3])
        outs = [mf.div(a, b), a // b, mf.div(f, 2.0), f // 2.0, mf.floordiv(a, 3)]
    assert [o.dtype for o in outs] == [mf.int32, mf.int32, mf.float32, mf.float32, mf.int32]
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        got = s.run(outs, {b: yi, f: xf})
    ti, tf_ = torch.tensor(xi), torch.tensor(xf)
    want = [torch.div(ti, torch.tensor(yi), rounding_mode="floor")] * 2 + \
        [tf_ / 2, torch.div(tf_, 2, rounding_mode="floor"), torch.div(ti, 3, rounding_mode="floor")]
    for v, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(v, w.numpy())


def test_sparse_xent_refuses_a_batch_mismatch_at_build_time():
    with mf.Graph().as_default():
        logits = mf.placeholder(mf.float32, [4, 10], name="logits")
        labels = mf.placeholder(mf.int32, [5], name="labels")
        with pytest.raises(mf.GraphBuildError) as e:
            mf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    msg = str(e.value)
    assert msg.startswith("SparseSoftmaxCrossEntropyWithLogits:") and "4 rows" in msg
    assert "5 labels" in msg and "test_ops.py:" in msg


# (op, what it says, every input it names, build): the shape functions' refusals in
# ops/array_ops.py, math_ops.py, nn_ops.py and state_ops.py that no other test reaches
MALFORMED = [
    ("Reshape", "at most one -1 in the new shape [-1, -1]", ["x:0 has shape (2, 3) (float32)"],
     lambda t: mf.reshape(t.x, [-1, -1])),
    ("ConcatV2", "inputs must share a dtype",
     ["x:0 has shape (2, 3) (float32)", "d:0 has shape (2, 3) (float64)"],
     lambda t: mf.concat([t.x, t.d], 0)),
    ("StridedSlice", "too many indices (3) for rank 2", ["x:0 has shape (2, 3) (float32)"],
     lambda t: t.x[0, 0, 0]),
    ("StridedSlice", "index 5 out of range for dimension 0 of size 2",
     ["x:0 has shape (2, 3) (float32)"], lambda t: t.x[5]),
    ("GatherV2", "indices must be integers", ["v:0 has shape (2,) (float32)"],
     lambda t: mf.gather(t.x, t.v)),
    ("AddN", "all inputs must have the same shape",
     ["x:0 has shape (2, 3) (float32)", "xt:0 has shape (3, 2) (float32)"],
     lambda t: mf.add_n([t.x, t.xt])),
    ("MatMul", "batch dimensions cannot broadcast",
     ["b:0 has shape (2, 2, 3) (float32)", "c:0 has shape (3, 3, 4) (float32)"],
     lambda t: mf.matmul(t.b, t.c)),
    ("Conv2D", "input has 2 channels but the filter expects 3",
     ["img:0 has shape (1, 4, 4, 2) (float32)", "k:0 has shape (1, 1, 3, 2) (float32)"],
     lambda t: mf.nn.conv2d(t.img, t.k, 1, "SAME")),
    ("MaxPool", "input must be NHWC (rank 4)", ["x:0 has shape (2, 3) (float32)"],
     lambda t: mf.nn.max_pool2d(t.x, 2, 1, "SAME")),
    ("Softmax", "axis 0 needs a tensor of known rank", ["u:0 has shape <unknown> (float32)"],
     lambda t: mf.nn.softmax(t.u, axis=0)),
    ("SparseSoftmaxCrossEntropyWithLogits", "labels must be integers",
     ["x:0 has shape (2, 3) (float32)"],
     lambda t: mf.nn.sparse_softmax_cross_entropy_with_logits(labels=t.x, logits=t.x)),
    ("Assign", "value shape differs from the variable's",
     ["var:0 has shape (2, 3) (float32)", "xt:0 has shape (3, 2) (float32)"],
     lambda t: t.var.assign(t.xt)),
]


@pytest.mark.parametrize("op_type,what,inputs,build", MALFORMED,
                         ids=[f"{m[0]}-{m[1].split()[0]}" for m in MALFORMED])
def test_malformed_ops_are_build_errors_naming_the_op_each_input_and_the_users_line(
        op_type, what, inputs, build):
    """Every refusal of a shape function reads "Op: what; each input's name, shape and
    dtype (at the user's file:line)", as TF's shape errors name the node and its input
    shapes: a bare numpy or torch error at run time would name none of them."""
    with mf.Graph().as_default():
        t = types.SimpleNamespace(
            x=mf.placeholder(mf.float32, [2, 3], name="x"),
            xt=mf.placeholder(mf.float32, [3, 2], name="xt"),
            d=mf.placeholder(mf.float64, [2, 3], name="d"),
            v=mf.placeholder(mf.float32, [2], name="v"),
            u=mf.placeholder(mf.float32, None, name="u"),
            b=mf.placeholder(mf.float32, [2, 2, 3], name="b"),
            c=mf.placeholder(mf.float32, [3, 3, 4], name="c"),
            img=mf.placeholder(mf.float32, [1, 4, 4, 2], name="img"),
            k=mf.placeholder(mf.float32, [1, 1, 3, 2], name="k"),
            var=mf.Variable(np.zeros((2, 3), np.float32), name="var"))
        with pytest.raises(mf.GraphBuildError) as e:
            build(t)
    msg = str(e.value)
    assert msg.startswith(f"{op_type}: {what}"), msg
    for described in inputs:
        assert described in msg, (described, msg)
    assert re.search(r"\(at .*test_ops\.py:\d+\)$", msg), msg


def test_a_lowercase_padding_and_an_integer_check_numerics_are_refused_as_in_tf():
    """TF raises a plain ValueError (conv2d's padding, before any op exists) and
    TypeError (check_numerics of a non-float) here, not a shape error."""
    with mf.Graph().as_default():
        img = mf.placeholder(mf.float32, [1, 4, 4, 2])
        with pytest.raises(ValueError, match="padding must be 'SAME' or 'VALID', got 'same'"):
            mf.nn.conv2d(img, mf.placeholder(mf.float32, [1, 1, 2, 2]), 1, "same")
        with pytest.raises(TypeError, match="check_numerics needs a floating-point tensor, "
                                            "got int32"):
            mf.check_numerics(mf.placeholder(mf.int32, [3]), "m")


@pytest.mark.parametrize("op_type,build", [
    ("SelectV2", lambda f, i, b: mf.where(f, f, f)),
    ("SelectV2", lambda f, i, b: mf.where(i, f, f)),
    ("LogicalAnd", lambda f, i, b: mf.logical_and(f, f)),
    ("LogicalAnd", lambda f, i, b: mf.logical_and(b, i)),
    ("LogicalOr", lambda f, i, b: mf.logical_or(f, b)),
    ("LogicalNot", lambda f, i, b: mf.logical_not(f)),
])
def test_select_and_logical_ops_refuse_non_bool_inputs_at_build_time(op_type, build):
    """TF's SelectV2 takes condition: bool and the logical ops x: bool only: a float or
    int there is a TypeError when the op is built, not numpy's "nonzero is True"."""
    with mf.Graph().as_default():
        f = mf.constant(np.array([1.0, 0.0], np.float32), name="f")
        i = mf.constant(np.array([1, 0], np.int32), name="i")
        b = mf.constant(np.array([True, False]), name="b")
        with pytest.raises(TypeError) as e:
            build(f, i, b)
    msg = str(e.value)
    assert msg.startswith(f"{op_type}:") and "bool" in msg and "has shape (2,)" in msg
    assert "test_ops.py:" in msg


@pytest.mark.parametrize("op_type,build", [
    ("Neg", lambda b, i: -b), ("Abs", lambda b, i: mf.abs(b)),
    ("Square", lambda b, i: mf.square(b)), ("Sign", lambda b, i: mf.sign(b)),
    ("Relu", lambda b, i: mf.nn.relu(b)), ("AddN", lambda b, i: mf.add_n([b, b])),
    ("MatMul", lambda b, i: mf.matmul(mf.reshape(b, [1, 2]), mf.reshape(b, [2, 1]))),
    ("ArgMax", lambda b, i: mf.argmax(b, 0)),
    ("AvgPool", lambda b, i: mf.nn.avg_pool2d(i, 1, 1, "VALID")),
])
def test_ops_tensorflow_registers_for_numbers_only_refuse_bools_at_build_time(op_type,
                                                                               build):
    """numpy computed something of another dtype than the graph said (square of a bool
    is int8, relu int64, add_n an OR; AvgPool of ints a truncated mean) and torch raised
    when the step ran: TF registers none of these ops for those dtypes."""
    with mf.Graph().as_default():
        b = mf.constant(np.array([True, False]), name="b")
        i = mf.constant(np.ones((1, 2, 2, 1), np.int32), name="i")
        with pytest.raises(TypeError) as e:
            build(b, i)
    msg = str(e.value)
    assert msg.startswith(f"{op_type}:") and "test_ops.py:" in msg


@pytest.mark.parametrize("backend", BACKENDS)
def test_select_and_logical_ops_on_bools_match_numpy(backend):
    from .helpers import evaluate

    p, q = np.array([True, False, True, False]), np.array([True, True, False, False])
    x, y = np.arange(4, dtype=np.float32), -np.arange(4, dtype=np.float32)
    g = mf.Graph()
    with g.as_default():
        tp, tq = mf.constant(p), mf.constant(q)
        outs = [mf.where(tp, mf.constant(x), mf.constant(y)), mf.logical_and(tp, tq),
                mf.logical_or(tp, tq), mf.logical_not(tp)]
    got = evaluate(g, outs, backend=backend)
    want = [np.where(p, x, y), p & q, p | q, ~p]
    for v, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(v, w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("bad", [-1, 5])
def test_gather_refuses_indices_out_of_range(backend, dtype, bad):
    """TF's CPU gather kernel raises InvalidArgument for an index outside [0, N)
    (gather_functor.h / gather_op.cc), where np.take would wrap -1 to the last row."""
    g = mf.Graph()
    with g.as_default():
        p = mf.constant(np.arange(10, dtype=np.float32).reshape(5, 2))
        idx = mf.placeholder(mf.as_dtype(dtype), [2, 2])
        y = mf.gather(p, idx)
    with mf.Session(graph=g, config=mf.ConfigProto(cpu_backend=backend)) as s:
        with pytest.raises(mf.InvalidArgumentError) as e:
            s.run(y, {idx: np.array([[0, 4], [bad, 2]], dtype)})
        ok = s.run(y, {idx: np.array([[0, 4], [3, 2]], dtype)})  # in range: unchanged
    msg = str(e.value)
    assert f"indices[1,0] = {bad} is not in [0, 5)" in msg and "(5, 2)" in msg
    assert "GatherV2" in msg and "test_ops.py:" in msg
    np.testing.assert_array_equal(ok, np.arange(10).reshape(5, 2)[[[0, 4], [3, 2]]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_out_of_range_indices_give_all_off_rows(backend):
    """TF's OneHot: an index outside [0, depth) gives a row of off_value, not an error."""
    from .helpers import evaluate

    iv = np.array([[-1, 2], [3, 7]], np.int32)
    g = mf.Graph()
    with g.as_default():
        y = mf.one_hot(mf.constant(iv), 3, on_value=5.0, off_value=-1.0)
    got = evaluate(g, y, backend=backend)
    want = np.where(iv[..., None] == np.arange(3), 5.0, -1.0).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[0, 0], [-1.0, -1.0, -1.0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("folding", [True, False])
@pytest.mark.parametrize("build", [lambda a, b: a // b, lambda a, b: mf.div(a, b),
                                   lambda a, b: (a * 2) // b + 1])  # fused into a chain
def test_integer_floordiv_by_zero_is_an_error_naming_the_op(backend, folding, build):
    """TF: "Integer division by zero" (cwise_ops_common.h), not numpy's 0 and a warning;
    with constant folding too, the error comes at run time with the user's line."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.int32, [3])
        outs = [build(x, mf.constant(np.array([2, 0, 1], np.int32))), build(mf.constant(7),
                                                                            mf.constant(0))]
    for out in outs:
        with pytest.raises(mf.InvalidArgumentError) as e:
            evaluate_cfg(g, out, {x: np.array([1, 2, 3], np.int32)}, backend, folding)
        msg = str(e.value)
        assert "Integer division by zero" in msg and "of type FloorDiv" in msg
        assert "test_ops.py:" in msg


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_mean_of_an_empty_axis_is_zero_without_a_warning(backend):
    """TF fills an empty reduction with MeanReducer's identity, NumTraits<int>::quiet_NaN()
    == 0 (reduction_ops.h); numpy used to divide by zero and warn."""
    import warnings

    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.int32, [0, 3])
        m0, m_all = mf.reduce_mean(x, 0), mf.reduce_mean(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = evaluate_cfg(g, [m0, m_all], {x: np.zeros((0, 3), np.int32)}, backend, False)
    t = torch.zeros((0, 3), dtype=torch.int32)
    np.testing.assert_array_equal(got[0], t.sum(0, dtype=torch.int32).numpy())
    assert got[1] == 0 and np.asarray(got[1]).dtype == np.int32


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_of_an_empty_axis_is_the_lowest_value_as_in_tensorflow(backend):
    """TF fills an empty Max with the reducer's identity (-inf for floats, the lowest
    integer); numpy and torch each raised, with messages that disagreed."""
    g = mf.Graph()
    with g.as_default():
        i = mf.placeholder(mf.int32, [None, None])
        f = mf.placeholder(mf.float32, [None, None])
        outs = [mf.reduce_max(i, 1), mf.reduce_max(f, 1, keepdims=True), mf.reduce_max(f),
                mf.reduce_max(f, 0)]
    got = evaluate_cfg(g, outs, {i: np.zeros((3, 0), np.int32),
                                 f: np.zeros((2, 0), np.float32)}, backend, False)
    np.testing.assert_array_equal(got[0], np.full(3, -2**31, np.int32))
    assert got[0].dtype == np.int32 and got[1].dtype == np.float32
    np.testing.assert_array_equal(got[1], np.full((2, 1), -np.inf, np.float32))
    assert got[2] == -np.inf and np.asarray(got[3]).shape == (0,)
    with g.as_default():  # Min's identity: the highest value (TF's MinReducer)
        lows = [mf.reduce_min(i, 1), mf.reduce_min(f)]
    got = evaluate_cfg(g, lows, {i: np.zeros((3, 0), np.int32),
                                 f: np.zeros((2, 0), np.float32)}, backend, False)
    np.testing.assert_array_equal(got[0], np.full(3, 2**31 - 1, np.int32))
    assert got[1] == np.inf


@pytest.mark.parametrize("backend", BACKENDS)
def test_sign_and_comparisons_match_numpy(backend):
    """Fed, not constant, so that the kernels of ``backend`` run (constants would be
    folded by numpy's at plan time)."""
    from .helpers import evaluate

    xf = np.array([[-2.5, 0.0, 3.0], [1.0, -1e-30, 7.0]], np.float32)
    yf = np.array([1.0, 0.0, 3.0], np.float32)  # broadcast along the rows
    xi = np.array([-3, 0, 7], np.int32)
    g = mf.Graph()
    with g.as_default():
        x, y = mf.placeholder(mf.float32, [2, 3]), mf.placeholder(mf.float32, [3])
        i = mf.placeholder(mf.int32, [3])
        outs = [mf.sign(x), mf.sign(i), mf.less(x, y), mf.less_equal(x, y),
                mf.greater_equal(x, y), mf.not_equal(x, y), mf.less(i, 0),
                mf.less_equal(i, 0), mf.greater_equal(i, 0), mf.not_equal(i, 0),
                x < y, x <= y, x >= y]
    assert [o.dtype for o in outs] == [mf.float32, mf.int32] + [mf.bool] * 11
    assert outs[2].shape == (2, 3)
    got = evaluate(g, outs, {x: xf, y: yf, i: xi}, backend)
    want = [np.sign(xf), np.sign(xi), xf < yf, xf <= yf, xf >= yf, xf != yf, xi < 0,
            xi <= 0, xi >= 0, xi != 0, xf < yf, xf <= yf, xf >= yf]
    for k, (v, w) in enumerate(zip(got, want, strict=True)):
        assert np.asarray(v).dtype == w.dtype, k
        np.testing.assert_array_equal(v, w, err_msg=str(k))


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_to_and_its_gradient(backend):
    """The gradient sums over the broadcast axes (torch's expand), also for a target shape
    known only at run time."""
    from .helpers import evaluate

    a = arrays(np.random.default_rng(6), (3, 1))
    _check("broadcast_to", lambda t: mf.broadcast_to(t, [2, 3, 4]),
           lambda t: t.expand(2, 3, 4), [a], backend)
    g = mf.Graph()
    with g.as_default():
        x, s = mf.placeholder(mf.float64, [3]), mf.placeholder(mf.int32, [2])
        y = mf.broadcast_to(x, s)
        (dx,) = mf.gradients(mf.reduce_sum(y * y), [x])
    assert y.shape == (None, None)
    xv = np.array([1.0, -2.0, 0.5])
    yv, dxv = evaluate(g, [y, dx], {x: xv, s: np.array([4, 3], np.int32)}, backend)
    np.testing.assert_array_equal(yv, np.broadcast_to(xv, (4, 3)))
    np.testing.assert_allclose(dxv, 4 * 2 * xv)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zeros_like_keeps_shape_and_dtype_and_passes_no_gradient(backend):
    """TF's ZerosLike is not differentiable: x + zeros_like(x) has x's gradient, and
    zeros_like(x) alone has none."""
    from .helpers import evaluate

    g = mf.Graph()
    with g.as_default():
        x, i = mf.placeholder(mf.float64, [None, 3]), mf.placeholder(mf.int32, [2])
        zx, zi = mf.zeros_like(x), mf.zeros_like(i)
        (dx,) = mf.gradients(mf.reduce_sum(x * 2.0 + mf.zeros_like(x)), [x])
        (none,) = mf.gradients(mf.reduce_sum(mf.zeros_like(x)), [x])
    assert (zx.dtype, zx.shape, zi.dtype, zi.shape) == (mf.float64, (None, 3), mf.int32, (2,))
    assert none is None
    xv = np.arange(6.0).reshape(2, 3) + 1
    zxv, ziv, dxv = evaluate(g, [zx, zi, dx], {x: xv, i: np.array([4, 5], np.int32)}, backend)
    assert zxv.dtype == np.float64 and ziv.dtype == np.int32
    np.testing.assert_array_equal(zxv, np.zeros((2, 3)))
    np.testing.assert_array_equal(ziv, [0, 0])
    np.testing.assert_array_equal(dxv, np.full((2, 3), 2.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", [(slice(1, None, 2), Ellipsis, None, -1),
                                 (-1, slice(None, None, -2)),
                                 (slice(None), 2, slice(5, 0, -2))],
                         ids=["step-ellipsis-newaxis-int", "int-reversed", "negative-step"])
def test_indexing_matches_numpy_indexing(backend, key):
    """x[key] (one StridedSlice op): value and static shape as numpy's basic indexing,
    gradient the weights scattered back into zeros (negative steps: torch has none, so
    numpy is the oracle)."""
    rng = np.random.default_rng(7)
    a = arrays(rng, (4, 5, 6))
    want = a[key]
    w = arrays(rng, want.shape)
    with mf.Graph().as_default():
        assert mf.placeholder(mf.float64, a.shape)[key].shape == want.shape
    got, (grad,) = mf_grads(lambda t: t[key], [a], w, backend)
    want_grad = np.zeros_like(a)
    want_grad[key] = w
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 4, 3)])
def test_bias_add_adds_along_the_last_axis(backend, shape):
    rng = np.random.default_rng(8)
    _check("bias_add", mf.nn.bias_add, lambda v, b: v + b,
           [arrays(rng, shape), arrays(rng, (3,))], backend)


@pytest.mark.parametrize("bias_shape,value_shape,message", [
    ((1,), (5, 3), "bias has 1 elements but value's last dimension is 3"),
    ((1, 3), (5, 3), "bias must be 1-D"),
    ((3,), (3,), "value must be at least 2-D"),
])
def test_bias_add_refuses_what_tensorflow_refuses(bias_shape, value_shape, message):
    """TF's BiasAdd takes a 1-D bias as long as value's last dimension, nothing that
    merely broadcasts: a (1,) bias is an error, not a scalar added everywhere."""
    with mf.Graph().as_default():
        v = mf.placeholder(mf.float32, value_shape, name="v")
        b = mf.constant(np.zeros(bias_shape, np.float32), name="b")
        with pytest.raises(mf.GraphBuildError) as e:
            mf.nn.bias_add(v, b)
    assert str(e.value).startswith("BiasAdd:") and message in str(e.value)
    assert "test_ops.py:" in str(e.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_tf1_pool_aliases_take_four_element_ksize_and_strides(backend, pool):
    """tf.nn.max_pool / tf.nn.avg_pool take ksize=[1, kh, kw, 1], strides=[1, sh, sw, 1]."""
    x = arrays(np.random.default_rng(9), (2, 6, 7, 3))
    mf_fn = mf.nn.max_pool if pool == "max" else mf.nn.avg_pool
    t_fn = (torch.nn.functional.max_pool2d if pool == "max" else
            torch.nn.functional.avg_pool2d)
    _check(pool, lambda a: mf_fn(a, [1, 3, 2, 1], [1, 2, 1, 1], "VALID"),
           lambda a: t_fn(a.permute(0, 3, 1, 2), (3, 2), (2, 1)).permute(0, 2, 3, 1),
           [x], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_computation_round_trip(backend):
    """A float16 placeholder stays float16 through arithmetic with Python numbers, a
    reduction and a fetch; values as numpy computes them in float16."""
    from .helpers import evaluate

    xv = np.array([0.1, -2.5, 3.0, 1000.0], np.float16)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float16, [4])
        y = x * 2.0 + 1.0
        s = mf.reduce_sum(y)
        m = mf.maximum(y, 0.0)
        up = mf.cast(y, mf.float32)
        down = mf.cast(mf.constant(np.float32(1 / 3)), mf.float16)
    assert [t.dtype for t in (y, s, m, up, down)] == [mf.float16] * 3 + [mf.float32,
                                                                         mf.float16]
    yv, sv, mv, upv, downv = evaluate(g, [y, s, m, up, down], {x: xv}, backend)
    want = xv * np.float16(2) + np.float16(1)
    assert [np.asarray(v).dtype for v in (yv, sv, mv, upv, downv)] == [np.float16] * 3 + [
        np.float32, np.float16]
    np.testing.assert_array_equal(yv, want)
    np.testing.assert_array_equal(mv, np.maximum(want, np.float16(0)))
    np.testing.assert_array_equal(upv, want.astype(np.float32))
    assert downv == np.float16(1 / 3)
    np.testing.assert_allclose(np.float32(sv), want.astype(np.float32).sum(), rtol=1e-3)


def test_where_takes_a_python_number_in_the_other_sides_dtype():
    g = mf.Graph()
    with g.as_default():
        for dt in (mf.float64, mf.float16, mf.int64):
            x = mf.placeholder(dt, [2])
            assert mf.where(mf.constant([True, False]), x, 0).dtype == dt


@pytest.mark.parametrize("build, op", [
    (lambda b: mf.reduce_mean(b), "Mean"), (lambda b: mf.reduce_sum(b), "Sum"),
    (lambda b: mf.add(b, b), "Add"),
    (lambda b: mf.softmax(mf.cast(b, mf.int32)), "Softmax")])
def test_ops_refuse_dtypes_they_would_compute_nonsense_for(build, op):
    """mean(equal(pred, y)) read 0.25 for 3 of 4 right; TF refuses bool here."""
    g = mf.Graph()
    with g.as_default():
        b = mf.equal(mf.constant([1, 2, 3, 4]), mf.constant([1, 2, 3, 0]))
        with pytest.raises(TypeError, match=f"{op}: needs"):
            build(b)
        acc = mf.reduce_mean(mf.cast(b, mf.float32))
    assert evaluate(g, acc) == 0.75


def test_a_constant_copies_the_callers_array():
    """It kept the array, made it read-only, and followed writes through its base."""
    base = np.zeros(4, np.float32)
    g = mf.Graph()
    with g.as_default():
        c = mf.constant(base[:3])
    base[:] = 7.0  # the caller's array is still its own, and writable
    np.testing.assert_array_equal(evaluate(g, c), np.zeros(3))


def test_shape_errors_at_build_time_name_the_op():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [1, 3, 3, 2], name="img")
        with pytest.raises(mf.errors.GraphBuildError, match=r"BroadcastTo: cannot .*\(4, 5\)"):
            mf.broadcast_to(mf.placeholder(mf.float32, [2, 3]), [4, 5])
        with pytest.raises(mf.errors.GraphBuildError, match="Conv2D: a 5x5 window is larger"):
            mf.nn.conv2d(x, mf.constant(np.zeros((5, 5, 2, 4), np.float32)), padding="VALID")
        with pytest.raises(mf.errors.GraphBuildError, match="MaxPool: a 5x5 window"):
            mf.nn.max_pool2d(x, 5, 1, "VALID")
        with pytest.raises(mf.errors.GraphBuildError, match="StridedSlice: slice step cannot"):
            x[::0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_values_feed_ordinary_ops_on_every_backend(backend):
    """Shape and Size answer on the host; on the torch backend (a GPU's) the usual
    dynamic reshape, reshape(x, concat([shape(x)[:1], [-1]])), failed, and Size + Size
    came back int64 against a declared int32."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 2, 3])
        flat = mf.reshape(x, mf.concat([mf.shape(x)[:1], [-1]], 0))
        n2 = mf.size(x) + mf.size(x)
        doubled = mf.shape(x) * 2
    flat_v, n2_v, d_v = evaluate(g, [flat, n2, doubled], {x: np.ones((4, 2, 3), np.float32)},
                                 backend)
    assert flat_v.shape == (4, 6) and np.asarray(n2_v).dtype == np.int32 and int(n2_v) == 48
    np.testing.assert_array_equal(np.asarray(d_v), [8, 4, 6])


def test_incompatible_static_shapes_are_an_error_naming_the_op_when_built():
    """(2, 3) + (4, 3) cannot broadcast: an error at graph build (shape inference), naming
    the op and the dimension, not a numpy error at run time."""
    g = mf.Graph()
    with g.as_default():
        a = mf.placeholder(mf.float32, (2, 3))
        b = mf.placeholder(mf.float32, (4, 3))
        with pytest.raises(ValueError, match=r"Add.*cannot be broadcast.*dimension -2 is 2 vs 4"):
            a + b
        c = mf.placeholder(mf.float32, (None, 3))
        assert (c + b).shape == (4, 3)  # unknown meets known: still fine


def test_strided_slice_takes_tfs_begin_end_and_strides():
    """tf.strided_slice's own doc examples. It was x[key] under TF's name: TF's call was a
    TypeError, and with tuples begin was read as an index (one element) and end as the
    op's name."""
    t = np.array([[[1, 1, 1], [2, 2, 2]], [[3, 3, 3], [4, 4, 4]], [[5, 5, 5], [6, 6, 6]]])
    g = mf.Graph()
    with g.as_default():
        x = mf.constant(t)
        a = mf.strided_slice(x, [1, 0, 0], [2, 1, 3], [1, 1, 1])
        b = mf.strided_slice(x, (1, 0, 0), (2, 2, 3))
        c = mf.strided_slice(x, [1, -1, 0], [2, -3, 3], [1, -1, 1])
        with pytest.raises(TypeError, match="begin, end and strides must be lists"):
            mf.strided_slice(x, [1, 0], [2, 1, 3])
    assert evaluate(g, a).tolist() == [[[3, 3, 3]]]
    assert evaluate(g, b).tolist() == [[[3, 3, 3], [4, 4, 4]]]
    assert evaluate(g, c).tolist() == [[[4, 4, 4], [3, 3, 3]]]
