"""Gradients of the array and state ops (tensorflow/python/ops/array_grad.py)."""

from __future__ import annotations

import numpy as np

from ..gradients import RegisterGradient, no_gradient
from ..op_def import constant, make_op, shape_error
from .array_ops import reshape, shape, transpose
from .unbroadcast import unbroadcast


@RegisterGradient("Identity")
def _identity_grad(op, g):
    return (g,)


@RegisterGradient("ReadVariable")
def _read_grad(op, g):
    return (g,)  # flows on to the variable's reference: every read contributes


@RegisterGradient("CheckNumerics")
def _check_grad(op, g):
    from .control_ops import check_numerics

    return (check_numerics(g, message=f"gradient of {op.attrs['message']}"),)


@RegisterGradient("Reshape")
def _reshape_grad(op, g):
    x = op.inputs[0]
    target = x.shape if x.shape is not None and None not in x.shape else shape(x)
    return (reshape(g, target),) + ((None,) if len(op.inputs) == 2 else ())


@RegisterGradient("Transpose")
def _transpose_grad(op, g):
    perm = op.attrs["perm"]  # None: the axes reversed, which is its own inverse
    return (transpose(g, None if perm is None else tuple(int(i) for i in np.argsort(perm))),)


@RegisterGradient("ConcatV2")
def _concat_grad(op, g):
    ax = op.attrs["axis"]
    sizes = [t.shape[ax] if t.shape is not None else None for t in op.inputs]
    if None not in sizes:  # static split points: plain slices
        out, start = [], 0
        for s in sizes:
            idx = (slice(None),) * ax + (slice(start, start + s),)
            out.append(g[idx])
            start += s
        return out
    split = make_op("SplitByShapes", [g, *[shape(t) for t in op.inputs]], {"axis": ax})
    return list(split.outputs)


@RegisterGradient("StridedSlice")
def _slice_grad(op, g):
    x = op.inputs[0]
    s = constant(list(x.shape), "int32") if x.shape is not None and None not in x.shape \
        else shape(x)
    return (make_op("StridedSliceGrad", [s, g], {"index": op.attrs["index"]}).outputs[0],)


@RegisterGradient("GatherV2")
def _gather_grad(op, g):
    """Scatter-add the gradient rows back (TF returns IndexedSlices; we densify them)."""
    params, indices = op.inputs
    ax = op.attrs["axis"]
    if params.shape is None:
        raise shape_error("GatherV2", f"the gradient of {op.name} needs params of known "
                          f"rank", params, indices)
    if indices.shape is None or g.shape is None:  # a placeholder(int32, None) of ids: as
        # TF's _GatherV2Grad, flatten the indices and the gradient's index axes into one
        g, indices = _flatten_index_axes(g, params, ax), reshape(indices, [-1])
    ni = len(indices.shape)
    pre = list(range(ax))
    idx_axes = list(range(ax, ax + ni))
    post = list(range(ax + ni, len(g.shape)))
    moved = transpose(g, idx_axes + pre + post) if ax else g
    n = (constant(np.array([params.shape[ax]], np.int32)) if params.shape[ax] is not None
         else shape(params)[ax:ax + 1])  # a constant lets the sum's shape be known
    summed = make_op("UnsortedSegmentSum", [moved, indices, n]).outputs[0]
    if ax:  # summed is (n, pre..., post...): put axis 0 back at position ax
        r = 1 + len(pre) + len(post)
        perm = list(range(1, 1 + ax)) + [0] + list(range(1 + ax, r))
        summed = transpose(summed, perm)
    return summed, None


def _flatten_index_axes(g, params, ax: int):
    """``g`` reshaped to ``params``' shape with axis ``ax`` of any length: the gradient's
    index axes, however many the indices had, become one."""
    s = shape(params) if None in params.shape else None  # some lengths known only at run
    return reshape(g, [-1 if i == ax else s[i] if d is None else d
                       for i, d in enumerate(params.shape)])


@RegisterGradient("BroadcastTo")
def _broadcast_to_grad(op, g):
    return unbroadcast(g, op.inputs[0], None), None


@RegisterGradient("SparseSoftmaxCrossEntropyWithLogits")
def _xent_grad(op, g_loss, g_backprop):
    """The loss's gradient is the op's second output, ``softmax - onehot``; a gradient
    of *that* (a gradient penalty, a Hessian-vector product) flows through the softmax's
    Jacobian, ``(gb - <gb, p>) * p`` (TF's _SparseSoftmaxCrossEntropyWithLogitsGrad)."""
    from .nn_ops import softmax
    from .reduction_ops import reduce_sum

    grad = None if g_loss is None else g_loss[:, None] * op.outputs[1]
    # an output nobody differentiated arrives as explicit zeros (gradients.py); skip the
    # term then, as TF's grad does for a zero tensor: a first-order step adds no ops
    if g_backprop is not None and g_backprop.op.type != "ZerosLike":
        p = softmax(op.inputs[0])
        jvp = (g_backprop - reduce_sum(g_backprop * p, -1, keepdims=True)) * p
        grad = jvp if grad is None else grad + jvp
    return grad, None


# The gradient ops of the slicing ops are linear in the incoming gradient, so they have
# gradients too (second derivatives through x[i], gather and a concat of unknown sizes).
@RegisterGradient("StridedSliceGrad")
def _slice_grad_grad(op, g):
    from .slicing import _decode_index

    return None, g[_decode_index(op.attrs["index"])]


@RegisterGradient("UnsortedSegmentSum")
def _segment_sum_grad(op, g):
    from .array_ops import gather

    return gather(g, op.inputs[1]), None, None


@RegisterGradient("SplitByShapes")
def _split_grad(op, *gs):
    from .array_ops import concat, zeros_like

    parts = [g if g is not None else zeros_like(out) for g, out in zip(gs, op.outputs,
                                                                          strict=True)]
    return (concat(parts, op.attrs["axis"]),) + (None,) * (len(op.inputs) - 1)


for _t in ("Shape", "Size", "OneHot", "BroadcastGradientArgs", "StopGradient", "ZerosLike",
           "Fill", "ReducedShape", "Const", "Placeholder", "VariableV2", "NoOp",
           "Assign", "AssignAdd", "AssignSub"):
    no_gradient(_t)

