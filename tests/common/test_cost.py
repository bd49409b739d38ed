import math

import pytest

from common import cost
from common.cost import matmul_cost
from common.devices import H100_SXM, H200, DeviceSpec, gpu_spec_for
from systems.miniansor.workloads import bmm

TOY = DeviceSpec("toy", {"fp32": 100e9, "fp16": 400e9}, mem_bandwidth=10e9, source="test",
                 date="2026-01")


def test_ridge_is_peak_over_bandwidth():
    assert TOY.ridge("fp32") == 10.0
    assert TOY.ridge("fp16") == 40.0
    assert H100_SXM.ridge("bf16") == pytest.approx(989.4e12 / 3.35e12)
    assert H200.mem_bandwidth > H100_SXM.mem_bandwidth
    with pytest.raises(KeyError, match="no peak for dtype 'int4'"):
        TOY.peak("int4")


def test_square_matmul_intensity_by_hand():
    # n=1024 fp32: 2n^3 flops, 3 n^2 * 4 bytes -> intensity = 2n/12 = n/6
    op = cost.matmul_cost(1024, 1024, 1024)
    assert op.flops == 2 * 1024**3
    assert op.bytes == 3 * 1024**2 * 4
    assert op.intensity == pytest.approx(1024 / 6)
    fp16 = cost.matmul_cost(1024, 1024, 1024, "fp16")
    assert fp16.intensity == pytest.approx(1024 / 3)


def test_roofline_picks_the_binding_side():
    small = cost.elementwise_cost(1_000_000, n_inputs=2)  # 1 flop per 12 bytes
    r = cost.roofline(small, TOY)
    assert r.bound == "memory"
    assert r.intensity == pytest.approx(1 / 12)
    assert r.lower_bound_s == pytest.approx(12e6 / 10e9)
    assert r.attainable_flops == pytest.approx(10e9 / 12)
    big = cost.matmul_cost(4096, 4096, 4096)
    r = cost.roofline(big, TOY)
    assert r.bound == "compute"
    assert r.lower_bound_s == pytest.approx(2 * 4096**3 / 100e9)
    assert r.attainable_flops == 100e9 and r.ridge == 10.0


def test_efficiency_and_mfu():
    op = cost.matmul_cost(4096, 4096, 4096)
    best = cost.roofline(op, TOY).lower_bound_s
    assert cost.efficiency(op, TOY, 2 * best) == pytest.approx(0.5)
    # 1e12 model flops in 20 s on a 100 GFLOP/s device: 50% MFU; on two devices 25%.
    assert cost.mfu(1e12, 20.0, TOY) == pytest.approx(0.5)
    assert cost.mfu(1e12, 20.0, TOY, n_devices=2) == pytest.approx(0.25)


def test_counters_by_hand():
    sm = cost.softmax_cost(4, 8)
    assert sm.flops == 5 * 32 and sm.bytes_read == sm.bytes_written == 32 * 4
    ln = cost.layernorm_cost(4, 8, "fp16")
    assert ln.bytes_read == 32 * 2 + 2 * 8 * 2 and ln.bytes_written == 64
    red = cost.reduction_cost(1000, 10)
    assert red.flops == 1000 and red.bytes == 1010 * 4
    # 1x3x32x32 input, 16 3x3 filters, padding 1: 32x32 output, 27 MACs per output element
    cv = cost.conv2d_cost(1, 3, 32, 32, 16, 3, 3, padding=1)
    assert cv.flops == 2 * 16 * 32 * 32 * 27
    assert cv.bytes_written == 16 * 32 * 32 * 4
    both = cost.elementwise_cost(10) + cost.elementwise_cost(10)
    assert both.bytes == 2 * cost.elementwise_cost(10).bytes
    assert math.isinf(cost.OpCost(1, 0, 0).intensity)


def test_gpu_names_map_to_datasheets():
    assert gpu_spec_for("NVIDIA H100 80GB HBM3") is H100_SXM
    assert gpu_spec_for("NVIDIA H200") is H200
    assert gpu_spec_for("Tesla T4") is None
    for other in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200 NVL",
                  "NVIDIA GH200 480GB"):  # same names, other numbers: not the SXM spec
        assert gpu_spec_for(other) is None, other


def test_cpu_spec_is_measured_and_cached(tmp_path):
    a = cost.cpu_spec(cache=tmp_path)
    assert a.peak("fp32") > 1e8 and a.mem_bandwidth > 1e8  # any machine of this decade
    assert "measured" in a.source
    files = list(tmp_path.glob("cpu-probe-*.json"))
    assert len(files) == 1
    b = cost.cpu_spec(cache=tmp_path)  # from the cache: identical numbers
    assert b.peak("fp32") == a.peak("fp32") and b.mem_bandwidth == a.mem_bandwidth


def test_a_cached_peak_below_a_measured_rate_is_probed_again(tmp_path):
    """A probe disturbed by other work caches a peak too low; a later matmul that runs
    faster proves it, and the cache is re-measured, keeping the higher numbers."""
    import json

    cost.cpu_spec(cache=tmp_path)
    path = next(tmp_path.glob("cpu-probe-*.json"))
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "fp32_flops": 1e6, "mem_bandwidth": 1e6}))
    assert cost.cpu_spec(cache=tmp_path).peak("fp32") == 1e6  # trusted when not disproved
    fixed = cost.cpu_spec(cache=tmp_path, observed_flops=2e6)
    assert fixed.peak("fp32") > 1e8 and fixed.mem_bandwidth > 1e8  # re-probed
    assert json.loads(path.read_text())["fp32_flops"] == fixed.peak("fp32")  # and cached


def test_a_batched_matmul_counts_every_batch_in_flops_reads_and_writes():
    c = matmul_cost(8, 16, 32, "fp16", batch=4)
    assert c.flops == 2 * 4 * 8 * 16 * 32
    assert c.bytes_read == 4 * (8 * 32 + 32 * 16) * 2
    assert c.bytes_written == 4 * 8 * 16 * 2
    t = bmm(4, 8, 16, 32, "fp16").cost()
    assert (t.flops, t.bytes_read, t.bytes_written) == (c.flops, c.bytes_read, c.bytes_written)


def test_the_peak_is_never_below_a_measured_rate(tmp_path, monkeypatch):
    """A probe can err low (other work on the cores), on a first run as on a re-probe; a
    rate just measured is a lower bound on the peak, so efficiency never exceeds 1."""
    from common import devices

    monkeypatch.setattr(devices, "probe_cpu", lambda: {
        "version": devices.PROBE_VERSION, "fp32_flops": 5e10, "mem_bandwidth": 1e10,
        "matmul_n": 64, "array_bytes": 8, "probe_date": "2026-11-29"})
    first = cost.cpu_spec(cache=tmp_path, observed_flops=2e11)  # nothing cached yet
    assert first.peak("fp32") == 2e11
    again = cost.cpu_spec(cache=tmp_path, observed_flops=3e11)  # cached, re-probed low
    assert again.peak("fp32") == 3e11
    assert cost.cpu_spec(cache=tmp_path).peak("fp32") == 3e11  # kept in the cache


@pytest.mark.parametrize("args", [(1, 3, 2, 2, 8, 5, 5), (1, 3, 3, 3, 8, 5, 5, 1, 0),
                                  (1, 3, 8, 8, 8, 3, 3, 0, 0)])
def test_a_convolution_that_cannot_run_has_no_cost(args):
    """Two negative output sizes multiplied to a positive FLOP count (a 5x5 kernel on a
    2x2 input cost 4800 FLOPs; torch refuses to run it)."""
    with pytest.raises(ValueError, match="does not fit"):
        cost.conv2d_cost(*args)
    assert cost.conv2d_cost(2, 3, 32, 32, 16, 3, 3).flops == 2 * (2 * 16 * 30 * 30) * 3 * 9


def test_a_matmul_writes_in_its_output_dtype_and_a_convolution_reads_its_filters():
    """fp16 inputs with an fp32 accumulator written out (out_dtype) write 4 bytes per
    element, not 2; a convolution reads its weights (c_out x c_in x kh x kw) as well as
    its input. Hand counts."""
    mm = matmul_cost(2, 3, 5, "fp16", out_dtype="fp32")
    assert mm.bytes_read == (2 * 5 + 5 * 3) * 2 and mm.bytes_written == 2 * 3 * 4
    cv = cost.conv2d_cost(2, 3, 8, 8, 4, 3, 3, padding=1, dtype="fp16")
    assert cv.bytes_read == (2 * 3 * 8 * 8 + 4 * 3 * 3 * 3) * 2
    assert cv.bytes_written == 2 * 4 * 8 * 8 * 2
