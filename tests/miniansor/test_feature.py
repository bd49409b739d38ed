"""Features: one vector per config, named, and moving the way the knobs move."""

import numpy as np

from systems.miniansor.feature import FEATURE_NAMES, feature_matrix, features
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.workloads import gemm, softmax


def f(task, sketch, ann):
    return dict(zip(FEATURE_NAMES, features(task, sketch, ann), strict=True))


def test_one_named_value_per_feature_for_every_kind():
    for task in [gemm(100, 200, 300, bias=True), softmax(10, 5000)]:
        for sk in generate_sketches(task):
            ann = {p: sk.domain(p)[0] for p in sk.params}
            assert features(task, sk, ann).shape == (len(FEATURE_NAMES),)
    assert feature_matrix(gemm(1, 1, 1), []).shape == (0, len(FEATURE_NAMES))


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
