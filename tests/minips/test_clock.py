"""Range vector clocks (paper section 4.1) against a per-key array oracle."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from systems.minips.clock import NEVER, RangeClock, VectorClock

N = 64

ops = st.lists(st.tuples(st.integers(0, N - 1), st.integers(1, N), st.integers(0, 20)),
               max_size=30)


@settings(max_examples=80, deadline=None)
@given(ops, st.integers(0, N - 1), st.integers(1, N), st.integers(0, 21))
def test_range_clock_equals_a_clock_per_key(updates, qa, qb, t):
    clock, oracle = RangeClock(N), np.full(N, NEVER)
    for a, b, tt in updates:
        lo, hi = min(a, b - 1), max(a + 1, b)
        clock.set(lo, hi, tt)
        oracle[lo:hi] = tt
    lo, hi = min(qa, qb - 1), max(qa + 1, qb)
    assert clock.min(lo, hi) == oracle[lo:hi].min()
    below = np.zeros(N, bool)
    for b, e in clock.below(lo, hi, t):
        below[b:e] = True
    expect = np.zeros(N, bool)
    expect[lo:hi] = oracle[lo:hi] < t
    assert (below == expect).all()
    # storage: one segment per run of equal times, never one per key
    runs = 1 + int((oracle[1:] != oracle[:-1]).sum())
    assert len(clock) == runs


def test_storage_grows_with_ranges_not_keys():
    clock = RangeClock(1 << 40)
    ranges = [(i << 30, (i + 1) << 30) for i in range(8)]
    for t in range(200):  # 200 pushes over 8 ranges of a billion keys each
        for b, e in ranges[t % 3::3]:
            clock.set(b, e, t)
    assert len(clock) <= 2 * len(ranges) + 1


def test_vector_clock_min_over_nodes_and_export_roundtrip():
    vc = VectorClock(100)
    vc.of("w0").set(0, 100, 5)
    vc.of("w1").set(0, 50, 3)
    assert vc.min(["w0", "w1"], 0, 50) == 3
    assert vc.min(["w0", "w1"], 50, 100) == NEVER
    assert vc.min(["w0"], 10, 20) == 5
    other = VectorClock(100)
    other.load(vc.export(20, 80))
    assert other.of("w0").segments() == [(0, 20, NEVER), (20, 80, 5), (80, 100, NEVER)]
    vc.clear(0, 100)
    assert vc.min(["w0"], 0, 100) == NEVER
