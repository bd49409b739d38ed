"""The scheduler's worker half: the paper's task scheduler for the worker group
(sections 3 and 4.6). :class:`.scheduler.Scheduler` mixes it in; the server half (the
ring, joins, failures) stays there.

It keeps, for every worker, whether it is alive, which data shards it trains on and
how far each shard has got (``progress``, counted in acknowledged minibatches:
``worker.ShardProgress``), and from that

* the **clock set**: the workers whose clocks the servers' consistency gates wait on.
  A worker leaves it when it dies or *retires* (all its shards done), so a BSP pull
  never waits for a clock that will not come;
* **heirs**: a worker silent for ``worker_timeout`` is declared dead and each of its
  unfinished shards goes, with its progress, to the live worker with the least work
  left (the paper's scheduler "reschedules unfinished tasks", section 3). An heir that
  had retired rejoins the clock set at the slowest other worker's clock
  (``clock_floor``), after a tick (``KVWorker.tick``);
* **barriers** and the end of the job: reports, ``Stop``, and when nothing is left to
  wait for.

It relies on the scheduler for ``config``, ``log``, ``broadcast`` (which sends the
clock set to the servers with the ring) and ``members_version``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .message import decode, encode


class TaskScheduler:
    def init_tasks(self, config: dict[str, Any]) -> None:
        now = time.monotonic()
        grace = config.get("start_grace_s", 60.0)
        self.workers = {f"w{i}": {"alive": True, "retired": False, "last_hb": now + grace,
                                  "shards": [i], "addr": None}
                        for i in range(config["num_workers"])}
        # a resumed job's checkpoint holds each shard's first steps (up to start_clock, or
        # the worker's own clocks in it, where it starts, KVWorker.auto_clock): an heir of a
        # worker that dies before its first report must not redo them
        start, restored = int(config.get("start_clock", 0)), config.get("restored_clocks", {})
        self.progress = {i: max(start, int(restored.get(f"w{i}", -1)) + 1)
                         for i in range(config["num_workers"])}
        self.barriers: dict[str, set] = {}
        self.barrier_event = asyncio.Event()
        self.barrier_done: dict[str, float] = {}
        self.reports: dict[str, dict] = {}
        self.stopped = False  # the job was ended early (Stop), not by finishing its steps

    def clock_workers(self) -> list[str]:
        return sorted(n for n, w in self.workers.items() if w["alive"] and not w["retired"])

    def remove_worker(self, name: str, why: str) -> None:
        w = self.workers[name]
        w["alive"] = False
        orphans = [s for s in w["shards"] if self.progress[s] < self.config["steps"]]
        w["shards"] = []
        for s in orphans:
            # a worker that has reported is leaving: a shard given to it would never end;
            # nor is a restarted one an heir: it redoes its own clocks from 0, which
            # the servers drop as resends, and an inherited shard's minibatches sent
            # at those clocks would be dropped too (register_worker)
            live = [n for n, x in self.workers.items()
                    if x["alive"] and not x.get("exited") and not x.get("restarted")]
            if not live:  # every other worker has reported or died: nobody can run it
                self.log("shard_orphaned", shard=s, progress=self.progress[s],
                         hint="no worker can finish it: stop the job and restart it, "
                              "from a checkpoint if it took one")
                continue
            # the least loaded worker by remaining steps takes the shard
            def load(n: str) -> int:
                return sum(self.config["steps"] - self.progress[t]
                           for t in self.workers[n]["shards"])
            heir = min(live, key=lambda n: (load(n), n))
            self.workers[heir]["shards"].append(s)
            self.workers[heir].update(retired=False, inherited=True)
            self.log("reassign", shard=s, worker=heir, progress=self.progress[s])
        self.members_version += 1
        self.log("worker_dead", worker=name, why=why)
        self.broadcast()

    def no_rejoin(self, name: str, restarted: bool = False) -> str:
        """Why a worker declared dead cannot register again: a new process under its name
        would push at clocks its predecessor may have used, which the servers drop as
        resends or apply twice (docs/minips/fault-tolerance.md). The paper's remedy
        (section 4.6) is a *new* node; ours are named for the job's shards."""
        steps = self.config["steps"]
        owned = {s for w in self.workers.values() if w["alive"] for s in w["shards"]}
        orphans = sorted(s for s, p in self.progress.items() if p < steps and s not in owned)
        where = (f"shards {orphans} have no live worker left, so this job cannot finish"
                 if orphans else "its shards went to the live workers")
        why = ("restarted after it had inherited a shard from a dead worker, so it is now "
               "declared dead" if restarted else "was declared dead (no heartbeat for "
               f"{self.config.get('worker_timeout', '?')} s)")
        return (f"worker {name} {why} and cannot rejoin: {where}. A new "
                f"process under its name would reuse the clocks of the old one's pushes. "
                f"Stop the job and start it again, from a checkpoint if it took one "
                f"(casebook ps launch ... --restore DIR)")

    def job_done(self) -> bool:
        return self.stopped or all(p >= self.config["steps"] for p in self.progress.values())

    def finished(self) -> bool:
        """The job is done and every worker has reported or is dead: nothing is left to
        serve. A launcher on one machine asks for the shutdown itself, after it read the
        reports; a scheduler started alone (``--role scheduler``) ends the job here."""
        return self.job_done() and all(w.get("exited") or not w["alive"]
                                       for w in self.workers.values())

    def register_worker(self, name: str, meta: dict) -> dict:
        """A worker's registration: its shards, or why it may not train.

        A second registration is a restart (the old process was stopped before it was
        declared dead). Exact only while the worker ran its own shard alone: clock c was
        then always its minibatch c, so the new process redoes them at the same clocks
        and the servers drop what the old one had applied. After it inherited a shard
        the mapping depends on when the shard came, so the new process would push other
        minibatches at clocks the servers drop as resends (lost) or at clocks the old
        one never used (applied twice): it is declared dead now and refused, and its
        shards go to heirs. For the same reason an allowed restart is never an heir
        itself (:meth:`remove_worker`)."""
        if name not in self.workers:
            return {"status": "error", "message": f"unknown worker {name!r}; expected one "
                                                  f"of {sorted(self.workers)}"}
        w, now = self.workers[name], time.monotonic()
        if not w["alive"] and not w.get("exited"):
            return {"status": "error", "message": self.no_rejoin(name)}
        if w.get("registered") and now - w["last_hb"] < 5 * self.config["hb_interval"]:
            return {"status": "error", "message": f"a worker named {name!r} is registered "
                                                  f"and sending heartbeats; give each "
                                                  f"worker its own --name"}
        if w.get("registered") and w.get("inherited") and not w.get("exited"):
            self.remove_worker(name, "restarted after it inherited a shard")
            return {"status": "error", "message": self.no_rejoin(name, restarted=True)}
        w.update(addr=meta.get("addr"), last_hb=now, restarted=bool(w.get("registered")),
                 registered=True)
        return {"status": "member", "config": self.config, "shards": w["shards"]}

    def worker_heartbeat(self, name: str, meta: dict, now: float) -> bool:
        """Take a worker's heartbeat (its clock, its shards' progress, whether it would
        retire); False if it is no member any more (declared dead)."""
        w = self.workers[name]
        if not w["alive"]:
            return False
        w["last_hb"] = now
        w["clock"] = int(meta.get("clock", 0))
        for s, steps in meta.get("progress", {}).items():
            if int(s) in w["shards"]:
                self.progress[int(s)] = max(self.progress[int(s)], int(steps))
        if meta.get("retire") and not w["retired"]:
            if all(self.progress[s] >= self.config["steps"] for s in w["shards"]):
                w["retired"] = True
                self.members_version += 1
                self.log("retire", worker=name)
                self.broadcast()
        return True

    def tasks_of(self, name: str) -> dict[str, Any]:
        """What a worker's heartbeat reply says of its work: its shards (an inherited one
        appears here), their progress, and the clock an heir starts from."""
        w = self.workers[name]
        others = [self.workers[n].get("clock", 0) for n in self.clock_workers() if n != name]
        return {"shards": w["shards"], "progress": {s: self.progress[s] for s in w["shards"]},
                "clock_floor": min(others, default=0)}

    async def Barrier(self, req: bytes, ctx) -> bytes:
        """Block until every live worker arrived (ps-lite ``Postoffice::Barrier``)."""
        meta = decode(req)[0]
        arrived = self.barriers.setdefault(meta["barrier"], set())
        arrived.add(meta["name"])
        while not set(self.clock_workers()) <= arrived:
            ev = self.barrier_event
            try:
                await asyncio.wait_for(ev.wait(), timeout=0.2)
            except TimeoutError:
                pass
        if meta["barrier"] not in self.barrier_done:
            self.barrier_done[meta["barrier"]] = time.monotonic()
            self.log("barrier", barrier=meta["barrier"])
        self.barrier_event.set()
        self.barrier_event = asyncio.Event()
        return encode({"ok": True})

    async def Report(self, req: bytes, ctx) -> bytes:
        meta = decode(req)[0]
        self.reports[meta["name"]] = meta["report"]
        w = self.workers.get(meta["name"])
        if w is not None:  # it is about to exit: not a failure, and no longer a clock
            w["exited"] = True
            if not w["retired"]:
                w["retired"] = True
                self.members_version += 1
                self.broadcast()
        return encode({"ok": True})

    async def Stop(self, req: bytes, ctx) -> bytes:
        """End the job now: workers finish their current step, report and exit."""
        self.stopped = True
        for w in self.workers.values():  # nobody waits on a clock that will not come
            w["retired"] = True
        self.members_version += 1
        self.log("stop")
        self.broadcast()
        return encode({"ok": True})
