"""Optimizers: ``minimize`` = ``gradients`` + one update op per variable, in the graph.

As tensorflow/python/training/optimizer.py: ``compute_gradients`` differentiates the loss
symbolically; ``apply_gradients`` adds, per variable, the fused update op of the rule
(:mod:`.training_ops`), creating the rule's *slot* variables (momentum accumulators,
Adam's moments) next to the variable they belong to, under the variable's device; the
result is one grouped op to run each step. Nothing is computed until a Session runs it.
The constructors take TF1's arguments in TF1's order; ``use_locking`` is accepted and
always on here (every update holds its variable's lock, ``state_ops.variable_lock``).
"""

from __future__ import annotations

import numpy as np

from ..dtypes import float64
from ..gradients import gradients
from ..graph import Operation, device, get_default_graph
from ..op_def import constant, convert_to_tensor, make_op
from ..ops.control_ops import group
from ..ops.math_ops import cast
from ..ops.state_ops import Variable, trainable_variables
from . import training_ops  # noqa: F401  (defines the Apply* ops)


def flatten_var_list(var_list) -> list:
    """The variables in a ``var_list`` as TF1 reads one (``nest.flatten``): a lone
    variable, or any nesting of lists, tuples and dicts (a dict's values in key order)."""
    if isinstance(var_list, dict):
        return [v for k in sorted(var_list) for v in flatten_var_list(var_list[k])]
    if isinstance(var_list, (list, tuple)):
        return [v for x in var_list for v in flatten_var_list(x)]
    if isinstance(var_list, Variable) or hasattr(var_list, "op"):
        return [var_list]
    return list(var_list)  # a set or a generator: its items, in its order


class Optimizer:
    def __init__(self, learning_rate, name: str):
        self._lr = learning_rate
        self._name = name
        # per graph, as TF keys them (one optimizer may build train ops in several graphs)
        self._slots: dict[tuple[object, str, str], Variable] = {}

    def compute_gradients(self, loss, var_list=None, gate_gradients=1, aggregation_method=None,
                          colocate_gradients_with_ops=False, grad_loss=None):
        """TF1's signature; gating, aggregation and colocation are accepted and ignored
        (see :func:`~systems.miniflow.gradients.gradients`)."""
        var_list = trainable_variables() if var_list is None else flatten_var_list(var_list)
        if not var_list:
            raise ValueError("No variables to optimize.")
        grads = gradients(loss, var_list, None if grad_loss is None else [grad_loss])
        if all(g is None for g in grads):
            raise ValueError(f"No gradients provided for any variable: the loss does not "
                             f"depend on {[v.name for v in var_list]}")
        return list(zip(grads, var_list, strict=True))

    def apply_gradients(self, grads_and_vars, global_step: Variable | None = None,
                        name: str | None = None) -> Operation:
        """The returned op has the scope's own name (``train`` for ``name="train"``), as
        TF1's: the group of the updates, or with ``global_step`` its increment, run after
        that group (``train/update``)."""
        pairs = list(grads_and_vars)
        if not pairs:  # TF1's checks: a train op that updates nothing is a mistake
            raise ValueError("No variables provided.")
        if all(g is None for g, _ in pairs):
            raise ValueError(f"No gradients provided for any variable: "
                             f"{[v.name for _, v in pairs]}")
        updates = []
        graph = get_default_graph()
        self._outer_scope = graph._scope  # the caller's: Adam's beta powers go there
        with graph.name_scope(name or self._name) as scope:
            self._prepare()
            for g, v in pairs:
                if g is None:
                    continue
                with device(v.device or None):
                    updates.append(self._apply_dense(g, v))
            if global_step is None:
                return self._finish(updates, scope)
            with get_default_graph().control_dependencies([self._finish(updates, "update")]):
                return global_step.assign_add(np.asarray(1, global_step.dtype.np_dtype),
                                              name=scope).op

    def minimize(self, loss, global_step: Variable | None = None, var_list=None,
                 gate_gradients=1, aggregation_method=None,
                 colocate_gradients_with_ops=False, name: str | None = None,
                 grad_loss=None) -> Operation:
        """TF1's order (``name`` is the seventh, after the gradient options)."""
        return self.apply_gradients(self.compute_gradients(loss, var_list,
                                                           grad_loss=grad_loss),
                                    global_step, name)

    def get_slot(self, var: Variable, name: str) -> Variable | None:
        """The slot, or None if it was never made (TF1's get_slot)."""
        return self._slots.get((var.graph, var.op.name, name))

    def _slot(self, var: Variable, name: str, init: float = 0.0) -> Variable:
        key = (var.graph, var.op.name, name)
        if key not in self._slots:
            # TF's slot_creator names a slot after its variable and the optimizer,
            # uniquified in creation order: Adam's m and v are w/Adam and w/Adam_1
            with get_default_graph()._exact_scope(""), device(var.device or None):
                self._slots[key] = Variable(np.full(var.shape, init, var.dtype.np_dtype),
                                            name=f"{var.op.name}/{self._name}",
                                            trainable=False)
        return self._slots[key]

    def _tensor(self, value, dtype=float64):
        # Hyper-parameters are kept in float64 and cast to each variable's dtype (a folded
        # constant), so 0.9 is 0.9 for float64 variables too.
        return convert_to_tensor(value) if hasattr(value, "op") else constant(value, dtype)

    def _prepare(self) -> None:
        self._lr_t = self._tensor(self._lr)

    def _finish(self, updates, name: str) -> Operation:
        return group(*updates, name=name)

    def _apply_dense(self, grad, var: Variable):
        raise TypeError(f"{type(self).__name__} must define _apply_dense")

    def _as(self, t, var: Variable):
        """A hyper-parameter in the variable's dtype (folded to a constant by the passes)."""
        return cast(t, var.dtype)


class GradientDescentOptimizer(Optimizer):
    """w <- w - lr * g."""

    def __init__(self, learning_rate, use_locking: bool = False,
                 name: str = "GradientDescent"):
        super().__init__(learning_rate, name)

    def _apply_dense(self, grad, var):
        return make_op("ApplyGradientDescent", [var._ref, self._as(self._lr_t, var), grad],
                       dict(var.op.attrs)).outputs[0]


class MomentumOptimizer(Optimizer):
    """a <- momentum * a + g;  w <- w - lr * a  (or the Nesterov variant)."""

    def __init__(self, learning_rate, momentum, use_locking: bool = False,
                 name: str = "Momentum", use_nesterov: bool = False):
        super().__init__(learning_rate, name)
        self._momentum, self._nesterov = momentum, use_nesterov

    def _prepare(self):
        super()._prepare()
        self._momentum_t = self._tensor(self._momentum)

    def _apply_dense(self, grad, var):
        acc = self._slot(var, "momentum")
        attrs = {**var.op.attrs, "accum": acc.op.name, "use_nesterov": self._nesterov}
        return make_op("ApplyMomentum", [var._ref, acc._ref, self._as(self._lr_t, var), grad,
                                         self._as(self._momentum_t, var)], attrs).outputs[0]


class AdagradOptimizer(Optimizer):
    """accum <- accum + g^2;  w <- w - lr * g / sqrt(accum) (Duchi et al., 2011), the
    accumulator starting at ``initial_accumulator_value`` as TF's (so the first step is
    not a division by a tiny number)."""

    def __init__(self, learning_rate, initial_accumulator_value: float = 0.1,
                 use_locking: bool = False, name: str = "Adagrad"):
        if initial_accumulator_value <= 0.0:
            raise ValueError(f"initial_accumulator_value must be positive: "
                             f"{initial_accumulator_value}")
        super().__init__(learning_rate, name)
        self._init = initial_accumulator_value

    def _apply_dense(self, grad, var):
        acc = self._slot(var, "accumulator", self._init)
        return make_op("ApplyAdagrad", [var._ref, acc._ref, self._as(self._lr_t, var), grad],
                       {**var.op.attrs, "accum": acc.op.name}).outputs[0]


class RMSPropOptimizer(Optimizer):
    """RMSProp (Hinton's lecture 6e): the step divided by a running root mean square of
    the gradients, with TF's optional momentum and centring. The ``rms`` slot starts at
    1, the others at 0, and are made in TF's order (w/RMSProp, [mg,] w/RMSProp_1...)."""

    def __init__(self, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10,
                 use_locking: bool = False, centered: bool = False, name: str = "RMSProp"):
        super().__init__(learning_rate, name)
        self._decay, self._momentum, self._eps, self._centered = \
            decay, momentum, epsilon, centered

    def _prepare(self):
        super()._prepare()
        self._rho_t, self._mom_t, self._eps_t = (self._tensor(x) for x in (
            self._decay, self._momentum, self._eps))

    def _apply_dense(self, grad, var):
        rms = self._slot(var, "rms", 1.0)
        mg = self._slot(var, "mg") if self._centered else None
        mom = self._slot(var, "momentum")
        slots = [rms, mom] + ([mg] if mg is not None else [])
        op = "ApplyCenteredRMSProp" if self._centered else "ApplyRMSProp"
        hyper = [self._as(t, var) for t in (self._lr_t, self._rho_t, self._mom_t, self._eps_t)]
        return make_op(op, [var._ref, *(s._ref for s in slots), *hyper, grad],
                       {**var.op.attrs, "centered": self._centered,
                        "slots": tuple(s.op.name for s in slots)}).outputs[0]


class AdamOptimizer(Optimizer):
    """Adam (Kingma & Ba, 2015) with TF's defaults and its beta-power accumulators."""

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8,
                 use_locking: bool = False, name: str = "Adam"):
        super().__init__(learning_rate, name)
        self._b1, self._b2, self._eps = beta1, beta2, epsilon
        self._power_vars: dict[object, tuple[Variable, Variable]] = {}  # per graph, as TF's

    def _prepare(self):
        super()._prepare()
        self._b1_t, self._b2_t = self._tensor(self._b1), self._tensor(self._b2)
        self._eps_t = self._tensor(self._eps)

    def _powers(self, var: Variable) -> None:
        """beta1^t and beta2^t, next to the first variable. TF makes them float32 whatever
        the variables' dtype; we use the variable's dtype, so float64 training is exact."""
        powers = self._power_vars
        if var.graph not in powers:
            # in the caller's name scope, as TF's non-slot variables
            with get_default_graph()._exact_scope(getattr(self, "_outer_scope", "")), \
                    device(var.device or None):
                dt = var.dtype.np_dtype
                powers[var.graph] = (
                    Variable(dt.type(self._b1), name="beta1_power", trainable=False),
                    Variable(dt.type(self._b2), name="beta2_power", trainable=False))
        self._b1_power, self._b2_power = powers[var.graph]

    def _apply_dense(self, grad, var):
        self._powers(var)
        m, v = self._slot(var, "m"), self._slot(var, "v")
        attrs = {**var.op.attrs, "m": m.op.name, "v": v.op.name}
        hyper = [self._b1_power.value(), self._b2_power.value(), self._lr_t, self._b1_t,
                 self._b2_t, self._eps_t]
        return make_op("ApplyAdam", [var._ref, m._ref, v._ref,
                                     *[self._as(h, var) for h in hyper], grad],
                       attrs).outputs[0]

    def _finish(self, updates, name: str):
        # Advance beta^t only after every variable has used this step's value.
        with get_default_graph().control_dependencies(updates):
            u1 = self._b1_power.assign(self._b1_power.value() *
                                       cast(self._b1_t, self._b1_power.dtype))
            u2 = self._b2_power.assign(self._b2_power.value() *
                                       cast(self._b2_t, self._b2_power.dtype))
        return group(*updates, u1, u2, name=name)
