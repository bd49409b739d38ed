"""``casebook tour`` step: tune one GEMM on the simulated H100, every kernel checked."""

from __future__ import annotations

from typing import Any


def tour_step(quick: bool = True) -> dict[str, Any]:
    """Tune a 2048^3 fp16 GEMM + bias + ReLU for a few rounds and compare with the best of
    Triton's tutorial configs, on the simulated device."""
    from . import study
    from .simulator import SimulatedGPU
    from .tune import tune_task
    from .workloads import gemm

    task = gemm(2048, 2048, 2048, "fp16", bias=True, act="relu")
    trials = 32 if quick else 96
    res = tune_task(task, trials, device="sim", progress=False)
    best = res.best[task.key]
    sim = SimulatedGPU()
    tutorial = min(study.true_time(sim, task, s, a) for s, a in study.tutorial_configs())
    mine = sim.true_time(task, best.sketch, best.ann)
    print(f"  {task.key}: {trials} trials, each new kernel checked under the interpreter")
    print(f"  best {best.sketch.name} {best.ann}: {mine * 1e6:.1f} us "
          f"({task.flops / mine / 1e12:.0f} TFLOP/s, simulated)")
    print(f"  best of Triton's 16 tutorial configs: {tutorial * 1e6:.1f} us")
    return {"result": f"{task.key} {mine * 1e6:.1f} us after {trials} trials "
                      f"(tutorial best {tutorial * 1e6:.1f} us; simulated H100)"}
