"""The two open-loop benchmark cases: batching goodput, and AIMD under a changing load.

Both drive Clipper with :mod:`.loadgen` (Poisson arrivals, latency from the scheduled
send time, its own process) and count *goodput*: answers within the 20 ms SLO that are
not the default output, per second (Clipper §6 reports throughput under a latency SLO
the same way). Candidates are measured in the same run and interleaved trial by trial,
so slow drift on the machine falls on all of them alike.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from common import plots
from common.bench import Context, Result
from common.timing import measure

SLO_S = 0.02


def _deploy_rf(conn: Any, app: str, rf: Any, batching: Any) -> None:
    from .deployers import deploy_sklearn_model

    conn.register_application(app, "doubles", -1, int(SLO_S * 1e6))
    deploy_sklearn_model(conn, app, 1, "doubles", rf, batching=batching)
    conn.link_model_to_app(app, app)


def _trial(conn: Any, app: str, pool: list, phases: list, seed: int,
           actions: list | None = None) -> dict[str, Any]:
    from .loadgen import LoadSpec, run_process

    spec = LoadSpec(f"http://{conn.get_query_addr()}/{app}/predict", pool, phases=phases,
                    slo_s=SLO_S, seed=seed, timeout_s=5.0, actions=actions or [])
    t0 = time.monotonic()
    s = run_process(spec)
    s["t0"], s["t1"] = t0, time.monotonic()
    return s


def sweep(conn: Any, starts: dict[str, float], pool: list, ctx: Context,
          factor: float, trial_s: float, max_steps: int = 24) -> dict[str, list[dict]]:
    """Raise each app's offered rate geometrically, trials of all apps interleaved, until
    it is past its knee (see :func:`knee_reached`). ``max_steps`` is a safety cap: a curve
    that reaches it without a knee (:func:`knee_reached` is False) gives only a lower
    bound on the app's best goodput, and the case must say so."""
    from tqdm import tqdm

    curves: dict[str, list[dict]] = {a: [] for a in starts}
    alive = list(starts)
    for a in alive:  # warm-up: connections, controller state, caches of the model
        _trial(conn, a, pool, [(min(1.0, trial_s), starts[a])], seed=1000)
    bar = tqdm(total=len(starts) * max_steps, desc="  goodput sweep", leave=False,
               disable=not ctx.progress)
    for k in range(max_steps):
        for a in alive[k % len(alive):] + alive[:k % len(alive)]:
            rate = starts[a] * factor ** k
            s = _trial(conn, a, pool, [(trial_s, rate)], seed=k)
            curves[a].append({"rate": rate, **{key: s[key] for key in (
                "goodput_qps", "within_slo", "p50_ms", "p99_ms", "rejected", "t0", "t1",
                "latencies_ms", "loadgen_cpu_us_per_query")}})
            bar.update(1)
        alive = [a for a in alive if not knee_reached(curves[a])]
        if not alive:
            break
    bar.close()
    for c in curves.values():  # keep the raw latencies of the best trial only
        best = max(c, key=lambda t: t["goodput_qps"])
        for t in c:
            if t is not best:
                t.pop("latencies_ms")
    return curves


def knee_reached(curve: list[dict]) -> bool:
    """Past the knee: goodput fell 15% under its best so far, or under half the offered
    load. Only then is the curve's best goodput a measurement, not the last rate tried."""
    best = max(t["goodput_qps"] for t in curve)
    last = curve[-1]
    return last["goodput_qps"] < 0.85 * best or last["goodput_qps"] < 0.5 * last["rate"]


def _batch_stats(conn: Any, model: str, t0: float, t1: float) -> dict[str, float]:
    from .admin import http_json

    log = http_json(f"http://{conn.cm.get_admin_addr()}/admin/get_batch_log",
                    {"model_name": model, "since": t0})
    log = [b for b in log if b["t"] <= t1] or [{"batch_size": 1, "limit": 1}]
    return {"mean_batch": float(np.mean([b["batch_size"] for b in log])),
            "median_limit": float(np.median([b["limit"] for b in log]))}


def batching_goodput_case(ctx: Context) -> Result:
    from sklearn.ensemble import RandomForestClassifier

    from .batching import BatchingConfig
    from .bench import digits, running_clipper
    from .deployers import deploy_python_closure

    X, y = digits()
    rf = RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)
    pool = X[:400].tolist()
    starts = {"rf-aimd": 150.0, "rf-quantile": 150.0, "rf-batch1": 40.0, "echo": 300.0}
    with running_clipper(cache_bytes=0) as conn:  # inputs are unique anyway: no hits
        _deploy_rf(conn, "rf-aimd", rf, BatchingConfig("aimd"))
        _deploy_rf(conn, "rf-quantile", rf, BatchingConfig("quantile"))
        _deploy_rf(conn, "rf-batch1", rf, BatchingConfig("static", size=1))
        conn.register_application("echo", "doubles", -1, int(SLO_S * 1e6))
        deploy_python_closure(conn, "echo", 1, "doubles", lambda xs: np.zeros(len(xs)))
        conn.link_model_to_app("echo", "echo")
        # a 12-step cap once stopped AIMD and echo alike while both still served all they
        # were offered: their "best" goodputs were then about the start rates' ratio
        curves = sweep(conn, starts, pool, ctx, factor=ctx.pick(1.25, 1.5),
                       trial_s=ctx.pick(2.5, 1.2), max_steps=ctx.pick(24, 12))
        best = {a: max(c, key=lambda t: t["goodput_qps"]) for a, c in curves.items()}
        chosen = _batch_stats(conn, "rf-aimd", best["rf-aimd"]["t0"], best["rf-aimd"]["t1"])
    b = max(1, int(round(chosen["median_limit"])))
    xb = X[:b]
    inproc = b / measure(lambda: rf.predict(xb), repeats=ctx.pick(15, 7)).median
    ceiling = min(inproc, best["echo"]["goodput_qps"])
    g = {a: t["goodput_qps"] for a, t in best.items()}
    metrics = {f"goodput_{a}": v for a, v in g.items()}
    metrics.update({
        "goodput_vs_unbatched": g["rf-aimd"] / g["rf-batch1"],
        "goodput_vs_ceiling": g["rf-aimd"] / ceiling,
        "quantile_goodput_vs_unbatched": g["rf-quantile"] / g["rf-batch1"],
        "quantile_goodput_vs_ceiling": g["rf-quantile"] / ceiling,
        "chosen_batch_size": b, "mean_batch_sent": chosen["mean_batch"],
        "inproc_throughput_at_chosen": inproc, "ceiling_qps": ceiling,
        "echo_goodput": g["echo"]})
    metrics.update({f"knee_reached_{a}": float(knee_reached(c)) for a, c in curves.items()})
    # what the load generator itself took from the shared cores at each best point
    for a in ("rf-aimd", "echo"):
        cpu_us = best[a]["loadgen_cpu_us_per_query"]
        metrics[f"loadgen_cpu_us_per_query_{a}"] = cpu_us
        metrics[f"loadgen_cores_{a}"] = cpu_us * 1e-6 * best[a]["rate"]
    p1 = plots.line_chart({a: ([t["rate"] for t in c], [t["goodput_qps"] for t in c])
                           for a, c in curves.items()},
                          ctx.out_dir / "batching_goodput.png", "offered load (queries/s)",
                          "goodput (answers within 20 ms SLO, /s)",
                          "goodput vs offered load (open-loop Poisson)")
    p2 = plots.latency_cdf({f"{a} @ {best[a]['rate']:.0f}/s": best[a]["latencies_ms"]
                            for a in ("rf-aimd", "rf-batch1", "echo")},
                           ctx.out_dir / "batching_latency_cdf.png", slo=SLO_S * 1e3,
                           title="latency at each configuration's best offered load")
    for c in curves.values():
        for t in c:
            t.pop("latencies_ms", None)
    return Result(metrics=metrics, series={"curves": curves}, plots=[p1, p2],
                  notes=f"Random forest (50 trees) on digits. Ceiling = min(in-process "
                        f"throughput at the AIMD limit {b} = {inproc:.0f}/s, echo goodput "
                        f"{g['echo']:.0f}/s). Loadgen, frontend and container share the "
                        f"machine's cores." + _cap_note(curves))


def _cap_note(curves: dict[str, list[dict]]) -> str:
    capped = [a for a, c in curves.items() if not knee_reached(c)]
    return (f" NOT past the knee within the sweep's cap: {', '.join(capped)}; their best "
            "goodputs are lower bounds." if capped else " Every sweep went past its knee.")


def aimd_change_case(ctx: Context) -> Result:
    from sklearn.ensemble import RandomForestClassifier

    from .admin import http_json
    from .batching import CONTROLLERS, BatchingConfig
    from .bench import digits, running_clipper

    X, y = digits()
    rf = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)
    pool = X[:400].tolist()
    phase_s = ctx.pick(3.0, 1.2)
    sizes = ctx.pick((1, 4, 16, 64), (1, 16))
    # every adaptive controller listed in batching.py (a student's new one too), then
    # the fixed sizes whose best per phase is the baseline
    adaptive = [n for n in CONTROLLERS if n != "static"]
    cands = {**{n: BatchingConfig(n) for n in adaptive},
             **{f"fixed-{s}": BatchingConfig("static", size=s, max_size=s) for s in sizes}}
    with running_clipper(cache_bytes=0) as conn:  # inputs are unique anyway: no hits
        _deploy_rf(conn, "rf", rf, BatchingConfig("aimd"))
        mgmt = f"http://{conn.cm.get_admin_addr()}/admin"
        cap = sweep(conn, {"rf": 200.0}, pool, ctx, factor=1.3, trial_s=ctx.pick(2.0, 1.0),
                    max_steps=ctx.pick(16, 10))["rf"]
        capacity = max(t["goodput_qps"] for t in cap)
        phases = [(phase_s, 0.3 * capacity), (phase_s, 0.9 * capacity),
                  (phase_s, 0.9 * capacity)]
        slow = (2 * phase_s, f"{mgmt}/container_control", {"model_name": "rf", "slowdown": 2.0})
        _trial(conn, "rf", pool, [(1.0, phases[0][1])], seed=1)  # warm-up, not counted
        trials: dict[str, list[dict[str, Any]]] = {n: [] for n in cands}
        for rnd in range(ctx.pick(2, 1)):  # round 2 runs the candidates in reverse order
            for name in list(cands)[::-1 if rnd % 2 else 1]:
                conn.set_batching("rf", cands[name])
                r = _trial(conn, "rf", pool, phases, seed=0, actions=[slow])
                http_json(f"{mgmt}/container_control", {"model_name": "rf", "slowdown": 1.0})
                r["start_at"] = r["start_monotonic"]
                r["log"] = http_json(f"{mgmt}/get_batch_log",
                                     {"model_name": "rf", "since": r["start_at"]})
                trials[name].append(r)
    runs = {n: {**t[0], "phases": _merge_phases(t)} for n, t in trials.items()}
    metrics: dict[str, float] = {"capacity_qps": capacity,
                                 "capacity_knee_reached": float(knee_reached(cap))}
    within, vs_best = [], []
    for k in range(3):
        fixed = {n: runs[n]["phases"][k]["goodput_qps"] for n in runs if n.startswith("fixed")}
        best = max(fixed, key=fixed.get)
        for n in adaptive:
            ph = runs[n]["phases"][k]
            metrics[f"{n}_phase{k + 1}_within_slo"] = ph["within_slo"]
            metrics[f"{n}_phase{k + 1}_vs_best_fixed"] = ph["goodput_qps"] / max(fixed[best],
                                                                                 1e-9)
        metrics[f"best_fixed_phase{k + 1}"] = float(best.split("-")[1])
        # what the best fixed size kept within the SLO: when it is under 0.99 too, the
        # phase was beyond what any batch size could serve on this machine
        metrics[f"best_fixed_phase{k + 1}_within_slo"] = runs[best]["phases"][k]["within_slo"]
        within.append(metrics[f"aimd_phase{k + 1}_within_slo"])
        vs_best.append(metrics[f"aimd_phase{k + 1}_vs_best_fixed"])
    metrics["min_phase_within_slo"] = min(within)
    metrics["min_phase_goodput_vs_best_fixed"] = min(vs_best)
    series = {n: {"phases": r["phases"], "batches": [
        (round(b["t"] - r["start_at"], 4), b["batch_size"], b["limit"])
        for b in r["log"][::max(1, len(r["log"]) // 1500)]]} for n, r in runs.items()}
    curves = {}
    for n in adaptive:
        t = np.array([b[0] for b in series[n]["batches"]])
        lim = np.array([b[2] for b in series[n]["batches"]])
        curves[f"{n} limit"] = (t.tolist(), lim.tolist())
    p1 = plots.line_chart(curves, ctx.out_dir / "aimd_batch_size.png",
                          "seconds (phases: 30% load | 90% load | 90% load, model 2x slower)",
                          "batch-size limit", "adaptive batch size as the load and model change")
    p2 = plots.latency_cdf({f"aimd phase {k + 1}": [x for x, p in zip(
        runs["aimd"]["latencies_ms"], _phase_of(runs["aimd"], phase_s), strict=True) if p == k]
        for k in range(3)}, ctx.out_dir / "aimd_latency_cdf.png", slo=SLO_S * 1e3,
        title="AIMD: latency per phase")
    return Result(metrics=metrics, series=series, plots=[p1, p2],
                  notes=f"Random forest (20 trees). Capacity {capacity:.0f}/s = best goodput "
                        f"of an AIMD sweep in this run; phases of {phase_s:g} s; the 2x "
                        f"slow-down sleeps the container after each batch for as long as the "
                        f"batch took. Fixed sizes {sizes} run the same phases (same Poisson "
                        f"arrivals), {ctx.pick(2, 1)} round(s), the second in reverse order; "
                        f"per phase: within-SLO share over all rounds, mean goodput, max p99."
                        + _cap_note({"capacity sweep": cap}))


def _merge_phases(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per phase over the rounds: within-SLO share over all queries, mean goodput."""
    out = []
    for k in range(len(trials[0]["phases"])):
        ph = [t["phases"][k] for t in trials]
        sent = sum(p["sent"] for p in ph)
        out.append({**ph[0], "sent": sent, "rounds": len(ph),
                    "within_slo": sum(p["within_slo"] * p["sent"] for p in ph) / max(sent, 1),
                    "goodput_qps": float(np.mean([p["goodput_qps"] for p in ph])),
                    "p99_ms": float(np.max([p["p99_ms"] for p in ph])),
                    "default": sum(p["default"] for p in ph)})
    return out


def _phase_of(run: dict[str, Any], phase_s: float) -> list[int]:
    return [min(2, int(t // phase_s)) for t in run["scheduled_s"]]
