"""Whole-job runs behind the consistency and fault benchmarks (see :mod:`.bench`).

* :func:`run_to_target`: train sparse LR under one consistency model until the objective
  is within 1% of the single-process optimum (the monitor pulls the whole model every
  50 ms and evaluates it on the full dataset), then stop the job; returns the time it
  took, the objective over time, the workers' idle fraction (the share of their wall time
  their pulls were held by a server waiting for the consistency dependency) and their
  blocked fraction (all time blocked in pulls: also the network and the servers' work);
* :func:`fault_sweep`: the crash-point sweep of the fault tests over many seeds (kill -9
  at each injected point, restart, rejoin), audited push by push.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .apps.sparse_lr import optimum
from .cluster import Cluster, ClusterSpec
from .control import CRASH_POINTS
from .launcher import Monitor, audit_run
from .metrics import load_all

CONSISTENCY_APP = {"name": "sparse_lr", "features": 1 << 16, "examples": 8192, "nnz": 24,
                   "batch": 256, "lam": 5e-3, "lr": 0.1}
STEP_SLEEP_S = 0.02
TARGET = 1.01


def consistency_runs(quick: bool) -> dict[str, tuple[str, str]]:
    """label -> (consistency model, straggler mode)."""
    if quick:
        models = {"persistent": ["bsp", "ssp:4", "ssp:16"], "rotating": ["bsp", "ssp:4", "ssp:16"],
                  "none": ["bsp", "ssp:4"]}
    else:
        models = {"persistent": ["bsp", "ssp:1", "ssp:4", "ssp:16", "asp"],
                  "rotating": ["bsp", "ssp:4", "ssp:16"], "none": ["bsp", "ssp:4"]}
    return {f"{m}, {mode}": (m, mode) for mode, ms in models.items() for m in ms}


def run_to_target(model: str, straggler: str, max_s: float, opt: float | None = None
                  ) -> dict[str, Any]:
    opt = opt if opt is not None else optimum(CONSISTENCY_APP, iters=400)
    st = {"none": None, "persistent": {"mode": "persistent", "rank": 0, "factor": 4.0},
          "rotating": {"mode": "rotating", "factor": 4.0, "seed": 0}}[straggler]
    spec = ClusterSpec(servers=2, workers=4, steps=100_000, app=CONSISTENCY_APP,
                       consistency=model, step_sleep_s=STEP_SLEEP_S, straggler=st)
    with Cluster(spec) as cl:
        cl.start(workers=False)
        kids = cl.start_workers(wait=False)
        mon = Monitor(cl, 0.05)
        cl.wait_started(kids)
        t_end = time.monotonic() + max_s + 10
        reached = None
        while time.monotonic() < t_end:
            m = mon.sample()
            start = cl.status()["barriers"].get("init")
            if start is not None and m["objective"] <= TARGET * opt:
                reached = m["t"] - start
                break
            if start is not None and m["t"] - start > max_s:
                break
            time.sleep(0.03)
        status = cl.status()
        cl.stop_job()
        start = status["barriers"].get("init", mon.curve[0]["t"])
        cl.shutdown()
        reports = cl.collect()["reports"]
    curve = [{**c, "t": c["t"] - start} for c in mon.curve if c["t"] >= start - 0.06]
    idle = float(np.mean([r["idle_fraction"] for r in reports.values()])) if reports else 1.0
    blocked = (float(np.mean([r["blocked_fraction"] for r in reports.values()]))
               if reports else 1.0)
    return {"t_target": reached if reached is not None else float("nan"), "curve": curve,
            "opt": opt, "idle": idle, "blocked": blocked,
            "clocks": {n: r["clocks"] for n, r in reports.items()}}


def fault_sweep(seeds, **spec: Any) -> dict[str, Any]:
    """kill -9 at every crash point, in a seeded order, for each seed; audit every push.
    ``spec`` overrides the cluster's fields (a chain with a middle needs
    ``servers=4, replication=3``)."""
    out = {"acked": 0, "acked_lost": 0, "duplicated": 0, "max_recovery_s": 0.0, "kills": 0,
           "seeds": 0}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        cspec = ClusterSpec(**{**dict(servers=3, workers=2, replication=2, steps=100_000,
                                      audit=3, app={"name": "count"}, step_sleep_s=0.01,
                                      hb_timeout=0.5), **spec})
        with Cluster(cspec) as cl:
            cl.start()
            for point in rng.permutation(CRASH_POINTS):
                victim = str(rng.choice(cl.status()["servers"]))
                cl.control(victim, crash=str(point), after=int(rng.integers(1, 4)))
                t_end = time.monotonic() + 10
                while cl.alive(victim) and time.monotonic() < t_end:
                    time.sleep(0.01)
                cl.wait_ring(lambda st, v=victim: v not in st["servers"], 5)
                time.sleep(0.3)
                cl.add_server(victim)
                cl.wait_ring(lambda st, v=victim: v in st["servers"], 10)
                out["kills"] += 1
            cl.stop_job()
            audit = audit_run(cl, cl.status())
            cl.shutdown()
            metrics = load_all(cl.run_dir)
        out["seeds"] += 1
        out["acked"] += audit["acked"]
        out["acked_lost"] += audit["acked_lost"]
        out["duplicated"] += audit["acked_duplicated"] + audit["unacked_duplicated"]
        out["max_recovery_s"] = max([out["max_recovery_s"]] + [
            m.get("max_recovery_s", 0.0) for n, m in metrics.items() if n.startswith("w")])
    return out
