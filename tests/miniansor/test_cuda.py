"""On a GPU: compile for real, check bf16 (which the interpreter gets wrong), time with
do_bench in the worker, and write a measured table. Skipped without CUDA."""

import numpy as np
import pytest

from systems.miniansor.annotation import sample_annotation
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.workloads import bmm, gemm, layernorm, softmax

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("task", [gemm(300, 200, 1000, "bf16", bias=True, act="gelu",
                                       residual=True), bmm(3, 70, 90, 64, "bf16"),
                                  softmax(100, 3000, "bf16"), layernorm(100, 1000, "bf16")])
def test_every_sketch_is_right_in_bf16_on_the_gpu(task):
    from systems.miniansor.measure import verify_program

    rng = np.random.default_rng(0)
    for sk in generate_sketches(task):
        verify_program(task, sk, sample_annotation(task, sk, rng), device="cuda",
                       proxy=False)


def test_cuda_device_builds_in_parallel_and_times_in_the_worker(tmp_path):
    from systems.miniansor.cuda import CudaDevice
    from systems.miniansor.measure import MeasureInput, Measurer
    from systems.miniansor.recorded import RecordedDevice, TableRecorder

    task = gemm(1024, 1024, 1024, "fp16")
    dev = CudaDevice(n_parallel=4)
    rec = TableRecorder(dev.name)
    try:
        rng = np.random.default_rng(1)
        sk = generate_sketches(task)[0]
        inputs = [MeasureInput(task, sk, sample_annotation(task, sk, rng)) for _ in range(4)]
        results = Measurer(dev, verify="none", callbacks=[rec]).measure(inputs)
        assert all(r.ok and 1e-6 < r.time < 1e-2 for r in results)
    finally:
        dev.close()
    assert RecordedDevice(rec.write(tmp_path / "t.json")).source == "measured"
