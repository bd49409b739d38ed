"""Gradients of the neural-network ops (tensorflow/python/ops/nn_grad.py).

The gradients of the backprop ops too (``Conv2DBackpropInput``, ``MaxPoolGrad``...), so
that second derivatives go through conv and pooling as in TF: each backprop op is
linear in its ``dy`` (and a convolution's in its other operand), so its gradient is the
forward op or the other backprop op (an adjoint: <G, A^T dy> = <A G, dy>)."""

from __future__ import annotations

from ..gradients import RegisterGradient
from ..op_def import constant, make_op
from .array_ops import shape
from .math_ops import exp
from .reduction_ops import reduce_sum
from .unbroadcast import unbroadcast


def _shape_of(t):
    return constant(list(t.shape), "int32") if t.shape is not None and None not in t.shape \
        else shape(t)


@RegisterGradient("BiasAdd")
def _bias_add_grad(op, g):
    # the kernel proved bias as long as value's last axis: sum g over every other axis
    # (TF's BiasAddGrad); ``unbroadcast`` does that from the run-time shapes
    value, bias = op.inputs
    return g, unbroadcast(g, bias, value)


@RegisterGradient("Softmax")
def _softmax_grad(op, g):
    y = op.outputs[0]
    return ((g - reduce_sum(g * y, -1, keepdims=True)) * y,)


@RegisterGradient("LogSoftmax")
def _log_softmax_grad(op, g):
    return (g - reduce_sum(g, -1, keepdims=True) * exp(op.outputs[0]),)


@RegisterGradient("Conv2D")
def _conv2d_grad(op, g):
    x, f = op.inputs
    a = {"strides": op.attrs["strides"], "padding": op.attrs["padding"]}
    dx = make_op("Conv2DBackpropInput", [_shape_of(x), f, g], a).outputs[0]
    df = make_op("Conv2DBackpropFilter", [x, _shape_of(f), g], a).outputs[0]
    return dx, df


@RegisterGradient("MaxPool")
def _max_pool_grad(op, g):
    return (make_op("MaxPoolGrad", [op.inputs[0], op.outputs[0], g], dict(op.attrs)
                    ).outputs[0],)


@RegisterGradient("AvgPool")
def _avg_pool_grad(op, g):
    return (make_op("AvgPoolGrad", [_shape_of(op.inputs[0]), g], dict(op.attrs)).outputs[0],)


@RegisterGradient("Conv2DBackpropInput")
def _conv2d_backprop_input_grad(op, g):
    _, f, dy = op.inputs  # dx = conv2d's transpose of dy by f
    a = {"strides": op.attrs["strides"], "padding": op.attrs["padding"]}
    return (None, make_op("Conv2DBackpropFilter", [g, _shape_of(f), dy], a).outputs[0],
            make_op("Conv2D", [g, f], a).outputs[0])


@RegisterGradient("Conv2DBackpropFilter")
def _conv2d_backprop_filter_grad(op, g):
    x, _, dy = op.inputs  # df = the correlation of x with dy
    a = {"strides": op.attrs["strides"], "padding": op.attrs["padding"]}
    return (make_op("Conv2DBackpropInput", [_shape_of(x), g, dy], a).outputs[0], None,
            make_op("Conv2D", [x, g], a).outputs[0])


@RegisterGradient("MaxPoolGrad")
def _max_pool_grad_grad(op, g):
    # the routing is piecewise constant in the input: no gradient for x or y (TF: zeros)
    x, y, _ = op.inputs
    return (None, None, make_op("MaxPoolGradGrad", [x, y, g], dict(op.attrs)).outputs[0])


@RegisterGradient("AvgPoolGrad")
def _avg_pool_grad_grad(op, g):
    return (None, make_op("AvgPool", [g], dict(op.attrs)).outputs[0])
