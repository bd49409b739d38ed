"""Random ops: stateful kernels, each drawing from its own stream.

A random op is the simplest *stateful* op (paper section 3.1): running it twice gives two
different values, so the runtime must treat it unlike a pure function. The passes never
fold it into a constant nor merge two of them (``OpDef.stateful``), and its state, the
generator, lives with the session, not with one plan: TF's ``DirectSession`` makes one
executor per (feeds, fetches, targets), but keeps the kernels of stateful ops in its
``OpSegment`` and hands the same kernel to every executor of the session
(common_runtime/direct_session.cc). Here the stream is kept in the session's resources
under the op's ``stream`` attribute, so two run signatures draw from one sequence, and a
new session starts it again (as a new TF session re-creates its kernels).

Seeds follow tensorflow/python/framework/random_seed.py (``get_seed``): a graph-level
seed (``set_random_seed``) and an op-level one; with only the graph's, the op's seed
counts the random ops that took the graph's seed before it (0, 1, 2...; TF 2's per-graph
counter, so adding other ops to the graph changes no draw); with only the op's, the
graph's is TF's default; with neither, the stream is seeded from the OS. Seeds are taken
modulo 2**31, as TF's ``_truncate_seed``. One stream per op means values do not depend on the
order in which the executor runs the ops, nor on the number of threads.

Simplified: the streams are numpy's PCG64 (``default_rng([seed, seed2])``), not TF's
Philox, so the same seeds give other numbers than TF; they are drawn on the host and
copied to a GPU. The shape is an input, as in TF (a ``Shape`` of a batch whose size is
known only when it runs), but ``minval``/``maxval`` of integers are attributes.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np

from ..dtypes import as_dtype, float32
from ..gradients import no_gradient
from ..graph import Tensor, get_default_graph
from ..op_def import OpDef, constant, convert_to_tensor, define, make_op, shape_from_tensor
from .array_ops import _host, shape_tensor

DEFAULT_GRAPH_SEED = 87654321  # random_seed.py's, used when only the op has a seed
_streams = itertools.count()  # each random op's key into its session's streams
_lock = threading.Lock()  # numpy generators are not thread-safe


def set_random_seed(seed) -> None:
    """The default graph's seed (``tf.compat.v1.set_random_seed``)."""
    get_default_graph().seed = None if seed is None else int(seed)


def get_seed(op_seed) -> tuple[int | None, int | None]:
    """(graph seed, op seed) for a new op, as TF's ``random_seed.get_seed``."""
    g = get_default_graph()
    if g.seed is not None:
        if op_seed is None:
            with g._lock:
                op_seed, g.random_ops_seeded = g.random_ops_seeded, g.random_ops_seeded + 1
        seeds = (g.seed, op_seed)
    elif op_seed is not None:
        seeds = (DEFAULT_GRAPH_SEED, op_seed)
    else:
        return None, None
    seeds = (int(seeds[0]) % 2**31, int(seeds[1]) % 2**31)
    return (0, 2**31 - 1) if seeds == (0, 0) else seeds  # (0, 0) means "no seed" to TF


def _random_shape(ins, attrs):
    if ins[0].dtype.is_floating or (ins[0].shape is not None and len(ins[0].shape) != 1):
        raise TypeError(f"{attrs['op']}: shape must be a 1-D integer tensor, got "
                        f"{ins[0].name} {ins[0].shape} {ins[0].dtype.name}")
    return [(attrs["dtype"], shape_from_tensor(ins[0]))]


def _kernel(draw):
    def make(a, be, res):
        seeds = None if a["seed"] is None else [a["seed"], a["seed2"]]

        def run(shape):
            dims = tuple(int(d) for d in _host(be, shape))
            if any(d < 0 for d in dims):
                raise ValueError(f"{a['op']}: shape {list(dims)} has a negative dimension")
            with _lock:  # one op may run in two session.run calls at once
                gen = res.random_streams.get(a["stream"])
                if gen is None:  # its first run in this session
                    gen = res.random_streams[a["stream"]] = np.random.default_rng(seeds)
                values = draw(gen, dims, a)
            return be.asarray(values.astype(a["dtype"].np_dtype, copy=False))
        return run
    return make


def _uniform(gen, dims, a):
    """[0, 1) in the op's own precision: a float64 draw rounded to float16 would be 1.0
    once in about 4,000 draws. Half floats take 10 random mantissa bits, as TF's
    ``Uint16ToHalf`` (random_distributions.h)."""
    dt = a["dtype"].np_dtype
    if dt == np.float16:
        return gen.integers(0, 2**10, dims) * 2.0**-10
    return gen.random(dims, dtype=np.float32 if dt == np.float32 else np.float64)


def _truncated(gen, dims, a):
    """Standard normal values, each one beyond two standard deviations drawn again (TF's
    TruncatedNormal, random_op.cc)."""
    v = gen.standard_normal(dims)
    bad = np.abs(v) > 2
    while bad.any():
        v[bad] = gen.standard_normal(int(bad.sum()))
        bad = np.abs(v) > 2
    return v


_DRAW = {
    "RandomStandardNormal": lambda gen, dims, a: gen.standard_normal(dims),
    "TruncatedNormal": _truncated,
    "RandomUniform": _uniform,
    "RandomUniformInt": lambda gen, dims, a: gen.integers(a["minval"], a["maxval"], dims),
}
for _t, _draw in _DRAW.items():
    define(OpDef(_t, _random_shape, _kernel(_draw), stateful=True, host_inputs=(0,)))
    no_gradient(_t)  # as TF's ops.NotDifferentiable in random_ops.py


def _random_op(op_type: str, shape, dtype, seed, name: str | None, **attrs) -> Tensor:
    seed, seed2 = get_seed(seed)
    shape = shape_tensor(shape)  # [tf.shape(x)[0], 3] becomes one tensor
    if not isinstance(shape, Tensor):
        shape = constant(np.asarray(shape, np.int32).reshape(-1), name="shape")
    return make_op(op_type, [shape], {"dtype": dtype, "seed": seed, "seed2": seed2,
                                      "stream": next(_streams), "op": op_type, **attrs},
                   name).outputs[0]


def _float_dtype(fn: str, dtype):
    dt = as_dtype(dtype)
    if not dt.is_floating:
        raise ValueError(f"{fn}: dtype must be a floating type, got {dt.name}")
    return dt


def random_normal(shape, mean=0.0, stddev=1.0, dtype=float32, seed=None, name=None) -> Tensor:
    """``mean + stddev * N(0, 1)``, built as TF builds it (random_ops.py)."""
    dt = _float_dtype("random_normal", dtype)
    with get_default_graph().name_scope(name or "random_normal") as scope:
        rnd = _random_op("RandomStandardNormal", shape, dt, seed, None)
        return make_op("Add", [rnd * convert_to_tensor(stddev, dt), convert_to_tensor(mean, dt)],
                       name=scope).outputs[0]


def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=float32, seed=None,
                     name=None) -> Tensor:
    """Normal values no further than two ``stddev`` from ``mean`` (TF's initialiser of
    choice for weights: no outliers)."""
    dt = _float_dtype("truncated_normal", dtype)
    with get_default_graph().name_scope(name or "truncated_normal") as scope:
        rnd = _random_op("TruncatedNormal", shape, dt, seed, None)
        return make_op("Add", [rnd * convert_to_tensor(stddev, dt), convert_to_tensor(mean, dt)],
                       name=scope).outputs[0]


def random_uniform(shape, minval=0, maxval=None, dtype=float32, seed=None,
                   name=None) -> Tensor:
    """Uniform in ``[minval, maxval)``; ``maxval`` is 1 for floats and must be given for
    integers, as in TF."""
    dt = as_dtype(dtype)
    with get_default_graph().name_scope(name or "random_uniform") as scope:
        if dt.is_integer:
            if maxval is None:
                raise ValueError(f"Must specify maxval for integer dtype {dt.name}")
            if not int(minval) < int(maxval):
                raise ValueError(f"random_uniform: need minval < maxval, got {minval} and "
                                 f"{maxval}")
            return _random_op("RandomUniformInt", shape, dt, seed, scope,
                              minval=int(minval), maxval=int(maxval))
        if not dt.is_floating:
            raise ValueError(f"random_uniform: dtype must be floating or integer, got "
                             f"{dt.name}")
        maxval = 1 if maxval is None else maxval
        rnd = _random_op("RandomUniform", shape, dt, seed, None)
        if isinstance(minval, (int, float)) and isinstance(maxval, (int, float)) \
                and minval == 0 and maxval == 1:
            return rnd  # TF returns the op itself then (random_uniform/RandomUniform)
        lo, hi = convert_to_tensor(minval, dt), convert_to_tensor(maxval, dt)
        return make_op("Add", [rnd * (hi - lo), lo], name=scope).outputs[0]


def dropout(x, keep_prob=None, noise_shape=None, seed=None, name=None, rate=None) -> Tensor:
    """Zero each element with probability ``rate`` (``1 - keep_prob``) and scale the rest
    by ``1 / (1 - rate)``, so the expected sum is unchanged (Srivastava et al. 2014). As
    TF 2's ``compat.v1`` builds it (nn_ops.py ``dropout_v2``): ``x * scale``, a uniform
    draw of ``noise_shape`` (``shape(x)`` unless given, broadcast against ``x``), and a
    ``where`` that keeps what drew ``>= rate``, so the gradient is the same mask times the
    scale. ``keep_prob`` may be a tensor (a placeholder fed 1.0 at test time)."""
    from .array_ops import shape as shape_of
    from .array_ops import where_v2

    if keep_prob is not None and rate is not None:
        raise ValueError("Cannot specify both 'keep_prob' and 'rate'.")
    if keep_prob is None and rate is None:
        raise ValueError("dropout: give keep_prob or rate")
    x = convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise ValueError(f"dropout: x must be a floating point tensor, as it will be "
                         f"scaled; got {x.name} of dtype {x.dtype.name}")
    with get_default_graph().name_scope(name or "dropout"):
        if keep_prob is not None:
            rate = 1 - keep_prob if not isinstance(keep_prob, Tensor) else \
                1.0 - convert_to_tensor(keep_prob, x.dtype)
        if not isinstance(rate, Tensor):
            if not 0 <= float(rate) < 1:
                raise ValueError(f"dropout: rate must be a float in [0, 1), got {rate}")
            if float(rate) == 0:
                return x  # as TF: nothing to drop, no ops
            scaled = make_op("Mul", [x, constant(1 / (1 - float(rate)), x.dtype.np_dtype)]
                             ).outputs[0]
        else:
            rate = convert_to_tensor(rate, x.dtype)
            scaled = make_op("Mul", [x, 1.0 / (1.0 - rate)]).outputs[0]
        draw = random_uniform(shape_of(x) if noise_shape is None else noise_shape,
                              dtype=x.dtype, seed=seed)
        return where_v2(draw >= rate, scaled, constant(0, x.dtype.np_dtype))
