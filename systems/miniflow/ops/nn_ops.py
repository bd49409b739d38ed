"""Neural-network ops (tensorflow/python/ops/nn_ops.py): softmax, the fused softmax
cross-entropy, convolution and pooling, with the gradient ops TensorFlow defines for them.

``SparseSoftmaxCrossEntropyWithLogits`` is one op with two outputs, the per-example loss
and its gradient with respect to the logits (softmax - one_hot): TensorFlow computes the
backward pass in the forward kernel because the two share all their work
(tensorflow/core/kernels/sparse_xent_op.cc), and the registered gradient just scales
the second output. Labels outside ``[0, classes)`` are an error on the CPU, as in TF; TF's
GPU kernel does not check them (it writes NaN), and on CUDA torch's own bounds check
stops the process with a device-side assert, so check labels on the host first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import conv as npconv
from ..conv import out_size
from ..errors import InvalidArgumentError
from ..graph import Tensor
from ..op_def import (
    OpDef,
    check_axis,
    convert_to_tensor,
    define,
    dtype_error,
    make_op,
    same_dtype,
    shape_error,
    shape_from_tensor,
)
from .array_ops import _host, transpose
from .math_ops import _float_only

define(OpDef("Softmax", _float_only("Softmax", lambda ins, a: [(ins[0].dtype, ins[0].shape)]),
             lambda a, be, res: be.softmax, flops_per_element=5))
define(OpDef("LogSoftmax", _float_only("LogSoftmax",
                                       lambda ins, a: [(ins[0].dtype, ins[0].shape)]),
             lambda a, be, res: be.log_softmax, flops_per_element=5))


def _softmax(op_type: str, logits, axis, name):
    """TF's ``nn_ops._softmax``: the kernel normalises the last axis; for any other axis
    the logits are transposed so that it comes last, and the result back (swapping two
    axes is its own inverse), so the gradient is the transposes' and the kernel's."""
    logits = convert_to_tensor(logits)
    if isinstance(axis, Tensor) or hasattr(axis, "_as_tensor"):  # (TF1 takes a tensor
        # for any axis but the last: a difference, see docs/miniflow/side-by-side.md)
        raise TypeError(f"{op_type}: axis must be a Python int, not the tensor {axis.name}")
    axis = -1 if axis is None else int(axis)
    if logits.shape is None:
        if axis != -1:
            raise shape_error(op_type, f"axis {axis} needs a tensor of known rank", logits)
        return make_op(op_type, [logits], name=name).outputs[0]
    last = len(logits.shape) - 1
    ax = check_axis(op_type, axis, logits)
    if ax == last:
        return make_op(op_type, [logits], name=name).outputs[0]
    perm = list(range(last + 1))
    perm[ax], perm[last] = last, ax
    out = make_op(op_type, [transpose(logits, perm)]).outputs[0]
    return transpose(out, perm, name=name)


def softmax(logits, axis=None, name=None, dim=None):
    """``exp(logits) / sum(exp(logits), axis)``; ``axis`` defaults to the last, as in TF1's
    ``tf.nn.softmax(logits, axis=None, name=None, dim=None)`` (``dim``: its old name)."""
    return _softmax("Softmax", logits, dim if axis is None else axis, name)


def log_softmax(logits, axis=None, name=None, dim=None):
    return _softmax("LogSoftmax", logits, dim if axis is None else axis, name)


def _xent_shape(ins, attrs):
    logits, labels = ins
    if not labels.dtype.is_integer:
        raise dtype_error("SparseSoftmaxCrossEntropyWithLogits", "labels must be integers",
                          labels)
    if logits.shape is not None and len(logits.shape) != 2:
        raise shape_error("SparseSoftmaxCrossEntropyWithLogits",
                          "logits must be [batch, classes]", logits)
    if labels.shape is not None and len(labels.shape) != 1:
        raise shape_error("SparseSoftmaxCrossEntropyWithLogits", "labels must be [batch]",
                          labels)
    batch = logits.shape[0] if logits.shape is not None else None
    n_labels = labels.shape[0] if labels.shape is not None else None
    if batch is not None and n_labels is not None and batch != n_labels:
        raise shape_error("SparseSoftmaxCrossEntropyWithLogits", f"logits have {batch} rows "
                          f"but there are {n_labels} labels", logits, labels)
    return [(logits.dtype, (batch if batch is not None else n_labels,)),
            (logits.dtype, logits.shape)]


def _xent_kernel(attrs, be, res):
    cache: dict[tuple, Any] = {}  # per shape: label offsets (numpy), -1 columns (torch)

    def xent(logits, labels):
        # One pass of softmax arithmetic serves both outputs: loss = log(sum e^z) - z_label
        # and backprop = softmax - one_hot (sparse_xent_op.cc does the same).
        n, classes = logits.shape[0], logits.shape[1]
        if labels.shape[0] != n:  # a None batch: only the run can tell (the numpy kernel
            raise InvalidArgumentError(  # would give every row the one label)
                f"logits and labels must have the same first dimension, got logits shape "
                f"{tuple(logits.shape)} and labels shape {tuple(labels.shape)}")
        if be.name == "numpy":
            lab = labels
            # one reduction checks both ends: negative labels read as unsigned are huge
            unsigned = lab.view(f"u{lab.itemsize}")
            if n and np.maximum.reduce(unsigned) >= classes:
                raise InvalidArgumentError(f"labels must be in [0, {classes}), got values "
                                           f"from {lab.min()} to {lab.max()}")
            # C order whatever the logits' (a transposed view is F-ordered): the flat
            # in-place "-1 at the label" below must write into backprop, not a copy
            z = np.subtract(logits, np.maximum.reduce(logits, axis=1, keepdims=True),
                            order="C")
            offsets = cache.get((n, classes))
            if offsets is None:
                offsets = cache[n, classes] = np.arange(n) * classes
            at_label = offsets + lab  # flat index of each row's label: one take, one put
            z_label = z.take(at_label)
            e = np.exp(z, out=z)
            s = np.add.reduce(e, axis=1, keepdims=True)
            loss = np.log(s[:, 0])
            loss -= z_label
            backprop = np.divide(e, s, out=e)
            backprop.reshape(-1)[at_label] -= 1
            return loss, backprop
        # torch: few launches (each is host time on a GPU): log-softmax, the loss as a
        # gather-negate (nll_loss), softmax as its exp, and one scatter of -1 at the labels
        lab = labels.long()
        logp = be.log_softmax(logits)
        loss = be.torch.nn.functional.nll_loss(logp, lab, reduction="none")
        minus_one = cache.get((n, logits.device, logits.dtype))
        if minus_one is None:
            minus_one = cache[n, logits.device, logits.dtype] = be.torch.full(
                (n, 1), -1.0, dtype=logits.dtype, device=logits.device)
        return loss, logp.exp().scatter_add_(1, lab.unsqueeze(1), minus_one)
    return xent


define(OpDef("SparseSoftmaxCrossEntropyWithLogits", _xent_shape, _xent_kernel,
             flops_per_element=6))


def sparse_softmax_cross_entropy_with_logits(labels=None, logits=None, name=None):
    """Per-example cross-entropy of integer ``labels`` under ``softmax(logits)``."""
    if labels is None or logits is None:
        raise ValueError("pass both labels= and logits= by name, as TensorFlow requires")
    return make_op("SparseSoftmaxCrossEntropyWithLogits", [logits, labels],
                   name=name).outputs[0]


# -- convolution and pooling -------------------------------------------------------------

def _pair(op_type: str, what: str, v, x) -> tuple[int, int]:
    """``v`` (an int, ``[h, w]`` or TF's ``[1, h, w, 1]``) as ``(h, w)``; TF's shape
    functions refuse a window or stride below 1 ("Sliding window ksize/strides must be
    positive"), and strides or windows across the batch or channels."""
    given = list(v) if isinstance(v, (list, tuple)) else [v, v]
    pair = given[1:3] if len(given) == 4 else given
    if len(pair) != 2 or min(int(d) for d in given) < 1 or \
            (len(given) == 4 and (int(given[0]), int(given[3])) != (1, 1)):
        raise shape_error(op_type, f"{what} {v!r}: want a whole number >= 1, [h, w] or "
                          f"[1, h, w, 1] of them", x)
    return int(pair[0]), int(pair[1])


def _conv_backend(be):
    if be.name == "numpy":
        return npconv
    if not hasattr(be, "_conv"):
        be._conv = npconv.TorchConv(be.torch)
    return be._conv


def _check_window(op_type: str, x, window, padding: str, *more) -> None:
    """VALID padding needs the window inside the input (TF: "Negative dimension size
    caused by subtracting 5 from 3"); a negative static size is no shape."""
    if padding != "VALID":
        return
    for size, k in zip(x.shape[1:3], window, strict=True):
        if size is not None and k is not None and k > size:
            raise shape_error(op_type, f"a {window[0]}x{window[1]} window is larger than "
                              f"the {x.shape[1]}x{x.shape[2]} input under VALID padding",
                              x, *more)


def _conv_shape(ins, attrs):
    x, f = ins
    if x.dtype != f.dtype:
        raise dtype_error("Conv2D", "input and filter must share a dtype", x, f)
    if f.shape is not None and len(f.shape) != 4:
        raise shape_error("Conv2D", "filter must be HWIO (rank 4)", x, f)
    if x.shape is None or f.shape is None:  # NHWC: the input's batch, the filter's outs
        batch = x.shape[0] if x.shape is not None and len(x.shape) == 4 else None
        return [(x.dtype, (batch, None, None, f.shape[3] if f.shape is not None else None))]
    if len(x.shape) != 4 or len(f.shape) != 4:
        raise shape_error("Conv2D", "input must be NHWC and filter HWIO (rank 4)", x, f)
    if x.shape[3] is not None and f.shape[2] is not None and x.shape[3] != f.shape[2]:
        raise shape_error("Conv2D", f"input has {x.shape[3]} channels but the filter "
                          f"expects {f.shape[2]}", x, f)
    (sh, sw), p = attrs["strides"], attrs["padding"]
    _check_window("Conv2D", x, (f.shape[0], f.shape[1]), p, f)
    return [(x.dtype, (x.shape[0], out_size(x.shape[1], f.shape[0], sh, p),
                       out_size(x.shape[2], f.shape[1], sw, p), f.shape[3]))]


def _k(method, *attr_names):
    def make(a, be, res):
        fn = getattr(_conv_backend(be), method)
        extra = [a[n] for n in attr_names]
        return lambda *xs: fn(*xs, *extra)
    return make


def _conv2d_kernel(a, be, res):
    conv = _k("conv2d", "strides", "padding")(a, be, res)

    def run(x, f):
        if 0 in tuple(f.shape[:2]):  # a filter fed at run time; TF's kernel refuses it too
            raise ValueError(f"a filter of shape {tuple(f.shape)} has no window: its height "
                             f"and width must be at least 1")
        return conv(x, f)
    return run


define(OpDef("Conv2D", _conv_shape, _conv2d_kernel))
define(OpDef("Conv2DBackpropInput", lambda ins, a: [(ins[1].dtype, shape_from_tensor(ins[0]))],
             lambda a, be, res: (lambda s, f, dy: _conv_backend(be).conv2d_backprop_input(
                 _host(be, s), f, dy, a["strides"], a["padding"])), host_inputs=(0,)))
define(OpDef("Conv2DBackpropFilter", lambda ins, a: [(ins[0].dtype,
                                                      shape_from_tensor(ins[1]))],
             lambda a, be, res: (lambda x, s, dy: _conv_backend(be).conv2d_backprop_filter(
                 x, _host(be, s), dy, a["strides"], a["padding"])), host_inputs=(1,)))


def _check_padding(padding: str) -> str:
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    return padding


def _nhwc(op_type: str, data_format: str) -> None:
    if data_format != "NHWC":  # TF's default; NCHW is for its GPU kernels, left out here
        raise ValueError(f"{op_type}: data_format must be 'NHWC', got {data_format!r}")


def conv2d(input, filters=None, strides=1, padding="VALID", *, name=None,  # noqa: A002
           filter=None, data_format="NHWC"):  # noqa: A002
    """2-D convolution of NHWC ``input`` with HWIO ``filters`` (``tf.nn.conv2d``; TF1
    calls them ``filter=``). After ``padding`` only keywords: TF1's fifth positional is
    ``use_cudnn_on_gpu``, TF2's ``data_format``, and neither may land on ``name``."""
    _nhwc("Conv2D", data_format)
    if (filters is None) == (filter is None):
        raise TypeError("conv2d: give the filters once (filters=, or TF1's filter=)")
    filters = filter if filters is None else filters
    input = convert_to_tensor(input)  # noqa: A001
    return make_op("Conv2D", [input, filters], {"strides": _pair("Conv2D", "strides",
                                                                 strides, input),
                                                 "padding": _check_padding(padding)},
                   name).outputs[0]


def _pool_shape(op_type):
    def fn(ins, attrs):
        x = ins[0]
        if x.shape is None:
            return [(x.dtype, (None,) * 4)]  # NHWC whatever the input turns out to be
        if len(x.shape) != 4:
            raise shape_error(op_type, "input must be NHWC (rank 4)", x)
        (kh, kw), (sh, sw), p = attrs["ksize"], attrs["strides"], attrs["padding"]
        _check_window(op_type, x, (kh, kw), p)
        return [(x.dtype, (x.shape[0], out_size(x.shape[1], kh, sh, p),
                           out_size(x.shape[2], kw, sw, p), x.shape[3]))]
    return fn


define(OpDef("MaxPool", _pool_shape("MaxPool"), _k("max_pool", "ksize", "strides", "padding")))
# AvgPool: floating types only in TF (numpy would give a truncated integer mean)
define(OpDef("AvgPool", _float_only("AvgPool", _pool_shape("AvgPool")),
             _k("avg_pool", "ksize", "strides", "padding")))
# MaxPoolGrad takes TF's inputs (orig_input, orig_output, grad; nn_grad.py _MaxPoolGrad).
# Our kernels find each window's maximum again from orig_input, so orig_output only ties
# the gradient to its forward op, which the remapper's argmax rewrite needs.
define(OpDef("MaxPoolGrad", lambda ins, a: [(ins[0].dtype, ins[0].shape)],
             lambda a, be, res: (lambda x, y, dy: _conv_backend(be).max_pool_grad(
                 x, dy, a["ksize"], a["strides"], a["padding"]))))
# MaxPoolGradGrad(orig_input, orig_output, grad): MaxPoolGrad's gradient for its dy
# (nn_grad.py _MaxPoolGradGrad); shaped as the pooled output
define(OpDef("MaxPoolGradGrad", lambda ins, a: [(ins[2].dtype, ins[1].shape)],
             lambda a, be, res: (lambda x, y, g: _conv_backend(be).max_pool_grad_grad(
                 x, g, a["ksize"], a["strides"], a["padding"]))))
define(OpDef("AvgPoolGrad", lambda ins, a: [(ins[1].dtype, shape_from_tensor(ins[0]))],
             lambda a, be, res: (lambda s, dy: _conv_backend(be).avg_pool_grad(
                 _host(be, s), dy, a["ksize"], a["strides"], a["padding"])),
             host_inputs=(0,)))


def _pool(op_type, x, ksize, strides, padding, name):
    if x is None or ksize is None or strides is None:
        raise TypeError(f"{op_type}: give the input, ksize and strides")
    x = convert_to_tensor(x)
    return make_op(op_type, [x],
                   {"ksize": _pair(op_type, "ksize", ksize, x),
                    "strides": _pair(op_type, "strides", strides, x),
                    "padding": _check_padding(padding)}, name).outputs[0]


def max_pool2d(input=None, ksize=None, strides=None, padding="VALID",  # noqa: A002
               data_format="NHWC", name=None, *, value=None):
    """``tf.nn.max_pool2d``, in TF's argument order; TF1's ``max_pool`` calls the input
    ``value=``."""
    _nhwc("MaxPool", data_format)
    return _pool("MaxPool", value if input is None else input, ksize, strides, padding, name)


def avg_pool2d(input=None, ksize=None, strides=None, padding="VALID",  # noqa: A002
               data_format="NHWC", name=None, *, value=None):
    _nhwc("AvgPool", data_format)
    return _pool("AvgPool", value if input is None else input, ksize, strides, padding, name)


def bias_add(value, bias, data_format=None, name=None):
    """``value + bias`` along ``value``'s last axis (``tf.nn.bias_add``, NHWC). As TF's
    BiasAdd shape function (tensorflow/core/ops/nn_ops.cc) checks, bias must be 1-D, value
    at least 2-D, and bias as long as value's last dimension: no other broadcasting.
    ``data_format`` is TF1's third argument: only the channels-last default is here."""
    from .math_ops import _operands, add

    if data_format is not None and not (isinstance(data_format, str)
                                        and data_format.startswith("N")
                                        and data_format.endswith("C")):
        raise ValueError(f"BiasAdd: data_format must be channels-last, like 'NHWC' "
                         f"(channels-first formats are left out), got {data_format!r}")
    value, bias = _operands("BiasAdd", value, bias)  # a Python bias takes value's dtype
    if bias.shape is not None and len(bias.shape) != 1:
        raise shape_error("BiasAdd", "bias must be 1-D", value, bias)
    if value.shape is not None:
        if len(value.shape) < 2:
            raise shape_error("BiasAdd", "value must be at least 2-D", value, bias)
        n, c = value.shape[-1], bias.shape[0] if bias.shape is not None else None
        if n is not None and c is not None and n != c:
            raise shape_error("BiasAdd", f"bias has {c} elements but value's last dimension "
                              f"is {n}", value, bias)
        if n is not None and c is not None:
            # proved at build time: a plain Add, which the fusion passes know
            return add(value, bias, name=name or "BiasAdd")
    # a dimension only the run will know: an op whose kernel checks it, as TF's BiasAdd
    # kernel does (bias_op.cc), where an Add would broadcast a last dimension of 1
    return make_op("BiasAdd", [value, bias], name=name).outputs[0]


def _bias_add_kernel(attrs, be, res):
    def bias_add(value, bias):
        if bias.ndim != 1 or value.ndim < 2 or value.shape[-1] != bias.shape[0]:
            raise InvalidArgumentError(
                f"BiasAdd: must provide as many biases as the last dimension of the input, "
                f"got value shape {tuple(value.shape)} and bias shape {tuple(bias.shape)}")
        return be.add(value, bias)
    return bias_add


def _bias_add_shape(ins, attrs):
    value, bias = ins  # value's shape, its last dimension known from either (the kernel
    shape = value.shape  # refuses any other broadcast)
    if shape is not None and shape and shape[-1] is None and bias.shape is not None:
        shape = shape[:-1] + (bias.shape[0],)
    return [(same_dtype("BiasAdd", *ins), shape)]


define(OpDef("BiasAdd", _bias_add_shape, _bias_add_kernel))
