"""common: the measuring layer every system in the casebook reports through.

* :mod:`common.stats`: robust summaries (median, IQR, p50/p90/p99/p99.9), CDFs.
* :mod:`common.timing`: warm-up + repeats on CPU, ``do_bench`` on CUDA, interleaved A/B.
* :mod:`common.trace`: Chrome/Perfetto trace events across threads and processes.
* :mod:`common.devices`: peak FLOP/s and bandwidth (datasheet GPUs, a measured CPU).
* :mod:`common.cost`: op costs, the roofline, efficiency, MFU.
* :mod:`common.money`: $ per 1M inferences, $ per training run, Pareto fronts.
* :mod:`common.bench`: the harness behind ``casebook bench``; :mod:`common.plots` its charts.
* :mod:`common.env`: the machine a number came from.
"""

from .cost import OpCost, efficiency, mfu, roofline
from .devices import DeviceSpec, cpu_spec
from .money import pareto_front, usd_per_million_inferences, usd_per_training_run
from .stats import Stats, summarize
from .timing import Comparison, Timing, interleaved, measure
from .trace import TraceWriter

__all__ = [
    "Comparison", "DeviceSpec", "OpCost", "Stats", "Timing", "TraceWriter", "cpu_spec",
    "efficiency", "interleaved", "measure", "mfu", "pareto_front", "roofline", "summarize",
    "usd_per_million_inferences", "usd_per_training_run",
]
