"""Derivation rules: which sketches a task gets, and how they run."""

import itertools

import pytest

from systems.miniansor.annotation import enumerate_space
from systems.miniansor.sketch import (
    generate_sketches,
    resolve_template,
    rule_split_k,
    run_program,
    sketch_by_name,
)
from systems.miniansor.workloads import bmm, gemm, next_pow2, softmax


def names(task):
    return {s.name for s in generate_sketches(task)}


def test_square_gemm_gets_tiling_and_both_program_orders():
    assert names(gemm(4096, 4096, 4096)) == {"tiled.rowmajor", "tiled.grouped"}


def test_long_k_with_few_tiles_adds_split_k():
    assert "tiled.splitk" in names(gemm(16, 4096, 14336))
    assert "tiled.splitk" not in names(gemm(4096, 4096, 4096))
    assert "tiled.splitk" not in names(gemm(64, 64, 256))  # K too short to split


def test_epilogue_doubles_the_sketches_fused_and_separate():
    n = names(gemm(512, 512, 128, bias=True, act="relu"))
    assert n == {"tiled.fused.rowmajor", "tiled.fused.grouped", "tiled.separate.rowmajor",
                 "tiled.separate.grouped"}


def test_a_single_tile_row_has_no_grouped_order():
    assert names(gemm(16, 4096, 128)) == {"tiled"}


def test_steps_record_the_derivation():
    sk = sketch_by_name(gemm(16, 4096, 14336, bias=True), "tiled.splitk")
    assert sk.steps == ("multi-level-tiling", "split-k")
    assert dict(sk.fixed) == {"GROUP_M": 1} and "SPLIT_K" in sk.params


def test_rules_are_conditional():
    assert rule_split_k(softmax(4, 4), generate_sketches(softmax(4, 4))[0], 132) is None
    assert generate_sketches(bmm(2, 64, 64, 64))[0].template == "matmul"


def test_unknown_templates_are_refused_by_name():
    with pytest.raises(KeyError, match="unknown template 'nope'"):
        resolve_template("nope")
    with pytest.raises(KeyError, match="unknown template 'os:system'"):
        resolve_template("os:system")
    assert resolve_template("tests.miniansor.faulty:launch_wrong").__name__ == "launch_wrong"
    with pytest.raises(KeyError, match="has no sketch"):
        sketch_by_name(gemm(8, 8, 8), "tiled.splitk")


def test_run_program_runs_a_template_from_another_module():
    from systems.miniansor.sketch import Sketch

    task = softmax(3, 5, "fp32")
    out = run_program(task, Sketch("t", "tests.miniansor.faulty:launch_wrong"), {},
                      task.make_inputs())
    assert out.shape == (3, 5) and float(out.abs().sum()) == 0.0


def test_every_small_gemm_has_a_search_space():
    """Brute force over tiny shapes: some sketch of each has a valid annotation, and one
    warp is offered only where no tile of the problem could hold two warps' 16x16 tiles."""
    for m, n, k in itertools.product((1, 8, 16, 17, 32, 64), (1, 8, 16, 17, 32), (4, 64)):
        task = gemm(m, n, k)
        spaces = [a for sk in generate_sketches(task) for a in enumerate_space(task, sk)]
        assert spaces, task.key
        one_warp = any(a["num_warps"] == 1 for a in spaces)
        fits_two_warps = max(16, next_pow2(m)) * max(16, next_pow2(n)) >= 2 * 16 * 16
        assert one_warp == (not fits_two_warps), task.key
    for task in (bmm(8, 16, 16, 16), gemm(1, 16, 4096)):
        assert any(enumerate_space(task, sk) for sk in generate_sketches(task)), task.key
    assert all(a["num_warps"] > 1 for sk in generate_sketches(gemm(64, 64, 64))
               for a in enumerate_space(gemm(64, 64, 64), sk))
