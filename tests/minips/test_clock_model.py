"""Stateful: VectorClock (set/clear/export/load/min/below/segments) vs per-key arrays.

Model-based (hypothesis) tests from a stateful audit (2026-11-28): the real code and
a brute-force model take the same random operations and must agree after each.
Raise ``MODEL_EXAMPLES`` (default 100) to search longer.
"""

import os

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from systems.minips.clock import NEVER, VectorClock

N = 12
NODES = ["w0", "w1", "w2"]
rng_ = st.tuples(st.integers(0, N), st.integers(0, N)).map(sorted)
times = st.integers(-1, 3)


def runs(arr):
    return 1 + int((arr[1:] != arr[:-1]).sum())


def segs_of(arr, b, e):
    out = []
    for k in range(b, e):
        if out and out[-1][2] == arr[k] and out[-1][1] == k:
            out[-1] = (out[-1][0], k + 1, out[-1][2])
        else:
            out.append((k, k + 1, int(arr[k])))
    return out


class ClockMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.vc = [VectorClock(N), VectorClock(N)]  # two servers
        self.m = [{}, {}]

    def arr(self, s, n):
        return self.m[s].setdefault(n, np.full(N, NEVER))

    @rule(s=st.integers(0, 1), n=st.sampled_from(NODES), r=rng_, t=times)
    def set(self, s, n, r, t):
        b, e = r
        self.vc[s].of(n).set(b, e, t)
        self.arr(s, n)[b:e] = t

    @rule(s=st.integers(0, 1), r=rng_)
    def clear(self, s, r):
        b, e = r
        self.vc[s].clear(b, e)
        for a in self.m[s].values():
            a[b:e] = NEVER

    @rule(s=st.integers(0, 1), r=rng_, full=st.booleans())
    def copy(self, s, r, full):
        """What transitions.install does: (clear if full) then load(export)."""
        b, e = r
        src, dst = self.vc[s], self.vc[1 - s]
        exp = src.export(b, e)
        exp = {n: [list(x) for x in segs] for n, segs in exp.items()}  # as JSON
        if full:
            dst.clear(b, e)
            for a in self.m[1 - s].values():
                a[b:e] = NEVER
        dst.load(exp)
        for n in exp:
            self.arr(1 - s, n)[b:e] = self.arr(s, n)[b:e]

    @rule(s=st.integers(0, 1), nodes=st.lists(st.sampled_from(NODES), max_size=3), r=rng_)
    def check_min(self, s, nodes, r):
        b, e = r
        got = self.vc[s].min(nodes, b, e)
        if not nodes or b == e:
            want = NEVER
        else:
            want = min(int(self.arr(s, n)[b:e].min()) for n in nodes)
        assert got == want, (got, want)

    @rule(s=st.integers(0, 1), n=st.sampled_from(NODES), r=rng_, t=times)
    def check_below(self, s, n, r, t):
        b, e = r
        got = np.zeros(N, bool)
        prev = None
        for lo, hi in self.vc[s].of(n).below(b, e, t):
            assert lo < hi and (prev is None or prev < lo)
            got[lo:hi] = True
            prev = hi
        want = np.zeros(N, bool)
        want[b:e] = self.arr(s, n)[b:e] < t
        assert (got == want).all()

    @rule(s=st.integers(0, 1), n=st.sampled_from(NODES), r=rng_)
    def check_segments(self, s, n, r):
        b, e = r
        assert self.vc[s].of(n).segments(b, e) == segs_of(self.arr(s, n), b, e)

    @invariant()
    def same(self):
        for s in (0, 1):
            for n, c in self.vc[s].clocks.items():
                a = self.arr(s, n)
                assert c.segments() == segs_of(a, 0, N)
                assert len(c) == runs(a)
                assert c.starts[0] == 0
                assert all(x < y for x, y in zip(c.starts, c.starts[1:], strict=False))


ClockMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MODEL_EXAMPLES", 100)), stateful_step_count=30,
    deadline=None)
TestClockMachine = ClockMachine.TestCase
