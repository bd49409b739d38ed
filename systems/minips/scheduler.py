"""The scheduler: the paper's server manager (the ring, section 4.3; joins, departures and
heartbeats, section 4.5) plus the worker group's task scheduler (sections 3 and 4.6).

It never touches parameters. It keeps the *membership*: which servers form the ring
(an ``epoch`` counts ring changes), which workers are alive, which data shard each
worker trains on. Nodes send it heartbeats (ps-lite ``van.cc``: every non-scheduler node
sends a ``HEARTBEAT`` every ``PS_HEARTBEAT_INTERVAL`` seconds, off by default; the
scheduler reports dead nodes in ``GetDeadNodes``, ``src/postoffice.cc``); a server
silent for ``hb_timeout`` seconds is removed:

1. the ring is re-formed without it (its ranges fall to their first replicas);
2. the new ring is pushed to every server (``Ring`` RPC) and returned by every
   heartbeat, so servers re-partition and workers resend what was in flight.

A server may also join at run time: it registers, receives the *pending* ring that
includes it, pre-copies its future ranges from their current masters, then calls
``JoinReady``; only then does the ring change (paper section 4.5, two-stage pre-copy).

Beyond the paper, which promises nothing past R - 1 deaths: every server's heartbeat
says which key ranges it holds *complete* (in its ring and not waiting for a copy). If
two servers die before the first one's ranges were copied again, a range can be left
with no complete copy on any live server; its new holders would wait for a copy nobody
can send. Once every server has reported the current ring and the gap has lasted
``loss_grace_s``, the scheduler ends the job and says which ranges were lost
(:meth:`Scheduler.check_copies`).

The workers' side (shards, heirs, the clock set, barriers) is the task scheduler of
:mod:`.task_scheduler`, mixed in here: a worker silent for ``worker_timeout`` seconds is
declared dead there and its unfinished shard goes to the live worker with the least work.

Run: ``python -m systems.minips.scheduler --config JSON`` (the launcher does it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import grpc

from common import rpc
from common.procs import announce_ready
from common.stalls import LoopWatchdog

from .message import SERVICE, PSError, decode, encode
from .metrics import NodeMetrics
from .ring import Ring, merge_ranges, subtract
from .task_scheduler import TaskScheduler


class Scheduler(TaskScheduler):
    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.epoch = 0
        self.ring_servers: list[str] = []
        self.servers: dict[str, dict] = {}
        self.joining: str | None = None
        self.members_version = 0  # counts changes of the clock set (workers)
        # when this process did not run: a monitor round half an hb_timeout late
        self.watchdog = LoopWatchdog(period=config.get("hb_interval", 0.1) / 2,
                                     slack=config.get("hb_timeout", 1.0) / 2, keep=16)
        self.left_ring: list[str] = []  # servers removed since every range had a copy
        self.init_tasks(config)
        self.clients: set[str] = set()
        self.failure: str | None = None  # why the job cannot go on (data was lost)
        self.events: list[dict] = []  # membership history, for tests and the launcher
        self.uncovered_since: float | None = None  # when check_copies first saw a gap
        self.shutdown = asyncio.Event()
        self.metrics = NodeMetrics("scheduler", "scheduler", trace=False)
        self.channels: dict[str, Any] = {}

    # ---- membership ----------------------------------------------------------------
    def ring(self, servers: list[str] | None = None, epoch: int | None = None) -> Ring:
        c = self.config
        return Ring(servers or self.ring_servers, c["key_max"], c["vnodes"],
                    c["replication"], self.epoch if epoch is None else epoch)

    def ring_info(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "servers": self.ring_servers,
                "addrs": {n: s["addr"] for n, s in self.servers.items()},
                "workers": self.clock_workers(), "members_version": self.members_version,
                "ring": self.ring().to_dict() if self.ring_servers else None}

    def log(self, kind: str, **info: Any) -> None:
        self.events.append({"t": time.monotonic(), "kind": kind, "epoch": self.epoch, **info})
        print(f"[scheduler] {kind} {info} epoch={self.epoch}", flush=True)

    def commit(self, servers: list[str], why: str) -> None:
        self.ring_servers = sorted(servers)
        self.epoch += 1
        self.log("ring", why=why, servers=self.ring_servers)
        self.broadcast()

    def broadcast(self) -> None:
        """Push the current ring and worker set to every server in it."""
        msg = encode({"op": "ring", **self.ring_info()})
        for name in self.ring_servers:
            addr = self.servers[name]["addr"]
            ch = self.channels.get(addr)
            if ch is None:  # (setdefault would build a channel per call, to throw away)
                ch = self.channels[addr] = rpc.aio_channel(addr)
            call = rpc.method(ch, SERVICE, "Ring")
            rpc.background(self._send(call, msg))

    async def _send(self, call, msg: bytes) -> None:
        try:
            await call(msg, timeout=2.0)
        except Exception:  # the heartbeat reply carries the epoch too
            pass

    def remove_server(self, name: str, why: str) -> None:
        self.servers[name]["alive"] = False
        if name in self.ring_servers:  # (named if a range is found lost: check_copies)
            self.left_ring.append(name)
        if self.joining == name:
            self.joining = None
        # the copies the ring keeps now: R, but never more than its servers (after deaths
        # shrank a ring of R = 2 to one server, that server holds the only copy)
        copies = min(self.config["replication"], len(self.ring_servers))
        if name in self.ring_servers and copies < 2:
            # No other server holds its ranges (section 4.4: a master and R - 1 replicas;
            # R = 1 keeps none to spare), so their values are gone. Re-forming the ring would hand
            # them to servers that wait for a copy nobody can send: end the job instead,
            # and say why to every node that asks.
            if copies < self.config["replication"]:  # earlier deaths used up the copies
                advice = (f"earlier deaths left it the only holder of its ranges, though "
                          f"the job ran with replication {self.config['replication']}; "
                          f"restart from a checkpoint")
            else:
                advice = ("run with replication >= 2 to survive a server's death, or "
                          "restart from a checkpoint")
            self.fail(f"server {name} died ({why}) and no other server keeps a copy of its "
                      f"key ranges, so their values are lost; {advice}")
            return
        if name in self.ring_servers:
            rest = [s for s in self.ring_servers if s != name]
            if rest:
                self.commit(rest, f"{why}: {name}")
            else:
                self.log("lost_all_servers", server=name)

    def fail(self, why: str) -> None:
        """End the job as failed: heartbeats carry ``why`` to every node, whose requests
        then fail with it instead of being resent forever."""
        if self.failure is None:
            self.failure, self.stopped = why, True
            for w in self.workers.values():  # nobody waits on a clock that will not come
                w["retired"] = True
            self.log("job_failed", why=why)

    def check_copies(self, now: float) -> None:
        """End the job if some key range has no complete copy on any live server.

        Judged only from reports of the current ring by every server in it (an older
        report may name a range the server has dropped since, or one it holds stale),
        and only once the gap has outlasted ``loss_grace_s``: while ranges move, a copy
        can be in flight for a moment. A range nobody holds complete cannot come back,
        since only a complete holder may send it (``Snapshot`` refuses otherwise)."""
        if self.failure or not self.ring_servers or self.epoch == 0:
            self.uncovered_since = None  # (before the initial ring nobody holds anything)
            return
        reports = [self.servers[n] for n in self.ring_servers]
        if any(r.get("held_epoch") != self.epoch for r in reports):
            self.uncovered_since = None  # a gap is timed within one ring, from when seen
            return  # undecided until every server has reported this ring
        # the ring's pieces cover the whole key space, so no ring is built at each tick
        lost = subtract([(0, self.config["key_max"])],
                        merge_ranges([x for r in reports for x in r["held"]]))
        if not lost:
            self.uncovered_since = None
            self.left_ring = []  # every range has a copy: earlier departures cost nothing
        elif self.uncovered_since is None:
            self.uncovered_since = now
        elif now - self.uncovered_since >= self.config.get("loss_grace_s", 3.0):
            # every server that left the ring since it last had all its copies, those
            # alive again too (a frozen one that was declared dead rejoins as a new
            # server: its old copies are gone all the same)
            gone = [n + (" (declared dead, since back)" if self.servers[n]["alive"] else "")
                    for n in sorted(set(self.left_ring))]
            shown = ", ".join(f"[{b}, {e})" for b, e in lost[:4]) + \
                (f" and {len(lost) - 4} more" if len(lost) > 4 else "")
            why = (f"servers {', '.join(gone)} left the ring, more at once than "
                   f"replication {self.config['replication']} survives (one left before "
                   f"the ranges of another were copied again)" if gone else "no server "
                   "died: the copies that move them failed (see the servers' logs)")
            self.fail(f"no live server holds a complete copy of key ranges {shown} "
                      f"({sum(e - b for b, e in lost)} keys): {why}, so their values are "
                      f"lost; restart from a checkpoint")

    async def monitor(self) -> None:
        """Failure detection: a node that stopped sending heartbeats is dead."""
        while not self.shutdown.is_set():
            await asyncio.sleep(self.config["hb_interval"] / 2)
            self.check_nodes(time.monotonic())

    def check_nodes(self, now: float) -> None:
        """One round of the monitor: remove the nodes silent for too long, check that
        every key range has a copy, and end a finished job."""
        c = self.config
        # This process did not run (SIGSTOP, a VM or swap stall): heartbeats that came
        # meanwhile wait unread in its sockets. Silence the judge did not hear is no
        # evidence against the nodes; without this, a pause of 1.5 s declared every
        # server dead at once and failed the job as lost. (A round late by less than
        # the watchdog's slack is the loop being busy, heartbeats read all along.)
        stalled = self.watchdog.note(now)
        if stalled:
            self.log("scheduler_stalled", seconds=round(stalled, 3))

        def silent(node: dict, timeout: float) -> bool:
            """Silent past ``timeout``, less our own stalls that ended within the last
            ``timeout`` (after one, every live node has had a full timeout to be heard,
            so a stall excuses a dead node's silence once, not for ever)."""
            t = node["last_hb"]
            return now - t - self.watchdog.stalled_since(t, now, within=timeout) > timeout
        for name, s in list(self.servers.items()):
            if s["alive"] and silent(s, c["hb_timeout"]):
                self.remove_server(name, "no heartbeat")
        for name, w in list(self.workers.items()):
            if w["alive"] and not w.get("exited") and silent(w, c["worker_timeout"]):
                self.remove_worker(name, "no heartbeat")
        self.check_copies(now)
        if c.get("exit_when_done") and self.finished():
            self.log("finished")
            self.shutdown.set()  # the servers read it in their next heartbeat

    # ---- RPC handlers ----------------------------------------------------------------
    async def Register(self, req: bytes, ctx) -> bytes:
        meta = decode(req)[0]
        role, name = meta["role"], meta["name"]
        if role == "server":
            old = self.servers.get(name)
            if old and old["alive"] and old["addr"] != meta["addr"] and \
                    time.monotonic() - old["last_hb"] < 5 * self.config["hb_interval"]:
                # two live servers of one name took it from each other at every heartbeat
                return encode({"status": "duplicate", "config": self.config, "message":
                               f"a server named {name!r} is registered from {old['addr']} "
                               f"and alive; give each server its own --name"})
            if old and old["alive"] and name in self.ring_servers and self.epoch:
                self.remove_server(name, "re-registered (restarted)")
            inc = (old["incarnation"] + 1) if old else 0
            self.servers[name] = {"addr": meta["addr"], "alive": True, "incarnation": inc,
                                  "last_hb": time.monotonic()}
            if self.epoch == 0:
                self.ring_servers = sorted(set(self.ring_servers) | {name})
                if len(self.ring_servers) >= self.config["num_servers"]:
                    self.commit(self.ring_servers, "initial")
                return encode({"status": "member", "incarnation": inc, "config": self.config})
            if self.failure:  # nothing left to join: data was lost
                return encode({"status": "failed", "message": self.failure,
                               "config": self.config})
            if self.joining and self.joining != name and self.servers[self.joining]["alive"]:
                return encode({"status": "busy", "config": self.config})
            self.joining = name
            pending = self.ring(self.ring_servers + [name], self.epoch + 1)
            self.log("join_start", server=name)
            return encode({"status": "join", "incarnation": inc, "config": self.config,
                           "pending": pending.to_dict(), **self.ring_info()})
        if role == "worker":
            return encode(self.register_worker(name, meta))
        if name in self.clients:  # its clocks would restart: resent-push detection
            return encode({"status": "error",  # would drop its new pushes as old ones
                           "message": f"a client named {name!r} already registered; "
                                      f"clock timestamps are per name, so use a new name"})
        self.clients.add(name)
        return encode({"status": "member", "config": self.config})  # a client (bench, monitor)

    async def JoinReady(self, req: bytes, ctx) -> bytes:
        meta = decode(req)[0]
        name = meta["name"]
        if self.joining != name or meta["epoch"] != self.epoch + 1:
            return encode({"ok": False, "epoch": self.epoch})  # the ring moved: pre-copy again
        if meta.get("incarnation") != self.servers[name]["incarnation"]:
            # a join the server abandoned when it was reset (frozen during its pre-copy,
            # declared dead, registered again): its copies are gone, so it must not
            # complete the join of the new registration, which has copied nothing yet
            return encode({"ok": False, "epoch": self.epoch})
        self.joining = None
        self.commit(self.ring_servers + [name], f"join: {name}")
        return encode({"ok": True, **self.ring_info()})

    async def Heartbeat(self, req: bytes, ctx) -> bytes:
        meta = decode(req)[0]
        name, role = meta["name"], meta["role"]
        now = time.monotonic()
        member = True
        if role == "server":
            s = self.servers.get(name)
            member = bool(s and s["alive"] and s["incarnation"] == meta.get("incarnation"))
            if member:
                s["last_hb"] = now
                if "held" in meta:  # what it holds complete, for check_copies
                    s["held"] = [(int(b), int(e)) for b, e in meta["held"]]
                    s["held_epoch"] = int(meta["epoch"])
        elif role == "worker" and name in self.workers:
            member = self.worker_heartbeat(name, meta, now)
        out = {"epoch": self.epoch, "members_version": self.members_version, "member": member,
               "shutdown": self.shutdown.is_set(), "job_done": self.job_done(),
               "stop": self.stopped, "failure": self.failure}
        if role == "worker" and name in self.workers:
            out.update(self.tasks_of(name))
        return encode(out)

    async def GetRing(self, req: bytes, ctx) -> bytes:
        return encode(self.ring_info())

    async def Status(self, req: bytes, ctx) -> bytes:
        return encode({**self.ring_info(), "progress": self.progress,
                       "steps": self.config["steps"], "job_done": self.job_done(),
                       "workers_state": {n: {k: v for k, v in w.items() if k != "last_hb"}
                                         for n, w in self.workers.items()},
                       "servers_state": {n: {k: v for k, v in s.items() if k != "last_hb"}
                                         for n, s in self.servers.items()},
                       "reports": self.reports, "events": self.events,
                       "barriers": self.barrier_done,
                       "joining": self.joining, "failure": self.failure})

    async def Shutdown(self, req: bytes, ctx) -> bytes:
        self.shutdown.set()
        return encode({"ok": True})


def guarded(handler):
    """A scheduler RPC whose malformed request (undecodable, a field missing or of the
    wrong type) aborts with INVALID_ARGUMENT and the reason, as the servers' ``guard``
    does, instead of gRPC's bare UNKNOWN."""
    async def call(req: bytes, ctx) -> bytes:
        try:
            return await handler(req, ctx)
        except (PSError, KeyError, TypeError, ValueError) as e:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"[INVALID] malformed scheduler request: {type(e).__name__} {e}")
    return call


async def serve(config: dict[str, Any], host: str, port: int) -> None:
    sched = Scheduler(config)
    names = ["Register", "JoinReady", "Heartbeat", "GetRing", "Barrier", "Report", "Status",
             "Stop", "Shutdown"]
    from .message import SCHEDULER_SERVICE

    server, bound = await rpc.serve_aio(SCHEDULER_SERVICE,
                                        {n: guarded(getattr(sched, n)) for n in names},
                                        host=host, port=port)
    try:  # stopped on every way out: see server.serve
        announce_ready(port=bound, addr=rpc.address(host, bound))
        mon = asyncio.ensure_future(sched.monitor())
        await sched.shutdown.wait()
        await asyncio.sleep(config["hb_interval"] * 3)  # let the nodes read "shutdown"
        mon.cancel()
        if config.get("run_dir"):
            sched.metrics.extra["events"] = sched.events
            sched.metrics.save(config["run_dir"])
    finally:
        await server.stop(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description="minips scheduler (server manager)")
    p.add_argument("--config", required=True, help="cluster config as JSON")
    p.add_argument("--host", default=rpc.LOOPBACK)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    asyncio.run(serve(json.loads(a.config), a.host, a.port))


if __name__ == "__main__":
    main()
