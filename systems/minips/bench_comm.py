"""The communication cases of ``casebook bench minips``: the parameter server against
plain gRPC and against all-reduce (issue 5's first three rows).

* ``push_pull_throughput``: 1M-key pushes and pulls with 1, 2, 4 servers against one raw
  gRPC unary call of the same bytes, and the PS-vs-all-reduce crossover in keys a step
  touches;
* ``sparse_lr_vs_allreduce``: sparse L1-LR on 2^22 keys, the PS (pull and push only the
  touched keys) against a gloo all-reduce of the dense gradient;
* ``mlp_vs_ddp``: the dense digits MLP against torch DDP, where all-reduce should win.

Whole jobs run in rounds, ours and the baseline in AB, BA, AB order, paired round by
round (:func:`pair_dict`). Split out of :mod:`.bench`, which holds the other cases and the
case table.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common import plots, rpc
from common.bench import Context, Result
from common.procs import ProcessGroup
from common.timing import interleaved, paired_ratios

from .baselines import RAW_SERVICE, free_port
from .cluster import Cluster, ClusterSpec
from .launcher import launch


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
def _cluster(servers: int, n: int) -> Cluster:
    """A server group with no workers, for a client in the benchmark's own process."""
    return Cluster(ClusterSpec(servers=servers, app={"name": "count"}, key_max=n, vnodes=16,
                               updater={"name": "sgd", "lr": 0.0}))


def throughput_case(ctx: Context) -> Result:
    """Each server count is measured with only its own cluster running (on two cores
    the idle processes of the others, with their heartbeats and gRPC pollers, added
    noise to a single-stream measurement); the 1 -> 2 servers ratio then runs the two
    clusters side by side, interleaved."""
    n = 1 << 22  # the key space; pushes use its first 2^14 .. 2^20 keys
    sizes = ctx.pick([1 << 14, 1 << 17, 1 << 20], [1 << 20])
    reps = ctx.pick(9, 4)
    res = Result()
    series: dict[str, tuple[list, list]] = {}
    with ProcessGroup() as g:
        raw = g.spawn("raw", "systems.minips.baselines", ["raw"])
        ch = rpc.channel(raw.info["addr"])
        call = rpc.method(ch, RAW_SERVICE, "Call")
        try:
            for s in (1, 2, 4):
                with _cluster(s, n) as cl:
                    kv = cl.start(workers=False).client(f"bench{s}")
                    _push_pull(kv, s, sizes, reps, call, res, series)
            big = sizes[-1]
            keys = np.arange(big, dtype=np.uint64)
            vals = np.ones((big, 1), np.float32)
            with _cluster(1, n) as c1, _cluster(2, n) as c2:
                kv1 = c1.start(workers=False).client("bench1")
                kv2 = c2.start(workers=False).client("bench2")
                scale = interleaved(lambda: kv2.wait(kv2.push(keys, vals, copy=False)),
                                    lambda: kv1.wait(kv1.push(keys, vals, copy=False)),
                                    repeats=reps,
                                    warmup=1, number=1)
                res.ratios["push_time_2srv_vs_1srv"] = scale.to_dict()
                c1.close()  # the crossover times the 2-server cluster alone
                crossover(ctx, kv2, n, res)
        finally:
            ch.close()
    # one server: the raw baseline is one unary call to one process (more servers are in
    # the speed-up target and the per-count metrics, not picked after the fact)
    res.metrics["push_bytes_per_s_vs_raw"] = 1 / res.ratios["push_time_vs_raw_1srv"]["ratio"]
    res.metrics["pull_bytes_per_s_vs_raw"] = 1 / res.ratios["pull_time_vs_raw_1srv"]["ratio"]
    res.metrics["speedup_1_to_2_servers"] = 1 / res.ratios["push_time_2srv_vs_1srv"]["ratio"]
    res.plots.append(plots.line_chart(series, ctx.out_dir / "throughput.png", "keys per push",
                                      "MB/s (keys + values)", "push throughput", logx=True))
    res.series["throughput"] = series
    res.notes = ("1M keys = 12.6 MB per push (uint64 keys + float32 values), pushed and "
                 "pulled with copy=False (ps-lite's ZPush/ZPull). Ours "
                 "includes "
                 "slicing, packing, applying the update and replying; the raw call only "
                 "moves bytes. Each server count ran with only its own cluster alive; the "
                 "raw call's speed is the one timed beside the 1-server cluster. More "
                 "servers add parallel processes but the 2 cores are shared with the client.")
    return res


def _push_pull(kv, s: int, sizes: list[int], reps: int, call, res: Result,
               series: dict[str, tuple[list, list]]) -> None:
    """Push and pull of each size to ``s`` servers, interleaved call by call with the raw
    gRPC call of the same bytes."""
    for m in sizes:
        keys = np.arange(m, dtype=np.uint64)
        vals = np.ones((m, 1), np.float32)
        nbytes = keys.nbytes + vals.nbytes
        raw_push = bytes(nbytes)
        raw_pull = vals.nbytes.to_bytes(8, "little") + bytes(keys.nbytes - 8)
        # copy=False (ps-lite's ZPush): these arrays are never changed. The BytePS branch's
        # benchmark (tests/test_benchmark.cc) uses ZPush; master's test_kv_app_benchmark.cc
        # uses the copying Push/Pull
        push = interleaved(lambda: kv.wait(kv.push(keys, vals, copy=False)),
                           lambda: call(raw_push), repeats=reps, warmup=2, number=1)
        pull = interleaved(lambda: kv.wait(kv.pull(keys, copy=False)),
                           lambda: call(raw_pull), repeats=reps, warmup=2, number=1)
        series.setdefault(f"push, {s} server(s)", ([], []))
        series[f"push, {s} server(s)"][0].append(m)
        series[f"push, {s} server(s)"][1].append(nbytes / push.a.median / 1e6)
        res.metrics[f"push_MBps_{s}srv_{m}"] = nbytes / push.a.median / 1e6
        res.metrics[f"pull_MBps_{s}srv_{m}"] = nbytes / pull.a.median / 1e6
        if m == sizes[-1]:
            res.ratios[f"push_time_vs_raw_{s}srv"] = push.to_dict()
            res.ratios[f"pull_time_vs_raw_{s}srv"] = pull.to_dict()
        if s == 1:
            series.setdefault("raw gRPC unary", ([], []))
            series["raw gRPC unary"][0].append(m)
            series["raw gRPC unary"][1].append(nbytes / push.b.median / 1e6)
            res.metrics[f"raw_MBps_{m}"] = nbytes / push.b.median / 1e6


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
    wall = max(r["timeline"][-1][0] - r["timeline"][0][0] for r in worker_reports(out))
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


def worker_reports(out: dict) -> list[dict]:
    return [json.loads(p.read_text()) for p in Path(out["run_dir"]).glob("report-*.json")]
