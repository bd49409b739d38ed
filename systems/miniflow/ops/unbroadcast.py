"""Summing a broadcast gradient back to the shape of the input that was broadcast.

If ``z = x + y`` broadcast ``x`` of shape (1, 3) against ``y`` of shape (4, 3), then
dz/dx has shape (4, 3) and must be summed over axis 0 to shape (1, 3). TensorFlow's
math_grad.py first did this with ``BroadcastGradientArgs`` on the run-time shapes; TF 2.x
(``SmartBroadcastGradientArgs``) computes the axes at graph-build time when both shapes
are fully known, and recent TF (``_InferGradientReductionAxes``) also when they are
partially known. So do we: whenever the axes to sum can be decided from static shapes
(a bias of shape (128,) added to a (?, 128) batch: sum axis 0), no shape ops are added.
Fewer nodes per training step is per-step time saved.
"""

from __future__ import annotations

from ..graph import Tensor


def unbroadcast(grad: Tensor, x: Tensor, other: Tensor | None) -> Tensor:
    """``grad`` (the shape of the broadcast result) summed back to ``x``'s shape."""
    from .array_ops import reshape, shape
    from .reduction_ops import reduce_sum

    gs, xs = grad.shape, x.shape
    os_ = other.shape if other is not None else None
    if gs is not None and xs is not None and len(gs) >= len(xs):
        pad = len(gs) - len(xs)
        if all(d is not None for d in xs):  # x fully known: the axes are static
            axes = list(range(pad)) + [i + pad for i, d in enumerate(xs)
                                       if d == 1 and gs[i + pad] != 1]
            if not axes:
                return grad if gs == xs else reshape(grad, xs)
            return reshape(reduce_sum(grad, axes), xs)
        if pad == 0 and os_ is not None:
            opad = len(gs) - len(os_)
            decidable = True
            keep_axes = []
            for i, d in enumerate(xs):
                od = os_[i - opad] if i >= opad else 1
                if d is None and od not in (1,):
                    decidable = False
                elif d == 1 and gs[i] != 1:
                    keep_axes.append(i)
            if decidable:
                return reduce_sum(grad, keep_axes, keepdims=True) if keep_axes else grad
    from .array_ops import broadcast_gradient_args

    other_shape = shape(other) if other is not None else shape(grad)
    rx, _ = broadcast_gradient_args(shape(x), other_shape)
    return reshape(reduce_sum(grad, rx), shape(x))
