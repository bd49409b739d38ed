"""miniflow: TensorFlow's dataflow core (Abadi et al., OSDI 2016), small enough to read.

    import numpy as np
    from sklearn.datasets import load_digits
    import systems.miniflow as mf
    xs, ys = load_digits(return_X_y=True)
    xs = (xs / 16).astype("float32")
    x = mf.placeholder(mf.float32, [None, 64])
    y = mf.placeholder(mf.int64, [None])
    w = mf.Variable(np.random.randn(64, 10).astype("float32") * 0.1, name="w")
    loss = mf.reduce_mean(mf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x @ w))
    train = mf.train.GradientDescentOptimizer(0.5).minimize(loss)
    with mf.Session() as sess:
        sess.run(mf.global_variables_initializer())
        sess.run(train, {x: xs, y: ys})

The map (build time, then run time):

* :mod:`.graph`: Graph, Operation, Tensor, name/device/control-dependency scopes
* :mod:`.op_def` + :mod:`.ops`: op definitions with shape inference and kernels
  (:mod:`.backend` is the numpy/torch seam, :mod:`.conv` convolution kernels)
* :mod:`.gradients`: symbolic reverse-mode autodiff (``gradients``, ``RegisterGradient``)
* :mod:`.train`: optimizers that build update ops; the Saver
* :mod:`.session`: ``Session.run`` -> :mod:`.plan`: :mod:`.ir` (prune, feeds) ->
  :mod:`.passes` (folding, CSE, pruning, fusion) -> :mod:`.placement` ->
  :mod:`.passes.remapper` (fused kernels for torch devices) ->
  :mod:`.partition` (Send/Recv, rendezvous) -> :mod:`.executor` (one per device)
* :mod:`.viz`: DOT graphs and Chrome traces
"""

from . import nn, train
from .dtypes import DType, as_dtype, bool_, float16, float32, float64, int32, int64
from .errors import (
                     FailedPreconditionError,
                     GraphBuildError,
                     InvalidArgumentError,
                     NotFoundError,
                     OpError,
)
from .gradients import RegisterGradient, gradients, no_gradient
from .graph import (
                     Graph,
                     Operation,
                     Tensor,
                     add_to_collection,
                     control_dependencies,
                     device,
                     get_collection,
                     get_default_graph,
                     name_scope,
                     reset_default_graph,
)
from .op_def import constant, convert_to_tensor
from .ops.array_ops import (
                     broadcast_to,
                     concat,
                     gather,
                     identity,
                     one_hot,
                     ones_like,
                     reshape,
                     shape,
                     size,
                     stop_gradient,
                     transpose,
                     where,
                     where_v2,
                     zeros_like,
)
from .ops.composite import (
                     clip_by_global_norm,
                     clip_by_norm,
                     clip_by_value,
                     expand_dims,
                     ones,
                     squeeze,
                     stack,
                     unstack,
                     zeros,
)
from .ops.control_ops import add_check_numerics_ops, check_numerics, group, no_op, placeholder
from .ops.math_ops import (
                     abs,
                     add,
                     add_n,
                     cast,
                     div,
                     divide,
                     equal,
                     exp,
                     floordiv,
                     greater,
                     greater_equal,
                     less,
                     less_equal,
                     log,
                     logical_and,
                     logical_not,
                     logical_or,
                     matmul,
                     maximum,
                     minimum,
                     multiply,
                     negative,
                     not_equal,
                     pow,
                     relu,
                     sigmoid,
                     sign,
                     sqrt,
                     square,
                     subtract,
                     tanh,
)
from .ops.nn_ops import log_softmax, softmax
from .ops.random_ops import random_normal, random_uniform, set_random_seed, truncated_normal
from .ops.reduction_ops import argmax, reduce_max, reduce_mean, reduce_min, reduce_sum
from .ops.slicing import strided_slice
from .ops.state_ops import (
                     GraphKeys,
                     Variable,
                     assign,
                     assign_add,
                     assign_sub,
                     global_variables,
                     global_variables_initializer,
                     trainable_variables,
                     variables_initializer,
)
from .session import (
                     ConfigProto,
                     GraphOptions,
                     InteractiveSession,
                     RunMetadata,
                     RunOptions,
                     Session,
                     get_default_session,
)

bool = bool_  # noqa: A001  (TF spells it tf.bool)
truediv = divide
initialize_all_variables = global_variables_initializer  # TF1's name before 1.0
sub = subtract
mul = multiply
neg = negative

__all__ = [n for n in dir() if not n.startswith("_")]
