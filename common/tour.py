"""``casebook tour`` (``make demo``): each part of the casebook in a minute or two.

Each step is a function returning one summary row; systems add theirs to ``STEPS``.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from .bench import format_table

STEPS: dict[str, str] = {
    "measuring layer": "common.tour:measuring_step",
    "miniclipper": "systems.miniclipper.tour:clipper_step",
    "miniflow": "systems.miniflow.digits:tour_step",
    "miniansor": "systems.miniansor.tour:tour_step",
    "minips": "systems.minips.cli:tour_step",
}


def measuring_step(quick: bool = True) -> dict[str, Any]:
    """Probe the CPU, place a matmul under its roofline, and compare two functions."""
    import numpy as np

    from . import cost
    from .devices import cpu_spec
    from .timing import interleaved, measure

    n = 512
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    t = measure(lambda: a @ a, repeats=7).median
    op = cost.matmul_cost(n, n, n)
    dev = cpu_spec(observed_flops=op.flops / t)  # a faster matmul proves a cached probe low
    print(f"  {dev.name}: {dev.peak('fp32') / 1e9:.1f} GFLOP/s fp32, "
          f"{dev.mem_bandwidth / 1e9:.1f} GB/s (ridge {dev.ridge():.1f} FLOP/B)")
    r = cost.roofline(op, dev)
    eff = cost.efficiency(op, dev, t)
    print(f"  matmul {n}: {op.intensity:.0f} FLOP/B ({r.bound}-bound), "
          f"{op.flops / t / 1e9:.1f} GFLOP/s = {eff:.0%} of the roofline")
    x = np.ones(1 << 20, np.float32)
    comp = interleaved(lambda: x.sum(), lambda: (x * 2).sum(), repeats=11)
    print(f"  x.sum() vs (x*2).sum(): ratio {comp.ratio:.2f} "
          f"(IQR {comp.ratio_stats.q1:.2f}-{comp.ratio_stats.q3:.2f} over 11 interleaved pairs)")
    return {"result": f"matmul {n} at {eff:.0%} of roofline; A/B ratio {comp.ratio:.2f}",
            "roofline_fraction": eff, "ab_ratio": comp.ratio}


def run_tour(quick: bool = True) -> dict[str, Any]:
    rows, results = [], {}
    for name, target in STEPS.items():
        module, fn = target.split(":")
        print(f"== {name}")
        t0 = time.perf_counter()
        out = getattr(importlib.import_module(module), fn)(quick=quick)
        secs = time.perf_counter() - t0
        results[name] = {**out, "seconds": secs}
        rows.append((name, out["result"], f"{secs:.1f}s"))
    print("\n" + format_table(rows, ("step", "result", "time")))
    return {"steps": results}
