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
one torn last line, which the reader skips (and says so) and the next writer cuts off
before it appends. A ``"weight"`` field, where the tuner knew it, is how often the task
occurs in its model (``casebook ansor show`` needs it for the weighted latency).

A time is only meaningful on the device that measured it, so every reader keeps each
record's ``device``: resuming uses only the current device's records, and
``apply_history_best`` picks among one device's (TVM's ``load_best_record`` and
``ApplyHistoryBest`` likewise match records by target).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from . import annotation
from .annotation import HardwareLimits
from .measure import ErrorNo, MeasureInput, MeasureResult
from .sketch import (
    GEMM_TEMPLATES,
    ROW_TEMPLATES,
    Sketch,
    generate_sketches,
    resolve_template,
    run_program,
)
from .workloads import Task

RECORD_VERSION = 1
VERSIONS = {"miniansor": RECORD_VERSION, "triton": triton.__version__,
            "torch": torch.__version__}


def to_line(inp: MeasureInput, res: MeasureResult, device: str,
            weight: float | None = None) -> str:
    rec = {
        "v": RECORD_VERSION, "task": inp.task.key, "sketch": inp.sketch.name,
        "template": inp.sketch.template, "fixed": dict(inp.sketch.fixed), "ann": inp.ann,
        "costs": res.costs, "error": res.error.name, "error_msg": res.error_msg,
        "all_cost": round(res.all_cost, 6), "timestamp": res.timestamp, "device": device,
        "versions": VERSIONS}
    if weight is not None:
        rec["weight"] = weight
    return json.dumps(rec, separators=(",", ":"))


def end_torn_tail(path: Path) -> None:
    """Make ``path`` end with a whole line before anything is appended to it.

    A killed run can leave a torn last line; appending to it would glue the next record
    onto the fragment and lose both. A tail that still parses (a whole record whose
    newline was lost) gets its newline; a fragment is cut off (readers skip it anyway)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
    except ValueError:
        print(f"miniansor: cutting a torn last line ({len(data) - cut} bytes) off {path}",
              file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(cut)
        return
    with open(path, "ab") as f:
        f.write(b"\n")


@contextlib.contextmanager
def held(path: str | Path | None) -> Iterator[None]:
    """Hold the log ``path`` for one tuning run (an exclusive ``flock``). Two runs
    appending at once would both resume from the same lines and measure the same configs
    again, and a later resume would count the repeats against its budget (TVM's
    ``RecordToFile`` has the same gap). A log this run created and left empty (it
    stopped before its first record) is removed."""
    if path is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{path}: another tuning run is appending to this log; wait "
                             f"for it to end, or give another log") from None
        try:
            yield
        finally:
            if created and path.exists() and path.stat().st_size == 0:
                path.unlink()
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class RecordToFile:
    """A measure callback that appends each measurement to ``path``. ``weights`` maps a
    task key to how often the task occurs in its model (written on each line)."""

    def __init__(self, path: str | Path, device: str, weights: dict[str, float] | None = None):
        self.path, self.device, self.weights = Path(path), device, dict(weights or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        end_torn_tail(self.path)

    def __call__(self, inp: MeasureInput, res: MeasureResult) -> None:
        with open(self.path, "a") as f:
            f.write(to_line(inp, res, self.device, self.weights.get(inp.task.key)) + "\n")
            f.flush()


def _sketch_for(task: Task, rec: dict, cache: dict) -> Sketch:
    """The sketch a record names: regenerated from the task's rules when they still
    produce it (the same name, template and fixed values: the same program), else
    rebuilt from the record (template + fixed values). A rebuilt sketch takes each
    parameter's domain from the sketches the rules make for the task (every value any of
    them may use, tuned or fixed), so a value none of them uses (BLOCK_M=48, GROUP_M=0)
    is refused as it is for a sketch the rules still make; a parameter none of them has
    (a student's own knob) can only be taken as recorded."""
    if task.key not in cache:
        cache[task.key] = {s.name: s for s in generate_sketches(task)}
    sk = cache[task.key].get(rec["sketch"])
    if sk is None or sk.template != rec["template"] or \
            dict(sk.fixed) != rec.get("fixed", dict(sk.fixed)):
        known = _known_values(task, cache)
        sk = Sketch(rec["sketch"], rec["template"],
                    tuple((p, tuple(sorted(known[p])) if p in known else (v,))
                          for p, v in rec["ann"].items()),
                    tuple(sorted(rec.get("fixed", {}).items())), ("from-record",))
    return sk


def _known_values(task: Task, cache: dict) -> dict[str, set[int]]:
    """Every value the rules' sketches of ``task`` may give each parameter, tuned or
    fixed (worked out once per task a log holds, kept in ``cache``)."""
    if (task.key, "known") not in cache:
        known: dict[str, set[int]] = {}
        for s in cache[task.key].values():
            for p in s.params:
                known.setdefault(p, set()).update(s.domain(p))
            for p, v in s.fixed:
                known.setdefault(p, set()).add(v)
        cache[(task.key, "known")] = known
    return cache[(task.key, "known")]


# Reading a record checks the config's form (its parameters, their domains), not one
# device's limits: a run may tune with other limits (``tune_tasks(limits=...)``), and its
# successes ran on its device.
NO_LIMITS = HardwareLimits(smem_per_block=1 << 40, sm_count=1 << 20,
                           max_acc_regs_per_thread=1 << 40, max_threads_per_block=1 << 40,
                           max_row_elems_per_thread=1 << 40, name="no limits")


def _check_runnable(task: Task, sketch: Sketch, ann: dict[str, int], ok: bool,
                    known: dict[str, set[int]] | None = None) -> None:
    """A ValueError (or KeyError) if the record's config could not run for its task: a
    template that no longer exists or computes another kind of task, a missing or
    extra parameter; and, for a success, a value off the sketch's (clamped) domain or a
    rule no kernel can break (a tile too small for its warps). Such a line (hand-edited,
    or from another version) would otherwise be handed out as the best kernel, or crash a
    resumed search that extracts its features. A failed record is what it says, a config
    that failed (a student's template that lacks a knob, say): it stays, as training
    data of throughput 0 and as a config not to measure again. TVM replays a record's
    steps on the task when it reads it, which fails the same way."""
    resolve_template(sketch.template)
    if sketch.template in (ROW_TEMPLATES if task.is_matmul else GEMM_TEMPLATES):
        raise ValueError(f"template {sketch.template!r} does not compute {task.key}")
    if set(ann) != set(sketch.params):
        raise ValueError(f"the record sets {sorted(ann)}, sketch {sketch.name} has "
                         f"{sorted(sketch.params)}")
    if not ok:
        return
    for p, v in sketch.fixed:  # a rebuilt sketch's fixed values, as its tuned ones
        if known and p in known and v not in known[p]:
            raise ValueError(f"fixed {p}={v}: no sketch of {task.key} uses that value "
                             f"({sorted(known[p])})")
    bad = annotation.check(task, sketch, ann, NO_LIMITS)  # a KeyError if a value the
    if bad:                                               # kernel reads is missing
        raise ValueError(f"the config cannot run for {task.key}: {'; '.join(bad)}")


_FIELD_TYPES = {"task": str, "sketch": str, "ann": dict, "costs": list, "error": str}


def _checked(rec: object) -> dict:
    """A record line's JSON, if it has the fields a record needs with the right types;
    a ValueError naming the first one that is wrong (a line edited by hand, or written
    by something else, must be skipped, not crash every reader of the log)."""
    if not isinstance(rec, dict):
        raise ValueError(f"a record is a JSON object, got {type(rec).__name__}")
    for f, t in _FIELD_TYPES.items():
        if not isinstance(rec.get(f), t):
            raise ValueError(f"field {f!r} must be a {t.__name__}, got {rec.get(f)!r:.60}")
    if rec.get("v") != RECORD_VERSION:  # another format: its fields may mean other things
        raise ValueError(f"record format v={rec.get('v')!r:.20}, this reader reads "
                         f"v={RECORD_VERSION}")
    if not all(isinstance(c, (int, float)) and 0 < c < math.inf for c in rec["costs"]):
        raise ValueError(f"costs must be times above 0, got {rec['costs']!r:.60}")
    if rec["error"] == "NO_ERROR" and not rec["costs"]:  # a success has a time
        raise ValueError("a NO_ERROR record without costs")
    return rec


def load_records(path: str | Path) -> list[tuple[MeasureInput, MeasureResult]]:
    """All measurements in a log, in order. A torn or malformed line is skipped with a
    warning naming it (an interrupted run can leave one at the end)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a miniansor tuning log (not text: {e})") from None
    out, cache = [], {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = _checked(json.loads(line))
            task = Task.from_key(rec["task"])
            inp = MeasureInput(task, _sketch_for(task, rec, cache),
                               {k: int(v) for k, v in rec["ann"].items()})
            res = MeasureResult([float(c) for c in rec["costs"]], ErrorNo[rec["error"]],
                                rec.get("error_msg", ""), rec.get("all_cost", 0.0),
                                rec.get("timestamp", 0.0), str(rec.get("device", "")))
            _check_runnable(task, inp.sketch, inp.ann, res.ok, _known_values(task, cache))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            print(f"miniansor: skipping line {i} of {path}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            continue
        out.append((inp, res))
    return out


def check_log(path: str | Path) -> None:
    """Refuse to append to a file that is not a tuning log: one with no record line
    (a replay table given as --log, say, or someone's notes, which appending would
    spoil). A lone torn JSON line is what an interrupted first record leaves: allowed.
    Quiet about malformed lines: :func:`load_records` reports those when it reads."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        lines = path.read_text().split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a miniansor tuning log (not text: {e})") from None
    parsed, torn = 0, []
    for line in lines:
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            torn.append(line)  # torn or garbled: load_records skips it
            continue
        try:
            _checked(doc)
            return  # a record: a log
        except ValueError:
            parsed += 1
    if not parsed and not torn:  # blank lines only: nothing to spoil
        return
    if parsed or len(torn) > 1 or not torn[0].lstrip().startswith("{"):
        raise ValueError(f"{path} is not a miniansor tuning log (no line of it is a "
                         f"record); give a new file or an earlier run's log")


def task_weights(path: str | Path, device: str | None = None) -> dict[str, float]:
    """Each task's weight as the log's last line for it states (tasks without one are
    left out: a log written by an older tuner, or by hand); with ``device``, its last
    line of that device (a task tuned in a model on one device and alone on another
    has a weight per run, and each run's objective is its own)."""
    path, out = Path(path), {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):  # (null, a list: load_records skips them too)
                continue
            if device is not None and str(rec.get("device", "")) != device:
                continue
            if "weight" in rec:
                out[rec["task"]] = float(rec["weight"])
        except (ValueError, KeyError, TypeError):
            continue  # load_records already says which lines it skips
    return out


def devices(records: Iterable[tuple[MeasureInput, MeasureResult]]) -> list[str]:
    """The devices that measured ``records``, in first-seen order."""
    return list(dict.fromkeys(res.device for _, res in records))


def device_name(device: str, present: Iterable[str] = ()) -> str:
    """The name a log stores for ``device``: a device's name as it is, or what a tuning
    spec stands for, so that the spec a log was tuned with also reads it back (as TVM
    applies records by the target they were tuned for): ``sim`` the simulator's name,
    ``replay:FILE`` the table's device, ``cuda`` the one GPU among the log's devices
    ``present`` (the one it was tuned on, not this machine's, which may have none)."""
    if device == "sim":
        from .simulator import SimulatedGPU

        return SimulatedGPU().name
    if device.startswith("replay:"):
        from .recorded import RecordedDevice

        return RecordedDevice(device.split(":", 1)[1]).name
    if device == "cuda":
        gpus = [d for d in present if not d.startswith(("simulated ", "replay of "))]
        if not present:  # an empty log: nothing to choose from, nothing matches
            return device
        if len(gpus) != 1:
            raise ValueError(f"'cuda' stands for the GPU a log was tuned on, and this log "
                             f"holds {len(gpus)} GPUs among {list(present)}: name one")
        return gpus[0]
    return device


def on_device(records: Iterable[tuple[MeasureInput, MeasureResult]], device: str | None
              ) -> list[tuple[MeasureInput, MeasureResult]]:
    """The records measured on ``device`` (a name or a tuning spec). ``None`` asks for the
    log's only device and is an error when it holds several: comparing times across
    devices is meaningless."""
    return _named(list(records), device)[1]


def _named(records: list, device: str | None) -> tuple[str | None, list]:
    """``device``'s name as the log stores it, and its records."""
    found = devices(records)
    if device is None:
        if len(found) > 1:
            raise ValueError(f"the records come from {len(found)} devices {found}; "
                             f"name one of them")
        return None, records
    name = device_name(device, found)
    return name, [(i, r) for i, r in records if r.device == name]


def of_device(records: Iterable[tuple[MeasureInput, MeasureResult]], device: str | None
              ) -> list[tuple[MeasureInput, MeasureResult]]:
    """:func:`on_device` for a reader: a device that matches none of a log's records is
    an error naming those it holds (an empty dispatcher would send every kernel to the
    fallback without a word)."""
    records = list(records)
    name, out = _named(records, device)
    if records and not out:
        raise ValueError(f"no records of device {device!r}"
                         f"{f' ({name})' if name != device else ''}; the log holds "
                         f"{devices(records)}")
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
    """The best recorded kernel of each task on one device, ready to run (TVM
    ``ApplyHistoryBest``, which keeps the best record per workload *and target*).
    ``device=None``: the records' only device (an error if there are several)."""

    def __init__(self, records: Iterable[tuple[MeasureInput, MeasureResult]],
                 device: str | None = None):
        self.best = best_per_task(of_device(records, device))

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


def apply_history_best(log: str | Path, device: str | None = None) -> ApplyHistoryBest:
    """Read a tuning log and return the dispatcher of best kernels per task, among the
    records of ``device`` (its name, or the spec it was tuned with: ``sim``,
    ``replay:FILE``, ``cuda``; default: the log's only device)."""
    return ApplyHistoryBest(load_records(log), device)
