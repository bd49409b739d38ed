"""What an op type is: shape inference, a kernel factory, and facts the runtime needs.

TensorFlow separates the op *definition* (``REGISTER_OP`` with a shape function,
tensorflow/core/ops/*.cc) from its *kernels* (``REGISTER_KERNEL_BUILDER`` per device,
tensorflow/core/kernels/*.cc). Here one :class:`OpDef` holds both halves for an op type;
its kernel is written once against the backend seam (:mod:`.backend`), so the same
definition runs on numpy or on torch (CPU or CUDA). ``OP_DEFS`` is a plain dict from type
name to definition.

Kernel factories run when a plan is prepared (as TF instantiates ``OpKernel`` objects
once per executor), so the per-step cost of a node is one Python call: for ``Add`` on
numpy the "kernel" is ``np.add`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import shapes
from .dtypes import DType, as_dtype
from .errors import GraphBuildError, GraphBuildTypeError
from .graph import Operation, Tensor, get_default_graph

ShapeFn = Callable[[Sequence[Tensor], dict[str, Any]], list[tuple[DType, shapes.Shape]]]
# make_kernel(attrs, backend, resources) -> fn(*inputs) -> output, or a tuple of outputs
KernelFactory = Callable[[dict[str, Any], Any, Any], Callable[..., Any]]


@dataclass(frozen=True)
class OpDef:
    type: str
    shape_fn: ShapeFn
    make_kernel: KernelFactory
    stateful: bool = False  # never folded, never merged by CSE
    elementwise: bool = False  # may join a fused elementwise chain
    expensive: bool = True  # TF's OpKernel::IsExpensive marker: may go to the thread pool
    flops_per_element: float = 1.0  # rough cost, for the placer and the executor's first guess
    # the output is a variable's *reference* (TF's ``float32_ref`` dtypes): the variable
    # op itself and the ops that write it (Assign, ApplyAdam...). Fetching such an output
    # runs the write, so add_check_numerics_ops never checks it.
    ref_output: bool = False
    # inputs the kernel reads on the host, even on a GPU: shapes, sizes, axes (TF's
    # ``HostMemory("shape")`` on a kernel registration, e.g. Reshape in reshape_op.cc).
    # A constant or a received value read only through such inputs stays in host memory.
    host_inputs: Collection[int] = ()


OP_DEFS: dict[str, OpDef] = {}


def define(op_def: OpDef) -> OpDef:
    if op_def.type in OP_DEFS:
        raise ValueError(f"op type {op_def.type!r} is already defined")
    OP_DEFS[op_def.type] = op_def
    return op_def


def shape_error(op_type: str, message: str, *tensors: Tensor) -> GraphBuildError:
    """A build-time error naming the op, the offending shapes and the user's line."""
    from .graph import _user_site

    detail = ", ".join(f"{t.name} has shape {shapes.fmt(t.shape)} ({t.dtype.name})"
                       for t in tensors)
    return GraphBuildError(f"{op_type}: {message}; {detail} (at {_user_site()})")


def check_axis(op_type: str, axis: int, t: Tensor) -> int:
    """``axis`` of ``t`` in ``[0, rank)``: TF accepts ``-rank <= axis < rank`` and refuses
    the rest at build time; a bare ``axis % rank`` would quietly pick another axis."""
    if t.shape is None:
        return int(axis)
    rank = len(t.shape)
    if not -rank <= axis < rank:
        raise shape_error(op_type, f"axis {axis} is out of range for a tensor of rank {rank} "
                          f"(expected {-rank} <= axis < {rank})", t)
    return int(axis) % rank


def dtype_error(op_type: str, message: str, *tensors: Tensor) -> GraphBuildTypeError:
    """As :func:`shape_error`, for a dtype the op does not accept (a TypeError, as in TF)."""
    err = shape_error(op_type, message, *tensors)
    return GraphBuildTypeError(*err.args)


def make_op(op_type: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None,
            name: str | None = None) -> Operation:
    """Convert inputs to tensors, infer output dtypes and shapes, and add the op."""
    d = OP_DEFS[op_type]
    attrs = attrs or {}
    tensors = [convert_to_tensor(x) for x in inputs]
    specs = d.shape_fn(tensors, attrs)
    return get_default_graph().create_op(op_type, tensors, attrs, specs, name)


def convert_to_tensor(value: Any, dtype: DType | None = None) -> Tensor:
    """Tensors pass through; Variables give their read tensor; anything else becomes a Const."""
    if isinstance(value, Tensor):
        if dtype is not None and value.dtype != as_dtype(dtype):
            raise GraphBuildError(f"expected a {as_dtype(dtype).name} tensor, got "
                                  f"{value.name} of dtype {value.dtype.name}")
        return value
    if hasattr(value, "_as_tensor"):  # Variable
        return value._as_tensor()
    return constant(value, dtype)


def constant(value: Any, dtype: Any = None, shape: Sequence[int] | None = None,
             name: str | None = None) -> Tensor:
    """A tensor whose value is fixed in the graph (``tf.constant``).

    Python floats become float32 and ints int32 (int64 when they do not fit), as in
    TensorFlow, not numpy's 64-bit defaults: a literal ``2.0`` in ``x * 2.0`` must not
    change ``x``'s dtype. numpy values keep their dtype, or are cast to ``dtype``.
    """
    from_numpy = isinstance(value, (np.ndarray, np.generic))
    if dtype is not None:
        dt = as_dtype(dtype)
        arr = np.asarray(value).astype(dt.np_dtype) if from_numpy else \
            python_value_as(value, dt)
    else:  # a copy: the graph's constant must not be the caller's (writable) array
        arr = np.array(value, copy=True)
        if not from_numpy:
            arr = arr.astype(_python_default_dtype(arr), copy=False)
    if shape is not None:
        arr = _fill(arr, tuple(shape))
    dt = as_dtype(arr.dtype)
    arr.setflags(write=False)
    return get_default_graph().create_op("Const", [], {"value": arr}, [(dt, arr.shape)],
                                         name or "Const").outputs[0]


def _fill(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """TF1's ``constant(value, shape=)`` (tensor_util.make_tensor_proto): the values in
    order, reshaped; fewer values than the shape holds are padded with the last one
    (``constant([1, 2], shape=[2, 2])`` is ``[[1, 2], [2, 2]]``, not numpy's broadcast
    ``[[1, 2], [1, 2]]``); more are an error."""
    from .graph import _user_site

    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
               for d in shape):
        raise GraphBuildError(f"Const: shape {list(shape)} must be whole sizes >= 0, known "
                              f"when the graph is built (at {_user_site()})")
    flat, n = arr.reshape(-1), int(np.prod(shape))
    if n == 0 or flat.size == 0:  # an empty shape takes any value; no values fill zeros
        return np.zeros(shape, arr.dtype)
    if flat.size > n:
        raise GraphBuildError(f"Const: too many values: needed at most {n}, received "
                              f"{flat.size} for shape {list(shape)} (at {_user_site()})")
    return np.concatenate([flat, np.repeat(flat[-1:], n - flat.size)]).reshape(shape)


def _python_default_dtype(arr: np.ndarray) -> np.dtype:
    """TF's inference for Python numbers: float32, and int32 unless a value needs int64."""
    if arr.dtype == np.float64:
        return np.dtype(np.float32)
    if arr.dtype == np.int64:
        i32 = np.iinfo(np.int32)
        fits = arr.size == 0 or (i32.min <= arr.min() and arr.max() <= i32.max)
        return np.dtype(np.int32 if fits else np.int64)
    return arr.dtype


def value_dtype(value: Any) -> DType:
    """The dtype TF gives a value: a numpy value keeps its own; Python numbers are
    float32, and int32 unless one needs int64 (as :func:`constant` makes them)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return as_dtype(value.dtype)
    return as_dtype(_python_default_dtype(np.asarray(value)))


def python_value_as(value: Any, dtype: DType) -> np.ndarray:
    """Python number(s) as ``dtype``, refusing any that would change value: a float for
    an integer or bool tensor, an int out of range, a finite float that overflows (TF's
    ``tensor_util._AssertCompatible`` and its range checks raise TypeError)."""
    if dtype.is_floating and (type(value) is float or  # the common ``x * 2.0``, fast
                              (type(value) is int and abs(value) <= 2**53)):
        with np.errstate(over="ignore"):
            arr = np.array(value, dtype.np_dtype)
        if not math.isfinite(arr) and math.isfinite(value):
            raise TypeError(f"Expected {dtype.name}, got {value!r} of type "
                            f"'{type(value).__name__}' instead: it overflows {dtype.name}")
        return arr
    raw = np.asarray(value)
    why = None
    if raw.size == 0:  # [] is float64 to numpy, and fits any dtype
        return raw.astype(dtype.np_dtype)
    if raw.dtype.kind not in "biuf":
        why = "it is not a number of a supported size"
    elif dtype.is_bool and raw.dtype.kind != "b":
        why = "only True and False are bools"
    elif dtype.is_integer and raw.dtype.kind == "f":
        why = "a float cannot become an integer without losing its fraction"
    if why is None:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = raw.astype(dtype.np_dtype)
        if raw.dtype.kind in "iu" and dtype.is_integer and not np.array_equal(arr, raw):
            why = f"it is out of range for {dtype.name}"
        elif dtype.is_floating and (np.isfinite(raw) & ~np.isfinite(arr)).any():
            why = f"it overflows {dtype.name}"
    if why is not None:
        raise TypeError(f"Expected {dtype.name}, got {value!r} of type "
                        f"'{type(value).__name__}' instead: {why}")
    return arr


def same_dtype(op_type: str, *ts: Tensor) -> DType:
    dt = ts[0].dtype
    for t in ts[1:]:
        if t.dtype != dt:
            raise dtype_error(op_type, "inputs must have the same dtype (TensorFlow does not "
                              "promote types; use mf.cast)", *ts)
    return dt


def elementwise_shape(op_type: str, *ts: Tensor) -> shapes.Shape:
    out = ts[0].shape
    for t in ts[1:]:
        out = shapes.broadcast(out, t.shape)
        if isinstance(out, str):
            raise shape_error(op_type, f"shapes cannot be broadcast together: {out}", *ts)
    return out


def static_value(t: Tensor) -> np.ndarray | None:
    """The value of ``t`` if it is a Const (TF's ``tensor_util.constant_value``)."""
    return t.op.attrs["value"] if t.op.type == "Const" else None


def shape_from_tensor(t: Tensor) -> shapes.Shape:
    """What a shape-valued tensor says statically: a Const's value, or the static shape of
    ``x`` for ``Shape(x)`` (TF's ``InferenceContext::MakeShapeFromShapeTensor``)."""
    v = static_value(t)
    if v is not None:
        return tuple(int(d) for d in np.asarray(v).reshape(-1))
    if t.op.type == "Shape":
        return t.op.inputs[0].shape
    if t.op.type == "ConcatV2" and t.shape is not None and len(t.shape) == 1:
        # pieces of a shape: each constant piece's values, the others unknown (TF's
        # ShapeRefiner::ConstantPartialShape reads a ConcatV2 of shapes the same way)
        parts = [shape_from_tensor(p) for p in t.op.inputs]
        if all(p is not None for p in parts):  # a -1 (Reshape's "the rest") is unknown
            return tuple(None if d is None or d < 0 else d for p in parts for d in p)
    if t.shape is not None and len(t.shape) == 1 and t.shape[0] is not None:
        return (None,) * t.shape[0]
    return None
