"""A kernel that crashes or hangs costs one worker restart, not the tuning run."""

import pytest

from common import wire
from common.procs import ProcessGroup
from systems.miniansor.measure import ErrorNo, MeasureInput, Measurer
from systems.miniansor.measure_worker import WorkerRunner, _handle, request
from systems.miniansor.simulator import SimulatedGPU
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.workloads import gemm, softmax

from .test_measure import faulty

GOOD = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 2, "num_stages": 2}


@pytest.fixture
def worker(tmp_path):
    with ProcessGroup(tmp_path) as group:
        w = WorkerRunner(interpret=True, timeout_s=20, group=group)
        yield w
        w.close()


def test_crash_and_hang_are_recorded_and_the_worker_restarts(worker):
    task, soft = gemm(40, 50, 60, "fp16", bias=True), softmax(4, 100, "fp32")
    sk = generate_sketches(task)[0]
    m = Measurer(SimulatedGPU(), verify="worker", worker=worker)
    pid0 = worker.group.children["measure-worker"].pid
    worker.timeout_s = 4
    results = m.measure([
        MeasureInput(task, sk, GOOD),
        MeasureInput(soft, faulty("launch_segfault"), {"num_warps": 1}),
        MeasureInput(task, sk, {**GOOD, "BLOCK_N": 64}),
        MeasureInput(soft, faulty("launch_hang"), {"num_warps": 1}),
        MeasureInput(task, sk, {**GOOD, "BLOCK_K": 32}),
    ])
    assert [r.error for r in results] == [ErrorNo.NO_ERROR, ErrorNo.RUNTIME_ERROR,
                                          ErrorNo.NO_ERROR, ErrorNo.RUN_TIMEOUT,
                                          ErrorNo.NO_ERROR]
    assert "worker died" in results[1].error_msg
    assert worker.restarts == 2
    assert worker.group.children["measure-worker"].pid != pid0
    assert worker.group.children["measure-worker"].alive()


def test_a_cuda_fault_while_verifying_restarts_the_worker(worker):
    """After a CUDA error the worker's context is poisoned: it answers, then exits, and
    the next program is verified in a fresh worker (the fault raised in verify_program
    reaches the worker's check as a DeviceFault)."""
    task, soft = gemm(40, 50, 60, "fp16"), softmax(4, 100, "fp32")
    sk = generate_sketches(task)[0]
    m = Measurer(SimulatedGPU(), verify="worker", worker=worker)
    pid0 = worker.group.children["measure-worker"].pid
    results = m.measure([MeasureInput(soft, faulty("launch_cuda_fault"), {"num_warps": 1}),
                         MeasureInput(task, sk, GOOD)])
    assert [r.error for r in results] == [ErrorNo.RUNTIME_ERROR, ErrorNo.NO_ERROR]
    assert "illegal memory access" in results[0].error_msg
    assert worker.restarts == 1
    assert worker.group.children["measure-worker"].pid != pid0


def test_the_worker_rebuilds_a_row_sketch_with_its_fixed_rows():
    """row.one fixes ROWS=1 outside the annotation: the worker must verify the program
    the parent asked for, fixed values included (called in-process, no spawn)."""
    from systems.miniansor.workloads import softmax

    task = softmax(4, 100, "fp32")
    sk = next(s for s in generate_sketches(task) if dict(s.fixed).get("ROWS") == 1)
    meta, _ = wire.unpack(_handle(wire.pack(request(MeasureInput(task, sk, {"num_warps": 1}),
                                                    "verify")), None))
    assert meta == {"ok": True}, meta
