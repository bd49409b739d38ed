"""The measurer records failures as data and keeps going."""

from systems.miniansor.measure import (
    DeviceFault,
    ErrorNo,
    MeasureInput,
    Measurer,
    proxy_task,
)
from systems.miniansor.simulator import SimulatedGPU
from systems.miniansor.sketch import Sketch, generate_sketches
from systems.miniansor.workloads import bmm, gemm, softmax

GOOD = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 2, "num_stages": 2}


def faulty(fn: str) -> Sketch:
    return Sketch(fn, f"tests.miniansor.faulty:{fn}", (("num_warps", (1,)),))


class Flaky:
    """A device that fails every other measurement with a runtime error."""

    name, kind = "flaky", "sim"

    def __init__(self):
        self.calls = 0

    def measure(self, task, sketch, ann, repeats=3):
        self.calls += 1
        if self.calls % 2 == 0:
            raise DeviceFault("RUNTIME_ERROR", "simulated fault")
        return [1e-5] * repeats


def test_a_failing_config_is_recorded_not_fatal():
    task = gemm(40, 50, 60, "fp16")
    sk = generate_sketches(task)[0]
    seen = []
    m = Measurer(SimulatedGPU(), verify="local", callbacks=[lambda i, r: seen.append(r)])
    soft = softmax(4, 100, "fp32")
    inputs = [
        MeasureInput(task, sk, GOOD),
        MeasureInput(task, sk, {**GOOD, "BLOCK_M": 48}),  # breaks a declared limit
        MeasureInput(soft, faulty("launch_wrong"), {"num_warps": 1}),
        MeasureInput(soft, faulty("launch_bad_compile"), {"num_warps": 1}),
        MeasureInput(soft, faulty("launch_misaligned"), {"num_warps": 1}),
        MeasureInput(task, sk, {**GOOD, "BLOCK_N": 64}),
    ]
    results = m.measure(inputs)
    assert [r.error for r in results] == [
        ErrorNo.NO_ERROR, ErrorNo.INSTANTIATION_ERROR, ErrorNo.WRONG_ANSWER,
        ErrorNo.COMPILE_ERROR, ErrorNo.RUNTIME_ERROR, ErrorNo.NO_ERROR]
    # the interpreter raises both as InterpreterError: the frontend's check is a compile
    # error (as compiled Triton reports it), a check of a run-time pointer is not
    assert "power of 2" in results[3].error_msg and "aligned" in results[4].error_msg
    assert results[5].time < float("inf")
    assert seen == results and "not in" in results[1].error_msg
    assert results[2].time == float("inf") and results[2].costs == []


class Broken:
    """A device whose measurement raises something other than a DeviceFault."""

    name, kind = "broken", "sim"

    def measure(self, task, sketch, ann, repeats):
        raise ZeroDivisionError("a bug in the device model")


def test_an_exception_outside_the_device_fault_is_recorded_too():
    """A student's GEMM template lacking the tile knobs our limit check reads, and a
    device that raises an unexpected error: each costs one recorded trial."""
    seen = []
    student = Sketch("student", "tests.miniansor.faulty:launch_wrong", (("num_warps", (4,)),))
    task = gemm(64, 64, 64)
    m = Measurer(SimulatedGPU(), verify="local", callbacks=[lambda i, r: seen.append(r)])
    (res,) = m.measure([MeasureInput(task, student, {"num_warps": 4})])
    assert res.error == ErrorNo.INSTANTIATION_ERROR and "KeyError" in res.error_msg
    m = Measurer(Broken(), verify="none", callbacks=[lambda i, r: seen.append(r)])
    (res,) = m.measure([MeasureInput(task, generate_sketches(task)[0], GOOD)])
    assert res.error == ErrorNo.UNKNOWN_ERROR and "ZeroDivisionError" in res.error_msg
    assert len(seen) == 2 and m.consecutive_errors[task.key] == 1


def test_a_long_run_of_errors_stops_the_task():
    task = gemm(64, 64, 64)
    sk = generate_sketches(task)[0]
    m = Measurer(Flaky(), verify="none", max_consecutive_errors=3)
    bad = [MeasureInput(task, sk, {**GOOD, "BLOCK_M": 48})] * 3
    m.measure(bad[:2])
    assert not m.task_dead(task)
    m.measure(bad[2:])
    assert m.task_dead(task)
    m.measure([MeasureInput(task, sk, GOOD)])
    assert not m.task_dead(task)  # a success resets the run


def test_each_program_is_verified_once():
    task = gemm(40, 50, 60, "fp32")
    sk = generate_sketches(task)[0]
    m = Measurer(SimulatedGPU(), verify="local")
    m.measure([MeasureInput(task, sk, GOOD)])
    assert len(m.verified) == 1
    m.measure([MeasureInput(task, sk, GOOD)])
    assert len(m.verified) == 1 and len(m.session) == 2


def test_proxy_tasks_are_small_ragged_and_exercise_splits_and_groups():
    t = proxy_task(gemm(4096, 4096, 4096, "bf16"),
                   {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 4, "SPLIT_K": 1})
    m, n, k = t.mnk
    assert t.dtype == "fp16"  # the interpreter gets bf16 wrong
    assert (m, n, k) == (3 * 64 - 5, 2 * 128 - 3, 2 * 32 - 7)
    assert m % 64 and n % 128 and k % 32 and m > 2 * 64
    s = proxy_task(gemm(16, 4096, 14336), {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64,
                                          "SPLIT_K": 4})
    assert s.mnk == (16, 61, 2 * 64 * 4 - 7)
    assert proxy_task(bmm(32, 512, 512, 64), GOOD).batch == 2
    assert proxy_task(softmax(1000, 30000), {"BLOCK_N": 256}).shape == (3, 515)


def test_triton_autotune_cannot_run_under_the_interpreter():
    """Why our measurer times every config itself: @triton.autotune benchmarks its list
    with do_bench on a device, which the interpreter does not have."""
    import pytest
    import torch
    import triton
    import triton.language as tl

    @triton.autotune(configs=[triton.Config({"B": 16}), triton.Config({"B": 32})], key=["n"])
    @triton.jit
    def double(x, y, n, B: tl.constexpr):
        o = tl.program_id(0) * B + tl.arange(0, B)
        tl.store(y + o, tl.load(x + o, mask=o < n) * 2, mask=o < n)

    x = torch.randn(100)
    with pytest.raises(RuntimeError, match="active drivers"):
        double[lambda meta: (triton.cdiv(100, meta["B"]),)](x, torch.empty(100), 100)


def test_a_config_verified_on_one_task_is_verified_again_on_another(monkeypatch):
    """The same sketch name and knobs on another problem size is another program (other
    masks, other ragged tiles): it must be checked against torch too."""
    import systems.miniansor.measure as measure
    from systems.miniansor.measure import MeasureInput, Measurer
    from systems.miniansor.simulator import SimulatedGPU

    checked = []
    monkeypatch.setattr(measure, "verify_program",
                        lambda task, sk, ann, *a, **k: checked.append(task.key))
    good = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 2, "num_stages": 2}
    t1, t2 = gemm(40, 50, 60, "fp32"), gemm(41, 50, 60, "fp32")
    s1, s2 = generate_sketches(t1)[0], generate_sketches(t2)[0]
    assert s1.name == s2.name
    m = Measurer(SimulatedGPU(), verify="local")
    m.measure([MeasureInput(t1, s1, good), MeasureInput(t2, s2, good),
               MeasureInput(t1, s1, good)])
    assert checked == [t1.key, t2.key]


def test_a_measurements_time_is_the_median_of_its_repeats():
    from systems.miniansor.measure import ErrorNo, MeasureResult

    assert MeasureResult([3e-5, 1e-5, 2e-5]).time == 2e-5
    assert MeasureResult([1e-5, 9e-5, 2e-5, 3e-5]).time == 2.5e-5
    assert MeasureResult([], ErrorNo.WRONG_ANSWER).time == float("inf")


def test_every_result_names_the_device_that_measured_it():
    from systems.miniansor.measure import MeasureInput, Measurer
    from systems.miniansor.simulator import SimulatedGPU

    task = gemm(40, 50, 60, "fp32")
    sk = generate_sketches(task)[0]
    good = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 2, "num_stages": 2}
    dev = SimulatedGPU()
    (res,) = Measurer(dev, verify="none").measure([MeasureInput(task, sk, good)])
    assert res.ok and res.device == dev.name == "simulated NVIDIA H100 SXM"
