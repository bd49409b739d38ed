"""``casebook bench minips``: each case against its baseline, measured in the same run.

The cases are the rows of issue 5's table: raw throughput against one plain gRPC call;
sparse logistic regression against a dense gloo all-reduce; the dense MLP against gloo
DDP; consistency models under a straggler against BSP; the filters against no filter;
a server killed at half-time against a fault-free run (plus a many-seed sweep of crash
points). Everything runs as real processes over loopback on this machine, so on a
2-core box every server, worker and baseline shares two cores; the notes of each case
say where that bites. Runs that cannot be interleaved call by call (whole training
jobs) run in rounds, ours and the baseline in AB, BA, AB order (as
:func:`common.timing.interleaved` does for calls), and pair them round by round; the
consistency runs take a new random order each round.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common import plots, rpc
from common.bench import Case, Context, Result, Target
from common.procs import ProcessGroup
from common.timing import interleaved, paired_ratios

from .baselines import RAW_SERVICE, free_port
from .bench_runs import consistency_runs, fault_sweep, run_to_target
from .launcher import Cluster, ClusterSpec, launch


def pair_dict(a: list[float], b: list[float]) -> dict[str, float]:
    """A ratio entry (median and IQR of a[i] / b[i]) for ``Result.ratios``."""
    st = paired_ratios(a, b)
    return {"ratio": st.median, "q1": st.q1, "q3": st.q3, "pairs": st.n}


def gloo(role: str, world: int, args: dict, steps: int) -> dict:
    """Run a gloo baseline on ``world`` processes; rank 0's timings."""
    port, out = free_port(), Path(tempfile.mkdtemp(prefix="minips-gloo-")) / "out.json"
    with ProcessGroup() as g:
        kids = [g.spawn(f"{role}{r}", "systems.minips.baselines",
                        [role, "--rank", str(r), "--world", str(world), "--port", str(port),
                         "--steps", str(steps), "--args", json.dumps(args), "--out", str(out)],
                        announces=False) for r in range(world)]
        codes = [k.popen.wait(timeout=300) for k in kids]
    if not out.exists():  # a rank that crashes at exit after rank 0 wrote its timings
        bad = next(k for k, c in zip(kids, codes, strict=True) if c != 0)  # is harmless
        raise RuntimeError(f"{role} rank failed:\n{bad.log_tail()}")
    return json.loads(out.read_text())


# ---- 1. push/pull throughput --------------------------------------------------------
def throughput_case(ctx: Context) -> Result:
    n = 1 << 22  # the key space; pushes use its first 2^14 .. 2^20 keys
    sizes = ctx.pick([1 << 14, 1 << 17, 1 << 20], [1 << 20])
    reps = ctx.pick(9, 4)
    res = Result()
    series: dict[str, tuple[list, list]] = {}
    with ProcessGroup() as g:
        raw = g.spawn("raw", "systems.minips.baselines", ["raw"])
        ch = rpc.channel(raw.info["addr"])
        call = rpc.method(ch, RAW_SERVICE, "Call")
        clusters = {s: Cluster(ClusterSpec(servers=s, app={"name": "count"}, key_max=n,
                                           vnodes=16, updater={"name": "sgd", "lr": 0.0}))
                    for s in (1, 2, 4)}
        try:
            kvs = {s: cl.start(workers=False).client(f"bench{s}") for s, cl in clusters.items()}
            for m in sizes:
                keys = np.arange(m, dtype=np.uint64)
                vals = np.ones((m, 1), np.float32)
                nbytes = keys.nbytes + vals.nbytes
                raw_push = bytes(nbytes)
                raw_pull = vals.nbytes.to_bytes(8, "little") + bytes(keys.nbytes - 8)
                for s, kv in kvs.items():
                    push = interleaved(lambda kv=kv: kv.wait(kv.push(keys, vals)),
                                       lambda: call(raw_push), repeats=reps, warmup=2, number=1)
                    pull = interleaved(lambda kv=kv: kv.wait(kv.pull(keys)),
                                       lambda: call(raw_pull), repeats=reps, warmup=2, number=1)
                    series.setdefault(f"push, {s} server(s)", ([], []))
                    series[f"push, {s} server(s)"][0].append(m)
                    series[f"push, {s} server(s)"][1].append(nbytes / push.a.median / 1e6)
                    res.metrics[f"push_MBps_{s}srv_{m}"] = nbytes / push.a.median / 1e6
                    res.metrics[f"pull_MBps_{s}srv_{m}"] = nbytes / pull.a.median / 1e6
                    if m == sizes[-1]:
                        res.ratios[f"push_time_vs_raw_{s}srv"] = push.to_dict()
                        res.ratios[f"pull_time_vs_raw_{s}srv"] = pull.to_dict()
                series.setdefault("raw gRPC unary", ([], []))
                series["raw gRPC unary"][0].append(m)
                series["raw gRPC unary"][1].append(nbytes / push.b.median / 1e6)
                res.metrics[f"raw_MBps_{m}"] = nbytes / push.b.median / 1e6
            big = sizes[-1]
            keys = np.arange(big, dtype=np.uint64)
            vals = np.ones((big, 1), np.float32)
            scale = interleaved(lambda: kvs[2].wait(kvs[2].push(keys, vals)),
                                lambda: kvs[1].wait(kvs[1].push(keys, vals)), repeats=reps,
                                warmup=1, number=1)
            res.ratios["push_time_2srv_vs_1srv"] = scale.to_dict()
            crossover(ctx, kvs[2], n, res)
        finally:
            for cl in clusters.values():
                cl.close()
            ch.close()
    # one server: the raw baseline is one unary call to one process (more servers are in
    # the speed-up target and the per-count metrics, not picked after the fact)
    res.metrics["push_bytes_per_s_vs_raw"] = 1 / res.ratios["push_time_vs_raw_1srv"]["ratio"]
    res.metrics["pull_bytes_per_s_vs_raw"] = 1 / res.ratios["pull_time_vs_raw_1srv"]["ratio"]
    res.metrics["speedup_1_to_2_servers"] = 1 / res.ratios["push_time_2srv_vs_1srv"]["ratio"]
    res.plots.append(plots.line_chart(series, ctx.out_dir / "throughput.png", "keys per push",
                                      "MB/s (keys + values)", "push throughput", logx=True))
    res.series["throughput"] = series
    res.notes = ("1M keys = 12.6 MB per push (uint64 keys + float32 values). Ours includes "
                 "slicing, packing, applying the update and replying; the raw call only "
                 "moves bytes. More servers add parallel processes but the 2 cores are "
                 "shared with the client.")
    return res


def crossover(ctx: Context, kv, n: int, res: Result) -> None:
    """PS push+pull of k random keys (2 servers) vs one dense all-reduce of d floats
    (2 ranks), for d = 2^20 and 2^22: where does each win, in time and in bytes?"""
    ks = ctx.pick([1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22],
                  [1 << 12, 1 << 16, 1 << 20])
    rng = np.random.default_rng(0)
    ps = []
    for k in ks:
        keys = (np.arange(n, dtype=np.uint64) if k >= n else
                np.unique(rng.integers(0, n, k)).astype(np.uint64))
        vals = np.ones((keys.size, 1), np.float32)
        t = []
        for _ in range(ctx.pick(5, 3)):
            t0 = time.perf_counter()
            kv.wait(kv.push(keys, vals))
            kv.wait(kv.pull(keys))
            t.append(time.perf_counter() - t0)
        ps.append(float(np.median(t)))
    lines = {"PS push+pull of k keys": (ks, ps)}
    for d in (1 << 20, 1 << 22):
        ar = float(np.median(gloo("gloo_allreduce", 2, {"size": d},
                                  ctx.pick(20, 8))["step_s"][2:]))
        res.metrics[f"allreduce_s_d{d}"] = ar
        lines[f"all-reduce of d = 2^{d.bit_length() - 1} floats"] = (ks, [ar] * len(ks))
        cross = next((k for k, t in zip(ks, ps, strict=True) if t >= ar), float("nan"))
        res.metrics[f"crossover_keys_d{d}"] = cross
        # bytes: PS sends and receives 24 B per key (push keys+values, pull keys+values),
        # a ring all-reduce 2 x 2(W-1)/W x 4 B per float with W = 2
        res.metrics[f"bytes_crossover_fraction_d{d}"] = (2 * 4 * d / 24) / d
    res.series["crossover"] = {"keys": ks, "ps_s": ps}
    res.plots.append(plots.line_chart(
        lines, ctx.out_dir / "crossover.png", "keys a step touches (k)",
        "seconds per step (communication only)", "parameter server vs all-reduce, 2 workers",
        logx=True, logy=True))


# ---- 2. sparse LR vs all-reduce -----------------------------------------------------
def sparse_lr_case(ctx: Context) -> Result:
    args = {"name": "sparse_lr", "features": 1 << 22, "examples": ctx.pick(16384, 8192),
            "nnz": 24, "batch": 256, "lam": 5e-3, "lr": 0.1}
    steps, world = ctx.pick(40, 16), 2
    ps_t, ar_t, ps_b, ar_b, touched, cpu = [], [], [], [], [], []
    for i in range(ctx.pick(3, 1)):
        for side in (("ps", "gloo") if i % 2 == 0 else ("gloo", "ps")):  # AB, BA, AB
            if side == "gloo":
                g = gloo("gloo_lr", world, args, steps)
                ar_t.append(float(np.median(g["step_s"][2:])))
                ar_b.append(2 * g["bytes_per_step"])  # sent + received per rank
                continue
            out = launch(ClusterSpec(servers=2, workers=world, steps=steps, app=args),
                         eval_every_s=None, progress=False)
            ps_t.append(float(np.median(list(out["step_s"].values()))))
            cpu.append(cpu_per_clock(out, steps))
            ps_b.append(out["worker_bytes"] / (steps * world))
            touched.append(sum(m["pull_keys"] for n, m in _server_metrics(out).items())
                           / (steps * world) / args["features"])
    res = Result(ratios={"step_time_allreduce_vs_ps": pair_dict(ar_t, ps_t),
                         "bytes_allreduce_vs_ps": pair_dict(ar_b, ps_b)})
    res.metrics.update(ps_step_s=float(np.median(ps_t)), allreduce_step_s=float(np.median(ar_t)),
                       ps_bytes_per_step=float(np.median(ps_b)),
                       allreduce_bytes_per_step=float(np.median(ar_b)),
                       keys_touched_fraction=float(np.median(touched)),
                       **{k: float(np.median([c[k] for c in cpu])) for k in cpu[0]})
    res.notes = ("2 workers, 2 servers, BSP, 2^22 keys; all-reduce bytes are those of a ring "
                 "all-reduce of the dense float32 gradient (sent + received per rank).")
    return res


def cpu_per_clock(out: dict, steps: int) -> dict[str, float]:
    """Where a step's time goes on a small machine: the CPU every node (workers and
    servers, all threads) spent per clock after the first (which loads the data), and how
    many cores that kept busy. When ``cores_busy`` is near the machine's core count, the
    step time is set by CPU (Python and gRPC work), not by waiting or the network.
    Servers count from the first request they serve, so their share of the first step
    is in (a slight overcount)."""
    cpu = sum(m.get("cpu_s", 0.0) for m in _node_metrics(out).values())
    wall = max(r["timeline"][-1][0] - r["timeline"][0][0] for r in _reports(out))
    return {"cpu_ms_per_clock": cpu / (steps - 1) * 1e3, "cores_busy": cpu / wall}


def _node_metrics(out: dict) -> dict:
    return {p.stem.removeprefix("metrics-"): json.loads(p.read_text())
            for p in Path(out["run_dir"]).glob("metrics-*.json")}


def _server_metrics(out: dict) -> dict:
    return {n: json.loads((Path(out["run_dir"]) / f"metrics-{n}.json").read_text())
            for n in out["per_node"] if n.startswith("s") and n != "scheduler"}


# ---- 3. dense MLP vs DDP ------------------------------------------------------------
def mlp_case(ctx: Context) -> Result:
    args = {"name": "mlp", "hidden": 64, "batch": 32, "lr": 0.25}
    steps, world = ctx.pick(150, 50), 2
    ps_t, ddp_t, acc, cpu = [], [], {}, []
    for i in range(ctx.pick(3, 1)):
        for side in (("ps", "ddp") if i % 2 == 0 else ("ddp", "ps")):  # AB, BA, AB
            if side == "ddp":
                g = gloo("gloo_ddp", world, args, steps)
                ddp_t.append(float(np.median(g["step_s"][2:])))
                acc["ddp"] = g["accuracy"]
                continue
            out = launch(ClusterSpec(servers=2, workers=world, steps=steps, app=args),
                         eval_every_s=1e9, progress=False)
            ps_t.append(float(np.median(list(out["step_s"].values()))))
            cpu.append(cpu_per_clock(out, steps))
            acc["ps"] = out["final"].get("accuracy", float("nan"))
    res = Result(ratios={"step_time_ps_vs_ddp": pair_dict(ps_t, ddp_t)})
    res.metrics.update(ps_step_s=float(np.median(ps_t)), ddp_step_s=float(np.median(ddp_t)),
                       ps_accuracy=acc["ps"], ddp_accuracy=acc["ddp"],
                       **{k: float(np.median([c[k] for c in cpu])) for k in cpu[0]})
    res.notes = ("Every step moves all 4,810 parameters: the PS pulls them from 2 servers and "
                 "pushes the gradient back (two RPC round trips through Python), DDP does "
                 "one all-reduce inside C++ gloo.")
    return res


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
                 "slow; rotating: one random worker per clock (the paper's transient "
                 "stragglers). A persistent straggler bounds every bounded-delay model to its "
                 "pace once the slack of tau clocks is used up.")
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
    half = max(r["seconds"] for r in _reports(free)) / 2
    faulty = launch(spec, eval_every_s=0.25, progress=False,
                    faults=[{"at": half + 0.5, "kill": "s1"}])
    sweep = fault_sweep(range(ctx.pick(5, 1)))
    res = Result()
    m = res.metrics
    m["accuracy_fault_free"] = free["final"]["accuracy"]
    m["accuracy_with_kill"] = faulty["final"]["accuracy"]
    m["accuracy_delta"] = abs(m["accuracy_with_kill"] - m["accuracy_fault_free"])
    # BSP is deterministic and exactly-once: the faulted run should end on the same model
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


def _reports(out: dict) -> list[dict]:
    return [json.loads(p.read_text()) for p in Path(out["run_dir"]).glob("report-*.json")]


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
          Target("rotating_ssp4_vs_bsp_time", "<=", 0.67, "a random worker 4x slow per clock"),
          Target("idle_ssp16_rotating", "<=", 0.10))),
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
