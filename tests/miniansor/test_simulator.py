"""The simulated GPU: physically sane, seeded, and sensitive to what matters."""

import numpy as np
import pytest

from common import cost
from common.devices import H100_SXM
from systems.miniansor.annotation import enumerate_space
from systems.miniansor.measure import DeviceFault
from systems.miniansor.simulator import SimulatedGPU
from systems.miniansor.sketch import generate_sketches, sketch_by_name
from systems.miniansor.workloads import gemm, layernorm, softmax


@pytest.mark.parametrize("task", [gemm(2048, 2048, 2048), gemm(16, 4096, 4096),
                                  gemm(512, 512, 512, "fp32", bias=True, act="gelu"),
                                  softmax(4096, 4096), layernorm(1024, 8192)])
def test_no_config_beats_the_roofline(task):
    sim = SimulatedGPU()
    bound = cost.roofline(task.cost(), H100_SXM,
                          "tf32" if task.dtype == "fp32" else task.dtype).lower_bound_s
    for sk in generate_sketches(task):
        for ann in enumerate_space(task, sk)[::7]:
            try:
                assert sim.true_time(task, sk, ann) >= bound
            except DeviceFault as f:
                assert f.kind == "OUT_OF_RESOURCES"


def test_noise_is_seeded_and_small():
    task = gemm(1024, 1024, 1024)
    sk = generate_sketches(task)[0]
    ann = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
    a, b = SimulatedGPU(seed=1), SimulatedGPU(seed=1)
    assert a.measure(task, sk, ann) == b.measure(task, sk, ann)
    x = a.measure(task, sk, ann, repeats=50)
    assert x != SimulatedGPU(seed=2).measure(task, sk, ann, repeats=50)
    assert abs(np.median(x) / a.true_time(task, sk, ann) - 1) < 0.02


def test_pipeline_stages_hide_latency_for_short_k_steps():
    task = gemm(4096, 4096, 4096)
    sk = sketch_by_name(task, "tiled.rowmajor")
    ann = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 32, "num_warps": 8}  # one CTA per SM
    sim = SimulatedGPU()
    t1, t3 = (sim.true_time(task, sk, {**ann, "num_stages": s}) for s in (1, 3))
    assert t3 < 0.8 * t1


def test_grouped_order_reads_less_dram_when_n_is_wide():
    task = gemm(4096, 14336, 4096)
    sim = SimulatedGPU()
    row = sim._operand_traffic(task, 128, 128, 4096, 1, 1, 1)[0]
    grouped = sim._operand_traffic(task, 128, 128, 4096, 8, 1, 1)[0]
    assert grouped < 0.5 * row


def test_split_k_pays_off_for_a_decode_gemm_with_few_tiles():
    task = gemm(16, 1024, 14336)
    sim = SimulatedGPU()
    plain = sketch_by_name(task, "tiled")
    split = sketch_by_name(task, "tiled.splitk")
    ann = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 2, "num_stages": 3}
    assert sim.true_time(task, split, {**ann, "SPLIT_K": 8}) < 0.6 * sim.true_time(
        task, plain, ann)


def test_output_relayout_beyond_shared_memory_is_out_of_resources():
    task = gemm(4096, 4096, 4096, "fp32")
    sk = sketch_by_name(task, "tiled.rowmajor")
    with pytest.raises(DeviceFault) as e:
        SimulatedGPU().true_time(task, sk, {"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 16,
                                            "num_warps": 16, "num_stages": 2})
    assert e.value.kind == "OUT_OF_RESOURCES"


def test_each_extra_stage_hides_more_latency_until_compute_bound():
    """stages - 1 K steps of look-ahead: with short K steps (BLOCK_K = 16) 3 stages beat
    2 (latency / 2 instead of latency per step), not only 2 beat 1."""
    from systems.miniansor.simulator import SimulatedGPU

    task = gemm(4096, 4096, 4096)
    sk = generate_sketches(task)[0]
    ann = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 16, "num_warps": 4}
    sim = SimulatedGPU(noise=0.0)
    t1, t2, t3 = (sim.true_time(task, sk, {**ann, "num_stages": s}) for s in (1, 2, 3))
    assert t3 < 0.95 * t2 < 0.95 * t1


def test_repeated_measurements_draw_fresh_noise_reproducibly():
    """Measuring the same config again gives new draws (a re-measurement is not a copy),
    and a fresh device with the same seed repeats the whole sequence."""
    from systems.miniansor.simulator import SimulatedGPU

    task = gemm(1024, 1024, 1024)
    sk = generate_sketches(task)[0]
    ann = enumerate_space(task, sk)[0]
    a, b = SimulatedGPU(seed=3), SimulatedGPU(seed=3)
    first, second = a.measure(task, sk, ann), a.measure(task, sk, ann)
    assert len(set(first + second)) == 6
    assert b.measure(task, sk, ann) + b.measure(task, sk, ann) == first + second


def test_a_new_gemm_template_pays_for_the_epilogue_it_fuses():
    """The simulator charged a fused epilogue only to the "matmul" template, so a new
    GEMM template (exercise 1's persistent kernel) got bias + GELU for free."""
    from dataclasses import replace

    plain, gelu = gemm(2048, 4096, 2048), gemm(2048, 4096, 2048, bias=True, act="gelu")
    ann = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
    sim = SimulatedGPU()
    for template in ("matmul", "persistent"):
        sk = replace(generate_sketches(gelu)[0], template=template)
        assert sim.true_time(gelu, sk, ann) > 1.01 * sim.true_time(plain, sk, ann)
