"""The remapper (passes/remapper.py): on torch devices MatMul + bias (+ ReLU) becomes one
``addmm``, and MaxPoolGrad uses the argmax its forward found; the answers are those of
the numpy kernels, which keep the original ops."""


import numpy as np
import pytest

import systems.miniflow as mf
from common.opcount import OpCounter

from .helpers import session


def _types(s, fetches, feeds):
    return [n[1] for n in s.plan_for(fetches, feeds).snapshots["optimized"].nodes]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_matmul_plus_bias_becomes_one_fused_matmul_on_torch(relu, transpose_b):
    rng = np.random.default_rng(0)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 5])
        w = mf.constant(rng.standard_normal((3, 5) if transpose_b else (5, 3))
                        .astype(np.float32))
        b = mf.Variable(rng.standard_normal(3).astype(np.float32))
        y = mf.matmul(x, w, transpose_b=transpose_b) + b
        y = mf.nn.relu(y) if relu else y
        (dw,) = mf.gradients(mf.reduce_sum(y * y), [b])
    xv = rng.standard_normal((4, 5)).astype(np.float32)
    out = {}
    for backend in ("numpy", "torch"):
        with session(g, backend) as s:
            s.run(mf.global_variables_initializer())
            out[backend] = s.run([y, dw], {x: xv})
            out[backend + " types"] = _types(s, [y, dw], {x: None})
    for want, got in zip(out["numpy"], out["torch"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "_FusedMatMul" in out["torch types"] and "MatMul" not in out["torch types"][:3]
    assert "_FusedMatMul" not in out["numpy types"]


def test_a_product_needed_elsewhere_is_not_fused():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2, 2])
        p = x @ x
        y = p + mf.constant(np.ones(2, np.float32))
    with session(g, "torch") as s:
        got = s.run([p, y], {x: np.eye(2, dtype=np.float32)})
        assert "_FusedMatMul" not in _types(s, [p, y], {x: None})  # p is fetched
    np.testing.assert_array_equal(got[1], np.eye(2) + 1)


@pytest.mark.parametrize("padding,ksize,stride", [("VALID", 2, 2), ("SAME", 3, 2)])
def test_max_pool_gradient_reuses_the_forward_argmax(padding, ksize, stride):
    # integers in [0, 3): many ties, which go to the first maximum in the window, as in
    # TF; with SAME padding the windows overhang the input (padded with -inf)
    rng = np.random.default_rng(0)
    xv = rng.integers(0, 3, (2, 5, 5, 3)).astype(np.float32)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2, 5, 5, 3])
        y = mf.nn.max_pool2d(x, ksize, stride, padding)
        weights = mf.constant(rng.standard_normal((1,) + tuple(y.shape[1:]))
                              .astype(np.float32))
        (dx,) = mf.gradients(mf.reduce_sum(y * weights), [x])
    out = {}
    for backend in ("numpy", "torch"):
        with session(g, backend) as s:
            s.run([y, dx], {x: xv})
            counter = OpCounter()
            with counter:
                out[backend] = s.run([y, dx], {x: xv})
            out[backend + " types"] = _types(s, [y, dx], {x: None})
    for want, got in zip(out["numpy"], out["torch"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert {"_MaxPoolWithArgmax", "_MaxPoolGradWithArgmax"} <= set(out["torch types"])
    assert "MaxPoolGrad" in out["numpy types"]
    assert counter.ops["max_pool2d_with_indices"] == 1  # the forward, once


def test_the_rewritten_ops_have_no_numpy_kernel():
    from systems.miniflow.backend import NUMPY
    from systems.miniflow.op_def import OP_DEFS

    with pytest.raises(TypeError, match="only a torch kernel"):
        OP_DEFS["_MaxPoolWithArgmax"].make_kernel(
            {"ksize": (2, 2), "strides": (2, 2), "padding": "VALID"}, NUMPY, None)


def test_graph_options_turn_the_remapper_off():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 5])
        y = mf.nn.relu(mf.matmul(x, mf.constant(np.ones((5, 3), np.float32)))
                       + mf.constant(np.ones(3, np.float32)))
    xv = np.arange(10, dtype=np.float32).reshape(2, 5)
    cfg = mf.ConfigProto(cpu_backend="torch",
                         graph_options=mf.GraphOptions(remapping=False))
    with mf.Session(graph=g, config=cfg) as s:
        np.testing.assert_allclose(s.run(y, {x: xv}), np.maximum(xv.sum(1, keepdims=True)
                                                                 + 1, 0) * np.ones(3))
        types = _types(s, y, {x: None})
        assert "MatMul" in types and "_FusedMatMul" not in types
        assert "fused_matmul" not in s.plan_for(y, {x: None}).pass_stats.changes


def test_a_matmul_plus_a_batched_addend_is_not_an_addmm_bias():
    """Only a 1-D bias of N values is addmm's bias: an addend that broadcasts the product
    to more dimensions stays an Add (addmm would refuse it)."""
    rng = np.random.default_rng(0)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [4, 5])
        w = mf.constant(rng.standard_normal((5, 3)).astype(np.float32))
        z = mf.constant(rng.standard_normal((2, 4, 3)).astype(np.float32))
        y = mf.matmul(x, w) + z
    xv = rng.standard_normal((4, 5)).astype(np.float32)
    want = xv @ w.op.attrs["value"] + z.op.attrs["value"]
    for backend in ("numpy", "torch"):
        with session(g, backend) as s:
            np.testing.assert_allclose(s.run(y, {x: xv}), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding,ksize,stride", [("SAME", 3, 2), ("VALID", 2, 2),
                                                  ("SAME", 2, 1)])
def test_a_max_pool_gradient_whose_forward_is_fed_uses_torchs_own_max_pool_grad(
        padding, ksize, stride):
    """With the max pool's output fed, the MaxPool is not in the plan and the remapper has
    no argmax to pair the gradient with: the torch backend runs MaxPoolGrad itself
    (conv.py's TorchConv.max_pool_grad, which crops TF's SAME padding back off). Ties go
    to the first maximum, as in TF. Oracle: the numpy kernel, and the unfed (paired) run."""
    rng = np.random.default_rng(1)
    # many ties; none above 0, so a SAME pad of 0 (not -inf) would win some windows
    xv = rng.integers(-2, 1, (2, 5, 7, 3)).astype(np.float32)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, xv.shape)
        y = mf.nn.max_pool2d(x, ksize, stride, padding)
        weights = mf.constant(rng.standard_normal(tuple(y.shape)).astype(np.float32))
        (dx,) = mf.gradients(mf.reduce_sum(y * weights), [x])
    out = {}
    for backend in ("numpy", "torch"):
        with session(g, backend) as s:
            yv = s.run(y, {x: xv})
            out[backend] = s.run(dx, {x: xv, y: yv})
            out[backend + " unfed"] = s.run(dx, {x: xv})
            out[backend + " types"] = _types(s, dx, {x: None, y: None})
    assert "MaxPoolGrad" in out["torch types"] and "MaxPool" not in out["torch types"]
    assert "_MaxPoolGradWithArgmax" not in out["torch types"]
    np.testing.assert_array_equal(out["torch"], out["numpy"])
    np.testing.assert_array_equal(out["torch"], out["torch unfed"])
    np.testing.assert_array_equal(out["numpy"], out["numpy unfed"])
    assert np.count_nonzero(out["torch"]) > 0
