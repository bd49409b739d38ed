"""Task extraction from a miniflow graph: the second front end, after miniflow's passes.

Ansor extracts tasks from Relay *after* Relay's fusion pass, so that a task is exactly
what will run as one kernel (``relay_integration.extract_tasks``). miniflow's fusion pass
(``systems/miniflow/passes/fusion.py``) plays that role here: we build the plan graph a
Session would run (prune, fold, CSE, fuse), then read tasks off it:

* ``MatMul`` of rank-2 operands -> a ``gemm`` task; rank-3 -> ``bmm``. If the MatMul's
  only consumer is a fused elementwise node computing ``matmul + bias`` or ``bias +
  matmul`` (a 1-D bias of N values), optionally followed by ``Relu``, that chain
  becomes the gemm's epilogue, the same chain :mod:`systems.miniflow.tuned` later hands
  to the tuned kernel;
* ``Softmax`` over the last axis of a rank-2 tensor -> a ``softmax`` task.

Transposed MatMuls (the gradient graph has many) are tuned as the plain GEMM of the same
(M, N, K): the task says what is computed, not the operands' layout (miniflow hands the
tuned kernel transposed views). A MatMul whose product is also fetched keeps no
epilogue: it must be computed on its own. Unknown dimensions
(the batch of a placeholder) take the value ``batch``. Identical tasks are merged and
counted, as in :func:`.extract.extract_tasks`.
"""

from __future__ import annotations

from .workloads import Epilogue, Task, merge_tasks

_DTYPES = {"float16": "fp16", "float32": "fp32"}


def _concrete(shape, batch: int) -> tuple[int, ...] | None:
    return None if shape is None else tuple(batch if d is None else d for d in shape)


def gemm_epilogue(mm, consumers, fetched: frozenset | set = frozenset(),
                  ) -> tuple[Epilogue, object | None]:
    """The epilogue a MatMul node's fused consumer computes, and that consumer (or None).
    Shared with miniflow's runtime rewrite, so extraction and execution agree. None when
    the product is needed on its own: it is fetched (``fetched``: ids of fetched nodes),
    or the consumer runs on another device."""
    users = consumers.get(mm, [])
    if len(users) != 1 or users[0].type != "_FusedElementwise":
        return Epilogue(), None
    fused = users[0]
    if id(mm) in fetched or fused.device != mm.device:
        return Epilogue(), None
    body = fused.attrs["body"]
    ext = fused.inputs
    n = mm.out_specs[0][1][-1] if mm.out_specs[0][1] else None
    first = body[0]
    if first[0] == "Add" and len(body) in (1, 2):
        (t0, j0), (t1, j1) = first[2]
        if not t0 and not t1 and ext[j1][0] is mm:
            j0, j1 = j1, j0  # bias + x @ w: Add commutes, as Relay's fusion treats it
        if t0 or t1 or ext[j0][0] is not mm:
            return Epilogue(), None
        bias_shape = ext[j1][0].out_specs[ext[j1][1]][1]
        if n is None or bias_shape != (n,):  # (an unknown N: a [None] bias may be (1,),
            return Epilogue(), None          # which broadcasts, and no kernel takes)
        if len(body) == 1:
            return Epilogue(bias=True), fused
        if body[1][0] == "Relu" and body[1][2] == [(True, 0)]:
            return Epilogue(bias=True, act="relu"), fused
    if first[0] == "Relu" and len(body) == 1 and ext[first[2][0][1]][0] is mm:
        return Epilogue(act="relu"), fused
    return Epilogue(), None


def extract_tasks_from_miniflow(fetches, feeds=(), batch: int = 32, dtype: str | None = None
                                ) -> tuple[list[Task], list[int]]:
    """Distinct tasks of the miniflow graph that computes ``fetches`` (first-seen order)
    and how often each occurs. ``feeds``: tensors that will be fed (they cut the graph)."""
    from systems.miniflow import ir
    from systems.miniflow.passes import run_passes

    fetches = list(fetches) if isinstance(fetches, (list, tuple)) else [fetches]
    pg = ir.build([t for t in fetches if hasattr(t, "value_index")],
                  [op for op in fetches if not hasattr(op, "value_index")], list(feeds))
    run_passes(pg)
    consumers = pg.consumers()
    fetched = {id(n) for n, _ in pg.fetches}
    found: list[Task] = []
    for n in pg.nodes:
        if n.type == "MatMul":
            a = _concrete(n.inputs[0][0].out_specs[n.inputs[0][1]][1], batch)
            out = _concrete(n.out_specs[0][1], batch)
            if a is None or out is None or len(out) not in (2, 3):
                continue
            k = a[-2] if n.attrs["transpose_a"] else a[-1]
            b = n.inputs[1][0].out_specs[n.inputs[1][1]][1]
            a_k = n.inputs[0][0].out_specs[n.inputs[0][1]][1]
            if (a_k[-2] if n.attrs["transpose_a"] else a_k[-1]) is None and b is not None:
                # the other operand may know the contraction: batch stands in only for
                # a dimension no input fixes (x: [None, None] times a (6, 5) constant)
                kb = b[-1] if n.attrs["transpose_b"] else b[-2]
                k = k if kb is None else kb
            dt = dtype or _DTYPES.get(n.out_specs[0][0].name)
            if dt is None:
                continue
            if len(out) == 2:
                plain = not (n.attrs["transpose_a"] or n.attrs["transpose_b"])
                epi = gemm_epilogue(n, consumers, fetched)[0] if plain else Epilogue()
                found.append(Task("gemm", (out[0], out[1], k), dt, epi))
            else:
                found.append(Task("bmm", (out[0], out[1], out[2], k), dt))
        elif n.type == "Softmax":
            x = _concrete(n.out_specs[0][1], batch)
            dt = dtype or _DTYPES.get(n.out_specs[0][0].name)
            if x is not None and len(x) == 2 and dt is not None:
                found.append(Task("softmax", x, dt))
    return merge_tasks(found)
