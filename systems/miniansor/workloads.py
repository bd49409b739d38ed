"""Workloads: the compute definitions a task asks us to generate kernels for.

Ansor's input is a *compute declaration* (a TVM ``te.compute`` DAG, ``ComputeDAG`` in
``python/tvm/auto_scheduler/compute_dag.py``) and a *search task* that pairs it with a
target (``search_task.py``). Ours are the four kernels a transformer spends its time in,
each stated by its shape, its dtype, a torch reference (the oracle every kernel we
generate is checked against) and its cost (FLOPs and minimum bytes, via ``common.cost``):

* ``gemm``   C[M,N] = A[M,K] @ B[K,N], optionally followed by a fusable *epilogue*
  (bias add, ReLU or GELU, residual add), as a linear layer's consumers are;
* ``bmm``    batched GEMM, C[b] = A[b] @ B[b] (attention's QK^T and PV);
* ``softmax`` over the last axis of a [rows, cols] matrix;
* ``layernorm`` over the last axis, with a learned scale and shift.

A task's ``key`` is its identity: two layers with the same key are the same tuning
problem (Ansor de-duplicates tasks by their workload key; ``relay_integration.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from common import cost as ccost

KINDS = ("gemm", "bmm", "softmax", "layernorm")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ACTIVATIONS = ("none", "relu", "gelu")
LN_EPS = 1e-5
MAX_GRID_YZ = 65_535  # CUDA's limit on gridDim.y and gridDim.z


@dataclass(frozen=True)
class Epilogue:
    """Elementwise consumers of a GEMM that a kernel may fuse: ``act(C + bias) + residual``."""

    bias: bool = False
    act: str = "none"
    residual: bool = False

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise ValueError(f"epilogue activation must be one of {ACTIVATIONS}, "
                             f"got {self.act!r}")

    @property
    def empty(self) -> bool:
        return not (self.bias or self.residual or self.act != "none")

    @property
    def tag(self) -> str:
        parts = (["bias"] if self.bias else []) + \
            ([self.act] if self.act != "none" else []) + (["res"] if self.residual else [])
        return "+".join(parts) or "none"

    @staticmethod
    def from_tag(tag: str) -> Epilogue:
        parts = [] if tag == "none" else tag.split("+")
        unknown = [p for p in parts if p not in ("bias", "relu", "gelu", "res")]
        if unknown or len([p for p in parts if p in ("relu", "gelu")]) > 1:
            raise ValueError(f"epilogue {tag!r}: parts are bias, relu or gelu (one), res, "
                             f"joined by '+', or none; got {unknown or parts}")
        act = next((p for p in parts if p in ("relu", "gelu")), "none")
        epi = Epilogue(bias="bias" in parts, act=act, residual="res" in parts)
        if epi.tag != tag:  # "res+relu" would be tuned as relu(C) + res: another function
            raise ValueError(f"epilogue {tag!r}: the fused epilogue is act(C + bias) + "
                             f"residual, so write its parts once each, in that order: "
                             f"{epi.tag!r} is the one these parts make")
        return epi


@dataclass(frozen=True)
class Task:
    """One tuning problem. ``shape`` is (M, N, K) for gemm, (B, M, N, K) for bmm and
    (rows, cols) for softmax and layernorm."""

    kind: str
    shape: tuple[int, ...]
    dtype: str = "fp16"
    epilogue: Epilogue = field(default_factory=Epilogue)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        want = {"gemm": 3, "bmm": 4, "softmax": 2, "layernorm": 2}[self.kind]
        if len(self.shape) != want or any(int(s) < 1 for s in self.shape):
            raise ValueError(f"{self.kind} needs {want} positive sizes, got {self.shape}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.epilogue.empty and self.kind != "gemm":
            raise ValueError(f"only gemm tasks take an epilogue, not {self.kind}")
        if self.kind == "bmm" and self.shape[0] > MAX_GRID_YZ:
            # the batch is a grid axis of its own (y, or z under split-K), which CUDA caps
            # at 65,535 blocks; Triton passes the grid to the launch as it is
            raise ValueError(f"bmm {'x'.join(map(str, self.shape))}: a batch of "
                             f"{self.shape[0]:,}; miniansor's kernels launch one grid row "
                             f"per batch entry, and CUDA allows at most {MAX_GRID_YZ:,}")
        if self.largest_operand >= 1 << 31:
            # our kernels compute element offsets in int32 (Triton's default), which wrap
            # past 2**31; Inductor switches to int64 indexing there, we refuse instead
            raise ValueError(f"{self.kind} {'x'.join(map(str, self.shape))}: a tensor of "
                             f"{self.largest_operand:,} elements; miniansor's kernels index "
                             f"with 32-bit offsets, so each must hold fewer than 2**31")

    # ---- identity -------------------------------------------------------------------
    @property
    def key(self) -> str:
        """e.g. ``gemm:4096x4096x4096:fp16:bias+relu`` (the workload key of the records)."""
        return f"{self.kind}:{'x'.join(map(str, self.shape))}:{self.dtype}:{self.epilogue.tag}"

    @staticmethod
    def from_key(key: str) -> Task:
        try:
            kind, shape, dtype, epi = key.split(":")
            return Task(kind, tuple(int(s) for s in shape.split("x")), dtype,
                        Epilogue.from_tag(epi))
        except ValueError as e:
            raise ValueError(f"bad task key {key!r} (want kind:AxBxC:dtype:epilogue): {e}") \
                from None

    def with_shape(self, shape: tuple[int, ...]) -> Task:
        return replace(self, shape=tuple(shape))

    def with_dtype(self, dtype: str) -> Task:
        return replace(self, dtype=dtype)

    # ---- named sizes ----------------------------------------------------------------
    @property
    def largest_operand(self) -> int:
        """Elements of the task's largest input or output tensor."""
        if self.kind in ("softmax", "layernorm"):
            return self.shape[0] * self.shape[1]
        b = self.shape[0] if self.kind == "bmm" else 1
        m, n, k = self.shape[-3:]
        return b * max(m * k, k * n, m * n)

    @property
    def batch(self) -> int:
        return self.shape[0] if self.kind == "bmm" else 1

    @property
    def mnk(self) -> tuple[int, int, int]:
        """(M, N, K) of a (batched) GEMM."""
        if self.kind == "gemm":
            return self.shape
        if self.kind == "bmm":
            return self.shape[1:]
        raise ValueError(f"{self.kind} task has no (M, N, K)")

    @property
    def rows_cols(self) -> tuple[int, int]:
        if self.kind not in ("softmax", "layernorm"):
            raise ValueError(f"{self.kind} task has no (rows, cols)")
        return self.shape

    @property
    def is_matmul(self) -> bool:
        return self.kind in ("gemm", "bmm")

    @property
    def elem_bytes(self) -> int:
        return ccost.DTYPE_BYTES[self.dtype]

    # ---- cost -----------------------------------------------------------------------
    def cost(self) -> ccost.OpCost:
        """FLOPs and the minimum bytes any kernel must move (each tensor once)."""
        b = self.elem_bytes
        if self.is_matmul:
            m, n, k = self.mnk
            c = ccost.matmul_cost(m, n, k, self.dtype, batch=self.batch)
            e = self.epilogue
            extra_read = (n if e.bias else 0) * b + (m * n if e.residual else 0) * b
            extra_flops = m * n * ((1 if e.bias else 0) + (1 if e.residual else 0)
                                   + {"none": 0, "relu": 1, "gelu": 8}[e.act])
            return ccost.OpCost(c.flops + extra_flops, c.bytes_read + extra_read,
                                c.bytes_written, self.key, self.dtype)
        rows, cols = self.rows_cols
        fn = ccost.softmax_cost if self.kind == "softmax" else ccost.layernorm_cost
        c = fn(rows, cols, self.dtype)
        return ccost.OpCost(c.flops, c.bytes_read, c.bytes_written, self.key, self.dtype)

    @property
    def flops(self) -> float:
        return self.cost().flops

    # ---- inputs and the oracle ------------------------------------------------------
    def make_inputs(self, device: str = "cpu", seed: int = 0,
                    empty: bool = False) -> dict[str, torch.Tensor]:
        """Random inputs, scaled so that outputs stay O(1) in every dtype (``empty``:
        uninitialised tensors of the same shapes, for compiling without running)."""
        g = torch.Generator().manual_seed(seed)
        dt = DTYPES[self.dtype]

        def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
            if empty:
                return torch.empty(*shape, dtype=dt, device=device)
            return (torch.randn(*shape, generator=g) * scale).to(dt).to(device)

        if self.is_matmul:
            m, n, k = self.mnk
            lead = (self.batch,) if self.kind == "bmm" else ()
            out = {"a": rnd(*lead, m, k), "b": rnd(*lead, k, n, scale=1 / math.sqrt(k))}
            if self.epilogue.bias:
                out["bias"] = rnd(n)
            if self.epilogue.residual:
                out["residual"] = rnd(m, n)
            return out
        rows, cols = self.rows_cols
        out = {"x": rnd(rows, cols, scale=2.0)}
        if self.kind == "layernorm":
            out["weight"] = rnd(cols) * 0.5 + 1
            out["bias"] = rnd(cols) * 0.5
        return out

    def reference(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The torch answer, computed in fp32 and cast to the task's dtype."""
        f = {k: v.float() for k, v in inputs.items()}
        if self.is_matmul:
            y = f["a"] @ f["b"]
            e = self.epilogue
            if e.bias:
                y = y + f["bias"]
            if e.act == "relu":
                y = torch.relu(y)
            elif e.act == "gelu":
                y = torch.nn.functional.gelu(y)
            if e.residual:
                y = y + f["residual"]
        elif self.kind == "softmax":
            y = torch.softmax(f["x"], dim=-1)
        else:
            y = torch.nn.functional.layer_norm(f["x"], (self.shape[1],), f["weight"],
                                               f["bias"], LN_EPS)
        return y.to(DTYPES[self.dtype])


def merge_tasks(tasks: list[Task], weights: list[float] | None = None
                ) -> tuple[list[Task], list[float]]:
    """Identical tasks (same key) merged into one, first-seen order, weights summed.

    A task key is the identity of a tuning problem: Ansor tunes each distinct subgraph
    once and weights it by how often the model runs it (section 6). Both extractors
    end with this, and ``tune_tasks`` applies it to whatever list it is given."""
    weights = [1] * len(tasks) if weights is None else list(weights)
    if len(weights) != len(tasks):
        raise ValueError(f"{len(tasks)} tasks but {len(weights)} weights")
    merged: dict[str, list] = {}
    for t, w in zip(tasks, weights, strict=True):
        if t.key in merged:
            merged[t.key][1] += w
        else:
            merged[t.key] = [t, w]
    return [t for t, _ in merged.values()], [w for _, w in merged.values()]


def cdiv(a: int, b: int) -> int:
    """Ceiling division (host-side; ``triton.cdiv`` is a jit function, slow to call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


TOLERANCE = {"fp32": 5e-3, "fp16": 1e-2, "bf16": 3e-2}  # fp32 dots run as tf32 on a GPU


def check_output(task: Task, out: torch.Tensor, ref: torch.Tensor) -> str | None:
    """None if ``out`` matches the reference, else why not. Each element must be within
    ``tol * max|ref|`` (errors of a wrong tile or a missed mask are O(max|ref|))."""
    if tuple(out.shape) != tuple(ref.shape):
        return f"output shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    o, r = out.float(), ref.float()
    if not torch.isfinite(o).all():
        return "output has non-finite values"
    scale = float(r.abs().max()) or 1.0
    err = float((o - r).abs().max())
    tol = TOLERANCE[task.dtype] * scale
    return None if err <= tol else f"max abs error {err:.3g} > tolerance {tol:.3g}"


def gemm(m: int, n: int, k: int, dtype: str = "fp16", *, bias: bool = False,
         act: str = "none", residual: bool = False) -> Task:
    return Task("gemm", (m, n, k), dtype, Epilogue(bias, act, residual))


def bmm(b: int, m: int, n: int, k: int, dtype: str = "fp16") -> Task:
    return Task("bmm", (b, m, n, k), dtype)


def softmax(rows: int, cols: int, dtype: str = "fp16") -> Task:
    return Task("softmax", (rows, cols), dtype)


def layernorm(rows: int, cols: int, dtype: str = "fp16") -> Task:
    return Task("layernorm", (rows, cols), dtype)


def parse_workload(workload: str, shape: str, dtype: str, epilogue: str = "none") -> Task:
    """The CLI's ``--workload gemm --shape 4096,4096,4096 --dtype fp16`` as a Task."""
    try:
        dims = tuple(int(s) for s in shape.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--shape wants comma-separated integers, got {shape!r}") from None
    return Task(workload, dims, dtype, Epilogue.from_tag(epilogue))
