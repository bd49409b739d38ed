"""What a worker does when a server fails or the ring changes (paper section 4.5).

On a node change a node "scans all outgoing messages that have not received replies
yet. If a key range intersects with R, then the message will be split and resent". Here:

* a slice whose server fails, times out, answers STALE or RETRY, answers CACHE_MISS (the
  key-caching filter's cache was lost: resend with the keys), or is cancelled because a
  newer ring moved its ranges, goes to the *resender* thread (``_failed``);
* the resender waits for a newer ring where that helps (``_await_epoch``), re-slices the
  slice's ranges with the current ring and sends the pieces (``KVWorker._send`` with
  ``replace=``), so the request never looks finished in between;
* the ring comes from the scheduler (``GetRing``); the heartbeat thread reports progress
  and notices a new epoch; a refresh cancels the futures of slices whose ranges now have
  another master (their callbacks resend them).

The servers' range vector clocks make a resend harmless where the first copy was
applied. A mixin of :class:`.kv.KVWorker`, split out so that each file holds one concern.
"""

from __future__ import annotations

import queue
import time

import grpc

from common import rpc

from . import message as M
from .ring import Ring
from .tracker import Pending, Request


def register(scheduler: str, name: str, role: str, connect_s: float) -> tuple[grpc.Channel, dict]:
    """A channel to the scheduler at ``scheduler`` and its answer to registering ``name``
    as ``role``; a PSError that says why not (nodes may start in any order: ps-lite's Van
    waits for the scheduler too, and so does this, for ``connect_s``)."""
    sched = rpc.channel(scheduler)
    try:
        out = rpc.method(sched, M.SCHEDULER_SERVICE, "Register")(
            M.encode({"role": role, "name": name}), timeout=connect_s, wait_for_ready=True)
    except grpc.RpcError as e:
        sched.close()
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # a gRPC node, not a scheduler
            raise M.PSError("INVALID", f"{scheduler} answers gRPC but is not a minips "
                                       f"scheduler (a server's address?): "
                                       f"{e.details()}") from None
        if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED):  # it answered: why
            raise M.PSError("INVALID", f"the scheduler at {scheduler} refused to "
                                       f"register {name!r}: {e.details()}") from None
        raise M.PSError("UNAVAILABLE", f"no scheduler answered at {scheduler} within "
                                       f"{connect_s:g} s ({e.code().name}); start it first "
                                       f"(casebook ps launch --role scheduler prints "
                                       f"its HOST:PORT)") from None
    reg = M.decode(out)[0]
    if reg.get("status") == "error":
        sched.close()
        raise M.PSError("INVALID", reg["message"])
    return sched, reg


class Recovery:
    """Resending and ring membership for :class:`.kv.KVWorker`; the state it works on
    (lock, requests, ring, channels, the scheduler channel, the retry queue, ...) and
    ``_send`` are the worker's, set up in ``KVWorker.__init__``."""

    def _failed(self, req: Request, p: Pending, why: str) -> None:
        with self.lock:
            if p.sid not in req.pending or self.closed:
                return
            if req.first_failure is None:
                req.first_failure = time.monotonic()
            req.whys.append(f"{why}@{p.sl.server}e{p.epoch}")
        self.metrics.inc("resends")
        self.retries.put((req, p, why))

    def _ask_again(self, req: Request, p: Pending) -> None:
        """A pull (or a BSP push) held on its consistency dependency past its call's
        deadline: the server was holding it, not failing. Send it again (the server
        holds it again, or answers at once if the dependency was met meanwhile), without
        counting a failure, which would read as a recovery in the metrics."""
        with self.lock:
            if p.sid not in req.pending or self.closed:
                return
        self.retries.put((req, p, "held"))

    def _resender(self) -> None:
        while not self.closed:
            try:
                req, p, why = self.retries.get(timeout=0.2)
            except queue.Empty:
                continue
            if why in ("stale", "unavailable", "cancelled"):
                self._await_epoch(p.epoch, timeout=3.0)
            elif why == "retry":
                time.sleep(0.02)
                self._refresh_ring()
            if req.done.is_set() or self.closed:
                continue
            req.resends += 1
            try:
                self._send(req, p.sl.ranges, no_cache=(why == "cache_miss"), replace=p.sid)
            except ValueError:  # a channel closed under us: we are shutting down
                return

    # ---- membership ------------------------------------------------------------------
    def _sched(self, method: str, meta: dict, timeout: float = 5.0) -> dict:
        out = rpc.method(self.sched, M.SCHEDULER_SERVICE, method)(M.encode(meta),
                                                                timeout=timeout)
        return M.decode(out)[0]

    def _refresh_ring(self) -> int:
        try:
            info = self._sched("GetRing", {}, timeout=2.0)
        except (grpc.RpcError, ValueError):  # unreachable, or closed while shutting down
            return self.ring.epoch if self.ring else 0
        if info["ring"] is None:
            return 0
        with self.lock:
            if self.ring is not None and info["epoch"] <= self.ring.epoch:
                return self.ring.epoch
            self.info, self.ring = info, Ring.from_dict(info["ring"])
            self.filters.forget()
            moved = []
            for req in self.requests.values():
                for p in req.pending.values():
                    if p.future is not None and not all(
                            pc.master == p.sl.server for b, e in p.sl.ranges
                            for pc in self.ring.overlapping(b, e)):
                        moved.append(p.future)
        for f in moved:  # their callbacks resend them (paper: split and resend)
            f.cancel()
        return self.ring.epoch

    def _await_epoch(self, epoch: int, timeout: float) -> None:
        t_end = time.monotonic() + timeout
        while self._refresh_ring() <= epoch and time.monotonic() < t_end and not self.closed:
            time.sleep(0.02)

    def _heartbeats(self) -> None:
        interval = self.config["hb_interval"]
        # The scheduler is the one node without a stand-in (the paper's server manager,
        # sections 3 and 4.5). Without it the current ring still serves (exercise 5), but
        # no new ring will come: a request resending for give_up_s (ten of its death
        # timeouts by default) while it is silent will not finish, and is failed rather
        # than resent for ever. ps-lite never fails one request: its src/resender.h waits
        # PS_RESEND_TIMEOUT x (1 + retries) between resends, and after 10 it logs an error
        # (older versions) or aborts the whole process (master's CHECK). We fail the one
        # request and let the caller decide.
        lost_after = self.config.get("give_up_s", 10 * self.config["hb_timeout"])
        last_answer = time.monotonic()
        while not self.closed:
            time.sleep(interval)
            try:
                r = self._sched("Heartbeat", {"role": self.role, "name": self.name,
                                              "progress": dict(self.progress),
                                              "retire": self.retire, "clock": self.clock},
                                timeout=max(interval * 5, 1.0))
            except (grpc.RpcError, ValueError):
                silent = time.monotonic() - last_answer
                if silent > lost_after and not self.closed:
                    self._give_up_stuck(silent, lost_after)
                continue
            last_answer = time.monotonic()
            self.hb_state = r
            if r.get("failure"):
                self._job_failed(r["failure"])
            elif self.ring is None or r["epoch"] > self.ring.epoch:
                self._refresh_ring()

    def _give_up_stuck(self, silent: float, after: float) -> None:
        """Fail the requests that have been resending for ``after`` s while the scheduler
        is silent (their servers are gone and no ring replaces them); a push frees the
        queue for the next one, which the current ring may well serve. Resending means a
        slice with no live call: a failed one waiting for the resender, or one whose call
        died at once (a refused connection). A request whose every slice has waited on a
        live server for a second (a held pull, after an earlier failover too) is not."""
        now = time.monotonic()
        with self.lock:
            for req in list(self.requests.values()):
                if req.done.is_set() or not req.pending:
                    continue  # answered, or a push queued behind the one in flight
                slices = req.pending.values()
                if any(p.future is None or p.future.done() for p in slices):
                    req.stuck_since = req.stuck_since or now
                elif all(now - p.sent_at > 1.0 for p in slices):
                    req.stuck_since = None
                if req.stuck_since is None or now - req.stuck_since < after:
                    continue
                req.error = M.PSError("UNAVAILABLE", f"{req.op} {req.ts} got no reply in "
                                      f"{now - req.stuck_since:.0f} s of resending, and the "
                                      f"scheduler has not answered for {silent:.0f} s: no new "
                                      f"ring will replace the servers that do not answer")
                req.done.set()
                self.metrics.close_lane(req.lane)
                if req.op == "push":
                    self._next_push()

    def _job_failed(self, why: str) -> None:
        """The scheduler ended the job because data was lost (a server died holding the
        only copy of its ranges): every request still open fails with that reason, and
        so does every later one (``KVWorker._new``), instead of being resent forever."""
        with self.lock:
            self.failure = why
            self._fail_open(why)

    def _fail_open(self, why: str) -> None:
        """End every open request with ``why`` (called with the lock held)."""
        err = M.PSError("UNAVAILABLE", why)
        for req in self.requests.values():
            if not req.done.is_set():
                req.error = err
                req.done.set()
                self.metrics.close_lane(req.lane)
