"""Convolution, pooling, gather, cross-entropy, softmax along any axis, batched matmul,
casts, argmax, equal and one_hot on shapes and parameters drawn by hypothesis, on both
backends. The oracle is torch: its forward values and autograd gradients, with
TensorFlow's NHWC layout and SAME/VALID padding rules written out in the test."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import systems.miniflow as mf

from .helpers import BACKENDS, arrays, check_against_torch, evaluate, shapes

SETTINGS = settings(max_examples=8, deadline=None)
SEEDS = st.integers(0, 2**16)





def distinct(rng, shape, dtype=np.float64):
    """Values in [-2, 2) with no two equal: no ties for max_pool or argmax to break."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * (4.0 / max(n, 1)) - 2.0).astype(dtype)


# -- convolution and pooling ---------------------------------------------------------------

def tf_pads(size, k, stride, padding):
    """TF's padding before/after one spatial axis: SAME puts the odd extra at the end."""
    if padding == "VALID":
        return 0, 0
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


@st.composite
def windows(draw):
    """An NHWC input shape and a window (kernel, strides, padding) that fits it."""
    n, h, w, c = (draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6)),
                  draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    top = (h, w) if padding == "VALID" else (3, 3)  # VALID needs the window inside
    k = (draw(st.integers(1, min(3, top[0]))), draw(st.integers(1, min(3, top[1]))))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    as_tf1 = draw(st.booleans())  # TF1 spells strides (and ksize) [1, sh, sw, 1]
    return (n, h, w, c), k, s, padding, as_tf1


def pad_nchw(x, k, s, padding, value=0.0):
    """NHWC x as NCHW, padded as TF pads it for this window."""
    (pt, pb), (pl, pr) = (tf_pads(x.shape[1], k[0], s[0], padding),
                          tf_pads(x.shape[2], k[1], s[1], padding))
    return F.pad(x.permute(0, 3, 1, 2), (pl, pr, pt, pb), value=value)


def _tf1(pair, as_tf1):
    return [1, *pair, 1] if as_tf1 else list(pair)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(window=windows(), c_out=st.integers(1, 3), seed=SEEDS)
def test_conv2d(backend, window, c_out, seed):
    """Conv2D (NHWC, HWIO) and both its backprop ops vs torch's conv2d of the padded input."""
    shape, k, s, padding, as_tf1 = window
    rng = np.random.default_rng(seed)
    x, f = arrays(rng, shape), arrays(rng, (*k, shape[3], c_out))

    def t_conv(x, f):
        y = F.conv2d(pad_nchw(x, k, s, padding), f.permute(3, 2, 0, 1).contiguous(), stride=s)
        return y.permute(0, 2, 3, 1)
    check_against_torch(
        "conv2d", lambda a, b: mf.nn.conv2d(a, b, _tf1(s, as_tf1), padding), t_conv,
        [x, f], backend, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(window=windows(), seed=SEEDS)
def test_max_pool(backend, window, seed):
    """MaxPool and MaxPoolGrad vs torch's max_pool2d of the input padded with -inf."""
    shape, k, s, padding, as_tf1 = window
    x = distinct(np.random.default_rng(seed), shape)

    def t_pool(x):
        y = F.max_pool2d(pad_nchw(x, k, s, padding, value=-np.inf), k, s)
        return y.permute(0, 2, 3, 1)
    check_against_torch(
        "max_pool", lambda a: mf.nn.max_pool(a, _tf1(k, as_tf1), _tf1(s, as_tf1), padding), t_pool,
        [x], backend, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(window=windows(), seed=SEEDS)
def test_avg_pool(backend, window, seed):
    """AvgPool and AvgPoolGrad vs torch: each window's sum over its count of real inputs
    (TF leaves SAME's padding out of the average)."""
    shape, k, s, padding, as_tf1 = window
    x = arrays(np.random.default_rng(seed), shape)

    def t_pool(x):
        total = F.avg_pool2d(pad_nchw(x, k, s, padding), k, s, divisor_override=1)
        count = F.avg_pool2d(pad_nchw(torch.ones_like(x[..., :1]), k, s, padding), k, s,
                             divisor_override=1)
        return (total / count).permute(0, 2, 3, 1)
    check_against_torch(
        "avg_pool", lambda a: mf.nn.avg_pool(a, _tf1(k, as_tf1), _tf1(s, as_tf1), padding), t_pool,
        [x], backend, seed)


# -- gather, cross-entropy, softmax, batched matmul -----------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(shape=shapes(1, 3, 4), index_shape=shapes(0, 2, 4), data=st.data(), seed=SEEDS)
def test_gather(backend, shape, index_shape, data, seed):
    """GatherV2 along a random axis, repeated indices included, and its scatter-add
    gradient, vs torch's indexing with one integer tensor at that axis."""
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    dtype = data.draw(st.sampled_from([np.int32, np.int64]), label="index dtype")
    rng = np.random.default_rng(seed)
    x = arrays(rng, shape)
    idx = rng.integers(0, shape[axis], size=index_shape).astype(dtype)
    at = (slice(None),) * (axis % len(shape))
    check_against_torch(
        "gather", lambda a: mf.gather(a, mf.constant(idx), axis=axis),
        lambda a: a[(*at, torch.tensor(idx, dtype=torch.int64))], [x], backend, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(batch=st.integers(1, 6), classes=st.integers(1, 6),
       dtype=st.sampled_from([np.int32, np.int64]), seed=SEEDS)
def test_sparse_softmax_cross_entropy(backend, batch, classes, dtype, seed):
    """Per-example loss and its gradient for random integer labels vs F.cross_entropy."""
    rng = np.random.default_rng(seed)
    logits = arrays(rng, (batch, classes), -4.0, 4.0)
    labels = rng.integers(0, classes, size=batch)
    check_against_torch("sparse xent", lambda z: mf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=mf.constant(labels.astype(dtype)), logits=z),
        lambda z: F.cross_entropy(z, torch.tensor(labels), reduction="none"),
        [logits], backend, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@SETTINGS
@given(shape=shapes(1, 4, 4), data=st.data(), seed=SEEDS)
def test_softmax_along_a_random_axis(backend, name, shape, data, seed):
    """softmax / log_softmax along any axis (None: the last) vs torch's."""
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1), label="axis")
    x = arrays(np.random.default_rng(seed), shape, -4.0, 4.0)
    check_against_torch(
        name, lambda a: getattr(mf.nn, name)(a, axis=axis),
        lambda a: getattr(torch, name)(a, -1 if axis is None else axis), [x], backend, seed)


@st.composite
def batch_dims(draw):
    """Batch shapes of a and b that broadcast: one keeps every axis, the other may lose
    leading ones; either may have 1s."""
    full = draw(shapes(1, 2, 3))

    def variant(drop):
        start = draw(st.integers(0, len(full))) if drop else 0
        return tuple(1 if draw(st.booleans()) else d for d in full[start:])
    a, b = variant(False), variant(True)
    return (a, b) if draw(st.booleans()) else (b, a)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(batch=batch_dims(), mkn=st.tuples(*[st.integers(1, 4)] * 3),
       ta=st.booleans(), tb=st.booleans(), seed=SEEDS)
def test_batched_matmul(backend, batch, mkn, ta, tb, seed):
    """matmul with broadcast batch axes and transpose_a/b vs torch.matmul; the gradient
    sums over the axes an input was broadcast along."""
    (m, k, n), rng = mkn, np.random.default_rng(seed)
    a = arrays(rng, batch[0] + ((k, m) if ta else (m, k)))
    b = arrays(rng, batch[1] + ((n, k) if tb else (k, n)))
    check_against_torch(
        "matmul", lambda x, y: mf.matmul(x, y, transpose_a=ta, transpose_b=tb),
        lambda x, y: torch.matmul(x.mT if ta else x, y.mT if tb else y), [a, b], backend, seed)


# -- casts and the ops without a gradient ---------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("src,dst", [(np.float32, np.float64), (np.float64, np.float32)])
@SETTINGS
@given(shape=shapes(0, 3), seed=SEEDS)
def test_float_cast_and_its_gradient(backend, src, dst, shape, seed):
    """Cast between float32 and float64: the value, and the gradient cast back to the
    source dtype, vs torch's .to() under autograd."""
    rng = np.random.default_rng(seed)
    x, w = arrays(rng, shape, dtype=src), arrays(rng, shape, dtype=dst)
    g = mf.Graph()
    with g.as_default():
        xp, wp = mf.placeholder(mf.as_dtype(src), shape), mf.placeholder(mf.as_dtype(dst), shape)
        y = mf.cast(xp, dst)
        (dx,) = mf.gradients(mf.reduce_sum(mf.square(y) * wp), [xp])
    y_m, dx_m = evaluate(g, [y, dx], {xp: x, wp: w}, backend)
    xt = torch.tensor(x, requires_grad=True)
    yt = xt.to(mf.as_dtype(dst).torch_dtype)
    (yt.square() * torch.tensor(w)).sum().backward()
    assert (y_m.dtype, dx_m.dtype) == (np.dtype(dst), np.dtype(src))
    np.testing.assert_array_equal(y_m, yt.detach().numpy())
    np.testing.assert_allclose(dx_m, xt.grad.numpy(), rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("src,dst", [(np.float64, np.int32), (np.float32, np.int64),
                                     (np.float64, np.bool_), (np.int32, np.float64),
                                     (np.int64, np.float32), (np.bool_, np.int32)])
@SETTINGS
@given(shape=shapes(1, 3), seed=SEEDS)
def test_cast_forward(backend, src, dst, shape, seed):
    """Casts to and from integers and bools (truncation toward zero, nonzero is True)."""
    x = (np.random.default_rng(seed).integers(-8, 9, size=shape) / 2.0).astype(src)
    g = mf.Graph()
    with g.as_default():
        y = mf.cast(mf.constant(x), dst)
    got = evaluate(g, y, backend=backend)
    want = torch.tensor(x).to(mf.as_dtype(dst).torch_dtype).numpy()
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(shape=shapes(1, 3, 5), data=st.data(), seed=SEEDS)
def test_argmax(backend, shape, data, seed):
    """ArgMax along a random axis (None: axis 0, as TF1) of distinct values vs torch."""
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1), label="axis")
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int32]), label="dtype")
    out = data.draw(st.sampled_from([mf.int32, mf.int64]), label="output_type")
    n = int(np.prod(shape))
    x = (np.random.default_rng(seed).permutation(n).reshape(shape) - n // 2).astype(dtype)
    g = mf.Graph()
    with g.as_default():
        y = mf.argmax(mf.constant(x), axis, output_type=out)
    got = evaluate(g, y, backend=backend)
    assert got.dtype == out.np_dtype
    np.testing.assert_array_equal(got, torch.argmax(torch.tensor(x), 0 if axis is None
                                                    else axis).numpy())


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(shape=shapes(1, 3), data=st.data(), seed=SEEDS)
def test_equal_with_broadcasting(backend, shape, data, seed):
    """Equal of two broadcastable tensors of small integers (many equal pairs) vs torch."""
    other = tuple(1 if data.draw(st.booleans()) else d for d in
                  shape[data.draw(st.integers(0, len(shape) - 1)):])
    pair = (shape, other) if data.draw(st.booleans()) else (other, shape)
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
    rng = np.random.default_rng(seed)
    a, b = (rng.integers(0, 3, size=p).astype(dtype) for p in pair)
    g = mf.Graph()
    with g.as_default():
        y = mf.equal(mf.constant(a), mf.constant(b))
    got = evaluate(g, y, backend=backend)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, torch.eq(torch.tensor(a), torch.tensor(b)).numpy())


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(index_shape=shapes(0, 2, 4), depth=st.integers(1, 6),
       on_off=st.tuples(*[st.integers(-3, 3)] * 2),
       dtype=st.sampled_from([mf.float32, mf.float64, mf.int32]), seed=SEEDS)
def test_one_hot(backend, index_shape, depth, on_off, dtype, seed):
    """OneHot with random on/off values vs F.one_hot; an index outside [0, depth), which
    F.one_hot refuses, gives a row of off values as in TF."""
    idx = np.random.default_rng(seed).integers(-1, depth + 1, size=index_shape)
    on, off = on_off
    g = mf.Graph()
    with g.as_default():
        y = mf.one_hot(mf.constant(idx.astype(np.int32)), depth, on, off, dtype=dtype)
    got = evaluate(g, y, backend=backend)
    t = torch.tensor(idx)
    inside = ((t >= 0) & (t < depth)).unsqueeze(-1)
    hot = F.one_hot(t.clamp(0, depth - 1), depth).bool() & inside
    want = torch.where(hot, on, off).numpy().astype(dtype.np_dtype)
    assert got.dtype == dtype.np_dtype
    np.testing.assert_array_equal(got, want)


# -- reductions over every axis of a tensor of unknown rank ---------------------------------

@pytest.mark.parametrize("name", ["reduce_sum", "reduce_mean", "reduce_max"])
@settings(max_examples=2, deadline=None)
@given(shape=shapes(1, 3), seed=SEEDS)
def test_full_reduction_gradient_of_unknown_rank(name, shape, seed):
    """Reducing every axis of a placeholder of unknown rank differentiates, as in TF (the
    gradient used to call len() on the unknown shape while building the graph)."""
    x = distinct(np.random.default_rng(seed), shape)
    g = mf.Graph()
    with g.as_default():
        xp = mf.placeholder(mf.float64, None)
        (dx,) = mf.gradients(getattr(mf, name)(xp), [xp])
    xt = torch.tensor(x, requires_grad=True)
    {"reduce_sum": torch.sum, "reduce_mean": torch.mean, "reduce_max": torch.amax}[name](
        xt).backward()
    np.testing.assert_allclose(evaluate(g, dx, {xp: x}), xt.grad.numpy(), rtol=1e-12)
