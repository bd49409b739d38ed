"""Every GEMM sketch's Triton kernel, under the interpreter, equals torch.

Shapes are small and ragged (no dimension a multiple of a block), annotations random
but seeded, in fp32 and fp16. bf16 is checked only on a GPU (tests marked ``gpu``):
the interpreter computes it wrongly without an error.
"""


import pytest
import torch

from systems.miniansor.kernels_gemm import splitk_slice
from systems.miniansor.sketch import generate_sketches, run_program
from systems.miniansor.workloads import bmm, check_output, gemm

from .sketches import check_random_annotations, sketch_cases

TASKS = [
    gemm(37, 45, 600, bias=True, act="gelu", residual=True),  # all epilogues; split-K
    gemm(50, 33, 70),
    gemm(20, 40, 30, act="relu"),
    bmm(3, 19, 21, 40),
]


@pytest.mark.parametrize("task,sketch", sketch_cases(TASKS))
def test_every_gemm_sketch_matches_torch_with_random_annotations(task, sketch):
    check_random_annotations(task, sketch)


def test_the_sketch_set_covers_all_structures():
    names = {sk.name for t in TASKS for sk in generate_sketches(t)}
    assert {"tiled.splitk", "tiled.fused.grouped", "tiled.separate.rowmajor",
            "tiled.rowmajor", "tiled.grouped"} <= names


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
