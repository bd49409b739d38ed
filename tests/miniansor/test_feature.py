"""Features: one vector per config, named, and moving the way the knobs move."""

import numpy as np

from systems.miniansor.feature import FEATURE_NAMES, feature_matrix, features
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.workloads import bmm, gemm, layernorm, softmax


def f(task, sketch, ann):
    return dict(zip(FEATURE_NAMES, features(task, sketch, ann), strict=True))


def test_one_named_value_per_feature_for_every_kind():
    for task in [gemm(100, 200, 300, bias=True), bmm(3, 64, 48, 32), softmax(10, 5000),
                 layernorm(300, 700)]:
        for sk in generate_sketches(task):
            ann = {p: sk.domain(p)[0] for p in sk.params}
            assert features(task, sk, ann).shape == (len(FEATURE_NAMES),)
    assert feature_matrix(gemm(1, 1, 1), []).shape == (0, len(FEATURE_NAMES))


def _sketch(task, name):
    (sk,) = [s for s in generate_sketches(task) if s.name == name]
    return sk


def test_row_task_features_match_hand_counts():
    """Counted by hand for one annotation of each row template (fp16: 2 bytes), on the
    H100's 132 SMs. Bytes moved: a one-pass row kernel reads the row once and writes it
    once; a looped softmax reads it twice (max and sum, then normalise) and writes it
    once; a looped layernorm reads it three times (mean, variance, normalise)."""
    sm = softmax(10, 5000)
    a = f(sm, _sketch(sm, "row.looped"), {"BLOCK_N": 1024, "num_warps": 4, "num_stages": 2})
    assert a["kind_softmax"] == 1 and a["tmpl_looped"] == 1 and a["dtype_bytes"] == 2
    assert a["log_chunk"] == 10 and a["log_warps"] == 2 and a["stages"] == 2
    assert a["elems_per_thread"] == 1024 / (4 * 32)       # one chunk over 128 threads
    assert np.isclose(a["log_k_iters"], np.log2(5))       # ceil(5000 / 1024) chunks
    assert np.isclose(a["log_programs"], np.log2(10))     # one program per row
    assert a["waves"] == 1 and np.isclose(a["wave_efficiency"], 10 / 132)
    assert np.isclose(a["programs_per_sm"], 10 / 132)
    assert np.isclose(a["log_bytes_moved"], np.log2(10 * 5000 * 2 * (2 + 1)))

    b = f(sm, _sketch(sm, "row.one"), {"num_warps": 8})
    assert b["log_chunk"] == 13                           # the row padded to 8192
    assert b["elems_per_thread"] == 8192 / (8 * 32) and b["log_k_iters"] == 0
    assert np.isclose(b["log_bytes_moved"], np.log2(10 * 5000 * 2 * 2))
    assert np.isclose(b["padding_waste"], 8192 / 5000 - 1)

    ln = layernorm(3001, 1500)
    c = f(ln, _sketch(ln, "row.multi"), {"ROWS": 4, "num_warps": 2})
    assert c["kind_layernorm"] == 1 and c["tmpl_rows"] == 1 and c["log_rows"] == 2
    assert c["elems_per_thread"] == 4 * 2048 / (2 * 32)   # 4 rows of 2048 lanes, 64 threads
    assert np.isclose(c["log_programs"], np.log2(751))    # ceil(3001 / 4)
    assert c["waves"] == 6 and np.isclose(c["wave_efficiency"], 751 / (6 * 132))
    assert np.isclose(c["padding_waste"], 751 * 4 * 2048 / (3001 * 1500) - 1)
    assert np.isclose(c["log_bytes_moved"], np.log2(3001 * 1500 * 2 * 2))
    d = f(ln, _sketch(ln, "row.looped"), {"BLOCK_N": 256, "num_warps": 1, "num_stages": 3})
    assert np.isclose(d["log_bytes_moved"], np.log2(3001 * 1500 * 2 * (3 + 1)))
    assert d["elems_per_thread"] == 256 / 32
    assert np.isclose(d["log_k_iters"], np.log2(6))      # ceil(1500 / 256) chunks
    assert d["waves"] == 23 and np.isclose(d["programs_per_sm"], 3001 / 132)


def test_features_follow_the_knobs():
    task = gemm(4096, 4096, 4096)
    sk = generate_sketches(task)[0]
    base = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    a, b = f(task, sk, base), f(task, sk, {**base, "num_stages": 4})
    assert b["log_smem"] == a["log_smem"] + 1  # twice the pipeline buffers
    c = f(task, sk, {**base, "BLOCK_M": 256})
    assert c["tile_intensity"] > a["tile_intensity"]
    assert c["log_bytes_moved"] < a["log_bytes_moved"]
    assert a["programs_per_sm"] == 32 * 32 / 132
    assert np.isclose(a["wave_efficiency"], 1024 / (8 * 132))
    assert a["acc_regs_per_thread"] == 128


def test_padding_waste_counts_the_masked_lanes_of_the_grid():
    """Brute force: lay the programs' ROWS x BLOCK tiles over the rows and count the
    lanes that hold no element."""
    for rows_n, cols in [(64, 64), (50, 64), (7, 100), (1000, 33)]:
        task = softmax(rows_n, cols)
        for sk in generate_sketches(task):
            if sk.template != "rows":
                continue
            for per in sk.domain("ROWS") if "ROWS" in sk.params else (1,):
                ann = {"num_warps": 1, **({"ROWS": per} if "ROWS" in sk.params else {})}
                block = 1 << (cols - 1).bit_length()
                grid = np.zeros((-(-rows_n // per) * per, block), bool)
                grid[:rows_n, :cols] = True
                want = (~grid).sum() / grid.sum()
                assert np.isclose(f(task, sk, ann)["padding_waste"], want), (task.key, ann)


def test_swizzle_features_count_the_tile_rows_a_group_shares():
    """Grouped (swizzled) program order keeps GROUP_M rows of tiles on the chip at once,
    clamped to the rows the grid has; row-major order shares one row, and a wave of it
    spans min(tile columns, SMs) columns (the L2-reuse features of section 5.2's list)."""
    base = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    task = gemm(4096, 4096, 4096)  # 32 x 32 tiles of 128 x 128
    grouped = _sketch(task, "tiled.grouped")
    row = f(task, _sketch(task, "tiled.rowmajor"), base)
    assert row["group_rows"] == 1 and np.isclose(row["rowmajor_wave_cols"], 32 / 132)
    for g in grouped.domain("GROUP_M"):
        assert f(task, grouped, {**base, "GROUP_M": g})["group_rows"] == min(g, 32)
    short = gemm(512, 4096, 4096)  # 4 rows of tiles: a group cannot share more
    big = max(_sketch(short, "tiled.grouped").domain("GROUP_M"))
    assert big > 4
    assert f(short, _sketch(short, "tiled.grouped"), {**base, "GROUP_M": big})[
        "group_rows"] == 4


def test_split_k_features_count_the_k_steps_of_one_slice():
    """A split-K program walks only its slice: k_iters = ceil(ceil(K / SPLIT_K) / BLOCK_K),
    and the grid has SPLIT_K times the programs (hand count)."""
    from systems.miniansor.feature import FEATURE_NAMES, features

    task = gemm(64, 64, 4096, "fp16")
    sk = next(s for s in generate_sketches(task) if s.name == "tiled.splitk")
    ann = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3,
           "SPLIT_K": 8}
    d = dict(zip(FEATURE_NAMES, features(task, sk, ann), strict=True))
    assert np.isclose(d["log_k_iters"], np.log2(4096 / 8 / 64))  # 8 steps, not 64
    assert np.isclose(d["log_programs"], np.log2(8))


def test_gemm_bytes_moved_counts_the_a_and_the_b_tiles_each_program_reads():
    """Hand count: each of the grid_m x grid_n programs reads a BLOCK_M x K strip of A
    and a K x BLOCK_N strip of B, and C is written once. Leaving out either strip makes a
    tall tile and a wide one of the same area differ on a square GEMM."""
    task = gemm(1024, 2048, 512, "fp16")  # 8 x 32 tiles of 128 x 64
    sk = _sketch(task, "tiled.rowmajor")
    ann = {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    a_reads = 8 * 32 * (128 * 512) * 2
    b_reads = 8 * 32 * (512 * 64) * 2
    c_writes = 1024 * 2048 * 2
    assert np.isclose(f(task, sk, ann)["log_bytes_moved"], np.log2(a_reads + b_reads + c_writes))
    square = gemm(4096, 4096, 4096)
    sq = _sketch(square, "tiled.rowmajor")
    tall, wide = ({**ann, "BLOCK_M": bm, "BLOCK_N": bn} for bm, bn in ((128, 32), (32, 128)))
    assert f(square, sq, tall)["log_bytes_moved"] == f(square, sq, wide)["log_bytes_moved"]
