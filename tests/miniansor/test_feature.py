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
