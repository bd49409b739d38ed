"""Robust statistics over recorded samples (latencies, per-repeat times, ratios).

Why robust: on a shared or noisy machine a few samples are always slow (a page fault,
a context switch, a GC pause). The mean moves with them; the median and the
inter-quartile range (IQR) do not. Tail latencies are reported as percentiles because
that is how serving systems state their objectives (Clipper's SLOs are p99s; Dean &
Barroso, "The Tail at Scale", CACM 2013).

Percentiles use numpy's default (linear interpolation between order statistics), so a
student can check every number here with ``np.percentile``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Summary of a sample. All fields share the unit of the samples (seconds for times)."""

    n: int
    mean: float
    median: float
    q1: float
    q3: float
    min: float
    max: float
    p90: float
    p99: float
    p999: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def p50(self) -> float:
        return self.median

    def to_dict(self) -> dict:
        d = asdict(self)
        d["iqr"] = self.iqr
        return d

    def scaled(self, factor: float) -> Stats:
        """The same summary in another unit (e.g. ``factor=1e6`` for microseconds)."""
        return Stats(self.n, *(getattr(self, f) * factor for f in _FIELDS))


_FIELDS = ("mean", "median", "q1", "q3", "min", "max", "p90", "p99", "p999")


def _finite(samples: Iterable[float], who: str) -> np.ndarray:
    """The samples as float64, refusing none at all or non-finite ones with a reason
    (numpy would answer an IndexError or NaN)."""
    x = np.asarray(list(samples), dtype=np.float64)
    if x.size == 0:
        raise ValueError(f"{who} needs finite samples: got none (at least one is needed)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{who} needs finite samples: got non-finite ones "
                         f"{x[~np.isfinite(x)][:5]}")
    return x


def summarize(samples: Iterable[float]) -> Stats:
    """Summarise a sample: median, IQR, extremes and tail percentiles.

    >>> summarize([1, 2, 3, 4, 100]).median
    3.0
    """
    x = _finite(samples, "summarize()")
    q = np.percentile(x, [25, 50, 75, 90, 99, 99.9])
    return Stats(
        n=int(x.size),
        mean=float(x.mean()),
        median=float(q[1]),
        q1=float(q[0]),
        q3=float(q[2]),
        min=float(x.min()),
        max=float(x.max()),
        p90=float(q[3]),
        p99=float(q[4]),
        p999=float(q[5]),
    )


def percentile(samples: Iterable[float], p: float) -> float:
    """One percentile (0..100) of a sample, numpy's linear interpolation."""
    return float(np.percentile(_finite(samples, "percentile()"), p))


def cdf(samples: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF: sorted values and the fraction of samples at or below each."""
    x = np.sort(_finite(samples, "cdf()"))  # a NaN sorted last, counted below every
    return x, np.arange(1, x.size + 1) / x.size  # fraction
