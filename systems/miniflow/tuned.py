"""Running miniansor-tuned Triton kernels inside miniflow: the GPU backend's kernel seam.

TensorFlow gets its fast GPU kernels from libraries (cuBLAS, cuDNN) or, with XLA, from a
compiler. miniflow's torch backend calls torch's kernels by default; given a
``kernel_library`` (miniansor's ``apply_history_best(log)``), this pass replaces each
node miniansor extracts a task from, on a torch device, by a tuned node:

* a ``MatMul`` of rank-2 operands, together with the ``+ bias`` / ``ReLU`` chain the
  fusion pass fused after it, becomes one ``_TunedGemm`` (a ``gemm`` task with that
  epilogue); a transposed operand is handed to the kernel as a transposed *view* (the
  kernels address their operands through strides), so the gradient graph's
  ``x^T @ dy`` runs the tuned GEMM of the same (M, N, K), as extraction tunes it;
* a batched ``MatMul`` (rank-3 operands, or one of rank 2 or batch 1 broadcast against
  the other) becomes a ``_TunedGemm`` running the ``bmm`` task of its output's batch;
* a ``Softmax`` of a rank-2 tensor becomes a ``_TunedSoftmax`` (the ``softmax`` task).

At run time a node looks up the task for its actual shapes (the batch is only known
then) and runs the best recorded Triton kernel for it, or falls back to torch when that
shape was never tuned (``Session.kernel_stats`` counts both). The epilogue is recognised
by the same function miniansor's miniflow front end uses to extract tasks, so what is
tuned is exactly what runs.
"""

from __future__ import annotations

from typing import Any

from .ir import Node, PlanGraph
from .op_def import OpDef, define

_DTYPES = {"float16": "fp16", "float32": "fp32"}


def _tuned_kernel(attrs, be, res):
    from systems.miniansor.workloads import Epilogue, Task

    lib, stats = res.kernel_library, res.kernel_stats
    kind, dtype = attrs["kind"], attrs["dtype"]
    epi = Epilogue(bias=attrs.get("bias", False), act=attrs.get("act", "none"))
    torch = be.torch
    cache: dict[tuple, Any] = {}

    def fallback(inputs):
        if kind == "softmax":
            return torch.softmax(inputs["x"], dim=-1)
        y = inputs["a"] @ inputs["b"]
        if epi.bias:
            y = y + inputs["bias"]
        return torch.relu(y) if epi.act == "relu" else y

    def task_and_inputs(args) -> tuple[tuple, dict]:
        """The task's arguments (kind, shape, dtype, epilogue) and the kernel's inputs."""
        if kind == "softmax":
            x = args[0].contiguous()  # the row kernels read each row contiguously
            return ("softmax", tuple(x.shape), dtype), {"x": x}
        a, b = args[0], args[1]
        a = a.transpose(-1, -2) if attrs["transpose_a"] else a
        b = b.transpose(-1, -2) if attrs["transpose_b"] else b
        inputs = {"a": a, "b": b}
        if len(args) > 2:
            inputs["bias"] = args[2]
        if a.dim() == b.dim() == 2:
            return ("gemm", (a.shape[0], b.shape[1], a.shape[1]), dtype, epi), inputs
        # a batched product, one side possibly broadcast (rank 2, or a batch of 1): the
        # bmm task of the output's batch, the broadcast side as a stride-0 batch view
        # broadcast as torch does: a batch of 1 against an empty one gives 0 (then no
        # kernel takes it, and torch computes it below)
        batch = torch.broadcast_shapes(*(t.shape[:-2] for t in (a, b)))
        batch = batch[0] if batch else 1
        a, b = (t.expand(batch, *t.shape[-2:]) for t in (a, b))
        inputs.update(a=a, b=b)
        return ("bmm", (batch, a.shape[1], b.shape[2], a.shape[2]), dtype), inputs

    def run(*args):
        spec, inputs = task_and_inputs(args)
        key = tuple((tuple(t.shape), tuple(t.stride())) for t in inputs.values())
        fn = cache.get(key)
        if fn is None:
            try:
                task = Task(*spec)
            except ValueError:  # no kernel of ours takes it (an empty batch; a tensor
                task = None     # past the kernels' 32-bit offsets): torch computes it
            hit = task is not None and task in lib
            fn = cache[key] = (lib.kernel(task) if hit else fallback,
                               "tuned" if hit else "fallback")
        stats[fn[1]] += 1
        return fn[0](inputs)
    return run


define(OpDef("_TunedGemm", lambda ins, a: [], _tuned_kernel))
define(OpDef("_TunedSoftmax", lambda ins, a: [], _tuned_kernel))


def _rank(ref) -> int | None:
    shape = ref[0].out_specs[ref[1]][1]
    return None if shape is None else len(shape)


def _tuned_node(n: Node, pg_consumers, fetched: set[int]) -> tuple[list[Node], Node] | None:
    """The tuned node standing for ``n`` (and the nodes it replaces), or None."""
    from systems.miniansor.extract_miniflow import gemm_epilogue

    if n.type not in ("MatMul", "Softmax"):
        return None
    dtype = _DTYPES.get(n.out_specs[0][0].name)
    if dtype is None:
        return None
    if n.type == "Softmax" and _rank(n.inputs[0]) == 2:
        return [n], Node(f"{n.name}/tuned", "_TunedSoftmax", list(n.inputs),
                         list(n.control_inputs), {"kind": "softmax", "dtype": dtype},
                         n.out_specs, n.device, n.op, n.created_at, n.est_seconds)
    if n.type != "MatMul" or not {_rank(r) for r in n.inputs} <= {2, 3}:
        return None
    # an epilogue only for a product of two matrices, as extraction decides: rank 2
    # times rank 3 is a batched product, whose kernel takes no bias nor activation
    plain = all(_rank(r) == 2 for r in n.inputs) and \
        not (n.attrs["transpose_a"] or n.attrs["transpose_b"])
    epi, fused = gemm_epilogue(n, pg_consumers, fetched) if plain else (None, None)
    inputs, top = list(n.inputs), n
    if fused is not None:
        inputs += [r for r in fused.inputs if r[0] is not n]  # the bias
        top = fused
    attrs = {"kind": "matmul", "dtype": dtype, "transpose_a": n.attrs["transpose_a"],
             "transpose_b": n.attrs["transpose_b"], "bias": fused is not None and epi.bias,
             "act": epi.act if fused is not None else "none"}
    return ([n] if top is n else [n, top]), Node(
        f"{top.name}/tuned", "_TunedGemm", inputs,
        list({id(c): c for c in n.control_inputs + top.control_inputs}.values()), attrs,
        top.out_specs, n.device, top.op, top.created_at, top.est_seconds)


def use_tuned_kernels(pg: PlanGraph, torch_devices: set[str]) -> int:
    """Rewrite MatMul [+ fused bias/ReLU] and Softmax on ``torch_devices`` into tuned
    nodes; returns how many."""
    consumers = pg.consumers()
    fetched = {id(n) for n, _ in pg.fetches}
    groups = [g for n in pg.nodes if n.device in torch_devices
              if (g := _tuned_node(n, consumers, fetched)) is not None]
    pg.collapse(groups)
    return len(groups)
