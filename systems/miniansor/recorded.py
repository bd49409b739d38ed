"""A recorded device: replay kernel times measured once, from a committed JSON table.

Search and cost-model studies measure thousands of configs; on a real GPU each costs a
compile and a timing. Measuring a task's space once and replaying it lets those studies
run anywhere, on real numbers (the idea behind TenSet, Zheng et al., NeurIPS 2021
datasets track, a large table of measured TVM programs for cost-model research).

Table format (``miniansor-recorded/1``)::

    {"format": "miniansor-recorded/1",
     "source": "measured" | "simulated",   # never leave a reader guessing
     "device": "NVIDIA H100 80GB HBM3", "created": "2026-11-26", "notes": "...",
     "versions": {...},
     "tasks": {"gemm:4096x4096x4096:fp16:none": {
         "tiled.grouped[BLOCK_K=64,...]": {"time_s": [1.9e-4, 1.91e-4]},
         "tiled.grouped[BLOCK_K=128,...]": {"error": "OUT_OF_RESOURCES"}}}}

``source`` is checked: a table generated from ``SimulatedGPU`` says "simulated" and is
reported as such. A table of real measurements is written by the GPU benchmark run
(``TableRecorder``, a measure callback) under ``systems/miniansor/data/``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .annotation import (
    H100_LIMITS,
    HardwareLimits,
    config_key,
    enumerate_space,
    parse_config_key,
)
from .measure import DeviceFault, ErrorNo, MeasureInput, MeasureResult
from .records import VERSIONS
from .sketch import Sketch, generate_sketches
from .workloads import Task

FORMAT = "miniansor-recorded/1"
SOURCES = ("measured", "simulated")
DATA_DIR = Path(__file__).parent / "data"


def validate_table(table: dict, where: str = "table") -> None:
    """Refuse, naming the place, anything that is not a replay table."""
    if not isinstance(table, dict):
        raise ValueError(f"{where}: not a replay table (a JSON {type(table).__name__}, "
                         f"expected an object)")
    if table.get("format") != FORMAT:
        raise ValueError(f"{where}: format {table.get('format')!r}, expected {FORMAT!r}")
    if table.get("source") not in SOURCES:
        raise ValueError(f"{where}: source must be one of {SOURCES}, "
                         f"got {table.get('source')!r}")
    if not isinstance(table.get("tasks"), dict):
        raise ValueError(f"{where}: 'tasks' must map task keys to config tables")
    for key, entries in table["tasks"].items():
        task = Task.from_key(key)
        if not isinstance(entries, dict):
            raise ValueError(f"{where}: {key} must map configs to results, got "
                             f"{type(entries).__name__}")
        sketches = {s.name: s for s in generate_sketches(task)}
        for ck, e in entries.items():
            bad = _bad_entry(e) or _bad_config(ck, sketches)
            if bad:
                raise ValueError(f"{where}: {key} / {ck} {bad}")


def _bad_config(ck: str, sketches: dict[str, Sketch]) -> str | None:
    """Why a config key cannot be one of its sketch's configs: the search and the cost
    model read every parameter of the sketch from it (a missing one was a bare KeyError
    mid-tuning). A sketch we no longer generate (the tutorial's) is left to the readers,
    which skip it."""
    try:
        name, ann = parse_config_key(ck)
    except ValueError as e:
        return f"is not a config key: {e}"
    sk = sketches.get(name)
    if sk is not None and set(ann) != set(sk.params):
        return f"sets {sorted(ann)}, but sketch {name} has parameters {sorted(sk.params)}"
    return None


def _bad_entry(e) -> str | None:
    """Why one config's result is unusable: times must be positive finite numbers (a zero
    would be an infinite throughput, a negative one the best kernel), an error one of
    ``ErrorNo``'s names."""
    if not isinstance(e, dict) or not ("time_s" in e or "error" in e):
        return "has neither time_s nor error"
    if "time_s" in e and "error" in e:  # replay would fail it, --history time it
        return "has both time_s and error: an entry is a timing or a failure"
    if "error" in e:
        if e["error"] not in ErrorNo.__members__ or e["error"] == "NO_ERROR":
            return f"has error {e['error']!r}, not one of {list(ErrorNo.__members__)[1:]}"
        return None
    t = e["time_s"]
    if not (isinstance(t, list) and t and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf")
            for x in t)):
        return f"time_s must be a non-empty list of times > 0 s, got {t!r}"
    return None


def measured_on(device: str) -> str:
    """The hardware behind a device name: a replay's ``replay of X (source)`` (the name
    :class:`RecordedDevice` takes) is X, the simulator's or the GPU's that measured it."""
    m = re.fullmatch(r"replay of (.*) \([^()]*\)", device)
    return m.group(1) if m else device


class RecordedDevice:
    """A device that answers from a recorded table; configs it lacks fail NOT_RECORDED."""

    kind = "replay"

    def __init__(self, table: dict | str | Path):
        if not isinstance(table, dict):
            path = Path(table)
            if not path.is_file():
                raise FileNotFoundError(f"replay table {str(path)!r} is not a file")
            try:
                table = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: not a replay table (not JSON: {e})") from None
            validate_table(table, str(path))
        else:
            validate_table(table)
        self.table = table
        self.source = table["source"]
        # the form measured_on reads back
        self.name = f"replay of {table.get('device', '?')} ({self.source})"

    def tasks(self) -> list[Task]:
        return [Task.from_key(k) for k in self.table["tasks"]]

    def measure(self, task: Task, sketch: Sketch, ann: dict[str, int],
                repeats: int = 3) -> list[float]:
        entry = self.table["tasks"].get(task.key, {}).get(config_key(sketch, ann))
        if entry is None:
            raise DeviceFault("NOT_RECORDED", f"{task.key} {config_key(sketch, ann)}")
        if "error" in entry:
            raise DeviceFault(entry["error"], entry.get("msg", "recorded failure"))
        times = entry["time_s"]
        return [float(times[i % len(times)]) for i in range(repeats)]

    def space(self, task: Task) -> list[tuple[Sketch, dict[str, int]]]:
        """The recorded configs of ``task`` (the search space when replaying)."""
        sketches = {s.name: s for s in generate_sketches(task)}
        out = []
        for ck in self.table["tasks"].get(task.key, {}):
            name, ann = parse_config_key(ck)
            if name in sketches:
                out.append((sketches[name], ann))
        return out

    def records(self, skip: Callable[[Task], bool] = lambda task: False
                ) -> list[tuple[MeasureInput, MeasureResult]]:
        """The table as tuning records of this device (every task but those ``skip``
        names; configs of sketches we no longer generate, e.g. the tutorial's, left out):
        a history to pre-train a cost model with, as TVM's ``update_from_file`` reads a
        log of earlier tuning."""
        out = []
        for task in self.tasks():
            if skip(task):
                continue
            sketches = {s.name: s for s in generate_sketches(task)}
            for ck, e in self.table["tasks"][task.key].items():
                name, ann = parse_config_key(ck)
                if name not in sketches:
                    continue
                res = MeasureResult([], ErrorNo[e["error"]], e.get("msg", ""),
                                    device=self.name) if "error" in e \
                    else MeasureResult(list(e["time_s"]), device=self.name)
                out.append((MeasureInput(task, sketches[name], ann), res))
        return out

    def true_time(self, task: Task, sketch: Sketch, ann: dict[str, int]) -> float:
        """The recorded median (the ground truth of replayed studies)."""
        entry = self.table["tasks"].get(task.key, {}).get(config_key(sketch, ann))
        if entry is None or "error" in entry:
            raise DeviceFault(entry["error"] if entry else "NOT_RECORDED",
                              config_key(sketch, ann))
        return float(np.median(entry["time_s"]))


class TableRecorder:
    """A measure callback collecting every measurement into a recorded table."""

    def __init__(self, device: str, source: str = "measured", notes: str = ""):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.device, self.source, self.notes = device, source, notes
        self.tasks: dict[str, dict[str, dict]] = {}

    def __call__(self, inp: MeasureInput, res: MeasureResult) -> None:
        if res.ok:
            entry = {"time_s": [float(f"{c:.4g}") for c in res.costs]}
        else:
            entry = {"error": res.error.name, "msg": res.error_msg[:200]}
        self.tasks.setdefault(inp.task.key, {})[inp.key] = entry

    def table(self) -> dict:
        return {"format": FORMAT, "source": self.source, "device": self.device,
                "created": time.strftime("%Y-%m-%d"), "notes": self.notes,
                "versions": VERSIONS, "tasks": self.tasks}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.table(), separators=(",", ":")) + "\n")
        return path


def sample_space(task: Task, n: int, rng: np.random.Generator,
                 limits: HardwareLimits = H100_LIMITS) -> list[tuple[Sketch, dict[str, int]]]:
    """``n`` configs drawn uniformly, without repeats, from the task's pruned space (every
    valid annotation of every sketch), as a time-limited GPU run would record them."""
    space = [(s, a) for s in generate_sketches(task, limits.sm_count)
             for a in enumerate_space(task, s, limits)]
    return [space[i] for i in rng.permutation(len(space))[:n]]


def table_from_simulator(tasks: list[Task], sim, configs_per_task: int = 800, seed: int = 0,
                         limits: HardwareLimits = H100_LIMITS, repeats: int = 3) -> dict:
    """A replay table from ``SimulatedGPU`` (labelled ``"source": "simulated"``): a random
    subset of each task's pruned space (``sample_space``)."""
    rng = np.random.default_rng(seed)
    rec = TableRecorder(sim.name, "simulated",
                        notes="generated by systems.miniansor.recorded.table_from_simulator; "
                              "NOT a measurement of real hardware")
    for task in tasks:
        for sk, ann in sample_space(task, configs_per_task, rng, limits):
            try:
                res = MeasureResult(sim.measure(task, sk, ann, repeats))
            except DeviceFault as f:
                res = MeasureResult([], ErrorNo[f.kind], f.msg)
            rec(MeasureInput(task, sk, ann), res)
    return rec.table()


def record_space(tasks: list[Task], device, configs_per_task: int, seed: int = 0,
                 limits: HardwareLimits = H100_LIMITS, chunk: int = 64,
                 on_chunk: Callable[[TableRecorder, int], None] | None = None
                 ) -> TableRecorder:
    """Measure a random subset of each task's pruned space on ``device`` (the same draw as
    ``table_from_simulator`` for the same seed) through the ordinary ``Measurer``: on a
    GPU each chunk is compiled in parallel, checked against torch and timed in the worker,
    and a config that fails is recorded as its error. This is the table that lets the
    offline studies (search and cost model) replay *real* times, as TenSet does for TVM.
    ``on_chunk(recorder, done)`` runs after every chunk, e.g. to write the table so far,
    so a run cut short keeps what it measured."""
    from .measure import Measurer

    sources = {"cuda": "measured", "sim": "simulated"}
    if device.kind not in sources:
        raise ValueError(f"record_space measures on a GPU or the simulator, not on a "
                         f"{device.kind!r} device")
    rng = np.random.default_rng(seed)
    rec = TableRecorder(device.name, sources[device.kind],
                        notes=f"systems.miniansor.recorded.record_space: {configs_per_task} "
                              f"random configs of each task's pruned space, seed {seed}")
    # every config is wanted, so a run of failures must not end a task early
    m = Measurer(device, verify="none", limits=limits, callbacks=[rec],
                 max_consecutive_errors=10**9)
    done = 0
    for task in tasks:
        configs = sample_space(task, configs_per_task, rng, limits)
        for i in range(0, len(configs), chunk):
            m.measure([MeasureInput(task, sk, ann) for sk, ann in configs[i:i + chunk]])
            done += len(configs[i:i + chunk])
            if on_chunk is not None:
                on_chunk(rec, done)
    return rec
