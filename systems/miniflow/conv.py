"""Convolution and pooling kernels (NHWC data, HWIO filters, as TensorFlow's defaults).

TensorFlow's CPU kernels for these lower a convolution to one big matrix product
(``tensorflow/core/kernels/conv_ops.cc`` via Eigen's spatial convolution, which packs image
patches, i.e. im2col). The numpy versions here do the same: a strided *view* of all
patches (no copy) contracted with the filter by ``np.tensordot``. The gradients are the
two ops TF defines for them, ``Conv2DBackpropInput`` (a transposed convolution: scatter
each output gradient back over its patch) and ``Conv2DBackpropFilter`` (patches^T @
output gradient). On torch the same ops call ``torch.nn.functional`` / ``torch.nn.grad``.

Padding follows TensorFlow: 'VALID' pads nothing; 'SAME' makes output = ceil(in/stride)
and puts any odd extra padding at the bottom/right.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .backend import _tf_same_padding, lowest


def out_size(size: int | None, k: int | None, stride: int, padding: str) -> int | None:
    if size is None or (k is None and padding != "SAME"):  # SAME does not depend on k
        return None
    if padding == "SAME":
        return -(-size // stride)
    return (size - k) // stride + 1


def _pads(h: int, w: int, kh: int, kw: int, strides, padding: str):
    if padding == "VALID":
        return (0, 0), (0, 0)
    return _tf_same_padding(h, kh, strides[0]), _tf_same_padding(w, kw, strides[1])


def _patches(x: np.ndarray, kh: int, kw: int, strides, padding: str, fill: float = 0.0):
    """All kh x kw patches of NHWC ``x``: a view of shape (N, Ho, Wo, C, kh, kw)."""
    ph, pw = _pads(x.shape[1], x.shape[2], kh, kw, strides, padding)
    if any(ph + pw):
        x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=fill)
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))
    return win[:, ::strides[0], ::strides[1]], ph, pw


def conv2d(x, f, strides, padding):
    kh, kw = f.shape[:2]
    p, _, _ = _patches(x, kh, kw, strides, padding)
    # (N,Ho,Wo,C,kh,kw) . (kh,kw,C,O) over (kh, kw, C)
    return np.tensordot(p, f, axes=([4, 5, 3], [0, 1, 2])).astype(x.dtype, copy=False)


def conv2d_backprop_filter(x, filter_shape, dy, strides, padding):
    kh, kw = int(filter_shape[0]), int(filter_shape[1])
    p, _, _ = _patches(x, kh, kw, strides, padding)
    # sum over N, Ho, Wo of patch[n,i,j,c,a,b] * dy[n,i,j,o] -> (c, a, b, o)
    g = np.tensordot(p, dy, axes=([0, 1, 2], [0, 1, 2]))
    return np.transpose(g, (1, 2, 0, 3)).astype(x.dtype, copy=False)


def conv2d_backprop_input(input_shape, f, dy, strides, padding):
    n, h, w, c = (int(d) for d in input_shape)
    kh, kw = f.shape[:2]
    (pt, pb), (pl, pr) = _pads(h, w, kh, kw, strides, padding)
    dx = np.zeros((n, h + pt + pb, w + pl + pr, c), dy.dtype)
    ho, wo = dy.shape[1], dy.shape[2]
    # Each filter tap (a, b) sends dy @ f[a, b]^T back to the input pixels it read.
    for a in range(kh):
        for b in range(kw):
            contrib = dy @ f[a, b].T  # (N, Ho, Wo, C)
            dx[:, a:a + ho * strides[0]:strides[0], b:b + wo * strides[1]:strides[1]] += contrib
    return dx[:, pt:pt + h, pl:pl + w]


def max_pool(x, ksize, strides, padding):
    p, _, _ = _patches(x, ksize[0], ksize[1], strides, padding, fill=lowest(x.dtype))
    return p.max(axis=(4, 5)).astype(x.dtype, copy=False)


def max_pool_grad(x, dy, ksize, strides, padding):
    """Route each output gradient to the first maximal input of its window (as TF)."""
    kh, kw = ksize
    p, (pt, pb), (pl, pr) = _patches(x, kh, kw, strides, padding, fill=lowest(x.dtype))
    n, ho, wo, c = dy.shape
    arg = p.reshape(n, ho, wo, c, kh * kw).argmax(axis=-1)
    ii = np.arange(ho)[None, :, None, None] * strides[0] + arg // kw
    jj = np.arange(wo)[None, None, :, None] * strides[1] + arg % kw
    nn = np.arange(n)[:, None, None, None]
    cc = np.arange(c)[None, None, None, :]
    dx = np.zeros((n, x.shape[1] + pt + pb, x.shape[2] + pl + pr, c), dy.dtype)
    np.add.at(dx, (nn, ii, jj, cc), dy)
    return dx[:, pt:pt + x.shape[1], pl:pl + x.shape[2]]


def max_pool_grad_grad(x, g, ksize, strides, padding):
    """The gradient of MaxPoolGrad with respect to its ``dy``: each window's first
    maximal input picks its entry of ``g`` (the routing MaxPoolGrad used, read the
    other way: TF's ``MaxPoolGradGrad``)."""
    kh, kw = ksize
    p, _, _ = _patches(x, kh, kw, strides, padding, fill=lowest(x.dtype))
    gp, _, _ = _patches(g, kh, kw, strides, padding)
    n, ho, wo, c = p.shape[:4]
    arg = p.reshape(n, ho, wo, c, kh * kw).argmax(axis=-1)[..., None]
    return np.take_along_axis(gp.reshape(n, ho, wo, c, kh * kw), arg, -1)[..., 0]


def avg_pool(x, ksize, strides, padding):
    """Average over the window's *valid* inputs (TF excludes padding from the count)."""
    p, _, _ = _patches(x, ksize[0], ksize[1], strides, padding)
    ones, _, _ = _patches(np.ones(x.shape[:3] + (1,), x.dtype), ksize[0], ksize[1], strides,
                          padding)
    return (p.sum(axis=(4, 5)) / ones.sum(axis=(4, 5))).astype(x.dtype, copy=False)


def avg_pool_grad(input_shape, dy, ksize, strides, padding):
    n, h, w, c = (int(d) for d in input_shape)
    kh, kw = ksize
    (pt, pb), (pl, pr) = _pads(h, w, kh, kw, strides, padding)
    ones, _, _ = _patches(np.ones((1, h, w, 1), dy.dtype), kh, kw, strides, padding)
    share = dy / ones.sum(axis=(4, 5))
    dx = np.zeros((n, h + pt + pb, w + pl + pr, c), dy.dtype)
    ho, wo = dy.shape[1], dy.shape[2]
    for a in range(kh):
        for b in range(kw):
            dx[:, a:a + ho * strides[0]:strides[0], b:b + wo * strides[1]:strides[1]] += share
    return dx[:, pt:pt + h, pl:pl + w]


SHAPE_CACHE = 8  # shape-only tensors kept per backend (see TorchConv._shape_only)


class TorchConv:
    """The same five kernels on torch (NHWC kept at the interface, NCHW inside)."""

    def __init__(self, torch):
        self.t = torch
        self.F = torch.nn.functional
        self._shapes: OrderedDict[tuple, object] = OrderedDict()

    def _shape_only(self, shape, like, channels_last: bool = False):
        """An uninitialised tensor that the backward kernels read only for its shape and
        layout (TF's backprop ops take the shape itself). Made once per shape: on a GPU
        each allocation is a call into the caching allocator every step. The backend
        outlives sessions and a batch of unknown size makes a new shape per size, so only
        the ``SHAPE_CACHE`` most recently used are kept (each holds real memory)."""
        key = (shape, like.dtype, like.device, channels_last)
        t = self._shapes.get(key)
        if t is None:
            fmt = self.t.channels_last if channels_last else self.t.contiguous_format
            t = self._shapes[key] = self.t.empty(shape, dtype=like.dtype, device=like.device,
                                                 memory_format=fmt)
            while len(self._shapes) > SHAPE_CACHE:
                self._shapes.popitem(last=False)
        else:
            self._shapes.move_to_end(key)
        return t

    def _pad(self, x, kh, kw, strides, padding, value=0.0):
        (pt, pb), (pl, pr) = _pads(x.shape[2], x.shape[3], kh, kw, strides, padding)
        return self.F.pad(x, (pl, pr, pt, pb), value=value) if pt + pb + pl + pr else x

    def _conv_padding(self, x_nchw, kh, kw, strides, padding):
        """(input, padding for the conv itself). Symmetric padding goes to the kernel,
        which pads on the fly; only TF's odd SAME case (one more row or column at the
        end) pads the input explicitly, as TF's GPU Conv2D does (conv_ops.cc)."""
        (pt, pb), (pl, pr) = _pads(x_nchw.shape[2], x_nchw.shape[3], kh, kw, strides, padding)
        if pt == pb and pl == pr:
            return x_nchw, [pt, pl]
        return self.F.pad(x_nchw, (pl, pr, pt, pb)), [0, 0]

    def conv2d(self, x, f, strides, padding):
        if x.shape[3] == 0:  # no input channels: every output is an empty sum, 0 (torch's
            # conv2d would return an empty tensor instead, against the static shape)
            x = x.new_zeros(tuple(x.shape[:3]) + (1,))
            f = f.new_zeros(tuple(f.shape[:2]) + (1, f.shape[3]))
        # one input channel on a CPU: an NCHW tensor of its own, not the NHWC view, which
        # torch takes for channels-last and whose oneDNN kernel (torch 2.13) computes
        # wrong values when the output is one column wide and the width stride is 2 or
        # more. The price: the output is NCHW too, and the permute below copies it to NHWC
        xn = x[..., 0].unsqueeze(1) if x.shape[3] == 1 and x.device.type == "cpu" \
            else x.permute(0, 3, 1, 2)
        xc, pad = self._conv_padding(xn, f.shape[0], f.shape[1], strides, padding)
        y = self.F.conv2d(xc, f.permute(3, 2, 0, 1), stride=tuple(strides), padding=pad)
        return y.permute(0, 2, 3, 1).contiguous()

    def _grad_through(self, fn, inputs, dy):
        with self.t.enable_grad():
            leaves = [i.detach().requires_grad_(True) for i in inputs]
            out = fn(*leaves)
            return self.t.autograd.grad(out, leaves, dy)

    # The gradients call the backward kernels directly (``aten.convolution_backward``,
    # ``max_pool2d_with_indices_backward``), as TF registers Conv2DBackpropFilter/Input as
    # kernels of their own: going through autograd would re-run the forward op and build
    # a graph each step, which on a GPU costs more host time than the kernels take.
    def _conv_backward(self, dy, x_nchw, w_oihw, strides, pad, mask):
        return self.t.ops.aten.convolution_backward(
            dy.permute(0, 3, 1, 2), x_nchw, w_oihw, None, list(strides), pad, [1, 1],
            False, [0, 0], 1, mask)

    def conv2d_backprop_filter(self, x, filter_shape, dy, strides, padding):
        kh, kw, cin, cout = (int(d) for d in filter_shape)
        xc, pad = self._conv_padding(x.permute(0, 3, 1, 2), kh, kw, strides, padding)
        w = self._shape_only((cout, cin, kh, kw), x)
        gw = self._conv_backward(dy, xc, w, strides, pad, [False, True, False])[1]
        return gw.permute(2, 3, 1, 0)  # OIHW -> HWIO

    def conv2d_backprop_input(self, input_shape, f, dy, strides, padding):
        n, h, w, c = (int(d) for d in input_shape)
        (pt, pb), (pl, pr) = _pads(h, w, f.shape[0], f.shape[1], strides, padding)
        # the input's stand-in is channels-last, the layout of NHWC data seen as NCHW, so
        # the kernel takes dy as it is and returns a gradient that is NHWC in memory
        if pt == pb and pl == pr:  # the kernel pads: its gradient has the input's shape
            xc, pad, crop = self._shape_only((n, c, h, w), f, True), [pt, pl], False
        else:
            xc, pad, crop = self._shape_only((n, c, h + pt + pb, w + pl + pr), f, True), \
                [0, 0], True
        gx = self._conv_backward(dy, xc, f.permute(3, 2, 0, 1), strides, pad,
                                 [True, False, False])[0]
        if crop:
            gx = gx[:, :, pt:pt + h, pl:pl + w]
        return gx.permute(0, 2, 3, 1)

    def _lowest(self, x) -> float | int:
        """The padding a max never picks: -inf, or an integer type's lowest value (TF
        pools int32 too; -inf does not fit in one)."""
        return float("-inf") if x.is_floating_point() else int(self.t.iinfo(x.dtype).min)

    def max_pool(self, x, ksize, strides, padding):
        xc = self._pad(x.permute(0, 3, 1, 2), ksize[0], ksize[1], strides, padding,
                       value=self._lowest(x))
        y = self.F.max_pool2d(xc, tuple(ksize), tuple(strides))
        return y.permute(0, 2, 3, 1).contiguous()

    def max_pool_grad(self, x, dy, ksize, strides, padding):
        n, h, w, c = x.shape
        (pt, pb), (pl, pr) = _pads(h, w, ksize[0], ksize[1], strides, padding)
        xc = self._pad(x.permute(0, 3, 1, 2), ksize[0], ksize[1], strides, padding,
                       value=self._lowest(x))
        _, idx = self.F.max_pool2d(xc, tuple(ksize), tuple(strides), return_indices=True)
        gx = self.t.ops.aten.max_pool2d_with_indices_backward(
            dy.permute(0, 3, 1, 2), xc, list(ksize), list(strides), [0, 0], [1, 1], False, idx)
        return gx[:, :, pt:pt + h, pl:pl + w].permute(0, 2, 3, 1)

    def max_pool_grad_grad(self, x, g, ksize, strides, padding):
        xc = self._pad(x.permute(0, 3, 1, 2), ksize[0], ksize[1], strides, padding,
                       value=self._lowest(x))
        _, idx = self.F.max_pool2d(xc, tuple(ksize), tuple(strides), return_indices=True)
        gc = self._pad(g.permute(0, 3, 1, 2), ksize[0], ksize[1], strides, padding)
        out = gc.flatten(2).gather(2, idx.flatten(2)).view_as(idx)  # per (n, c) plane
        return out.permute(0, 2, 3, 1).contiguous()

    def max_pool_with_argmax(self, x, ksize, strides, padding):
        xc = self._pad(x.permute(0, 3, 1, 2), ksize[0], ksize[1], strides, padding,
                       value=self._lowest(x))
        y, idx = self.F.max_pool2d(xc, tuple(ksize), tuple(strides), return_indices=True)
        return y.permute(0, 2, 3, 1).contiguous(), idx

    def max_pool_grad_with_argmax(self, x, dy, argmax, ksize, strides, padding):
        """The forward's indices route dy back: one kernel, no second forward pass. The
        input is read only for its (padded) shape and layout."""
        n, h, w, c = x.shape
        (pt, pb), (pl, pr) = _pads(h, w, ksize[0], ksize[1], strides, padding)
        xc = self._shape_only((n, c, h + pt + pb, w + pl + pr), x, True)
        gx = self.t.ops.aten.max_pool2d_with_indices_backward(
            dy.permute(0, 3, 1, 2), xc, list(ksize), list(strides), [0, 0], [1, 1], False,
            argmax)
        return gx[:, :, pt:pt + h, pl:pl + w].permute(0, 2, 3, 1) if pt + pb + pl + pr \
            else gx.permute(0, 2, 3, 1)

    def avg_pool(self, x, ksize, strides, padding):
        ones = self.t.ones_like(x[..., :1])
        num = self._pool_sum(x, ksize, strides, padding)
        return num / self._pool_sum(ones, ksize, strides, padding)

    def _pool_sum(self, x, ksize, strides, padding):
        xc = self._pad(x.permute(0, 3, 1, 2), ksize[0], ksize[1], strides, padding)
        y = self.F.avg_pool2d(xc, tuple(ksize), tuple(strides)) * (ksize[0] * ksize[1])
        return y.permute(0, 2, 3, 1)

    def avg_pool_grad(self, input_shape, dy, ksize, strides, padding):
        x = self.t.zeros(tuple(int(d) for d in input_shape), dtype=dy.dtype, device=dy.device)
        return self._grad_through(lambda v: self.avg_pool(v, ksize, strides, padding),
                                  [x], dy)[0]
