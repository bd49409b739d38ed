"""A server node's side of membership: joining, heartbeats, and following the ring.

The scheduler decides who is in the ring (:mod:`.scheduler`); each server

* **registers** at start: as one of the initial servers, or, once training runs, as a
  *joining* server that pre-copies its future ranges before the ring switches
  (:meth:`.transitions.RingTransitions.join`, paper section 4.5);
* sends a **heartbeat** every ``hb_interval`` seconds (ps-lite ``van.cc``
  ``Van::Heartbeat``); the reply carries the ring's epoch, and a newer one makes the
  server fetch the ring and move to it (:meth:`.transitions.RingTransitions.transition`).
  It also lists the ranges it holds complete, so the scheduler can tell when deaths
  beyond what replication covers left a range with no copy (``Scheduler.check_copies``);
* **rejoins** when the reply says it is no longer a member: it was frozen or cut off
  long enough to be declared dead, its ranges have moved on, so it drops everything and
  joins again as a new server. Nothing it applied while presumed dead was acknowledged
  (its replicas refused the old epoch), so nothing is lost or applied twice.
"""

from __future__ import annotations

import asyncio

import grpc

from common.rpc import background

from . import message as M
from .checkpoint import restore_ranges
from .ring import Ring


class Membership:
    """Mixed into :class:`.server.KVServer` (uses its config, lock and replication)."""

    async def register(self) -> None:
        """Join the cluster: as an initial member, or at run time with pre-copy.

        A rejoin (declared dead while frozen) starts a registration of its own; one
        begun before it stops at its next step, or two joins of one server would race
        (the old one completed the new one's join with wiped copies). A join refused
        because the ring moved resets the server too, but its registration goes on."""
        told, registration = False, self.registration
        while not self.stopping.is_set():
            r = M.decode(await self.sched_call("Register")(
                M.encode({"role": "server", "name": self.name, "addr": self.addr}),
                timeout=5.0))[0]
            if self.registration != registration:
                return
            if not self.config:
                self.configure(r["config"])
            if r["status"] == "member":
                self.incarnation, self.member = r["incarnation"], True
                return
            if r["status"] == "join":
                self.incarnation = r["incarnation"]
                if await self.repl.join(r):
                    self.member = True
                    return
                if self.registration != registration:
                    return
            # failed: the job has ended, nothing to join; duplicate: another live server
            # has our name (ask again: it may die)
            if r["status"] in ("failed", "duplicate"):
                if not told:
                    print(f"[{self.name}] not joining: {r['message']}", flush=True)
                told = True
                await asyncio.sleep(1.0 if r["status"] == "failed" else 0.2)
                continue
            await asyncio.sleep(0.1)  # busy (another join in progress) or the ring moved

    async def refresh(self) -> None:
        """Fetch the ring from the scheduler and move to it if it is newer."""
        info = M.decode(await self.sched_call("GetRing")(M.encode({}), timeout=2.0))[0]
        await self.install(info)

    async def install(self, info: dict) -> None:
        if info["members_version"] != self.members_version and self.gate is not None:
            self.members_version = info["members_version"]
            self.gate.workers = list(info["workers"])
            self.gate.notify()
        self.addrs.update(info["addrs"])
        if info["epoch"] > self.epoch and info["ring"] and self.name in info["servers"]:
            self.repl.ring_moved.set()  # a push or copy waiting on a peer gives up now
            # shielded: a request handler that started it may be cancelled (its worker
            # gave up), and a transition cut short would leave the new epoch with the old
            # ring's waiting sets, never redone
            await asyncio.shield(asyncio.ensure_future(
                self.repl.transition(Ring.from_dict(info["ring"]))))
            if self.restore:
                restore, self.restore = self.restore, None  # once, even if it fails
                try:
                    async with self.lock:
                        restore_ranges(restore, self)
                except Exception as e:  # never serve an empty model in its place
                    self.fatal = f"cannot restore from {restore}: {e}"
                    print(f"[{self.name}] {self.fatal}; stopping", flush=True)
                    self.stopping.set()
                    return
                self.restored.set()

    async def Ring(self, req: bytes, ctx) -> bytes:
        if self.member:
            self.refresh_soon()
        return M.encode(M.reply())

    async def heartbeats(self) -> None:
        """Tell the scheduler we live; learn ring changes; rejoin if declared dead."""
        while not self.stopping.is_set():
            await asyncio.sleep(self.config.get("hb_interval", 0.1))
            if self.incarnation < 0:
                continue  # not registered yet
            c = self.config
            try:
                r = M.decode(await self.sched_call("Heartbeat")(M.encode({
                    "role": "server", "name": self.name, "incarnation": self.incarnation,
                    "epoch": self.epoch, "held": self.repl.held() if self.member else []}),
                    timeout=max(c["hb_interval"] * 5, 0.5)))[0]
            except grpc.RpcError:
                continue  # cut off from the scheduler: keep trying
            if r.get("shutdown"):
                self.stopping.set()
            elif not r["member"]:
                if not self.rejoining:
                    self.rejoining = True
                    background(self.rejoin())
            elif self.member and (r["epoch"] != self.epoch
                                  or r["members_version"] != self.members_version):
                self.refresh_soon()

    async def rejoin(self) -> None:
        """Declared dead (we were frozen or cut off): drop everything, join afresh."""
        print(f"[{self.name}] declared dead by the scheduler: rejoining", flush=True)
        self.metrics.inc("rejoins")
        self.registration += 1
        self.reset()
        try:
            await self.register()
        finally:
            self.rejoining = False

    def refresh_soon(self) -> None:
        async def go() -> None:
            try:
                await self.install(await self._ring_info())
            except Exception as e:  # a later heartbeat retries
                print(f"[{self.name}] ring refresh failed: {e!r}", flush=True)
        background(go())

    async def _ring_info(self) -> dict:
        return M.decode(await self.sched_call("GetRing")(M.encode({}), timeout=2.0))[0]
