"""``mf.train``: optimizers that add update ops to the graph, and the Saver."""

from .global_step import get_global_step, get_or_create_global_step, global_step
from .learning_rate import exponential_decay
from .optimizer import (
    AdagradOptimizer,
    AdamOptimizer,
    GradientDescentOptimizer,
    MomentumOptimizer,
    Optimizer,
    RMSPropOptimizer,
)
from .saver import DataLossError, Saver, latest_checkpoint

__all__ = ["AdagradOptimizer", "AdamOptimizer", "DataLossError", "GradientDescentOptimizer",
           "MomentumOptimizer", "Optimizer", "RMSPropOptimizer", "Saver", "exponential_decay",
           "get_global_step", "get_or_create_global_step", "global_step", "latest_checkpoint"]
