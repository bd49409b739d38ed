"""``casebook bench miniansor``: the CPU cases, on the simulated and the recorded device.

Every comparison runs in the same process, on the same device, the baselines beside
ours. The recorded device replays ``data/space-<gpu>.json``, random configs of two tasks'
spaces measured on a real GPU by ``casebook ansor record-table``, or, where no GPU has
recorded one, ``data/sim-demo.json``, generated from the simulator and labelled
``"source": "simulated"``.

Cases:

* ``search-sim`` / ``search-replay``: trials until the tuner's pick is within 5% of the
  exhaustive best, median over seeds, for Ansor, its ablations (no cost model, no
  evolution), random search and (sim) the Triton tutorial's config list;
* ``cost-model``: ranking quality on held-out configs (80/20) vs a random ranker;
* ``task-scheduler``: an MLP and a transformer block, gradient vs round-robin;
* ``roofline-sim``: where the tuned kernels land under the (simulated) H100 roofline;
* ``roofline-h200``: where the kernels tuned on a real H200 landed under its roofline,
  from the measured table the GPU suite committed (no GPU needed to draw it).
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from common import cost, plots
from common.bench import Case, Context, Result, Target
from common.devices import H100_SXM

from . import study, zoo
from .annotation import config_key
from .extract import extract_tasks
from .recorded import DATA_DIR, RecordedDevice
from .simulator import SimulatedGPU
from .task_scheduler import NO_LATENCY
from .workloads import Task, bmm, gemm, layernorm, softmax

SEARCH_TASKS = {
    "gemm4096": gemm(4096, 4096, 4096, "fp16"),
    "ffn_gelu": gemm(4096, 14336, 4096, "fp16", bias=True, act="gelu"),
    "skinny_fp32": gemm(128, 4096, 4096, "fp32"),
    "decode": gemm(16, 4096, 14336, "fp16"),
    "attn_bmm": bmm(32, 2048, 2048, 128, "fp16"),
}
# The replay studies run on real times when a GPU run has recorded a task space
# (``casebook ansor record-table``, ``data/space-<gpu>.json``), else on the simulated demo.
REPLAY_TABLE = next(iter(sorted(DATA_DIR.glob("space-*.json"))), DATA_DIR / "sim-demo.json")
VARIANTS = {"ansor": {}, "no_cost_model": {"model": "random"}, "no_evolution": {"evolution": False}}
HISTORY = 64  # records per other task that pre-train the "transfer" variant's model
DEFAULT_HISTORY = f"the first {HISTORY} records of the cold Ansor run of every other task"


def _search(ctx: Context, device_for_seed, tasks: dict[str, Task], seeds: int, budget: int,
            with_tutorial: bool, tag: str, history=None) -> Result:
    """The search study. ``history = (records_for, note)``, if given: ``records_for(name)``
    pre-trains the "transfer" variant's model for task ``name``; by default that model
    learns the first ``HISTORY`` records of the cold Ansor runs of the *other* tasks,
    same seed."""
    metrics, series, curves = {}, {}, {}
    ratios, spaces, kept = [], {}, {}
    bar = tqdm(total=len(tasks) * seeds * (len(VARIANTS) + 2), desc=f"search [{tag}]",
               disable=not ctx.progress, leave=False)
    for name, task in tasks.items():
        space = study.exhaustive_space(task, device_for_seed(0))
        truth = {config_key(s, a): t for (s, a), t in zip(space.configs, space.true,
                                                          strict=True)}
        replay_space = space.configs if tag == "replay" else None
        spaces[name] = (space, truth, replay_space)
        trials: dict[str, list[int]] = {v: [] for v in [*VARIANTS, "random"]}
        task_curves: dict[str, list[np.ndarray]] = {v: [] for v in trials}
        for seed in range(seeds):
            dev = device_for_seed(seed)
            runs = {"random": study.random_run(space, dev, seed, budget)}
            bar.update(1)
            for v, kw in VARIANTS.items():
                recs = [] if v == "ansor" else None
                runs[v] = study.ansor_run(task, device_for_seed(seed), seed, budget,
                                          space=replay_space, records=recs, **kw)
                if recs is not None:
                    kept.setdefault(name, []).append(recs[:HISTORY])
                bar.update(1)
            for v, run in runs.items():
                trials[v].append(study.trials_to_within(run, truth, space.best, cap=budget))
                task_curves[v].append(study.best_curve(run, truth, space.best, budget))
        for v, ts in trials.items():
            metrics[f"{name}_trials_{v}"] = float(np.median(ts))
        ratio = metrics[f"{name}_trials_ansor"] / metrics[f"{name}_trials_random"]
        metrics[f"{name}_ratio_vs_random"] = ratio
        ratios.append(ratio)
        if with_tutorial:
            dev0 = device_for_seed(0)
            tut_truth = {config_key(s, a): study.true_time(dev0, task, s, a)
                         for s, a in study.tutorial_configs()}
            tut = study.tutorial_run(task, dev0)
            both = {**truth, **tut_truth}
            # censored like every other variant: never within 5% counts as budget + 1
            # (capping at the list's length made a miss look like 17 trials)
            metrics[f"{name}_trials_tutorial"] = float(
                study.trials_to_within(tut, both, space.best, cap=budget))
            metrics[f"{name}_tutorial_best_vs_exhaustive"] = space.best / min(
                tut_truth.values())
            task_curves["tutorial"] = [study.best_curve(tut, both, space.best, budget)]
        metrics[f"{name}_space_size"] = float(len(space.configs))
        metrics[f"{name}_exhaustive_best_us"] = space.best * 1e6  # a new sketch moves it
        metrics.update(_luck_metrics(name, space, metrics[f"{name}_trials_random"]))
        series[name] = {v: ts for v, ts in trials.items()}
        curves[name] = {v: np.median(np.stack(c), axis=0) for v, c in task_curves.items()}
    transfer = []
    for name, task in tasks.items():  # Ansor with a model that has seen other tasks
        space, truth, replay_space = spaces[name]
        ts = []
        for seed in range(seeds):
            hist = history[0](name) if history is not None else \
                [r for m in tasks if m != name for r in kept[m][seed]]
            run = study.ansor_run(
                task, device_for_seed(seed), seed, budget, space=replay_space, history=hist,
                stop=lambda r: study.trials_to_within(r, truth, space.best) <= len(r))
            ts.append(study.trials_to_within(run, truth, space.best, cap=budget))
            bar.update(1)
        metrics[f"{name}_trials_transfer"] = float(np.median(ts))
        metrics[f"{name}_transfer_history_records"] = float(len(hist))
        transfer.append(metrics[f"{name}_trials_transfer"] / metrics[f"{name}_trials_random"])
        metrics[f"{name}_transfer_ratio_vs_random"] = transfer[-1]
        series[name]["transfer"] = ts
    bar.close()
    metrics["max_trials_ansor"] = max(metrics[f"{n}_trials_ansor"] for n in tasks)
    metrics["max_ratio_vs_random"] = max(ratios)
    metrics["geomean_ratio_vs_random"] = float(np.exp(np.mean(np.log(ratios))))
    metrics["max_transfer_ratio_vs_random"] = max(transfer)
    metrics["geomean_transfer_ratio_vs_random"] = float(np.exp(np.mean(np.log(transfer))))
    first = next(iter(tasks))
    xs = list(range(1, budget + 1))
    path = plots.line_chart(
        {v: (xs, list(c)) for v, c in curves[first].items()},
        ctx.out_dir / f"search-{tag}.png", "trials", "speed of the pick / exhaustive best",
        title=f"{tasks[first].key} on the {tag} device (median over {seeds} seeds)")
    notes = (f"{seeds} seeds per task, budget {budget} trials; a run that never got within "
             f"5% counts as {budget + 1} (censored). Device: "
             f"{device_for_seed(0).name}. Transfer: the same search, its cost model first "
             f"trained on {history[1] if history else DEFAULT_HISTORY}; stopped once within "
             "5%, so not plotted.")
    return Result(metrics=metrics, series={"trials": series}, plots=[path], notes=notes)


def _luck_metrics(name: str, space: study.Space, random_median: float,
                  per_round: int = 8) -> dict[str, float]:
    """Why the ratio target can be out of reach by construction. Ansor's first round is
    ``per_round`` random configs (the cost model predicts at random until it has
    ``num_warmup_sample`` = 8 measurements; the draw is balanced over sketches, not
    uniform over the space, so q below is approximate). For a median below
    ``per_round + 1`` that round must hit a near-best config in over half the seeds;
    when the chance q of that is < 0.5, median(ansor) >= per_round + 1, and the best
    ratio any Ansor-like search can reach is (per_round + 1) / median(random), with the
    analytic median (``best_reachable_ratio``) or the measured one (``..._measured``).
    ``floor_over_random_expected`` is the cruder per_round / E[random]."""
    luck = study.near_best_share(space)
    q = 1 - (1 - luck["share"]) ** per_round  # P(the random first round hits)
    bound = 1.0 if q >= 0.5 else min(1.0, (per_round + 1) / luck["median"])
    return {f"{name}_near_best_share": luck["share"],
            f"{name}_random_expected_trials": luck["expected"],
            f"{name}_random_median_trials_analytic": luck["median"],
            f"{name}_ansor_floor": float(per_round),
            f"{name}_floor_over_random_expected": per_round / luck["expected"],
            f"{name}_best_reachable_ratio": bound,
            f"{name}_best_reachable_ratio_measured": (
                1.0 if q >= 0.5 else min(1.0, (per_round + 1) / random_median))}


def search_sim_case(ctx: Context) -> Result:
    names = list(SEARCH_TASKS) if not ctx.quick else ["gemm4096", "decode"]
    return _search(ctx, lambda s: SimulatedGPU(seed=s), {n: SEARCH_TASKS[n] for n in names},
                   ctx.pick(10, 3), ctx.pick(200, 100), True, "sim")


def search_replay_case(ctx: Context) -> Result:
    dev = RecordedDevice(REPLAY_TABLE)
    tasks = {t.key.split(":")[0] + "_" + t.key.split(":")[1]: t for t in dev.tasks()}
    if ctx.quick:
        tasks = dict(list(tasks.items())[:1])
    res = _search(ctx, lambda s: dev, tasks, ctx.pick(10, 3), ctx.pick(160, 100), False,
                  "replay", _gpu_history(dev, tasks))
    res.notes += f" Table source: {dev.source} ({REPLAY_TABLE.name})."
    return res


def _gpu_history(dev: RecordedDevice, tasks: dict[str, Task]):
    """When the GPU that recorded the replayed spaces also committed its tuning records
    (``recorded-<gpu>.json``, the GPU suite's tuner), a new task's model can learn from
    those: every task of other shapes (no dtype twin of the same GEMM), real times."""
    path = REPLAY_TABLE.with_name(REPLAY_TABLE.name.replace("space-", "recorded-"))
    if path == REPLAY_TABLE or not path.exists():
        return None
    tuned = RecordedDevice(path)
    if tuned.table.get("device") != dev.table.get("device"):
        return None
    shape = {n: t.key.split(":")[1] for n, t in tasks.items()}
    return (lambda name: tuned.records(skip=lambda t: t.key.split(":")[1] == shape[name]),
            f"every record of the GPU tuner's table {path.name} ({tuned.table['device']}) "
            "except the tasks of the same shape")


def cost_model_case(ctx: Context) -> Result:
    n = ctx.pick(1500, 600)
    out = study.ranking_study(list(SEARCH_TASKS.values()) + [softmax(8192, 4096)],
                              SimulatedGPU(seed=0), n)
    metrics = {f"{k}": v for k, v in out["ours"].items()}
    metrics.update({f"random_{k}": v for k, v in out["random"].items()})
    rep = study.ranking_study(RecordedDevice(REPLAY_TABLE).tasks(), RecordedDevice(REPLAY_TABLE),
                              10**6)
    metrics.update({f"replay_{k}": v for k, v in rep["ours"].items()})
    metrics.update({f"replay_random_{k}": v for k, v in rep["random"].items()})
    return Result(metrics=metrics, series={"per_task": out["per_task"],
                                           "replay_per_task": rep["per_task"]},
                  notes=f"sim: {n} configs per task, 80/20 split, metrics averaged over "
                        f"tasks; replay: every recorded config of {REPLAY_TABLE.name}")


def scheduler_case(ctx: Context) -> Result:
    """Two readings of "reach round-robin's final weighted latency": on the sum of best
    *measured* times the scheduler optimises (``*_trial_fraction``), and on the true
    latency of the kernels each strategy would deploy (``*_trial_fraction_true``, the
    target: see ``study.true_objective``); the oracle likewise."""
    metrics, series, plot_series = {}, {}, {}
    seeds = ctx.pick(5, 1)
    truth_dev = SimulatedGPU(seed=0)  # true_time is noise-free: any seed gives the same
    for name in ("mlp", "transformer"):
        module, inputs = zoo.example(name)
        tasks, weights = extract_tasks(module, inputs, "fp16")
        total = ctx.pick(64, 16) * len(tasks)
        got: dict[str, list[float]] = {k: [] for k in ("measured", "true", "oracle",
                                                        "oracle_true")}
        for seed in range(seeds):
            runs = {}
            for strategy in ("round-robin", "gradient"):
                log, hist = study.scheduler_run(tasks, weights, lambda s: SimulatedGPU(seed=s),
                                                total, strategy, seed)
                runs[strategy] = (log, study.true_objective(log, hist, tasks, weights,
                                                            truth_dev))
            (rr, rr_true), (gr, gr_true) = runs["round-robin"], runs["gradient"]
            for key, reach in (("measured", study.trials_to_reach(gr, rr.objective[-1])),
                               ("true", study.trials_to_reach(gr, rr_true[-1], gr_true))):
                got[key].append((reach if reach is not None else total + 1) / total)
            o, o_true = _oracle_fraction(tasks, weights, seed, total // len(tasks), truth_dev)
            got["oracle"].append(o)
            got["oracle_true"].append(o_true)
            if seed == 0:  # plot after the warm-up round, relative to round-robin's end
                for label, curve in (("gradient", gr_true), ("round-robin", rr_true)):
                    pts = [(n, v / rr_true[-1]) for n, v in
                           zip(gr.trials if label == "gradient" else rr.trials, curve,
                               strict=True) if v < NO_LATENCY]
                    plot_series[f"{name} {label}"] = ([p[0] for p in pts],
                                                      [p[1] for p in pts])
                series[name] = {"tasks": [t.key for t in tasks], "weights": weights,
                                "gradient_chosen": gr.chosen,
                                "gradient_curve_us": [o * 1e6 for o in gr.objective],
                                "round_robin_curve_us": [o * 1e6 for o in rr.objective],
                                "gradient_true_us": [o * 1e6 for o in gr_true],
                                "round_robin_true_us": [o * 1e6 for o in rr_true],
                                "trials": gr.trials}
        for key, suffix in (("measured", ""), ("true", "_true")):
            metrics[f"{name}_trial_fraction{suffix}"] = float(np.median(got[key]))
        metrics[f"{name}_oracle_trial_fraction"] = float(np.median(got["oracle"]))
        metrics[f"{name}_oracle_trial_fraction_true"] = float(np.median(got["oracle_true"]))
        metrics[f"{name}_tasks"] = float(len(tasks))
        series[name].update({"trial_fraction": got["measured"],
                             "trial_fraction_true": got["true"],
                             "oracle_trial_fraction": got["oracle"],
                             "oracle_trial_fraction_true": got["oracle_true"]})
    for m in ("trial_fraction", "trial_fraction_true", "oracle_trial_fraction",
              "oracle_trial_fraction_true"):
        metrics[f"max_{m}"] = max(metrics[f"{n}_{m}"] for n in ("mlp", "transformer"))
    path = plots.line_chart(plot_series, ctx.out_dir / "scheduler.png", "trials",
                            "true weighted latency / round-robin's final",
                            title="whole model on the simulated H100 (seed 0): gradient vs "
                                  "round-robin")
    return Result(metrics=metrics, series=series, plots=[path],
                  notes=f"{seeds} seed(s); trial_fraction = trials the gradient scheduler "
                        "needs to reach round-robin's final weighted latency / total trials, "
                        "on the sum of best measured times (no suffix) or on the noise-free "
                        "latency of the kernels each would deploy (_true); "
                        "oracle_trial_fraction = the fewest trials of any allocation in "
                        "rounds of 8, from each task's curve tuned alone (up to 4x its "
                        "round-robin share), to reach round-robin's final latency on those "
                        "curves / total trials (medians over seeds)")


def _oracle_fraction(tasks: list[Task], weights: list[int], seed: int, share: int,
                     truth_dev, per_round: int = 8) -> tuple[float, float]:
    """The allocation oracle on curves of each task tuned alone (same policy, device and
    seeds as ``scheduler_run``), on measured and on true latencies. A task's curve runs up
    to what it could get if every other task kept only its warm-up round, capped at 4x its
    round-robin ``share`` to bound the time: the fraction is exact up to
    (4 * share + 8 * (n - 1)) / (n * share) and an upper bound beyond (0.61 for the 8-task
    transformer, exact for the MLP)."""
    n = len(tasks)
    length = min(n * share - per_round * (n - 1), 4 * share)
    out = []
    runs, truths = [], []
    for i, t in enumerate(tasks):
        recs: list = []
        runs.append(study.ansor_run(t, SimulatedGPU(seed=seed), seed + i, length,
                                    per_round=per_round, records=recs))
        truths.append({inp.key: study.true_time(truth_dev, t, inp.sketch, inp.ann)
                       for inp, _ in recs})
    for truth in (None, truths):
        curves = [study.tuning_curve(r, per_round, length // per_round,
                                     None if truth is None else truth[i])
                  for i, r in enumerate(runs)]
        target = sum(w * c[share // per_round - 1]
                     for w, c in zip(weights, curves, strict=True))
        rounds = study.oracle_rounds(curves, weights, target)
        out.append(rounds * per_round / (n * share))
    return out[0], out[1]


def roofline_case(ctx: Context) -> Result:
    sim = SimulatedGPU(seed=0)
    tasks = {"gemm4096": SEARCH_TASKS["gemm4096"], "ffn_gelu": SEARCH_TASKS["ffn_gelu"],
             "decode": SEARCH_TASKS["decode"], "attn_bmm": SEARCH_TASKS["attn_bmm"],
             "softmax": softmax(8192, 4096), "layernorm": layernorm(8192, 4096)}
    points, metrics = [], {}
    for name, task in tasks.items():
        run = study.ansor_run(task, sim, 0, ctx.pick(64, 32))
        space = study.exhaustive_space(task, sim)
        truth = {config_key(s, a): t for (s, a), t in zip(space.configs, space.true,
                                                          strict=True)}
        key = min(run, key=lambda r: r[1])[0]
        t = truth[key]
        c = task.cost()
        points.append({"label": name, "intensity": c.intensity, "flops": c.flops / t})
        metrics[f"{name}_roofline_fraction"] = cost.efficiency(c, H100_SXM, t)
        metrics[f"{name}_vs_exhaustive_best"] = space.best / t
    path = plots.roofline_chart(H100_SXM, points, ctx.out_dir / "roofline-sim.png", "fp16",
                                title="tuned kernels on the SIMULATED H100 (not measured)")
    return Result(metrics=metrics, series={"points": points}, plots=[path],
                  notes="64 Ansor trials per task on the simulated device; fractions are of "
                        "the datasheet roofline (fp16 dense peak, HBM bandwidth)")


def roofline_h200_case(ctx: Context) -> Result:
    """Where the kernels tuned *on the H200* land under its roofline: the best config our
    tuner measured for every task of the committed table (``data/recorded-nvidia-h200.json``,
    written by the GPU suite; the tutorial's configs in it are left out), replayed here
    without a GPU. Times are the tuner's ``do_bench`` medians, taken in short bursts
    between compiles, when the clock is high."""
    from common.devices import H200

    table = DATA_DIR / "recorded-nvidia-h200.json"
    dev = RecordedDevice(table)
    points, metrics = [], {}
    for task in dev.tasks():
        # ours only: the table also holds the tutorial's configs, timed as a baseline
        times = [float(np.median(e["time_s"]))
                 for key, e in dev.table["tasks"][task.key].items()
                 if "time_s" in e and not key.startswith("tutorial[")]
        if not times:
            continue
        t, c = min(times), task.cost()
        name = task.key.replace(":none", "").replace(":", " ")
        points.append({"label": name, "intensity": c.intensity, "flops": c.flops / t})
        metrics[f"{task.key}_roofline_fraction"] = cost.efficiency(c, H200, t)
        metrics[f"{task.key}_best_us"] = t * 1e6
    fp16 = [p for p in points if " bf16" not in p["label"]]  # one dtype's roof per chart
    title = f"tuned kernels MEASURED on the H200 ({dev.table['created']}), fp16"
    path = plots.roofline_chart(H200, fp16, ctx.out_dir / "roofline-h200.png", "fp16",
                                title=title)
    return Result(metrics=metrics, series={"points": points}, plots=[path],
                  notes=f"best measured config of ours (not the tutorial's) for each task in "
                        f"{table.name} (source: "
                        f"{dev.source}); fractions are of the H200 datasheet roofline")


CASES = [
    Case("search-sim", "trials to within 5% of the exhaustive best (simulated H100)",
         ("random search", "Triton tutorial configs", "no cost model", "no evolution"),
         search_sim_case,
         (Target("max_trials_ansor", "<=", 64, "median trials, worst task"),
          Target("max_ratio_vs_random", "<=", 0.33, "ours / random search, worst task"))),
    Case("search-replay", "trials to within 5% of the best recorded config (replay)",
         ("random search", "no cost model", "no evolution"), search_replay_case,
         (Target("max_trials_ansor", "<=", 64), Target("max_ratio_vs_random", "<=", 0.33))),
    Case("cost-model", "ranking held-out configs (80/20 split)", ("random ranker",),
         cost_model_case,
         (Target("pairwise_accuracy", ">=", 0.85), Target("kendall_tau", ">=", 0.7),
          Target("recall_at_10", ">=", 0.6), Target("average_peak_at_32", ">=", 0.95))),
    Case("task-scheduler", "whole model: gradient task scheduler vs round-robin",
         ("round-robin",), scheduler_case,
         (Target("max_trial_fraction_true", "<=", 0.5,
                 "trials to reach round-robin's final latency / its trials"),)),
    Case("roofline-sim", "tuned kernels under the simulated H100 roofline", (),
         roofline_case),
    Case("roofline-h200", "kernels tuned on the H200 under its roofline (recorded table)",
         (), roofline_h200_case),
]

from .bench_cuda import CUDA_CASES  # noqa: E402  (GPU cases live in their own module)

CASES += CUDA_CASES
