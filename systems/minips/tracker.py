"""What a worker tracks about its requests in flight (ps-lite's ``Customer::tracker_``).

ps-lite records, per timestamp, how many replies a request expects and how many came
back, and ``Wait(ts)`` blocks until they match (``src/customer.cc``). A request here also
keeps what the paper's failure handling needs (section 4.5: a node "scans all outgoing
messages that have not received replies yet"): each slice still in flight (a
:class:`Pending`: which server, which key ranges, under which ring epoch), so a slice
whose server failed can be re-sliced with the new ring and resent, and why and how often
that happened.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.trace import now_us

from . import message as M
from .ring import Slice


@dataclass
class Request:
    ts: int
    op: str
    keys: np.ndarray | None
    vals: np.ndarray | None
    ranges: list[tuple[int, int]]
    clock: int | None = None
    wait: int | None = None
    cmd: str = "push"
    range_pull: bool = False
    push_wait: int | None = None
    out: np.ndarray | None = None
    parts: list = field(default_factory=list)
    pending: dict[int, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    error: M.PSError | None = None
    t0: float = field(default_factory=now_us)
    lane: int | None = None  # its row in the trace (NodeMetrics.open_lane)
    held_s: float = 0.0
    resends: int = 0
    first_failure: float | None = None
    stuck_since: float | None = None  # resending without a live server to wait on
    recovery_s: float = 0.0
    whys: list[str] = field(default_factory=list)  # why each slice was resent
    waiters: int = 0  # threads inside KVWorker.wait for it (the last one drops it)


def fresh_error(err: M.PSError) -> M.PSError:
    """A new exception with ``err``'s code and message, to raise. Raising one object again
    and again adds each raiser's frames to its traceback, and keeps their locals (a
    pull's whole value buffer) alive as long as the error is kept."""
    return M.PSError(err.code, str(err).removeprefix(f"[{err.code}] "))


@dataclass
class Pending:
    """One slice in flight: where it went, which ranges, with which ring epoch."""

    sid: int
    sl: Slice
    epoch: int
    future: Any = None
    sent_at: float = 0.0  # time.monotonic() when the future was made


class Records:
    """A worker's requests by timestamp, and what it remembers of those it dropped: a
    mixin of :class:`.kv.KVWorker` (set up by :meth:`init_records`; every method runs
    with the worker's lock held).

    ps-lite's ``Customer`` keeps a tracker entry per timestamp for good, and
    ``Wait(ts)`` may be called any number of times, by any thread (the values of a pull
    are in the caller's own buffer). Here a pull's values live in its record, so records
    are dropped to bound memory: a push's once it was waited for (or, unwaited, past
    ``prune_at`` open records), a pull's once ``keep_pulls`` later pulls were waited for;
    one byte per dropped timestamp says which it was. A failed request's error is kept
    (the last ``keep_errors``), so every wait for it raises it again. A pull nobody ever
    waits for keeps its record, values and all, as ps-lite's tracker keeps its entry:
    wait for every pull you make."""

    requests: dict[int, Request]

    def init_records(self, prune_at: int = 4096, keep_pulls: int = 8,
                     keep_errors: int = 1024) -> None:
        self.requests = {}
        self.prune_at = prune_at  # open records past which acknowledged pushes go
        self.keep_pulls = keep_pulls  # waited pulls whose values a later wait still gets
        self.waited_pulls: collections.deque[int] = collections.deque()
        self.pruned = bytearray()  # per timestamp: 1 a push dropped, 2 a pull, 3 failed
        self.keep_errors = keep_errors
        self.errors: collections.OrderedDict[int, M.PSError] = collections.OrderedDict()

    def _request(self, ts: int) -> Request | None:
        """The open request ``ts``; None for an acknowledged push already forgotten."""
        req = self.requests.get(ts)
        gone = self.pruned[ts] if req is None and 0 <= ts < len(self.pruned) else 0
        if gone == 3:
            kept = self.errors.get(ts)
            raise fresh_error(kept) if kept else M.PSError(
                "INTERNAL", f"request {ts} failed; its error is no longer kept (only the "
                            f"last {self.keep_errors} are)")
        if gone == 2:
            raise KeyError(f"pull {ts} was waited for, and its values were dropped since "
                           f"(only the last {self.keep_pulls} pulls waited for keep theirs)")
        if req is None and not gone:
            raise KeyError(f"no request with timestamp {ts} (already waited for?)")
        return req

    def _forget(self, ts: int) -> None:
        """Drop a finished request's record, remembering what it was."""
        req = self.requests.pop(ts, None)
        if req is None:
            return
        if ts >= len(self.pruned):
            self.pruned.extend(bytes(ts + 1 - len(self.pruned)))
        self.pruned[ts] = 3 if req.error is not None else 1 if req.op == "push" else 2
        if req.error is not None:
            self.errors[ts] = fresh_error(req.error)  # never raised: no frames held
            if len(self.errors) > self.keep_errors:
                self.errors.popitem(last=False)

    def _waited(self, req: Request) -> None:
        """A wait for ``req`` returned (or timed out); the last waiter of a finished
        request drops it, or for a pull queues it to be dropped later."""
        req.waiters -= 1
        if not req.done.is_set() or req.waiters:
            return
        if req.op == "push" or req.error is not None:
            self._forget(req.ts)
        elif req.ts not in self.waited_pulls:
            self.waited_pulls.append(req.ts)
            if len(self.waited_pulls) > self.keep_pulls:
                self._forget(self.waited_pulls.popleft())

    def _prune_pushes(self) -> None:
        """Forget acknowledged pushes nobody waited for, past ``prune_at`` records."""
        if len(self.requests) > self.prune_at:
            for ts in [t for t, r in self.requests.items()
                       if r.op == "push" and r.done.is_set()][:self.prune_at // 2]:
                self._forget(ts)
