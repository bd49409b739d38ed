"""Chrome / Perfetto trace events, written by every system the same way.

The format is Google's "Trace Event Format" (the JSON that ``chrome://tracing`` and
https://ui.perfetto.dev load): a list of events, each with a phase ``ph``:

* ``"X"`` complete event: a span with a start ``ts`` and a duration ``dur`` (microseconds)
  on a row identified by (``pid``, ``tid``);
* ``"C"`` counter: a value over time (queue length, live bytes);
* ``"s"`` / ``"f"`` flow start / finish: an arrow from one span to another, used here
  for a request crossing processes (miniclipper frontend -> container, minips worker ->
  server) or a tensor crossing devices (miniflow Send -> Recv);
* ``"M"`` metadata: names for processes and threads.

Timestamps come from ``time.monotonic_ns()``, which on Linux is CLOCK_MONOTONIC and so is
shared by every process on the machine: traces written by separate processes can be
merged (:func:`merge`) and line up without clock fitting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# the bound a long-running process (a Clipper frontend, a minips node) keeps its trace
# under: about 100 MB of events, hours of sampled requests
LONG_RUN_MAX_EVENTS = 200_000


def now_us() -> float:
    """The trace clock in microseconds (machine-wide monotonic clock)."""
    return time.monotonic_ns() / 1e3


ROW_TID = 1 << 30  # rows of open_row / row_for: thread ids above any Linux tid


class TraceWriter:
    """Collects trace events in memory (thread-safe) and saves them as one JSON file.

    ``max_events`` bounds the memory of a long-running process: past it, events other
    than metadata (``"M"``, names of rows) are dropped and counted in ``dropped``."""

    def __init__(self, process_name: str | None = None, pid: int | None = None,
                 max_events: int | None = None):
        self.pid = os.getpid() if pid is None else pid
        self.max_events, self.dropped = max_events, 0
        self.events: list[dict[str, Any]] = []
        self._rows: dict[str, list[dict[str, Any]]] = {}  # open_row / row_for
        self._lock = threading.Lock()
        if process_name:
            self.name_process(process_name)

    def _add(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._keep(event)

    def _keep(self, event: dict[str, Any]) -> None:
        """Append (lock held); past ``max_events`` only metadata (row names) is kept."""
        if self.max_events is None or len(self.events) < self.max_events \
                or event.get("ph") == "M":
            self.events.append(event)
        else:
            self.dropped += 1

    def _tid(self, tid: int | None) -> int:
        return threading.get_native_id() if tid is None else tid

    # -- rows for work that overlaps in time --------------------------------------------
    # Spans on one row must nest, and an arrow ends in the span around it on *its own*
    # row; requests that overlap (a server's handlers on one event loop, a worker's pull
    # while its push is out, queries waiting in a queue) therefore need rows of their
    # own. A row is named "<name> <i>" and reused once free, so the number of rows is the
    # most that were ever open at once, not the number of requests.

    def open_row(self, name: str) -> int:
        """A row of ``name``'s for one piece of work, its ``tid``, until :meth:`close_row`
        (for work whose row must be known before its span is written: an arrow start)."""
        with self._lock:
            rows = self._rows.setdefault(name, [])
            for r in rows:
                if not r["busy"]:
                    r["busy"] = True
                    return r["tid"]
            return self._new_row(name, rows, busy=True, end=0.0)

    def close_row(self, name: str, tid: int) -> None:
        with self._lock:
            for r in self._rows.get(name, []):
                if r["tid"] == tid:
                    r["busy"] = False

    def row_for(self, name: str, t0_us: float, t1_us: float) -> int:
        """A row of ``name``'s on which a span from ``t0_us`` to ``t1_us`` overlaps
        nothing (for a span written once it has ended: no row needs holding)."""
        with self._lock:
            rows = self._rows.setdefault(name, [])
            for r in rows:
                if not r["busy"] and r["end"] <= t0_us:
                    r["end"] = t1_us
                    return r["tid"]
            return self._new_row(name, rows, busy=False, end=t1_us)

    def _new_row(self, name: str, rows: list[dict[str, Any]], busy: bool, end: float) -> int:
        """(lock held)"""
        tid = ROW_TID + sum(len(r) for r in self._rows.values())
        rows.append({"tid": tid, "busy": busy, "end": end})
        self._keep({"ph": "M", "name": "thread_name", "pid": self.pid, "tid": tid,
                    "args": {"name": f"{name} {len(rows) - 1}"}})
        return tid

    def name_process(self, name: str, pid: int | None = None) -> None:
        self._add({"ph": "M", "name": "process_name", "pid": self.pid if pid is None else pid,
                   "tid": 0,
                   "args": {"name": name}})

    def name_thread(self, name: str, tid: int | None = None, pid: int | None = None) -> None:
        self._add({"ph": "M", "name": "thread_name", "pid": self.pid if pid is None else pid,
                   "tid": self._tid(tid), "args": {"name": name}})

    def complete(self, name: str, ts_us: float, dur_us: float, *, cat: str = "op",
                 tid: int | None = None, pid: int | None = None,
                 args: dict[str, Any] | None = None) -> None:
        """A span that started at ``ts_us`` and lasted ``dur_us`` microseconds."""
        ev = {"ph": "X", "name": name, "cat": cat, "ts": ts_us,
              "dur": dur_us if dur_us > 0 else 0.0,  # also NaN -> 0: JSON has no NaN
              "pid": self.pid if pid is None else pid, "tid": self._tid(tid)}
        if args:
            ev["args"] = args
        self._add(ev)

    @contextlib.contextmanager
    def span(self, name: str, *, cat: str = "op", tid: int | None = None,
             args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Time a block as a complete event; the yielded dict becomes the event's args."""
        extra: dict[str, Any] = dict(args or {})
        t0 = now_us()
        try:
            yield extra
        finally:
            self.complete(name, t0, now_us() - t0, cat=cat, tid=tid, args=extra)

    def counter(self, name: str, values: dict[str, float], ts_us: float | None = None,
                pid: int | None = None) -> None:
        self._add({"ph": "C", "name": name, "ts": now_us() if ts_us is None else ts_us,
                   "pid": self.pid if pid is None else pid, "tid": 0, "args": dict(values)})

    def flow(self, flow_id: int | str, *, start: bool, ts_us: float | None = None,
             name: str = "flow", cat: str = "flow", tid: int | None = None,
             pid: int | None = None) -> None:
        """One end of an arrow. Emit ``start=True`` inside the sending span and
        ``start=False`` inside the receiving one, with the same ``flow_id`` (ids are
        global across processes, so use e.g. a query id)."""
        ev = {"ph": "s" if start else "f", "id": flow_number(flow_id), "name": name, "cat": cat,
              "ts": now_us() if ts_us is None else ts_us, "pid": self.pid if pid is None else pid,
              "tid": self._tid(tid)}
        if not start:
            ev["bp"] = "e"  # bind to the enclosing slice, so the arrow lands on the span
        self._add(ev)

    def instant(self, name: str, ts_us: float | None = None, tid: int | None = None,
                args: dict[str, Any] | None = None) -> None:
        ev = {"ph": "i", "name": name, "s": "t", "ts": now_us() if ts_us is None else ts_us,
              "pid": self.pid, "tid": self._tid(tid)}
        if args:
            ev["args"] = args
        self._add(ev)

    def extend(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            if self.max_events is None:
                self.events.extend(events)
                return
            for ev in events:
                self._keep(ev)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            doc = {"traceEvents": list(self.events), "displayTimeUnit": "ms"}
            if self.dropped:  # say the trace is cut short (shown as trace metadata)
                doc["otherData"] = {"dropped_events": self.dropped,
                                    "max_events": self.max_events}
            return doc

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename), so a reader never sees half a trace."""
        return write_json_atomic(path, self.to_json())


def flow_number(flow_id: int | str) -> int:
    """A flow id as a number. Perfetto reads a *string* id as hexadecimal and drops the
    arrow when it does not parse ("q7", "w0-5-s1"); chrome://tracing runs in JavaScript,
    whose numbers are exact only below 2^53. So: small ints as they are, anything else
    hashed to 53 bits (both ends of an arrow hash the same name to the same number)."""
    if isinstance(flow_id, int) and 0 <= flow_id < 1 << 53:
        return flow_id
    digest = hashlib.blake2b(str(flow_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 53) - 1)


def _plain(x: Any) -> Any:
    """JSON for numpy scalars and arrays that end up in span args."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def strict_json(o: Any) -> Any:
    """``o`` as standard JSON values: numpy scalars and arrays as Python's, and an
    infinite or NaN number as null (``json.dumps`` would write ``Infinity``, which
    JSON parsers other than Python's refuse)."""
    if isinstance(o, dict):
        return {k: strict_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [strict_json(v) for v in o]
    if type(o).__module__ == "numpy":
        o = o.tolist() if hasattr(o, "tolist") else str(o)
        return strict_json(o) if isinstance(o, list) else _strict_scalar(o)
    return _strict_scalar(o)


def _strict_scalar(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, (str, int, bool)):
        return o
    return str(o)


def write_json_atomic(path: str | os.PathLike, doc: Any, durable: bool = False) -> Path:
    """Write ``doc`` to a temporary file and rename it over ``path``: a reader sees the
    old file or the new one, never half of one. ``durable`` also fsyncs the file before
    the rename and the directory after it, so the new file survives a crash (a
    checkpoint's manifest, before the files it replaces are deleted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        try:  # standard JSON: JSON.parse (Perfetto, chrome://tracing) refuses NaN
            text = json.dumps(doc, default=_plain, allow_nan=False)
        except ValueError:  # a NaN or inf somewhere (a diverged loss): null, as bench
            text = json.dumps(strict_json(doc), default=_plain, allow_nan=False)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and traces are for others
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # never leave a half-written temporary behind
        raise
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in directory ``path`` durable (POSIX keeps names in the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Events of a trace file (either the object form or the bare-array form)."""
    with open(path) as f:
        doc = json.load(f)
    return doc["traceEvents"] if isinstance(doc, dict) else doc


def row_problems(events: list[dict[str, Any]], eps_us: float = 1e-3) -> list[str]:
    """What a viewer would mis-draw or drop in ``events``: complete spans on one row
    (``pid``, ``tid``) that overlap without nesting (the format has no way to show
    them; Perfetto flags them), and arrow ends outside every span of their own row (an
    ``"s"``, or an ``"f"`` bound with ``bp: "e"``, attaches to the span around it on its
    row, and Perfetto drops an arrow whose end has none). Empty when the trace is clean."""
    rows: dict[tuple[Any, Any], list[tuple[float, float]]] = {}
    for e in events:
        if e.get("ph") == "X":
            rows.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    out = []
    for row, spans in rows.items():
        spans.sort(key=lambda x: (x[0], -x[1]))
        stack: list[tuple[float, float]] = []
        for b, e in spans:
            while stack and stack[-1][1] <= b + eps_us:
                stack.pop()
            if stack and e > stack[-1][1] + eps_us:
                out.append(f"row {row}: span [{b}, {e}] overlaps [{stack[-1][0]}, "
                           f"{stack[-1][1]}] without nesting")
            stack.append((b, e))
    for e in events:
        if e.get("ph") == "s" or (e.get("ph") == "f" and e.get("bp") == "e"):
            spans = rows.get((e["pid"], e["tid"]), [])
            if not any(b - eps_us <= e["ts"] <= end + eps_us for b, end in spans):
                out.append(f"row {(e['pid'], e['tid'])}: arrow end {e['ph']} {e['id']} at "
                           f"{e['ts']} lies in no span of its row")
    return out


def merge(paths: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Merge trace files written by several processes into one (same clock, see above)."""
    events: list[dict[str, Any]] = []
    for p in paths:
        events.extend(load(p))
    return write_json_atomic(out, {"traceEvents": events, "displayTimeUnit": "ms"})


@contextlib.contextmanager
def torch_profile(writer: TraceWriter, *, pid: int | None = None,
                  label: str = "torch") -> Iterator[Any]:
    """Run a block under ``torch.profiler`` and merge its trace into ``writer``.

    The profiler's events keep their own process row (renamed ``label``); their
    timestamps are shifted so that the first profiler event lines up with the moment
    the block started on our clock (Kineto's clock is not guaranteed to be ours).
    """
    import torch.profiler as tp

    activities = [tp.ProfilerActivity.CPU]
    import torch

    if torch.cuda.is_available():
        activities.append(tp.ProfilerActivity.CUDA)
    t0 = now_us()
    with tp.profile(activities=activities) as prof:
        yield prof
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "torch.json"
        prof.export_chrome_trace(str(path))
        events = [e for e in load(path) if isinstance(e, dict) and "ph" in e]
    stamped = [e for e in events if isinstance(e.get("ts"), (int, float))]
    shift = t0 - min(e["ts"] for e in stamped) if stamped else 0.0
    row = pid if pid is not None else writer.pid + 1_000_000
    for e in events:
        if isinstance(e.get("ts"), (int, float)):
            e["ts"] = e["ts"] + shift
        e["pid"] = row
    writer.extend(events)
    writer.name_process(label, pid=row)
