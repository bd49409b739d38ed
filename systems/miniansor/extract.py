"""Task extraction: partition a model into tuning tasks, de-duplicated with weights.

Ansor tunes *subgraphs*, not whole models: Relay's fusion pass cuts the network into
groups of one compute-heavy *anchor* op plus the elementwise ops that can be fused into
it, and each distinct group becomes a task; identical groups (the same layer repeated)
are tuned once, with a *weight* counting how often the group occurs, which the task
scheduler uses (``extract_tasks`` in ``python/tvm/auto_scheduler/relay_integration.py``).

From a ``torch.nn.Module`` we do the same with ``torch.fx``: trace the module, propagate
example shapes (``ShapeProp``), and walk the graph:

* anchors: ``nn.Linear`` / ``F.linear`` / ``matmul`` / ``@`` / ``mm`` / ``bmm``
  (functions or tensor methods; a GEMM, or a
  batched GEMM when both operands have leading dimensions), ``softmax`` over the last
  axis, ``nn.LayerNorm`` / ``F.layer_norm`` over the last axis;
* fusable consumers of a GEMM, followed while the anchor's value has a single user and
  in the epilogue's order: a bias add (a 1-D tensor of N values), ReLU or GELU, and a
  residual add (a tensor of the output's shape).

Other ops (reshapes, transposes, scaling by a constant, dropout) are not tasks.

The result is a plain ``(tasks, weights)`` pair, so another front end can produce the
same thing: ``extract_miniflow.py`` is the sibling for miniflow graphs.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Set

import torch
import torch.nn.functional as F
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from .workloads import Epilogue, Task, merge_tasks

_MATMULS = {torch.matmul, operator.matmul, torch.bmm, torch.mm}
_SOFTMAX = {torch.softmax, F.softmax}
_RELU = {torch.relu, F.relu}
_ADD = {operator.add, torch.add}


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _module(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is(gm, node: fx.Node, fns: set, mod_types: tuple = (), methods: tuple = ()) -> bool:
    if node.op == "call_function":
        return node.target in fns
    if node.op == "call_module":
        return isinstance(_module(gm, node), mod_types) if mod_types else False
    return node.op == "call_method" and node.target in methods


def _act(gm, node: fx.Node) -> str | None:
    if _is(gm, node, _RELU, (torch.nn.ReLU,), ("relu",)):
        return "relu"
    gelu_mod = node.op == "call_module" and isinstance(_module(gm, node), torch.nn.GELU) \
        and _module(gm, node).approximate == "none"
    gelu_fn = node.op == "call_function" and node.target is F.gelu and \
        node.kwargs.get("approximate", "none") == "none"
    return "gelu" if gelu_mod or gelu_fn else None


def _fuse_epilogue(gm, anchor: fx.Node, out_shape: tuple[int, ...], has_bias: bool,
                   n: int, taken: Set[fx.Node] = frozenset()) -> tuple[Epilogue, set[fx.Node]]:
    """Follow the anchor's single-user chain: [bias add] -> [relu|gelu] -> [residual].

    A node can join one group only, as in Relay's fusion: an add already fused into an
    earlier GEMM (``taken``; ``a(x) + b(y)``) ends the chain. An add whose other operand
    is the chain's own value (``y + y``) is not a residual: that operand is only ready
    after the epilogue would have consumed it."""
    bias, act, residual, fused = has_bias, "none", False, set()
    cur, stage = anchor, 0 if not has_bias else 1
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        if user in taken:
            break
        if _is(gm, user, _ADD, (), ("add",)) and len(user.args) == 2 \
                and user.kwargs.get("alpha", 1) == 1:  # x + alpha * y scales y: not ours
            other = user.args[1] if user.args[0] is cur else user.args[0]
            if other is anchor or other in fused or other is cur:
                break
            oshape = _shape(other)
            if stage == 0 and oshape == (n,):
                bias, stage = True, 1
            elif stage <= 2 and oshape == out_shape:
                residual, stage = True, 3
            else:
                break
        elif stage <= 1 and _act(gm, user):
            act, stage = _act(gm, user), 2
        else:
            break
        fused.add(user)
        cur = user
        if stage == 3:
            break
    return Epilogue(bias, act, residual), fused


def _arg(node: fx.Node, i: int, name: str):
    """A call's ``i``-th argument, given by position or by keyword (``F.linear(x,
    weight=w)``); None if absent."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name)


def _gemm_task(gm, node: fx.Node, dtype: str, taken: Set[fx.Node] = frozenset()
               ) -> tuple[Task, set[fx.Node]] | None:
    mod = _module(gm, node)
    if isinstance(mod, torch.nn.Linear) or (node.op == "call_function" and
                                            node.target is F.linear):
        x = _shape(_arg(node, 0, "input"))
        if mod is not None:
            n_out, k, has_bias = mod.out_features, mod.in_features, mod.bias is not None
        else:
            w = _shape(_arg(node, 1, "weight"))
            if w is None or len(w) != 2:  # a 1-D weight makes a dot product, no GEMM
                return None
            (n_out, k), has_bias = w, _arg(node, 2, "bias") is not None
        if x is None:
            return None
        m = math.prod(x[:-1])
        epi, fused = _fuse_epilogue(gm, node, _shape(node), has_bias, n_out, taken)
        return Task("gemm", (m, n_out, k), dtype, epi), fused
    if _is(gm, node, _MATMULS, (), ("matmul", "mm", "bmm")):  # x.mm(w) as torch.mm(x, w)
        b_arg = _arg(node, 1, "other")
        a, b = _shape(_arg(node, 0, "input")), _shape(b_arg if b_arg is not None else
                                                      _arg(node, 1, "mat2"))
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            return None
        m, k, n = math.prod(a[:-1]) if len(b) == 2 else a[-2], a[-1], b[-1]
        if len(b) == 2:  # [.., M, K] @ [K, N]: one GEMM over all leading rows
            epi, fused = _fuse_epilogue(gm, node, _shape(node), False, n, taken)
            return Task("gemm", (m, n, k), dtype, epi), fused
        batch = math.prod(_shape(node)[:-2])
        return Task("bmm", (batch, a[-2], n, k), dtype), set()
    return None


def _row_task(gm, node: fx.Node, dtype: str) -> Task | None:
    shape = _shape(node)
    if not shape:
        return None
    rows, cols = math.prod(shape[:-1]), shape[-1]
    if _is(gm, node, _SOFTMAX, (torch.nn.Softmax,), ("softmax",)):
        mod = _module(gm, node)
        dim = mod.dim if mod is not None else node.kwargs.get(
            "dim", node.args[1] if len(node.args) > 1 else None)
        if dim in (-1, len(shape) - 1):
            return Task("softmax", (rows, cols), dtype)
    mod = _module(gm, node)
    if isinstance(mod, torch.nn.LayerNorm) and len(mod.normalized_shape) == 1:
        return Task("layernorm", (rows, cols), dtype)
    if node.op == "call_function" and node.target is F.layer_norm:
        norm = node.args[1] if len(node.args) > 1 else node.kwargs["normalized_shape"]
        if isinstance(norm, fx.Node):  # traced, e.g. x.shape[-1:]: the weight, if any,
            norm = _shape(_arg(node, 2, "weight"))  # has exactly normalized_shape's shape
        if norm is not None and len(norm) == 1:
            return Task("layernorm", (rows, cols), dtype)
    return None


def _warn_if_opaque(gm: fx.GraphModule, node: fx.Node) -> None:
    """torch.fx keeps some ``torch.nn`` modules whole (MultiheadAttention, the
    Transformer layers): the products inside them are no task of ours. Say so, rather
    than tune the rest of the model as if it were all of it."""
    mod = _module(gm, node)
    if mod is None or isinstance(mod, (torch.nn.Linear, torch.nn.LayerNorm)):
        return
    inner = [n for n, m in mod.named_modules() if isinstance(m, torch.nn.Linear)]
    if inner or isinstance(mod, torch.nn.MultiheadAttention):
        print(f"miniansor: {node.target} ({type(mod).__name__}) stays one module in the "
              f"torch.fx trace: its matrix products are not extracted as tasks",
              file=sys.stderr)


def extract_tasks(module: torch.nn.Module, example_inputs: tuple, dtype: str = "fp16"
                  ) -> tuple[list[Task], list[int]]:
    """Distinct tasks of ``module`` (in first-seen order) and how often each occurs."""
    try:  # the model must trace, as a TVM model must first convert to Relay
        gm = fx.symbolic_trace(module)
        # ShapeProp runs the model once: on copies of the inputs, and with its buffers
        # put back afterwards, so that extraction leaves the caller's model and tensors
        # as they were (a BatchNorm in training mode took its running statistics from
        # the example inputs; TVM's extraction converts the model and never runs it)
        saved = [(b, b.detach().clone()) for b in module.buffers()]
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(*(x.clone() if isinstance(x, torch.Tensor) else x
                                          for x in example_inputs))
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)
    except Exception as e:  # torch.fx raises TraceError, TypeError, RuntimeError...
        raise ValueError(f"cannot extract tasks from {type(module).__name__}: torch.fx "
                         f"could not trace it with these inputs ({type(e).__name__}: "
                         f"{e})") from e
    found: list[Task] = []
    fused: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node in fused or node.op not in ("call_module", "call_function", "call_method"):
            continue
        _warn_if_opaque(gm, node)
        g = _gemm_task(gm, node, dtype, fused)
        if g is not None:
            found.append(g[0])
            fused |= g[1]
            continue
        r = _row_task(gm, node, dtype)
        if r is not None:
            found.append(r)
    return merge_tasks(found)
