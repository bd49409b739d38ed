"""Symbolic reverse-mode differentiation that adds gradient ops to the same graph.

Abadi et al. 2016, section 4.1: "the differentiation algorithm performs breadth-first
search to identify all of the backwards paths from the target operation (e.g., a loss
function) to a set of parameters, and sums the partial gradients that each path
contributes". The algorithm mirrors ``tensorflow/python/ops/gradients_util.py``:

1. find the ops on some path from ``xs`` to ``ys``;
2. count, for each such op, how many of its consumers on those paths still owe it a
   gradient;
3. walk backwards from ``ys``: when every consumer of an op has delivered its partial
   gradients, sum them (``AddN``), call the op type's registered gradient function, and
   pass the results to the op's inputs.

Gradient functions build ordinary ops, so a gradient is itself a graph that can be
differentiated again (second derivatives, as needle's ``gradient()`` returning graph
nodes). They are registered per op type with :class:`RegisterGradient`, exactly as
``tf.RegisterGradient``.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Sequence

from . import shapes
from .graph import Operation, Tensor

GradFn = Callable[..., Sequence[Tensor | None]]
GRADIENTS: dict[str, GradFn | None] = {}


class RegisterGradient:
    """Decorator: ``@RegisterGradient("MyOp") def _my_op_grad(op, grad): ...``

    The function receives the forward op and one gradient per op output, and returns one
    gradient (or ``None``) per op input.
    """

    def __init__(self, op_type: str):
        self.op_type = op_type

    def __call__(self, fn: GradFn) -> GradFn:
        if GRADIENTS.get(self.op_type) is not None:
            raise KeyError(f"a gradient for {self.op_type!r} is already registered")
        GRADIENTS[self.op_type] = fn
        return fn


def no_gradient(op_type: str) -> None:
    """Declare an op type non-differentiable (its inputs get no gradient from it)."""
    GRADIENTS[op_type] = None


def _as_xs(x) -> Tensor:
    # Differentiating with respect to a Variable means with respect to its reference, so
    # that every read of it (w/read, read_value()) contributes, as with TF1 ref variables.
    return x._ref if hasattr(x, "_ref") else x


def gradients(ys, xs, grad_ys=None, name: str = "gradients",
              colocate_gradients_with_ops=False, gate_gradients=False,
              aggregation_method=None, stop_gradients: Sequence[Tensor] = (),
              unconnected_gradients="none") -> list[Tensor | None]:
    """d(sum of ys)/d(x) for each x in ``xs``; ``None`` where x does not affect ys
    (zeros with ``unconnected_gradients="zero"``). TF1's argument order: colocation,
    gating and the aggregation method are accepted and ignored; in TF they change where
    gradient ops are placed, when they run and how partials are summed (we always use
    one AddN), not what the gradients are."""
    unconnected = str(getattr(unconnected_gradients, "value", unconnected_gradients))
    if unconnected not in ("none", "zero"):
        raise ValueError(f"gradients: unconnected_gradients must be 'none' or 'zero', got "
                         f"{unconnected_gradients!r}")
    ys = list(ys) if isinstance(ys, (list, tuple)) else [ys]
    given = list(xs) if isinstance(xs, (list, tuple)) else [xs]
    xs = [_as_xs(x) for x in given]
    if grad_ys is not None:
        grad_ys = list(grad_ys) if isinstance(grad_ys, (list, tuple)) else [grad_ys]
    stop_gradients = [] if stop_gradients is None else list(stop_gradients) \
        if isinstance(stop_gradients, (list, tuple)) else [stop_gradients]  # as ys, xs
    ys = [y._as_tensor() if hasattr(y, "_as_tensor") else y for y in ys]
    if not ys:  # nothing to differentiate
        return [None] * len(xs)
    # The graph of ys, not the default one (TF opens its name scope with ys and xs as
    # values, which enters their graph): the gradient ops go next to the forward ops.
    g = ys[0].graph
    for what, ts in (("ys", ys), ("xs", xs), ("grad_ys", grad_ys or ()),
                     ("stop_gradients", stop_gradients)):
        for t in ts:
            if getattr(t, "graph", g) is not g:
                raise ValueError(f"gradients: {what} {t.name} is from a different graph "
                                 f"than ys[0] ({ys[0].name})")
    with g.as_default():
        if grad_ys is not None:
            grad_ys = _check_grad_ys(ys, grad_ys)
        out = _gradients(g, ys, xs, grad_ys, name, {t.op for t in stop_gradients})
        if unconnected == "zero":
            from .ops.array_ops import zeros_like

            out = [zeros_like(x) if d is None else d for d, x in zip(out, given, strict=True)]
        return out


def _check_grad_ys(ys: list[Tensor], grad_ys: list) -> list[Tensor | None]:
    """One per y, as a tensor of y's dtype and of a shape y could have (TF's
    ``_DefaultGradYs``): a Python list was handed back as the "gradient" itself, and a
    grad_y of another shape failed deep inside some op's gradient."""
    from . import shapes
    from .op_def import convert_to_tensor

    if len(grad_ys) != len(ys):
        raise ValueError(f"gradients: passed {len(grad_ys)} grad_ys for {len(ys)} ys")
    out: list[Tensor | None] = []
    for y, gy in zip(ys, grad_ys, strict=True):
        if gy is not None:
            if not isinstance(gy, Tensor):  # a Variable's value, or numbers in y's dtype
                gy = convert_to_tensor(gy, None if hasattr(gy, "_as_tensor") else y.dtype)
            if gy.dtype != y.dtype:
                raise TypeError(f"gradients: grad_ys {gy.name} is {gy.dtype.name}, but its "
                                f"y {y.name} is {y.dtype.name}")
            if not shapes.compatible(gy.shape, y.shape):
                raise ValueError(f"gradients: grad_ys {gy.name} has shape "
                                 f"{shapes.fmt(gy.shape)}, but its y {y.name} has shape "
                                 f"{shapes.fmt(y.shape)}")
        out.append(gy)
    return out


def _gradients(g, ys: list[Tensor], xs: list[Tensor], grad_ys, name: str,
               stops: set[Operation]) -> list[Tensor | None]:
    from .ops.array_ops import ones_like
    from .ops.math_ops import add_n


    # 1. ops reachable forward from xs, then those of them that reach ys.
    consumers: dict[Operation, list[Operation]] = defaultdict(list)
    for op in g.get_operations():
        for t in op.inputs:
            consumers[t.op].append(op)
    reached = set()
    queue = deque(x.op for x in xs)
    while queue:
        op = queue.popleft()
        if op in reached:
            continue
        reached.add(op)
        queue.extend(c for c in consumers[op] if c not in stops)
    between = set()
    queue = deque(y.op for y in ys)
    while queue:
        op = queue.popleft()
        if op in between or op not in reached:
            continue
        between.add(op)
        queue.extend(t.op for t in op.inputs)

    # An x's own op is not differentiated unless it depends on another x (TF's
    # ``_StopOps``): d ys/d x never needs it, and it may have no gradient at all (the
    # gradient of a gradient penalty w.r.t. Conv2DBackpropInput's output).
    stops = stops | {x.op for x in xs if not any(t.op in between for t in x.op.inputs)}

    # 2. pending counts: consumers (on a path) that have not yet sent their gradient.
    pending: dict[Operation, int] = defaultdict(int)
    for op in between:
        for t in op.inputs:
            if t.op in between:
                pending[t.op] += 1

    with g.name_scope("gradients" if name is None else name):  # None: TF's default name
        grads: dict[Tensor, list[Tensor]] = defaultdict(list)
        for i, y in enumerate(ys):
            grads[y].append(grad_ys[i] if grad_ys is not None and grad_ys[i] is not None
                            else ones_like(y, name=f"grad_ys_{i}"))
        # in the order of ys (as gradients_util.py queues them): a set of ops would
        # iterate by address, and the partial gradients would be summed in a different
        # order (to different float bits) from one build of the same graph to the next
        ready = deque(op for op in dict.fromkeys(y.op for y in ys) if pending[op] == 0)
        done: set[Operation] = set()
        while ready:
            op = ready.popleft()
            if op in done:
                continue
            done.add(op)
            out_grads = [_aggregate(grads.get(t), add_n) for t in op.outputs]
            if op in between and op not in stops and any(og is not None for og in out_grads):
                in_grads = _call_grad_fn(g, op, out_grads)
                for t, ig in zip(op.inputs, in_grads, strict=True):
                    if ig is not None and t.dtype.is_floating:
                        # a gradient has its input's shape: say what the input's static
                        # shape knows (gradients_util.py: in_grad.set_shape(...))
                        if ig.shape != t.shape and shapes.compatible(ig.shape, t.shape):
                            ig.shape = shapes.merge(ig.shape, t.shape)
                        grads[t].append(ig)
            for t in op.inputs:
                if t.op in between:
                    pending[t.op] -= 1
                    if pending[t.op] == 0:
                        ready.append(t.op)
        return [_aggregate(grads.get(x), add_n) for x in xs]


def _aggregate(parts: list[Tensor] | None, add_n) -> Tensor | None:
    """Sum the partial gradients arriving at one tensor along different paths."""
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else add_n(parts)


def _call_grad_fn(g, op: Operation, out_grads: list[Tensor | None]) -> list[Tensor | None]:
    from .ops.array_ops import zeros_like

    if op.type not in GRADIENTS:
        raise LookupError(f"No gradient defined for operation '{op.name}' (op type: "
                          f"{op.type}), created at {op.created_at}. Register one with "
                          f"@mf.RegisterGradient('{op.type}').")
    fn = GRADIENTS[op.type]
    if fn is None:
        return [None] * len(op.inputs)
    with g.name_scope(op.name.replace("/", "_") + "_grad"):
        # Outputs nobody differentiated get explicit zeros (gradients_util does the same).
        filled = [og if og is not None else zeros_like(t)
                  for og, t in zip(out_grads, op.outputs, strict=True)]
        in_grads = list(fn(op, *filled))
    if len(in_grads) != len(op.inputs):
        raise ValueError(f"gradient function for {op.type} returned {len(in_grads)} "
                         f"gradients for {len(op.inputs)} inputs")
    return in_grads
