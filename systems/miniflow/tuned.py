"""Running miniansor-tuned Triton kernels inside miniflow: the GPU backend's kernel seam.

TensorFlow gets its fast GPU kernels from libraries (cuBLAS, cuDNN) or, with XLA, from a
compiler. miniflow's torch backend calls torch's kernels by default; given a
``kernel_library`` (miniansor's ``apply_history_best(log)``), this pass replaces each
``MatMul`` placed on a torch device, together with the ``+ bias`` / ``ReLU`` chain the
fusion pass fused after it, by one ``_TunedGemm`` node. At run time the node looks up the
task for its actual shapes (the batch is only known then) and runs the best recorded
Triton kernel for it, or falls back to torch when that shape was never tuned.

The epilogue is recognised by the same function miniansor's miniflow front end uses to
extract tasks, so what is tuned is exactly what runs.
"""

from __future__ import annotations

from typing import Any

from .ir import Node, PlanGraph
from .op_def import OpDef, define

_DTYPES = {"float16": "fp16", "float32": "fp32"}


def _tuned_gemm_kernel(attrs, be, res):
    from systems.miniansor.workloads import Epilogue, Task

    lib, stats = res.kernel_library, res.kernel_stats
    epi = Epilogue(bias=attrs["bias"], act=attrs["act"])
    dtype = attrs["dtype"]
    torch = be.torch
    cache: dict[tuple, Any] = {}

    def fallback(inputs):
        y = inputs["a"] @ inputs["b"]
        if epi.bias:
            y = y + inputs["bias"]
        return torch.relu(y) if epi.act == "relu" else y

    def run(a, b, *bias):
        key = (tuple(a.shape), tuple(b.shape))
        fn = cache.get(key)
        if fn is None:
            task = Task("gemm", (a.shape[0], b.shape[1], a.shape[1]), dtype, epi)
            fn = cache[key] = (lib.kernel(task) if task in lib else fallback,
                               "tuned" if task in lib else "fallback")
        inputs = {"a": a, "b": b}
        if bias:
            inputs["bias"] = bias[0]
        stats[fn[1]] += 1
        return fn[0](inputs)
    return run


define(OpDef("_TunedGemm", lambda ins, a: [], _tuned_gemm_kernel))


def use_tuned_kernels(pg: PlanGraph, torch_devices: set[str]) -> int:
    """Rewrite MatMul [+ fused bias/ReLU] on ``torch_devices`` into _TunedGemm nodes."""
    from systems.miniansor.extract_miniflow import gemm_epilogue

    consumers = pg.consumers()
    fetched = {id(n) for n, _ in pg.fetches}
    groups = []
    for n in pg.nodes:
        if (n.type != "MatMul" or n.device not in torch_devices or n.attrs["transpose_a"]
                or n.attrs["transpose_b"] or _DTYPES.get(n.out_specs[0][0].name) is None
                or any(len(p.out_specs[i][1] or ()) != 2 for p, i in n.inputs)):
            continue
        epi, fused = gemm_epilogue(n, consumers)
        if fused is None or id(n) in fetched or fused.device != n.device:
            fused = None  # the product is needed on its own: tune the plain GEMM
        inputs, top = list(n.inputs), n
        if fused is not None:
            inputs += [r for r in fused.inputs if r[0] is not n]  # the bias
            top = fused
        node = Node(f"{top.name}/tuned", "_TunedGemm", inputs,
                    list({id(c): c for c in n.control_inputs + top.control_inputs}.values()),
                    {"bias": fused is not None and epi.bias,
                     "act": epi.act if fused is not None else "none",
                     "dtype": _DTYPES[n.out_specs[0][0].name]},
                    top.out_specs, n.device, top.op, top.created_at, top.est_seconds)
        groups.append(([n] if top is n else [n, top], node))
    pg.collapse(groups)
    return len(groups)
