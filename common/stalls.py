"""How long an asyncio event loop did not run: a watchdog for timeouts that judge others.

A timeout measured on the monotonic clock keeps running while its own process does
not: stopped (SIGSTOP, a debugger), starved (a VM's steal, swapping), or blocked by a
long synchronous call. When the process runs again, every timer that came due meanwhile
fires at once, often before the replies that arrived meanwhile are read from their
sockets, and a judge of liveness then condemns peers that were answering all along.
Real failure detectors guard against it: Cassandra's ``FailureDetector.interpret``
marks no node down right after a local pause longer than ``max_local_pause_in_ms``
(a long GC, say).

:class:`LoopWatchdog` is a task that wakes every ``period`` seconds and records each
gap longer than ``period + slack`` as a stall; :meth:`LoopWatchdog.stalled_since` says
how much of a window the loop spent stalled, including a stall still in progress (after
a resume the timer that asks may run before the watchdog's own tick).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class LoopWatchdog:
    def __init__(self, period: float = 0.1, slack: float = 0.2, keep: int = 256):
        self.period, self.slack = period, slack
        self.last = time.monotonic()
        self.stalls: deque[tuple[float, float]] = deque(maxlen=keep)  # (from, to)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """Start ticking on the running loop (once; later calls do nothing)."""
        if self.task is None or self.task.done():
            self.last = time.monotonic()
            self.task = asyncio.ensure_future(self._tick())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.note(time.monotonic())

    def note(self, now: float) -> float:
        """A tick at ``now``: record the stall before it, if any; returns its length.
        A process with a periodic round of its own (the minips scheduler's monitor)
        calls this from that round instead of :meth:`start`."""
        stalled = now - self.last - self.period
        self.last = now
        if stalled <= self.slack:
            return 0.0
        self.stalls.append((now - stalled, now))
        return stalled

    def stalled_since(self, t0: float, now: float | None = None,
                      within: float | None = None) -> float:
        """Seconds since ``t0`` (``time.monotonic()``) during which the loop did not run;
        with ``within``, only stalls that ended in the last ``within`` seconds."""
        now = time.monotonic() if now is None else now
        after = t0 if within is None else max(t0, now - within)
        total = sum(end - max(begin, t0) for begin, end in self.stalls if end > after)
        if now - self.last > self.period + self.slack:  # a stall not recorded yet
            total += now - max(self.last + self.period, t0)
        return total
