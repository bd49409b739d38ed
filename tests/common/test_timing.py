import time

import pytest

from common.timing import calibrate, interleaved, interleaved_many, measure, paired_ratios


def _loop(n):
    s = 0
    for i in range(n):
        s += i
    return s


def test_interleaved_recovers_a_known_cost_ratio():
    # A does exactly twice B's work; pure-Python loops scale linearly with n.
    comp = interleaved(lambda: _loop(40_000), lambda: _loop(20_000), repeats=11)
    assert 1.6 < comp.ratio < 2.4, comp.to_dict()
    assert comp.speedup == pytest.approx(1 / comp.ratio)
    assert len(comp.ratios) == 11 and comp.ratio_stats.q1 <= comp.ratio <= comp.ratio_stats.q3


def test_interleaved_alternates_order_within_pairs():
    order = []
    interleaved(lambda: order.append("a"), lambda: order.append("b"), repeats=4, warmup=0,
                number=1)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_measure_reports_per_call_time_of_a_sleeping_function():
    t = measure(lambda: time.sleep(0.002), warmup=1, repeats=5, number=2)
    assert t.number == 2 and t.stats.n == 5
    assert 0.0019 < t.median < 0.02  # sleep never returns early; a loaded box may be slow


def test_calibrate_makes_a_cheap_call_last_long_enough():
    n = calibrate(lambda: None, min_sample_s=1e-3)
    assert n > 100  # one no-op call takes well under 10 us on any machine


def test_interleaved_many_times_each_variant_once_per_round_in_shuffled_orders():
    calls = []
    names = ("w", "x", "y", "z")
    out = interleaved_many({n: (lambda n=n: calls.append(n)) for n in names},
                           repeats=12, warmup=0)
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert all(sorted(r) == list(names) for r in rounds)
    assert all(len(v) == 12 for v in out.values())
    # no variant always follows the same one (rotation would fix each one's predecessor)
    before = {n: {r[i - 1] for r in rounds for i in range(1, 4) if r[i] == n} for n in names}
    assert all(len(p) >= 2 for p in before.values()), before
    s = paired_ratios([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert s.median == 2.0 and s.max == 3.0
