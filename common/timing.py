"""Timing that holds up on a noisy machine: warm-up, repeats, medians, interleaving.

Three rules, each from a way benchmarks lie:

1. **Warm up first.** The first calls pay for imports, allocation, JIT compilation and
   cold caches; they say nothing about steady state.
2. **Repeat and take the median.** One sample is noise; the mean follows the outliers.
3. **Interleave A and B.** If A is timed for a minute and then B for a minute, any drift
   in between (another process, thermal throttling, frequency scaling) lands entirely
   on one side. Timing them in alternation over the same inputs and taking the median
   of the *per-pair* ratios cancels drift that is slow compared to one pair.

CPU timing uses the standard library's ``timeit`` (``timeit.Timer`` disables the garbage
collector while timing; the loop count comes from our :func:`calibrate`, in the spirit of
``autorange``). CUDA timing delegates to ``triton.testing.do_bench``, which
synchronises, flushes L2 between repeats and times with CUDA events.
"""

from __future__ import annotations

import gc
import random
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field

from .stats import Stats, summarize

#: The clock every CPU measurement here reads (seconds; ``timeit``'s default timer). It
#: is looked up at each call, so a test can substitute a fake clock that the measured
#: functions advance by known amounts and check the arithmetic exactly, free of load.
clock: Callable[[], float] = time.perf_counter


@dataclass(frozen=True)
class Timing:
    """Per-call times (seconds) of one function, and how they were taken."""

    stats: Stats
    samples: list[float] = field(repr=False)
    number: int  # calls per sample: one sample is the mean over `number` back-to-back calls
    device: str = "cpu"

    @property
    def median(self) -> float:
        return self.stats.median


def calibrate(fn: Callable[[], object], min_sample_s: float = 2e-3) -> int:
    """How many back-to-back calls make one sample last at least ``min_sample_s``.

    A single call of a 1 us function is below the timer's resolution and dominated by
    the timer's own overhead, so cheap functions are timed in blocks (as ``timeit``
    and ``torch.utils.benchmark`` do).
    """
    number = 1
    timer = timeit.Timer(fn, timer=clock)
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= min_sample_s or number >= 1 << 24:
            return number
        # Aim straight for the target, with head-room, instead of doubling blindly.
        number = max(number * 2, int(number * min_sample_s * 1.2 / max(elapsed, 1e-9)))


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 15,
    number: int | None = None,
    min_sample_s: float = 2e-3,
    device: str = "cpu",
) -> Timing:
    """Time ``fn`` after ``warmup`` calls: ``repeats`` samples of ``number`` calls each.

    On ``device="cuda"`` this delegates to :func:`measure_cuda`.
    """
    if device.startswith("cuda"):
        return measure_cuda(fn)
    for _ in range(warmup):
        fn()
    number = number or calibrate(fn, min_sample_s)
    timer = timeit.Timer(fn, timer=clock)
    samples = [timer.timeit(number) / number for _ in range(repeats)]
    return Timing(summarize(samples), samples, number, "cpu")


def measure_cuda(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """Time a CUDA function with ``triton.testing.do_bench`` (CUDA events, L2 flushed).

    ``do_bench`` takes its warm-up and repeat budgets in milliseconds and picks the
    number of repeats itself; we ask it for every sample so that our statistics match
    the CPU path's.
    """
    from triton.testing import do_bench

    samples_ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
    samples = [t * 1e-3 for t in samples_ms]
    return Timing(summarize(samples), samples, 1, "cuda")


def cuda_graph(fn: Callable[[], object], calls: int = 10) -> Callable[[], object]:
    """``fn`` called ``calls`` times, captured once into a CUDA graph; returns a function
    that replays the graph (one replay = ``calls`` calls of ``fn``).

    Why: a Triton kernel launched from Python costs tens of microseconds of host time
    (argument binding, the launcher), more than a small kernel runs; timed launch by
    launch, a 20 us GEMM measures the launcher, and a kernel needing two launches
    (split-K) looks slower than it runs. A graph replay launches all ``calls`` kernels
    with one host call, so both sides of a comparison are timed on the GPU's own work,
    as the advice for many small launches has it (capture, then time the replays).
    ``fn`` must be capturable: no host synchronisation, no ``.item()``. It runs three
    times on a side stream before capture (Triton compiles, cuBLAS picks its kernel and
    workspace), as PyTorch's CUDA-graphs notes require.
    """
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    torch.cuda.synchronize()
    return graph.replay


@dataclass(frozen=True)
class Comparison:
    """Result of an interleaved A/B run: per-pair ratios ``time(A) / time(B)``.

    A ratio below 1 means A is faster. ``ratio`` is the median over pairs; ``spread``
    gives the inter-quartile range of the per-pair ratios, the honest error bar.
    """

    a: Timing
    b: Timing
    ratios: list[float] = field(repr=False)
    ratio_stats: Stats

    @property
    def ratio(self) -> float:
        return self.ratio_stats.median

    @property
    def speedup(self) -> float:
        """How many times faster A is than B (``1 / ratio``)."""
        return 1.0 / self.ratio

    def to_dict(self) -> dict:
        return {
            "ratio": self.ratio,
            "q1": self.ratio_stats.q1,
            "q3": self.ratio_stats.q3,
            "pairs": self.ratio_stats.n,
            "a_median_s": self.a.median,
            "b_median_s": self.b.median,
        }


def interleaved(
    a: Callable[[], object],
    b: Callable[[], object],
    *,
    repeats: int = 15,
    warmup: int = 3,
    number: int | None = None,
    min_sample_s: float = 2e-3,
    sync: Callable[[], object] | None = None,
) -> Comparison:
    """Time A and B in alternation over the same inputs; return per-pair ratios A/B.

    Both sides use the same number of calls per sample (calibrated on the slower one),
    so each pair compares like with like. The order inside a pair alternates
    (A B, B A, A B, ...) so that neither side always runs right after the other's
    cache footprint. ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each
    clock read when the functions launch asynchronous work.
    """
    for _ in range(warmup):
        a()
        b()
    if number is None:
        number = min(calibrate(a, min_sample_s), calibrate(b, min_sample_s))

    def sample(fn: Callable[[], object]) -> float:
        if sync:
            sync()
        t0 = clock()
        for _ in range(number):
            fn()
        if sync:
            sync()
        return (clock() - t0) / number

    ta: list[float] = []
    tb: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(repeats):
            if i % 2 == 0:
                ta.append(sample(a))
                tb.append(sample(b))
            else:
                tb.append(sample(b))
                ta.append(sample(a))
    finally:
        if gc_was_enabled:
            gc.enable()
    ratios = [x / y for x, y in zip(ta, tb, strict=True)]
    return Comparison(
        Timing(summarize(ta), ta, number),
        Timing(summarize(tb), tb, number),
        ratios,
        summarize(ratios),
    )


def interleaved_many(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int = 9,
    warmup: int = 1,
    number: int = 1,
    sync: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Interleaved timing of several variants: each round times every variant once, in
    a fresh (seeded) random order. Returns per-variant sample lists (seconds per call)
    whose i-th entries were taken in the same round, so ratios can be formed pairwise per
    round (see :func:`paired_ratios`).

    Why shuffle rather than rotate: rotating keeps the cyclic order, so each variant
    always runs right after the same other one, and a variant can leave work behind
    for its successor (a BLAS or OpenMP pool still spinning, caches full of its data).
    With three or more variants that bias lands on fixed pairs; shuffling spreads it."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(0)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)] if len(names) < 3 else \
            rng.sample(names, len(names))
        for n in order:
            if sync:
                sync()
            t0 = clock()
            for _ in range(number):
                fns[n]()
            if sync:
                sync()
            out[n].append((clock() - t0) / number)
    return out


def paired_ratios(a: list[float], b: list[float]) -> Stats:
    """Median and spread of ``a[i] / b[i]`` over rounds measured together."""
    return summarize([x / y for x, y in zip(a, b, strict=True)])
