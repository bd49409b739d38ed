"""Slicing: ``x[key]`` and ``strided_slice``, one StridedSlice op each (TF builds the op
in array_ops.py ``_slice_helper``, which turns an index into begin, end and strides plus
the masks for ``...``, new axes and single indices; here the op carries the index as it
was written, and its kernel applies it as numpy's basic indexing)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..graph import Tensor
from ..op_def import OpDef, define, make_op, shape_error, shape_from_tensor
from .array_ops import _host


def _encode_index(key: Any) -> tuple:
    """A Python index (ints, slices, None, ...) as a hashable attr value."""
    items = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in items) > 1:  # numpy refuses it too, when it runs
        raise ValueError("Multiple ellipses in slice spec not allowed")
    out = []
    for k in items:
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            out.append(("int", int(k)))
        elif isinstance(k, slice):
            out.append(("slice", k.start, k.stop, k.step))
        elif k is None:
            out.append(("newaxis",))
        elif k is Ellipsis:
            out.append(("ellipsis",))
        else:
            raise TypeError(f"unsupported index {k!r}: use ints, slices, None or ...")
    return tuple(out)


def _decode_index(enc: tuple) -> tuple:
    table = {"int": lambda e: e[1], "slice": lambda e: slice(*e[1:]),
             "newaxis": lambda e: None, "ellipsis": lambda e: Ellipsis}
    return tuple(table[e[0]](e) for e in enc)


def _slice_shape(ins, attrs):
    x, enc = ins[-1], attrs["index"]
    if any(e[0] == "slice" and e[3] == 0 for e in enc):
        raise shape_error("StridedSlice", "slice step cannot be zero", x)
    if x.shape is None:
        return [(x.dtype, None)]
    dims = list(x.shape)
    n_consume = sum(1 for e in enc if e[0] in ("int", "slice"))
    if n_consume > len(dims):
        raise shape_error("StridedSlice", f"too many indices ({n_consume}) for rank "
                          f"{len(dims)}", x)
    out, i = [], 0
    for e in enc:
        if e[0] == "ellipsis":
            keep = len(dims) - n_consume
            out += dims[i:i + keep]
            i += keep
        elif e[0] == "newaxis":
            out.append(1)
        elif e[0] == "int":
            if dims[i] is not None and not -dims[i] <= e[1] < dims[i]:
                raise shape_error("StridedSlice", f"index {e[1]} out of range for dimension "
                                  f"{i} of size {dims[i]}", x)
            i += 1
        else:
            out.append(None if dims[i] is None else len(range(*slice(*e[1:]).indices(dims[i]))))
            i += 1
    return [(x.dtype, tuple(out + dims[i:]))]


def _slice_kernel(attrs, be, res):
    index = _decode_index(attrs["index"])
    return lambda x: be.getitem(x, index)


def _slice_grad_kernel(attrs, be, res):
    index = _decode_index(attrs["index"])
    return lambda shape, dy: be.setitem_zeros(_host(be, shape), index, dy)


define(OpDef("StridedSlice", _slice_shape, _slice_kernel, expensive=False))
define(OpDef("StridedSliceGrad", lambda ins, a: [(ins[1].dtype, shape_from_tensor(ins[0]))],
             _slice_grad_kernel, expensive=False, host_inputs=(0,)))


def _getitem(x, key, name=None) -> Tensor:
    """``x[key]``: numpy's basic indexing, one StridedSlice op (TF builds its masks), named
    ``strided_slice`` as TF's ``_slice_helper`` names it."""
    return make_op("StridedSlice", [x], {"index": _encode_index(key)},
                   name or "strided_slice").outputs[0]


Tensor.__getitem__ = _getitem


def strided_slice(input_, begin, end, strides=None, begin_mask=0, end_mask=0,
                  ellipsis_mask=0, new_axis_mask=0, shrink_axis_mask=0, var=None,
                  name=None) -> Tensor:
    """``tf.strided_slice`` without its masks: dimension ``i`` is sliced
    ``begin[i]:end[i]:strides[i]`` (``x[1:2, 0:1, 0:3]`` for begin (1, 0, 0) and end
    (2, 1, 3)). Indexing, ``x[...]``, covers what the masks do; a mask is refused."""
    masks = {"begin_mask": begin_mask, "end_mask": end_mask, "ellipsis_mask": ellipsis_mask,
             "new_axis_mask": new_axis_mask, "shrink_axis_mask": shrink_axis_mask}
    if any(masks.values()) or var is not None:
        given = [k for k, v in masks.items() if v] + (["var"] if var is not None else [])
        raise NotImplementedError(f"strided_slice: {', '.join(given)} not implemented in "
                                  f"miniflow; index the tensor (x[1:, ..., ::-1]) instead")
    parts = [begin, end, [1] * len(begin) if strides is None else strides]
    if any(isinstance(v, Tensor) or not all(isinstance(i, (int, np.integer)) for i in v)
           for v in parts) or len({len(v) for v in parts}) != 1:
        raise TypeError(f"strided_slice: begin, end and strides must be lists of Python "
                        f"ints of one length (got {begin!r}, {end!r}, {strides!r}); index "
                        f"the tensor (x[1:2, ::-1]) for anything else")
    return _getitem(input_, tuple(slice(*bes) for bes in zip(*parts, strict=True)),
                    name or "StridedSlice")  # the function's name is the type's, as TF's
