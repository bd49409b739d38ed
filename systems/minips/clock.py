"""Range vector clocks (paper section 4.1, Algorithm 2).

A vector clock records, for every (key, node) pair, the time of that node's latest
update of the key. Kept per key it would cost O(keys x nodes) memory. But a parameter
server communicates *ranges*: a push covers a key range at one timestamp, so all keys
of the range share the node's time. A :class:`RangeClock` therefore stores one node's
clock as a piecewise-constant function of the key: sorted breakpoints, each carrying the
time from itself up to the next breakpoint. Setting the time of a range splits at most
two existing segments (a range set "may split the range and create at most 3 new vector
clocks", section 4.1); neighbouring segments that end up with equal times are merged, so
the storage grows with the number of distinct ranges communicated, never with the number
of keys.

The server uses the clocks for two things:

* **dependencies** (section 3.5): a pull that waits for time ``t`` on a range is held
  until every live worker's clock on that range reaches ``t`` (:meth:`VectorClock.min`);
* **de-duplication**: a push at time ``t`` is applied only on the sub-ranges whose
  clock for the sender is still below ``t`` (:meth:`RangeClock.below`); a resent push
  (after a timeout or a failover) finds its ranges already at ``t`` and is dropped.
"""

from __future__ import annotations

import bisect

NEVER = -1  # the clock of a range nobody has pushed yet


class RangeClock:
    """One node's clock over the key space ``[0, key_max)``."""

    def __init__(self, key_max: int, t0: int = NEVER):
        self.key_max = key_max
        self.starts: list[int] = [0]
        self.times: list[int] = [t0]

    def _split(self, k: int) -> int:
        """Make ``k`` a breakpoint; return its index."""
        i = bisect.bisect_right(self.starts, k) - 1
        if self.starts[i] == k:
            return i
        self.starts.insert(i + 1, k)
        self.times.insert(i + 1, self.times[i])
        return i + 1

    def set(self, begin: int, end: int, t: int) -> None:
        """Every key in ``[begin, end)`` now has time ``t``."""
        if end <= begin:
            return
        i = self._split(begin)
        j = self._split(end) if end < self.key_max else len(self.starts)
        self.starts[i:j] = [begin]
        self.times[i:j] = [t]
        self._merge_around(i)

    def _merge_around(self, i: int) -> None:
        for k in (i + 1, i):  # join with the right, then the left neighbour
            if 0 < k < len(self.starts) and self.times[k] == self.times[k - 1]:
                del self.starts[k]
                del self.times[k]

    def segments(self, begin: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
        """The ``(b, e, t)`` segments cut to ``[begin, end)``."""
        end = self.key_max if end is None else end
        out = []
        i = bisect.bisect_right(self.starts, begin) - 1
        while i < len(self.starts) and self.starts[i] < end:
            nxt = self.starts[i + 1] if i + 1 < len(self.starts) else self.key_max
            lo, hi = max(self.starts[i], begin), min(nxt, end)
            if hi > lo:
                out.append((lo, hi, self.times[i]))
            i += 1
        return out

    def min(self, begin: int, end: int) -> int:
        """The oldest time on ``[begin, end)``: the whole range has reached it."""
        return min((t for _, _, t in self.segments(begin, end)), default=NEVER)

    def below(self, begin: int, end: int, t: int) -> list[tuple[int, int]]:
        """Sub-ranges of ``[begin, end)`` whose time is still below ``t`` (not yet seen)."""
        out: list[tuple[int, int]] = []
        for b, e, s in self.segments(begin, end):
            if s < t:
                if out and out[-1][1] == b:
                    out[-1] = (out[-1][0], e)
                else:
                    out.append((b, e))
        return out

    def load(self, segments: list[tuple[int, int, int]]) -> None:
        """Overwrite with segments received from another server (replication, join)."""
        for b, e, t in segments:
            self.set(b, e, t)

    def __len__(self) -> int:
        """Number of stored segments: the clock's memory, in ranges."""
        return len(self.starts)


class VectorClock:
    """One :class:`RangeClock` per node (worker) that pushes to this server."""

    def __init__(self, key_max: int):
        self.key_max = key_max
        self.clocks: dict[str, RangeClock] = {}

    def of(self, node: str) -> RangeClock:
        if node not in self.clocks:
            self.clocks[node] = RangeClock(self.key_max)
        return self.clocks[node]

    def min(self, nodes: list[str], begin: int, end: int) -> int:
        """The time every one of ``nodes`` has reached on ``[begin, end)``."""
        return min((self.of(n).min(begin, end) for n in nodes), default=NEVER)

    def export(self, begin: int, end: int) -> dict[str, list[tuple[int, int, int]]]:
        """All nodes' segments on ``[begin, end)``, to ship with a range's data."""
        return {n: c.segments(begin, end) for n, c in self.clocks.items()}

    def load(self, segments: dict[str, list]) -> None:
        for n, segs in segments.items():
            self.of(n).load([tuple(s) for s in segs])

    def clear(self, begin: int, end: int) -> None:
        """Forget ``[begin, end)`` (a range this server no longer holds)."""
        for c in self.clocks.values():
            c.set(begin, end, NEVER)

    def size(self) -> int:
        return sum(len(c) for c in self.clocks.values())
