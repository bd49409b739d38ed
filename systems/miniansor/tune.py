"""Tuning, end to end: tasks in, a log of measurements and the best kernels out.

The glue TVM calls ``auto_scheduler.TaskScheduler(tasks, weights).tune(TuningOptions)``
(``task_scheduler.py``; a single task goes through ``auto_schedule`` / ``SearchTask.tune``
in ``search_task.py``, ``auto_schedule.py`` in v0.7): one search policy per task sharing one
cost model, a measurer with its callbacks (``RecordToFile``), and the task scheduler
spending the trial budget. With an existing log it *resumes*: every logged
measurement of these tasks *on this device* is preloaded into its task's policy (never
measured again), the cost model is trained on them, and the scheduler's counters are
restored; the budget counts them. Other devices' records stay in the log, unused (TVM
matches records by target when it resumes or applies them).

The cost model learns from *every* task's records on this device, not only the tasks
being tuned: TVM's ``make_search_policies`` calls ``XGBModel.update_from_file`` on the
whole log, since one model serves all tasks (Ansor section 5.2: throughput is
normalised per task so that records of different tasks can train one model). A
``history`` log adds records of earlier tuning that are only learned from, never resumed,
so a new model's first round is already guided (the benchmark's "transfer" variant
measures what that buys).

Devices by name: ``"sim"`` (``SimulatedGPU``), ``"replay:FILE"`` (``RecordedDevice``;
the search is restricted to the recorded configs), ``"cuda"`` (``CudaDevice``).
"""

from __future__ import annotations

import collections
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .annotation import H100_LIMITS, HardwareLimits, has_valid_annotation
from .cost_model import make_model
from .measure import Callback, Measurer
from .recorded import RecordedDevice, measured_on
from .records import (
    Best,
    RecordToFile,
    best_per_task,
    check_log,
    devices,
    held,
    load_records,
    on_device,
)
from .search_policy import SearchParams, SketchPolicy
from .simulator import SimulatedGPU
from .task_scheduler import ScheduleLog, TaskScheduler
from .workloads import Task, merge_tasks


def make_device(spec, seed: int = 0):
    """A device object from its CLI name (objects pass through)."""
    if not isinstance(spec, str):
        return spec
    if spec == "sim":
        return SimulatedGPU(seed=seed)
    if spec.startswith("replay:"):
        if not spec[len("replay:"):]:
            raise ValueError("--device replay:FILE needs the path of a replay table")
        return RecordedDevice(spec.split(":", 1)[1])
    if spec == "cuda":
        from .cuda import CudaDevice

        return CudaDevice()
    raise ValueError(f"--device must be 'cuda', 'sim' or 'replay:FILE', got {spec!r}")


@dataclass
class TuneResult:
    tasks: list[Task]
    weights: list[float]
    best: dict[str, Best]
    schedule: ScheduleLog
    trials: int
    device: str
    errors: dict[str, int] = field(default_factory=dict)
    resumed: int = 0  # measurements restored from the log

    def weighted_latency(self) -> float:
        return sum(w * (self.best[t.key].time if t.key in self.best else float("inf"))
                   for t, w in zip(self.tasks, self.weights, strict=True))

    def summary(self) -> dict:
        rows = []
        for t, w in zip(self.tasks, self.weights, strict=True):
            b = self.best.get(t.key)
            rows.append({"task": t.key, "weight": w,
                         "best_us": None if b is None else b.time * 1e6,
                         "tflops": None if b is None else t.flops / b.time / 1e12,
                         "sketch": None if b is None else b.sketch.name,
                         "ann": None if b is None else b.ann})
        return {"device": self.device, "trials": self.trials, "resumed": self.resumed,
                "weighted_latency_us": self.weighted_latency() * 1e6,
                "errors": self.errors, "tasks": rows}


def _refuse_empty_spaces(policies: list[SketchPolicy], dev, limits: HardwareLimits) -> None:
    """Raise, naming them, if some tasks have nothing to measure: no valid annotation of
    any sketch, or (replaying) no recorded config. Tuning them would silently spend no
    trials and report an infinite latency. (Ansor has no such case: its sketches always
    admit the trivial tiling; our declared limits can rule every config out.)"""
    empty = []
    for pol in policies:
        if pol.space is not None and not pol.space:
            empty.append(f"{pol.task.key} (the table of {dev.name} has no config of it)")
        elif pol.space is None and not any(has_valid_annotation(pol.task, s, limits)
                                           for s in pol.sketches):
            empty.append(f"{pol.task.key} (no annotation of its sketches "
                         f"{[s.name for s in pol.sketches]} fits the declared limits)")
    if empty:
        raise ValueError("nothing to tune for " + "; ".join(empty))


def _history(path: str | Path) -> list:
    """The records of a tuning log, or of a replay table (its measurements are tuning
    records too: ``RecordedDevice.records``)."""
    try:  # a log of several lines is no JSON document (json stops after its first)
        doc = json.loads(Path(path).read_text())
    except ValueError:  # UnicodeDecodeError too: load_records names that
        doc = None
    if isinstance(doc, dict) and "format" in doc:
        return RecordedDevice(path).records()  # validates the table, naming the file
    records = load_records(path)
    if not records and Path(path).stat().st_size:  # a file, but nothing to learn from
        raise ValueError(f"--history {path}: no tuning record in it; give an earlier "
                         f"run's log or a replay table")
    return records


def _same_device(records, device: str, what: str, hardware: bool = False):
    """The records measured on ``device`` (times from another device would mislead the
    search and the model); says how many others it leaves out (``what`` names them, with
    ``{n}`` for their number). With ``hardware``, on the same hardware: a replay table of
    the simulator teaches a model for the simulator, one measured on an H200 a model for
    that H200 (by name they never matched, so a table as history taught nothing)."""
    if hardware:
        here = [r for r in records if measured_on(r[1].device) == measured_on(device)]
    else:
        here = on_device(records, device)
    if len(here) < len(records):
        kept = {r.device for _, r in here}
        print(f"miniansor: {what.format(n=len(records) - len(here))} measured on "
              f"{[d for d in devices(records) if d not in kept]}, "
              f"only those on {measured_on(device) if hardware else device!r}",
              file=sys.stderr)
    return here


def _preload(policies: list[SketchPolicy], cost_model, records, learn_only) -> None:
    """Resume: the policies never measure a logged config of their task again; the model
    learns those and ``learn_only`` (other tasks' records, TVM's ``update_from_file``)."""
    if records:
        inputs, results = zip(*records, strict=True)
        for pol in policies:
            pol.preload(list(inputs), list(results))
    train = list(records) + list(learn_only)
    if train:
        inputs, results = zip(*train, strict=True)
        cost_model.update(list(inputs), list(results))


def tune_tasks(tasks: list[Task], weights: list[float] | None = None, trials: int = 64, *,
               device="sim", log: str | Path | None = None, strategy: str = "gradient",
               per_round: int = 8, seed: int = 0, verify: str = "auto", model: str = "gbt",
               evolution: bool = True, progress: bool = True,
               limits: HardwareLimits = H100_LIMITS, params: SearchParams | None = None,
               callbacks: list[Callback] | None = None,
               history: str | Path | None = None) -> TuneResult:
    """Tune ``tasks`` (with ``weights``, default 1 each) for ``trials`` measurements.
    ``log`` is resumed and appended to; ``history`` (a log of earlier tuning on this
    device) only pre-trains the cost model."""
    # two entries of one task (two front ends' lists joined) are one tuning problem:
    # tuned apart they would measure configs twice and log one weight for both
    tasks, weights = merge_tasks(tasks, weights)
    dev = make_device(device, seed)
    if verify == "auto":  # the simulator runs no kernel, so check ours; others check theirs
        verify = "local" if dev.kind == "sim" else "none"
    cost_model = make_model(model, seed, limits)
    space = dev.space if isinstance(dev, RecordedDevice) else (lambda t: None)
    params = params or SearchParams()
    policies = [SketchPolicy(t, cost_model, params=params, seed=seed + i, limits=limits,
                             evolution=evolution, space=space(t))
                for i, t in enumerate(tasks)]
    try:  # whatever fails, a device we made is closed
        _refuse_empty_spaces(policies, dev, limits)
        with held(log):  # one run at a time appends to a log
            records, learn_only = _resume(tasks, log, history, dev.name)
            cbs = list(callbacks or [])
            if log:
                by_key = {t.key: w for t, w in zip(tasks, weights, strict=True)}
                cbs.insert(0, RecordToFile(log, dev.name, by_key))
            measurer = Measurer(dev, verify=verify, limits=limits, callbacks=cbs)
            _preload(policies, cost_model, records, learn_only)
            measurer.restore(records)
            sched = TaskScheduler(tasks, weights, policies, measurer, cost_model,
                                  strategy=strategy, seed=seed)
            if records:
                sched.restore(sched.round_size(trials, per_round))
            sched.tune(trials, per_round, progress)
    finally:
        if isinstance(device, str) and hasattr(dev, "close"):
            dev.close()  # we made it, we close it
    all_records = records + measurer.session
    errors = collections.Counter(r.error.name for _, r in all_records if not r.ok)
    best = best_per_task(all_records)
    return TuneResult(tasks, weights, best, sched.log, sched.trials, dev.name, dict(errors),
                      resumed=len(records))


def _resume(tasks: list[Task], log, history, device: str) -> tuple[list, list]:
    """From ``log``: this device's records of ``tasks`` (resumed) and of other tasks
    (only learned from), plus ``history``'s (learned from)."""
    if log:
        check_log(log)
    logged = load_records(log) if log else []
    keys = {t.key for t in tasks}
    records = _same_device([r for r in logged if r[0].task.key in keys], device,
                           "not resuming {n} records")
    learn_only = _same_device([r for r in logged if r[0].task.key not in keys], device,
                              "not learning from {n} other tasks' records")
    if history:
        if not Path(history).exists():
            raise FileNotFoundError(f"history log {history} does not exist")
        learn_only += _same_device(_history(history), device,
                                   "not learning from {n} history records", hardware=True)
    return records, learn_only


def tune_task(task: Task, trials: int = 64, **kw) -> TuneResult:
    return tune_tasks([task], [1.0], trials, **kw)


def tune_model(module, example_inputs: tuple, trials: int = 256, dtype: str = "fp16",
               **kw) -> TuneResult:
    """Extract the module's tasks (``extract.py``) and tune them all together."""
    from .extract import extract_tasks

    tasks, weights = extract_tasks(module, example_inputs, dtype)
    if not tasks:
        raise ValueError(f"no tunable task in {type(module).__name__}: miniansor extracts "
                         f"GEMMs (nn.Linear, F.linear, matmul, bmm), softmax and layernorm "
                         f"over the last axis, and found none")
    return tune_tasks(tasks, weights, trials, **kw)
