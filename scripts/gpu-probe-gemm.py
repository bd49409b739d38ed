"""Two questions the 2026-11-27 GEMM sweep left open, answered on a GPU in one call.

1. **Budget or space?** At 16 trials a task the tuner's best 8192^3 fp16 kernel was
   slower than the best of Triton's tutorial configs (1.89 ms vs 1.67 ms under
   ``do_bench``), although that tutorial config lies inside our search space. Tune the
   square fp16 GEMMs again with 64 trials each and print the best time after every 8:
   if the curve reaches the tutorial's best, the sweep was short of trials; if it
   flattens above it, the search (or its cost model) misses that region.
2. **How much does the timing method move the numbers?** The tuner times a kernel with
   ``triton.testing.do_bench`` (median, L2 flushed before each call); the bench case
   compares with ``common.timing.interleaved`` (synchronised pairs, Python launches
   included). Time the tuned best, the tutorial's best and cuBLAS both ways.

Writes ``OUT/probe-gemm.json`` and prints a table last. Needs a CUDA GPU; about two
minutes on an H200 (compiles dominate). ``scripts/gpu-suite.sh`` runs it when
``PROBE_GEMM=1``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from triton.testing import do_bench

from common import cost
from common.devices import gpu_spec_for
from common.timing import interleaved
from systems.miniansor.cuda import CudaDevice
from systems.miniansor.measure import MeasureInput, Measurer
from systems.miniansor.sketch import run_program
from systems.miniansor.study import tutorial_configs
from systems.miniansor.tune import tune_tasks
from systems.miniansor.workloads import gemm

SIZES = [int(s) for s in (sys.argv[2].split(",") if len(sys.argv) > 2 else ("4096", "8192"))]
TRIALS, PER_ROUND = 64, 8


def clocks() -> str:
    q = "clocks.sm,clocks.max.sm,power.draw,temperature.gpu"
    return subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()


def main(out: Path) -> None:
    dev = CudaDevice()
    spec = gpu_spec_for(dev.name)
    report: dict = {"device": dev.name, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                              time.gmtime()),
                    "trials": TRIALS, "per_round": PER_ROUND, "tasks": {}}
    try:
        for n in SIZES:
            task = gemm(n, n, n, "fp16")
            curve: list[float] = []

            def log(inp, res, curve=curve):
                curve.append(res.time)

            t0 = time.perf_counter()
            res = tune_tasks([task], None, TRIALS, device=dev, per_round=PER_ROUND,
                             callbacks=[log], progress=False)
            tune_s = time.perf_counter() - t0
            best = res.best[task.key]
            running = np.minimum.accumulate(np.array(curve, dtype=float))
            tut = [MeasureInput(task, s, a) for s, a in tutorial_configs()]
            tut_t = [r.time for r in Measurer(dev, verify="none", enforce_limits=False
                                              ).measure(tut)]
            tb = tut[int(np.argmin(tut_t))]
            x = task.make_inputs("cuda")
            fns = {"ours": lambda: run_program(task, best.sketch, best.ann, x),
                   "tutorial": lambda: run_program(task, tb.sketch, tb.ann, x),
                   "cublas": lambda: torch.matmul(x["a"], x["b"])}
            before = clocks()
            bench = {k: do_bench(f, warmup=25, rep=200, return_mode="median") * 1e-3
                     for k, f in fns.items()}
            inter = {k: interleaved(fns["ours"], fns[k], repeats=7, warmup=2,
                                    sync=torch.cuda.synchronize).to_dict()
                     for k in ("tutorial", "cublas")}
            after = clocks()
            flops = task.cost().flops
            report["tasks"][task.key] = {
                "tune_s": tune_s,
                "best_after_trials": {str(i + 1): float(running[i])
                                      for i in range(PER_ROUND - 1, len(running), PER_ROUND)},
                "best_config": f"{best.sketch.name} {best.ann}",
                "tutorial_best_config": f"{tb.sketch.name} {tb.ann}",
                "tutorial_best_s_tuner": float(min(tut_t)),
                "do_bench_s": bench,
                "do_bench_tflops": {k: flops / t / 1e12 for k, t in bench.items()},
                "do_bench_peak_fraction": ({k: cost.efficiency(task.cost(), spec, t)
                                            for k, t in bench.items()} if spec else None),
                "interleaved_ours_over": inter,
                "clocks_before": before, "clocks_after": after}
            (out / "probe-gemm.json").write_text(json.dumps(report, indent=1))
    finally:
        dev.close()
    print(f"device {report['device']}  {report['date']}")
    for key, r in report["tasks"].items():
        print(f"\n{key}: tuned in {r['tune_s']:.0f} s; best {r['best_config']}; "
              f"tutorial best {r['tutorial_best_config']}")
        print("  best after trials (ms): " + ", ".join(
            f"{k}: {v * 1e3:.3f}" for k, v in r["best_after_trials"].items())
              + f"; tutorial best {r['tutorial_best_s_tuner'] * 1e3:.3f}")
        print("  do_bench (ms, TFLOP/s): " + ", ".join(
            f"{k} {v * 1e3:.3f} ({r['do_bench_tflops'][k]:.0f})"
            for k, v in r["do_bench_s"].items()))
        print("  interleaved ours/other time: " + ", ".join(
            f"{k} {v['ratio']:.3f}" for k, v in r["interleaved_ours_over"].items()))
        print(f"  clocks sm,max,power,temp: {r['clocks_before']} -> {r['clocks_after']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
