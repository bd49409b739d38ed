"""TF1 staples built from other ops: no kernels and no gradients of their own.

The classic TF1 tutorials use these on their first pages (``tf.Variable(tf.zeros([10]))``,
``softmax_cross_entropy_with_logits``, ``clip_by_value``, ``embedding_lookup``). TF gives
some a fused kernel (``SoftmaxCrossEntropyWithLogits``, ``L2Loss``); here each is the
composition its math says, so autodiff derives the gradient, at the price of a few more
nodes per step. Where TF's fused kernel and the math part ways, the docstring says so.
"""

from __future__ import annotations

import numpy as np

from ..dtypes import as_dtype, float32
from ..graph import Tensor, get_default_graph
from ..op_def import constant, convert_to_tensor, make_op
from .array_ops import gather, identity, ones_like, shape_tensor, stop_gradient, where_v2
from .math_ops import maximum, minimum, multiply, negative, sqrt, square
from .nn_ops import log_softmax
from .reduction_ops import reduce_sum


def _filled(shape, value, dtype, name: str) -> Tensor:
    dt = as_dtype(dtype)
    shape = shape_tensor(shape)
    if isinstance(shape, Tensor):  # known when the graph runs: TF's Fill
        return make_op("Fill", [shape], {"value": value, "dtype": dt}, name).outputs[0]
    return constant(np.full(tuple(int(d) for d in np.ravel(shape)), value, dt.np_dtype),
                    name=name)


def zeros(shape, dtype=float32, name=None) -> Tensor:
    """A tensor of zeros: a Const for a known shape, a Fill for a shape tensor."""
    return _filled(shape, 0, dtype, name or "zeros")


def ones(shape, dtype=float32, name=None) -> Tensor:
    return _filled(shape, 1, dtype, name or "ones")


def clip_by_value(t, clip_value_min, clip_value_max, name=None) -> Tensor:
    """``max(min(t, hi), lo)``, as TF's clip_ops.py builds it, so the gradient passes
    only where ``t`` lies within the bounds (TF's Minimum/Maximum gradients)."""
    with get_default_graph().name_scope(name or "clip_by_value") as scope:
        t = convert_to_tensor(t)
        low = minimum(t, convert_to_tensor(clip_value_max, t.dtype))
        out = make_op("Maximum", [low, convert_to_tensor(clip_value_min, t.dtype)],
                      name=scope).outputs[0]
        if t.shape is not None and out.shape is not None and out.shape != t.shape \
                and None not in out.shape:  # TF: the bounds may not grow t
            raise ValueError(f"clip_by_value: the bounds would broadcast {t.name} of shape "
                             f"{t.shape} to {out.shape}; they must fit inside its shape")
        return out


def clip_by_norm(t, clip_norm, axes=None, name=None) -> Tensor:
    """``t * clip_norm / max(||t||, clip_norm)``, the norm over ``axes`` (all by default),
    built as TF's clip_ops.py builds it: a zero tensor stays zero, with a finite
    gradient (the square root is taken of 1 where the sum of squares is 0)."""
    with get_default_graph().name_scope(name or "clip_by_norm") as scope:
        t = convert_to_tensor(t)
        c = convert_to_tensor(clip_norm, t.dtype)
        if c.shape not in ((), None):
            raise ValueError(f"clip_by_norm: clip_norm must be a scalar, got shape {c.shape}")
        l2sum = reduce_sum(t * t, axes, keepdims=True)
        pred = l2sum > 0.0
        l2norm = where_v2(pred, sqrt(where_v2(pred, l2sum, ones_like(l2sum))), l2sum)
        return identity(t * c / maximum(l2norm, c), name=scope)


def clip_by_global_norm(t_list, clip_norm, use_norm=None, name=None):
    """Scale every tensor of ``t_list`` by ``clip_norm / max(global_norm, clip_norm)``,
    where ``global_norm`` is the norm of all of them together; returns the clipped list
    (``None`` stays ``None``: a variable without a gradient) and the global norm. A
    non-finite global norm makes every value NaN, as TF's (clip_ops.py): a step with an
    overflowed gradient should not be taken quietly."""
    t_list = list(t_list)
    with get_default_graph().name_scope(name or "clip_by_global_norm"):
        ts = [None if t is None else convert_to_tensor(t) for t in t_list]
        present = [t for t in ts if t is not None]
        if not present:
            raise ValueError("clip_by_global_norm: t_list holds no tensor")
        dt = present[0].dtype
        if use_norm is None:
            total = reduce_sum(square(present[0])) if len(present) == 1 else \
                make_op("AddN", [reduce_sum(square(t)) for t in present]).outputs[0]
            use_norm = sqrt(total, name="global_norm")
        use_norm = convert_to_tensor(use_norm, dt)
        c = convert_to_tensor(clip_norm, dt)
        scale = c * minimum(1.0 / use_norm, 1.0 / c) + (use_norm - use_norm)  # NaN if inf
        return [None if t is None else identity(t * scale) for t in ts], use_norm


def embedding_lookup(params, ids, partition_strategy="mod", name=None,
                     validate_indices=True, max_norm=None) -> Tensor:
    """Rows of ``params`` by id: ``gather`` on axis 0. TF also takes a list of shards of
    the table (split by ``partition_strategy``) and a ``max_norm``; one table only here."""
    if isinstance(params, (list, tuple)):
        if len(params) != 1:
            raise NotImplementedError("embedding_lookup: a table in several shards is not "
                                      "implemented in miniflow; concat them, or gather")
        params = params[0]
    if max_norm is not None:
        raise NotImplementedError("embedding_lookup: max_norm is not implemented in "
                                  "miniflow")
    return gather(params, ids, name=name or "embedding_lookup")


def softmax_cross_entropy_with_logits_v2(labels, logits, axis=None, name=None, dim=None):
    """``-sum(labels * log_softmax(logits))`` over the class axis, per example, for
    labels that are distributions (one-hot or soft). The gradient with respect to the
    logits is ``softmax * sum(labels) - labels``; TF's fused kernel returns
    ``softmax - labels``, the same whenever each row of labels sums to 1."""
    axis = -1 if axis is None and dim is None else axis if axis is not None else dim
    with get_default_graph().name_scope(name or "softmax_cross_entropy_with_logits") as s:
        logits = convert_to_tensor(logits)
        labels = convert_to_tensor(labels, logits.dtype)
        terms = multiply(labels, log_softmax(logits, axis))
        return negative(reduce_sum(terms, axis), name=s)


def softmax_cross_entropy_with_logits(labels=None, logits=None, dim=-1, name=None,
                                      axis=None):
    """TF1's version: no gradient into ``labels`` (the ``_v2`` one has it). TF 1.x took
    named arguments only; TF 2's ``compat.v1`` takes them by position too, as here."""
    if labels is None or logits is None:
        raise ValueError("softmax_cross_entropy_with_logits needs labels and logits")
    return softmax_cross_entropy_with_logits_v2(stop_gradient(labels), logits,
                                                axis=dim if axis is None else axis,
                                                name=name)


def l2_loss(t, name=None) -> Tensor:
    """``sum(t ** 2) / 2``: weight decay's usual term (TF has an ``L2Loss`` kernel)."""
    with get_default_graph().name_scope(name or "L2Loss") as scope:
        t = convert_to_tensor(t)
        return make_op("Mul", [reduce_sum(square(t)), constant(0.5, t.dtype.np_dtype)],
                       name=scope).outputs[0]


# -- shapes: a Reshape whose target is computed here, where TF has ops of their own ------

def _reshaped(x: Tensor, dims: list, name: str, exact: bool = False) -> Tensor:
    """``x`` reshaped to ``dims`` (per output axis an int, or ``("x", axis)`` for one of
    ``x``'s that is unknown): a constant shape when at most one is unknown (it becomes
    -1), else one computed from ``shape(x)`` when the graph runs. ``exact``: always the
    computed one, so that the Reshape fails at run time unless the axes left out all
    have length 1 (then the products match)."""
    from .array_ops import reshape, shape

    unknown = [d for d in dims if not isinstance(d, int)]
    if not exact and len(unknown) <= 1 and 0 not in dims:
        return reshape(x, [d if isinstance(d, int) else -1 for d in dims], name=name)
    s = shape(x)  # a list mixing ints and run-time lengths (reshape's shape_tensor)
    return reshape(x, [d if isinstance(d, int) else s[d[1]] for d in dims], name=name)


def expand_dims(input, axis=None, name=None, dim=None) -> Tensor:  # noqa: A002 (TF's name)
    """A new axis of length 1 at ``axis`` (``-rank-1 <= axis <= rank``). TF has an
    ``ExpandDims`` op; here it is a Reshape, which has the same gradient."""
    x = convert_to_tensor(input)
    axis = dim if axis is None else axis
    if axis is None or x.shape is None:
        raise ValueError("expand_dims: needs an axis and an input of known rank")
    rank = len(x.shape)
    if not -rank - 1 <= int(axis) <= rank:
        raise ValueError(f"expand_dims: axis {axis} is out of range for rank {rank} "
                         f"(expected {-rank - 1} <= axis <= {rank})")
    a = int(axis) % (rank + 1)
    dims = [d if d is not None else ("x", i) for i, d in enumerate(x.shape)]
    return _reshaped(x, dims[:a] + [1] + dims[a:], name or "ExpandDims")


def squeeze(input, axis=None, name=None, squeeze_dims=None) -> Tensor:  # noqa: A002
    """Drop axes of length 1: those in ``axis``, or every one (which needs them known
    when the graph is built: TF's ``Squeeze`` finds them when it runs)."""
    x = convert_to_tensor(input)
    axis = squeeze_dims if axis is None else axis
    if x.shape is None:
        raise ValueError("squeeze: needs an input of known rank")
    rank = len(x.shape)
    if axis is not None and not isinstance(axis, int) and len(axis) == 0:
        axis = None  # TF: an empty list squeezes every axis of length 1
    if axis is None:
        if None in x.shape:
            raise ValueError(f"squeeze: without an axis, every dimension must be known "
                             f"when the graph is built (got {x.shape}); name the axes")
        drop = {i for i, d in enumerate(x.shape) if d == 1}
    else:
        axes = [axis] if isinstance(axis, int) else list(axis)
        if any(not -rank <= int(a) < rank for a in axes):
            raise ValueError(f"squeeze: axis {axis} is out of range for rank {rank}")
        drop = {int(a) % rank for a in axes}
        bad = [x.shape[a] for a in drop if x.shape[a] not in (1, None)]
        if bad:
            raise ValueError(f"squeeze: can not squeeze a dimension whose size is not 1 "
                             f"(axis {sorted(drop)} of shape {x.shape})")
    dims = [d if d is not None else ("x", i) for i, d in enumerate(x.shape) if i not in drop]
    # an axis whose length is known only when the graph runs is checked then: the
    # Reshape to the other axes' run-time lengths fails unless it is 1 (TF's Squeeze
    # checks it in its kernel)
    return _reshaped(x, dims, name or "Squeeze",
                     exact=any(x.shape[a] is None for a in drop))


def stack(values, axis=0, name="stack") -> Tensor:
    """Tensors of one shape joined along a new axis: each expanded, then concatenated
    (TF's ``Pack`` op does it in one kernel)."""
    from .array_ops import concat

    values = [convert_to_tensor(v) for v in values]
    if not values:
        raise ValueError("stack: values is an empty list")
    shapes = {v.shape for v in values if v.shape is not None and None not in v.shape}
    if len(shapes) > 1:
        raise ValueError(f"stack: shapes of all inputs must match, got {sorted(shapes)}")
    with get_default_graph().name_scope(name) as scope:
        if len(values) == 1:
            return expand_dims(values[0], axis, name=scope)
        rank = None if values[0].shape is None else len(values[0].shape) + 1
        a = int(axis) % rank if rank is not None and -rank <= int(axis) < rank else axis
        return concat([expand_dims(v, a) for v in values], a, name=scope)


def unstack(value, num=None, axis=0, name="unstack") -> list[Tensor]:
    """The slices of ``value`` along ``axis``, each without that axis; how many must be
    known (``num``, or the axis's static length), as in TF."""
    x = convert_to_tensor(value)
    if x.shape is None or len(x.shape) == 0:
        raise ValueError(f"unstack: needs an input of rank 1 or more, got {x.shape}")
    rank = len(x.shape)
    if not -rank <= int(axis) < rank:
        raise ValueError(f"unstack: axis {axis} is out of range for rank {rank} (expected "
                         f"{-rank} <= axis < {rank})")
    a = int(axis) % rank
    if num is not None and x.shape[a] is not None and int(num) != x.shape[a]:
        raise ValueError(f"unstack: num is {num} but axis {axis} of {x.shape} has length "
                         f"{x.shape[a]}")
    num = x.shape[a] if num is None else int(num)
    if num is None:
        raise ValueError(f"Cannot infer num from shape {x.shape}")
    with get_default_graph().name_scope(name):
        return [x[(slice(None),) * a + (i,)] for i in range(num)]
