"""Variables: the mutable state of a dataflow graph (Abadi et al. 2016, section 3.1).

A TensorFlow 1 ``tf.Variable`` named ``w`` is four ops, and so is ours:

* ``w``               (``VariableV2``): owns the buffer; its output is a *reference*;
* ``w/initial_value`` and ``w/Assign``: the initializer, run once;
* ``w/read``          (``ReadVariable``): the value, which ordinary ops consume.

State lives in the Session (TF's per-device ResourceMgr), not in the graph, so two
sessions over one graph hold independent values. Every op that takes the reference
(assigns, optimizer updates, reads) is colocated with the variable by the placer, as TF
colocates all consumers of a ref-typed edge. An assignment *replaces* the stored array
instead of writing into it, so a value read earlier in the step is never changed under
the reader's feet.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from .. import shapes
from ..dtypes import as_dtype
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..graph import Operation, Tensor, get_default_graph, session_or_default
from ..op_def import OpDef, constant, convert_to_tensor, define, dtype_error, make_op, shape_error

GLOBAL_VARIABLES = "variables"
TRAINABLE_VARIABLES = "trainable_variables"
GLOBAL_STEP = "global_step"


class GraphKeys:
    """The names of the graph's standard collections (TF's ``tf.GraphKeys``)."""

    GLOBAL_VARIABLES = GLOBAL_VARIABLES
    TRAINABLE_VARIABLES = TRAINABLE_VARIABLES
    GLOBAL_STEP = GLOBAL_STEP


def _read(store, name):
    try:
        return store[name]
    except KeyError:
        raise FailedPreconditionError(f"Attempting to use uninitialized value {name}") from None


def _handle_kernel(a, be, res):
    return lambda: a["var_name"]


def variable_lock(res, name: str) -> threading.Lock:
    """The lock every kernel that writes variable ``name`` holds around its read-modify-
    write. Our kernels replace the variable's array rather than update it in place, so
    two updates of one variable in one step (two optimizers, or an AssignAdd beside an
    Apply), run at once by the inter-op pool, would each read the old value and one
    whole update would vanish: the result would depend on the thread count. TF's
    ``use_locking=True`` (training_ops.cc's ``mutex_lock``) makes the same promise."""
    return res.variable_locks.setdefault(name, threading.Lock())


def _read_kernel(a, be, res):
    store, name = res.variables, a["var_name"]
    return lambda handle: _read(store, name)


def _assign_kernel(mode):
    def make(a, be, res):
        store, name, want = res.variables, a["var_name"], a["shape"]
        lock = variable_lock(res, name)

        def assign(handle, value):
            with lock:
                return locked(value)

        def locked(value):
            if tuple(value.shape) != want:  # add/sub would broadcast: the variable grows
                op = {"set": "Assign", "add": "AssignAdd", "sub": "AssignSub"}[mode]
                raise InvalidArgumentError(f"{op} requires shapes of both tensors to "
                                           f"match: {name} is {want}, value is "
                                           f"{tuple(value.shape)}")
            if mode == "set":
                # the variable keeps its own buffer, as TF's AssignOp copies the value
                # into the variable's tensor (tensorflow/core/kernels/assign_op.h): the
                # value may be the caller's fed array, or a view of it (Reshape,
                # Identity), which the caller is free to change after the step.
                new = be.copy(value)
            elif mode == "add":
                new = be.add(_read(store, name), value)
            else:
                new = be.subtract(_read(store, name), value)
            store[name] = new
            return new
        return assign
    return make


def _var_spec(ins, a):
    return [(a["dtype"], a["shape"])]


def _assign_shape(ins, a):
    ref, value = ins
    if value.dtype != ref.dtype:
        raise dtype_error("Assign", "value dtype differs from the variable's", ref, value)
    if not shapes.compatible(ref.shape, value.shape):
        raise shape_error("Assign", "value shape differs from the variable's", ref, value)
    return [(ref.dtype, ref.shape)]


define(OpDef("VariableV2", _var_spec, _handle_kernel, stateful=True, expensive=False,
             ref_output=True))
define(OpDef("ReadVariable", lambda ins, a: [(ins[0].dtype, ins[0].shape)], _read_kernel,
             stateful=True, expensive=False))
for _t, _mode in (("Assign", "set"), ("AssignAdd", "add"), ("AssignSub", "sub")):
    define(OpDef(_t, _assign_shape, _assign_kernel(_mode), stateful=True, expensive=False,
                 ref_output=True))


class Variable:
    """A named, mutable tensor whose value persists across ``Session.run`` calls."""

    def __init__(self, initial_value, trainable: bool | None = None, *,
                 name: str | None = None, dtype=None):
        # TF1's order: trainable is the second positional (``Variable(table, False)``
        # freezes it; None, TF1's default, is True); the rest are keywords, so a TF1 call
        # that passes more positionally fails here instead of meaning something else
        trainable = True if trainable is None else trainable
        if not isinstance(trainable, (bool, np.bool_)):
            raise TypeError(f"Variable: trainable must be True or False, got {trainable!r}"
                            f"{' (a name goes in name=)' if isinstance(trainable, str) else ''}")
        trainable = bool(trainable)
        g = get_default_graph()
        self.graph = g
        vname = g.unique_name(name or "Variable")
        # outside any control_dependencies in scope, as TF builds a variable (and an
        # optimizer its slots) under init_scope: initialising or reading the variable
        # must not run the ops a caller's scope names (the UPDATE_OPS idiom around
        # minimize would make the initializer need their feeds)
        with g.control_dependencies(None), g._exact_scope(vname):
            init = initial_value() if callable(initial_value) else initial_value
            if isinstance(init, Variable):  # tf.Variable(w): w's value (convert_to_tensor)
                init = init._as_tensor()
            if not isinstance(init, Tensor):  # Python numbers: float32, int32/int64
                init = constant(init, dtype=dtype, name="initial_value")
            elif dtype is not None and init.dtype != as_dtype(dtype):
                from .math_ops import cast

                init = cast(init, dtype)
            if not shapes.is_fully_defined(init.shape):
                raise ValueError(f"Variable {vname}: initial value must have a fully "
                                 f"defined shape, got {shapes.fmt(init.shape)}")
            attrs = {"shape": tuple(init.shape), "dtype": init.dtype, "var_name": vname}
            self.op = g.create_op("VariableV2", [], attrs, [(init.dtype, init.shape)], vname,
                                  exact_name=True)
            self._ref = self.op.outputs[0]
            self.initializer = make_op("Assign", [self._ref, init],
                                       {**attrs}, "Assign").outputs[0].op
            g.initializers[vname] = self.initializer
            self._snapshot = make_op("ReadVariable", [self._ref], attrs, "read").outputs[0]
        self.initial_value = init
        self.trainable = trainable
        g.add_to_collection(GLOBAL_VARIABLES, self)
        if trainable:
            g.add_to_collection(TRAINABLE_VARIABLES, self)

    name = property(lambda self: self.op.name + ":0")
    dtype = property(lambda self: self._ref.dtype)
    shape = property(lambda self: self._ref.shape)
    device = property(lambda self: self.op.device)

    def get_shape(self) -> shapes.TensorShape:
        return self._ref.get_shape()

    def _as_tensor(self) -> Tensor:
        """The variable as an op's input. Inside ``control_dependencies`` it is a fresh
        read, ordered after those ops, as in TF (a resource variable reads at each use; a
        ref variable's ``read`` aliases the buffer the update wrote): so ``with
        control_dependencies([inc]): identity(counter)`` sees the increment. Elsewhere
        it is the one snapshot made with the variable (``w/read``)."""
        if any(self.graph._control_stack):
            return self.read_value()
        return self._snapshot

    def value(self) -> Tensor:
        return self._as_tensor()

    def initialized_value(self) -> Tensor:
        """The variable's value, read after its initializer when a step runs both (TF1's
        guarded read): ``Variable(w.initialized_value())`` copies w's value, its initial
        one while initialising. Any read is ordered so here (see ``ir.build``), so
        ``Variable(w + 1.0)`` works too."""
        return self._snapshot

    def _own_device(self):
        """The variable's device for its reads and updates, over any device scope open; a
        variable with no device leaves the scope as it is (the placer then puts the
        variable where its ops ask)."""
        if self.op.device:
            return get_default_graph().device(self.op.device)
        return contextlib.nullcontext()

    def read_value(self) -> Tensor:
        """A fresh read, ordered after the control dependencies in scope where it is made,
        on the variable's device whatever device scope is open (TF's placer colocates an
        op that takes a variable's reference with it)."""
        a = self.op.attrs
        with self._own_device():
            return make_op("ReadVariable", [self._ref], dict(a), self.op.name + "/read_1"
                           ).outputs[0]

    def _update(self, op_type, value, name):
        v = convert_to_tensor(value, dtype=self.dtype) if not isinstance(value, Tensor) \
            else value
        with self._own_device():  # as read_value's
            return make_op(op_type, [self._ref, v], dict(self.op.attrs), name).outputs[0]

    # TF1's RefVariable signatures: ``use_locking`` is accepted and always on (every
    # update holds its variable's lock); ``read_value=False`` gives the op, not its value
    def assign(self, value, use_locking=None, name=None, read_value=True):
        return _value_or_op(self._update("Assign", value, name), read_value)

    def assign_add(self, delta, use_locking=None, name=None, read_value=True):
        return _value_or_op(self._update("AssignAdd", delta, name), read_value)

    def assign_sub(self, delta, use_locking=None, name=None, read_value=True):
        return _value_or_op(self._update("AssignSub", delta, name), read_value)

    def eval(self, session=None):
        return self._snapshot.eval(session=session)

    def load(self, value, session=None) -> None:
        """Set the variable's value directly in ``session``, by default the current one
        (``tf.Variable.load``)."""
        session_or_default(session, "Variable.load()")._set_variable(self, value)

    def __repr__(self) -> str:
        return f"<mf.Variable '{self.name}' shape={shapes.fmt(self.shape)} " \
               f"dtype={self.dtype.name}>"


def _delegate(method):
    return lambda self, *args: getattr(self._as_tensor(), method)(*args)


for _m in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
           "__rtruediv__", "__floordiv__", "__rfloordiv__", "__pow__", "__rpow__", "__matmul__",
           "__rmatmul__", "__neg__", "__getitem__", "__lt__", "__le__", "__gt__", "__ge__",
           "__abs__", "__bool__", "__iter__"):
    setattr(Variable, _m, _delegate(_m))


def _value_or_op(t: Tensor, read_value: bool):
    return t if read_value else t.op


def assign(ref: Variable, value, validate_shape=None, use_locking=None, name=None) -> Tensor:
    """``tf.compat.v1.assign``; a variable keeps its shape (``validate_shape=False``,
    which lets TF's change it, is left out)."""
    if validate_shape is False:
        raise NotImplementedError("assign: validate_shape=False (a variable that changes "
                                  "shape) is not implemented in miniflow")
    return ref.assign(value, name=name)


def assign_add(ref: Variable, value, use_locking=None, name=None) -> Tensor:
    return ref.assign_add(value, name=name)


def assign_sub(ref: Variable, value, use_locking=None, name=None) -> Tensor:
    return ref.assign_sub(value, name=name)


def global_variables() -> list[Variable]:
    return get_default_graph().get_collection(GLOBAL_VARIABLES)


def trainable_variables() -> list[Variable]:
    return get_default_graph().get_collection(TRAINABLE_VARIABLES)


def variables_initializer(var_list, name="init") -> Operation:
    from .control_ops import group

    return group(*[v.initializer for v in var_list], name=name)


def global_variables_initializer() -> Operation:
    return variables_initializer(global_variables())
