"""Tasks: identity, cost, inputs and the torch oracle."""

import pytest
import torch

from common import cost
from systems.miniansor.workloads import (
    Epilogue,
    Task,
    bmm,
    check_output,
    gemm,
    layernorm,
    merge_tasks,
    parse_workload,
    softmax,
)


def test_keys_round_trip():
    for t in [gemm(4096, 4096, 4096), gemm(16, 4096, 14336, "bf16", bias=True, act="gelu",
                                           residual=True),
              bmm(32, 2048, 2048, 128), softmax(8, 100, "fp32"), layernorm(3, 7)]:
        assert Task.from_key(t.key) == t


def test_bad_tasks_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs 3 positive sizes"):
        Task("gemm", (1, 2))
    with pytest.raises(ValueError, match="dtype must be one of"):
        gemm(1, 2, 3, "fp8")
    with pytest.raises(ValueError, match="only gemm tasks take an epilogue"):
        Task("softmax", (2, 2), "fp16", Epilogue(bias=True))
    with pytest.raises(ValueError, match="bad task key"):
        Task.from_key("gemm:1x2")
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_workload("gemm", "4096,x", "fp16")


def test_cost_uses_common_cost():
    t = gemm(128, 256, 512, "fp16", bias=True)
    c = cost.matmul_cost(128, 256, 512, "fp16")
    assert t.cost().flops == c.flops + 128 * 256  # one add per output for the bias
    assert t.cost().bytes == c.bytes + 256 * 2
    assert bmm(4, 8, 8, 8).cost().flops == 4 * 2 * 8 * 8 * 8
    assert softmax(10, 20, "fp32").cost().bytes == cost.softmax_cost(10, 20, "fp32").bytes


def test_every_epilogue_and_row_task_costs_what_a_hand_count_says():
    """FLOPs and minimum bytes, counted by hand: 2MNK for the product, then per output
    one add for a bias, one for a residual, 1 for ReLU, 8 for GELU (tanh form); the
    bias (N) and residual (M x N) are read once. A row task reads x (and layernorm's
    two N-vectors) and writes y once."""
    m, n, k = 64, 96, 32
    for dtype, b in (("fp16", 2), ("fp32", 4)):
        for bias, act, res in [(False, "gelu", False), (False, "none", True),
                               (True, "gelu", True), (False, "relu", False)]:
            c = gemm(m, n, k, dtype, bias=bias, act=act, residual=res).cost()
            per_out = int(bias) + int(res) + {"none": 0, "relu": 1, "gelu": 8}[act]
            assert c.flops == 2 * m * n * k + m * n * per_out, (bias, act, res)
            assert c.bytes == b * (m * k + k * n + m * n + n * bias + m * n * res)
        ln, sm = layernorm(m, n, dtype).cost(), softmax(m, n, dtype).cost()
        assert ln.bytes == b * (m * n + 2 * n + m * n) and ln.flops == 8 * m * n
        assert sm.bytes == b * 2 * m * n and sm.flops == 5 * m * n


def test_reference_is_the_fused_epilogue_in_fp32():
    t = gemm(5, 6, 7, "fp32", bias=True, act="relu", residual=True)
    x = t.make_inputs(seed=3)
    want = torch.relu(x["a"] @ x["b"] + x["bias"]) + x["residual"]
    assert torch.allclose(t.reference(x), want, atol=1e-5)
    g = gemm(5, 6, 7, "fp32", act="gelu")
    xg = g.make_inputs()
    assert torch.allclose(g.reference(xg), torch.nn.functional.gelu(xg["a"] @ xg["b"]))


def test_inputs_are_seeded():
    t = layernorm(4, 8)
    a, b = t.make_inputs(seed=1), t.make_inputs(seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["x"], t.make_inputs(seed=2)["x"])


def test_check_output_catches_one_wrong_element_and_accepts_rounding():
    t = gemm(32, 32, 32, "fp16")
    x = t.make_inputs()
    ref = t.reference(x)
    assert check_output(t, ref.clone(), ref) is None
    noisy = (ref.float() * (1 + 1e-3)).half()
    assert check_output(t, noisy, ref) is None
    bad = ref.clone()
    bad[31, 0] += 1.0
    assert "max abs error" in check_output(t, bad, ref)
    assert "shape" in check_output(t, ref[:-1], ref)


def test_a_task_with_a_zero_size_is_refused():
    for kind, shape in (("gemm", (0, 8, 8)), ("bmm", (2, 8, 0, 8)), ("softmax", (4, 0))):
        with pytest.raises(ValueError, match="positive sizes"):
            Task(kind, shape)


def test_check_output_scales_its_tolerance_by_the_largest_reference_value():
    """tol * max|ref|: one large value makes a small absolute error on a small element
    acceptable (errors of a wrong tile are O(max|ref|)), and a slightly larger one not."""
    ref = torch.zeros(1, 100, dtype=torch.float32)
    ref[0, 0] = 100.0
    tol = 5e-3 * 100.0  # fp32
    ok = ref.clone()
    ok[0, 1] += 0.9 * tol
    bad = ref.clone()
    bad[0, 1] += 1.1 * tol
    task = softmax(1, 100, "fp32")
    assert check_output(task, ok, ref) is None
    assert "tolerance" in check_output(task, bad, ref)


def test_merging_sums_the_weights_of_identical_tasks():
    a, b = gemm(8, 8, 8), gemm(16, 8, 8)
    tasks, weights = merge_tasks([a, b, a], [2, 1, 3])
    assert tasks == [a, b] and weights == [5, 1]


def test_a_task_past_the_kernels_32_bit_offsets_is_refused():
    """Our kernels index in int32 (a strided operand past 2**31 elements segfaults the
    interpreter, and would read the wrong memory on a GPU); such a task used to be tuned
    on a small proxy and "verified". 2**31 - 1 elements is the largest allowed."""
    from systems.miniansor.workloads import Task

    with pytest.raises(ValueError, match="32-bit offsets"):
        Task("gemm", (32768, 128256, 4096))  # an LLM's output head: 4.2e9 outputs
    with pytest.raises(ValueError, match="32-bit offsets"):
        Task("bmm", (2, 1 << 15, 64, 1 << 15))
    with pytest.raises(ValueError, match="32-bit offsets"):
        Task("softmax", (1 << 16, 1 << 15))
    assert Task("gemm", (1, 1, (1 << 31) - 1)).largest_operand == (1 << 31) - 1


def test_a_batch_past_cudas_grid_limit_is_refused():
    """The batch is a grid axis of its own (y, or z under split-K), which CUDA caps at
    65,535: bmm(70000, 16, 16, 16) was accepted, and every config would fail to launch
    on a GPU (the interpreter has no such limit, so the CPU tests never saw it)."""
    from systems.miniansor.workloads import Task

    with pytest.raises(ValueError, match="a batch of 70,000; .* at most 65,535"):
        Task("bmm", (70000, 16, 16, 16))
    assert Task("bmm", (65535, 16, 16, 16)).batch == 65535


@pytest.mark.parametrize("tag", ["res+relu", "relu+bias", "gelu+bias+res", "bias+bias",
                                 "res+res"])
def test_an_epilogue_written_out_of_order_or_twice_is_refused(tag):
    """The order was dropped: "res+relu" (relu of C + res) was tuned as relu(C) + res."""
    from systems.miniansor.workloads import Epilogue, parse_workload

    with pytest.raises(ValueError, match="act\\(C \\+ bias\\) \\+ residual"):
        parse_workload("gemm", "8,8,8", "fp16", tag)
    for ok in ("none", "bias", "relu", "bias+gelu", "relu+res", "bias+relu+res"):
        assert Epilogue.from_tag(ok).tag == ok
