"""``casebook bench minips``: each case against its baseline, measured in the same run.

The cases are the rows of issue 5's table: raw throughput against one plain gRPC call;
sparse logistic regression against a dense gloo all-reduce; the dense MLP against gloo
DDP (these three in :mod:`.bench_comm`); consistency models under a straggler against
BSP; the filters against no filter; a server killed at half-time against a fault-free
run (plus a many-seed sweep of crash points). Everything runs as real processes over
loopback on this machine, so on a 2-core box every server, worker and baseline shares
two cores; the notes of each case say where that bites. Runs that cannot be interleaved
call by call (whole training jobs) run in rounds, ours and the baseline in AB, BA, AB
order (as :func:`common.timing.interleaved` does for calls), and pair them round by
round; the consistency runs take a new random order each round.
"""

from __future__ import annotations

import numpy as np

from common import plots
from common.bench import Case, Context, Result, Target

from .bench_comm import mlp_case, pair_dict, sparse_lr_case, throughput_case, worker_reports
from .bench_runs import consistency_runs, fault_sweep, run_to_target
from .cluster import ClusterSpec
from .launcher import launch


# ---- 4. consistency models under a straggler ----------------------------------------
def consistency_case(ctx: Context) -> Result:
    res = Result()
    runs = consistency_runs(ctx.quick)
    opt = None
    curves: dict[str, dict] = {}
    got: dict[str, dict[str, list[float]]] = {label: {"t": [], "idle": [], "blocked": []}
                                              for label in runs}
    rng = np.random.default_rng(0)
    for _ in range(ctx.pick(3, 1)):  # rounds; a fresh order each round (no fixed neighbour)
        for label in rng.permutation(list(runs)):
            model, straggler = runs[label]
            r = run_to_target(model, straggler, max_s=ctx.pick(40.0, 25.0), opt=opt)
            opt = r["opt"]
            curves.setdefault(label, r)  # plots show the first round
            for k, v in (("t", r["t_target"]), ("idle", r["idle"]), ("blocked", r["blocked"])):
                got[label][k].append(v)
    m = res.metrics
    for label, g in got.items():
        m[f"time_to_1pct_s[{label}]"] = float(np.median(g["t"]))
        m[f"idle[{label}]"] = float(np.median(g["idle"]))
        m[f"blocked_in_pulls[{label}]"] = float(np.median(g["blocked"]))
    p = "persistent"
    t = {label: g["t"] for label, g in got.items()}
    res.ratios["ssp4_vs_bsp_time"] = pair_dict(t[f"ssp:4, {p}"], t[f"bsp, {p}"])
    m["idle_bsp"] = m[f"idle[bsp, {p}]"]
    m["idle_ssp16"] = m[f"idle[ssp:16, {p}]"]
    res.ratios["nostraggler_ssp4_vs_bsp_time"] = pair_dict(t["ssp:4, none"], t["bsp, none"])
    if "bsp, rotating" in t:
        res.ratios["rotating_ssp4_vs_bsp_time"] = pair_dict(t["ssp:4, rotating"],
                                                            t["bsp, rotating"])
        m["idle_ssp16_rotating"] = m["idle[ssp:16, rotating]"]
    for mode in ("persistent", "rotating", "none"):
        sel = {k.split(",")[0]: ([c["t"] for c in r["curve"]],
                                 [c["objective"] / r["opt"] for c in r["curve"]])
               for k, r in curves.items() if k.endswith(mode)}
        if sel:
            t_max = max(max(t) for t, _ in sel.values())
            sel["within 1% of the optimum"] = ([0.0, t_max], [1.01, 1.01])
            res.plots.append(plots.line_chart(
                sel, ctx.out_dir / f"consistency_{mode}.png", "seconds since training began",
                "objective / single-process optimum", f"time to loss, straggler: {mode}",
                logy=True))
    res.series["curves"] = {k: {"t": [c["t"] for c in r["curve"]],
                                "rel": [c["objective"] / r["opt"] for c in r["curve"]]}
                            for k, r in curves.items()}
    res.notes = (f"{len(next(iter(got.values()))['t'])} round(s) of every run, each round "
                 "in a new random order; times and idle fractions are medians over rounds, "
                 "the ratios medians of per-round ratios. "
                 "4 workers, 2 servers, sparse LR on 2^16 keys; every step sleeps 20 ms of "
                 "simulated compute, the straggler 80 ms. persistent: worker 0 is always 4x "
                 "slow; rotating: one random worker per clock (as in the paper's shared "
                 "cluster, section 5.1). A persistent straggler bounds every bounded-delay "
                 "model to its pace once the slack of tau clocks is used up.")
    return res


# ---- 5. filters -----------------------------------------------------------------------
def filters_case(ctx: Context) -> Result:
    args = {"name": "sparse_lr", "features": 1 << 18, "examples": 8192, "nnz": 24,
            "batch": 256, "lam": 5e-3, "lr": 0.1}
    steps = ctx.pick(96, 32)
    runs = {}
    for name, filt in (("none", []), ("key_caching", ["key_caching"]), ("kkt", ["kkt"]),
                       ("compress", ["compress"])):
        runs[name] = launch(ClusterSpec(servers=2, workers=2, steps=steps,
                                        app={**args, "filters": filt}),
                            eval_every_s=1e9, progress=False)
    res = Result()
    m = res.metrics
    base = runs["none"]["final"]["objective"]

    def total(run: str, f: str, k: str) -> float:
        return sum(w[f][k] for w in runs[run]["filters"].values())

    m["key_caching_key_bytes_saved"] = (total("key_caching", "key_caching", "saved_bytes")
                                        / total("key_caching", "key_caching", "bytes_in"))
    m["kkt_late_suppressed"] = float(np.mean([w["kkt"]["late_suppressed"]
                                              for w in runs["kkt"]["filters"].values()]))
    m["pull_compression"] = (total("compress", "compress_pull", "bytes_in")
                             / total("compress", "compress_pull", "bytes_out"))
    for name, r in runs.items():
        m[f"wire_MB[{name}]"] = r["worker_bytes"] / 1e6
        m[f"objective[{name}]"] = r["final"]["objective"]
    m["objective_rel_diff"] = max(abs(r["final"]["objective"] - base) / base
                                  for r in runs.values())
    res.notes = (f"sparse LR, 2^18 keys, 2 workers x {steps} BSP steps; each filter alone.")
    return res


# ---- 6. a server killed at half-time ------------------------------------------------
def fault_case(ctx: Context) -> Result:
    args = {"name": "mlp", "hidden": 64, "batch": 32, "lr": 0.25}
    spec = ClusterSpec(servers=3, workers=2, replication=2, steps=ctx.pick(300, 60), app=args,
                       audit=2, hb_timeout=0.6)
    free = launch(spec, eval_every_s=0.25, progress=False)
    half = max(r["seconds"] for r in worker_reports(free)) / 2
    faulty = launch(spec, eval_every_s=0.25, progress=False,
                    faults=[{"at": half + 0.5, "kill": "s1"}])
    sweep = fault_sweep(range(ctx.pick(5, 1)))
    res = Result()
    m = res.metrics
    m["accuracy_fault_free"] = free["final"]["accuracy"]
    m["accuracy_with_kill"] = faulty["final"]["accuracy"]
    m["accuracy_delta"] = abs(m["accuracy_with_kill"] - m["accuracy_fault_free"])
    # BSP with SGD is deterministic and exactly-once: the faulted run ends on the same model
    m["test_loss_delta"] = abs(faulty["final"]["loss"] - free["final"]["loss"])
    m["finished"] = float(len(faulty["clocks"]) == spec.workers)
    m["acked_lost"] = float(faulty["audit"]["acked_lost"] + sweep["acked_lost"])
    m["applied_twice"] = float(faulty["audit"]["acked_duplicated"] + sweep["duplicated"])
    m["acked_pushes_audited"] = float(faulty["audit"]["acked"] + sweep["acked"])
    m["max_recovery_s"] = max(faulty["max_recovery_s"], sweep["max_recovery_s"])
    m["sweep_kills"] = float(sweep["kills"])
    t_kill = faulty["faults"][0]["t"] if faulty["faults"] else float("nan")
    m["kill_at_s"] = t_kill
    res.plots.append(plots.line_chart(
        {"fault-free": ([c["t"] for c in free["curve"]], [c["accuracy"] for c in free["curve"]]),
         "s1 killed (kill -9)": ([c["t"] for c in faulty["curve"]],
                                 [c["accuracy"] for c in faulty["curve"]]),
         "the kill": ([t_kill, t_kill], [0.0, 1.0])},
        ctx.out_dir / "fault.png", "seconds since training began", "test accuracy",
        "MLP on digits, 3 servers, replication 2"))
    res.notes = (f"kill -9 of s1 at {half + 0.5:.1f} s; plus {sweep['kills']} injected crashes "
                 f"(4 crash points x {sweep['seeds']} seeds) on the counting app.")
    return res


# ---- 7. CUDA workers (runs only with --device cuda) ----------------------------------
def cuda_workers_case(ctx: Context) -> Result:
    """The same PS job with workers computing on the GPU and on the CPU."""
    steps = ctx.pick(150, 50)
    outs = {dev: launch(ClusterSpec(servers=2, workers=2, steps=steps,
                                    app={"name": "mlp", "hidden": 256, "device": dev}),
                        eval_every_s=1e9, progress=False) for dev in ("cuda", "cpu")}
    res = Result()
    for dev, out in outs.items():
        res.metrics[f"step_s[{dev}]"] = float(np.median(list(out["step_s"].values())))
        res.metrics[f"accuracy[{dev}]"] = out["final"]["accuracy"]
    res.metrics["accuracy_delta"] = abs(res.metrics["accuracy[cuda]"]
                                        - res.metrics["accuracy[cpu]"])
    res.notes = "GPU workers change where the gradient is computed, not what is pushed."
    return res


CASES = [
    Case("push_pull_throughput", "1M-key push and pull with 1, 2, 4 servers",
         ("one raw gRPC unary call of the same size",), throughput_case,
         (Target("push_bytes_per_s_vs_raw", ">=", 0.7, "largest batch, 1 server"),
          Target("pull_bytes_per_s_vs_raw", ">=", 0.7, "largest batch, 1 server"),
          Target("speedup_1_to_2_servers", ">=", 1.3))),
    Case("sparse_lr_vs_allreduce", "sparse L1-LR on 2^22 keys, under 1% touched per step",
         ("torch.distributed gloo all-reduce of the dense gradient",), sparse_lr_case,
         (Target("step_time_allreduce_vs_ps", ">=", 5.0, "PS at least 5x faster per step"),
          Target("bytes_allreduce_vs_ps", ">=", 10.0, "PS at least 10x fewer bytes"))),
    Case("mlp_vs_ddp", "dense MLP on digits", ("torch DDP over gloo",), mlp_case,
         (Target("step_time_ps_vs_ddp", "<=", 1.5),)),
    Case("consistency", "time to within 1% of the optimum, 4 workers, one 4x-slow worker",
         ("BSP",), consistency_case,
         (Target("ssp4_vs_bsp_time", "<=", 0.67, "worker 0 always 4x slow"),
          Target("idle_bsp", ">=", 0.40), Target("idle_ssp16", "<=", 0.10),
          Target("nostraggler_ssp4_vs_bsp_time", "<=", 1.2),
          # the issue's straggler is one worker; a rotating one is our variant, so these
          # two are extra checks, not counted as the issue's targets
          Target("rotating_ssp4_vs_bsp_time", "<=", 0.67, "a random worker 4x slow per clock",
                 issue=False),
          Target("idle_ssp16_rotating", "<=", 0.10, issue=False))),
    Case("filters", "filters on sparse LR", ("no filter",), filters_case,
         (Target("key_caching_key_bytes_saved", ">=", 0.60),
          Target("kkt_late_suppressed", ">=", 0.80), Target("pull_compression", ">=", 5.0),
          Target("objective_rel_diff", "<=", 0.01))),
    Case("fault", "kill one server at half-time, replication 2", ("fault-free run",),
         fault_case,
         (Target("finished", ">=", 1.0), Target("accuracy_delta", "<=", 0.01),
          Target("acked_lost", "<=", 0.0), Target("applied_twice", "<=", 0.0),
          Target("max_recovery_s", "<=", 2.0))),
    Case("cuda_workers", "MLP workers computing on CUDA", ("the same job on CPU workers",),
         cuda_workers_case, (Target("accuracy_delta", "<=", 0.01),), device="cuda"),
]
