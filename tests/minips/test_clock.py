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


few_times = st.lists(st.tuples(st.integers(0, N - 1), st.integers(1, N), st.integers(0, 2)),
                     max_size=30)


def test_equal_neighbours_merge_on_the_left_too():
    """A range set next to one of the same time must merge with it (Algorithm 2:
    storage grows with distinct ranges). The hypothesis test draws times from 0..20,
    so two *adjacent* ranges with one time almost never occur."""
    c = RangeClock(64)
    c.set(0, 10, 5)
    c.set(10, 20, 5)
    assert c.segments() == [(0, 20, 5), (20, 64, NEVER)] and len(c) == 2


@settings(max_examples=150, deadline=None)
@given(few_times)
def test_range_clock_storage_is_one_segment_per_run_with_few_distinct_times(updates):
    """As the property above, with 3 distinct times: neighbours of one time meet often,
    and the clock must hold one segment per run of equal times (section 4.1)."""
    clock, oracle = RangeClock(N), np.full(N, NEVER)
    for a, b, t in updates:
        lo, hi = min(a, b - 1), max(a + 1, b)
        clock.set(lo, hi, t)
        oracle[lo:hi] = t
    assert len(clock) == 1 + int((oracle[1:] != oracle[:-1]).sum())
