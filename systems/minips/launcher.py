"""Start a whole cluster (scheduler, servers, workers) as OS processes, and watch it.

ps-lite starts its roles with ``tracker/dmlc_local.py`` (environment variables tell a
process its role and the scheduler's address); we start each role with exec of
``python -m systems.minips.<role>`` through :class:`common.procs.ProcessGroup` (spawn,
never fork after gRPC is up), in order: the scheduler, whose READY line carries its
port; the servers, which register and form the first ring; the workers.

:class:`Cluster` is the programmable form (tests and benchmarks kill, freeze, add and
inspect nodes through it); :func:`launch` runs one job end to end, with a progress bar,
a *monitor* that pulls the whole model every ``eval_every_s`` seconds to record the
objective or accuracy over time, and a summary of what every node counted. With
``--role`` the CLI starts a single role against a given scheduler address, which is how
the same code runs across machines (bind ``--host`` to a reachable address there).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from common import rpc
from common.procs import ProcessGroup
from common.trace import merge

from . import message as M
from .apps import describe, make_app
from .apps.count import audit_check, audit_size, tally_size
from .checkpoint import checkpoint, resume_clock
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
        return {"key_max": max(key_max, 1), "val_len": self.val_len, "vnodes": self.vnodes,
                "replication": self.replication, "num_servers": self.servers,
                "num_workers": self.workers, "steps": self.steps,
                "hb_interval": self.hb_interval, "hb_timeout": self.hb_timeout,
                "worker_timeout": self.worker_timeout,
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

    def start(self, workers: bool = True, restore: str | Path | None = None) -> Cluster:
        """Scheduler, then the servers (from checkpoint ``restore`` if given), then the
        workers (unless ``workers=False``: tests drive in-process workers instead)."""
        ch = self.group.spawn("scheduler", "systems.minips.scheduler",
                              ["--config", json.dumps(self.config), "--host", self.spec.host])
        self.sched_addr = ch.info["addr"]
        names = [f"s{i}" for i in range(self.spec.servers)]
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


class Monitor:
    """Pulls the whole model every ``every_s`` seconds and evaluates it (a client, so
    it never holds back a consistency barrier)."""

    def __init__(self, cluster: Cluster, every_s: float):
        self.cluster, self.every_s = cluster, every_s
        self.curve: list[dict[str, float]] = []
        self.stop = threading.Event()
        self.app = make_app(cluster.config["app"], cluster.config["num_workers"], monitor=True)
        self.kv = cluster.client("monitor")
        self.thread = threading.Thread(target=self._run, daemon=True, name="minips-monitor")

    def sample(self) -> dict[str, float]:
        hi = max(self.cluster.config["app_key_max"], 1)
        keys, vals = self.kv.wait(self.kv.pull_range(0, hi), timeout=60)
        m = {"t": time.monotonic(), **self.app.evaluate(keys, vals)}
        self.curve.append(m)
        return m

    def close(self, timeout: float | None = None) -> None:
        """Stop sampling; wait for a sample in flight (up to ``timeout``: an error path
        need not wait out a pull of up to 60 s on a stalled cluster; the thread ends
        by itself after that sample)."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        """Sample at once, then every ``every_s``: the curve starts from the last sample
        before training starts (the ``init`` barrier), so the first must not wait a
        period (a busy machine let the workers reach the barrier first, and the curve
        then began 0.33 s into training)."""
        while True:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failover in progress; try next tick
                pass
            if self.stop.wait(self.every_s):
                return


def launch(spec: ClusterSpec, run_dir: str | Path | None = None,
           eval_every_s: float | None = 1.0,
           faults: list[dict] | None = None, progress: bool = True,
           ckpt_dir: str | Path | None = None, timeout: float = 600.0,
           restore: str | Path | None = None) -> dict[str, Any]:
    """Run one job to completion; returns the summary (see :func:`summarize`).

    ``faults`` are ``{"at": seconds, "kill": "s1"}``, ``{"at": s, "freeze": "s1",
    "for": s}`` or ``{"at": s, "kill": "w1"}``, timed from the start of training.
    ``restore``: a checkpoint written at the end of an earlier job (``ckpt_dir``); the
    servers start from it and the workers go on from the clock where it stopped, up to
    ``spec.steps`` in all.
    """
    from tqdm import tqdm

    faults = sorted(faults or [], key=lambda f: f["at"])
    if restore:
        spec = replace(spec, start_clock=resume_clock(restore, spec.steps))
    with Cluster(spec, run_dir) as cl, contextlib.ExitStack() as stack:
        cl.start(workers=False, restore=restore)
        kids = cl.start_workers(wait=False)  # they import torch meanwhile
        mon = (Monitor(cl, eval_every_s) if spec.app["name"] != "count" and eval_every_s
               else None)
        if mon:
            mon.thread.start()
            # however the job ends (a crashed worker, a timeout, ^C), the monitor stops
            # with it: it would poll the closed cluster for as long as this process lives
            stack.callback(mon.close, 1.0)
        cl.wait_started(kids)
        total = spec.steps * spec.workers
        bar = tqdm(total=total, desc=f"minips {spec.app['name']} {spec.consistency}",
                   unit="step", disable=not progress)
        t0, fired = time.perf_counter(), []

        def tick() -> None:
            st = cl.status()
            bar.n = sum(min(v, spec.steps) for v in st["progress"].values())
            if mon and mon.curve:
                bar.set_postfix({k: round(v, 4) for k, v in mon.curve[-1].items()
                                 if k in ("objective", "accuracy", "sum")})
            bar.refresh()
            now = time.perf_counter() - t0
            while faults and faults[0]["at"] <= now:
                f = faults.pop(0)
                fired.append({**f, "t_mono": time.monotonic()})
                if "kill" in f:
                    cl.signal(f["kill"], signal.SIGKILL)
                elif "freeze" in f:
                    cl.signal(f["freeze"], signal.SIGSTOP)
                    threading.Timer(f.get("for", 2.0), cl.signal,
                                    (f["freeze"], signal.SIGCONT)).start()

        cl.wait_workers(timeout, on_tick=tick)
        bar.n = total
        bar.close()
        failure = cl.status().get("failure")
        if failure:  # the scheduler ended the job: data was lost (see Scheduler.fail)
            raise RuntimeError(f"the job failed: {failure}")
        killed = {f["kill"] for f in fired if "kill" in f}
        crashed = [n for n in (f"w{i}" for i in range(spec.workers)) if n not in killed
                   and cl.group.children[n].popen.returncode != 0]
        if crashed:  # a job whose workers died is not a result: say so, loudly
            raise RuntimeError(f"worker(s) {crashed} crashed; the end of "
                               f"{crashed[0]}'s log:\n{cl.group.children[crashed[0]].log_tail()}")
        with failure_named(cl):  # reads after the end; the job may fail meanwhile
            if mon:
                mon.close()
                mon.sample()
            status = cl.status()
            audit = None
            if spec.audit:
                audit = audit_run(cl, status)
            tally = read_tally(cl) if spec.app.get("tally") else None
            if ckpt_dir:
                cl.checkpoint(ckpt_dir)
        cl.shutdown()
        out = summarize(cl, status, mon.curve if mon else [], audit)
        start = status["barriers"].get("init", time.monotonic())
        out["faults"] = [{**f, "t": f.pop("t_mono") - start} for f in fired]
        out["faults_not_fired"] = faults  # due after the workers had finished
        out["wall_s"] = time.perf_counter() - t0
        if tally is not None:
            out["tally"] = tally
        return out


@contextlib.contextmanager
def failure_named(cl: Cluster):
    """Report a job the scheduler failed while we read its results as that failure.

    The launcher checks for a failure once the workers are done, and then reads: the
    monitor's last sample, the audit, the tally. A server that died after the workers'
    last push is declared dead only after a heartbeat timeout, so that check can pass
    and a read then fail with the scheduler's reason as a bare ``UNAVAILABLE`` (3 runs
    in 10 of a sparse-LR job that lost its only copy). Same cause, same words."""
    try:
        yield
    except M.PSError:
        failure = cl.status().get("failure")
        if failure:
            raise RuntimeError(f"the job failed: {failure}") from None
        raise


def audit_run(cl: Cluster, status: dict) -> dict[str, int]:
    """Read the audit region and check it against the workers' acknowledged clocks."""
    cfg = cl.config["audit"]
    kv = cl.client("auditor")
    keys, vals = kv.wait(kv.pull_range(cfg["base"], cfg["base"] + audit_size(cfg)), timeout=60)
    reports = status["reports"]
    acked = {int(n[1:]): r["acked"] for n, r in reports.items()}
    return audit_check(cfg, keys, vals, acked, set(acked))


def read_tally(cl: Cluster) -> list[list[int]]:
    """The count app's minibatch tally: how often each (shard, step) was applied."""
    shards, steps = tally_size(cl.spec.app)
    kv = cl.client("tallier")
    keys, vals = kv.wait(kv.pull_range(0, shards * steps), timeout=60)
    counts = np.zeros(shards * steps, np.int64)
    counts[keys.astype(np.int64)] = np.rint(vals.reshape(-1)).astype(np.int64)
    return counts.reshape(shards, steps).tolist()


def summarize(cl: Cluster, status: dict, curve: list, audit: dict | None) -> dict[str, Any]:
    col = cl.collect()
    reports, metrics = col["reports"] or status["reports"], col["metrics"]
    per_node = {n: {k: m.get(k, 0) for k in ("push_requests", "pull_requests", "bytes_sent",
                                             "bytes_received", "consistency_wait_s",
                                             "consistency_held_s", "wait_s", "resends",
                                             "cpu_s", "forwards")}
                for n, m in metrics.items()}
    workers = {n: r for n, r in reports.items()}
    wire = sum(m.get("bytes_sent", 0) for n, m in metrics.items() if n.startswith("w"))
    wire += sum(m.get("bytes_received", 0) for n, m in metrics.items() if n.startswith("w"))
    start = status["barriers"].get("init", curve[0]["t"] if curve else 0.0)
    before = [c for c in curve if c["t"] <= start]
    curve = [{**c, "t": max(c["t"] - start, 0.0)} for c in before[-1:] + [
        c for c in curve if c["t"] > start]]
    return {
        "spec": asdict(cl.spec), "run_dir": str(cl.run_dir), "trace": col["trace"],
        "curve": curve, "final": curve[-1] if curve else {},
        "events": status["events"], "epoch": status["epoch"],
        "per_node": per_node, "worker_bytes": wire, "audit": audit,
        "idle_fraction": {n: r["idle_fraction"] for n, r in workers.items()},
        "step_s": {n: r["step_s"] for n, r in workers.items()},
        "clocks": {n: r["clocks"] for n, r in workers.items()},
        "filters": {n: r["filters"] for n, r in workers.items()},
        "max_recovery_s": max((m.get("max_recovery_s", 0.0) for m in metrics.values()),
                              default=0.0),
        "losses": {n: [float(np.round(t[4], 5)) for t in r["timeline"]]
                   for n, r in workers.items()},
    }
