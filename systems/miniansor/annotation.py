"""Random annotation: fill a sketch's holes within the hardware's limits (Ansor 4.2).

Ansor samples tile sizes and other knobs uniformly at random and then discards states
that break a hardware rule: ``SketchPolicyNode::SampleInitPopulation`` drops states whose
lowering fails ``VerifyGPUCode`` against ``HardwareParams`` (shared and local memory per
block, threads per block, vector bytes, vthreads; ``feature.cc``), seen as a ``-inf``
score; ``PruneInvalidState`` drops only undefined states. We state our limits
explicitly, so that a test can check that no annotation ever exceeds them:

* shared memory: a pipelined GEMM keeps ``num_stages`` copies of its A and B blocks,
  ``(BLOCK_M + BLOCK_N) * BLOCK_K * num_stages * bytes`` <= the device's per-block limit
  (``common.devices``: 227 KiB on H100);
* accumulator registers: the fp32 accumulator tile is spread over the program's threads,
  ``BLOCK_M * BLOCK_N / (32 * num_warps)`` <= ``max_acc_regs_per_thread`` (Hopper allows
  255 registers a thread; we leave half for operands and addresses);
* warps per tile: each warp needs at least one 16x16 MMA tile, ``BLOCK_M * BLOCK_N >=
  256 * num_warps``; rows-in-registers kernels give each thread 1..64 row elements;
* blocks clamped to the problem: no block dimension larger than the (power-of-two
  rounded) problem dimension, no split that leaves a slice of K empty, no group larger
  than the number of tile rows.

An annotation is a plain ``dict`` of ints; ``config_key`` is its canonical string (the
analogue of ``State.ToStr()``, which Ansor uses to de-duplicate).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from common.devices import H100_SXM, DeviceSpec

from .kernels_gemm import splitk_slice
from .sketch import Sketch
from .workloads import Task, cdiv, next_pow2


@dataclass(frozen=True)
class HardwareLimits:
    """The declared limits annotation must respect (taken from a ``DeviceSpec``)."""

    smem_per_block: int
    sm_count: int
    max_acc_regs_per_thread: int = 128
    max_threads_per_block: int = 1024
    max_row_elems_per_thread: int = 64
    name: str = ""

    @staticmethod
    def from_spec(spec: DeviceSpec = H100_SXM) -> HardwareLimits:
        return HardwareLimits(spec.smem_per_block, spec.sm_count, name=spec.name)


H100_LIMITS = HardwareLimits.from_spec(H100_SXM)


def config_key(sketch: Sketch, ann: dict[str, int]) -> str:
    """Canonical text of an annotated sketch, e.g. ``tiled.grouped[BLOCK_K=32,...]``."""
    return f"{sketch.name}[{','.join(f'{k}={ann[k]}' for k in sorted(ann))}]"


def parse_config_key(key: str) -> tuple[str, dict[str, int]]:
    name, _, rest = key.partition("[")
    if not rest.endswith("]"):
        raise ValueError(f"bad config key {key!r}: want name[K=V,...]")
    body = rest[:-1]
    ann = {k: int(v) for k, v in (kv.split("=") for kv in body.split(",") if kv)}
    return name, ann


def _cap(n: int) -> int:
    """The largest block worth using along a dimension of size n."""
    return max(16, next_pow2(n))


def clamped_domain(task: Task, sketch: Sketch, param: str) -> tuple[int, ...]:
    """The sketch's candidate values for ``param``, clamped to the problem's size
    (possibly none: e.g. no multi-row program fits a one-row problem)."""
    values = sketch.domain(param)
    if task.is_matmul:
        m, n, k = task.mnk
        cap = {"BLOCK_M": _cap(m), "BLOCK_N": _cap(n), "BLOCK_K": _cap(k)}.get(param)
        if param == "SPLIT_K":
            # the fp32 workspace holds batch x SPLIT_K slices of M x N and is indexed with
            # 32-bit offsets, as every operand (Task refuses one of 2**31 elements)
            cap = min(max(2, cdiv(k, 16)), ((1 << 31) - 1) // (task.batch * m * n))
        if param == "GROUP_M":
            cap = max(2, next_pow2(cdiv(m, 16)))
    else:
        rows, cols = task.rows_cols
        cap = {"ROWS": next_pow2(rows),
               "BLOCK_N": max(256, next_pow2(cols) // 2)}.get(param)
    return tuple(v for v in values if cap is None or v <= cap)


def check(task: Task, sketch: Sketch, ann: dict[str, int],
          limits: HardwareLimits = H100_LIMITS) -> list[str]:
    """Every declared limit that ``ann`` breaks, in words (empty when it is valid)."""
    bad = []
    if set(ann) != set(sketch.params):
        return [f"annotation sets {sorted(ann)}, sketch {sketch.name} wants "
                f"{sorted(sketch.params)}"]
    for p, v in ann.items():
        if v not in clamped_domain(task, sketch, p):
            bad.append(f"{p}={v} not in {clamped_domain(task, sketch, p)}")
    if bad:
        return bad
    cfg = sketch.full_config(ann)
    warps = cfg["num_warps"]
    if 32 * warps > limits.max_threads_per_block:
        bad.append(f"{32 * warps} threads > {limits.max_threads_per_block} per block")
    if task.is_matmul:
        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        smem = smem_bytes(task, cfg)
        if smem > limits.smem_per_block:
            bad.append(f"shared memory {smem} B > {limits.smem_per_block} B")
        acc = bm * bn // (32 * warps)
        if acc > limits.max_acc_regs_per_thread:
            bad.append(f"{acc} accumulator registers/thread > "
                       f"{limits.max_acc_regs_per_thread}")
        if bm * bn < 256 * warps:
            bad.append(f"{bm}x{bn} tile too small for {warps} warps")
        m, n, k = task.mnk
        split = cfg.get("SPLIT_K", 1)
        if (split - 1) * splitk_slice(k, bk, split) >= k:  # the last slice starts past K
            bad.append(f"SPLIT_K={split} leaves empty slices of K={k}")
        if cfg.get("GROUP_M", 1) > cdiv(m, bm):
            bad.append(f"GROUP_M={cfg['GROUP_M']} > {cdiv(m, bm)} tile rows")
    else:
        rows, cols = task.rows_cols
        elems = cfg.get("ROWS", 1) * (cfg["BLOCK_N"] if "BLOCK_N" in cfg
                                      else next_pow2(cols))
        per_thread = elems / (32 * warps)
        if per_thread > limits.max_row_elems_per_thread:
            bad.append(f"{per_thread:g} row elements/thread > "
                       f"{limits.max_row_elems_per_thread}")
        # fewer elements than threads leave lanes idle, so the space skips such configs,
        # except where the whole problem is smaller than one warp: one warp holding all
        # of it is then the trivial program, which Ansor's sketches always admit (a
        # softmax over 10 classes at batch 1 must stay tunable)
        whole = next_pow2(rows) * next_pow2(cols)
        if per_thread < 1 and not (warps == 1 and elems >= whole):
            bad.append(f"{elems} elements cannot occupy {warps} warps")
    return bad


def is_valid(task: Task, sketch: Sketch, ann: dict[str, int],
             limits: HardwareLimits = H100_LIMITS) -> bool:
    return not check(task, sketch, ann, limits)


def smem_bytes(task: Task, cfg: dict[str, int]) -> int:
    """Declared shared memory of a GEMM config: the pipeline's A and B buffers."""
    return (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * max(1, cfg["num_stages"]) \
        * task.elem_bytes


def sample_annotation(task: Task, sketch: Sketch, rng: np.random.Generator,
                      limits: HardwareLimits = H100_LIMITS,
                      max_tries: int = 200) -> dict[str, int] | None:
    """One random valid annotation (uniform per hole, invalid draws rejected), or None."""
    domains = {p: clamped_domain(task, sketch, p) for p in sketch.params}
    if not all(domains.values()):
        return None  # some hole has no value that fits this problem
    for _ in range(max_tries):
        ann = {p: int(vals[rng.integers(len(vals))]) for p, vals in domains.items()}
        if is_valid(task, sketch, ann, limits):
            return ann
    return None


def iter_space(task: Task, sketch: Sketch,
               limits: HardwareLimits = H100_LIMITS) -> Iterator[dict[str, int]]:
    """The valid annotations of one sketch, one at a time (in grid order)."""
    params = sketch.params
    grids = [clamped_domain(task, sketch, p) for p in params]
    for values in itertools.product(*grids):
        ann = dict(zip(params, (int(v) for v in values), strict=True))
        if is_valid(task, sketch, ann, limits):
            yield ann


def enumerate_space(task: Task, sketch: Sketch,
                    limits: HardwareLimits = H100_LIMITS) -> list[dict[str, int]]:
    """Every valid annotation of one sketch: the pruned exhaustive space."""
    return list(iter_space(task, sketch, limits))


def has_valid_annotation(task: Task, sketch: Sketch,
                         limits: HardwareLimits = H100_LIMITS) -> bool:
    """Whether the sketch can be annotated at all (stops at the first valid one)."""
    return next(iter_space(task, sketch, limits), None) is not None
