"""``mf.train``: optimizers that add update ops to the graph, and the Saver."""

from .optimizer import AdamOptimizer, GradientDescentOptimizer, MomentumOptimizer, Optimizer
from .saver import DataLossError, Saver, latest_checkpoint

__all__ = ["AdamOptimizer", "DataLossError", "GradientDescentOptimizer", "MomentumOptimizer",
           "Optimizer", "Saver", "latest_checkpoint"]
