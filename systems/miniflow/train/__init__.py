"""``mf.train``: optimizers that add update ops to the graph, and the Saver."""

from .global_step import get_global_step, get_or_create_global_step, global_step
from .optimizer import AdamOptimizer, GradientDescentOptimizer, MomentumOptimizer, Optimizer
from .saver import DataLossError, Saver, latest_checkpoint

__all__ = ["AdamOptimizer", "DataLossError", "GradientDescentOptimizer", "MomentumOptimizer",
           "Optimizer", "Saver", "get_global_step", "get_or_create_global_step",
           "global_step", "latest_checkpoint"]
