"""The backend seam: the array functions kernels are written against.

TensorFlow registers a separate kernel per (op, device type): Eigen code for CPUs, CUDA
and cuDNN for GPUs. miniflow writes each kernel once against this small array API and
provides it twice, like needle's ``array_api``:

* :class:`NumpyBackend` for ``/cpu:N`` (the default CPU backend);
* :class:`.backend_torch.TorchBackend` for ``/gpu:0`` (torch on CUDA), and optionally
  for CPUs (``ConfigProto(cpu_backend="torch")``), which lets the tests check both
  backends on a laptop.

Convolutions and pooling live in :mod:`.conv`. To port miniflow to a new device, write
one more class with these methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dtypes import DType


def _tf_same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding: output = ceil(size / stride), extra pad at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _bad_index(idx: np.ndarray, limit: int) -> str:
    """TF's message for the first index outside ``[0, limit)`` (gather_op.cc:
    ``indices[1,0] = -1 is not in [0, 5)``); only called once a bad index is known."""
    flat = idx.reshape(-1)
    k = int(np.flatnonzero((flat < 0) | (flat >= limit))[0])
    where = ",".join(str(int(i)) for i in np.unravel_index(k, idx.shape))
    return f"indices{f'[{where}]' if idx.ndim else ''} = {flat[k]} is not in [0, {limit})"


def _trunc_div(s, n: int):
    """Integer ``s / n`` rounded toward zero, as C++ divides (numpy's // floors)."""
    q = np.abs(s) // n
    return np.where(s < 0, -q, q).astype(s.dtype, copy=False)


def _has_negative_step(index: tuple) -> bool:
    return any(type(k) is slice and k.step is not None and k.step < 0 for k in index)


def _positive_steps(index: tuple, shape) -> tuple[tuple, list[int]]:
    """torch refuses negative slice steps, which TF's StridedSlice (and numpy) take: the
    same elements as ``index`` picked with positive steps, and the output dimensions to
    flip afterwards (``x[5:0:-2]`` is ``x[1:6:2]`` reversed)."""
    n_consumed = sum(1 for k in index if k is not None and k is not Ellipsis)
    out, flips, d, o = [], [], 0, 0  # d: input dimension, o: output dimension
    for k in index:
        if k is Ellipsis:
            d += len(shape) - n_consumed
            o += len(shape) - n_consumed
        elif k is None:
            o += 1
        elif type(k) is slice:
            if k.step is not None and k.step < 0:
                r = range(*k.indices(int(shape[d])))
                k = slice(r[-1], r[0] + 1, -k.step) if r else slice(0, 0)
                flips.append(o)
            d += 1
            o += 1
        else:  # an int: consumes a dimension, makes none
            d += 1
        out.append(k)
    return tuple(out), flips



def lowest(dtype) -> float | int:
    """The identity of Max: what TF's Max of an empty axis gives (Eigen's MaxReducer
    starts from -inf for floating types, the type's lowest value for integers)."""
    dtype = np.dtype(dtype)
    return -np.inf if dtype.kind == "f" else int(np.iinfo(dtype).min)

def highest(dtype) -> float | int:
    """The identity of Min (Eigen's MinReducer: +inf, or the integer type's largest)."""
    dtype = np.dtype(dtype)
    return np.inf if dtype.kind == "f" else int(np.iinfo(dtype).max)


class NumpyBackend:
    name = "numpy"
    device = "cpu"

    add, subtract, multiply, divide = np.add, np.subtract, np.multiply, np.true_divide
    negative, power, exp, log, tanh = np.negative, np.power, np.exp, np.log, np.tanh
    sqrt, square, abs, maximum, minimum = np.sqrt, np.square, np.abs, np.maximum, np.minimum
    sign = np.sign
    equal, not_equal, less, greater = np.equal, np.not_equal, np.less, np.greater
    less_equal, greater_equal = np.less_equal, np.greater_equal
    logical_and, logical_or, logical_not = np.logical_and, np.logical_or, np.logical_not
    where, matmul = staticmethod(np.where), np.matmul

    @staticmethod
    def floor_divide(x, y):
        """TF's FloorDiv: for real types ``floor(x / y)`` (cwise_ops.h
        ``google_floor_div_real``), not Python's ``//``, which differs where ``x / y``
        rounds onto an integer (``1.0 // 0.1`` is 9.0, TF's 10.0) and for infinities."""
        if np.result_type(x, y).kind == "f":
            return np.floor(np.true_divide(x, y))
        return np.floor_divide(x, y)

    @staticmethod
    def sigmoid(x):
        # exp of a non-positive number only: never overflows, and keeps full relative
        # precision for negative x, where 1 + tanh(x / 2) cancels (float32 sigmoid(-20)
        # came out 0, so log(sigmoid(x)) was -inf) -- as Eigen's scalar_logistic_op does
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)

    @staticmethod
    def relu(x):
        return np.maximum(x, 0)

    @staticmethod
    def relu_grad(g, features):
        return g * (features > 0)

    @staticmethod
    def sqrt_grad(y, dy):
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 where dy == 0 is dropped
            return np.where(dy == 0, np.zeros((), dy.dtype), 0.5 * dy / y)

    @staticmethod
    def asarray(x: Any, dtype: DType | None = None):
        return np.asarray(x, dtype=dtype.np_dtype if dtype else None)

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        # a value received from /gpu:0 is a CUDA tensor, which numpy cannot read in place:
        # copy it to the host first (TF's CopyTensor does the device-to-host copy)
        if hasattr(x, "detach"):
            x = x.detach().cpu()
        return np.asarray(x)

    @staticmethod
    def nbytes(x) -> int:
        return getattr(x, "nbytes", 8)

    @staticmethod
    def cast(x, dtype: DType):
        return np.asarray(x).astype(dtype.np_dtype)

    # The ufunc methods below skip the Python wrappers of np.sum/np.mean/np.max, which
    # cost several microseconds a call: more than the arithmetic on a small tensor.
    # dtype=x.dtype: a reduction keeps its input's dtype, as in TF (numpy would sum int32
    # into int64)
    @staticmethod
    def sum(x, axis, keepdims):
        return np.add.reduce(x, axis=axis, keepdims=keepdims, dtype=x.dtype)

    @staticmethod
    def mean(x, axis, keepdims):
        # half precision sums in float32 (as torch and Eigen's MeanReducer for half do):
        # a float16 sum overflows long before the mean does
        acc = np.float32 if x.dtype == np.float16 else x.dtype
        s = np.add.reduce(x, axis=axis, keepdims=keepdims, dtype=acc)
        n = x.size // max(np.size(s), 1)
        if x.dtype.kind in "iu":  # an integer mean is an integer: sum / n in C++
            # (Eigen's MeanReducer), which rounds toward zero. An empty axis gives TF's
            # identity for an integer Mean, the reducer's initial 0 (reduction_ops.h uses
            # NaN only for floating types), not numpy's divide-by-zero warning: divide the
            # zero sum by 1, as torch does
            return _trunc_div(s, max(n, 1))
        return (s / n).astype(x.dtype, copy=False)

    @staticmethod
    def max(x, axis, keepdims):
        if x.size == 0:  # TF's Max of nothing is the reducer's identity (see lowest)
            return np.maximum.reduce(x, axis=axis, keepdims=keepdims, initial=lowest(x.dtype))
        return np.maximum.reduce(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def min(x, axis, keepdims):
        if x.size == 0:  # TF's Min of nothing is the reducer's identity (highest)
            return np.minimum.reduce(x, axis=axis, keepdims=keepdims, initial=highest(x.dtype))
        return np.minimum.reduce(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def argmax(x, axis, dtype: DType):
        return np.argmax(x, axis=axis).astype(dtype.np_dtype)

    @staticmethod
    def reshape(x, shape):
        return x.reshape(shape)

    @staticmethod
    def transpose(x, perm):
        return np.transpose(x, perm)

    @staticmethod
    def concat(xs, axis):
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def split(x, sizes, axis):
        return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))

    @staticmethod
    def gather(params, indices, axis):
        return np.take(params, indices, axis=axis)

    @staticmethod
    def index_error(indices, limit: int) -> str | None:
        """TF's CPU gather refuses an index outside ``[0, limit)``
        (tensorflow/core/kernels/gather_functor.h returns the bad index; gather_op.cc
        raises InvalidArgument); np.take would wrap -1 to the last row. One reduction
        checks both ends: a negative index read as unsigned is huge."""
        idx = np.asarray(indices)
        if idx.size and np.maximum.reduce(idx.view(f"u{idx.itemsize}"), axis=None) >= limit:
            return _bad_index(idx, limit)
        return None

    @staticmethod
    def has_integer_zero(y) -> bool:
        """Whether an integer divisor holds a zero (floats may divide by zero)."""
        return y.dtype.kind in "iu" and not y.all()

    @staticmethod
    def has_negative_integer(y) -> bool:
        """Whether an integer exponent holds a negative number."""
        return y.dtype.kind == "i" and bool((y < 0).any())

    @staticmethod
    def unsorted_segment_sum(data, segment_ids, num_segments):
        out = np.zeros((int(num_segments),) + data.shape[segment_ids.ndim:], data.dtype)
        np.add.at(out, segment_ids, data)
        return out

    @staticmethod
    def one_hot(indices, depth, on, off, dtype: DType):
        hot = np.asarray(indices)[..., None] == np.arange(depth)
        return np.where(hot, on, off).astype(dtype.np_dtype)

    @staticmethod
    def broadcast_to(x, shape):
        shape = tuple(shape.tolist()) if isinstance(shape, np.ndarray) else tuple(shape)
        if np.ndim(x) == 0:  # a scalar spread out: a filled buffer, not a strided view
            out = np.empty(shape, np.asarray(x).dtype)
            out.fill(x)
            return out
        return np.broadcast_to(x, shape)

    @staticmethod
    def zeros(shape, dtype: DType):
        return np.zeros(tuple(int(d) for d in shape), dtype.np_dtype)

    @staticmethod
    def fill(shape, value, dtype: DType):
        return np.full(tuple(int(d) for d in shape), value, dtype.np_dtype)

    @staticmethod
    def shape_of(x):
        return np.array(x.shape, np.int32)

    @staticmethod
    def size_of(x):
        return np.int32(x.size)

    @staticmethod
    def getitem(x, index):
        return np.asarray(x[index])

    @staticmethod
    def setitem_zeros(shape, index, value):
        out = np.zeros(tuple(int(d) for d in shape), value.dtype)
        out[index] = value
        return out

    @staticmethod
    def all_finite(x) -> bool:
        return bool(np.isfinite(x).all())

    @staticmethod
    def softmax(x):
        if x.size == 0:  # zero classes (or rows): nothing to normalise, as TF's kernel
            return np.empty_like(x)
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    @staticmethod
    def log_softmax(x):
        if x.size == 0:
            return np.empty_like(x)
        z = x - x.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    @staticmethod
    def copy_(dst, src):
        np.copyto(dst, src)
        return dst

    @staticmethod
    def copy(x):
        return np.array(x, copy=True)


NUMPY = NumpyBackend()
