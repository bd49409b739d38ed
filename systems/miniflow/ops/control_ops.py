"""Placeholders, grouping and ordering, and numerical checks.

``group`` is a ``NoOp`` whose control inputs are the grouped ops: running it runs them,
in no particular order (tensorflow/python/ops/control_flow_ops.py). ``check_numerics``
passes its input through but fails the step, naming the op that produced a NaN or Inf
(tensorflow/core/kernels/check_numerics_op.cc); ``add_check_numerics_ops`` guards every
floating-point tensor of the graph.
"""

from __future__ import annotations

from .. import shapes
from ..dtypes import as_dtype
from ..errors import InvalidArgumentError
from ..graph import Operation, Tensor, as_operation, get_default_graph
from ..op_def import OP_DEFS, OpDef, convert_to_tensor, define, make_op


def _placeholder_kernel(a, be, res):
    def missing():
        raise InvalidArgumentError(f"You must feed a value for placeholder tensor "
                                   f"'{a['name']}' with dtype {a['dtype'].name} and shape "
                                   f"{shapes.fmt(a['shape'])}")
    return missing


define(OpDef("Placeholder", lambda ins, a: [(a["dtype"], a["shape"])], _placeholder_kernel,
             stateful=True, expensive=False))
define(OpDef("NoOp", lambda ins, a: [], lambda a, be, res: lambda: (), expensive=False))


def placeholder(dtype, shape=None, name=None) -> Tensor:
    """A value supplied at run time through ``feed_dict``; ``None`` dims match any size."""
    g = get_default_graph()
    full = g.unique_name(name or "Placeholder")
    attrs = {"dtype": as_dtype(dtype), "shape": shapes.as_shape(shape), "name": full}
    return g.create_op("Placeholder", [], attrs, [(attrs["dtype"], attrs["shape"])], full,
                       exact_name=True).outputs[0]


def no_op(name=None) -> Operation:
    return make_op("NoOp", [], name=name)


def group(*inputs, name=None) -> Operation:
    """One op that, when run, runs all ``inputs`` (ops or tensors)."""
    deps = [as_operation(x, "group") for x in inputs]
    g = get_default_graph()
    return g.create_op("NoOp", [], {}, [], name or "group_deps", control_inputs=deps)


def _check_kernel(a, be, res):
    def check(x):
        if not be.all_finite(x):
            raise InvalidArgumentError(f"{a['message']}: Tensor had NaN or Inf values; it was "
                                       f"produced by {a['source']}")
        return x
    return check


define(OpDef("CheckNumerics", lambda ins, a: [(ins[0].dtype, ins[0].shape)], _check_kernel,
             expensive=False))


def check_numerics(tensor, message="CheckNumerics", name=None) -> Tensor:
    t = convert_to_tensor(tensor)
    if not t.dtype.is_floating:
        raise TypeError(f"check_numerics needs a floating-point tensor, got {t.dtype.name}")
    source = f"op '{t.op.name}' ({t.op.type}) created at {t.op.created_at}"
    return make_op("CheckNumerics", [t], {"message": message, "source": source},
                   name).outputs[0]


def _checkable(op: Operation) -> bool:
    """TF checks only outputs whose dtype is float16/32/64, which leaves out *ref* dtypes
    (tensorflow/python/ops/numerics.py add_check_numerics_ops): the variables and the ops
    that write them. Checking an ``Assign`` or ``ApplyGradientDescent`` would make the
    check group run it: every step would re-run the initializers and apply the updates
    once more."""
    d = OP_DEFS.get(op.type)
    return op.type != "CheckNumerics" and d is not None and not d.ref_output


def add_check_numerics_ops() -> Operation:
    """A group that checks every floating-point output in the default graph."""
    g = get_default_graph()
    checks = [check_numerics(t, message=f"{op.name}:{t.value_index}")
              for op in g.get_operations() if _checkable(op)
              for t in op.outputs if t.dtype.is_floating]
    return group(*checks, name="check_numerics")
