"""Gradients of the math ops (tensorflow/python/ops/math_grad.py).

Each function receives the forward op and the gradient of each of its outputs, and
builds ops for the gradient of each input. They use only differentiable ops, so their
own gradients exist: second derivatives of elementwise ops and matmul work.
"""

from __future__ import annotations

from ..gradients import RegisterGradient, no_gradient
from ..op_def import make_op
from .array_ops import ones_like, reduced_shape, reshape, shape, size, where_v2, zeros_like
from .math_ops import (
    cast,
    equal,
    greater,
    greater_equal,
    less_equal,
    log,
    matmul,
    maximum,
    multiply,
    relu_grad,
    sign,
    sqrt_grad,
)
from .reduction_ops import reduce_sum
from .unbroadcast import unbroadcast


@RegisterGradient("Add")
def _add_grad(op, g):
    x, y = op.inputs
    return unbroadcast(g, x, y), unbroadcast(g, y, x)


@RegisterGradient("Sub")
def _sub_grad(op, g):
    x, y = op.inputs
    return unbroadcast(g, x, y), unbroadcast(-g, y, x)


@RegisterGradient("Mul")
def _mul_grad(op, g):
    x, y = op.inputs  # multiply, not *: TF's _MulGrad makes ops named Mul, not mul
    return unbroadcast(multiply(g, y), x, y), unbroadcast(multiply(x, g), y, x)


@RegisterGradient("RealDiv")
def _div_grad(op, g):
    x, y = op.inputs
    return unbroadcast(g / y, x, y), unbroadcast(g * (-x / y / y), y, x)


@RegisterGradient("Pow")
def _pow_grad(op, g):
    x, y = op.inputs
    z = op.outputs[0]
    gx = g * y * x ** (y - 1.0)
    # d/dy x^y = x^y log x, defined for x > 0 (TF masks the rest to 0 the same way).
    # zeros_like and ones_like, not x * 0.0: at x = -inf that is NaN, where TF gives 0
    safe_log = where_v2(greater(x, 0.0), log(where_v2(greater(x, 0.0), x, ones_like(x))),
                        zeros_like(x))
    gy = g * z * safe_log
    return unbroadcast(gx, x, y), unbroadcast(gy, y, x)


@RegisterGradient("Maximum")
def _max_grad(op, g):
    x, y = op.inputs
    xmask = cast(greater_equal(x, y), g.dtype)
    return unbroadcast(g * xmask, x, y), unbroadcast(g * (1.0 - xmask), y, x)


@RegisterGradient("Minimum")
def _min_grad(op, g):
    x, y = op.inputs
    xmask = cast(less_equal(x, y), g.dtype)
    return unbroadcast(g * xmask, x, y), unbroadcast(g * (1.0 - xmask), y, x)


@RegisterGradient("Neg")
def _neg_grad(op, g):
    return (-g,)


@RegisterGradient("Exp")
def _exp_grad(op, g):
    return (g * op.outputs[0],)


@RegisterGradient("Log")
def _log_grad(op, g):
    return (g / op.inputs[0],)


@RegisterGradient("Tanh")
def _tanh_grad(op, g):
    y = op.outputs[0]
    return (g * (1.0 - y * y),)


@RegisterGradient("Sigmoid")
def _sigmoid_grad(op, g):
    y = op.outputs[0]
    return (g * y * (1.0 - y),)


@RegisterGradient("Relu")
def _relu_grad(op, g):
    return (relu_grad(g, op.outputs[0]),)


@RegisterGradient("ReluGrad")
def _relu_grad_grad(op, gg):
    # zeros for the features, as TF's _ReluGradGrad (nn_grad.py): ReluGrad is piecewise
    # constant in them, and a second derivative there is 0, not "unconnected" (None)
    return relu_grad(gg, op.inputs[1]), zeros_like(op.inputs[1])


@RegisterGradient("Sqrt")
def _sqrt_grad(op, g):
    return (sqrt_grad(op.outputs[0], g),)


@RegisterGradient("SqrtGrad")
def _sqrt_grad_grad(op, gg):
    # TF's _SqrtGradGrad (math_grad.py): out = 0.5 * dy / y, so d out/d y = -out / y and
    # d out/d dy = 0.5 / y
    ga = gg / op.inputs[0]
    return -ga * op.outputs[0], 0.5 * ga


@RegisterGradient("Square")
def _square_grad(op, g):
    return (g * 2.0 * op.inputs[0],)


@RegisterGradient("Abs")
def _abs_grad(op, g):
    return (g * sign(op.inputs[0]),)


@RegisterGradient("Sign")
def _sign_grad(op, g):
    # TF registers zeros, not NotDifferentiable (math_grad.py, _SignGrad): tf.gradients
    # of sign(x) is a zero tensor, and abs's second derivative is 0, not None
    return (zeros_like(op.inputs[0]),)


@RegisterGradient("Cast")
def _cast_grad(op, g):
    x = op.inputs[0]
    return (cast(g, x.dtype) if x.dtype.is_floating and g.dtype.is_floating else None,)


@RegisterGradient("AddN")
def _addn_grad(op, g):
    return [g] * len(op.inputs)


@RegisterGradient("SelectV2")
def _select_grad(op, g):
    c, x, y = op.inputs
    zeros = zeros_like(g)  # not g * 0: an inf or NaN in g would give the other branch NaN
    # the condition may broadcast x and y too: sum back against the output's shape
    # (other=None), not against the other branch's
    return (None, unbroadcast(where_v2(c, g, zeros), x, None),
            unbroadcast(where_v2(c, zeros, g), y, None))


@RegisterGradient("Select")
def _select_v1_grad(op, g):
    c, x, y = op.inputs
    zeros = zeros_like(g)
    pick = [make_op("Select", [c, a, b]).outputs[0] for a, b in ((g, zeros), (zeros, g))]
    return None, unbroadcast(pick[0], x, None), unbroadcast(pick[1], y, None)


@RegisterGradient("MatMul")
def _matmul_grad(op, g):
    a, b = op.inputs
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
    if not ta and not tb:
        ga, gb = matmul(g, b, transpose_b=True), matmul(a, g, transpose_a=True)
    elif ta and not tb:
        ga, gb = matmul(b, g, transpose_b=True), matmul(a, g)
    elif not ta and tb:
        ga, gb = matmul(g, b), matmul(g, a, transpose_a=True)
    else:
        ga = matmul(b, g, transpose_a=True, transpose_b=True)
        gb = matmul(g, a, transpose_a=True, transpose_b=True)
    if len(a.shape or ()) == 2 and len(b.shape or ()) == 2:
        return ga, gb
    return _batch_unbroadcast(ga, a), _batch_unbroadcast(gb, b)


def _batch_unbroadcast(grad, x):
    """Sum over batch axes that ``x`` did not have (or had as 1) in a batched matmul."""
    if grad.shape is not None and x.shape is not None and grad.shape == x.shape \
            and None not in x.shape:
        return grad
    if x.shape is not None and None not in x.shape and grad.shape is not None:
        pad = len(grad.shape) - len(x.shape)
        axes = list(range(pad)) + [i + pad for i, d in enumerate(x.shape[:-2]) if d == 1]
        return reshape(reduce_sum(grad, axes), x.shape) if axes else grad
    # x's batch shape is known only when the step runs (a batch of unknown size): find
    # the axes to sum then, as TF's _BatchMatMulV2 grad does with BroadcastGradientArgs
    # on the leading (batch) parts of the two shapes
    from .array_ops import broadcast_gradient_args

    rx, _ = broadcast_gradient_args(shape(x)[:-2], shape(grad)[:-2])
    return reshape(reduce_sum(grad, rx), shape(x))


def _reduction_axes(op):
    """The reduced axes of a Sum/Mean/Max: a static list, or the op's axes tensor; None
    for "every axis" of an input whose rank is unknown until it runs."""
    if len(op.inputs) == 2:
        return op.inputs[1]
    x, ax = op.inputs[0], op.attrs["axis"]
    if ax is None:
        return None if x.shape is None else list(range(len(x.shape)))
    return list(ax)


def _expand(x, axes, g):
    """``g`` (reduced over ``axes``) broadcast back to ``x``'s shape (math_grad._SumGrad)."""
    from ..op_def import constant
    from .array_ops import broadcast_to

    if axes is None:  # every axis was reduced, whatever the rank: the value spreads out
        return broadcast_to(g, shape(x))
    if isinstance(axes, list) and x.shape is not None and None not in x.shape:
        kept = [1 if i in axes else d for i, d in enumerate(x.shape)]
        return broadcast_to(reshape(g, kept), constant(list(x.shape), "int32"))
    if isinstance(axes, list) and x.shape is not None and g.shape == () and \
            sorted(axes) == list(range(len(x.shape))):
        return broadcast_to(g, shape(x))  # everything was reduced: a scalar spreads out
    axes_t = axes if not isinstance(axes, list) else constant(axes, "int32")
    return broadcast_to(reshape(g, reduced_shape(shape(x), axes_t)), shape(x))


def _no_axes_grad(op):
    return (None,) if len(op.inputs) == 2 else ()


@RegisterGradient("Sum")
def _sum_grad(op, g):
    return (_expand(op.inputs[0], _reduction_axes(op), g),) + _no_axes_grad(op)


@RegisterGradient("Mean")
def _mean_grad(op, g):
    x, y = op.inputs[0], op.outputs[0]
    grad = _expand(x, _reduction_axes(op), g)
    x_known = x.shape is not None and None not in x.shape
    y_known = y.shape is not None and None not in y.shape
    # size(x) / max(size(y), 1), as TF's _MeanGrad: an empty output (a kept axis of
    # size 0) has an empty gradient, and must not divide by zero to build it
    if x_known and y_known:
        grad = grad / (float(_prod(x.shape)) / max(float(_prod(y.shape)), 1.0))
    elif y_known:  # e.g. the mean over a batch of unknown size: divide by size(x) alone
        grad = grad / (cast(size(x), g.dtype) / max(float(_prod(y.shape)), 1.0))
    else:
        grad = grad / (cast(size(x), g.dtype) / maximum(cast(size(y), g.dtype), 1.0))
    return (grad,) + _no_axes_grad(op)


@RegisterGradient("Max")
@RegisterGradient("Min")
def _max_reduce_grad(op, g):
    """Split the gradient equally among the inputs that equal the maximum (or minimum:
    TF's _MinGrad is the same function)."""
    x, y = op.inputs[0], op.outputs[0]
    axes = _reduction_axes(op)
    indicators = cast(equal(x, _expand(x, axes, y)), g.dtype)
    counts = _expand(x, axes, reduce_sum(indicators, axes))
    return (indicators / counts * _expand(x, axes, g),) + _no_axes_grad(op)


def _prod(dims):
    n = 1
    for d in dims:
        n *= d
    return n


for _t in ("Equal", "NotEqual", "Less", "Greater", "LessEqual", "GreaterEqual",
           "LogicalAnd", "LogicalOr", "LogicalNot", "ArgMax", "FloorDiv"):
    no_gradient(_t)
