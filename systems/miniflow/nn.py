"""``mf.nn``: the neural-network functions where TensorFlow 1 puts them (``tf.nn``)."""

from .ops.composite import (
    embedding_lookup,
    l2_loss,
    softmax_cross_entropy_with_logits,
    softmax_cross_entropy_with_logits_v2,
)
from .ops.math_ops import relu, sigmoid, tanh
from .ops.nn_ops import (
                         avg_pool2d,
                         bias_add,
                         conv2d,
                         log_softmax,
                         max_pool2d,
                         softmax,
                         sparse_softmax_cross_entropy_with_logits,
)
from .ops.random_ops import dropout

max_pool = max_pool2d
avg_pool = avg_pool2d

__all__ = ["avg_pool", "avg_pool2d", "bias_add", "conv2d", "dropout", "embedding_lookup",
           "l2_loss", "log_softmax", "max_pool", "max_pool2d", "relu", "sigmoid", "softmax",
           "softmax_cross_entropy_with_logits", "softmax_cross_entropy_with_logits_v2",
           "sparse_softmax_cross_entropy_with_logits", "tanh"]
