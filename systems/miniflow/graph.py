"""The dataflow graph: operations, the tensors they produce, and the scopes that build them.

Abadi et al. (OSDI 2016) section 3: "TensorFlow uses a single dataflow graph to
represent all computation and state": vertices are *operations* (with a type and
attributes, like ``MatMul`` with ``transpose_a``), edges carry *tensors*, and control
edges order operations that share no data. Building the graph computes nothing; a
:class:`~systems.miniflow.session.Session` runs parts of it later. The classes mirror
``tensorflow/python/framework/ops.py`` (Graph, Operation, Tensor), and the same context
managers set names, devices and control dependencies while building.

Every operation remembers the user's ``file:line`` where it was created, so that an error
found at build time or at run time points at the user's code, not ours.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from . import shapes
from .dtypes import DType

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def _user_site() -> str:
    """The first stack frame outside miniflow: where the user asked for this op.

    TF keeps the whole creation stack (``Operation.traceback``) and prints it under an
    error; we keep this one frame, which is what our errors name, because walking and
    storing the whole stack would add to the cost of every op (building one takes ~7 us)."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back
    if f is None:
        return "<unknown>"
    return f"{f.f_code.co_filename}:{f.f_lineno}"


class Tensor:
    """The ``value_index``-th output of ``op``: a symbolic value, computed only by a Session."""

    __array_priority__ = 100  # numpy defers to our reflected operators (np.ones(3) + t)
    __array_ufunc__ = None

    def __init__(self, op: Operation, value_index: int, dtype: DType, shape: shapes.Shape):
        self.op = op
        self.value_index = value_index
        self.dtype = dtype
        self.shape = shape

    @property
    def name(self) -> str:
        return f"{self.op.name}:{self.value_index}"

    @property
    def graph(self) -> Graph:
        return self.op.graph

    @property
    def device(self) -> str:
        return self.op.device

    def get_shape(self) -> shapes.TensorShape:
        return shapes.TensorShape(self.shape)

    def eval(self, feed_dict: dict | None = None, session: Any = None) -> Any:
        return session_or_default(session, "Tensor.eval()").run(self, feed_dict)

    def __repr__(self) -> str:
        return f"<mf.Tensor '{self.name}' shape={shapes.fmt(self.shape)} dtype={self.dtype.name}>"

    __hash__ = object.__hash__  # identity, as TF1 tensors; operators are overloaded in ops/

    # A Tensor has no value while the graph is built, so it is neither true nor false, and
    # cannot be iterated: TF1 raises TypeError for both (framework/ops.py Tensor.__bool__,
    # Tensor.__iter__). Without these, ``if x > 0:`` would always take the branch, and
    # ``for row in x`` would call __getitem__ forever on a tensor of unknown length.
    def __bool__(self) -> bool:
        raise TypeError(f"Using a Tensor ({self.name}) as a Python bool is not allowed: "
                        f"its value exists only when a Session runs it. Use 'if t is not "
                        f"None:' to test that a tensor is defined, and mf.where to choose "
                        f"between values.")

    def __iter__(self):
        raise TypeError(f"Tensor {self.name} is not iterable while the graph is built; index "
                        f"it (t[0], t[1], ...) or fetch its value with Session.run.")


def session_or_default(session: Any, what: str) -> Any:
    """``session``, else the default session of a ``with mf.Session():`` block. Without
    either, TF raises ValueError ("No default session is registered"), not an
    AttributeError on None (framework/ops.py ``_run_using_default_session``)."""
    from .session import get_default_session

    session = session or get_default_session()
    if session is None:
        raise ValueError(f"{what} needs a session: pass session= or use "
                         f"'with mf.Session() as sess:'")
    return session


class Operation:
    """A node: an op type, attributes, inputs (data and control), outputs, a device."""

    def __init__(self, graph: Graph, op_type: str, name: str, inputs: Sequence[Tensor],
                 attrs: dict[str, Any], output_specs: Sequence[tuple[DType, shapes.Shape]],
                 device: str, control_inputs: Sequence[Operation], created_at: str):
        self.graph = graph
        self.type = op_type
        self.name = name
        self.inputs = tuple(inputs)
        self.attrs = attrs
        self.device = device
        self.control_inputs = list(control_inputs)
        self.created_at = created_at
        self.outputs = [Tensor(self, i, dt, sh) for i, (dt, sh) in enumerate(output_specs)]
        self.id = len(graph._ops)

    def run(self, feed_dict: dict | None = None, session: Any = None) -> None:
        session_or_default(session, "Operation.run()").run(self, feed_dict)

    def __repr__(self) -> str:
        return f"<mf.Operation '{self.name}' type={self.type}>"


def as_operation(x: Any, where: str) -> Operation:
    """The op behind ``x``: an Operation, a Tensor's op, a Variable's op (TF takes all
    three in control_dependencies and group); anything else is a TypeError here, not a
    failure when the graph runs."""
    if isinstance(x, Tensor):
        return x.op
    if isinstance(getattr(x, "op", None), Operation):
        return x.op
    if isinstance(x, Operation):
        return x
    raise TypeError(f"{where}: {x!r} is not an op, a tensor or a variable")


class Graph:
    """A container of operations, plus the scopes in effect while it is being built.

    The scopes (name, device, control dependencies) belong to the thread that opened
    them, as in TF (``Graph._thread_local`` in ``ops.py``): two threads building one
    graph never put their ops in each other's scopes. Building from two threads at once
    is unsafe in TF; here an op's name is chosen and taken under a lock, so names stay
    unique."""

    def __init__(self) -> None:
        self._ops: list[Operation] = []
        self._by_name: dict[str, Operation] = {}
        self._name_counts: dict[str, int] = {}
        self._local = threading.local()
        self._lock = threading.RLock()  # a name is chosen and taken in one step
        self._collections: dict[str, list[Any]] = {}
        self._finalized = False
        self.seed: int | None = None  # the graph-level random seed (set_random_seed)
        self.random_ops_seeded = 0  # random ops that took the graph's seed (get_seed)
        # a Const's name -> the ops that read its value when they were built (a reshape's
        # shape): feeding it later could not change them, so a feed of it is refused
        self.folded_consts: dict[str, list[str]] = {}
        # a variable's name -> its initializer (ir.build orders the variable's reads in a
        # step after it, so that Variable(v + 1.0) initialises)
        self.initializers: dict[str, Operation] = {}

    # the scopes: per thread (each starts at the top level, with none open)
    @property
    def _scope(self) -> str:
        return getattr(self._local, "scope", "")

    @_scope.setter
    def _scope(self, scope: str) -> None:
        self._local.scope = scope

    @property
    def _device_stack(self) -> list[str]:
        if not hasattr(self._local, "devices"):
            self._local.devices = []
        return self._local.devices

    @property
    def _control_stack(self) -> list[list[Operation]]:
        if not hasattr(self._local, "controls"):
            self._local.controls = []
        return self._local.controls

    @_control_stack.setter
    def _control_stack(self, stack: list[list[Operation]]) -> None:
        self._local.controls = stack

    # -- building ------------------------------------------------------------------
    def create_op(self, op_type: str, inputs: Sequence[Tensor], attrs: dict[str, Any],
                  output_specs: Sequence[tuple[DType, shapes.Shape]], name: str | None = None,
                  control_inputs: Sequence[Operation] = (), exact_name: bool = False
                  ) -> Operation:
        if self._finalized:
            raise RuntimeError("Graph is finalized and cannot be modified.")
        for t in inputs:
            if t.graph is not self:
                raise ValueError(f"{op_type}: input {t.name} is from a different graph")
        for c in control_inputs:  # the plan finds ops by their index in *this* graph
            self._check_own(c, op_type)
        controls = [op for group in self._control_stack for op in group]
        if name and name.endswith("/") and not exact_name:  # a scope's own name, used
            name, exact_name = name[:-1], True  # as it is (TF's create_op, "train/")
        with self._lock:
            if exact_name and (name in self._by_name or not name):
                raise ValueError(f"operation name {name!r} is empty or already taken")
            full = name if exact_name else self.unique_name(name or op_type)
            op = Operation(self, op_type, full, inputs, attrs,
                           output_specs, self._device_stack[-1] if self._device_stack else "",
                           controls + list(control_inputs), _user_site())
            self._ops.append(op)
            self._by_name[op.name] = op
        return op

    def _check_own(self, op: Operation, where: str) -> None:
        if op.graph is not self:
            raise ValueError(f"{where}: control input {op.name} is from a different graph")

    def unique_name(self, name: str) -> str:
        """``scope/name``, with ``_1``, ``_2``... appended if taken (as TF does)."""
        base = f"{self._scope}/{name}" if self._scope else name
        with self._lock:
            return self._take_name(base)

    def _take_name(self, base: str) -> str:
        # Counted case-insensitively, as TF's ``Graph.unique_name`` does (its
        # ``_names_in_use`` is keyed by ``name.lower()``): after "A", "a" is "a_1".
        key = base.lower()
        count = self._name_counts.get(key, 0)
        full = f"{base}_{count}" if count else base
        # taken already: by a suffixed name ('a' twice made 'a_1', then 'a_1' is asked
        # for), by a user's own 'a_1', or handed out for an op not made yet (a Variable
        # picks its name, then builds its initial value, then takes the name: TF's
        # ``_names_in_use`` holds every name handed out); two ops of one name would swap
        # values between devices (Send/Recv keys are names) and in get_tensor_by_name
        while full in self._by_name or full.lower() in self._name_counts:
            count += 1
            full = f"{base}_{count}"
        self._name_counts[key] = count + 1
        self._name_counts.setdefault(full.lower(), 1)
        return full

    @contextlib.contextmanager
    def name_scope(self, name: str | None) -> Iterator[str]:
        """Open ``name`` under the current scope, made unique (``s``, then ``s_1``). As in
        TF's ``Graph.name_scope``: a name ending in ``/`` (what ``with name_scope(...) as
        scope`` gave) re-enters that scope exactly, and ``None`` or ``""`` goes back to the
        top level."""
        old = self._scope
        if not name:
            self._scope = ""
        elif name.endswith("/"):
            self._scope = name[:-1]
        else:
            self._scope = self.unique_name(name)
        try:
            yield self._scope + "/" if self._scope else ""
        finally:
            self._scope = old

    @contextlib.contextmanager
    def _exact_scope(self, scope: str) -> Iterator[str]:
        """Enter an already-uniquified scope (a Variable's ops live under its name)."""
        old, self._scope = self._scope, scope
        try:
            yield scope + "/"
        finally:
            self._scope = old

    @contextlib.contextmanager
    def device(self, spec: str | None) -> Iterator[None]:
        if spec is not None and not isinstance(spec, str):
            raise TypeError(f"device() takes a device string like '/cpu:0' or None, got "
                            f"{type(spec).__name__} (TF's device functions are not supported)")
        self._device_stack.append(canonical_device(spec) if spec else "")
        try:
            yield
        finally:
            self._device_stack.pop()

    @contextlib.contextmanager
    def control_dependencies(self, ops: Sequence[Operation | Tensor] | None) -> Iterator[None]:
        if ops is None:  # clears the outer scopes' dependencies, as in TF
            saved, self._control_stack = self._control_stack, []
            try:
                yield
            finally:
                self._control_stack = saved
            return
        deps = [as_operation(o, "control_dependencies") for o in ops]
        for d in deps:
            self._check_own(d, "control_dependencies")
        self._control_stack.append(deps)
        try:
            yield
        finally:
            self._control_stack.pop()

    @contextlib.contextmanager
    def as_default(self) -> Iterator[Graph]:
        _stack().append(self)
        try:
            yield self
        finally:
            _stack().pop()

    def finalize(self) -> None:
        self._finalized = True

    # -- looking things up ---------------------------------------------------------
    def get_operations(self) -> list[Operation]:
        return list(self._ops)

    def get_operation_by_name(self, name: str) -> Operation:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no operation named {name!r} in the graph") from None

    def get_tensor_by_name(self, name: str) -> Tensor:
        op_name, _, idx = name.rpartition(":")
        if not op_name or not idx.isdigit():
            raise ValueError(f"tensor names look like 'op:0', got {name!r}")
        op = self.get_operation_by_name(op_name)
        if int(idx) >= len(op.outputs):
            n = len(op.outputs)
            raise KeyError(f"operation {op_name!r} has {n} output{'s' * (n != 1)}, so no "
                           f"output {idx}")
        return op.outputs[int(idx)]

    def add_to_collection(self, key: str, value: Any) -> None:
        self._collections.setdefault(key, []).append(value)

    def get_collection(self, key: str) -> list[Any]:
        return list(self._collections.get(key, []))

    def __len__(self) -> int:
        return len(self._ops)


def canonical_device(spec: str) -> str:
    """'/device:GPU:0', 'gpu:0', '/gpu:0' -> '/gpu:0'; also accepts '/job:.../cpu:1' tails."""
    s = spec.strip().lower().split("/")[-1] if spec else ""
    s = s.replace("device:", "")
    kind, _, idx = s.partition(":")
    if kind not in ("cpu", "gpu") or not (idx or "0").isdigit():
        raise ValueError(f"device spec {spec!r} not understood: use '/cpu:N' or '/gpu:N'")
    return f"/{kind}:{int(idx or 0)}"


_local = threading.local()
_global_default = [Graph()]


def _stack() -> list[Graph]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def get_default_graph() -> Graph:
    s = _stack()
    return s[-1] if s else _global_default[0]


def reset_default_graph() -> None:
    if _stack():
        raise AssertionError("reset_default_graph() inside a 'with graph.as_default()' block")
    _global_default[0] = Graph()


def name_scope(name: str):
    return get_default_graph().name_scope(name)


def add_to_collection(name: str, value: Any) -> None:
    get_default_graph().add_to_collection(name, value)


def get_collection(key: str, scope: str | None = None) -> list[Any]:
    """The default graph's collection ``key``; with ``scope``, only the items whose name
    starts with a match of that regular expression (TF's ``re.match``)."""
    items = get_default_graph().get_collection(key)
    if scope is None:
        return items
    pattern = re.compile(scope)
    return [x for x in items if hasattr(x, "name") and pattern.match(x.name)]


def device(spec: str | None):
    return get_default_graph().device(spec)


def control_dependencies(ops: Sequence[Operation | Tensor] | None):
    return get_default_graph().control_dependencies(ops)
