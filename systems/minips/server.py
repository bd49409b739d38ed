"""A server node: the master of some key ranges and a replica of others (paper section 4).

It answers the worker API of ps-lite's ``KVServer`` (``kv_app.h``):

* ``Push``: apply the pushed values with the user-defined updater
  (:mod:`.updaters`) to the keys of the ranges it masters, skipping sub-ranges whose
  vector clock shows this push was already applied (a resend), advance the clocks, copy
  the result to the range's replicas, and only then acknowledge (section 4.4);
* ``Pull``: hold the request until its dependency holds (:mod:`.consistency`), then
  return the values (optionally compressed, :mod:`.filters`); a *range pull* returns
  every stored key of the ranges (the paper's ``pull(R)``).

and the server-to-server side of replication and recovery (:mod:`.replication`):
``Forward`` (a master's changes), ``Sync`` (a full copy of a range with its clocks),
``Snapshot`` (the pre-copy a joining server asks for) and ``Ring`` (the scheduler's
notice that the ring changed).

Everything runs on one asyncio event loop, so a request's reads and writes of the
store are atomic between ``await`` points; ``self.lock`` serialises the
apply-then-replicate sequence of pushes and ring transitions.

Run: ``python -m systems.minips.server --name s0 --scheduler ADDR`` (the launcher does).
Fault injection, checkpoints and debug dumps go through the ``Control`` RPC
(:mod:`.control`); ``PS_VERBOSE=1`` logs every apply, forward, copy and transition (the
name of ps-lite's logging variable).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import functools
import os
import signal
import time
import traceback
from typing import Any

import grpc
import numpy as np

from common import rpc
from common.procs import announce_ready
from common.trace import now_us

from . import control, updaters
from . import message as M
from .clock import VectorClock
from .consistency import DependencyGate
from .filters import KeyCache, check_codec, decode_request, encode_values, safe_codec
from .membership import Membership
from .metrics import NodeMetrics
from .replication import Replication
from .ring import Ring, intersect, merge_ranges, positions
from .store import KVStore

VERBOSE = bool(os.environ.get("PS_VERBOSE"))


class KVServer(Membership):
    def __init__(self, name: str, scheduler: str, host: str, run_dir: str | None = None,
                 restore: str | None = None):
        self.name, self.host, self.run_dir, self.restore = name, host, run_dir, restore
        # set once the checkpoint is loaded (at once if there is none): it is loaded when
        # the first ring comes, and a push, a replica's copy or a pull served before that
        # would be overwritten by the checkpoint's older values (or read empty ones)
        self.restored = asyncio.Event()
        self.fatal: str | None = None  # why this server stopped itself (a failed restore)
        if restore is None:
            self.restored.set()
        self.sched = rpc.aio_channel(scheduler)
        self.addr = ""
        self.metrics = NodeMetrics(name, "server")
        self.stopping = asyncio.Event()
        self.crash: dict[str, int] = {}
        self.crash_how: dict[str, str] = {}
        self.config: dict[str, Any] = {}
        self.rejoining = False
        self.registration = 0  # bumped by each rejoin: older registrations stop
        self.reset()

    def reset(self) -> None:
        """Forget all data (start, or rejoin after being declared dead)."""
        old_gate = getattr(self, "gate", None)
        self.store: KVStore | None = None
        self.clocks: VectorClock | None = None
        self.gate: DependencyGate | None = None
        self.ring: Ring | None = None
        self.epoch, self.members_version, self.incarnation = 0, -1, -1
        self.addrs: dict[str, str] = {}
        self.lock = asyncio.Lock()
        self.key_cache = KeyCache()
        self.repl = Replication(self)
        self.member = False
        if self.config:
            self.configure(self.config)
        if old_gate is not None:
            # Pulls and BSP pushes held on the old gate would never be woken again (a
            # new gate replaces it): wake them now, so they see the epoch change and
            # answer STALE, and the worker resends to the new ring. A pull held across
            # a rejoin waited for its 600 s deadline, and under BSP the whole job with it.
            old_gate.notify()

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config
        self.store = KVStore(config["val_len"])
        self.clocks = VectorClock(config["key_max"])
        self.pulled = VectorClock(config["key_max"])  # pull clocks, for BSP pushes
        self.gate = DependencyGate(self.clocks)
        self.updaters = updaters.Regions(
            updaters.make(config["updater"]),
            [(b, e, updaters.make(spec)) for b, e, spec in config.get("regions", [])])

    # ---- helpers -------------------------------------------------------------------
    def sched_call(self, name: str):
        return rpc.method(self.sched, M.SCHEDULER_SERVICE, name)

    def dbg(self, msg: str) -> None:
        """Log a replication step when ``PS_VERBOSE`` is set (ps-lite's variable of the
        same name: 1 logs connections, 2 every message); the fault tests' debugging aid."""
        if VERBOSE:
            print(f"[{time.monotonic():.3f} {self.name} e{self.epoch}] {msg}", flush=True)

    def masters(self, ranges: list[tuple[int, int]]) -> bool:
        if self.ring is None:
            return False
        mine = self.ring.ranges_of(self.name, "master")
        return merge_ranges(intersect(merge_ranges(ranges), mine)) == merge_ranges(ranges)

    def parse_ranges(self, meta: dict, keys: np.ndarray | None) -> list[tuple[int, int]]:
        try:
            ranges = [(int(b), int(e)) for b, e in meta["ranges"]]
        except (KeyError, TypeError, ValueError):
            raise M.PSError("INVALID", f"request needs 'ranges' as [[begin, end], ...], "
                                       f"got {meta.get('ranges')!r}") from None
        km = self.config["key_max"]
        for b, e in ranges:
            if not 0 <= b < e <= km:
                raise M.PSError("INVALID", f"range [{b}, {e}) is empty or outside the key "
                                           f"space [0, {km})")
        for (_, e), (b, _) in zip(ranges, ranges[1:], strict=False):
            if b < e:  # keys are gathered range by range: out of order, they would be too
                raise M.PSError("INVALID", f"ranges must be sorted and disjoint, got "
                                           f"{ranges}")
        if keys is not None and keys.size:
            pos = positions(keys, [x for r in ranges for x in r])
            inside = int(sum(pos[1::2] - pos[0::2]))
            if inside != keys.size:
                raise M.PSError("INVALID", f"{keys.size - inside} of {keys.size} keys lie "
                                           f"outside the request's ranges {ranges}")
        return ranges

    async def behind(self, epoch: int) -> bool:
        """Is the request's ring older than ours? If it is newer, catch up first."""
        if epoch > self.epoch:
            await self.refresh()
        return epoch < self.epoch

    async def wait_ready(self, ranges: list[tuple[int, int]], timeout: float = 5.0) -> bool:
        t_end = time.monotonic() + timeout
        while intersect(merge_ranges(ranges), self.repl.not_ready):
            if time.monotonic() > t_end:
                return False
            await asyncio.sleep(0.005)
        return True

    async def until_restored(self, timeout: float = 10.0) -> None:
        """Hold a request until the checkpoint is loaded (a server started with
        ``--restore`` gets a request as soon as a peer or a worker knows the ring, which
        may be before it has fetched the ring and loaded its ranges; the ring reaches it
        by the scheduler's notice or its next heartbeat)."""
        try:
            await asyncio.wait_for(self.restored.wait(), timeout)
        except TimeoutError:  # not in a ring yet (a joiner): serve as it is, and say so
            print(f"[{self.name}] serving before the checkpoint was loaded", flush=True)

    async def guard(self, fn, req: bytes, ctx) -> bytes:
        """Run a handler; client bugs abort with INVALID_ARGUMENT, signals go in band."""
        self.metrics.wire(received=len(req))
        if not self.restored.is_set():
            await self.until_restored()
        try:
            out = await fn(req)
        except M.PSError as e:
            if e.code == "INVALID":
                self.metrics.inc("invalid_requests")
                await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            out = M.encode(M.reply(e.code, str(e)))
        except (KeyError, TypeError, ValueError) as e:  # a meta field missing or malformed
            self.metrics.inc("invalid_requests")
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"[INVALID] malformed request meta: {type(e).__name__} {e}")
        except M.PeerBug as e:  # a replica's bug, met while passing this push on
            await ctx.abort(grpc.StatusCode.INTERNAL, str(e))
        except Exception as e:  # a bug in the server: say so, do not let clients resend
            traceback.print_exc()  # for ever (gRPC's UNKNOWN looks like a dead server)
            self.metrics.inc("handler_errors")
            await ctx.abort(grpc.StatusCode.INTERNAL,
                            f"{M.SERVER_BUG} {self.name}: {type(e).__name__}: {e} (the "
                            f"traceback is in its log)")
        self.metrics.wire(sent=len(out))
        return out

    # ---- worker API ----------------------------------------------------------------
    async def Push(self, req: bytes, ctx) -> bytes:
        self.metrics.start_cpu_clock()  # a worker's first request: training has begun
        with self.metrics.lane() as lane:
            return await self.guard(functools.partial(self._push, lane=lane), req, ctx)

    async def _push(self, req: bytes, lane: int) -> bytes:
        t0 = now_us()
        meta, keys, vals, _ = M.decode(req)
        M.check_clocks(meta, "push")
        keys, vals = decode_request(meta, keys, vals, self.key_cache, self.config["val_len"])
        if keys is None:
            raise M.PSError("INVALID", "a push needs keys")
        M.check_keys(keys, self.config["key_max"], "push")
        vals = M.check_vals(vals, keys.size, self.config["val_len"], "push")
        ranges = self.parse_ranges(meta, keys)
        self.record_pull(meta.get("sender", "?"), ranges, meta.get("clock"))
        if meta.get("push_wait") is not None:  # BSP: wait until everyone read this clock
            epoch = self.epoch
            await self.gate.wait(ranges, meta["push_wait"], None,
                                 lambda: self.epoch == epoch and not self.stopping.is_set(),
                                 clocks=self.pulled)
        while True:
            if await self.behind(meta["epoch"]):
                return M.encode(M.reply(M.STALE, epoch=self.epoch))
            if not await self.wait_ready(ranges):
                return M.encode(M.reply(M.RETRY, "ranges not ready"))
            # A worker cancels a call it no longer needs (the ring moved), and gRPC then
            # cancels this handler. Once a push is applied its copy to the replicas must
            # still finish (or mark us broken), so that part runs as its own task.
            code = await asyncio.shield(asyncio.ensure_future(
                self.apply_and_replicate(meta, keys, vals, ranges)))
            if code == M.OK:
                break
            if code != "again":
                return M.encode(M.reply(code, epoch=self.epoch))
        self.gate.notify()
        self.metrics.inc("push_requests")
        self.metrics.inc("push_keys", keys.size)
        sender = meta.get("sender", "?")
        self.metrics.flow(f"{sender}-{meta.get('ts')}-{self.name}", False, t0, lane)
        self.metrics.span("push", t0, now_us() - t0, lane, sender=sender, keys=int(keys.size),
                          clock=meta.get("clock"))
        return M.encode(M.reply())

    async def apply_and_replicate(self, meta: dict, keys: np.ndarray, vals: np.ndarray,
                                  ranges: list[tuple[int, int]]) -> str:
        """Apply a push and copy the result to every replica, under the lock (4.4)."""
        async with self.lock:
            if meta["epoch"] != self.epoch or not self.masters(ranges):
                return M.STALE
            if intersect(merge_ranges(ranges), self.repl.not_ready):
                return "again"  # a transition made them unready again: wait once more
            if self.repl.broken and not await self.repl.resync_all():
                return M.RETRY  # replicas out of sync and unreachable
            self.crash_point("before_apply")
            changes = self.apply_push(meta, keys, vals, ranges)
            self.crash_point("after_apply")
            if not await self.repl.forward(changes):
                self.repl.broken = True
                return M.RETRY  # a replica did not acknowledge: not acked
            self.crash_point("after_forward")
            return M.OK

    def apply_push(self, meta: dict, keys: np.ndarray, vals: np.ndarray,
                   ranges: list[tuple[int, int]]) -> list:
        """Apply what is new in a push; return the changes to send to replicas."""
        sender, t = meta.get("sender", "?"), meta.get("clock")
        fresh = ranges
        if t is not None:
            c = self.clocks.of(sender)
            fresh = [sub for b, e in ranges for sub in c.below(b, e, t)]
            if fresh != ranges:
                self.metrics.inc("duplicate_pushes_dropped")
        if fresh != ranges:
            pos = positions(keys, [x for r in fresh for x in r])
            idx = np.concatenate([np.arange(pos[i], pos[i + 1]) for i in range(0, len(pos), 2)]
                                 + [np.zeros(0, np.int64)])
            self.metrics.inc("duplicate_keys_dropped", keys.size - idx.size)
            keys, vals = keys[idx], vals[idx]
        if meta.get("cmd") == "init":
            self.store.init(keys, vals)
        else:
            for up, m in self.updaters.split(keys):
                if m.all():
                    self.store.update(keys, vals, up)
                else:
                    self.store.update(keys[m], vals[m], up)
        if t is not None:  # only where the clock was behind: a clock never moves back
            for b, e in fresh:
                self.clocks.of(sender).set(b, e, t)
        self.dbg(f"apply {sender}@{t} ranges={ranges} fresh={fresh} n={keys.size}")
        self.repl.track_dirty(keys)
        return self.repl.changes(keys, ranges, sender, t)

    async def Pull(self, req: bytes, ctx) -> bytes:
        self.metrics.start_cpu_clock()
        with self.metrics.lane() as lane:
            return await self.guard(functools.partial(self._pull, lane=lane), req, ctx)

    async def _pull(self, req: bytes, lane: int) -> bytes:
        t0 = now_us()
        meta, keys, _, _ = M.decode(req)
        M.check_clocks(meta, "pull")
        if meta.get("pull_codec") is not None:
            check_codec(meta["pull_codec"], "pull_codec")
        keys, _ = decode_request(meta, keys, None, self.key_cache)
        range_pull = bool(meta.get("range_pull"))
        if keys is None and not range_pull:
            raise M.PSError("INVALID", "a pull needs keys (or range_pull)")
        if keys is not None:
            M.check_keys(keys, self.config["key_max"], "pull")
        ranges = self.parse_ranges(meta, keys)
        if await self.behind(meta["epoch"]) or not self.masters(ranges):
            return M.encode(M.reply(M.STALE, epoch=self.epoch))
        if not await self.wait_ready(ranges):
            return M.encode(M.reply(M.RETRY, "ranges not ready"))
        epoch = self.epoch
        held = await self.gate.wait(ranges, meta.get("wait"), meta.get("clock"),
                                    lambda: self.epoch == epoch and not self.stopping.is_set())
        if self.epoch != epoch or not self.masters(ranges):
            return M.encode(M.reply(M.STALE, epoch=self.epoch))
        if range_pull:
            parts = [self.store.range(b, e) for b, e in ranges]
            keys = np.concatenate([p[0] for p in parts])
            vals = np.concatenate([p[1] for p in parts]) if parts else None
        else:
            vals = self.store.get(keys)
        self.record_pull(meta.get("sender", "?"), ranges, meta.get("clock"))
        out_meta = M.reply(held_s=held, reached=self.gate.reached(ranges))
        codec = meta.get("pull_codec")
        if codec and vals is not None and vals.size and (codec := safe_codec(codec, vals)):
            vals = encode_values(vals, codec, out_meta)
        self.metrics.inc("pull_requests")
        self.metrics.inc("pull_keys", 0 if keys is None else keys.size)
        self.metrics.inc("consistency_wait_s", held)
        sender = meta.get("sender", "?")
        self.metrics.flow(f"{sender}-{meta.get('ts')}-{self.name}", False, t0, lane)
        self.metrics.span("pull", t0, now_us() - t0, lane, sender=sender, held_ms=held * 1e3,
                          wait=meta.get("wait"))
        return M.encode(out_meta, keys if range_pull else None, vals)

    def record_pull(self, sender: str, ranges: list[tuple[int, int]], clock: int | None
                    ) -> None:
        """``sender`` has read ``ranges`` at ``clock`` (BSP pushes of that clock may go).

        Also called for every push, forward and copied clock: a worker pushes clock c
        only after pulling it, so the pull clock never lags the push clock anywhere,
        including on a replica that takes over."""
        if clock is None:
            return
        c = self.pulled.of(sender)
        for b, e in ranges:
            for lo, hi in c.below(b, e, clock):
                c.set(lo, hi, clock)
        self.gate.notify()

    # the replication RPCs go to whatever Replication is current (a rejoin makes a new one)
    async def Forward(self, req: bytes, ctx) -> bytes:
        return await self.repl.Forward(req, ctx)

    async def Sync(self, req: bytes, ctx) -> bytes:
        return await self.repl.Sync(req, ctx)

    async def Snapshot(self, req: bytes, ctx) -> bytes:
        return await self.guard(lambda r: self.repl.Snapshot(r, ctx), req, ctx)

    # ---- control (fault injection, checkpoints, metrics: see .control) ---------------
    async def Control(self, req: bytes, ctx) -> bytes:
        return await self.guard(lambda r: control.control(self, r), req, ctx)

    def crash_point(self, point: str) -> None:
        control.crash_point(self, point)


async def serve(name: str, scheduler: str, host: str, port: int, run_dir: str | None,
                restore: str | None) -> None:
    node = KVServer(name, scheduler, host, run_dir, restore)
    handlers = {n: getattr(node, n) for n in ("Push", "Pull", "Control", "Ring", "Forward",
                                              "Sync", "Snapshot")}
    server, bound = await rpc.serve_aio(M.SERVICE, handlers, host=host, port=port)
    try:  # stopped here on every way out (Ctrl-C, a failed Register): a grpc.aio server
        node.addr = rpc.address(host, bound)  # left to its __del__ after the loop closed
        hb = asyncio.ensure_future(node.heartbeats())  # prints a traceback
        await node.register()
        announce_ready(port=bound, addr=node.addr, name=name)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, node.stopping.set)
        await node.stopping.wait()
        if node.gate is not None:
            node.gate.notify()
        hb.cancel()
        node.metrics.extra.update(control.snapshot(node))
        node.metrics.save(run_dir)
    finally:
        await server.stop(0.2)
    if node.fatal:
        raise SystemExit(f"[{name}] {node.fatal}")


def enter_netns(name: str) -> None:
    """Move this process into network namespace ``name`` (``ip netns add name``) before
    any socket or thread exists; the cut-off test partitions a server this way."""
    import ctypes

    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    clone_newnet = 0x40000000
    if ctypes.CDLL(None, use_errno=True).setns(fd, clone_newnet) != 0:
        raise OSError(ctypes.get_errno(), f"setns into network namespace {name!r} failed")
    os.close(fd)


def main() -> None:
    p = argparse.ArgumentParser(description="minips server node")
    p.add_argument("--name", required=True)
    p.add_argument("--scheduler", required=True, help="HOST:PORT of the scheduler")
    p.add_argument("--host", default=rpc.LOOPBACK)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--run-dir", default=None, help="where to write metrics and trace")
    p.add_argument("--restore", default=None, help="checkpoint directory to start from")
    p.add_argument("--netns", default=None, help="run inside this network namespace")
    a = p.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks on demand
    if a.netns:
        enter_netns(a.netns)
    M.reuse_large_buffers()
    asyncio.run(serve(a.name, a.scheduler, a.host, a.port, a.run_dir, a.restore))


if __name__ == "__main__":
    main()
