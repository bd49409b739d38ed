"""Tuning records: an append-only JSON-lines log, and the best kernel per task from it.

TVM writes one JSON line per measurement (``RecordToFile``, read back by
``RecordReader`` in ``python/tvm/auto_scheduler/measure_record.py``); a log is the whole
memory of a tuning run: it resumes an interrupted run (``PreloadMeasuredStates``) and,
at compile time, ``ApplyHistoryBest`` (``dispatcher.py``) picks each task's fastest
recorded schedule. Ours keeps the same contract. One line per measurement:

    {"v": 1, "task": "gemm:64x64x64:fp16:none", "sketch": "tiled.grouped",
     "template": "matmul", "fixed": {...}, "ann": {"BLOCK_M": 64, ...},
     "costs": [1.2e-05, ...], "error": "NO_ERROR", "error_msg": "", "all_cost": 0.01,
     "timestamp": 1767000000.0, "device": "simulated NVIDIA H100 SXM",
     "versions": {"miniansor": 1, "triton": "3.7.1", "torch": "2.13.0"}}

Lines are appended and flushed one at a time, so a run killed mid-write leaves at most
one torn last line, which the reader skips (and says so).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from .measure import ErrorNo, MeasureInput, MeasureResult
from .sketch import Sketch, generate_sketches, run_program
from .workloads import Task

RECORD_VERSION = 1
VERSIONS = {"miniansor": RECORD_VERSION, "triton": triton.__version__,
            "torch": torch.__version__}


def to_line(inp: MeasureInput, res: MeasureResult, device: str) -> str:
    return json.dumps({
        "v": RECORD_VERSION, "task": inp.task.key, "sketch": inp.sketch.name,
        "template": inp.sketch.template, "fixed": dict(inp.sketch.fixed), "ann": inp.ann,
        "costs": res.costs, "error": res.error.name, "error_msg": res.error_msg,
        "all_cost": round(res.all_cost, 6), "timestamp": res.timestamp, "device": device,
        "versions": VERSIONS}, separators=(",", ":"))


class RecordToFile:
    """A measure callback that appends each measurement to ``path``."""

    def __init__(self, path: str | Path, device: str):
        self.path, self.device = Path(path), device
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, inp: MeasureInput, res: MeasureResult) -> None:
        with open(self.path, "a") as f:
            f.write(to_line(inp, res, self.device) + "\n")
            f.flush()


def _sketch_for(task: Task, rec: dict, cache: dict) -> Sketch:
    """The sketch a record names: regenerated from the task's rules when they still
    produce it, else rebuilt from the record (template + fixed values)."""
    if task.key not in cache:
        cache[task.key] = {s.name: s for s in generate_sketches(task)}
    sk = cache[task.key].get(rec["sketch"])
    if sk is None:
        sk = Sketch(rec["sketch"], rec["template"],
                    tuple((p, (v,)) for p, v in rec["ann"].items()),
                    tuple(sorted(rec.get("fixed", {}).items())), ("from-record",))
    return sk


def load_records(path: str | Path) -> list[tuple[MeasureInput, MeasureResult]]:
    """All measurements in a log, in order. A torn or malformed line is skipped with a
    warning naming it (an interrupted run can leave one at the end)."""
    path = Path(path)
    if not path.exists():
        return []
    out, cache = [], {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            task = Task.from_key(rec["task"])
            inp = MeasureInput(task, _sketch_for(task, rec, cache),
                               {k: int(v) for k, v in rec["ann"].items()})
            res = MeasureResult([float(c) for c in rec["costs"]], ErrorNo[rec["error"]],
                                rec.get("error_msg", ""), rec.get("all_cost", 0.0),
                                rec.get("timestamp", 0.0))
        except (ValueError, KeyError, TypeError) as e:
            print(f"miniansor: skipping line {i} of {path}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            continue
        out.append((inp, res))
    return out


@dataclass
class Best:
    task: Task
    sketch: Sketch
    ann: dict[str, int]
    time: float


def best_per_task(records: Iterable[tuple[MeasureInput, MeasureResult]]) -> dict[str, Best]:
    best: dict[str, Best] = {}
    for inp, res in records:
        if not res.ok:
            continue
        k = inp.task.key
        if k not in best or res.time < best[k].time:
            best[k] = Best(inp.task, inp.sketch, inp.ann, res.time)
    return best


class ApplyHistoryBest:
    """The best recorded kernel of each task, ready to run (TVM ``ApplyHistoryBest``)."""

    def __init__(self, records: Iterable[tuple[MeasureInput, MeasureResult]]):
        self.best = best_per_task(records)

    def __contains__(self, task: Task | str) -> bool:
        return (task.key if isinstance(task, Task) else task) in self.best

    def query(self, task: Task | str) -> Best | None:
        return self.best.get(task.key if isinstance(task, Task) else task)

    def kernel(self, task: Task) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """A function running the task's best kernel on a dict of inputs (as
        ``Task.make_inputs`` names them). Raises KeyError for an untuned task."""
        b = self.query(task)
        if b is None:
            raise KeyError(f"no successful record for {task.key}; tuned tasks: "
                           f"{sorted(self.best)}")
        return lambda inputs: run_program(task, b.sketch, b.ann, inputs)


def apply_history_best(log: str | Path) -> ApplyHistoryBest:
    """Read a tuning log and return the dispatcher of best kernels per task."""
    return ApplyHistoryBest(load_records(log))
