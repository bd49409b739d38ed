"""Features of a (task, sketch, annotation) for the learned cost model (Ansor 5.2).

Ansor extracts, for every innermost statement of a program, ~160 numbers: arithmetic
counts, memory access patterns per buffer (bytes, unique lines, reuse distance),
allocation sizes, and loop/thread structure (``src/auto_scheduler/feature.cc``,
``python/tvm/auto_scheduler/feature.py``), and sums the model's per-statement scores.
A Triton kernel is one block-level program, so we describe it with one vector: what
a performance engineer reads off a config before timing it.

* the problem: log sizes, dtype bytes, kind and epilogue;
* the sketch: which template, grouped or not;
* the annotation: log2 of every knob;
* per-tile arithmetic intensity (FLOPs per byte loaded into shared memory);
* shared-memory bytes and accumulator registers per thread;
* programs, programs per SM, waves and wave quantization (the useful fraction of the
  last wave);
* bytes moved (each tile re-reads its A rows and B columns), padding waste;
* reuse from swizzling (tile rows in a group, columns a row-major wave spans).

These are deliberately *not* the simulator's mechanisms (occupancy, Little's law, L2
footprint per wave): the model must learn how the machine maps features to speed.
To add a feature: append a name to ``FEATURE_NAMES`` and its value in ``features``.
"""

from __future__ import annotations

import math

import numpy as np

from .annotation import H100_LIMITS, HardwareLimits, smem_bytes
from .sketch import Sketch
from .workloads import Task, cdiv, next_pow2

KIND_CODES = ("gemm", "bmm", "softmax", "layernorm")
TEMPLATE_CODES = ("matmul", "matmul+epilogue", "splitk", "rows", "looped")
FEATURE_NAMES = (
    ["log_m", "log_n", "log_k", "log_batch", "dtype_bytes"]
    + [f"kind_{k}" for k in KIND_CODES]
    + ["epi_bias", "epi_act", "epi_residual"]
    + [f"tmpl_{t}" for t in TEMPLATE_CODES]
    + ["log_block_m", "log_block_n", "log_block_k", "log_warps", "stages", "log_group",
       "log_split", "log_rows", "log_chunk"]
    + ["tile_intensity", "log_smem", "acc_regs_per_thread", "elems_per_thread",
       "log_programs", "programs_per_sm", "waves", "wave_efficiency", "log_k_iters",
       "log_bytes_moved", "padding_waste", "group_rows", "rowmajor_wave_cols"]
)


def _lg(x: float) -> float:
    return math.log2(max(x, 1))


def features(task: Task, sketch: Sketch, ann: dict[str, int],
             limits: HardwareLimits = H100_LIMITS) -> np.ndarray:
    """The feature vector of one annotated sketch (order: ``FEATURE_NAMES``)."""
    cfg = sketch.full_config(ann)
    b, sms = task.elem_bytes, limits.sm_count
    warps = cfg["num_warps"]
    e = task.epilogue
    if task.is_matmul:
        m, n, k = task.mnk
    else:
        m, n = task.rows_cols
        k = 1
    head = [_lg(m), _lg(n), _lg(k), _lg(task.batch), b]
    head += [float(task.kind == c) for c in KIND_CODES]
    head += [float(e.bias), {"none": 0.0, "relu": 1.0, "gelu": 2.0}[e.act], float(e.residual)]
    head += [float(sketch.template == t) for t in TEMPLATE_CODES]
    if task.is_matmul:
        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        split, group = cfg.get("SPLIT_K", 1), cfg.get("GROUP_M", 1)
        knobs = [_lg(bm), _lg(bn), _lg(bk), _lg(warps), cfg["num_stages"], _lg(group),
                 _lg(split), 0.0, 0.0]
        grid_m, grid_n = cdiv(m, bm), cdiv(n, bn)
        programs = grid_m * grid_n * task.batch * split
        k_iters = cdiv(cdiv(k, split), bk)
        moved = task.batch * b * (m * n * k * (1 / bm + 1 / bn) + m * n)
        derived = [2 * bm * bn / ((bm + bn) * b), _lg(smem_bytes(task, cfg)),
                   bm * bn / (32 * warps), 0.0]
        pad = grid_m * bm * grid_n * bn / (m * n) - 1
        reuse = [float(min(group, grid_m)), min(grid_n, sms) / sms]
    else:
        rows = cfg.get("ROWS", 1)
        chunk = cfg.get("BLOCK_N", next_pow2(n))
        knobs = [0.0, 0.0, 0.0, _lg(warps), cfg.get("num_stages", 1), 0.0, 0.0, _lg(rows),
                 _lg(chunk)]
        programs = cdiv(m, rows)
        k_iters = cdiv(n, chunk)
        passes = 1 if sketch.template == "rows" else (2 if task.kind == "softmax" else 3)
        moved = m * n * b * (passes + 1)
        derived = [0.0, 0.0, 0.0, rows * chunk / (32 * warps)]
        # lanes masked off over the whole grid, as for GEMM tiles: a program's rows past
        # the last row and its columns past the row's end
        pad = programs * rows * chunk * k_iters / (m * n) - 1 \
            if sketch.template == "rows" else 0.0
        reuse = [0.0, 0.0]
    waves = programs / sms
    wave_eff = programs / (math.ceil(waves) * sms)
    tail = [_lg(programs), waves, math.ceil(waves), wave_eff, _lg(k_iters), _lg(moved), pad]
    row = head + knobs + derived + tail + reuse
    assert len(row) == len(FEATURE_NAMES), (len(row), len(FEATURE_NAMES))
    return np.array(row, dtype=np.float64)


def feature_matrix(task: Task, configs: list[tuple[Sketch, dict[str, int]]],
                   limits: HardwareLimits = H100_LIMITS) -> np.ndarray:
    """Rows of ``features`` for many configs of one task."""
    if not configs:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.stack([features(task, s, a, limits) for s, a in configs])
