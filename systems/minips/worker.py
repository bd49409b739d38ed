"""A worker node: the data-parallel training loop (paper Algorithm 1 and section 4.6).

Each iteration is one task at clock ``c`` on one of the worker's data shards::

    w = pull(keys of the minibatch, clock=c, wait=c - tau - 1)   # consistency
    g = app.step(minibatch, w)                                    # compute
    push(keys, g, clock=c)                                        # asynchronous

``wait`` comes from the consistency model (:mod:`.consistency`): BSP makes the pull wait
for everyone's previous clock, SSP(tau) for the clock tau further back, ASP for nothing.
The push is not waited for: the next iteration overlaps with it.

The scheduler assigns shards. If another worker dies, its unfinished shard shows up in
this worker's heartbeat reply with the progress made so far, and this worker
alternates between its shards until both are done (section 4.6). The progress it reports
counts a step only once its push is acknowledged (:class:`ShardProgress`), so an heir
never skips a minibatch whose gradient did not reach the servers. A minibatch whose push
was applied but not yet reported is done again by the heir: at least once, not exactly
once, which we accept by the paper's argument for workers (section 4.6: losing a little
training data "affects the model only a little"; a repeated minibatch is the mirror
case). A worker whose shards are all done *retires* from the clock set (so BSP does not
wait for it), and exits when the scheduler says the whole job is done.

The report's ``idle_fraction`` is the share of the worker's wall time its pulls were
held by a server waiting for the consistency dependency (what the paper calls waiting
time); ``blocked_fraction`` also counts the network and the servers' work.

Two knobs serve the benchmarks: ``step_sleep_s`` stands in for compute on a bigger
machine (sleep, so it costs no CPU on our two cores), and ``straggler`` makes one worker
``factor`` times slower, always (``persistent``) or one random worker per clock
(``rotating``).

Run: ``python -m systems.minips.worker --name w0 --scheduler ADDR`` (the launcher does).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import re
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from common.procs import announce_ready
from common.trace import write_json_atomic

from .apps import make_app
from .apps.count import audit_keys
from .consistency import Consistency
from .filters import FilterChain
from .kv import KVWorker
from .message import VAL_DTYPE


def straggle_s(config: dict[str, Any], rank: int, clock: int) -> float:
    """Seconds of simulated compute for this worker at this clock."""
    base = float(config.get("step_sleep_s", 0.0))
    st = config.get("straggler") or {}
    if not st:
        return base
    factor = float(st.get("factor", 4.0))
    if st.get("mode", "persistent") == "rotating":
        slow = int(np.random.default_rng([int(st.get("seed", 0)), clock]).integers(
            config["num_workers"]))
    else:
        slow = int(st.get("rank", 0))
    return base * factor if slow == rank else base


class ShardProgress:
    """Steps done per data shard, counted the way the scheduler must see them.

    ``issued`` counts minibatches whose push went out, and drives the loop. ``acked``
    counts only those whose push the servers acknowledged, and is what the heartbeat
    reports: if this worker dies, the heir starts each shard at ``acked``, so no
    minibatch's update is lost. A worker's pushes are acknowledged in the order they
    were sent (the KV layer sends one at a time), so ``acked`` advances along a prefix.
    """

    def __init__(self, shards: list[int], start: int):
        self.issued = {s: start for s in shards}
        self.acked = dict(self.issued)
        self._in_flight: deque[tuple[int, int]] = deque()

    def inherit(self, shard: int, done: int) -> None:
        """A dead worker's shard, with the progress the scheduler had from it."""
        self.issued[shard] = self.acked[shard] = done

    def pushed(self, shard: int, ts: int) -> None:
        self.issued[shard] += 1
        self._in_flight.append((shard, ts))

    def settle(self, kv: KVWorker) -> dict[int, int]:
        """Count the pushes acknowledged since the last call; the reportable progress."""
        while self._in_flight and kv.finished(self._in_flight[0][1]):
            self.acked[self._in_flight.popleft()[0]] += 1
        return self.acked

    def report(self, kv: KVWorker, mine: list[int]) -> None:
        """Hand the heartbeat the acknowledged progress of the shards still ours."""
        kv.progress = {k: v for k, v in self.settle(kv).items() if k in mine}


class Worker:
    def __init__(self, name: str, scheduler: str, run_dir: str | None = None):
        self.name, self.run_dir = name, run_dir
        if not re.fullmatch(r"w\d+", name):  # lstrip("w") took "worker1" for rank "orker1"
            raise ValueError(f"worker name {name!r}: workers are named w0, w1, ... (the "
                             f"number is the worker's rank)")
        self.rank = int(name[1:])
        self.scheduler = scheduler

    def run(self) -> dict[str, Any]:
        kv = KVWorker(self.scheduler, self.name)
        config = kv.config
        app = make_app(config["app"], config["num_workers"])
        kv.filters = FilterChain(app.filters())
        announce_ready(name=self.name)
        model = Consistency.parse(config["consistency"])
        audit = config.get("audit")
        steps = config["steps"]
        # > 0: resuming from a checkpoint; the launcher says where (every worker from the
        # same clock), and a cluster restored without it goes on after this worker's own
        # clocks in the checkpoint (its pushes at those would be dropped as resends)
        start = max(int(config.get("start_clock", 0)), kv.auto_clock + 1)
        if app.init_values() is not None and start == 0:
            # every worker, not only the first: the servers keep the first values to
            # arrive (KVStore.init), so the job starts from them even if a worker died
            # before its push, and a late one (a frozen worker) changes nothing
            k, v = app.init_values()
            kv.wait(kv.push(k, v, cmd="init"))
        kv.barrier("init")
        done = ShardProgress(kv.shards, start)
        progress = done.issued
        timeline, pushes = [], []
        c, t_start, wait_total = start, time.perf_counter(), 0.0
        last_step_at = None  # time.monotonic() when this worker issued its last push
        while True:
            hb = kv.hb_state
            if hb.get("stop"):
                break
            for s in hb.get("shards", list(progress)):
                if s not in progress:  # inherited from a dead worker
                    done.inherit(s, int(hb.get("progress", {}).get(str(s), 0)))
                    c = max(c, int(hb.get("clock_floor", c)))
            mine = hb.get("shards", list(progress))
            todo = [s for s in mine if progress.get(s, steps) < steps]
            if not todo:
                done.report(kv, mine)
                kv.retire = True
                if hb.get("job_done"):
                    break
                time.sleep(config["hb_interval"])
                continue
            if kv.retire:
                kv.retire = False
                c = max(c, int(hb.get("clock_floor", c)))
            if pushes and c > kv.auto_clock + 1:
                # an heir back in the clock set skipped clocks: move its clock on the
                # servers up too, or its next pull waits for its own old clock (KVWorker.tick)
                kv.tick(c - 1)
            s = todo[c % len(todo)]
            step = progress[s]
            keys = app.keys(s, step)
            t0 = time.perf_counter()
            w = kv.wait(kv.pull(keys, clock=c, wait=model.wait_clock(c), copy=False))
            waited = time.perf_counter() - t0
            wait_total += waited
            grads, loss = app.step(s, step, keys, w)
            time.sleep(straggle_s(config, self.rank, c))
            # the last step of all this worker's shards: filters send what they held back
            final = all(progress.get(x, steps) >= steps for x in mine if x != s) and \
                step + 1 >= steps
            ctx = {"weights": w, "final": final}
            if audit:
                ak = audit_keys(audit, self.rank, c)
                keys = np.concatenate([keys, ak])
                grads = np.concatenate([grads, np.ones((ak.size, 1), VAL_DTYPE)])
                ctx["exempt"] = ak.size  # no filter may touch the audit's counters
            ts = kv.push(keys, grads, clock=c, ctx=ctx, wait=model.push_wait(c), copy=False)
            pushes.append((c, ts))
            done.pushed(s, ts)
            done.report(kv, mine)
            kv.clock = c
            timeline.append((time.perf_counter() - t_start, c, s, step, loss, waited))
            last_step_at = time.monotonic()
            kv.metrics.start_cpu_clock()  # after the first step, which loads the data shard
            c += 1
        return self.report(kv, c, pushes, timeline, time.perf_counter() - t_start, wait_total,
                           last_step_at)

    def report(self, kv: KVWorker, c: int, pushes: list, timeline: list, total: float,
               wait_total: float, last_step_at: float | None = None) -> dict[str, Any]:
        """Wait for the last pushes, then tell the scheduler (and the run directory)
        which clocks were acknowledged, how long we waited, what the filters saved."""
        acked = []
        for clock, ts in pushes:
            try:
                kv.wait(ts, timeout=60)
                acked.append(clock)
            except Exception:  # noqa: BLE001 - an unacknowledged push is what we record
                pass
        held = kv.metrics.snapshot().get("consistency_held_s", 0.0)
        report = {"name": self.name, "clocks": c, "acked": acked, "timeline": timeline,
                  # when training ended for this worker: its last push, before it
                  # waited for the job's end and reported (the launcher's curve ends here)
                  "last_step_at": last_step_at,
                  "seconds": total, "blocked_fraction": wait_total / total if total else 0.0,
                  "idle_fraction": held / total if total else 0.0,
                  "metrics": kv.metrics.snapshot(), "filters": kv.filters.stats(),
                  "step_s": float(np.median(np.diff([t[0] for t in timeline])))
                  if len(timeline) > 2 else 0.0}
        kv.metrics.extra.update(idle_fraction=report["idle_fraction"], clocks=c,
                                blocked_fraction=report["blocked_fraction"],
                                filters=report["filters"])
        kv._sched("Report", {"name": self.name, "report": report}, timeout=30.0)
        if self.run_dir:
            write_json_atomic(Path(self.run_dir) / f"report-{self.name}.json", report)
            kv.metrics.save(self.run_dir)
        kv.close()
        return report


def main() -> None:
    p = argparse.ArgumentParser(description="minips worker node")
    p.add_argument("--name", required=True, help="w0, w1, ...")
    p.add_argument("--scheduler", required=True, help="HOST:PORT of the scheduler")
    p.add_argument("--run-dir", default=None)
    a = p.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks on demand
    report = Worker(a.name, a.scheduler, a.run_dir).run()
    print(json.dumps({"done": a.name, "clocks": report["clocks"]}), flush=True)


if __name__ == "__main__":
    main()
