"""The real device: compile candidates in parallel, time them in an isolated worker.

TVM splits measurement into a *builder* that compiles many candidates at once in a
process pool (``LocalBuilder(n_parallel=...)``) and a *runner* that times them one at a
time on the device (``LocalRunner`` / ``RPCRunner``; ``python/tvm/auto_scheduler/
measure.py``). Compiling dominates the cost of a trial (a Triton GEMM takes about a
second to compile and a millisecond to run), so the split matters:

* ``LocalBuilder``: a pool of spawned processes runs each candidate's launcher under
  ``WARMUP_ONLY`` (``kernels_gemm.launch``), so Triton compiles the kernel into its
  on-disk cache without running it; compile errors come back as data;
* the runner is ``measure_worker.WorkerRunner`` in CUDA mode: it launches the kernel
  (a cache hit), checks the full-size output against torch once, and times it with
  ``triton.testing.do_bench`` (median, CUDA events, L2 flushed between repeats); a
  kernel that poisons the CUDA context costs one worker restart.

Never ``@triton.autotune``: its default timer needs a GPU driver (not there under the CPU
interpreter), and it would hide the very measurements the tuner must record.

This module needs a CUDA GPU; it is exercised by ``casebook bench miniansor --device
cuda`` (first run on an H200, 2026-11-27: builder, warm-up and worker timing all worked).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .measure import DeviceFault, MeasureInput
from .measure_worker import WorkerRunner, request
from .sketch import Sketch
from .workloads import Task


def _build_one(header: dict) -> tuple[str, str]:
    """In a builder process: compile one candidate (no launch). Returns (kind, msg);
    kind "" means it compiled."""
    import triton

    from .kernels_gemm import WARMUP_ONLY
    from .sketch import run_program

    task = Task.from_key(header["task"])
    s, ann = header["sketch"], header["ann"]
    sketch = Sketch(s["name"], s["template"], tuple((p, (v,)) for p, v in ann.items()),
                    tuple(sorted(s["fixed"].items())))
    token = WARMUP_ONLY.set(True)
    try:
        run_program(task, sketch, ann, task.make_inputs("cuda", empty=True))
    except triton.CompilationError as e:
        return "COMPILE_ERROR", str(e).strip().splitlines()[-1][:300]
    except triton.OutOfResources as e:
        return "OUT_OF_RESOURCES", str(e)[:300]
    except Exception as e:
        return "COMPILE_ERROR", f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        WARMUP_ONLY.reset(token)
    return "", ""


class LocalBuilder:
    """Compile a batch of candidates in ``n_parallel`` processes."""

    def __init__(self, n_parallel: int | None = None):
        self.n_parallel = n_parallel or max(1, min(16, (os.cpu_count() or 2) - 1))
        self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # builders ignore Ctrl-C: a terminal sends it to the whole process group, and
            # each idle builder died printing its own stack; this process, interrupted
            # too, shuts the pool down (close)
            self._pool = ProcessPoolExecutor(
                self.n_parallel, mp_context=multiprocessing.get_context("spawn"),
                initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
        return self._pool

    def build(self, inputs: list[MeasureInput]) -> dict[str, tuple[str, str]]:
        """Failed builds by ``task|config`` key (absent = compiled)."""
        headers = [request(i, "build") for i in inputs]
        try:
            outcomes = list(self._executor().map(_build_one, headers))
        except BrokenProcessPool:  # a builder crashed: start over, one at a time
            self.close()
            outcomes = []
            for h in headers:
                try:
                    outcomes.append(self._executor().submit(_build_one, h).result())
                except BrokenProcessPool:
                    self.close()
                    outcomes.append(("COMPILE_ERROR", "builder process crashed"))
        return {f"{i.task.key}|{i.key}": o for i, o in zip(inputs, outcomes, strict=True)
                if o[0]}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class CudaDevice:
    """Compile in parallel (``prepare``), then check and time in the worker."""

    kind = "cuda"

    def __init__(self, n_parallel: int | None = None, timeout_s: float = 60.0,
                 rep_ms: float = 50.0):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("CudaDevice needs a CUDA GPU; use --device sim or "
                               "replay:FILE on a machine without one")
        self.name = torch.cuda.get_device_name()
        self.rep_ms = rep_ms
        self.builder = LocalBuilder(n_parallel)
        self.runner = WorkerRunner(interpret=False, timeout_s=timeout_s)
        self.build_errors: dict[str, tuple[str, str]] = {}

    def prepare(self, inputs: list[MeasureInput]) -> None:
        self.build_errors.update(self.builder.build(inputs))

    def measure(self, task: Task, sketch: Sketch, ann: dict[str, int],
                repeats: int = 3) -> list[float]:
        inp = MeasureInput(task, sketch, ann)
        err = self.build_errors.get(f"{task.key}|{inp.key}")
        if err:
            raise DeviceFault(*err)
        return self.runner.time(inp, self.rep_ms)

    def close(self) -> None:
        self.builder.close()
        self.runner.close()
