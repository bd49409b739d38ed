"""Random annotation never exceeds the declared limits; the space is what it says."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from systems.miniansor.annotation import (
    H100_LIMITS,
    HardwareLimits,
    check,
    config_key,
    enumerate_space,
    parse_config_key,
    sample_annotation,
)
from systems.miniansor.kernels_gemm import splitk_slice
from systems.miniansor.sketch import generate_sketches, run_program
from systems.miniansor.workloads import Task, check_output, gemm, layernorm, next_pow2, softmax

LIMITS = H100_LIMITS


def _independent_limit_check(task: Task, sketch, ann: dict, limits: HardwareLimits):
    """The limits restated from the docstring, without calling annotation.check."""
    cfg = sketch.full_config(ann)
    w = cfg["num_warps"]
    assert 32 * w <= limits.max_threads_per_block
    if task.is_matmul:
        bm, bn, bk, s = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["num_stages"]
        m, n, k = task.mnk
        assert (bm + bn) * bk * max(1, s) * task.elem_bytes <= limits.smem_per_block
        assert bm * bn / (32 * w) <= limits.max_acc_regs_per_thread
        assert bm * bn >= 256 * w
        assert bm <= max(16, next_pow2(m)) and bn <= max(16, next_pow2(n))
        assert bk <= max(16, next_pow2(k))
        split = cfg.get("SPLIT_K", 1)
        k_blocks = -(-k // bk)
        per_split = -(-k_blocks // split) * bk  # whole K blocks per split
        assert (split - 1) * per_split < k  # the last split's slice starts inside K
        assert cfg.get("GROUP_M", 1) <= -(-m // bm)  # no group beyond the tile rows
    else:
        rows, cols = task.rows_cols
        elems = cfg.get("ROWS", 1) * cfg.get("BLOCK_N", next_pow2(cols))
        assert elems / (32 * w) <= limits.max_row_elems_per_thread
        # no idle lanes, except one warp holding a whole problem smaller than a warp
        assert elems >= 32 * w or (w == 1 and elems >= next_pow2(rows) * next_pow2(cols))
        assert cfg.get("ROWS", 1) <= next_pow2(rows)


tasks = st.one_of(
    st.builds(lambda m, n, k, dt: gemm(m, n, k, dt), st.integers(1, 9000),
              st.integers(1, 9000), st.integers(1, 20000), st.sampled_from(["fp16", "fp32"])),
    st.builds(lambda r, c: softmax(r, c), st.integers(1, 5000), st.integers(1, 40000)),
    st.builds(lambda r, c: layernorm(r, c), st.integers(1, 5000), st.integers(1, 20000)))


@settings(max_examples=60, deadline=None)
@given(task=tasks, seed=st.integers(0, 2**16), smem=st.sampled_from([48 * 1024, 227 * 1024]))
def test_sampled_annotations_respect_every_declared_limit(task, seed, smem):
    limits = HardwareLimits(smem, 132)
    rng = np.random.default_rng(seed)
    for sk in generate_sketches(task):
        ann = sample_annotation(task, sk, rng, limits)
        if ann is not None:
            assert check(task, sk, ann, limits) == []
            _independent_limit_check(task, sk, ann, limits)


def test_exhaustive_space_is_exactly_the_valid_grid():
    task = gemm(200, 100, 300, "fp16")
    for sk in generate_sketches(task):
        space = enumerate_space(task, sk)
        assert space and len({config_key(sk, a) for a in space}) == len(space)
        for a in space:
            _independent_limit_check(task, sk, a, LIMITS)
        rng = np.random.default_rng(0)
        keys = {config_key(sk, a) for a in space}
        for _ in range(20):
            assert config_key(sk, sample_annotation(task, sk, rng)) in keys


def test_check_names_each_broken_limit():
    task = gemm(4096, 4096, 4096, "fp32")
    sk = generate_sketches(task)[0]
    big = {"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 128, "num_warps": 2, "num_stages": 5}
    why = " ".join(check(task, sk, big))
    assert "shared memory" in why and "accumulator registers" in why
    assert "tile too small" in " ".join(check(task, sk, {**big, "BLOCK_M": 16,
                                                          "BLOCK_N": 16, "BLOCK_K": 16,
                                                          "num_warps": 16, "num_stages": 1}))
    assert "not in" in " ".join(check(task, sk, {**big, "BLOCK_M": 48}))
    assert "wants" in check(task, sk, {"BLOCK_M": 64})[0]


def test_blocks_are_clamped_to_the_problem():
    task = gemm(16, 4096, 14336)
    sk = generate_sketches(task)[0]
    assert {a["BLOCK_M"] for a in enumerate_space(task, sk)} == {16}


@pytest.mark.parametrize("key", ["tiled.grouped[BLOCK_K=32,BLOCK_M=64,GROUP_M=8]",
                                 "row.one[num_warps=4]"])
def test_config_keys_round_trip(key):
    name, ann = parse_config_key(key)
    assert f"{name}[{','.join(f'{k}={ann[k]}' for k in sorted(ann))}]" == key


def _k_slices(k: int, bk: int, split: int) -> list[tuple[int, int]]:
    """The K range each split-K program reads, from the kernel's own slicing."""
    per = splitk_slice(k, bk, split)
    return [(s * per, min((s + 1) * per, k)) for s in range(split)]


def test_no_split_k_annotation_leaves_a_slice_of_k_empty():
    task = gemm(64, 64, 640, "fp16")
    sk = next(s for s in generate_sketches(task) if s.name == "tiled.splitk")
    space = enumerate_space(task, sk)
    assert space
    for a in space:
        assert all(lo < hi for lo, hi in _k_slices(640, a["BLOCK_K"], a["SPLIT_K"])), a
    bad = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 2,
           "SPLIT_K": 4}  # slices (0,256) (256,512) (512,640) (768,640)
    assert "empty slices" in " ".join(check(task, sk, bad))
    assert check(task, sk, {**bad, "SPLIT_K": 2}) == []
    # every split that leaves no slice empty is kept
    grid = {(a["BLOCK_K"], a["SPLIT_K"]) for a in space}
    assert grid == {(bk, s) for bk in (16, 32, 64, 128) for s in (2, 4, 8, 16)
                    if all(lo < hi for lo, hi in _k_slices(640, bk, s))}


def test_no_split_k_workspace_outgrows_32_bit_offsets():
    """The split-K workspace holds SPLIT_K slices of M x N, indexed with 32-bit offsets
    like every operand; Task's guard counted only A, B and C, so gemm(12000, 12000,
    48000) took SPLIT_K=16, whose slice 15 starts at 15*M*N > 2**31 and wrapped
    negative (a segfault under the interpreter)."""
    task = gemm(12000, 12000, 48000, "fp16")
    sk = next(s for s in generate_sketches(task) if s.name == "tiled.splitk")
    splits = {a["SPLIT_K"] for a in enumerate_space(task, sk)}
    assert splits == {2, 4, 8}  # 16 * 12000**2 >= 2**31 > 14 * 12000**2
    ann = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}
    assert "SPLIT_K=16 not in (2, 4, 8)" in " ".join(check(task, sk, {**ann, "SPLIT_K": 16}))
    assert check(task, sk, {**ann, "SPLIT_K": 8}) == []


def test_no_group_is_larger_than_the_tile_rows():
    task = gemm(48, 64, 64, "fp16")  # 3 tile rows of 16, 2 of 32, 1 of 64
    sk = next(s for s in generate_sketches(task) if s.name == "tiled.grouped")
    pairs = {(a["BLOCK_M"], a["GROUP_M"]) for a in enumerate_space(task, sk)}
    assert pairs == {(16, 2), (32, 2)}


def test_a_row_problem_smaller_than_a_warp_has_its_one_warp_program():
    """A softmax over 10 classes at batch 1 had no valid config (16 elements cannot
    occupy a warp), so a whole model with such a head could not be tuned. One warp
    holding the whole problem is now valid, and nothing is added where the problem
    fills a warp."""
    for task in (softmax(1, 10, "fp32"), layernorm(4, 1, "fp32"), softmax(7, 1, "fp32")):
        sk, space = next((sk, sp) for sk in generate_sketches(task)
                         if (sp := enumerate_space(task, sk)))  # StopIteration: none
        assert all(a["num_warps"] == 1 for a in space), task.key
        inputs = task.make_inputs(seed=0)
        assert check_output(task, run_program(task, sk, space[0], inputs),
                            task.reference(inputs)) is None
    task = softmax(2, 16, "fp32")  # 32 elements fill a warp: one row still may not
    assert "cannot occupy" in " ".join(check(task, generate_sketches(task)[0],
                                             {"num_warps": 1}))


@pytest.mark.parametrize("k", [640, 768])
def test_a_split_whose_last_slice_starts_exactly_at_k_is_refused(k):
    """k = 768, BLOCK_K = 128, SPLIT_K = 4: slices of 256 start at 0, 256, 512, 768 -- the
    last one is empty (starts *at* K). Oracle: the slices, counted by brute force."""
    task = gemm(64, 64, k, "fp16")
    sk = next(s for s in generate_sketches(task) if s.name == "tiled.splitk")
    for a in enumerate_space(task, sk):
        per = splitk_slice(k, a["BLOCK_K"], a["SPLIT_K"])
        assert all(s * per < k for s in range(a["SPLIT_K"])), a
    ann = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 2,
           "SPLIT_K": 4}
    empty = (ann["SPLIT_K"] - 1) * splitk_slice(k, 128, 4) >= k
    assert ("empty slices" in " ".join(check(task, sk, ann))) == empty
    assert empty  # both k: the last slice starts at or past K
