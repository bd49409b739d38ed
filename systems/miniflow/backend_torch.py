"""The torch implementation of miniflow's array API (see :mod:`.backend`).

The same methods as :class:`.backend.NumpyBackend`, on torch tensors of one device: the
kernels of ``/gpu:0`` (CUDA), and of CPUs under ``ConfigProto(cpu_backend="torch")``.
Where torch's semantics differ from TensorFlow's (the mean of integers, indexing with
negative steps, NaN through ReLU's gradient), the method says so and keeps TF's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import NumpyBackend, _bad_index, _has_negative_step, _positive_steps
from .dtypes import DType


class TorchBackend:
    """The same API on torch tensors, on ``device`` ('cpu' or 'cuda')."""

    name = "torch"

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = device
        t = torch
        self.add, self.subtract, self.multiply = t.add, t.sub, t.mul
        self.divide, self.negative, self.power = t.true_divide, t.neg, t.pow
        # TF's FloorDiv: floor(x / y) for real types, not torch's Python-like // (see the
        # numpy backend); integers round toward -inf (torch 1.13 and later), as TF's
        self.floor_divide = lambda x, y: (t.floor(t.true_divide(x, y))
                                          if x.is_floating_point() else t.floor_divide(x, y))
        self.exp, self.log, self.tanh, self.sigmoid = t.exp, t.log, t.tanh, t.sigmoid
        self.sqrt, self.square, self.abs = t.sqrt, t.square, t.abs
        self.maximum, self.minimum, self.relu = t.maximum, t.minimum, t.relu
        self.equal, self.not_equal, self.less, self.greater = t.eq, t.ne, t.lt, t.gt
        self.less_equal, self.greater_equal = t.le, t.ge
        self.logical_and, self.logical_or = t.logical_and, t.logical_or
        self.logical_not, self.where, self.matmul = t.logical_not, t.where, t.matmul

    def asarray(self, x: Any, dtype: DType | None = None):
        if isinstance(x, self.torch.Tensor):
            x = x.to(self.device)
            return x.to(dtype.torch_dtype) if dtype else x
        a = np.asarray(x, dtype=dtype.np_dtype if dtype else None)
        return self.torch.from_numpy(np.array(a, copy=True)).to(self.device)

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, self.torch.Tensor) else np.asarray(x)

    def nbytes(self, x) -> int:
        return x.element_size() * x.nelement() if isinstance(x, self.torch.Tensor) else 8

    def cast(self, x, dtype: DType):
        if not isinstance(x, self.torch.Tensor):  # a host value (a count, a shape)
            return self.asarray(x, dtype)
        return x.to(dtype.torch_dtype)

    def sum(self, x, axis, keepdims):  # dtype=: torch too sums int32 into int64
        if axis is None:
            s = x.sum(dtype=x.dtype)
            return s.reshape((1,) * x.dim()) if keepdims else s
        return x.sum(dim=axis, keepdim=keepdims, dtype=x.dtype) if axis != () else x

    def mean(self, x, axis, keepdims):
        if not x.is_floating_point():  # torch has no integer mean; TF truncates sum / n
            s = self.sum(x, axis, keepdims)
            return self.torch.div(s, max(x.numel() // max(s.numel(), 1), 1),
                                  rounding_mode="trunc")
        if axis is None:
            return x.mean().reshape((1,) * x.dim()) if keepdims else x.mean()
        return x.mean(dim=axis, keepdim=keepdims) if axis != () else x

    def max(self, x, axis, keepdims):
        return self._extreme("max", x, axis, keepdims)

    def min(self, x, axis, keepdims):
        return self._extreme("min", x, axis, keepdims)

    def _extreme(self, which: str, x, axis, keepdims):
        if x.numel() == 0:  # torch refuses; TF gives the reducer's identity (lowest/highest)
            return self.asarray(getattr(NumpyBackend, which)(self.to_numpy(x), axis, keepdims))
        reduce = x.amax if which == "max" else x.amin
        if axis is None:
            return reduce().reshape((1,) * x.dim()) if keepdims else reduce()
        return reduce(dim=axis, keepdim=keepdims) if axis != () else x

    def argmax(self, x, axis, dtype: DType):
        return x.argmax(dim=axis).to(dtype.torch_dtype)

    def reshape(self, x, shape: tuple[int, ...]):
        return x.reshape(shape)

    def transpose(self, x, perm):
        return x.permute(tuple(perm))  # a tuple: () for a 0-d tensor (no args is an error)

    def concat(self, xs, axis):
        return self.torch.cat(list(xs), dim=axis)

    def split(self, x, sizes, axis):
        return tuple(self.torch.split(x, [int(s) for s in sizes], dim=axis))

    def gather(self, params, indices, axis):
        idx = indices.long()
        return self.torch.index_select(params, axis, idx.reshape(-1)).reshape(
            params.shape[:axis] + idx.shape + params.shape[axis + 1:])

    def index_error(self, indices, limit: int) -> str | None:
        """As :meth:`NumpyBackend.index_error`, on the CPU (index_select would raise a bare
        IndexError). Not on CUDA: reading the verdict back would stall the stream once per
        gather per step; there TF's GPU kernel zero-fills a bad index instead of failing,
        and torch's index_select trips a device-side assert (a known difference)."""
        if indices.is_cuda:
            return None
        if indices.numel():
            lo, hi = self.torch.aminmax(indices)
            if bool((lo < 0) | (hi >= limit)):
                return _bad_index(self.to_numpy(indices), limit)
        return None

    def has_integer_zero(self, y) -> bool:
        return not y.is_floating_point() and not bool(y.all())

    def has_negative_integer(self, y) -> bool:
        return not y.is_floating_point() and y.dtype != self.torch.bool and bool((y < 0).any())

    def unsorted_segment_sum(self, data, segment_ids, num_segments):
        ids = segment_ids.long().reshape(-1)
        flat = data.reshape((ids.numel(),) + tuple(data.shape[segment_ids.dim():]))
        out = self.torch.zeros((int(num_segments),) + tuple(flat.shape[1:]),
                               dtype=data.dtype, device=data.device)
        return out.index_add_(0, ids, flat)

    def one_hot(self, indices, depth, on, off, dtype: DType):
        hot = indices.long().unsqueeze(-1) == self.torch.arange(depth, device=indices.device)
        on_t = self.torch.tensor(on, dtype=dtype.torch_dtype, device=indices.device)
        off_t = self.torch.tensor(off, dtype=dtype.torch_dtype, device=indices.device)
        return self.torch.where(hot, on_t, off_t)

    def broadcast_to(self, x, shape):
        return x.broadcast_to(tuple(int(d) for d in shape))

    def zeros(self, shape, dtype: DType):
        return self.torch.zeros(tuple(int(d) for d in shape), dtype=dtype.torch_dtype,
                                device=self.device)

    def fill(self, shape, value, dtype: DType):
        return self.torch.full(tuple(int(d) for d in shape), value, dtype=dtype.torch_dtype,
                               device=self.device)

    def shape_of(self, x):
        return np.asarray(tuple(x.shape), np.int32)  # shapes stay on the host, as in TF

    def size_of(self, x):
        return np.int32(x.numel())

    def sign(self, x):
        # torch.sign maps NaN to 0; TF and numpy keep NaN, and so must Abs's gradient
        # (g * sign(x)), or a NaN that check_numerics finds on the CPU vanishes on a GPU
        s = self.torch.sign(x)
        return self.torch.where(x != x, x, s) if x.is_floating_point() else s

    def relu_grad(self, g, features):
        # two kernels where torch's threshold_backward is one, kept for TF's semantics
        # (relu_op_functor.h multiplies): a NaN or Inf in g where the unit is off stays
        # NaN, as in the numpy backend, so check_numerics still sees it
        return g * (features > 0)

    def sqrt_grad(self, y, dy):
        return self.torch.where(dy == 0, self.torch.zeros((), dtype=dy.dtype, device=dy.device),
                                0.5 * dy / y)

    def getitem(self, x, index):
        if not _has_negative_step(index):
            return x[index]
        pos, flips = _positive_steps(index, x.shape)
        return x[pos].flip(flips)

    def setitem_zeros(self, shape, index, value):
        out = self.torch.zeros(tuple(int(d) for d in shape), dtype=value.dtype,
                               device=value.device)
        if _has_negative_step(index):
            index, flips = _positive_steps(index, out.shape)
            value = value.flip(flips)
        out[index] = value
        return out

    def all_finite(self, x) -> bool:
        return bool(self.torch.isfinite(x).all())

    def softmax(self, x):
        return self.torch.softmax(x, dim=-1)

    def log_softmax(self, x):
        return self.torch.log_softmax(x, dim=-1)

    def copy_(self, dst, src):
        return dst.copy_(src)

    def copy(self, x):
        return x.clone() if isinstance(x, self.torch.Tensor) else self.asarray(x)


_torch_backends: dict[str, TorchBackend] = {}


def torch_backend(device: str) -> TorchBackend:
    if device not in _torch_backends:
        _torch_backends[device] = TorchBackend(device)
    return _torch_backends[device]
