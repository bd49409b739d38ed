"""Consistency models as task dependencies (paper sections 3.4 and 3.5).

Every iteration of a worker is a *task* with a timestamp, its clock ``c``: pull the
weights, compute, push the gradient at time ``c``. A consistency model is nothing but
the dependency each new task declares on older ones (paper Figure 6):

* **sequential / BSP**: task ``c`` waits until every worker finished task ``c - 1``;
* **bounded delay / SSP(tau)**: task ``c`` waits until every worker finished task
  ``c - tau - 1`` (tau = 0 is sequential, tau = infinity is eventual);
* **eventual / ASP**: no dependency at all.

Sequential consistency needs one more edge. A pull at clock ``c`` that waits for every
push of clock ``c - 1`` could still see a *fast* worker's push of clock ``c`` if that
one lands first, and then BSP would not equal the single-process run. So under BSP
(tau = 0) a push at clock ``c`` also depends on every worker's pull at clock ``c``
(:meth:`Consistency.push_wait`): the servers record a second range vector clock, of
pulls, and hold such pushes until it reaches ``c``. A worker pushes clock ``c`` only
after pulling it, so a push also counts as its sender's pull; that is why a server that
takes over after a failure needs no replicated pull clocks. (Which updates a pull sees is
then fixed; the order in which a server applies one clock's pushes is arrival order, so
BSP equals the single-process run for updates that commute, such as sum and SGD.) With
tau > 0 a reader may see newer updates than it waited for (bounded staleness, as in
SSP), so pushes wait for nothing.

The dependency travels with the pull as ``wait = c - tau - 1`` and is enforced where
the data is: a server holds the pull until every live worker's range vector clock on the
pulled ranges has reached ``wait`` (:class:`DependencyGate`). This is the counterpart of
the original system's executor, which keeps a received request queued until the requests
from the same sender named in its ``wait_time`` have finished (dmlc/parameter_server
``src/system/executor.cc``, ``PickActiveMsg``); there the bound across workers comes from
the scheduler's task timestamps (``darlin.h``, ``AddWaitTime``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from .clock import VectorClock


@dataclass(frozen=True)
class Consistency:
    """``bsp``, ``ssp:TAU`` or ``asp``; ``tau`` is the allowed staleness in clocks."""

    kind: str = "bsp"
    tau: float = 0

    @classmethod
    def parse(cls, text: str) -> Consistency:
        t = text.strip().lower()
        if t in ("bsp", "sequential"):
            return cls("bsp", 0)
        if t in ("asp", "eventual"):
            return cls("asp", math.inf)
        if t in ("ssp:inf", "ssp:infinity"):  # the paper: tau = inf is eventual
            return cls("asp", math.inf)
        if t.startswith("ssp:"):
            try:
                tau = int(t[4:])
            except ValueError:
                tau = -1
            if tau < 0:
                raise ValueError(f"ssp needs a staleness >= 0, as ssp:4; got {text!r}")
            return cls("ssp", tau)
        raise ValueError(f"consistency must be bsp, ssp:TAU or asp; got {text!r}")

    def wait_clock(self, c: int) -> int | None:
        """The dependency of task ``c``: every worker must have finished this clock."""
        if math.isinf(self.tau):
            return None
        return c - int(self.tau) - 1

    def push_wait(self, c: int) -> int | None:
        """The dependency of the push of task ``c``: all pulls of clock ``c``. BSP only, and
        ``ssp:0``, which is BSP (the paper's tau = 0 is sequential consistency)."""
        return c if self.tau == 0 else None

    def __str__(self) -> str:
        return self.kind if self.kind != "ssp" else f"ssp:{int(self.tau)}"


ALL_DONE = 1 << 62  # the clock "reached" when no worker is left to wait for


class DependencyGate:
    """Holds pulls until their dependency holds; wakes them whenever a clock moves.

    ``workers`` is the set whose clocks count: the scheduler removes dead and finished
    workers from it, which is what keeps a BSP barrier from waiting forever for a worker
    that will never push again (section 4.6).
    """

    def __init__(self, clocks: VectorClock):
        self.clocks = clocks
        self.workers: list[str] = []
        self._changed = asyncio.Event()
        self.held_s = 0.0  # pulls held on their dependency: seconds, and how many
        self.held_pulls = 0
        self.held_pushes = 0  # BSP pushes held until every worker read the clock
        self.max_gap = 0  # the most clocks a pulling worker was ahead of the slowest

    def notify(self) -> None:
        """Something moved (a clock, the worker set, the ring): re-check waiting pulls."""
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    def reached(self, ranges: list[tuple[int, int]], clocks: VectorClock | None = None) -> int:
        """The clock every live worker has reached on all of ``ranges``."""
        if not self.workers:
            return ALL_DONE  # no live worker left to wait for
        vc = clocks or self.clocks
        return min((vc.min(self.workers, b, e) for b, e in ranges), default=-1)

    async def wait(self, ranges: list[tuple[int, int]], wait: int | None, clock: int | None,
                   still_valid, clocks: VectorClock | None = None) -> float:
        """Block until ``reached(ranges) >= wait`` (or ``still_valid()`` turns false).

        ``clocks`` is the push clock by default (a pull's dependency); BSP pushes pass
        the pull clock. Returns the seconds held, and records the staleness (how many
        clocks the caller is ahead of the slowest worker) a pull was admitted with.
        """
        t0 = time.perf_counter()
        while wait is not None and self.reached(ranges, clocks) < wait and still_valid():
            ev = self._changed
            await ev.wait()
        held = time.perf_counter() - t0
        if wait is not None and held > 1e-4 and clocks is None:
            self.held_s += held
            self.held_pulls += 1
        elif wait is not None and held > 1e-4:  # a push, held on the pull clock
            self.held_pushes += 1
        reached = self.reached(ranges, clocks)
        if clock is not None and self.workers and clocks is None and \
                (wait is None or reached >= wait):  # not a pull woken by a ring change:
            self.max_gap = max(self.max_gap, clock - (reached + 1))  # it is not served
        return held
