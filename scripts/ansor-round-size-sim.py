"""Why the GPU GEMM case tunes in rounds of 8: the same 22 tasks and 352 trials on the
simulated H100, in rounds of 16 (the whole budget is the task scheduler's warm-up, one
round per task) and in rounds of 8 (warm-up of 8 each, then 176 trials allocated by the
gradient scheduler, Ansor section 6). Prints, per seed, the weighted objective the
scheduler minimises (sum over tasks of weight x true time of the chosen kernel, weights
1 / roofline time as in ``bench_cuda._tune``) and the median ratio (8 over 16).

    PYTHONPATH=. python scripts/ansor-round-size-sim.py [SEEDS]   # about 2 minutes
"""

import statistics
import sys

from common import cost
from common.devices import H100_SXM
from systems.miniansor.bench_cuda import LLM, SQUARE
from systems.miniansor.simulator import SimulatedGPU
from systems.miniansor.tune import tune_tasks
from systems.miniansor.workloads import gemm


def objective(tasks, weights, per_round: int, seed: int) -> float:
    res = tune_tasks(tasks, weights, 16 * len(tasks), device="sim", per_round=per_round,
                     seed=seed, verify="none", progress=False)
    sim = SimulatedGPU(seed=seed)
    return sum(w * sim.true_time(t, res.best[t.key].sketch, res.best[t.key].ann)
               for t, w in zip(tasks, weights, strict=True))


def main(seeds: int) -> None:
    shapes = list(dict.fromkeys([(s, s, s) for s in SQUARE] + LLM))
    tasks = [gemm(m, n, k, dt) for dt in ("fp16", "bf16") for m, n, k in shapes]
    weights = [1.0 / cost.roofline(t.cost(), H100_SXM).lower_bound_s for t in tasks]
    ratios = []
    for seed in range(seeds):
        o16, o8 = (objective(tasks, weights, r, seed) for r in (16, 8))
        ratios.append(o8 / o16)
        print(f"seed {seed}: rounds of 16 {o16:.2f}, rounds of 8 {o8:.2f}, ratio {o8 / o16:.3f}")
    print(f"median ratio (8 / 16): {statistics.median(ratios):.3f}; "
          f"8 better in {sum(r < 1 for r in ratios)} of {seeds} seeds")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
