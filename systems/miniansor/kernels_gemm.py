"""Triton kernel templates for (batched) GEMM: the programs the sketches stand for.

Each ``@triton.jit`` function here is a *template*: its ``tl.constexpr`` parameters
(block sizes, group size, split factor, epilogue switches) are the holes that random
annotation fills, exactly as Ansor's sketches leave tile sizes and unroll factors open
(Ansor section 4.1-4.2). Triton specialises a new binary for every distinct set of
constexprs, so each annotated sketch is a distinct compiled program.

The tiled kernel follows Triton's matrix-multiplication tutorial
(``python/tutorials/03-matrix-multiplication.py``): one program per [BLOCK_M, BLOCK_N]
tile of C, a loop over K in steps of BLOCK_K that accumulates ``tl.dot`` in fp32, and the
*grouped* program order (GROUP_M rows of tiles before moving right) that raises L2 reuse.
The tutorial handles ragged M and N by wrapping out-of-range rows and columns back
into the matrix (``% M``, ``% N``) and masking only K and the store; we mask every load
instead, so edge tiles read zeros rather than repeat rows (same result, any M, N, K).

Three structures, one per sketch family:

* ``matmul_kernel``: tiled GEMM; epilogue fused into the store when HAS_* say so;
* ``matmul_splitk_kernel`` + ``splitk_reduce_kernel``: split-K (Ansor's rfactor rule for
  long reductions): SPLIT_K programs each reduce a slice of K into an fp32 workspace,
  then a second kernel sums the slices and applies the epilogue;
* ``epilogue_kernel``: the epilogue as its own elementwise kernel (the "separate
  kernel" alternative to fusing the consumer).
"""

from __future__ import annotations

import contextvars

import torch
import triton
import triton.language as tl

from .workloads import DTYPES, Task, cdiv

ACT_CODES = {"none": 0, "relu": 1, "gelu": 2}
WARMUP_ONLY = contextvars.ContextVar("miniansor_warmup_only", default=False)


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, or, inside the parallel builder
    (``WARMUP_ONLY`` set), only compile it: Triton's ``warmup`` fills the on-disk cache
    that the runner's launch then hits."""
    if WARMUP_ONLY.get():
        kernel.warmup(*args, grid=grid, **kwargs)
    else:
        kernel[grid](*args, **kwargs)
EPILOGUE_BLOCK = 1024  # elements per program of the elementwise kernels (not tuned)


@triton.jit
def _epilogue(acc, bias_ptr, res_ptr, offs_m, offs_n, mask, N, stride_rm, stride_rn,
              HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr):
    """act(acc + bias) + residual, in fp32, on a tile whose rows/cols are offs_m/offs_n."""
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    if ACT == 2:  # exact GELU, as torch.nn.GELU() computes it
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    if HAS_RES:
        acc = acc + tl.load(res_ptr + offs_m * stride_rm + offs_n * stride_rn, mask=mask,
                            other=0.0).to(tl.float32)
    return acc


@triton.jit
def _tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              GROUP_M: tl.constexpr):
    """Program id -> (tile row, tile col). GROUP_M = 1 is row-major order; larger groups
    walk GROUP_M tile rows column by column, so concurrently running programs share
    the same B columns and A rows in L2 (the tutorial's "L2 cache optimizations")."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    if GROUP_M == 1:
        pid_m = pid // num_pid_n
        pid_n = pid % num_pid_n
    else:
        num_pid_in_group = GROUP_M * num_pid_n
        first_pid_m = (pid // num_pid_in_group) * GROUP_M
        group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _accumulate(a_ptr, b_ptr, offs_m, offs_n, k_start, k_end, M, N,
                stride_am, stride_ak, stride_bk, stride_bn,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """sum over k in [k_start, k_end) of A[offs_m, k] * B[k, offs_n], in fp32."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + offs_k
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=(offs_m[:, None] < M) & (ks[None, :] < k_end), other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=(ks[:, None] < k_end) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, res_ptr, M, N, K,
                  stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
                  stride_cb, stride_cm, stride_cn, stride_rm, stride_rn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                  HAS_RES: tl.constexpr):
    """Multi-level tiled GEMM: grid = (tiles of C, batch)."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    batch = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _accumulate(a_ptr + batch * stride_ab, b_ptr + batch * stride_bb, offs_m, offs_n,
                      0, K, M, N, stride_am, stride_ak, stride_bk, stride_bn,
                      BLOCK_M, BLOCK_N, BLOCK_K)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    acc = _epilogue(acc, bias_ptr, res_ptr, offs_m[:, None], offs_n[None, :], mask, N,
                    stride_rm, stride_rn, HAS_BIAS, ACT, HAS_RES)
    c_ptrs = c_ptr + batch * stride_cb + offs_m[:, None] * stride_cm + \
        offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def matmul_splitk_kernel(a_ptr, b_ptr, ws_ptr, M, N, K, K_PER_SPLIT,
                         stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """Split-K partial GEMM: grid = (tiles, SPLIT_K, batch); slice s reduces
    K[s*K_PER_SPLIT, (s+1)*K_PER_SPLIT) into ws[batch, s] (fp32, [M, N])."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, 1)
    split = tl.program_id(1)
    batch = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = split * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    acc = _accumulate(a_ptr + batch * stride_ab, b_ptr + batch * stride_bb, offs_m, offs_n,
                      k_start, k_end, M, N, stride_am, stride_ak, stride_bk, stride_bn,
                      BLOCK_M, BLOCK_N, BLOCK_K)
    ws = ws_ptr + (batch * SPLIT_K + split) * M * N
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(ws + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)


@triton.jit
def splitk_reduce_kernel(ws_ptr, c_ptr, bias_ptr, res_ptr, M, N, stride_cb, stride_cm,
                         stride_cn, stride_rm, stride_rn, SPLIT_K: tl.constexpr,
                         BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                         HAS_RES: tl.constexpr):
    """Sum the SPLIT_K fp32 slices, apply the epilogue, cast: grid = (blocks, batch)."""
    batch = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(ws_ptr + (batch * SPLIT_K + s) * M * N + offs, mask=mask, other=0.0)
    om, on = offs // N, offs % N
    acc = _epilogue(acc, bias_ptr, res_ptr, om, on, mask, N, stride_rm, stride_rn,
                    HAS_BIAS, ACT, HAS_RES)
    tl.store(c_ptr + batch * stride_cb + om * stride_cm + on * stride_cn,
             acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def epilogue_kernel(c_ptr, bias_ptr, res_ptr, M, N, stride_cm, stride_cn, stride_rm,
                    stride_rn, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
                    ACT: tl.constexpr, HAS_RES: tl.constexpr):
    """The unfused consumer: C = act(C + bias) + residual, in place, as its own kernel."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    om, on = offs // N, offs % N
    ptrs = c_ptr + om * stride_cm + on * stride_cn
    acc = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    acc = _epilogue(acc, bias_ptr, res_ptr, om, on, mask, N, stride_rm, stride_rn,
                    HAS_BIAS, ACT, HAS_RES)
    tl.store(ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


# ---- launchers: from (task, full config, inputs) to a launched kernel ------------------

def _operands(task: Task, inputs: dict[str, torch.Tensor]):
    a, b = inputs["a"], inputs["b"]
    if task.kind == "gemm":
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    m, n, k = task.mnk
    if tuple(a.shape[1:]) != (m, k) or tuple(b.shape[1:]) != (k, n):
        raise ValueError(f"{task.key}: inputs a{tuple(inputs['a'].shape)}, "
                         f"b{tuple(inputs['b'].shape)} do not match (M, N, K) = {(m, n, k)}")
    # the kernel reads bias and residual when the *task* has them, so a missing (or
    # misnamed) one would be read from the output buffer being written: refuse it
    needs = [name for name, has in (("bias", task.epilogue.bias),
                                    ("residual", task.epilogue.residual)) if has]
    if missing := [name for name in needs if name not in inputs]:
        raise ValueError(f"{task.key}: needs input(s) {missing} (its epilogue); got "
                         f"{sorted(inputs)}")
    c = torch.empty((a.shape[0], m, n), device=a.device, dtype=DTYPES[task.dtype])
    bias = vector_input(task, inputs, "bias", n) if "bias" in inputs else c
    res = inputs.get("residual", c[0])  # read through its own strides
    if "residual" in inputs and tuple(res.shape) != (m, n):
        raise ValueError(f"{task.key}: input residual{tuple(res.shape)} does not match "
                         f"(M, N) = {(m, n)}")
    return a, b, c, bias, res


def vector_input(task: Task, inputs: dict[str, torch.Tensor], name: str,
                 n: int) -> torch.Tensor:
    """A per-column operand (a bias, a layernorm weight), which the kernels read as
    ``ptr + column``: its length is checked and a strided view is made contiguous, so a
    short or strided tensor cannot be read past its end or with the wrong stride."""
    v = inputs[name]
    if tuple(v.shape) != (n,):
        raise ValueError(f"{task.key}: input {name}{tuple(v.shape)} does not match ({n},)")
    return v.contiguous()


def _epilogue_flags(task: Task, fused: bool) -> dict[str, int]:
    e = task.epilogue
    if not fused:
        return {"HAS_BIAS": 0, "ACT": 0, "HAS_RES": 0}
    return {"HAS_BIAS": int(e.bias), "ACT": ACT_CODES[e.act], "HAS_RES": int(e.residual)}


def _launch_options(cfg: dict[str, int]) -> dict[str, int]:
    return {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


def launch_matmul(task: Task, cfg: dict[str, int], inputs: dict[str, torch.Tensor],
                  fuse_epilogue: bool = True) -> torch.Tensor:
    """Tiled GEMM with the epilogue fused (or, with ``fuse_epilogue=False``, followed by
    :func:`epilogue_kernel` as a second launch)."""
    a, b, c, bias, res = _operands(task, inputs)
    m, n, k = task.mnk
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    grid = (cdiv(m, bm) * cdiv(n, bn), a.shape[0])
    launch(matmul_kernel, grid,
           a, b, c, bias, res, m, n, k, a.stride(0), a.stride(1), a.stride(2),
           b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1), c.stride(2),
           res.stride(0), res.stride(1), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"],
           GROUP_M=cfg.get("GROUP_M", 1), **_epilogue_flags(task, fuse_epilogue),
           **_launch_options(cfg))
    if not fuse_epilogue and not task.epilogue.empty:
        c2 = c[0]
        launch(epilogue_kernel, (cdiv(m * n, EPILOGUE_BLOCK),),
               c2, bias, res, m, n, c2.stride(0), c2.stride(1), res.stride(0), res.stride(1),
               BLOCK=EPILOGUE_BLOCK, **_epilogue_flags(task, True), num_warps=4)
    return c[0] if task.kind == "gemm" else c


def launch_matmul_separate(task: Task, cfg: dict[str, int],
                           inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return launch_matmul(task, cfg, inputs, fuse_epilogue=False)


def splitk_slice(k: int, block_k: int, split_k: int) -> int:
    """K elements per split, a multiple of BLOCK_K so slices never share a block."""
    return cdiv(cdiv(k, block_k), split_k) * block_k


def launch_splitk(task: Task, cfg: dict[str, int],
                  inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Split-K GEMM: partial products into an fp32 workspace, then a reducing kernel."""
    a, b, c, bias, res = _operands(task, inputs)
    m, n, k = task.mnk
    bm, bn, bk, split = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["SPLIT_K"]
    batch = a.shape[0]
    ws = torch.empty((batch, split, m, n), device=a.device, dtype=torch.float32)
    grid = (cdiv(m, bm) * cdiv(n, bn), split, batch)
    launch(matmul_splitk_kernel, grid,
           a, b, ws, m, n, k, splitk_slice(k, bk, split), a.stride(0), a.stride(1),
           a.stride(2), b.stride(0), b.stride(1), b.stride(2), BLOCK_M=bm, BLOCK_N=bn,
           BLOCK_K=bk, SPLIT_K=split, **_launch_options(cfg))
    launch(splitk_reduce_kernel, (cdiv(m * n, EPILOGUE_BLOCK), batch),
           ws, c, bias, res, m, n, c.stride(0), c.stride(1), c.stride(2), res.stride(0),
           res.stride(1), SPLIT_K=split, BLOCK=EPILOGUE_BLOCK,
           **_epilogue_flags(task, True), num_warps=4)
    return c[0] if task.kind == "gemm" else c
