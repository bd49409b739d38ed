"""Learning-rate schedules as graph ops on the global step (tensorflow/python/training/
learning_rate_decay.py): the rate is a tensor that the optimizer reads at every step, so
the schedule advances as ``minimize(global_step=...)`` increments the step."""

from __future__ import annotations

from ..dtypes import float32
from ..graph import Tensor, get_default_graph
from ..op_def import convert_to_tensor, make_op
from ..ops.math_ops import cast, floordiv, pow


def exponential_decay(learning_rate, global_step, decay_steps, decay_rate, staircase=False,
                      name=None) -> Tensor:
    """``learning_rate * decay_rate ** (global_step / decay_steps)``; with ``staircase``
    the exponent is rounded down, so the rate drops every ``decay_steps`` steps."""
    if global_step is None:
        raise ValueError("global_step is required for exponential_decay.")
    with get_default_graph().name_scope(name or "ExponentialDecay") as scope:
        lr = convert_to_tensor(learning_rate, float32) if not isinstance(
            learning_rate, Tensor) else learning_rate
        dt = lr.dtype
        p = cast(global_step, dt) / convert_to_tensor(float(decay_steps), dt)
        if staircase:
            p = floordiv(p, convert_to_tensor(1.0, dt))
        return make_op("Mul", [lr, pow(convert_to_tensor(float(decay_rate), dt), p)],
                       name=scope).outputs[0]
