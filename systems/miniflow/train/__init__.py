"""``mf.train``: optimizers that add update ops to the graph, and the Saver."""

from .optimizer import AdamOptimizer, GradientDescentOptimizer, MomentumOptimizer, Optimizer
from .saver import DataLossError, Saver

__all__ = ["AdamOptimizer", "DataLossError", "GradientDescentOptimizer", "MomentumOptimizer",
           "Optimizer", "Saver"]
