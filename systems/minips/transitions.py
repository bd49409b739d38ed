"""Ring changes for replicated key ranges (paper sections 4.4 and 4.5): the half of
:class:`.replication.Replication` that moves ranges when a server dies or joins. The
primary-backup replication of pushes (the master forwards to every replica in parallel;
the paper's chain replication is exercise 3a) is in :mod:`.replication`; this mixin's
state lives here, and it calls that half's ``send``, ``race``, ``range_message`` and
``sync_to``.

* **ring transitions** (:meth:`Replication.transition`): when the scheduler removes a
  dead server, its first replica becomes master of its ranges (it holds the data and the
  clocks already) and the master of every range whose replica set changed sends the new
  replica a full copy (``Sync``). A master whose forward failed is *broken* and resyncs
  every range it masters before acknowledging anything again.
* **join with pre-copy** (:meth:`Replication.join`): a new server first copies the
  ranges it will master, with their clocks, from their current masters while those keep
  serving (``Snapshot``, which also starts tracking the keys changed meanwhile); once the
  ring switches, each old master stops accepting pushes for the moved range (epoch
  check) and sends the keys changed since the snapshot (a catch-up ``Sync``). The new
  master serves the range only after that.
* **no single death mid-transition loses data** (beyond the paper, which does not say
  what happens if a server dies while ranges move): every server that holds a complete
  copy of a range that another server takes on sends it (the old master its catch-up,
  the others whole copies), and the receiver installs the first copy of each range and
  ignores the rest. Until then the range is *waiting* (``not_ready`` for a new master,
  ``unsynced`` for a new replica): it is neither served nor passed on, so a server
  promoted before its copy came waits for one instead of serving an empty range. The
  price is up to R copies of each moved range where one would do.
  ``test_an_old_master_killed_during_a_join_loses_and_duplicates_nothing`` found this.
* **copies at the wrong moment**: a copy for a ring this server has not reached (or is
  entering and has not yet computed what waits in) is booked under that ring's epoch
  and counted when the transition gets there; and no catch-up or backup copy overwrites
  a range its receiver holds complete, so a late whole copy cannot roll back pushes
  already applied. The fallback for a catch-up that never comes copies only from a
  server that holds the range complete, installs only the part still waiting when the
  copy comes back, and a range nobody can give waits (asked for again) rather than being
  served empty. Every ``Snapshot`` is of ranges held complete, by a server not behind
  the asker's ring; a transition runs to its end even if the request that started it
  is cancelled (docs/minips/fault-tolerance.md, item 5).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import numpy as np

from common.rpc import background

from . import message as M
from .ring import Ring, intersect, merge_ranges, positions, subtract

if TYPE_CHECKING:
    from .server import KVServer

CATCHUP_TIMEOUT_S = 2.0
CATCHUP_ATTEMPTS = 3  # sends of one catch-up before its receiver is taken for dead


def note(book: dict[int, list], epoch: int, ranges: list[tuple[int, int]]) -> None:
    """Record that ``ranges`` were copied to us for the ring of ``epoch``."""
    book[epoch] = merge_ranges(book.get(epoch, []) + [tuple(r) for r in ranges])


def booked(book: dict[int, list], after: float = -1, upto: float = float("inf"),
           ) -> list[tuple[int, int]]:
    """The ranges copied for the rings of epochs in ``(after, upto]``."""
    return merge_ranges([r for e, rs in book.items() if after < e <= upto for r in rs])


def restrict(meta: dict, keep: list[tuple[int, int]]) -> None:
    """Cut a copy's ``ranges`` and clocks down to ``keep`` (its data is cut by
    ``install``, which reads only the rows inside ``meta["ranges"]``)."""
    meta["ranges"] = keep
    meta["clocks"] = {w: [(max(b, kb), min(e, ke), t) for b, e, t in segs
                          for kb, ke in keep if b < ke and kb < e]
                      for w, segs in meta["clocks"].items()}


class RingTransitions:
    """What a server must remember while ranges move, and the moves themselves."""

    s: KVServer

    def __init__(self) -> None:
        self.not_ready: list[tuple[int, int]] = []  # ranges waiting for a catch-up
        self.unsynced: list[tuple[int, int]] = []  # new replica ranges not copied yet
        # copies that came for a ring whose waiting sets were not computed yet, by that
        # ring's epoch: counted (and forgotten) when this server's transition reaches it
        self.caught_up: dict[int, list[tuple[int, int]]] = {}
        self.synced: dict[int, list[tuple[int, int]]] = {}
        self.next_epoch: int | None = None  # a transition's ring, until step 2
        self.holding: list[tuple[int, int]] = []  # ... and what we held complete before it
        # ranges a joining server pre-copied from us -> the keys pushed there since
        self.transfers: dict[tuple[int, int], list[np.ndarray]] = {}
        self.unmerged: dict[tuple[int, int], int] = {}  # keys in those lists' later parts

    async def Sync(self, req: bytes, ctx) -> bytes:
        return await self.s.guard(self._sync, req, ctx)

    async def _sync(self, req: bytes) -> bytes:
        meta, keys, vals, extra = M.decode(req)
        M.check_copy(keys, vals, extra, self.s.config["key_max"], self.s.config["val_len"],
                     "sync")
        if self.s.store is None or (meta["epoch"] < self.s.epoch and not meta.get("catchup")):
            return M.encode(M.reply(M.STALE, epoch=self.s.epoch))
        rr = meta["ranges"] = [(int(b), int(e)) for b, e in meta["ranges"]]  # JSON: lists
        # sent in a ring we have not reached yet, or are moving to and have not yet
        # computed what waits in it (a transition's steps 1-2)
        early = self.s.epoch < meta["epoch"] or meta["epoch"] == self.next_epoch
        if meta.get("catchup") or meta.get("backup"):  # the first copy of a range wins;
            # a later one (from another old holder) would overwrite what was served since,
            # and no copy overwrites a range this server holds complete
            waiting, book = ((self.not_ready, self.caught_up) if meta.get("catchup")
                             else (self.unsynced, self.synced))
            keep = subtract(subtract(rr if early else intersect(rr, waiting),
                                     booked(book)),
                            self.held())
            if not keep:
                return M.encode(M.reply())
            restrict(meta, keep)  # and only those ranges' clocks
        else:  # a master's copy to its replica: never over one booked for a later ring
            later = booked(self.synced, after=meta["epoch"])
            if intersect(rr, later):
                keep = subtract(rr, later)
                if not keep:
                    return M.encode(M.reply())
                restrict(meta, keep)
        self.s.crash_point("replica_sync")
        if not meta.get("catchup"):  # a replica's copy, from its master or a backup
            self.unsynced = subtract(self.unsynced, meta["ranges"])
            if early:
                note(self.synced, meta["epoch"], meta["ranges"])
        self.install(meta, keys, vals, extra[0])
        self.s.dbg(f"copy from {meta['from']} e{meta['epoch']} full={meta.get('full', True)} "
                   f"catchup={bool(meta.get('catchup'))} ranges={meta['ranges']} n={keys.size}")
        if meta.get("catchup"):
            rr = [(int(b), int(e)) for b, e in meta["ranges"]]
            note(self.caught_up, meta["epoch"], rr)
            if intersect(rr, self.not_ready):
                background(self.finish(rr))
        self.s.metrics.inc("syncs_received")
        self.s.gate.notify()
        return M.encode(M.reply())

    def held(self) -> list[tuple[int, int]]:
        """The ranges this server holds complete now: in its ring and not waiting for a
        copy; during a transition, what it held complete in the ring it is leaving."""
        if self.next_epoch is not None:
            return self.holding
        if self.s.ring is None:
            return []
        return subtract(self.s.ring.ranges_of(self.s.name, "any"),
                        merge_ranges(self.not_ready + self.unsynced))

    def install(self, meta: dict, keys, vals, state) -> None:
        k = self.s.config["val_len"]
        for b, e in meta["ranges"]:
            b, e = int(b), int(e)
            lo, hi = positions(keys, [b, e])
            if meta.get("full", True):
                self.s.store.replace(b, e, keys[lo:hi], vals.reshape(-1, k)[lo:hi],
                                     state.reshape(-1, k)[lo:hi])
                self.s.clocks.clear(b, e)
            elif hi > lo:
                self.s.store.assign(keys[lo:hi], vals.reshape(-1, k)[lo:hi],
                                    state.reshape(-1, k)[lo:hi])
        self.s.clocks.load(meta["clocks"])
        for w, segs in meta["clocks"].items():  # a push implies its sender's pull
            for b, e, t in segs:
                self.s.record_pull(w, [(int(b), int(e))], int(t))

    async def Snapshot(self, req: bytes, ctx) -> bytes:
        """Pre-copy for a joining server: the data of ``ranges`` now, and from now on
        remember which keys change there (sent later as the catch-up). Untracked (the
        fallback of a new master whose catch-up never came): only for ranges this server
        holds complete, since a copy of a range it dropped or still waits for would be
        served as if it were the data (``NOT_HELD``, and the caller asks elsewhere)."""
        meta = M.decode(req)[0]
        # sorted, disjoint and in the key space, as a push's: the same range listed 64
        # times made an 832-byte request a 1 GB reply, and 20 overlapping ones each
        # tracked every later push's keys (the server missed its heartbeats either way)
        ranges = self.s.parse_ranges(meta, None)
        if meta.get("epoch", 0) > self.s.epoch:  # we are behind: our ring may be wrong
            self.s.refresh_soon()
            return M.encode(M.reply(M.NOT_HELD, f"behind: epoch {self.s.epoch}"))
        if subtract(ranges, self.held()):  # (a joiner's pre-copy too: it asks again)
            return M.encode(M.reply(M.NOT_HELD, f"not held complete: "
                                                f"{subtract(ranges, self.held())}"))
        if meta.get("track", True):
            for r in ranges:
                self.transfers.setdefault(r, [])
        self.s.metrics.inc("snapshots_served")
        self.s.dbg(f"snapshot of {ranges}")
        return self.range_message("snapshot", ranges, code=M.OK)

    async def transition(self, new: Ring) -> None:
        """Move from the current ring to ``new`` (section 4.5: "on receiving the node
        change message a node N first checks if it also maintains the key range ...")."""
        s, me = self.s, self.s.name
        async with s.lock:
            old = s.ring
            if old is not None and new.epoch <= old.epoch:
                return
            self.ring_moved = asyncio.Event()
            # a range still waiting for its first copy is not held, whatever the old ring
            # said: we must neither send it on nor count on it
            old_hold = self.held() if old is not None else []
            self.next_epoch, self.holding = new.epoch, old_hold
            s.ring, s.epoch = new, new.epoch
            try:
                if old is None:  # the initial ring: nothing is stored anywhere yet
                    s.gate.notify()
                    return
                # 1. every complete copy we hold of a range that a server takes on
                # without holding it goes to that server: the old master sends a new
                # master the changes since its pre-copy, and everyone else sends whole
                # copies (the receiver keeps the first). So a new holder is served even if
                # the old master dies before it sends (one failure, which replication
                # R >= 2 promises to survive).
                mastered = old.ranges_of(me, "master")
                for b, e in old_hold:
                    for pc in new.overlapping(b, e):
                        for h in pc.holders:
                            fresh = intersect(subtract([(pc.begin, pc.end)],
                                                       old.ranges_of(h, "any")), [(b, e)])
                            if h == me or not fresh or (h != pc.master and pc.master == me):
                                continue  # (a new master copies to its replicas in step 4)
                            if h == pc.master:
                                await self.catch_up(h, fresh,
                                                    whole=not intersect(fresh, mastered))
                            else:
                                await self.backup(h, fresh)
                # 2. ranges we now master but never held wait for their catch-up; new
                # replica ranges wait for a copy (unless it came already)
                new_master = new.ranges_of(me, "master")
                self.not_ready = subtract(subtract(new_master, old_hold),
                                          booked(self.caught_up, upto=new.epoch))
                self.unsynced = subtract(subtract(new.ranges_of(me, "replica"), old_hold),
                                         booked(self.synced, upto=new.epoch))
                self.next_epoch = None  # from here on a copy meets this ring's waiting sets
                # 3. forget what we no longer hold (but not a copy booked for a later
                # ring: that ring will count it as held)
                later = merge_ranges(booked(self.caught_up, after=new.epoch)
                                     + booked(self.synced, after=new.epoch))
                for b, e in subtract(subtract(old.ranges_of(me, "any"),
                                              new.ranges_of(me, "any")), later):
                    s.store.drop(b, e)
                    s.clocks.clear(b, e)
                # 4. give new (or all, if promoted or broken) replicas a full copy
                # (and ranges that waited for a copy: a replica that missed it gets one)
                promoted = merge_ranges(subtract(new_master, old.ranges_of(me, "master"))
                                        + subtract(new_master, old_hold))
                self.s.dbg(f"transition {old.epoch}->{new.epoch} "
                           f"not_ready={self.not_ready} promoted={promoted} "
                           f"broken={self.broken}")
                ok = await self.sync_replicas(old, new, promoted)
                self.broken = not ok
                self.transfers.clear()
                self.unmerged.clear()
                for book in (self.caught_up, self.synced):  # keep what came for later rings
                    for e in [e for e in book if e <= new.epoch]:
                        del book[e]
                s.metrics.inc("transitions")
            finally:  # a transition cut short must not leave copies judged by it
                self.next_epoch = None
        if self.not_ready:
            background(self.await_catchup(old, new.epoch))
        s.gate.notify()

    async def sync_replicas(self, old: Ring, new: Ring, promoted: list) -> bool:
        me, jobs = self.s.name, []
        for pc in new.pieces:
            if pc.master != me:
                continue
            ready = subtract([(pc.begin, pc.end)], self.not_ready)
            for r in pc.replicas:
                need = ready if self.broken else merge_ranges(
                    subtract(ready, old.ranges_of(r, "any")) + intersect(ready, promoted))
                if need:
                    jobs.append(self.sync_to(r, need))
        res = await self.race(jobs)
        return res is not None and all(res)

    async def catch_up(self, new_master: str, ranges: list[tuple[int, int]],
                       whole: bool = False) -> None:
        """Old master's second phase: send what changed since the pre-copy (or all).
        An old replica sends its ``whole`` copy: the new master keeps whichever catch-up
        of a range comes first (both are complete), and the join survives the death of
        either sender (one failure, as replication R >= 2 promises)."""
        for b, e in ranges:
            dirty = [k for (tb, te), ks in self.transfers.items() if tb < e and b < te
                     for k in ks]
            if not whole and ((b, e) in self.transfers or
                              any(tb <= b and e <= te for tb, te in self.transfers)):
                keys = np.unique(np.concatenate(dirty)) if dirty else np.zeros(0, M.KEY_DTYPE)
                lo, hi = positions(keys, [b, e])
                keys = keys[lo:hi]
                rows = self.s.store.rows(keys)
                msg = M.encode({"op": "sync", "epoch": self.s.epoch, "from": self.s.name,
                                "ranges": [(b, e)], "full": False, "catchup": True,
                                "clocks": self.s.clocks.export(b, e)},
                               keys, self.s.store.vals[rows], [self.s.store.state[rows]])
            else:
                msg = self.range_message("sync", [(b, e)], full=True, catchup=True)
            if not whole:  # the test's victim: an old master, about to send its changes
                self.s.crash_point("before_catchup")
            # Step 3 drops the range once this returns, and with replication 1 ours is its
            # only complete copy: one failed RPC (a deadline, a reset) lost it though no
            # server died. So a failed catch-up is sent again; the receiver keeps the
            # first copy of a range and ignores the rest, so a resend is harmless. One
            # that never gets through is a dead new master: with R = 1 its ranges are lost
            # as any dead server's; with R >= 2 its replicas' copies cover it.
            # (Each attempt gives way to a newer ring, which decides where the range goes:
            # a frozen new master is found dead, and our lock must not be held meanwhile.)
            for attempt in range(CATCHUP_ATTEMPTS):
                res = await self.race([self.send(new_master, "Sync", msg)])
                if res is None:
                    return
                if res[0] is not None:
                    self.s.dbg(f"catch-up to {new_master} [{b}, {e})")
                    self.s.metrics.inc("catchups_sent")
                    break
                self.s.metrics.inc("catchups_failed")
                await asyncio.sleep(0.1 * 2 ** attempt)

    async def backup(self, replica: str, ranges: list[tuple[int, int]]) -> None:
        """A whole copy for a server that becomes a replica of ``ranges``; it keeps it
        only if its master's copy has not come first (:meth:`_sync`)."""
        await self.send(replica, "Sync", self.range_message("sync", ranges, full=True,
                                                             backup=True))
        self.s.dbg(f"backup copy to {replica} {ranges}")

    async def finish(self, ranges: list[tuple[int, int]]) -> None:
        """A caught-up range: copy it to our replicas, then serve it."""
        s = self.s
        async with s.lock:
            done = intersect(merge_ranges(ranges), self.not_ready)
            if not done:
                return
            jobs = []
            for pc in s.ring.pieces:
                if pc.master == s.name:
                    part = intersect([(pc.begin, pc.end)], done)
                    jobs += [self.sync_to(r, part) for r in pc.replicas if part]
            res = await self.race(jobs)
            if res is None or not all(res):
                self.broken = True
            self.not_ready = subtract(self.not_ready, done)
            self.s.dbg(f"serving {done}")
        s.gate.notify()

    async def await_catchup(self, old: Ring, epoch: int) -> None:
        """If a catch-up never comes (its sender died), copy from a surviving holder:
        one that holds the range complete (``Snapshot`` refuses otherwise). A range no
        holder can give is not served; it is asked for again every
        ``CATCHUP_TIMEOUT_S`` until a newer ring replaces this one (a stall is seen,
        where serving an empty range would lose acknowledged pushes unseen)."""
        s = self.s
        while True:
            await asyncio.sleep(CATCHUP_TIMEOUT_S)
            if s.epoch != epoch or not self.not_ready:
                return
            s.metrics.inc("catchup_fallbacks")
            got = []
            for b, e in list(self.not_ready):
                for pc in old.overlapping(b, e):
                    part = intersect([(pc.begin, pc.end)], [(b, e)])
                    for h in pc.holders:
                        if s.epoch != epoch or h == s.name or h not in s.ring.servers:
                            continue
                        reply = await self.fetch(h, part, track=False, install=False)
                        if reply is None:
                            continue
                        # the await let other copies in: install only what still waits
                        # (a catch-up that came meanwhile is served already, and an
                        # older snapshot over it would roll acknowledged pushes back)
                        if s.epoch != epoch:
                            return
                        meta, keys, vals, state = reply
                        keep = intersect(part, self.not_ready)
                        if keep:
                            restrict(meta, keep)
                            self.install({**meta, "full": True}, keys, vals, state)
                            got += keep
                        break
            if got:
                await self.finish(got)
            if self.not_ready and s.epoch == epoch:
                s.dbg(f"no holder could give {self.not_ready}; asking again")

    async def fetch(self, server: str, ranges: list[tuple[int, int]], track: bool,
                    install: bool = True):
        """A whole copy of ``ranges`` from ``server``: installed (returns its meta), or
        with ``install=False`` returned as (meta, keys, vals, state) for the caller to
        check first; None if it failed or the server does not hold them complete."""
        try:
            out = await self.call(server, "Snapshot")(
                M.encode({"ranges": ranges, "track": track, "epoch": self.s.epoch}),
                timeout=10.0)
        except (grpc.RpcError, KeyError):
            return None
        if self.s.repl is not self:  # the server was reset meanwhile: not its data now
            return None
        meta, keys, vals, extra = M.decode(out)
        self.s.metrics.wire(received=len(out))
        if meta.get("code", M.OK) != M.OK:
            return None
        if not install:
            return meta, keys, vals, extra[0]
        self.install({**meta, "full": True}, keys, vals, extra[0])
        return meta

    async def join(self, reg: dict) -> bool:
        """Run-time join (section 4.5): pre-copy, then ask the scheduler to switch."""
        s = self.s
        pending, current = Ring.from_dict(reg["pending"]), Ring.from_dict(reg["ring"])
        s.addrs.update(reg["addrs"])
        self.caught_up.clear()  # a stale copy from before the rejoin must not count
        self.synced.clear()
        s.ring, s.epoch = current, current.epoch
        for b, e in pending.ranges_of(s.name, "master"):
            for pc in current.overlapping(b, e):
                if await self.fetch(pc.master, [(pc.begin, pc.end)], track=True) is None:
                    return False
                if s.repl is not self:  # the server was reset under us (declared dead
                    return False        # while frozen): that join is its own now
        self.s.metrics.inc("joins")
        # the incarnation of this join's registration: a join abandoned by a reset must
        # not complete the new one's (the scheduler checks it)
        r = M.decode(await s.sched_call("JoinReady")(
            M.encode({"name": s.name, "epoch": pending.epoch,
                      "incarnation": reg["incarnation"]}), timeout=5.0))[0]
        if s.repl is not self:
            return False
        if not r["ok"]:
            s.reset()
            return False
        s.member = True
        await s.install(r)
        return True
