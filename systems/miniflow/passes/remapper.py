"""Kernel choices for torch devices, made after placement (Grappler's remapper).

Some rewrites pay off only for the kernels of one device: TF's Grappler remapper
(grappler/optimizers/remapper.cc) looks at where each node landed and swaps a pattern of
ops for one fused kernel that device has. On a GPU driven from Python every kernel launch
costs host time, often more than the kernel, so these two save a launch each:

* **MatMul + bias (+ ReLU)** becomes ``_FusedMatMul``, TF's name for the remapper's
  fused op: one ``addmm`` does the product and the bias, as PyTorch's ``nn.Linear`` does.
* **MaxPool and its MaxPoolGrad** become ``_MaxPoolWithArgmax`` and
  ``_MaxPoolGradWithArgmax``. TF's GPU ``MaxPoolGrad`` finds each window's maximum again
  inside one cuDNN call (``DnnPoolingGradOp``, kernels/pooling_ops_common.cc, called
  from kernels/maxpooling_op.cc); PyTorch's
  pooling backward needs the indices its forward found, so without this rewrite the
  gradient runs the forward kernel a second time. TF has the same pair as ops of its
  own, ``MaxPoolWithArgmax``/``MaxPoolGradWithArgmax``; ours carry torch's indices (a
  flat index within each NCHW plane), so they are internal.

The numpy kernels keep the original ops: on a CPU a call into numpy is not a launch.
``GraphOptions(remapping=False)`` turns the rewrites off, as Grappler's
``RewriterConfig.remapping`` does.
"""

from __future__ import annotations

from ..dtypes import int64
from ..ir import Node, PlanGraph
from ..op_def import OpDef, define
from ..ops.nn_ops import _conv_backend


def _torch_only(op_type: str, make):
    """The kernel factory of an op the remapper makes for torch devices only."""
    def factory(a, be, res):
        if be.name != "torch":
            raise TypeError(f"{op_type} has only a torch kernel (the remapper makes it for "
                            f"torch devices)")
        return make(a, be)
    return factory


def _fused_matmul(attrs, be):
    addmm, relu = be.torch.addmm, be.torch.relu
    ta, tb, act = attrs["transpose_a"], attrs["transpose_b"], attrs["relu"]

    def fused_matmul(a, b, bias):
        y = addmm(bias, a.mT if ta else a, b.mT if tb else b)
        return relu(y) if act else y
    return fused_matmul


def _pooling(method: str):
    def make(attrs, be):
        fn, ksize = getattr(_conv_backend(be), method), attrs["ksize"]
        strides, padding = attrs["strides"], attrs["padding"]
        return lambda *xs: fn(*xs, ksize, strides, padding)
    return make


def _made_here(ins, attrs):
    raise RuntimeError("the remapper makes these nodes with their output specs")


define(OpDef("_FusedMatMul", _made_here, _torch_only("_FusedMatMul", _fused_matmul)))
define(OpDef("_MaxPoolWithArgmax", _made_here,
             _torch_only("_MaxPoolWithArgmax", _pooling("max_pool_with_argmax"))))
define(OpDef("_MaxPoolGradWithArgmax", _made_here,
             _torch_only("_MaxPoolGradWithArgmax", _pooling("max_pool_grad_with_argmax"))))


def remap(pg: PlanGraph, torch_devices: set[str]) -> dict[str, int]:
    """Apply both rewrites to nodes on ``torch_devices``; how many of each were made."""
    if not torch_devices:
        return {}
    return {"fused_matmul": use_fused_matmul(pg, torch_devices),
            "argmax_pooling": use_argmax_pooling(pg, torch_devices)}


def _bias_epilogue(mm: Node, user: Node) -> tuple[tuple[Node, int], bool] | None:
    """(bias, relu?) if ``user`` computes ``mm + bias`` or ``relu(mm + bias)`` with a 1-D
    bias as long as the product's rows, either as an Add or as a fused chain."""
    if user.type == "Add":
        refs, relu = user.inputs, False
    elif user.type == "_FusedElementwise":
        body = user.attrs["body"]
        if body[0][0] != "Add" or any(t for t, _ in body[0][2]) or len(body) > 2:
            return None
        if len(body) == 2 and (body[1][0] != "Relu" or body[1][2] != [(True, 0)]):
            return None
        refs, relu = [user.inputs[j] for _, j in body[0][2]], len(body) == 2
    else:
        return None
    others = [r for r in refs if r[0] is not mm]
    if len(others) != 1 or len(refs) != 2:
        return None
    n = mm.out_specs[0][1][-1]
    bias = others[0]
    return (bias, relu) if n is not None and bias[0].out_specs[bias[1]][1] == (n,) else None


def use_fused_matmul(pg: PlanGraph, torch_devices: set[str]) -> int:
    """Rewrite 2-D MatMul + bias (+ ReLU) on ``torch_devices`` into _FusedMatMul nodes."""
    consumers = pg.consumers()
    fetched = {id(n) for n, _ in pg.fetches}
    groups = []
    for mm in pg.nodes:
        if mm.type != "MatMul" or mm.device not in torch_devices or id(mm) in fetched:
            continue
        if any(len(p.out_specs[i][1] or ()) != 2 for p, i in mm.inputs):
            continue
        users = consumers.get(mm, [])
        if len(users) != 1 or users[0].device != mm.device or mm in users[0].control_inputs:
            continue
        user = users[0]
        epilogue = _bias_epilogue(mm, user)
        if epilogue is None:
            continue
        bias, relu = epilogue
        node = Node(f"{user.name}/fused_matmul", "_FusedMatMul", [*mm.inputs, bias],
                    list({id(c): c for c in mm.control_inputs + user.control_inputs}
                         .values()),
                    {"transpose_a": mm.attrs["transpose_a"],
                     "transpose_b": mm.attrs["transpose_b"], "relu": relu},
                    user.out_specs, mm.device, mm.op, mm.created_at,
                    mm.est_seconds + user.est_seconds)
        groups.append(([mm, user], node))
    pg.collapse(groups)
    return len(groups)


def use_argmax_pooling(pg: PlanGraph, torch_devices: set[str]) -> int:
    """Rewrite MaxPool/MaxPoolGrad pairs on ``torch_devices``; returns how many grads."""
    grads = []
    for g in pg.nodes:
        if g.type != "MaxPoolGrad" or g.device not in torch_devices:
            continue
        m, i = g.inputs[1]  # orig_output: the forward op
        if (m.type == "MaxPool" and i == 0 and m.device == g.device
                and m.inputs[0] == g.inputs[0] and m.attrs == g.attrs):
            grads.append(g)
    with_argmax: dict[int, Node] = {}
    moved, moved_nodes, replace = {}, {}, {}
    for g in grads:
        m = g.inputs[1][0]
        if id(m) not in with_argmax:
            y = m.out_specs[0][1]  # NHWC; the argmax is NCHW, as torch makes it
            argmax = (int64, None if y is None else (y[0], y[3], y[1], y[2]))
            w = Node(m.name, "_MaxPoolWithArgmax", list(m.inputs), list(m.control_inputs),
                     dict(m.attrs), [m.out_specs[0], argmax], m.device, m.op, m.created_at,
                     m.est_seconds)
            with_argmax[id(m)] = replace[id(m)] = w
            moved[(id(m), 0)], moved_nodes[id(m)] = (w, 0), w
        ng = Node(g.name, "_MaxPoolGradWithArgmax",
                  [g.inputs[0], g.inputs[2], (with_argmax[id(m)], 1)],
                  list(g.control_inputs), dict(g.attrs), list(g.out_specs), g.device, g.op,
                  g.created_at, g.est_seconds)
        replace[id(g)] = ng
        moved[(id(g), 0)], moved_nodes[id(g)] = (ng, 0), ng
    if grads:
        pg.nodes = [replace.get(id(n), n) for n in pg.nodes]
        pg.forward(moved, moved_nodes)
    return len(grads)
