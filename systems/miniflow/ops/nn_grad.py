"""Gradients of the neural-network ops (tensorflow/python/ops/nn_grad.py)."""

from __future__ import annotations

from ..gradients import RegisterGradient
from ..op_def import constant, make_op
from .array_ops import shape
from .math_ops import exp, reduce_sum


def _shape_of(t):
    return constant(list(t.shape), "int32") if t.shape is not None and None not in t.shape \
        else shape(t)


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
