"""The timing harness's arithmetic, against a fake clock (no wall-clock bounds: the
project measures speed in benchmarks, and a shared 2-core box makes timed tests flaky).

The measured functions advance :data:`common.timing.clock` by known amounts, in
multiples of a power of two, so every sample, ratio and median is exact in float64.
"""

import time

import pytest

from common import timing
from common.timing import calibrate, interleaved, interleaved_many, measure, paired_ratios

U = 2.0 ** -10  # one "unit" of fake time, about 1 ms; dyadic so sums stay exact


class FakeClock:
    """A clock that only moves when a measured function says it spent time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(timing, "clock", c)
    return c


def test_the_default_clock_is_perf_counter():
    assert timing.clock is time.perf_counter


def test_interleaved_recovers_a_known_cost_ratio(fake_clock):
    """A costs exactly twice B; one sample of B is hit by a 200x stall (another process):
    the median of per-pair ratios is still exactly 2, the mean would not be."""
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1
        fake_clock.spend(2 * U)

    def b():
        calls["b"] += 1
        stall = calls["b"] == 3 + 7 + 2 * 4 + 1  # first call of B's 5th sample
        fake_clock.spend(U * (200 if stall else 1))

    comp = interleaved(a, b, repeats=11)  # warmup=3, min_sample_s=2e-3
    # calibration: B needs 4 calls (1, 2, then 4 units >= 2 ms), A 2; the smaller wins
    assert comp.a.number == comp.b.number == 2
    assert calls == {"a": 3 + (1 + 2) + 11 * 2, "b": 3 + (1 + 2 + 4) + 11 * 2}
    assert comp.a.samples == [2 * U] * 11
    assert comp.b.samples == [U] * 4 + [U * 201 / 2] + [U] * 6
    assert comp.ratios == [2.0] * 4 + [4 / 201] + [2.0] * 6
    assert comp.ratio == 2.0 and comp.ratio_stats.q1 == comp.ratio_stats.q3 == 2.0
    assert comp.speedup == 0.5
    assert comp.to_dict()["pairs"] == 11 and comp.to_dict()["b_median_s"] == U


def test_interleaved_alternates_order_within_pairs():
    order = []
    interleaved(lambda: order.append("a"), lambda: order.append("b"), repeats=4, warmup=0,
                number=1)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_measure_reports_per_call_medians_after_warmup(fake_clock):
    """Each sample is the mean over ``number`` calls; the slow first (warm-up) call and
    an outlier sample do not move the median."""
    costs = iter([100, 1, 1, 1, 3, 2, 2, 50, 50, 1, 1])  # warm-up, then 5 samples x 2
    t = measure(lambda: fake_clock.spend(next(costs) * U), warmup=1, repeats=5, number=2)
    assert next(costs, None) is None  # exactly 1 + 5 * 2 calls
    assert t.number == 2 and t.stats.n == 5 and t.device == "cpu"
    assert t.samples == [U, 2 * U, 2 * U, 50 * U, U]
    assert t.median == 2 * U


def test_measure_on_the_real_clock_never_reads_a_sleep_as_shorter():
    """The one wall-clock check: only a lower bound (sleep never returns early), which
    load cannot break; it fails if the default clock does not see sleeping time."""
    assert measure(lambda: time.sleep(1e-3), warmup=0, repeats=3, number=1).median >= 1e-3


@pytest.mark.parametrize("cost,want", [
    (2.0 ** -20, 1258),  # ~1 us: one probe call, then straight to 1.2x the target
    (U, 2),              # ~0.98 ms: just short; the 1.2x head-room rounds down, so 2 calls
    (4 * U, 1),          # ~4 ms: one call already lasts long enough
])
def test_calibrate_makes_a_cheap_call_last_long_enough(fake_clock, cost, want):
    calls = []
    n = calibrate(lambda: (calls.append(1), fake_clock.spend(cost)), min_sample_s=1e-3)
    assert n == want
    assert n * cost >= 1e-3  # a sample of n calls lasts at least min_sample_s
    assert len(calls) == (1 + n if n > 1 else 1)  # one probe call, then one block of n


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


@pytest.mark.gpu
def test_cuda_graph_replays_the_calls_it_captured():
    """A replay redoes every captured call (here: 10 in-place increments) and does the
    same work as launching them one by one: a graph of 2 matmuls per call times about
    twice one of 1 matmul per call."""
    import torch

    from common.timing import cuda_graph, interleaved

    x = torch.zeros(1, device="cuda")
    replay = cuda_graph(lambda: x.add_(1.0), calls=10)
    start = x.item()  # 3 warm-up calls ran before the capture
    replay()
    replay()
    torch.cuda.synchronize()
    assert x.item() == start + 20
    a = torch.randn(2048, 2048, device="cuda")
    one = cuda_graph(lambda: a @ a)
    two = cuda_graph(lambda: (a @ a, a @ a))
    comp = interleaved(two, one, repeats=9, number=1, sync=torch.cuda.synchronize)
    assert 1.6 < comp.ratio < 2.4


def test_interleaved_many_alternates_which_of_two_variants_runs_first():
    """With two variants the order rotates each round (A B, B A, ...), so neither always
    runs right after the other's footprint."""
    calls = []
    timing.interleaved_many({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                            repeats=4, warmup=0)
    rounds = [tuple(calls[i:i + 2]) for i in range(0, len(calls), 2)]
    assert rounds == [("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")]
