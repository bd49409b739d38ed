"""Run one job on a cluster, and watch it: progress, faults, a monitor, the summary.

:func:`launch` starts a :class:`~systems.minips.cluster.Cluster` (scheduler, servers,
workers as OS processes), shows a progress bar, fires the faults it is given (kill or
freeze a node at a time), runs a *monitor* that pulls the whole model every
``eval_every_s`` seconds to record the objective or accuracy over time, audits the
acknowledged pushes, and sums up what every node counted. With ``--role`` the CLI
starts a single role against a given scheduler address, which is how the same code runs
across machines (bind ``--host`` to a reachable address there).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import message as M
from .apps import make_app
from .apps.count import audit_check, audit_size, tally_size
from .checkpoint import resume_clock
from .cluster import Cluster, ClusterSpec


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


def check_resumable(spec: ClusterSpec) -> None:
    """What a resumed job cannot do, said before the key-space check of
    ``checkpoint.resume_clock`` blames the app or the model size for it."""
    if spec.audit:
        raise ValueError("--audit cannot check a resumed job: its counters' key region is "
                         "sized by --steps, which a resumed job raises, so the checkpoint's "
                         "key space no longer fits; resume without --audit (the count "
                         "app's tally, with its own steps, still checks every minibatch)")


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
        check_resumable(spec)
        spec = replace(spec, start_clock=resume_clock(restore, spec.steps, spec.workers,
                                                      spec.config(None)["key_max"]))
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
                    thaw = threading.Timer(f.get("for", 2.0), cl.signal,
                                           (f["freeze"], signal.SIGCONT))
                    # a freeze that outlasts the job must not hold the launcher's exit
                    # (stopping the cluster wakes a stopped process before it ends it)
                    thaw.daemon = True
                    thaw.start()
                    stack.callback(thaw.cancel)

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
            raise RuntimeError(f"worker(s) {crashed} crashed (every node's log is in "
                               f"{cl.run_dir}/logs); the end of {crashed[0]}'s log:\n"
                               f"{cl.group.children[crashed[0]].log_tail()}")
        left = {int(s): p for s, p in cl.status()["progress"].items() if p < spec.steps}
        if left:  # every worker that could have finished them was killed
            raise RuntimeError(f"the job did not finish: shard(s) {sorted(left)} stopped at "
                               f"step(s) {[left[s] for s in sorted(left)]} of {spec.steps}, "
                               f"and no worker is left to run them (killed: "
                               f"{sorted(killed)})")
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
    curve = before[-1:] + [c for c in curve if c["t"] > start]
    # Training ends at the last worker's last push; the workers then wait for the job's
    # end, report and exit, while the monitor goes on sampling a model that no longer
    # changes. Those samples would draw a plateau that is not training, so the curve
    # ends at the last push, with the value of the last sample (taken after every push
    # was acknowledged: the final model).
    ends = [r["last_step_at"] for r in workers.values() if r.get("last_step_at")]
    end = max(ends) if ends else None
    if end is not None and len(curve) > 1 and curve[-1]["t"] > end > start:
        curve = [c for c in curve[:-1] if c["t"] < end] + [{**curve[-1], "t": end}]
    curve = [{**c, "t": max(c["t"] - start, 0.0)} for c in curve]
    return {
        "train_s": end - start if end is not None and end > start else None,
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
