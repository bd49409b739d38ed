"""The op library: each module defines its op types (``OP_DEFS``) and their Python builders;
the ``*_grad`` modules register their gradients, as tensorflow/python/ops/ does."""

from . import (  # noqa: F401  (registration)
    array_grad,
    array_ops,
    control_ops,
    math_grad,
    math_ops,
    nn_grad,
    nn_ops,
    slicing,
    state_ops,
)
