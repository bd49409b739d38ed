"""``casebook bench common``: the measuring layer checks itself on this machine.

Four cases, each a worked example of one idea from "Measuring ML systems" (docs):

* ``roofline``: numpy kernels of known cost placed under this CPU's measured roofline;
* ``interleaved``: the A/B runner recovers a known 2x cost ratio;
* ``latency-cdf``: tail percentiles of a tiny inference, and its CDF;
* ``pareto``: accuracy vs latency vs $ per 1M inferences for scikit-learn models on
  digits, and which of them are worth choosing (the Pareto front).
"""

from __future__ import annotations

import time

import numpy as np

from . import cost, plots
from .bench import Case, Context, Result, Target
from .devices import cpu_spec
from .money import PRICES, pareto_front, usd_per_million_inferences
from .stats import summarize
from .timing import interleaved, measure


def roofline_case(ctx: Context) -> Result:
    rng = np.random.default_rng(0)
    points, metrics, timed = [], {}, []
    reps = ctx.pick(9, 5)
    for n in ctx.pick((64, 256, 1024), (64, 512)):
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty((n, n), np.float32)
        t = measure(lambda: np.matmul(a, b, out=c), repeats=reps).median
        timed.append((n, cost.matmul_cost(n, n, n), t))
    # the peak, checked against what we just measured (a faster matmul proves it low)
    dev = cpu_spec(observed_flops=max(op.flops / t for _, op, t in timed))
    for n, op, t in timed:
        points.append({"label": f"matmul {n}", "intensity": op.intensity,
                       "flops": op.flops / t})
        metrics[f"matmul_{n}_efficiency"] = cost.efficiency(op, dev, t)
    numel = ctx.pick(1 << 25, 1 << 24)  # far beyond the L3 cache, so DRAM binds
    x, y, z = (rng.standard_normal(numel, dtype=np.float32) for _ in range(3))
    for name, fn, op in [
        ("add", lambda: np.add(x, y, out=z), cost.elementwise_cost(numel, 2)),
        ("exp", lambda: np.exp(x, out=z), cost.elementwise_cost(numel, 1)),
    ]:
        t = measure(fn, repeats=reps).median
        points.append({"label": name, "intensity": op.intensity, "flops": op.flops / t})
        metrics[f"{name}_efficiency"] = cost.efficiency(op, dev, t)
        metrics[f"{name}_bandwidth_gbs"] = op.bytes / t / 1e9
    metrics["peak_gflops"] = dev.peak("fp32") / 1e9
    metrics["bandwidth_gbs"] = dev.mem_bandwidth / 1e9
    path = plots.roofline_chart(dev, points, ctx.out_dir / "roofline.png",
                                title=f"{dev.name}: measured roofline")
    metrics["largest_matmul_efficiency"] = metrics[f"matmul_{n}_efficiency"]
    return Result(metrics=metrics, series={"points": points}, plots=[path])


def _loop(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


def interleaved_case(ctx: Context) -> Result:
    n = 20_000
    comp = interleaved(lambda: _loop(2 * n), lambda: _loop(n), repeats=ctx.pick(21, 11))
    return Result(ratios={"ratio_2n_vs_n": comp.to_dict()},
                  notes="A runs a Python loop of 2n iterations, B of n: the truth is 2.0")


def _digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X.astype(np.float32), y, test_size=0.25, random_state=0)


def latency_case(ctx: Context) -> Result:
    from sklearn.linear_model import LogisticRegression

    Xtr, Xte, ytr, _ = _digits_split()
    model = LogisticRegression(max_iter=2000).fit(Xtr, ytr)
    one = Xte[:1]
    for _ in range(50):
        model.predict(one)
    lat = []
    for i in range(ctx.pick(3000, 1000)):
        t0 = time.perf_counter()
        model.predict(Xte[i % len(Xte)][None])
        lat.append((time.perf_counter() - t0) * 1e3)
    s = summarize(lat)
    path = plots.latency_cdf({"LogisticRegression.predict, batch 1": lat},
                             ctx.out_dir / "latency_cdf.png", unit="ms",
                             title="single-query latency on this CPU")
    return Result(metrics={"p50_ms": s.p50, "p90_ms": s.p90, "p99_ms": s.p99,
                           "p999_ms": s.p999, "tail_ratio_p99_p50": s.p99 / s.p50},
                  plots=[path])


def pareto_case(ctx: Context) -> Result:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    Xtr, Xte, ytr, yte = _digits_split()
    models = {
        "logreg": LogisticRegression(max_iter=2000),
        "knn-3": KNeighborsClassifier(3),
        "rf-10": RandomForestClassifier(10, random_state=0, n_jobs=1),
        "rf-100": RandomForestClassifier(100, random_state=0, n_jobs=1),
        "svc-rbf": SVC(gamma=0.001),
    }
    price = PRICES["aws-c7i.large"]
    rows = []
    for name, m in models.items():
        m.fit(Xtr, ytr)
        acc = float((m.predict(Xte) == yte).mean())
        lat = measure(lambda m=m: m.predict(Xte[:1]), repeats=ctx.pick(9, 5)).median
        batch = Xte[:256]
        tput = 256 / measure(lambda m=m: m.predict(batch), repeats=ctx.pick(5, 3)).median
        rows.append({"name": name, "accuracy": acc, "latency_ms": lat * 1e3,
                     "usd_per_1m": usd_per_million_inferences(tput, price.usd_per_hour)})
    front = pareto_front(rows, minimize=["latency_ms"], maximize=["accuracy"])
    path = plots.pareto_chart(rows, front, "latency_ms", "accuracy",
                              ctx.out_dir / "pareto.png",
                              title="digits: accuracy vs batch-1 latency (this CPU)")
    metrics = {f"{r['name']}_accuracy": r["accuracy"] for r in rows}
    metrics.update({f"{r['name']}_usd_per_1m": r["usd_per_1m"] for r in rows})
    metrics["front_size"] = float(len(front))
    metrics["best_accuracy_on_front"] = max(r["accuracy"] for r in front)
    return Result(metrics=metrics, series={"rows": rows, "front": [r["name"] for r in front]},
                  plots=[path], notes=f"$ at {price.name} ({price.date}): "
                                      f"${price.usd_per_hour}/h")



def gpu_roofline_case(ctx: Context) -> Result:
    """The GPU's datasheet ceilings against what cuBLAS and a device copy reach."""
    import torch

    from .devices import gpu_spec_for
    from .timing import measure_cuda

    name = torch.cuda.get_device_name()
    dev = gpu_spec_for(name)
    if dev is None:
        raise RuntimeError(f"no datasheet entry for {name!r}; add one to common.devices")
    metrics, points = {}, []
    for n in ctx.pick((2048, 4096, 8192), (4096, 8192)):
        for dtype, tdt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            a = torch.randn(n, n, device="cuda", dtype=tdt)
            b = torch.randn(n, n, device="cuda", dtype=tdt)
            t = measure_cuda(lambda: a @ b).median
            op = cost.matmul_cost(n, n, n, dtype)
            metrics[f"matmul_{dtype}_{n}_tflops"] = op.flops / t / 1e12
            metrics[f"matmul_{dtype}_{n}_of_peak"] = op.flops / t / dev.peak(dtype)
            points.append({"label": f"{dtype} {n}", "intensity": op.intensity,
                           "flops": op.flops / t})
    numel = 1 << 28  # 1 GiB of fp32: far beyond L2
    x = torch.randn(numel, device="cuda")
    y = torch.empty_like(x)
    t = measure_cuda(lambda: y.copy_(x)).median
    metrics["copy_tbs"] = 2 * x.nbytes / t / 1e12
    metrics["copy_of_datasheet"] = 2 * x.nbytes / t / dev.mem_bandwidth
    path = plots.roofline_chart(dev, points, ctx.out_dir / "gpu_roofline.png", dtype="bf16",
                                title=f"{name}: cuBLAS against the datasheet roofline")
    metrics["largest_bf16_of_peak"] = metrics[f"matmul_bf16_{n}_of_peak"]
    return Result(metrics=metrics, plots=[path], notes=f"{name}; datasheet {dev.source}")


CASES = [
    Case("roofline", "numpy kernels of known cost against this CPU's measured roofline",
         ("the roofline lower bound",), roofline_case,
         (Target("largest_matmul_efficiency", ">=", 0.5, "a large BLAS matmul reaches half "
                 "the probe's peak"),
          Target("add_efficiency", ">=", 0.3, "a streaming add reaches 30% of copy bandwidth"))),
    Case("interleaved", "the A/B runner on two functions whose cost ratio is known (2.0)",
         ("B = the same loop with half the iterations",), interleaved_case,
         (Target("ratio_2n_vs_n", ">=", 1.8), Target("ratio_2n_vs_n", "<=", 2.2))),
    Case("latency-cdf", "tail percentiles of a batch-1 scikit-learn predict",
         ("its own median",), latency_case,
         (Target("tail_ratio_p99_p50", "<=", 3.0, "a quiet machine: p99 within 3x of p50"),)),
    Case("pareto", "accuracy / latency / $ per 1M inferences of five models on digits",
         ("each other",), pareto_case,
         (Target("front_size", ">=", 2, "a real trade-off: more than one model is worth "
                 "choosing"), Target("best_accuracy_on_front", ">=", 0.97))),
    Case("gpu-roofline", "cuBLAS matmul and a device copy against the datasheet ceilings",
         ("the datasheet peak",), gpu_roofline_case,
         (Target("largest_bf16_of_peak", ">=", 0.6, "cuBLAS reaches 60% of dense bf16 peak"),
          Target("copy_of_datasheet", ">=", 0.7, "a copy reaches 70% of HBM bandwidth")),
         device="cuda"),
]
