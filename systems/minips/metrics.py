"""Per-node observability: counters, Prometheus text, and a Chrome trace.

Every node (scheduler, server, worker) counts what the paper's evaluation is about:
push and pull requests, bytes on the wire (the message sizes actually sent and
received), seconds spent waiting on consistency (pulls held by a dependency), dropped
duplicates, retries, and the bytes each filter saved. A node exports them as a JSON
snapshot (the ``Metrics`` RPC and the file it writes on exit) and in the Prometheus
text format (``prometheus_client``), and records spans (each push and pull, each
forward to a replica) in a :class:`common.trace.TraceWriter`; the launcher merges the
nodes' traces into one file for chrome://tracing or Perfetto, aligned on the machine's
monotonic clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.trace import LONG_RUN_MAX_EVENTS, TraceWriter, write_json_atomic


class NodeMetrics:
    def __init__(self, node: str, role: str, trace: bool = True):
        self.node, self.role = node, role
        self.counters: dict[str, float] = defaultdict(float)
        self.extra: dict[str, Any] = {}
        self._lock = threading.Lock()
        # bounded: a long run must not grow a node's memory without end
        self.trace = (TraceWriter(process_name=f"{role} {node}", max_events=LONG_RUN_MAX_EVENTS)
                      if trace else None)
        self.cpu0: float | None = None  # process CPU time when the node's real work began

    def start_cpu_clock(self) -> None:
        """Count this process's CPU (all threads) from now on, as ``cpu_s`` in the
        snapshot: start-up (imports, data generation) is then left out, and a benchmark
        can add the nodes' CPU per training clock and compare it with the cores there are."""
        if self.cpu0 is None:
            self.cpu0 = time.process_time()

    def inc(self, name: str, value: float = 1.0) -> None:
        with self._lock:
            self.counters[name] += value

    def wire(self, sent: int = 0, received: int = 0) -> None:
        """Count one message's bytes on the wire."""
        with self._lock:
            self.counters["bytes_sent"] += sent
            self.counters["bytes_received"] += received

    def open_lane(self) -> int | None:
        """A trace row for one request, until :meth:`close_lane` (``TraceWriter.open_row``:
        a worker's pull overlaps its push, a server's handlers interleave on one event
        loop, and spans on one row must nest, with each arrow end inside one)."""
        return None if self.trace is None else self.trace.open_row("requests")

    def close_lane(self, lane: int | None) -> None:
        if lane is not None and self.trace is not None:
            self.trace.close_row("requests", lane)

    @contextlib.contextmanager
    def lane(self) -> Iterator[int | None]:
        lane = self.open_lane()
        try:
            yield lane
        finally:
            self.close_lane(lane)

    def span(self, name: str, t0_us: float, dur_us: float, lane: int | None = None,
             **args: Any) -> None:
        if self.trace is not None:
            self.trace.complete(name, t0_us, dur_us, cat=self.role, tid=lane,
                                args=args or None)

    def flow(self, flow_id: str, start: bool, ts_us: float, lane: int | None = None) -> None:
        if self.trace is not None:
            self.trace.flow(flow_id, start=start, ts_us=ts_us, tid=lane)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            cpu = {} if self.cpu0 is None else {"cpu_s": time.process_time() - self.cpu0}
            return {"node": self.node, "role": self.role, "pid": os.getpid(),
                    **{k: v for k, v in sorted(self.counters.items())}, **cpu, **self.extra}

    def prometheus(self) -> str:
        """The counters in the Prometheus text exposition format."""
        from prometheus_client import CollectorRegistry, Gauge, generate_latest

        reg = CollectorRegistry()
        snap = self.snapshot()
        for k, v in snap.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "pid":
                g = Gauge(f"minips_{k}", f"minips {k}", ["node", "role"], registry=reg)
                g.labels(self.node, self.role).set(v)
        return generate_latest(reg).decode()

    def save(self, out_dir: str | os.PathLike | None) -> None:
        """Write ``metrics-<node>.json``, ``.prom`` and ``trace-<node>.json`` atomically."""
        if not out_dir:
            return
        d = Path(out_dir)
        write_json_atomic(d / f"metrics-{self.node}.json", self.snapshot())
        tmp = d / f".metrics-{self.node}.prom"
        tmp.write_text(self.prometheus())
        os.replace(tmp, d / f"metrics-{self.node}.prom")
        if self.trace is not None:
            self.trace.save(d / f"trace-{self.node}.json")


def load_all(run_dir: str | os.PathLike) -> dict[str, dict]:
    """Every node's saved metrics in a run directory, by node name."""
    out = {}
    for p in sorted(Path(run_dir).glob("metrics-*.json")):
        doc = json.loads(p.read_text())
        out[doc["node"]] = doc
    return out
