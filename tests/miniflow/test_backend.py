"""The backend seam where values cross devices: a torch tensor arriving at the numpy CPU
executor, and a host value (a count, a shape) arriving at a torch kernel. Both broke the
first run on a real GPU (2026-11-27, H200): numpy cannot read a CUDA tensor in place, and
a numpy scalar has no ``.to``. Also the torch backend's own traps, where torch's
semantics differ from TF's (negative slice steps, ``dim=()``, one_hot of -1): numpy is
the oracle."""

import numpy as np
import pytest
import torch

import systems.miniflow as mf
from systems.miniflow.backend import NUMPY
from systems.miniflow.backend_torch import torch_backend
from systems.miniflow.dtypes import float32

from .helpers import BACKENDS, evaluate


def test_numpy_backend_copies_a_torch_value_to_the_host_explicitly():
    # A tensor that requires grad refuses numpy's implicit conversion, as a CUDA tensor
    # does: the backend must detach and copy instead of calling np.asarray on it.
    t = torch.arange(3.0, requires_grad=True) * 2
    with pytest.raises((TypeError, RuntimeError)):
        np.asarray(t)
    got = NUMPY.to_numpy(t)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, [0.0, 2.0, 4.0])


def test_torch_backend_casts_a_host_scalar_into_a_tensor():
    be = torch_backend("cpu")
    got = be.cast(np.int32(256), float32)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert got.item() == 256.0



def test_relu_grad_keeps_a_nan_where_the_unit_is_off_as_tf_does_on_both_backends():
    """TF's ReluGrad multiplies by (features > 0) (relu_op_functor.h), so a NaN or Inf
    upstream gradient stays NaN where the unit is off and check_numerics still sees it;
    a select (torch's threshold_backward) would turn it into 0."""
    g = np.array([np.nan, np.inf, 1.0, np.nan], np.float32)
    x = np.array([-1.0, -2.0, 3.0, 4.0], np.float32)
    with np.errstate(invalid="ignore"):  # inf * 0 is the NaN being tested
        want = g * (x > 0)  # [nan, nan, 1, nan]
        host = NUMPY.relu_grad(g, x)
    got = torch_backend("cpu").relu_grad(torch.from_numpy(g), torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(host, want)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_training_on_the_gpu_matches_the_cpu(model):
    from systems.miniflow import digits
    from systems.miniflow.session import Session

    Xtr, _, ytr, _ = digits.load_split()
    losses = {}
    for dev in ("cpu", "cuda"):
        m = digits.build(model, dev)
        with Session(graph=m["graph"]) as s:
            s.run(m["init"])
            feed = {m["x"]: Xtr[:256], m["y"]: ytr[:256]}
            for _ in range(3):
                s.run(m["train"], feed)
            losses[dev] = float(s.run(m["loss"], feed))
    assert abs(losses["cuda"] - losses["cpu"]) < 1e-3 * abs(losses["cpu"])


def test_the_conv_shape_cache_keeps_a_few_shapes_however_many_batch_sizes_pass():
    """The backend outlives sessions; with a batch of unknown size every size is a new
    shape, and each cached stand-in holds an input-sized tensor: the cache is bounded,
    and a gradient computed after eviction is still right (numpy is the oracle)."""
    from systems.miniflow import conv

    tc = conv.TorchConv(torch)
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    for n in range(1, 3 * conv.SHAPE_CACHE):
        dy = rng.standard_normal((n, 6, 6, 5)).astype(np.float32)
        got = tc.conv2d_backprop_input((n, 6, 6, 4), torch.from_numpy(f),
                                       torch.from_numpy(dy), (1, 1), "SAME")
        assert len(tc._shapes) <= conv.SHAPE_CACHE
    want = conv.conv2d_backprop_input((n, 6, 6, 4), f, dy, (1, 1), "SAME")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", [(..., slice(None, None, -1)),
                                   (None, slice(None), slice(None, None, -2)),
                                   (slice(None, None, -1), ..., 1),
                                   (0, None, ..., slice(None, None, -1)),
                                   (slice(3, 0, -2), None, slice(None, None, -1))],
                         ids=["x[..., ::-1]", "x[None, :, ::-2]", "x[::-1, ..., 1]",
                              "x[0, None, ..., ::-1]", "x[3:0:-2, None, ::-1]"])
def test_negative_steps_beside_an_ellipsis_or_a_new_axis_slice_as_numpy_does(backend,
                                                                             index):
    """torch refuses negative slice steps: the torch backend takes the same elements with
    positive steps and flips the output dimensions afterwards, which it must count past
    ``...`` (several dimensions) and ``None`` (a new one, no input dimension). The
    gradient (the slice's values scattered back into zeros) goes the same way. Oracle:
    numpy's basic indexing."""
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((4, 3, 5))
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, xv.shape)
        y = x[index]
        w = mf.placeholder(mf.float64, y.shape)
        (dx,) = mf.gradients(mf.reduce_sum(y * w), [x])
    wv = rng.standard_normal(xv[index].shape)
    got, grad = evaluate(g, [y, dx], {x: xv, w: wv}, backend)
    want_grad = np.zeros_like(xv)
    want_grad[index] = wv  # basic indexing: no element twice
    np.testing.assert_array_equal(got, xv[index])
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_with_keepdims_argmax_and_one_hot_agree_with_numpy_on_both_backends(backend):
    """Fed, so that the torch kernels run (a constant input is folded by the numpy kernel
    at plan time): a max over every axis with keepdims keeps rank 3, argmax along a
    negative axis, and TF's OneHot, where an index outside [0, depth) (-1 too, not the
    last class) is a row of off_value."""
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((2, 3, 4)).astype(np.float32)
    iv = np.array([[0, -1], [2, 3]], np.int32)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 3, 4])
        i = mf.placeholder(mf.int32, [2, 2])
        fetch = [mf.reduce_max(x, keepdims=True), mf.argmax(x, 1), mf.argmax(x, -1),
                 mf.argmax(x, -3), mf.one_hot(i, 3), mf.one_hot(i, 3, on_value=5.0,
                                                                off_value=-1.0)]
    got = evaluate(g, fetch, {x: xv, i: iv}, backend)
    want = [xv.max(keepdims=True), xv.argmax(1), xv.argmax(-1), xv.argmax(0),
            (iv[..., None] == np.arange(3)).astype(np.float32),
            np.where(iv[..., None] == np.arange(3), 5.0, -1.0).astype(np.float32)]
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert got[1].dtype == np.int64 and got[4].dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", [mf.reduce_sum, mf.reduce_mean, mf.reduce_max,
                                    mf.reduce_min])
def test_a_reduction_over_an_empty_axis_list_returns_its_input_on_both_backends(backend,
                                                                                reduce):
    """TF reduces over no axis at all: the input, unchanged, and so is the gradient.
    torch's ``dim=()`` reduces over EVERY axis instead (a classic trap), so the torch
    backend must not pass it on. Oracle: numpy, whose ``axis=()`` is the identity."""
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((2, 3)).astype(np.float32)
    wv = rng.standard_normal((2, 3)).astype(np.float32)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2, 3])
        w = mf.placeholder(mf.float32, [2, 3])
        y = reduce(x, axis=[])
        (dx,) = mf.gradients(mf.reduce_sum(y * w), [x])
    got, grad = evaluate(g, [y, dx], {x: xv, w: wv}, backend)
    assert y.shape == (2, 3) and got.shape == (2, 3)
    np.testing.assert_array_equal(got, xv)
    np.testing.assert_allclose(grad, wv, rtol=1e-6)
