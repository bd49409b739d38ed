"""Shape-manipulating ops (tensorflow/python/ops/array_ops.py): reshape, transpose,
concat, gather, one_hot, where, and the small shape ops gradients are built from
(slicing, also in TF's array_ops.py, is in :mod:`.slicing`).

Shape tensors (the output of ``Shape``, the axes of ``BroadcastGradientArgs``) are int32
arrays kept in host memory even when the data lives on a GPU, as TensorFlow's
``HostMemory`` kernel annotations do: they are read by the host to size other kernels.
The ops that read them say which inputs those are (``OpDef.host_inputs``), so a constant
shape (a folded ``Shape``) that feeds them on a GPU is never uploaded, and reading it
never waits for the GPU.
"""

from __future__ import annotations

import numpy as np

from .. import shapes
from ..dtypes import as_dtype, float32, int32
from ..errors import InvalidArgumentError
from ..graph import Tensor
from ..op_def import (
    OpDef,
    check_axis,
    constant,
    convert_to_tensor,
    define,
    dtype_error,
    make_op,
    python_value_as,
    shape_error,
    shape_from_tensor,
    static_value,
    value_dtype,
)


def _host(be, x) -> np.ndarray:
    return be.to_numpy(x).astype(np.int64).reshape(-1)


def _const_kernel(a, be, res):
    value = be.asarray(a["value"])  # converted once, when the plan is built
    return lambda: value


define(OpDef("Const", lambda ins, a: [(as_dtype(a["value"].dtype), a["value"].shape)],
             _const_kernel, expensive=False))
define(OpDef("Identity", lambda ins, a: [(ins[0].dtype, ins[0].shape)],
             lambda a, be, res: lambda x: x, expensive=False))
define(OpDef("StopGradient", lambda ins, a: [(ins[0].dtype, ins[0].shape)],
             lambda a, be, res: lambda x: x, expensive=False))


def identity(x, name=None) -> Tensor:
    return make_op("Identity", [x], name=name).outputs[0]


def stop_gradient(x, name=None) -> Tensor:
    return make_op("StopGradient", [x], name=name).outputs[0]


# -- reshape / transpose / concat ------------------------------------------------------

def _reshape_shape(ins, attrs):
    x = ins[0]
    target = attrs.get("shape")
    if target is None:  # given as a tensor
        return [(x.dtype, shape_from_tensor(ins[1]))]
    n_in = shapes.num_elements(x.shape)
    known = int(np.prod([d for d in target if d != -1]))
    if list(target).count(-1) > 1:
        raise shape_error("Reshape", f"at most one -1 in the new shape {list(target)}", x)
    if any(d < -1 for d in target):
        raise shape_error("Reshape", f"sizes must be >= 0 (or one -1), got {list(target)}", x)
    if -1 in target:
        fill = None if n_in is None else n_in // max(known, 1)
        if n_in is not None and (known == 0 or n_in % known):
            # with a 0 among the given sizes no -1 fits (or any does, for an empty x):
            # TF refuses both ("cannot infer the missing input size")
            raise shape_error("Reshape", f"cannot reshape {n_in} elements to {list(target)}",
                              x)
        return [(x.dtype, tuple(fill if d == -1 else d for d in target))]
    if n_in is not None and n_in != known:
        raise shape_error("Reshape", f"cannot reshape {n_in} elements into {list(target)}", x)
    return [(x.dtype, tuple(target))]


def _reshape_kernel(attrs, be, res):
    shape = attrs.get("shape")
    if shape is not None:
        shape = tuple(int(d) for d in shape)  # once, not per step
        # a reshape to the shape it has is a no-op: skip the view (on a GPU, a torch call)
        return lambda x: x if x.shape == shape else be.reshape(x, shape)
    return lambda x, s: be.reshape(x, tuple(_host(be, s).tolist()))


define(OpDef("Reshape", _reshape_shape, _reshape_kernel, expensive=False, host_inputs=(1,)))


def shape_tensor(shape):
    """A shape as given, or, for a list that mixes tensors and ints (``[tf.shape(x)[0],
    3]``), the 1-D int32 tensor that stacks them (TF's ``shape_tensor`` packs it too)."""
    if isinstance(shape, Tensor) or not isinstance(shape, (list, tuple)) or \
            not any(isinstance(d, Tensor) for d in shape):
        return shape
    # one piece per entry, the numbers as constants, so that the static shape keeps them
    # (op_def.shape_from_tensor reads a ConcatV2 of constant pieces)
    return concat([reshape(d, [1]) if isinstance(d, Tensor) else
                   constant(np.array([d], np.int32)) for d in shape], 0)


def reshape(x, shape, name=None) -> Tensor:
    shape, folded = shape_tensor(shape), None  # [tf.shape(x)[0], -1] becomes one tensor
    if isinstance(shape, Tensor):
        const = static_value(shape)
        if const is None:
            return make_op("Reshape", [x, shape], {}, name).outputs[0]
        folded, shape = shape, const
    out = make_op("Reshape", [x], {"shape": tuple(int(d) for d in shape)}, name).outputs[0]
    if folded is not None:  # read now, as an attribute: a later feed of it cannot count
        folded.graph.folded_consts.setdefault(folded.name, []).append(out.op.name)
    return out


def _transpose_shape(ins, attrs):
    x, perm = ins[0], attrs["perm"]
    if perm is None:
        return [(x.dtype, None)]
    if x.shape is None:  # the permutation still says the rank
        return [(x.dtype, (None,) * len(perm))]
    if sorted(perm) != list(range(len(x.shape))):
        raise shape_error("Transpose", f"perm {list(perm)} is not a permutation of the axes", x)
    return [(x.dtype, tuple(x.shape[p] for p in perm))]


def _transpose_kernel(attrs, be, res):
    perm = attrs["perm"]
    if perm is None:  # the rank was unknown at build time: reverse the axes it has
        return lambda x: be.transpose(x, tuple(reversed(range(x.ndim))))
    return lambda x: be.transpose(x, perm)


define(OpDef("Transpose", _transpose_shape, _transpose_kernel, expensive=False))


def transpose(x, perm=None, name=None) -> Tensor:
    """``perm`` defaults to the axes reversed; for a tensor of unknown rank, TF reverses
    them when the step runs, and so do we (``perm`` None in the attributes)."""
    x = convert_to_tensor(x)
    if perm is None and x.shape is not None:
        perm = tuple(reversed(range(len(x.shape))))
    attrs = {"perm": None if perm is None else tuple(int(p) for p in perm)}
    return make_op("Transpose", [x], attrs, name or "transpose").outputs[0]  # TF's name


def _concat_shape(ins, attrs):
    ax = attrs["axis"]
    dt = ins[0].dtype
    known = [t.shape for t in ins if t.shape is not None]
    out = list(known[0]) if known else None
    if out is not None:  # a negative axis stays so when the first input's rank is unknown
        ax %= max(len(out), 1)
    for t in ins:
        if t.dtype != dt:
            raise dtype_error("ConcatV2", "inputs must share a dtype", *ins)
        if out is None or t.shape is None:
            continue
        if len(t.shape) != len(out):
            raise shape_error("ConcatV2", "inputs must have the same rank", *ins)
        for i, (a, b) in enumerate(zip(out, t.shape, strict=True)):
            if i != ax and a is not None and b is not None and a != b:
                raise shape_error("ConcatV2", f"dimension {i} differs ({a} vs {b})", *ins)
            if i != ax and a is None:  # another input may know it (TF merges them)
                out[i] = b
    if out is not None:
        sizes = [t.shape[ax] if t.shape is not None else None for t in ins]
        out[ax] = None if None in sizes else sum(sizes)
    return [(dt, None if out is None else tuple(out))]


define(OpDef("ConcatV2", _concat_shape,
             lambda a, be, res: lambda *xs: be.concat(xs, a["axis"]), expensive=False))


def concat(values, axis, name=None) -> Tensor:
    values = [convert_to_tensor(v) for v in values]
    if not values:  # TF: "List argument 'values' to 'ConcatV2' Op with length 0 ..."
        raise ValueError("ConcatV2: values is an empty list; concat needs at least one "
                         "tensor")
    ax = check_axis("ConcatV2", axis, values[0])
    return make_op("ConcatV2", values, {"axis": ax}, name or "concat").outputs[0]


def _split_shapes_kernel(attrs, be, res):
    ax = attrs["axis"]
    def split(x, *shps):
        parts = be.split(x, [int(_host(be, s)[ax]) for s in shps], ax)
        return parts[0] if len(parts) == 1 else parts  # one output is a value, not a tuple
    return split


define(OpDef("SplitByShapes",
             lambda ins, a: [(ins[0].dtype, shape_from_tensor(s)) for s in ins[1:]],
             _split_shapes_kernel, expensive=False,
             host_inputs=range(1, 1 << 30)))  # every input after the data: shapes


# -- gather / scatter / one_hot ---------------------------------------------------------

def _gather_shape(ins, attrs):
    p, idx = ins
    if not idx.dtype.is_integer:
        raise dtype_error("GatherV2", "indices must be integers", idx)
    if p.shape is None or idx.shape is None:
        return [(p.dtype, None)]
    ax = attrs["axis"]
    return [(p.dtype, p.shape[:ax] + idx.shape + p.shape[ax + 1:])]


def _gather_kernel(attrs, be, res):
    axis, gather, index_error = attrs["axis"], be.gather, be.index_error

    def gather_v2(p, i):
        # a negative axis stays negative when the rank was unknown at build time: make it
        # positive here, where the rank is known (the backends' output shapes need it)
        if not -p.ndim <= axis < p.ndim:
            raise InvalidArgumentError(f"GatherV2: axis {axis} is out of range for params "
                                       f"of shape {tuple(p.shape)}")
        ax = axis % p.ndim
        # an index outside [0, N) is an InvalidArgumentError, as TF's CPU kernel raises it
        # (gather_functor.h / gather_op.cc), not numpy's wrap-around of -1
        bad = index_error(i, p.shape[ax])
        if bad is not None:
            raise InvalidArgumentError(f"GatherV2: {bad} (params has shape "
                                       f"{tuple(p.shape)}, axis {axis})")
        return gather(p, i, ax)
    return gather_v2


define(OpDef("GatherV2", _gather_shape, _gather_kernel))


def gather(params, indices, validate_indices=None, name=None, axis=None, batch_dims=0
           ) -> Tensor:
    """``tf.compat.v1.gather``: TF1's argument order, so ``gather(p, i, 1)`` is not an
    axis (it is ``validate_indices``, which TF ignores; indices are always checked
    here). ``axis`` defaults to 0; ``batch_dims`` is left out."""
    if batch_dims != 0:
        raise NotImplementedError("gather: batch_dims is not implemented in miniflow")
    axis = 0 if axis is None else axis
    params = convert_to_tensor(params)
    ax = check_axis("GatherV2", axis, params)
    return make_op("GatherV2", [params, indices], {"axis": ax}, name).outputs[0]


def _segment_sum_shape(ins, attrs):
    d, ids, n = ins
    if d.shape is None or ids.shape is None:
        return [(d.dtype, None)]
    segments = shape_from_tensor(n)
    rows = segments[0] if segments is not None and len(segments) == 1 else None
    return [(d.dtype, (rows,) + tuple(d.shape[len(ids.shape):]))]


define(OpDef("UnsortedSegmentSum", _segment_sum_shape,
             lambda a, be, res: lambda d, ids, n: be.unsorted_segment_sum(
                 d, ids, int(_host(be, n)[0])), host_inputs=(2,)))


def _one_hot_shape(ins, attrs):
    i = ins[0]
    if not i.dtype.is_integer:
        raise dtype_error("OneHot", "indices must be integers", i)
    if attrs["depth"] < 0:
        raise shape_error("OneHot", f"depth must be non-negative, got {attrs['depth']}", i)
    return [(attrs["dtype"], None if i.shape is None else i.shape + (attrs["depth"],))]


define(OpDef("OneHot", _one_hot_shape,
             lambda a, be, res: lambda i: be.one_hot(i, a["depth"], a["on_value"],
                                                     a["off_value"], a["dtype"]),
             expensive=False))


def one_hot(indices, depth, on_value=None, off_value=None, axis=None, dtype=None,
            name=None) -> Tensor:
    """``tf.one_hot``: the dtype is ``dtype``, else that of ``on_value``/``off_value``
    (Python numbers as TF reads them: ints int32, floats float32), else float32; the new
    axis of size ``depth`` is last unless ``axis`` puts it elsewhere."""
    kinds = {value_dtype(v) for v in (on_value, off_value) if v is not None}
    if dtype is None and len(kinds) > 1:
        raise TypeError(f"one_hot: on_value and off_value have different dtypes "
                        f"{sorted(k.name for k in kinds)}")
    dt = as_dtype(dtype) if dtype is not None else kinds.pop() if kinds else float32
    on, off = (python_value_as(1 if on_value is None else on_value, dt).item(),
               python_value_as(0 if off_value is None else off_value, dt).item())
    last = axis is None or axis == -1  # the new axis where OneHot puts it
    out = make_op("OneHot", [indices], {"depth": int(depth), "dtype": dt, "on_value": on,
                                        "off_value": off},
                  (name or "one_hot") if last else None).outputs[0]
    if last:
        return out
    rank = None if out.shape is None else len(out.shape)
    if rank is None or not 0 <= axis < rank:  # TF: -1, or 0..rank(indices)
        raise shape_error("OneHot", f"axis {axis} must be -1 or in 0..{rank - 1}" if rank
                          else f"axis {axis} needs the indices' rank when the graph is "
                               f"built", out)
    perm = list(range(rank - 1))
    perm.insert(axis, rank - 1)
    return transpose(out, perm, name=name)


# -- shapes, fills, broadcasting ---------------------------------------------------------

define(OpDef("Shape", lambda ins, a: [(int32, (None if ins[0].shape is None
                                               else len(ins[0].shape),))],
             lambda a, be, res: be.shape_of, expensive=False))
define(OpDef("Size", lambda ins, a: [(int32, ())], lambda a, be, res: be.size_of,
             expensive=False))


def shape(x, name=None) -> Tensor:
    return make_op("Shape", [x], name=name).outputs[0]


def size(x, name=None) -> Tensor:
    return make_op("Size", [x], name=name).outputs[0]


define(OpDef("Fill", lambda ins, a: [(a["dtype"], shape_from_tensor(ins[0]))],
             lambda a, be, res: lambda s: be.fill(_host(be, s), a["value"], a["dtype"]),
             expensive=False, host_inputs=(0,)))
define(OpDef("ZerosLike", lambda ins, a: [(a["dtype"], ins[0].shape)],
             lambda a, be, res: lambda x: be.zeros(be.shape_of(x), a["dtype"]),
             expensive=False))


def zeros_like(tensor, dtype=None, name=None, optimize=True) -> Tensor:
    """``tf.zeros_like`` (TF1's order: the dtype second); ``optimize`` is accepted."""
    x = convert_to_tensor(tensor)
    dt = x.dtype if dtype is None else as_dtype(dtype)
    return make_op("ZerosLike", [x], {"dtype": dt}, name or "zeros_like").outputs[0]


def ones_like(tensor, dtype=None, name=None, optimize=True) -> Tensor:
    """``tf.ones_like`` (TF1's order: the dtype second); ``optimize`` is accepted."""
    x = convert_to_tensor(tensor)
    dt = x.dtype if dtype is None else as_dtype(dtype)
    if shapes.is_fully_defined(x.shape):
        return constant(np.ones(x.shape, dt.np_dtype), name=name or "ones_like")
    return make_op("Fill", [shape(x)], {"value": 1, "dtype": dt}, name or "ones_like").outputs[0]


def _broadcast_to_shape(ins, attrs):
    x, target = ins[0], shape_from_tensor(ins[1])
    if x.shape is not None and target is not None and (len(x.shape) > len(target) or any(
            d is not None and t is not None and d not in (1, t)
            for d, t in zip(x.shape[::-1], target[::-1], strict=False))):
        raise shape_error("BroadcastTo", f"cannot broadcast to {shapes.fmt(target)}", x)
    return [(x.dtype, target)]


define(OpDef("BroadcastTo", _broadcast_to_shape,
             lambda a, be, res: lambda x, s: be.broadcast_to(x, _host(be, s)),
             expensive=False, host_inputs=(1,)))


def broadcast_to(x, shape_tensor, name=None) -> Tensor:
    return make_op("BroadcastTo", [x, shape_tensor], name=name).outputs[0]


def _bga_kernel(attrs, be, res):
    """Which axes of each input were broadcast (TF's BroadcastGradientArgs): the axes
    a gradient must be summed over to get back to that input's shape."""
    def bga(s0, s1):
        s0, s1 = _host(be, s0), _host(be, s1)
        n = max(len(s0), len(s1))
        a = np.concatenate([np.ones(n - len(s0), np.int64), s0])
        b = np.concatenate([np.ones(n - len(s1), np.int64), s1])
        out = np.broadcast_shapes(tuple(a), tuple(b))
        r0 = [i for i in range(n) if a[i] == 1 and out[i] != 1 or i < n - len(s0)]
        r1 = [i for i in range(n) if b[i] == 1 and out[i] != 1 or i < n - len(s1)]
        return np.asarray(r0, np.int32), np.asarray(r1, np.int32)
    return bga


define(OpDef("BroadcastGradientArgs", lambda ins, a: [(int32, (None,)), (int32, (None,))],
             _bga_kernel, expensive=False, host_inputs=(0, 1)))


def broadcast_gradient_args(s0, s1, name=None) -> tuple[Tensor, Tensor]:
    op = make_op("BroadcastGradientArgs", [s0, s1], name=name)
    return op.outputs[0], op.outputs[1]


def _reduced_shape_kernel(attrs, be, res):
    def reduced(s, axes):
        s = _host(be, s).copy()
        ax = _host(be, axes)
        s[ax % len(s) if len(s) else ax] = 1
        return s.astype(np.int32)
    return reduced


# The input's shape with the reduced axes set to 1 (TF's math_ops.reduced_shape, used by
# math_grad.py's reduction gradients).
define(OpDef("ReducedShape", lambda ins, a: [(int32, ins[0].shape)], _reduced_shape_kernel,
             expensive=False, host_inputs=(0, 1)))


def reduced_shape(input_shape, axes, name=None) -> Tensor:
    return make_op("ReducedShape", [input_shape, axes], name=name).outputs[0]


# -- where (TF keeps both in array_ops.py; the SelectV2 op is in math_ops) ------------

def where_v2(condition, x, y, name=None) -> Tensor:
    """``x`` where ``condition`` else ``y``, all three broadcast as numpy does (TF2's
    ``where``); a Python number on one side takes the other side's dtype
    (``where(c, x_f64, 0.0)``), as for the binary ops."""
    from .math_ops import _operands

    x, y = _operands("SelectV2", x, y)
    return make_op("SelectV2", [condition, x, y], name=name).outputs[0]


def where(condition, x, y, name=None) -> Tensor:
    """TF1's ``where`` (``tf.compat.v1.where``): as :func:`where_v2`, except that a
    vector condition with matrices picks whole *rows* (TF1's Select), where a broadcast
    would align it with the last axis and pick columns of a square input. With a rank
    the graph does not know, TF1's Select op decides when it runs."""
    c = convert_to_tensor(condition)
    sides = [v.shape if hasattr(v, "shape") else np.shape(v) for v in (x, y)]
    if c.shape is None or any(s is None for s in sides):
        from .math_ops import _operands

        x, y = _operands("Select", x, y)
        return make_op("Select", [c, x, y], name=name).outputs[0]
    rank = max((len(s) for s in sides if s is not None), default=0)  # either may be the matrix
    if c.shape is not None and len(c.shape) == 1 and rank > 1:
        c = reshape(c, [-1] + [1] * (rank - 1))
    # (TF1's Select gives x and y one shape, so a dimension either knows the result has:
    # where_v2's broadcast of None with n is n already)
    return where_v2(c, x, y, name)
