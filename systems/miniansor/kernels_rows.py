"""Triton kernel templates for row reductions: softmax and layernorm over the last axis.

Two structures per op, the choice Ansor's GPU rules make for reductions
(``RuleCrossThreadReduction`` and friends in ``sketch_policy_rules.cc``: how a reduction
is spread over threads):

* *rows-in-registers*: one program loads ROWS whole rows as a [ROWS, BLOCK_N] block
  (BLOCK_N = the row length rounded up to a power of two), reduces across the threads
  of the program, and writes them back. ROWS = 1 is Triton's fused-softmax tutorial
  (``python/tutorials/02-fused-softmax.py``); ROWS > 1 packs several short rows per
  program so that each program has enough bytes in flight.
* *looped*: for rows too long to hold in registers, a program walks its row in chunks
  of BLOCK_N, several passes over the row (online softmax: max and sum in one pass,
  Milakov & Gimelshein 2018; layernorm: mean, variance, normalise, as Triton's
  ``python/tutorials/05-layer-norm.py`` does).

Inputs are read once per pass and written once; all arithmetic is fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernels_gemm import launch, vector_input
from .workloads import DTYPES, LN_EPS, Task, cdiv, next_pow2


@triton.jit
def softmax_rows_kernel(x_ptr, y_ptr, R, C, stride_x, stride_y, ROWS: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    safe = tl.minimum(rows, R - 1)  # rows past the end re-read the last row; never stored
    cols = tl.arange(0, BLOCK_N)
    cmask = cols[None, :] < C
    x = tl.load(x_ptr + safe[:, None] * stride_x + cols[None, :], mask=cmask,
                other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=1)[:, None])
    y = e / tl.sum(e, axis=1)[:, None]
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(rows[:, None] < R) & cmask)


@triton.jit
def softmax_looped_kernel(x_ptr, y_ptr, R, C, stride_x, stride_y, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    m = tl.full((BLOCK_N,), -float("inf"), tl.float32)  # per-lane running max and sum
    s = tl.zeros((BLOCK_N,), tl.float32)
    for c0 in range(0, C, BLOCK_N):
        x = tl.load(x_ptr + row * stride_x + c0 + cols, mask=c0 + cols < C,
                    other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # lanes that saw no data
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
    row_max = tl.max(m, axis=0)
    row_sum = tl.sum(s * tl.exp(m - row_max), axis=0)
    for c0 in range(0, C, BLOCK_N):
        mask = c0 + cols < C
        x = tl.load(x_ptr + row * stride_x + c0 + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.exp(x - row_max) / row_sum
        tl.store(y_ptr + row * stride_y + c0 + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def layernorm_rows_kernel(x_ptr, y_ptr, w_ptr, b_ptr, R, C, stride_x, stride_y, eps,
                          ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    safe = tl.minimum(rows, R - 1)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols[None, :] < C
    x = tl.load(x_ptr + safe[:, None] * stride_x + cols[None, :], mask=cmask,
                other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    d = tl.where(cmask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
    w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(rows[:, None] < R) & cmask)


@triton.jit
def layernorm_looped_kernel(x_ptr, y_ptr, w_ptr, b_ptr, R, C, stride_x, stride_y, eps,
                            BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for c0 in range(0, C, BLOCK_N):
        acc += tl.load(x_ptr + row * stride_x + c0 + cols, mask=c0 + cols < C,
                       other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / C
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for c0 in range(0, C, BLOCK_N):
        mask = c0 + cols < C
        x = tl.load(x_ptr + row * stride_x + c0 + cols, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / C + eps)
    for c0 in range(0, C, BLOCK_N):
        mask = c0 + cols < C
        x = tl.load(x_ptr + row * stride_x + c0 + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c0 + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c0 + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y + c0 + cols,
                 ((x - mean) * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)


def _rows_io(task: Task, inputs: dict[str, torch.Tensor]):
    x = inputs["x"]
    if tuple(x.shape) != task.rows_cols:
        raise ValueError(f"{task.key}: input x{tuple(x.shape)} does not match "
                         f"(rows, cols) = {task.rows_cols}")
    if x.stride(1) != 1:
        raise ValueError(f"{task.key}: rows must be contiguous (x.stride(1) == 1)")
    return x, torch.empty(task.rows_cols, device=x.device, dtype=DTYPES[task.dtype])


def _affine(task: Task, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Layernorm's weight and bias, each of length C and contiguous."""
    c = task.rows_cols[1]
    return vector_input(task, inputs, "weight", c), vector_input(task, inputs, "bias", c)


def launch_rows(task: Task, cfg: dict[str, int],
                inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """ROWS whole rows per program (ROWS = 1: one row per program)."""
    x, y = _rows_io(task, inputs)
    r, c = task.rows_cols
    rows, opts = cfg["ROWS"], {"num_warps": cfg["num_warps"], "num_stages": 1}
    grid = (cdiv(r, rows),)
    bn = next_pow2(c)
    if task.kind == "softmax":
        launch(softmax_rows_kernel, grid, x, y, r, c, x.stride(0), y.stride(0), ROWS=rows,
               BLOCK_N=bn, **opts)
    else:
        launch(layernorm_rows_kernel, grid, x, y, *_affine(task, inputs), r, c,
               x.stride(0), y.stride(0), LN_EPS, ROWS=rows, BLOCK_N=bn, **opts)
    return y


def launch_looped(task: Task, cfg: dict[str, int],
                  inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One row per program, walked in chunks of BLOCK_N."""
    x, y = _rows_io(task, inputs)
    r, c = task.rows_cols
    opts = {"num_warps": cfg["num_warps"], "num_stages": cfg.get("num_stages", 1)}
    if task.kind == "softmax":
        launch(softmax_looped_kernel, (r,), x, y, r, c, x.stride(0), y.stride(0),
               BLOCK_N=cfg["BLOCK_N"], **opts)
    else:
        launch(layernorm_looped_kernel, (r,), x, y, *_affine(task, inputs), r, c,
               x.stride(0), y.stride(0), LN_EPS, BLOCK_N=cfg["BLOCK_N"], **opts)
    return y
