import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.stats import cdf, percentile, summarize


def test_summary_of_known_data_matches_numpy():
    x = np.arange(1, 1001, dtype=float)  # 1..1000
    s = summarize(x)
    assert s.n == 1000
    assert s.median == 500.5
    assert s.mean == 500.5
    assert (s.min, s.max) == (1.0, 1000.0)
    assert s.q1 == np.percentile(x, 25) == 250.75
    assert s.q3 == np.percentile(x, 75) == 750.25
    assert s.iqr == 499.5
    assert s.p90 == pytest.approx(900.1)
    assert s.p99 == pytest.approx(990.01)
    assert s.p999 == pytest.approx(999.001)


def test_median_ignores_an_outlier_that_moves_the_mean():
    s = summarize([1.0, 1.0, 1.0, 1.0, 1000.0])
    assert s.median == 1.0 and s.mean > 100


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_agree_with_numpy_and_are_ordered(xs):
    s = summarize(xs)
    for got, p in [(s.q1, 25), (s.median, 50), (s.q3, 75), (s.p90, 90), (s.p99, 99)]:
        assert got == pytest.approx(np.percentile(xs, p), rel=1e-12, abs=1e-9)
    assert s.min <= s.q1 <= s.median <= s.q3 <= s.p90 <= s.p99 <= s.p999 <= s.max


def test_empty_and_nonfinite_samples_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([1.0, float("nan")])
    for bad in ([], [1.0, float("nan")]):  # percentile alone refuses them the same way
        with pytest.raises(ValueError, match="needs finite samples"):
            percentile(bad, 50)


def test_scaled_converts_units():
    s = summarize([0.001, 0.002, 0.003]).scaled(1e3)
    assert s.median == pytest.approx(2.0) and s.n == 3


def test_cdf_is_monotone_and_ends_at_one():
    x, y = cdf([3, 1, 2, 2])
    assert list(x) == [1, 2, 2, 3]
    assert list(y) == [0.25, 0.5, 0.75, 1.0]


def test_scaled_stats_scale_every_field_and_keep_the_count():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    us = s.scaled(1e6)
    assert us.n == s.n
    for f in ("mean", "median", "q1", "q3", "min", "max", "p90", "p99", "p999"):
        assert getattr(us, f) == getattr(s, f) * 1e6, f


def test_cdf_refuses_non_finite_samples_as_summarize_does():
    """A NaN sorted last and counted below every fraction: cdf([1, nan, 2]) put 2.0 at
    2/3, and the latency plot drawn from it topped out there."""
    with pytest.raises(ValueError, match=r"cdf\(\) needs finite samples"):
        cdf([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="got none"):
        cdf([])
