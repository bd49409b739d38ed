"""A running cluster: the spec of a job, and the processes that run it.

ps-lite starts its roles with ``tracker/dmlc_local.py`` (environment variables tell a
process its role and the scheduler's address); we start each role with exec of
``python -m systems.minips.<role>`` through :class:`common.procs.ProcessGroup` (spawn,
never fork after gRPC is up), in order: the scheduler, whose READY line carries its
port; the servers, which register and form the first ring; the workers.

:class:`Cluster` is the programmable form: tests and benchmarks kill, freeze, add and
inspect nodes through it. :func:`systems.minips.launcher.launch` runs one job on it end
to end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from common import rpc
from common.procs import ProcessGroup
from common.trace import merge

from . import message as M
from .apps import describe
from .apps.count import audit_size
from .checkpoint import check_fits, checkpoint, load
from .consistency import Consistency
from .kv import KVWorker
from .metrics import load_all


@dataclass
class ClusterSpec:
    """Everything that defines a job (the ``casebook ps launch`` flags)."""

    servers: int = 2
    workers: int = 2
    app: dict[str, Any] = field(default_factory=lambda: {"name": "count"})
    consistency: str = "bsp"
    replication: int = 1
    vnodes: int = 4
    steps: int = 20  # per data shard (one shard per worker)
    audit: int = 0  # audit keys per push (0: no audit)
    hb_interval: float = 0.1
    hb_timeout: float = 1.0
    worker_timeout: float = 3.0
    # how long a client resends a request while the scheduler is silent before it fails
    # the request (no new ring can come); None: 10 heartbeat timeouts
    give_up_s: float | None = None
    step_sleep_s: float = 0.0
    start_clock: int = 0  # resuming from a checkpoint taken after this many clocks
    straggler: dict[str, Any] | None = None
    host: str = rpc.LOOPBACK
    val_len: int = 1
    updater: dict[str, Any] | None = None  # overrides the app's (tests use plain SGD)
    key_max: int | None = None  # overrides the app's key space (tests of the KV API)

    def config(self, run_dir: str | None) -> dict[str, Any]:
        Consistency.parse(self.consistency)  # fail early on a typo
        if self.servers < 1 or self.workers < 0:
            raise ValueError(f"a job needs at least one server (got {self.servers}) and "
                             f"no negative number of workers (got {self.workers})")
        if self.give_up_s is not None and not self.give_up_s > 0:
            raise ValueError(f"give_up_s must be above 0 (or None: 10 heartbeat "
                             f"timeouts), got {self.give_up_s}")
        if self.audit < 0 or self.vnodes < 1 or self.step_sleep_s < 0:
            raise ValueError(f"audit ({self.audit}) must be >= 0, vnodes ({self.vnodes}) "
                             f">= 1 and step_sleep_s ({self.step_sleep_s}) >= 0")
        one_value = self.app.get("name") != "count" or self.audit or self.app.get("tally")
        if self.val_len != 1 and one_value:  # they push one number per key
            raise ValueError(f"val_len {self.val_len}: the {self.app.get('name')} app, the "
                             f"audit and the tally push one value per key; val_len 1 only "
                             f"(the KV API itself takes any)")
        if not 1 <= self.replication <= self.servers:
            raise ValueError(f"replication {self.replication} must be 1..{self.servers} "
                             f"(each copy of a range lives on a different server)")
        app = describe(self.app)
        if self.key_max:
            app["key_max"] = self.key_max
        key_max, regions, audit = app["key_max"], [], None
        if self.audit:
            audit = {"base": key_max, "workers": self.workers, "per_push": self.audit,
                     "clocks": 2 * self.steps * self.workers}
            regions = [(key_max, key_max + audit_size(audit), {"name": "sum"})]
            key_max += audit_size(audit)
        if key_max > 1 << 64:  # refused here, not in a server's traceback
            raise ValueError(f"the key space ({key_max} keys, with the audit's) exceeds "
                             f"2**64: keys are uint64")
        return {"key_max": max(key_max, 1), "val_len": self.val_len, "vnodes": self.vnodes,
                "replication": self.replication, "num_servers": self.servers,
                "num_workers": self.workers, "steps": self.steps,
                "hb_interval": self.hb_interval, "hb_timeout": self.hb_timeout,
                "worker_timeout": self.worker_timeout,
                "give_up_s": 10 * self.hb_timeout if self.give_up_s is None
                else self.give_up_s,
                "updater": self.updater or app["updater"],
                "regions": regions, "audit": audit, "app": self.app,
                "app_key_max": app["key_max"], "consistency": self.consistency,
                "step_sleep_s": self.step_sleep_s, "straggler": self.straggler,
                "start_clock": self.start_clock,
                "run_dir": run_dir}


class Cluster:
    """A running cluster; a context manager that always stops every process."""

    def __init__(self, spec: ClusterSpec, run_dir: str | Path | None = None):
        self.spec = spec
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="minips-run-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.group = ProcessGroup(self.run_dir / "logs")
        self.config = spec.config(str(self.run_dir))
        self.sched_addr = ""
        self._clients: list[KVWorker] = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, workers: bool = True, restore: str | Path | None = None,
              servers: bool = True) -> Cluster:
        """Scheduler, then the servers (from checkpoint ``restore`` if given), then the
        workers (unless ``workers=False``: tests drive in-process workers instead;
        ``servers=False``: the caller starts them, with :meth:`add_server`)."""
        if restore:  # refuse a checkpoint that does not fit before any process starts
            self.config["restored_clocks"] = check_fits(
                load(restore), restore, self.config["key_max"], self.config["val_len"])
        ch = self.group.spawn("scheduler", "systems.minips.scheduler",
                              ["--config", json.dumps(self.config), "--host", self.spec.host])
        self.sched_addr = ch.info["addr"]
        names = [f"s{i}" for i in range(self.spec.servers if servers else 0)]
        kids = [self._spawn_server(n, wait=False, restore=restore) for n in names]
        for k in kids:
            self.group.wait_ready(k, 60)
        if workers:
            self.start_workers()
        return self

    def _spawn_server(self, name: str, wait: bool = True, host: str | None = None,
                      netns: str | None = None, restore: str | None = None):
        args = ["--name", name, "--scheduler", self.sched_addr, "--host",
                host or self.spec.host, "--run-dir", str(self.run_dir)]
        if netns:
            args += ["--netns", netns]
        if restore:
            args += ["--restore", str(restore)]
        return self.group.spawn(name, "systems.minips.server", args, wait_ready=wait)

    def add_server(self, name: str, host: str | None = None, netns: str | None = None,
                   restore: str | None = None):
        """Start a server; after the first ring it joins at run time (with pre-copy)."""
        return self._spawn_server(name, True, host, netns, restore)

    def start_workers(self, wait: bool = True) -> list:
        kids = [self.group.spawn(f"w{i}", "systems.minips.worker",
                                 ["--name", f"w{i}", "--scheduler", self.sched_addr,
                                  "--run-dir", str(self.run_dir)], wait_ready=False)
                for i in range(self.spec.workers)]
        if wait:
            self.wait_started(kids)
        return kids

    def wait_started(self, kids: list) -> None:
        for k in kids:
            self.group.wait_ready(k, 120)

    def client(self, name: str = "client", filters: list | None = None) -> KVWorker:
        """A KVWorker for the test or monitor itself (role ``client``: no clock)."""
        kv = KVWorker(self.sched_addr, name, role="client", filters=filters)
        self._clients.append(kv)
        return kv

    def _sched(self, method: str, meta: dict | None = None, timeout: float = 10.0) -> dict:
        ch = rpc.channel(self.sched_addr)
        try:
            out = rpc.method(ch, M.SCHEDULER_SERVICE, method)(M.encode(meta or {}),
                                                              timeout=timeout)
        except grpc.RpcError:
            self._raise_if_scheduler_died()
            raise
        finally:
            ch.close()
        return M.decode(out)[0]

    def _raise_if_scheduler_died(self) -> None:
        """Say so when the scheduler process is gone, rather than gRPC's UNAVAILABLE.

        The job cannot go on: only the scheduler knows membership, progress and the end
        of the job. The paper makes its server manager reliable by replication (Paxos);
        minips runs one process (docs/minips/exercises.md, exercise 5)."""
        sched = self.group.children.get("scheduler")
        if sched is None:  # roles started one by one: not ours to watch
            return
        try:  # a refused connection comes as the process exits; let it be reaped
            code = sched.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return
        raise RuntimeError(f"the scheduler died (exit code {code}), and a job cannot go on "
                           f"without it: it alone tracks membership, progress and the end "
                           f"of the job (its log: {sched.log_path})") from None

    def status(self) -> dict[str, Any]:
        return self._sched("Status")

    def control(self, server: str, timeout: float = 10.0, **meta: Any) -> dict:
        """Send a ``Control`` RPC to a server (crash injection, checkpoint, metrics)."""
        addr = self.group.children[server].info["addr"]
        ch = rpc.channel(addr)
        try:
            out = rpc.method(ch, M.SERVICE, "Control")(M.encode(meta), timeout=timeout)
        finally:
            ch.close()
        return M.decode(out)[0]

    def signal(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.group.children[name].signal(sig)

    def alive(self, name: str) -> bool:
        return self.group.children[name].alive()

    def wait_ring(self, pred, timeout: float = 10.0) -> dict:
        """Poll the scheduler until ``pred(status)`` holds; returns that status."""
        t_end = time.monotonic() + timeout
        while True:
            st = self.status()
            if pred(st):
                return st
            if time.monotonic() > t_end:
                raise TimeoutError(f"cluster did not reach the expected state in {timeout} s:"
                                   f" epoch {st['epoch']}, servers {st['servers']}")
            time.sleep(0.05)

    def wait_workers(self, timeout: float = 300.0, on_tick=None) -> None:
        t_end = time.monotonic() + timeout
        names = [f"w{i}" for i in range(self.spec.workers)]
        while any(self.alive(n) for n in names):
            if time.monotonic() > t_end:
                raise TimeoutError(f"workers still running after {timeout} s; see "
                                   f"{self.run_dir / 'logs'}")
            if on_tick:
                on_tick()
            time.sleep(0.1)

    def stop_job(self, timeout: float = 60.0) -> None:
        """End the job early (workers report and exit) and wait for the workers."""
        self._sched("Stop")
        self.wait_workers(timeout)

    def checkpoint(self, ckpt_dir: str | Path) -> Path:
        return checkpoint(self.status(), ckpt_dir, status=self.status)

    def shutdown(self) -> None:
        """Ask every node to save its metrics and trace, then stop the processes."""
        try:
            self._sched("Shutdown")
            t_end = time.monotonic() + 5
            while time.monotonic() < t_end and any(
                    c.alive() for n, c in self.group.children.items() if n.startswith("s")):
                time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the scheduler may be gone already
            pass
        self.close()

    def close(self) -> None:
        for kv in self._clients:
            kv.close()
        self._clients.clear()
        self.group.stop_all()

    def collect(self) -> dict[str, Any]:
        """Reports, per-node metrics and the merged Chrome trace of a finished run."""
        reports = {}
        for p in sorted(self.run_dir.glob("report-*.json")):
            r = json.loads(p.read_text())
            reports[r["name"]] = r
        metrics = load_all(self.run_dir)
        traces = sorted(self.run_dir.glob("trace-*.json"))
        trace = merge(traces, self.run_dir / "trace.json") if traces else None
        return {"reports": reports, "metrics": metrics, "trace": str(trace) if trace else None}
