"""The global step: the graph's count of training steps (tensorflow/python/training/
training_util.py). One int64 variable named ``global_step``, kept in the graph's
``GraphKeys.GLOBAL_STEP`` collection so that every part of a program (the optimizer's
``minimize(global_step=...)``, the Saver's checkpoint names, a learning-rate schedule)
finds the same one."""

from __future__ import annotations

from ..dtypes import int64
from ..graph import get_default_graph
from ..ops.state_ops import GLOBAL_STEP, GLOBAL_VARIABLES, Variable


def get_global_step(graph=None):
    """The graph's global step variable, or None; more than one is an error, as TF's.
    Not in the collection, a variable named ``global_step`` is it (TF looks up
    ``global_step:0`` too), as the tutorials' ``Variable(0, name="global_step")``."""
    g = graph if graph is not None else get_default_graph()  # an empty Graph is falsy
    found = g.get_collection(GLOBAL_STEP)
    if len(found) > 1:
        raise TypeError(f"There should be only one global step, found {len(found)}: "
                        f"{[v.name for v in found]}")
    if not found:
        found = [v for v in g.get_collection(GLOBAL_VARIABLES) if v.op.name == "global_step"]
    return found[0] if found else None


def get_or_create_global_step(graph=None):
    """The graph's global step, made (int64, 0, not trainable) if it has none."""
    g = graph if graph is not None else get_default_graph()
    step = get_global_step(g)
    if step is None:
        with g.as_default(), g.name_scope(None):
            step = Variable(0, trainable=False, name="global_step", dtype=int64)
        g.add_to_collection(GLOBAL_STEP, step)
    return step


def global_step(sess, global_step_tensor) -> int:
    """The global step's value as a Python int (TF's ``tf.train.global_step``)."""
    return int(sess.run(global_step_tensor))
