"""Reductions and argmax (tensorflow/python/ops/math_ops.py's ``reduce_*`` and ``argmax``;
kernels as tensorflow/core/kernels/reduction_ops*.cc). Axes known at build time are an
attribute; axes computed in the graph (as gradients make them) are a host-memory input.
TF1's deprecated spellings, ``reduction_indices=`` and ``keep_dims=``, are taken."""

from __future__ import annotations

import numpy as np

from ..dtypes import as_dtype, int64
from ..errors import InvalidArgumentError
from ..graph import Tensor
from ..op_def import OpDef, check_axis, convert_to_tensor, define, make_op, shape_error
from .math_ops import _numeric_only


def _norm_axes(op_type: str, axis, x: Tensor) -> tuple[int, ...] | None:
    if axis is None:
        return None
    axes = (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis)
    if x.shape is None:
        return axes
    norm = [check_axis(op_type, a, x) for a in axes]
    if len(set(norm)) != len(norm):  # TF's ReductionHelper refuses it (when it runs)
        raise shape_error(op_type, f"axes {list(axes)} name a dimension twice", x)
    return tuple(sorted(norm))


def _reduce_shape(op_type: str):
    def fn(ins, attrs):
        x = ins[0]
        if len(ins) == 1 and attrs["axis"] is None and not attrs["keepdims"]:
            return [(x.dtype, ())]  # every axis: a scalar, whatever the rank
        if len(ins) == 2 or x.shape is None:  # axes only known at run time
            return [(x.dtype, None)]
        axes, keep = attrs["axis"], attrs["keepdims"]
        axes = tuple(range(len(x.shape))) if axes is None else axes
        out = tuple((1 if keep else None) if i in axes else d for i, d in enumerate(x.shape))
        return [(x.dtype, tuple(d for i, d in enumerate(out) if keep or i not in axes))]
    return fn


def _check_axes(axes, rank: int) -> None:
    """Axes of a tensor whose rank the graph did not know, checked when it runs, as TF's
    ReductionHelper does (torch would reduce a scalar over axis 0 or -1). Axes checked
    at build time (``checked`` in the attributes) are not checked again each step."""
    for a in (axes,) if isinstance(axes, int) else axes or ():
        if not -rank <= a < rank:
            raise InvalidArgumentError(f"Invalid reduction dimension ({a} for input with "
                                       f"{rank} dimension(s))")


def _reduce_kernel(method: str):
    def make(attrs, be, res):
        fn, keep = getattr(be, method), attrs["keepdims"]
        axis = attrs["axis"]
        if axis is not None and attrs.get("checked"):
            return lambda x: fn(x, axis, keep)
        if axis is not None or attrs.get("dynamic"):
            def dyn(x, ax=None):
                a = axis if ax is None else tuple(int(v) for v in be.to_numpy(ax).reshape(-1))
                _check_axes(a, x.ndim)
                return fn(x, a, keep)
            return dyn
        return lambda x: fn(x, None, keep)
    return make


for _t, _m in (("Sum", "sum"), ("Mean", "mean"), ("Max", "max"), ("Min", "min")):
    define(OpDef(_t, _numeric_only(_t, _reduce_shape(_t)), _reduce_kernel(_m),
                 host_inputs=(1,)))


def _reduce(op_type, x, axis, keepdims, name, reduction_indices=None, keep_dims=None):
    # TF1's deprecated spellings of axis and keepdims (math_ops.reduce_sum_v1)
    axis, keepdims = axis if reduction_indices is None else reduction_indices, \
        bool(keepdims or keep_dims)
    x = convert_to_tensor(x)
    if isinstance(axis, Tensor):  # axes computed in the graph (used by gradients)
        return make_op(op_type, [x, axis], {"axis": None, "keepdims": keepdims,
                                            "dynamic": True}, name).outputs[0]
    return make_op(op_type, [x], {"axis": _norm_axes(op_type, axis, x), "keepdims": keepdims,
                                  "checked": x.shape is not None}, name).outputs[0]


def reduce_sum(x, axis=None, keepdims=False, name=None, reduction_indices=None,
               keep_dims=None) -> Tensor:
    return _reduce("Sum", x, axis, keepdims, name, reduction_indices, keep_dims)


def reduce_mean(x, axis=None, keepdims=False, name=None, reduction_indices=None,
                keep_dims=None) -> Tensor:
    return _reduce("Mean", x, axis, keepdims, name, reduction_indices, keep_dims)


def reduce_max(x, axis=None, keepdims=False, name=None, reduction_indices=None,
               keep_dims=None) -> Tensor:
    return _reduce("Max", x, axis, keepdims, name, reduction_indices, keep_dims)


def reduce_min(x, axis=None, keepdims=False, name=None, reduction_indices=None,
               keep_dims=None) -> Tensor:
    return _reduce("Min", x, axis, keepdims, name, reduction_indices, keep_dims)


def _argmax_shape(ins, attrs):
    x = ins[0]
    if x.shape is None:
        return [(attrs["output_type"], None)]
    ax = attrs["axis"]
    return [(attrs["output_type"], x.shape[:ax] + x.shape[ax + 1:])]


def _argmax_kernel(attrs, be, res):
    axis, out = attrs["axis"], attrs["output_type"]
    if attrs.get("checked"):
        return lambda x: be.argmax(x, axis, out)

    def argmax(x):
        _check_axes(axis, x.ndim)
        return be.argmax(x, axis, out)
    return argmax


define(OpDef("ArgMax", _numeric_only("ArgMax", _argmax_shape), _argmax_kernel))


def argmax(x, axis=None, name=None, dimension=None, output_type=int64) -> Tensor:
    axis = dimension if axis is None else axis  # TF1's order, and its old spelling
    x = convert_to_tensor(x)
    ax = check_axis("ArgMax", 0 if axis is None else int(axis), x)
    return make_op("ArgMax", [x], {"axis": ax, "output_type": as_dtype(output_type),
                                   "checked": x.shape is not None}, name).outputs[0]
