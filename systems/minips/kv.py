"""The worker's key-value API, after ps-lite's ``KVWorker`` (``include/ps/kv_app.h``).

``push(keys, vals)`` and ``pull(keys)`` return at once with a *timestamp*; ``wait(ts)``
blocks until that request has finished (for a pull, it returns the values). Keys are
sorted unique uint64 arrays, values float32 with ``val_len`` numbers per key. A request
is sliced by the ring into one message per server (ps-lite ``KVWorker::Send`` with the
``DefaultSlicer``), each carrying the *key ranges* it covers, so servers can advance
range vector clocks even for ranges where this worker had no key.

What ps-lite leaves out and the paper asks for, done here:

* **range operations**: ``pull_range(begin, end)`` returns every stored key of a range;
  ``push(..., key_range=)`` states the range a push covers (the default is the whole
  key space: "my gradient is zero where I sent nothing");
* **consistency**: ``pull(keys, clock=c, wait=d)`` declares the task's dependency; the
  server holds it until every worker finished clock ``d`` (:mod:`.consistency`);
* **failures** (section 4.5, :mod:`.recovery`): a slice whose server fails, times out,
  answers STALE, or no longer masters its ranges in a newer ring is re-sliced with the
  new ring and resent; the vector clocks make the resend harmless where the first copy
  was applied;
* **ordering**: pushes from one worker leave one at a time (the next push is sent when
  the previous one is acknowledged everywhere). Clock-based de-duplication needs each
  range to see a worker's pushes in timestamp order, and a resend must not overtake a
  later push: this is the task dependency "push t depends on push t-1".
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from typing import Any

import grpc
import numpy as np

from common import rpc
from common.trace import now_us

from . import message as M
from .filters import FilterChain
from .metrics import NodeMetrics
from .recovery import Recovery, register
from .ring import Ring, intersect, merge_ranges, positions
from .tracker import Pending, Records, Request, fresh_error

PUSH_TIMEOUT_S = 10.0
PULL_TIMEOUT_S = 600.0  # a pull may wait long on consistency; failures are caught earlier


def _own(arr: np.ndarray, given) -> np.ndarray:
    """``arr``, copied if it may be the caller's own memory: the caller's array itself
    or a view of it, or of a torch tensor (numpy reads a CPU tensor without a copy)."""
    return arr.copy() if arr is given or not arr.flags.owndata else arr


def _outside(keys: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """The keys that lie in none of the sorted, disjoint ``ranges``."""
    pos = positions(keys, [x for r in ranges for x in r])
    outside = np.ones(keys.size, bool)
    for lo, hi in zip(pos[0::2], pos[1::2], strict=True):
        outside[lo:hi] = False
    return keys[outside]


class KVWorker(Recovery, Records):
    def __init__(self, scheduler: str, name: str, role: str = "worker",
                 filters: list | None = None, heartbeat: bool = True,
                 connect_s: float = 10.0):
        self.name, self.role = name, role
        M.reuse_large_buffers()
        self.sched, reg = register(scheduler, name, role, connect_s)
        self.config = reg["config"]
        self.shards = reg.get("shards", [])
        self.key_max, self.val_len = self.config["key_max"], self.config["val_len"]
        self.metrics = NodeMetrics(name, role)
        self.filters = FilterChain(filters)
        self.lock = threading.RLock()  # the records, the ring, the push queue
        self.push_order = threading.RLock()  # a push's clock, filters and place in the queue
        self.init_records()
        self.push_queue: collections.deque[Request] = collections.deque()
        self.push_busy = False
        self.ts_counter = itertools.count()
        self.sid_counter = itertools.count()
        # after a restore, this name's clocks go on from the checkpoint's (see
        # checkpoint.check_fits): pushes at clocks it holds would be dropped as resends
        self.auto_clock = int(self.config.get("restored_clocks", {}).get(name, -1))
        self.clock_ranges: list[tuple[int, int]] = []  # pushed at auto_clock so far
        self.channels: dict[str, Any] = {}
        self.closed = False
        self.hb_state: dict[str, Any] = {}
        self.failure: str | None = None  # set when the scheduler declares the job failed
        self.progress: dict[int, int] = {}
        self.retire = False
        self.clock = 0
        self.ring: Ring | None = None
        self.info: dict[str, Any] = {}
        self.retries: queue.Queue = queue.Queue()
        self.threads = [threading.Thread(target=self._resender, daemon=True)]
        if heartbeat:
            # from registration on, not from the first ring: a worker started more than
            # worker_timeout before the servers was silent until then, and declared dead
            self.threads.append(threading.Thread(target=self._heartbeats, daemon=True))
            self.threads[-1].start()
        t_end = time.monotonic() + 60
        try:
            while self._refresh_ring() < 1:
                if time.monotonic() > t_end:
                    raise TimeoutError("the scheduler formed no ring within 60 s")
                time.sleep(0.02)
        except BaseException:
            # no worker (Ctrl-C too): its heartbeats must end, or the scheduler would
            # never find it dead nor hand its shard on
            self.closed = True
            raise
        self.threads[0].start()

    # ---- the API ---------------------------------------------------------------------
    def push(self, keys: np.ndarray, vals: np.ndarray, clock: int | None = None,
             key_range: tuple[int, int] | None = None, cmd: str = "push",
             ctx: dict | None = None, wait: int | None = None, copy: bool = True) -> int:
        """Push ``vals`` for ``keys``; returns a timestamp for :meth:`wait`.

        ``clock`` is the task's timestamp (default: one more than the last push);
        ``wait`` a dependency on every worker's *pull* of that clock (BSP);
        ``ctx`` is handed to the value filters (the KKT filter reads ``ctx["weights"]``).
        The push returns before it is sent (it may wait behind the previous one, and is
        resent after a failure), so the arrays are copied, as ps-lite's ``Push`` does;
        ``copy=False`` is its ``ZPush``: the caller promises not to change them until
        the push is acknowledged (the worker loop, whose arrays are new each step).
        """
        orig_k, orig_v = keys, vals
        clock, wait = M.as_clock(clock, "clock", "push"), M.as_clock(wait, "wait", "push")
        keys = M.as_keys(keys, self.key_max, "push")
        vals = M.as_vals(vals, keys.size, self.val_len)
        if copy:
            keys, vals = _own(keys, orig_k), _own(vals, orig_v)
        # one critical section from the clock to the queue: pushes from several threads
        # then leave in clock order (a later clock sent first would make the servers
        # drop the earlier push as a resend, after acknowledging it). It is a lock of
        # its own, not self.lock: the reply threads need that one to finish requests,
        # and a value filter may take its time, or pull through this very worker.
        with self.push_order:
            ranges = M.check_range(key_range, keys, self.key_max, "push")
            with self.lock:
                clock = self._take_clock(clock, ranges, cmd, ctx)
            grew = False
            if self.filters.value_filters and cmd != "init" and keys.size:
                keys, vals = self.filters.filter_push(keys, vals, ctx or {})
                # a final push also flushes what a filter held back, maybe outside
                # key_range: cover those keys too, or no slice would carry them
                out = _outside(keys, ranges)
                if out.size:
                    ranges = merge_ranges(ranges + [(int(k), int(k) + 1) for k in out])
                    grew = True
            with self.lock:
                if grew and clock is not None:  # this clock covers those keys too
                    self.clock_ranges = merge_ranges(self.clock_ranges + ranges)
                req = self._new("push", keys, vals, ranges, clock=clock, cmd=cmd)
                req.push_wait = wait
                self.push_queue.append(req)
                if not self.push_busy:
                    self._next_push()
        return req.ts

    def _take_clock(self, clock: int | None, ranges: list[tuple[int, int]], cmd: str,
                    ctx: dict | None) -> int | None:
        """The push's clock (default: one more than the last), checked and recorded."""
        if clock is None and cmd != "init":
            clock = self.auto_clock + 1
        if clock is None:
            return None
        if clock < self.auto_clock:
            raise ValueError(f"push clock {clock} is older than the last one "
                             f"({self.auto_clock}); clocks only move forward")
        # A range's clock says which pushes it applied, so a second push to the same
        # range at the same clock would be dropped as a resend: refuse it here.
        same = self.clock_ranges if clock == self.auto_clock else []
        if same and (ctx or {}).get("final") and self.filters.value_filters:
            # the final push flushes what filters held back, anywhere in the key space,
            # so into ranges this clock already covered, where the servers would drop it
            # as a resend: it needs a clock of its own
            raise ValueError(f"a final push (ctx['final']) flushes held-back updates, "
                             f"so it needs a clock no push has used; clock {clock} "
                             f"already covered {same}")
        if intersect(same, ranges):
            raise ValueError(f"a push at clock {clock} already covered "
                             f"{intersect(same, ranges)}; push the next clock, or "
                             f"one push per range and clock")
        self.clock_ranges = merge_ranges(same + ranges)
        self.auto_clock = clock
        return clock

    def tick(self, clock: int) -> int:
        """A push of no keys over the whole key space at ``clock``: this worker has
        finished every clock up to it. An heir that rejoins the clock set at the others'
        clock (section 4.6) sends one, or its first pull waits for its own old clock on
        the servers, and every other pull with it. It waits for nothing: with BSP's push
        dependency two heirs rejoining a few ms apart each waited for the other."""
        return self.push(np.zeros(0, M.KEY_DTYPE), np.zeros((0, self.val_len), M.VAL_DTYPE),
                         clock=clock, copy=False)

    def pull(self, keys: np.ndarray, clock: int | None = None, wait: int | None = None,
             key_range: tuple[int, int] | None = None, copy: bool = True) -> int:
        """Pull the values of ``keys``; ``wait`` is the clock every worker must have
        finished first (the consistency dependency), ``clock`` this task's own. The keys
        are copied (a resend after a failure reads them again) unless ``copy=False``
        (ps-lite's ``ZPull``)."""
        clock, wait = M.as_clock(clock, "clock", "pull"), M.as_clock(wait, "wait", "pull")
        checked = M.as_keys(keys, self.key_max, "pull")
        keys = _own(checked, keys) if copy else checked
        req = self._new("pull", keys, None, M.check_range(key_range, keys, self.key_max, "pull"),
                        clock=clock, wait=wait)
        req.out = np.zeros((keys.size, self.val_len), M.VAL_DTYPE)
        self._send(req, req.ranges)
        return req.ts

    def pull_range(self, begin: int, end: int) -> int:
        """Pull every stored key in ``[begin, end)``; ``wait`` returns (keys, vals)."""
        req = self._new("pull", None, None, M.check_range((begin, end), None, self.key_max,
                                                          "pull_range"))
        req.range_pull = True
        self._send(req, req.ranges)
        return req.ts

    def wait(self, ts: int, timeout: float | None = None) -> Any:
        """Block until request ``ts`` finished; a pull's values, or None for a push.

        A timestamp may be waited for again, and by several threads at once, as in
        ps-lite: a push's always answers None, a pull's its values (the same array) as
        long as it is one of the last ``keep_pulls`` pulls waited for; older ones are
        dropped, to bound memory, and a wait for one is a KeyError saying so."""
        with self.lock:
            req = self._request(ts)
            if req is None:
                return None  # an acknowledged push whose record was already dropped
            req.waiters += 1
        t0 = time.perf_counter()
        try:
            if not req.done.wait(timeout):
                held = (f"; it is held until every worker has finished clock {req.wait} "
                        f"(the consistency dependency), and without a timeout it waits "
                        f"for that" if req.op == "pull" and req.wait is not None else "")
                raise TimeoutError(f"request {ts} ({req.op}) not finished after {timeout} s"
                                   f"{held}")
        finally:
            with self.lock:
                self._waited(req)
        self.metrics.inc("wait_s", time.perf_counter() - t0)
        if req.error is not None:
            raise fresh_error(req.error)
        if req.range_pull:
            parts = sorted(req.parts, key=lambda p: int(p[0][0]) if p[0].size else -1)
            keys = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, M.KEY_DTYPE)
            vals = (np.concatenate([p[1] for p in parts]) if parts
                    else np.zeros((0, self.val_len), M.VAL_DTYPE))
            order = np.argsort(keys, kind="stable")
            return keys[order], vals[order]
        return req.out if req.op == "pull" else None

    def finished(self, ts: int) -> bool:
        """Whether request ``ts`` has finished, without waiting and without forgetting it
        (a later :meth:`wait` still returns its result). Raises the request's error if
        it failed, as :meth:`wait` would."""
        with self.lock:
            req = self._request(ts)
        if req is None:
            return True
        if not req.done.is_set():
            return False
        if req.error is not None:
            raise fresh_error(req.error)
        return True

    def barrier(self, name: str = "start") -> None:
        self._sched("Barrier", {"name": self.name, "barrier": name}, timeout=600.0)

    def close(self, drain_s: float = 5.0) -> None:
        """Wait (up to ``drain_s``) for pushes in flight, then stop and close channels."""
        t_end = time.monotonic() + drain_s
        while time.monotonic() < t_end and any(
                r.op == "push" and not r.done.is_set() for r in list(self.requests.values())):
            time.sleep(0.01)
        self.closed = True
        with self.lock:  # a thread waiting on one would wait for ever: no reply comes now
            self._fail_open(f"{self.name} was closed before this request finished")
        for t in self.threads:
            t.join(2.0)
        for ch in self.channels.values():
            ch.close()
        self.sched.close()

    # ---- sending ---------------------------------------------------------------------
    def _new(self, op: str, keys, vals, ranges: list[tuple[int, int]], **kw) -> Request:
        """A request for ``ranges`` (already checked by ``M.check_range``)."""
        if self.failure:
            raise M.PSError("UNAVAILABLE", self.failure)
        if self.closed:  # a request now would stay in self.requests, never answered
            raise M.PSError("UNAVAILABLE", f"{self.name} is closed")
        req = Request(next(self.ts_counter), op, keys, vals, merge_ranges(ranges),
                      lane=self.metrics.open_lane(), **kw)
        with self.lock:
            self.requests[req.ts] = req
        return req

    def _next_push(self) -> None:
        """Send the next queued push (called with the lock held)."""
        if self.push_queue:
            self.push_busy = True
            self._send(self.push_queue.popleft(), None)
        else:
            self.push_busy = False

    def _stub(self, server: str, method: str):
        addr = self.info["addrs"][server]
        if addr not in self.channels:
            self.channels[addr] = rpc.channel(addr)
        return rpc.method(self.channels[addr], M.SERVICE, method)

    def _send(self, req: Request, ranges: list[tuple[int, int]] | None,
              no_cache: bool = False, replace: int | None = None) -> None:
        """Slice ``ranges`` of ``req`` by the current ring and send; ``replace`` is the
        slice this resend stands for (removed only once its successors are pending, so
        the request never looks finished in between)."""
        ranges = req.ranges if ranges is None else ranges
        with self.lock:
            ring = self.ring
            keys = req.keys if req.keys is not None else np.zeros(0, M.KEY_DTYPE)
            todo = []
            for sl in ring.slice(keys, ranges).values():
                p = Pending(next(self.sid_counter), sl, ring.epoch)
                req.pending[p.sid] = p
                todo.append(p)
            if replace is not None:
                req.pending.pop(replace, None)
        for p in todo:
            self._send_slice(req, p, no_cache)

    def _send_slice(self, req: Request, p: Pending, no_cache: bool) -> None:
        if req.done.is_set():  # an earlier slice of it failed for good: send no more
            return
        sl = p.sl
        meta = {"op": req.op, "sender": self.name, "ts": req.ts, "epoch": p.epoch,
                "ranges": sl.ranges, "clock": req.clock, "wait": req.wait, "cmd": req.cmd,
                "val_len": self.val_len, "range_pull": req.range_pull, "no_cache": no_cache,
                "push_wait": req.push_wait}
        keys = sl.take(req.keys) if not req.range_pull else None
        vals = sl.take(req.vals) if req.op == "push" else None
        try:
            if keys is not None:
                meta, keys, vals = self.filters.encode(sl.server, meta, keys, vals)
            msg = M.encode(meta, keys, vals)
        except Exception as e:  # this request fails alone; the pushes behind it go on
            req.error = M.PSError("INVALID", f"{req.op} {req.ts} could not be encoded: "
                                             f"{type(e).__name__}: {e}")
            return self._finish(req, p, fatal=True)
        self.metrics.wire(sent=len(msg))
        self.metrics.flow(f"{self.name}-{req.ts}-{sl.server}", True, now_us(), req.lane)
        try:
            call = self._stub(sl.server, "Push" if req.op == "push" else "Pull")
            timeout = PUSH_TIMEOUT_S if req.op == "push" else PULL_TIMEOUT_S
            p.sent_at = time.monotonic()
            p.future = call.future(msg, timeout=timeout)
        except KeyError:  # the server is not in our address book any more
            self.retries.put((req, p, "stale"))
            return
        p.future.add_done_callback(lambda f, req=req, p=p: self._on_reply(req, p, f))

    def _on_reply(self, req: Request, p: Pending, fut) -> None:
        if fut.cancelled():
            return self._failed(req, p, "cancelled")
        exc = fut.exception()
        if exc is not None:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                req.error = M.PSError("INVALID", exc.details())
                return self._finish(req, p, fatal=True)
            if bug := M.server_bug(exc):
                req.error = M.PSError("INTERNAL", bug.removeprefix("[INTERNAL] "))
                return self._finish(req, p, fatal=True)
            # held on its dependency, not failed: a BSP push waits for every worker's
            # pull of its clock, a pull for their pushes, and a slow worker holds both
            # past the call's deadline
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and (
                    req.wait if req.op == "pull" else req.push_wait) is not None:
                return self._ask_again(req, p)
            return self._failed(req, p, "unavailable")
        out = fut.result()
        self.metrics.wire(received=len(out))
        try:
            meta, keys, vals, _ = M.decode(out)
        except M.PSError as e:
            req.error = e
            return self._finish(req, p, fatal=True)
        code = meta.get("code")
        if code == M.OK:
            if req.op == "pull":
                self._store_pull(req, p, meta, keys, vals)
                req.held_s = max(req.held_s, meta.get("held_s", 0.0))  # slices wait together
            return self._finish(req, p)
        if code == M.CACHE_MISS:
            self.filters.cache_missed(p.sl.server, p.sl.n_keys)
        self._failed(req, p, {M.CACHE_MISS: "cache_miss", M.RETRY: "retry"}.get(code, "stale"))

    def _store_pull(self, req: Request, p: Pending, meta: dict, keys, vals) -> None:
        if req.range_pull:
            n = keys.size if keys is not None else 0
            if vals is not None:
                vals = self.filters.decode_pull(meta, vals, n * self.val_len)
                vals = vals.reshape(n, self.val_len)
            else:
                vals = np.zeros((n, self.val_len), M.VAL_DTYPE)
            req.parts.append((keys if keys is not None else np.zeros(0, M.KEY_DTYPE), vals))
            return
        n = p.sl.n_keys
        if n == 0:
            return
        vals = self.filters.decode_pull(meta, vals, n * self.val_len).reshape(n, self.val_len)
        at = 0
        for lo, hi in p.sl.segments:
            req.out[lo:hi] = vals[at:at + hi - lo]
            at += hi - lo

    def _finish(self, req: Request, p: Pending, fatal: bool = False) -> None:
        with self.lock:
            req.pending.pop(p.sid, None)
            if req.pending and not fatal:
                return
            if req.done.is_set():
                return
            if req.first_failure is not None:
                req.recovery_s = time.monotonic() - req.first_failure
                self.metrics.inc("recoveries")
                if req.recovery_s > self.metrics.extra.get("max_recovery_s", 0.0):
                    self.metrics.extra["max_recovery_s"] = req.recovery_s
                    self.metrics.extra["max_recovery"] = {"op": req.op, "clock": req.clock,
                                                          "why": req.whys[:20]}
            req.done.set()
            self.metrics.inc(f"{req.op}_requests")
            self.metrics.inc("consistency_held_s", req.held_s)
            self.metrics.span(req.op, req.t0, now_us() - req.t0, req.lane, ts=req.ts,
                              clock=req.clock, resends=req.resends)
            self.metrics.close_lane(req.lane)
            req.keys = req.vals = None  # finished: nothing will be resent
            if req.op == "push":
                self._next_push()
                self._prune_pushes()
