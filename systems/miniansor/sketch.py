"""Sketch generation by derivation rules (Ansor section 4.1).

A *sketch* is a program with its structure decided and its numbers left open: which
kernel template runs, in what program order, whether the consumer is fused, whether the
reduction is split. Ansor derives sketches by applying rules to a partial state
(``src/auto_scheduler/search_policy/sketch_policy_rules.cc``): each rule has a
condition (``MeetCondition``) and an action (``Apply``) that returns one or more
successor states, so the rules span a small tree whose leaves are the sketches
(``SketchPolicyNode::GenerateSketches`` in ``sketch_policy.cc``).

Our rules, in the order they are tried:

==========================  ========================  ====================================
rule                        condition                 successors
==========================  ========================  ====================================
``rule_multi_level_tiling`` a (batched) GEMM          tiled template: BLOCK_M/N/K, warps,
                                                      stages (Ansor's GPU "SSSRRSRS"
                                                      tiling, section 4.3)
``rule_split_k``            long K vs. few tiles      unchanged, and split-K (rfactor)
``rule_fuse_consumer``      GEMM with an epilogue     fused, and a separate kernel
``rule_grouped_order``      more than one tile row    row-major, and grouped (GROUP_M)
``rule_rows_in_registers``  row fits in registers     one row per program; multi-row if
                                                      rows are short
``rule_looped_row``         long rows                 looped over chunks of the row
==========================  ========================  ====================================

Each sketch names a Triton template (``TEMPLATES``) and declares its holes with their
candidate values (``domains``); ``annotation.py`` fills them. Simplification: a TVM
sketch is a sequence of loop transformations on any compute DAG; ours picks among
hand-written Triton templates, because Triton already owns the loop nest inside a block.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from . import kernels_gemm, kernels_rows
from .workloads import Task, cdiv, next_pow2

POW2_TILES = (16, 32, 64, 128, 256)
TEMPLATES: dict[str, Callable[[Task, dict, dict], torch.Tensor]] = {
    "matmul": kernels_gemm.launch_matmul,
    "matmul+epilogue": kernels_gemm.launch_matmul_separate,
    "splitk": kernels_gemm.launch_splitk,
    "rows": kernels_rows.launch_rows,
    "looped": kernels_rows.launch_looped,
}
# The task kind each built-in template computes: a record that pairs one with the other
# kind is refused on reading (records.py). A template added later is not judged by this.
GEMM_TEMPLATES = ("matmul", "matmul+epilogue", "splitk")
ROW_TEMPLATES = ("rows", "looped")
SPLIT_K_MIN_K = 512  # below this a K loop is too short to be worth splitting
MULTI_ROW_MAX_COLS = 2048
ROWS_IN_REGISTERS_MAX_COLS = 16384
LOOPED_MIN_COLS = 1024


@dataclass(frozen=True)
class Sketch:
    """A kernel structure with open parameters. ``domains`` maps each hole to the values
    annotation may choose; ``fixed`` holds the structural constants the rules set."""

    name: str
    template: str
    domains: tuple[tuple[str, tuple[int, ...]], ...] = ()
    fixed: tuple[tuple[str, int], ...] = ()
    steps: tuple[str, ...] = ()

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.domains)

    def domain(self, param: str) -> tuple[int, ...]:
        return dict(self.domains)[param]

    def full_config(self, ann: dict[str, int]) -> dict[str, int]:
        """The template's complete constexpr/launch config: fixed parts plus annotation."""
        return {**dict(self.fixed), **ann}

    def _with(self, step: str, name: str | None = None, template: str | None = None,
              add: dict[str, tuple[int, ...]] | None = None,
              fix: dict[str, int] | None = None) -> Sketch:
        domains = dict(self.domains)
        domains.update(add or {})
        fixed = dict(self.fixed)
        fixed.update(fix or {})
        return replace(self, name=name if name is not None else self.name,
                       template=template or self.template,
                       domains=tuple(domains.items()), fixed=tuple(sorted(fixed.items())),
                       steps=self.steps + (step,))


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


# ---- rules: (task, state) -> successor states, or None when the condition fails ------

Rule = Callable[[Task, Sketch, int], "list[Sketch] | None"]


def rule_multi_level_tiling(task: Task, s: Sketch, sm_count: int) -> list[Sketch] | None:
    """Ansor's multi-level tiling of the spatial (M, N) and reduction (K) loops: blocks
    of the grid, a K step per iteration, warps within a block, a software pipeline."""
    if not task.is_matmul:
        return None
    return [s._with("multi-level-tiling", "tiled", "matmul", add={
        "BLOCK_M": POW2_TILES, "BLOCK_N": POW2_TILES, "BLOCK_K": (16, 32, 64, 128),
        "num_warps": _gemm_warps(task), "num_stages": (1, 2, 3, 4, 5)})]


def _gemm_warps(task: Task) -> tuple[int, ...]:
    """Warps per GEMM program. Each warp needs a 16x16 MMA tile of its own, so a problem
    whose largest tile (blocks are clamped to the problem, ``annotation.py``) is under
    two such tiles gets one warp as well; otherwise one warp is never worth trying."""
    m, n, _ = task.mnk
    biggest = min(max(16, next_pow2(m)), POW2_TILES[-1]) * \
        min(max(16, next_pow2(n)), POW2_TILES[-1])
    return (1, 2, 4, 8, 16) if biggest < 2 * 256 else (2, 4, 8, 16)


def rule_split_k(task: Task, s: Sketch, sm_count: int) -> list[Sketch] | None:
    """Split the reduction when K is long and the output too small to fill the machine
    (Ansor's ``RuleAddRfactor``, a CPU rule in TVM, which keeps the unsplit state as well
    through ``kApply``)."""
    if s.template != "matmul":
        return None
    m, n, k = task.mnk
    few_tiles = task.batch * cdiv(m, 64) * cdiv(n, 64) < 2 * sm_count
    if k < SPLIT_K_MIN_K or not (few_tiles or k >= 4 * max(m, n)):
        return None
    return [s, s._with("split-k", _join(s.name, "splitk"), "splitk",
                       add={"SPLIT_K": (2, 4, 8, 16)}, fix={"GROUP_M": 1})]


def rule_fuse_consumer(task: Task, s: Sketch, sm_count: int) -> list[Sketch] | None:
    """Fuse the elementwise consumers into the GEMM's store, or leave them as a second
    kernel (Ansor's multi-level tiling *with fusion* vs. the plain rule; TVM keeps both
    only on CPU, on GPU it always fuses)."""
    if not task.is_matmul or task.epilogue.empty or s.template != "matmul":
        return None
    return [s._with("fuse-consumer", _join(s.name, "fused")),
            s._with("separate-consumer", _join(s.name, "separate"), "matmul+epilogue")]


def rule_grouped_order(task: Task, s: Sketch, sm_count: int) -> list[Sketch] | None:
    """Program order: row-major, or GROUP_M tile rows at a time so that programs running
    together share operands in L2 (Triton tutorial 03). GPU-specific, like Ansor's
    thread-binding rules; the split-K sketch keeps row-major order."""
    if s.template not in ("matmul", "matmul+epilogue") or cdiv(task.mnk[0], 16) < 2:
        return None
    return [s._with("row-major-order", _join(s.name, "rowmajor"), fix={"GROUP_M": 1}),
            s._with("grouped-order", _join(s.name, "grouped"), add={"GROUP_M": (2, 4, 8, 16)})]


def rule_rows_in_registers(task: Task, s: Sketch, sm_count: int) -> list[Sketch] | None:
    """Whole rows in registers: one row per program, or several short rows."""
    if task.is_matmul or s.template:
        return None
    cols = task.rows_cols[1]
    if cols > ROWS_IN_REGISTERS_MAX_COLS:
        return None
    warps = (1, 2, 4, 8, 16)
    out = [s._with("one-row", "row.one", "rows", add={"num_warps": warps}, fix={"ROWS": 1})]
    if cols <= MULTI_ROW_MAX_COLS:
        out.append(s._with("multi-row", "row.multi", "rows",
                           add={"ROWS": (2, 4, 8, 16, 32), "num_warps": warps}))
    return out


def rule_looped_row(task: Task, s: Sketch, sm_count: int) -> list[Sketch] | None:
    """Long rows: walk each row in chunks (kept alongside the in-register sketches)."""
    if task.is_matmul or s.template or task.rows_cols[1] < LOOPED_MIN_COLS:
        return None
    return [s._with("looped-row", "row.looped", "looped", add={
        "BLOCK_N": (256, 512, 1024, 2048, 4096, 8192), "num_warps": (1, 2, 4, 8, 16),
        "num_stages": (1, 2, 3)})]


RULES: list[Rule] = [rule_multi_level_tiling, rule_split_k, rule_fuse_consumer,
                     rule_grouped_order]
ROW_RULES: list[Rule] = [rule_rows_in_registers, rule_looped_row]


def generate_sketches(task: Task, sm_count: int = 132,
                      rules: list[Rule] | None = None) -> list[Sketch]:
    """Apply the derivation rules to the empty state; the leaves are the sketches.

    A rule whose condition fails passes the state on unchanged. For row reductions the
    two rules are alternatives applied to the same empty state (each adds sketches)."""
    if not task.is_matmul:
        out = []
        for rule in rules or ROW_RULES:
            out += rule(task, Sketch("", ""), sm_count) or []
        return out
    states = [Sketch("", "")]
    for rule in rules or RULES:
        nxt = []
        for s in states:
            succ = rule(task, s, sm_count)
            nxt += succ if succ is not None else [s]
        states = nxt
    return [s for s in states if s.template]


TEMPLATE_MODULE_PREFIXES = ("systems.", "tests.")


def resolve_template(name: str) -> Callable[[Task, dict, dict], torch.Tensor]:
    """A launcher by registry name, or ``"package.module:function"`` for a template that
    lives elsewhere (a student's, or a test's); only this repository's packages."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    module, _, fn = name.partition(":")
    if fn and module.startswith(TEMPLATE_MODULE_PREFIXES):
        return getattr(importlib.import_module(module), fn)
    raise KeyError(f"unknown template {name!r}; known: {sorted(TEMPLATES)} or "
                   f"'pkg.module:function' under {TEMPLATE_MODULE_PREFIXES}")


def run_program(task: Task, sketch: Sketch, ann: dict[str, int],
                inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Launch the annotated sketch on ``inputs``; returns the output tensor."""
    return resolve_template(sketch.template)(task, sketch.full_config(ann), inputs)


def sketch_by_name(task: Task, name: str, sm_count: int = 132) -> Sketch:
    for s in generate_sketches(task, sm_count):
        if s.name == name:
            return s
    raise KeyError(f"{task.key} has no sketch {name!r}; its sketches: "
                   f"{[s.name for s in generate_sketches(task, sm_count)]}")
