"""``casebook tour`` step: tune two GEMMs on the simulated H100, every kernel checked."""

from __future__ import annotations

from typing import Any


def tour_step(quick: bool = True) -> dict[str, Any]:
    """Tune a 2048^3 fp16 GEMM + bias + ReLU and a decode-shaped GEMM (16 rows against a
    14336 x 4096 weight) for a few rounds each, and compare with the best of Triton's
    matmul-tutorial configs on the simulated device. The tutorial's list was written for
    large square products: on the first it is hard to beat, on the second (where only
    split-K fills the GPU) the tuner finds what the list does not contain."""
    from . import study
    from .simulator import SimulatedGPU
    from .tune import tune_task
    from .workloads import gemm

    sim = SimulatedGPU()
    listed = study.tutorial_configs()
    out: dict[str, Any] = {"tasks": {}}
    for task, trials in ((gemm(2048, 2048, 2048, "fp16", bias=True, act="relu"), 32),
                         (gemm(16, 4096, 14336, "fp16"), 24)):
        trials = trials if quick else 3 * trials
        res = tune_task(task, trials, device="sim", progress=False)
        best = res.best[task.key]
        tutorial = min(study.true_time(sim, task, s, a) for s, a in listed)
        mine = sim.true_time(task, best.sketch, best.ann)
        print(f"  {task.key}: {trials} trials, each new kernel checked under the interpreter")
        print(f"    best {best.sketch.name} {best.ann}: {mine * 1e6:.1f} us "
              f"({task.flops / mine / 1e12:.0f} TFLOP/s, simulated); best of Triton's "
              f"{len(listed)} tutorial configs: {tutorial * 1e6:.1f} us")
        out["tasks"][task.key] = {"trials": trials, "tuned_us": mine * 1e6,
                                  "tutorial_us": tutorial * 1e6}
    out["result"] = "; ".join(f"{k.split(':')[1]} {v['tuned_us']:.1f} us after "
                              f"{v['trials']} trials (tutorial {v['tutorial_us']:.1f})"
                              for k, v in out["tasks"].items()) + " (simulated H100)"
    return out
