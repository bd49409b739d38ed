"""Replication and recovery of key ranges (paper sections 4.4 and 4.5).

Neither ps-lite nor the original dmlc/parameter_server code implements this part of the
paper (ps-lite's ``Resender`` only re-sends lost messages; the original has a
``num_replicas`` flag and empty ``Parameter::SetReplica``/``GetReplica``/``Recover``
hooks), so the paper is the reference:

* **chain of replicas**: each range lives on its master and on the next ``R - 1``
  servers of the ring (:mod:`.ring`). After applying a push, the master sends the
  *resulting* values and optimiser state of the touched keys, with the sender's vector
  clock update, to every replica (``Forward``) and acknowledges the worker only when
  all of them have acknowledged: an acknowledged push survives the loss of any R - 1
  servers. (We copy after each push; the paper also describes replicating after
  aggregating several workers' pushes, which saves bandwidth but delays every ack to
  the slowest worker; see docs/minips/index.md, "Design decisions".)
* **fencing**: every message carries the sender's ring epoch; a replica refuses
  forwards from an older epoch, so a master that was frozen, declared dead and then
  resumed cannot acknowledge anything.
* **ring changes** (moving ranges when a server dies or joins) are the other half of
  this class, in :mod:`.transitions`; a module each, so that each reads in one sitting.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import numpy as np

from common import rpc
from common.trace import now_us

from . import message as M
from .ring import merge_ranges, positions
from .transitions import RingTransitions

if TYPE_CHECKING:
    from .server import KVServer

FORWARD_TIMEOUT_S = 1.0
# A whole-range copy is sent, decoded and installed in one go: its deadline grows with
# its size, at a rate well under what loopback and numpy manage on a busy two-core VM
# (80 MB in 0.3 s). With one second for any size, every copy of a range of tens of MB
# timed out, marked the master broken, and each later push resent every range it
# masters: copies without end, and no push acknowledged.
COPY_BYTES_PER_S = 20e6


class Replication(RingTransitions):
    """One server's side of replication: primary-backup replication of pushes (here: the
    master forwards to every replica in parallel; the paper's chain replication is
    exercise 3a) and ring changes (:class:`.transitions.RingTransitions`)."""

    def __init__(self, server: KVServer):
        super().__init__()
        self.s = server
        self.broken = False
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.ring_moved = asyncio.Event()  # a newer ring is announced: stop waiting on peers

    def call(self, server: str, method: str):
        addr = self.s.addrs[server]
        if addr not in self.channels:
            self.channels[addr] = rpc.aio_channel(addr)
        return rpc.method(self.channels[addr], M.SERVICE, method)

    async def send(self, server: str, method: str, msg: bytes,
                   timeout: float | None = None, bugs: bool = False) -> dict | None:
        """One RPC to a peer; None if it failed or answered anything but OK. With
        ``bugs``, a peer's exception (``M.SERVER_BUG``) is raised as ``M.PeerBug``: the
        push that met it then fails with it, where "unreachable" would be resent for ever.
        (Not on a ring change's copies: those run in background tasks, where an exception
        would be lost. A failed copy marks the master broken, and the next push's
        resync then meets the bug again and reports it.)"""
        if timeout is None:
            timeout = FORWARD_TIMEOUT_S + len(msg) / COPY_BYTES_PER_S
        try:
            self.s.metrics.wire(sent=len(msg))
            out = await self.call(server, method)(msg, timeout=timeout)
            self.s.metrics.wire(received=len(out))
            meta = M.decode(out)[0]
            return meta if meta.get("code") == M.OK else None
        except grpc.RpcError as e:
            if bugs and (bug := M.server_bug(e)):
                raise M.PeerBug(f"{bug} (met by {self.s.name}'s {method})") from None
            return None
        except (KeyError, M.PSError):
            return None

    # ---- the master's side of a push --------------------------------------------------

    def track_dirty(self, keys: np.ndarray) -> None:
        for (b, e), dirty in self.transfers.items():
            lo, hi = positions(keys, [b, e])
            if hi > lo:
                dirty.append(keys[lo:hi].copy())
                # a join abandoned after its pre-copy (the joiner died) is only forgotten
                # at the next ring change: until then every push here adds a copy of its
                # keys. Merged into one sorted set of distinct keys whenever the copies
                # since the last merge outgrow it (amortised: each key is sorted O(1)
                # times), the record stays within twice the range's distinct keys. The
                # count is kept, not summed over the parts at every push.
                n = self.unmerged[b, e] = self.unmerged.get((b, e), 0) + hi - lo
                if len(dirty) > 1 and n > max(dirty[0].size, 1 << 16):
                    dirty[:] = [np.unique(np.concatenate(dirty))]
                    self.unmerged[b, e] = 0

    def changes(self, keys: np.ndarray, ranges: list[tuple[int, int]], sender: str,
                t: int | None) -> list[tuple[str, bytes]]:
        """The ``Forward`` message for each replica of the pushed ranges."""
        ring, store = self.s.ring, self.s.store
        per: dict[str, list[tuple[int, int]]] = {}
        for b, e in ranges:
            for pc in ring.overlapping(b, e):
                for r in pc.replicas:
                    per.setdefault(r, []).append((pc.begin, pc.end))
        if not per:
            return []
        rows = store.rows(keys)
        vals, state = store.vals[rows], store.state[rows]
        out = []
        for r, rr in per.items():
            rr = merge_ranges(rr)
            pos = positions(keys, [x for rg in rr for x in rg])
            idx = np.concatenate([np.arange(pos[i], pos[i + 1]) for i in range(0, len(pos), 2)])
            meta = {"op": "forward", "epoch": self.s.epoch, "from": self.s.name,
                    "worker": sender, "clock": t, "ranges": rr}
            out.append((r, M.encode(meta, keys[idx], vals[idx], [state[idx]])))
        return out

    async def race(self, jobs: list) -> list | None:
        """Run peer RPCs, but give up as soon as a newer ring is announced: a frozen
        peer would otherwise hold our lock (and so the transition) for a full timeout."""
        if not jobs:
            return []
        rpcs = asyncio.ensure_future(asyncio.gather(*jobs))
        moved = asyncio.ensure_future(self.ring_moved.wait())
        await asyncio.wait({rpcs, moved}, return_when=asyncio.FIRST_COMPLETED)
        moved.cancel()
        if rpcs.done():
            return rpcs.result()
        rpcs.cancel()
        self.s.metrics.inc("peer_rpcs_abandoned")
        return None

    async def forward(self, changes: list[tuple[str, bytes]]) -> bool:
        if not changes:
            return True
        t0 = now_us()
        res = await self.race([self.send(r, "Forward", msg, bugs=True) for r, msg in changes])
        self.s.metrics.inc("forwards", len(changes))
        self.s.metrics.span("forward", t0, now_us() - t0, replicas=[r for r, _ in changes])
        return res is not None and all(x is not None for x in res)

    # ---- a replica's side -------------------------------------------------------------

    async def Forward(self, req: bytes, ctx) -> bytes:
        return await self.s.guard(self._forward, req, ctx)

    async def _forward(self, req: bytes) -> bytes:
        meta, keys, vals, extra = M.decode(req)
        M.check_copy(keys, vals, extra, self.s.config["key_max"], self.s.config["val_len"],
                     "forward")
        if meta["epoch"] < self.s.epoch or self.s.store is None:
            return M.encode(M.reply(M.STALE, "forward from an older ring", epoch=self.s.epoch))
        if meta["epoch"] > self.s.epoch:
            self.s.refresh_soon()
        k = self.s.config["val_len"]
        self.s.store.assign(keys, vals.reshape(-1, k), extra[0].reshape(-1, k))
        if meta.get("clock") is not None:
            c, t = self.s.clocks.of(meta["worker"]), int(meta["clock"])
            rr = [(int(b), int(e)) for b, e in meta["ranges"]]
            # only where the clock is behind, as on the master: a late resend of an old
            # push (dropped by the master) must not move the replica's clock back, or the
            # replica, once promoted, would apply a resend of a newer push a second time
            for lo, hi in [sub for b, e in rr for sub in c.below(b, e, t)]:
                c.set(lo, hi, t)
            self.s.record_pull(meta["worker"], rr, t)
        self.s.metrics.inc("replica_applies")
        self.s.dbg(f"forward from {meta['from']} e{meta['epoch']} {meta['worker']}@"
                   f"{meta.get('clock')} ranges={meta['ranges']} n={keys.size}")
        self.s.crash_point("replica_after_apply")
        self.s.gate.notify()
        return M.encode(M.reply())

    def range_message(self, op: str, ranges: list[tuple[int, int]], **meta) -> bytes:
        """Full copy of ``ranges``: keys, values, state and every worker's clocks."""
        parts = [self.s.store.range(b, e) for b, e in ranges]
        clocks: dict[str, list] = {}
        for b, e in ranges:
            for n, segs in self.s.clocks.export(b, e).items():
                clocks.setdefault(n, []).extend(segs)
        k = self.s.config["val_len"]
        keys = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, M.KEY_DTYPE)
        vals, state = ((np.concatenate([p[i] for p in parts]) if parts
                        else np.zeros((0, k), M.VAL_DTYPE)) for i in (1, 2))
        return M.encode({"op": op, "epoch": self.s.epoch, "from": self.s.name,
                         "ranges": ranges, "clocks": clocks, **meta}, keys, vals, [state])

    # ---- whole copies: to a new replica, and a broken master's resync -------------------

    async def sync_to(self, replica: str, ranges: list[tuple[int, int]],
                      bugs: bool = False) -> bool:
        ok = await self.send(replica, "Sync", self.range_message("sync", ranges, full=True),
                             bugs=bugs)
        self.s.dbg(f"copy to {replica} {ranges} ok={ok is not None}")
        self.s.metrics.inc("syncs_sent")
        return ok is not None

    async def resync_all(self) -> bool:
        """Send every range we master to all its replicas (after a failed forward or
        copy). A replica's exception is raised (``M.PeerBug``): the push waiting for this
        resync fails with it instead of being answered RETRY for as long as the bug stays."""
        ring, me = self.s.ring, self.s.name
        jobs = [self.sync_to(r, [(pc.begin, pc.end)], bugs=True) for pc in ring.pieces
                if pc.master == me for r in pc.replicas]
        res = await self.race(jobs)
        self.broken = res is None or not all(res)
        return not self.broken
