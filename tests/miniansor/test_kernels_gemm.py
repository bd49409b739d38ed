"""Every GEMM sketch's Triton kernel, under the interpreter, equals torch.

Shapes are ragged (no dimension a multiple of a block) and small, but for one task of
more than a wave of tiles; annotations random but seeded, in fp32 and fp16. bf16 is
checked only on a GPU (tests marked ``gpu``): the interpreter computes it wrongly
without an error.
"""


import pytest
import torch

from common.devices import H100_SXM
from systems.miniansor.kernels_gemm import splitk_slice
from systems.miniansor.sketch import RULES, generate_sketches, run_program
from systems.miniansor.workloads import bmm, cdiv, check_output, gemm

from .sketches import check_random_annotations, sketch_cases

TASKS = [
    gemm(37, 45, 600, bias=True, act="gelu", residual=True),  # all epilogues; split-K
    gemm(50, 33, 70),
    gemm(20, 40, 30, act="relu"),
    bmm(3, 19, 21, 40),
    bmm(2, 19, 21, 700),  # split-K with a batch: the workspace is [batch, split, M, N]
]
# More than one wave of the largest tiles (9 x 17 = 153 tiles of 128x128 on 132 SMs), so
# that a rule conditioned on waves (exercise 1's persistent GEMM) has a task to fire on.
# Run with tiles of at least 128x128 only: with 16x16 tiles, 8,000 programs would take the
# interpreter a minute and a half; the small tasks above cover small tiles.
WIDE = gemm(1040, 2064, 24)


@pytest.mark.parametrize("task,sketch", sketch_cases(TASKS))
def test_every_gemm_sketch_matches_torch_with_random_annotations(task, sketch):
    check_random_annotations(task, sketch)


@pytest.mark.parametrize("task,sketch", sketch_cases([WIDE]))
def test_every_sketch_of_a_multi_wave_gemm_matches_torch_with_large_tiles(task, sketch):
    check_random_annotations(task, sketch, min_tile=128 * 128)


def test_the_sketch_set_covers_all_structures():
    names = {sk.name for t in TASKS for sk in generate_sketches(t)}
    assert {"tiled.splitk", "tiled.fused.grouped", "tiled.separate.rowmajor",
            "tiled.rowmajor", "tiled.grouped"} <= names
    assert "tiled.splitk" in {sk.name for sk in generate_sketches(TASKS[-1])}


def test_every_derivation_rule_shapes_the_sketches_of_some_task():
    """The tests above run every sketch of their tasks, so a rule added to ``RULES`` is
    checked against torch only if some task meets its condition: removing each rule
    must change some task's sketches."""
    m, n, _ = WIDE.mnk
    assert cdiv(m, 128) * cdiv(n, 128) > H100_SXM.sm_count
    for rule in RULES:
        others = [r for r in RULES if r is not rule]
        assert any({s.name for s in generate_sketches(t, rules=others)}
                   != {s.name for s in generate_sketches(t)} for t in [*TASKS, WIDE]), \
            f"no task here meets the condition of {rule.__name__}: add one"


def test_ragged_edges_are_masked_not_dropped():
    task = gemm(17, 19, 23, "fp32")
    sk = next(s for s in generate_sketches(task) if s.name == "tiled.rowmajor")
    x = task.make_inputs()
    out = run_program(task, sk, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16,
                                 "num_warps": 2, "num_stages": 2}, x)
    ref = task.reference(x)
    assert check_output(task, out, ref) is None
    assert torch.allclose(out[16:, 16:], ref[16:, 16:], atol=1e-4)  # the ragged corner


def test_strided_operand_as_a_linear_layer_passes_it():
    task = gemm(24, 40, 32, "fp32", bias=True)
    torch.manual_seed(0)  # the same inputs every run: a failure can be replayed
    w = torch.randn(40, 32)  # nn.Linear keeps W as [N, K]; B = W.T is a strided view
    x = {"a": torch.randn(24, 32), "b": w.t(), "bias": torch.randn(40)}
    sk = generate_sketches(task)[0]
    out = run_program(task, sk, {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16,
                                 "num_warps": 2, "num_stages": 1}, x)
    assert torch.allclose(out, x["a"] @ w.t() + x["bias"], atol=1e-4)


def test_split_k_slices_are_whole_blocks_and_cover_k():
    for k, bk, s in [(600, 16, 4), (100, 32, 3), (64, 64, 2)]:
        per = splitk_slice(k, bk, s)
        assert per % bk == 0 and per * s >= k and per * (s - 1) < k + bk


def test_wrong_operand_shapes_are_named():
    task = gemm(8, 8, 8, "fp32")
    with pytest.raises(ValueError, match="do not match"):
        run_program(task, generate_sketches(task)[0],
                    {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 1,
                     "num_stages": 1},
                    {"a": torch.zeros(8, 9), "b": torch.zeros(9, 8)})


@pytest.mark.parametrize("drop,rename", [("bias", None), ("residual", None),
                                         ("residual", "res")])
def test_a_missing_or_misnamed_epilogue_input_is_refused_for_every_sketch(drop, rename):
    """The kernel reads bias and residual when the task has them; without the input it
    read the output buffer being written instead: no error, answers off by up to 1e31."""
    task = gemm(32, 48, 64, "fp32", bias=True, residual=True)
    for sk in generate_sketches(task):
        x = task.make_inputs()
        if rename:
            x[rename] = x[drop]
        del x[drop]
        ann = {p: dom[0] for p, dom in sk.domains}
        with pytest.raises(ValueError, match=rf"needs input\(s\) \['{drop}'\]"):
            run_program(task, sk, ann, x)


def test_epilogue_operands_are_checked_and_a_strided_bias_is_read_right():
    """The kernel reads the bias as ``ptr + column``: a strided view was read with the
    wrong stride, a short one past its end; a residual of the wrong shape likewise."""
    task = gemm(8, 16, 16, "fp32", bias=True, residual=True)
    sk = generate_sketches(task)[0]
    ann = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 1, "num_stages": 1}
    inputs = task.make_inputs(seed=0)
    inputs["bias"] = torch.randn(16, 2)[:, 0]  # shape (16,), stride 2
    assert check_output(task, run_program(task, sk, ann, inputs), task.reference(inputs)) \
        is None
    for name, bad in (("bias", torch.randn(3)), ("residual", torch.randn(2, 16))):
        with pytest.raises(ValueError, match=f"input {name}"):
            run_program(task, sk, ann, {**inputs, name: bad})
