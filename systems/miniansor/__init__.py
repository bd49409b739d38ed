"""miniansor: Ansor's auto-tuner (Zheng et al., OSDI 2020; TVM ``auto_scheduler``) over
real Triton kernels.

The map, in the order data flows (paper section in brackets)::

    workloads.py      Task: gemm / bmm (+ fused epilogue), softmax, layernorm; torch oracle
    extract.py        torch.nn.Module -> (tasks, weights) via torch.fx        [3, TVM relay]
    sketch.py         derivation rules -> sketches, each a Triton template      [4.1]
    kernels_gemm.py   the GEMM templates (tiled, split-K, separate epilogue)
    kernels_rows.py   the row-reduction templates (rows in registers, looped)
    annotation.py     random annotation within declared hardware limits        [4.2]
    evolution.py      mutations (per-loop tile factors), crossover, evolution  [5.1]
    feature.py        features of (task, sketch, annotation)                  [5.2]
    cost_model.py     gradient-boosted trees, normalised throughput, ranking metrics [5.2]
    search_policy.py  one task: population -> evolution -> eps-greedy batch   [5, TVM]
    measure.py        builder + runner + callbacks; ErrorNo; interpreter checks
    measure_worker.py kernels run in a separate process (crash = one restart)
    cuda.py           the real GPU: parallel compile, do_bench in the worker
    simulator.py      a simulated H100 (stand-in device, not the cost model's view)
    recorded.py       a recorded device replaying a committed JSON table
    task_scheduler.py gradient allocation of trials across tasks             [6]
    records.py        JSON-lines log; resume; apply_history_best
    tune.py           tune_task / tune_tasks / tune_model: all of the above
    study.py, bench.py, bench_cuda.py   the benchmark experiments
    cli.py            casebook ansor tune | tune-model | show | sim-table | record-table

Without a GPU, Triton kernels run under Triton's interpreter: importing this package
on a machine where torch sees no CUDA device sets ``TRITON_INTERPRET=1`` (unless it is
already set) before any kernel is defined, since Triton reads it when ``@triton.jit``
runs.

Front ends, both returning ``(list[Task], list[int])``: ``extract_tasks`` takes a torch
module; ``extract_miniflow.extract_tasks_from_miniflow`` takes a miniflow graph after
miniflow's own passes. miniflow runs the results through ``apply_history_best``
(``systems/miniflow/tuned.py``).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .annotation import H100_LIMITS, HardwareLimits, enumerate_space, sample_annotation  # noqa: E402
from .cost_model import GBTModel, RandomModel, ranking_report  # noqa: E402
from .extract import extract_tasks  # noqa: E402
from .extract_miniflow import extract_tasks_from_miniflow  # noqa: E402
from .measure import ErrorNo, MeasureInput, Measurer, MeasureResult  # noqa: E402
from .recorded import RecordedDevice, TableRecorder  # noqa: E402
from .records import ApplyHistoryBest, apply_history_best, load_records  # noqa: E402
from .search_policy import SearchParams, SketchPolicy  # noqa: E402
from .simulator import SimulatedGPU  # noqa: E402
from .sketch import Sketch, generate_sketches, run_program  # noqa: E402
from .task_scheduler import TaskScheduler  # noqa: E402
from .tune import TuneResult, tune_model, tune_task, tune_tasks  # noqa: E402
from .workloads import Epilogue, Task, bmm, gemm, layernorm, softmax  # noqa: E402

__all__ = [
    "H100_LIMITS", "HardwareLimits", "enumerate_space", "sample_annotation", "GBTModel",
    "RandomModel", "ranking_report", "extract_tasks", "extract_tasks_from_miniflow",
    "ErrorNo", "MeasureInput",
    "MeasureResult", "Measurer", "RecordedDevice", "TableRecorder", "ApplyHistoryBest",
    "apply_history_best", "load_records", "SearchParams", "SketchPolicy", "SimulatedGPU",
    "Sketch", "generate_sketches", "run_program", "TaskScheduler", "TuneResult",
    "tune_model", "tune_task", "tune_tasks", "Epilogue", "Task", "bmm", "gemm", "layernorm",
    "softmax",
]
