"""The measurer: build a program, check it against the oracle, time it, record it.

Mirrors TVM's ``ProgramMeasurer`` (``python/tvm/auto_scheduler/measure.py``): a *builder*
turns a ``MeasureInput`` (task + state) into something runnable, a *runner* times it,
and every result, good or bad, goes to the callbacks (``RecordToFile``). A failure is
data, not an exception: it is recorded with its ``ErrorNo`` (after TVM's ``MeasureErrorNo``)
and the search goes on; the cost model learns from it (as throughput 0). A task whose
last ``max_consecutive_errors`` measurements all failed is stopped.

Where the time comes from is the *device* (one seam, three implementations):
``SimulatedGPU`` and ``RecordedDevice`` on a machine without a GPU, ``CudaDevice``
(``cuda.py``: compile in parallel, then time with ``triton.testing.do_bench`` in a
separate worker process) on a real one.

Correctness (``verify``): on a CPU the builder runs the annotated kernel under Triton's
interpreter (``TRITON_INTERPRET=1``) on a small *proxy* of the task -- same template,
same constexprs, dimensions cut to two or three ragged blocks -- and compares it to the
torch reference. The interpreter computes bf16 wrongly (without an error), so bf16
tasks are checked with fp16 inputs there; it also ignores warps and stages. On a GPU the
device checks the real-size output itself.
"""

from __future__ import annotations

import enum
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import triton

from .annotation import H100_LIMITS, HardwareLimits, check, config_key
from .sketch import Sketch, run_program
from .workloads import Task, check_output


class ErrorNo(enum.IntEnum):
    """Why a measurement failed. Modelled on TVM's ``MeasureErrorNo`` (0, 1, 5, 8 as there);
    2-4 renamed for Triton (TVM: COMPILE_HOST, COMPILE_DEVICE, RUNTIME_DEVICE), no
    BUILD_TIMEOUT, RUN_TIMEOUT is 6 (TVM: 7), and 7 is our NOT_RECORDED."""

    NO_ERROR = 0
    INSTANTIATION_ERROR = 1  # the annotation breaks a declared limit
    COMPILE_ERROR = 2
    OUT_OF_RESOURCES = 3  # shared memory or registers beyond the device's
    RUNTIME_ERROR = 4  # the kernel or its worker process died
    WRONG_ANSWER = 5
    RUN_TIMEOUT = 6
    NOT_RECORDED = 7  # a recorded device has no time for this config
    UNKNOWN_ERROR = 8


class DeviceFault(Exception):
    """Raised by a device for a config that fails; ``kind`` names an ``ErrorNo``."""

    def __init__(self, kind: str, msg: str = ""):
        super().__init__(f"{kind}: {msg}")
        self.kind, self.msg = kind, msg


class Device(Protocol):
    """What the measurer needs from a device."""

    name: str
    kind: str

    def measure(self, task: Task, sketch: Sketch, ann: dict[str, int],
                repeats: int = 3) -> list[float]: ...


@dataclass
class MeasureInput:
    task: Task
    sketch: Sketch
    ann: dict[str, int]

    @property
    def key(self) -> str:
        return config_key(self.sketch, self.ann)


@dataclass
class MeasureResult:
    costs: list[float]  # seconds, one per repeat (empty on error)
    error: ErrorNo = ErrorNo.NO_ERROR
    error_msg: str = ""
    all_cost: float = 0.0  # wall seconds the measurement took (build + check + run)
    timestamp: float = field(default_factory=time.time)
    device: str = ""  # the device's name: a time means nothing without it

    @property
    def ok(self) -> bool:
        return self.error == ErrorNo.NO_ERROR

    @property
    def time(self) -> float:
        """Median of the repeats; infinity for a failed measurement."""
        return statistics.median(self.costs) if self.ok and self.costs else float("inf")


def proxy_task(task: Task, cfg: dict[str, int]) -> Task:
    """A small task that exercises every mask of ``cfg``: ragged tiles in each dimension,
    at least two K steps per split, at most two batches, and fp16 instead of bf16."""
    t = task.with_dtype("fp16") if task.dtype == "bf16" else task
    if task.is_matmul:
        m, n, k = task.mnk
        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        rows = 3 if cfg.get("GROUP_M", 1) > 1 else 2
        shape = (min(m, rows * bm - 5), min(n, 2 * bn - 3),
                 min(k, 2 * bk * cfg.get("SPLIT_K", 1) - 7))
        shape = tuple(max(1, s) for s in shape)
        return t.with_shape(((min(task.batch, 2),) + shape) if task.kind == "bmm" else shape)
    rows, cols = task.rows_cols
    per = cfg.get("ROWS", 1)
    if "BLOCK_N" in cfg:
        cols = min(cols, 2 * cfg["BLOCK_N"] + 3)
    return t.with_shape((min(rows, 2 * per + 1), cols))


def interpreter_frontend_error(e: BaseException) -> BaseException | None:
    """The compile-time error inside an interpreter failure, or None.

    Under ``TRITON_INTERPRET`` nothing is compiled: the frontend's type and shape checks
    (``triton/language/semantic.py``, ``core.py``: "arange's range must be a power of 2")
    run as the kernel executes, and the interpreter wraps whatever is raised in an
    ``InterpreterError`` (``from`` the original). Compiled Triton raises those same
    checks as ``CompilationError``, so we classify by where the original was raised:
    in ``triton/language/`` or in the interpreter's ``static_assert``, it is a compile
    error; anywhere else (e.g. the interpreter's check of a descriptor's pointer
    alignment, a value compiled code only sees at run time) it stays a runtime one."""
    if not isinstance(e, triton.InterpreterError):
        return None
    while isinstance(e, triton.InterpreterError) and e.__cause__ is not None:
        e = e.__cause__  # a device function's error is wrapped once per call level
    frames = traceback.extract_tb(e.__traceback__)
    if not frames or isinstance(e, triton.InterpreterError):
        return None
    last = frames[-1]
    in_frontend = "/triton/language/" in last.filename
    return e if in_frontend or last.name == "_new_static_assert" else None


def verify_program(task: Task, sketch: Sketch, ann: dict[str, int], device: str = "cpu",
                   proxy: bool = True, seed: int = 0) -> None:
    """Run the program once and compare it to torch; raise DeviceFault when it fails."""
    t = proxy_task(task, sketch.full_config(ann)) if proxy else task
    inputs = t.make_inputs(device, seed)
    try:
        out = run_program(t, sketch, ann, inputs)
    except triton.CompilationError as e:
        raise DeviceFault("COMPILE_ERROR", str(e).strip().splitlines()[-1][:300]) from None
    except triton.OutOfResources as e:
        raise DeviceFault("OUT_OF_RESOURCES", str(e)[:300]) from None
    except Exception as e:
        cause = interpreter_frontend_error(e)
        if cause is not None:
            raise DeviceFault("COMPILE_ERROR", f"{type(cause).__name__}: {cause}"[:300]) \
                from None
        raise DeviceFault("RUNTIME_ERROR", f"{type(e).__name__}: {str(e)[:300]}") from None
    why = check_output(t, out, t.reference(inputs))
    if why:
        raise DeviceFault("WRONG_ANSWER", f"{t.key}: {why}")


Callback = Callable[[MeasureInput, MeasureResult], None]


class Measurer:
    """Builder + runner + callbacks. ``verify``: ``"local"`` (run the kernel in this
    process: under the interpreter on a CPU), ``"worker"`` (in an isolated worker
    process, see ``measure_worker.py``) or ``"none"`` (time only; for search studies
    whose kernels the tests already check). ``enforce_limits=False`` measures configs
    outside our declared limits too (a baseline's, e.g. the Triton tutorial's list)."""

    def __init__(self, device: Device, *, verify: str = "local",
                 limits: HardwareLimits = H100_LIMITS, callbacks: list[Callback] | None = None,
                 repeats: int = 3, max_consecutive_errors: int = 32, worker=None,
                 enforce_limits: bool = True):
        if verify not in ("local", "worker", "none"):
            raise ValueError(f"verify must be 'local', 'worker' or 'none', got {verify!r}")
        if verify == "worker" and worker is None:
            raise ValueError("verify='worker' needs a worker (measure_worker.WorkerRunner)")
        self.device, self.verify, self.limits = device, verify, limits
        self.callbacks = list(callbacks or [])
        self.repeats, self.max_consecutive_errors = repeats, max_consecutive_errors
        self.worker, self.enforce_limits = worker, enforce_limits
        self.consecutive_errors: dict[str, int] = {}
        self.verified: set[str] = set()  # program keys already checked (same kernel)
        self.session: list[tuple[MeasureInput, MeasureResult]] = []  # all, in order

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        if hasattr(self.device, "prepare"):  # e.g. compile a batch in parallel first
            self.device.prepare(inputs)
        results = []
        for inp in inputs:
            t0 = time.perf_counter()
            res = self._measure_one(inp)
            res.all_cost = time.perf_counter() - t0
            res.device = self.device.name
            self._count_error(inp, res)
            self.session.append((inp, res))
            for cb in self.callbacks:
                cb(inp, res)
            results.append(res)
        return results

    def _count_error(self, inp: MeasureInput, res: MeasureResult) -> None:
        k = inp.task.key
        self.consecutive_errors[k] = 0 if res.ok else self.consecutive_errors.get(k, 0) + 1

    def restore(self, records: list[tuple[MeasureInput, MeasureResult]]) -> None:
        """Resume: recount each task's trailing run of errors from the log, so that a
        task the interrupted run had stopped stays stopped."""
        for inp, res in records:
            self._count_error(inp, res)

    def task_dead(self, task: Task) -> bool:
        """A long run of consecutive errors: stop spending trials on this task."""
        return self.consecutive_errors.get(task.key, 0) >= self.max_consecutive_errors

    def _measure_one(self, inp: MeasureInput) -> MeasureResult:
        """One config's result; whatever goes wrong is recorded, never raised (TVM's
        ``ProgramMeasurer`` turns every builder and runner exception into an error
        number the same way), so a student's template that lacks a knob our checks
        read costs one trial, not the tuning run."""
        try:
            reasons = check(inp.task, inp.sketch, inp.ann, self.limits) \
                if self.enforce_limits else []
        except Exception as e:  # noqa: BLE001 - a config the checks cannot read
            reasons = [f"{type(e).__name__}: {e}"]
        if reasons:
            return MeasureResult([], ErrorNo.INSTANTIATION_ERROR, "; ".join(reasons))
        try:
            vkey = f"{inp.task.key}|{inp.key}"
            if self.verify != "none" and vkey not in self.verified:
                if self.verify == "local":
                    verify_program(inp.task, inp.sketch, inp.ann)
                else:
                    self.worker.verify(inp)
                self.verified.add(vkey)
            costs = self.device.measure(inp.task, inp.sketch, inp.ann, self.repeats)
        except DeviceFault as f:
            err = ErrorNo.__members__.get(f.kind, ErrorNo.UNKNOWN_ERROR)
            return MeasureResult([], err, f.msg)
        except Exception as e:  # noqa: BLE001 - a device or template bug, recorded
            return MeasureResult([], ErrorNo.UNKNOWN_ERROR, f"{type(e).__name__}: {e}"[:300])
        return MeasureResult(list(costs))
