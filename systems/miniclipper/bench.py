"""``casebook bench miniclipper``: the issue's five cases, each against baselines measured
in the same run.

* ``batching-goodput`` and ``aimd-under-change`` (open-loop load; :mod:`.bench_load`);
* ``overhead``: what serving adds to a model call, at batch 1 and amortised at 64,
  against the in-process model and a bare gRPC echo on the same box;
* ``cache``: throughput at hit rates 0, 0.5, 0.9 (and 1, where the frontend binds), and
  hit vs miss latency;
* ``gpu-container`` (``--device cuda``): a torch CNN container on CUDA against the same
  CNN in-process at the same batch size.

Every case starts its own Clipper (ports chosen by the OS) and stops it, containers
included. On the 2-core development VM the load generator, the frontend and the
containers share two cores (and other work on the machine); each case's notes say what
that costs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from common import plots
from common.bench import Case, Context, Result, Target
from common.procs import ProcessGroup, announce_ready
from common.stats import summarize

from .bench_load import aimd_change_case, batching_goodput_case


@contextlib.contextmanager
def running_clipper(cache_bytes: int = 32 << 20) -> Iterator[Any]:
    """A Clipper for one case: started on OS-chosen ports, always stopped."""
    from .admin import ClipperConnection
    from .manager import LocalContainerManager

    conn = ClipperConnection(LocalContainerManager())
    conn.start_clipper(0, 0, 0, cache_size=cache_bytes)
    try:
        yield conn
    finally:
        conn.stop_all()


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


def with_load(fn: Callable[[Context], Result]) -> Callable[[Context], Result]:
    """Record the machine's 1-minute load average around a case: with two cores, a load
    above ~1 from other work means our processes waited for a CPU, and the tails show
    it."""
    def run(ctx: Context) -> Result:
        before = os.getloadavg()[0]
        res = fn(ctx)
        res.metrics["loadavg_1min_before"] = before
        res.metrics["loadavg_1min_after"] = os.getloadavg()[0]
        return res
    run.__doc__ = fn.__doc__
    return run


def ratio_entry(samples: list[float]) -> dict[str, float]:
    """A per-round ratio in the shape common.bench expects (median, IQR, pairs)."""
    s = summarize(samples)
    return {"ratio": s.median, "q1": s.q1, "q3": s.q3, "pairs": s.n}


def _p50(fn: Any, n: int) -> float:
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def overhead_case(ctx: Context) -> Result:
    """Served p50 minus in-process p50, against a bare gRPC echo's p50 (batch 1); and the
    same difference per query for a 64-query request (amortised)."""
    from sklearn.linear_model import LogisticRegression

    from common import rpc
    from common.wire import pack

    from .batching import BatchingConfig
    from .deployers import deploy_sklearn_model
    from .frontend import QUERY_SERVICE

    X, y = digits()
    lr = LogisticRegression(max_iter=1000).fit(X, y)
    rounds, n = ctx.pick(9, 4), ctx.pick(300, 100)
    rng = np.random.default_rng(0)
    with running_clipper(cache_bytes=0) as conn, ProcessGroup() as group:
        conn.register_application("lr", "doubles", -1, 1_000_000)
        deploy_sklearn_model(conn, "lr", 1, "doubles", lr,
                             batching=BatchingConfig("static", size=64, max_size=64))
        conn.link_model_to_app("lr", "lr")
        echo = group.spawn("echo", "systems.miniclipper.bench", ["echo"])
        served_ch = rpc.channel(conn.cm.get_grpc_addr())
        echo_ch = rpc.channel(f"127.0.0.1:{echo.info['port']}")
        served = rpc.method(served_ch, QUERY_SERVICE, "Predict")
        bare = rpc.method(echo_ch, "Echo", "Echo")
        x1 = X[:1] + 0.0

        def fresh(k: int) -> np.ndarray:  # unique inputs: the cache is off, but be sure
            return X[rng.integers(0, len(X), k)] + rng.uniform(0, 1e-6, (k, 64))

        calls = {
            "inproc": lambda: lr.predict(x1),
            "echo": lambda: bare(pack({"app": "lr"}, [fresh(1)]), timeout=10),
            "served": lambda: served(pack({"app": "lr"}, [fresh(1)]), timeout=10),
        }
        calls64 = {
            "inproc64": lambda: lr.predict(fresh(64)),
            "served64": lambda: served(pack({"app": "lr"}, [fresh(64)]), timeout=10),
        }
        for fn in (*calls.values(), *calls64.values()):
            for _ in range(20):
                fn()
        per: dict[str, list[float]] = {k: [] for k in (*calls, *calls64)}
        for r in range(rounds):
            order = list(calls)[r % 3:] + list(calls)[:r % 3]
            for k in order:
                per[k].append(_p50(calls[k], n))
            for k in calls64:
                per[k].append(_p50(calls64[k], max(20, n // 4)))
        served_ch.close()
        echo_ch.close()
    over = [(s - i) / e for s, i, e in zip(per["served"], per["inproc"], per["echo"],
                                           strict=True)]
    amort = [(s - i) / 64 * 1e6 for s, i in zip(per["served64"], per["inproc64"], strict=True)]
    metrics = {f"{k}_p50_us": float(np.median(v)) * 1e6 for k, v in per.items()}
    metrics["overhead_us_batch1"] = float(np.median(
        [s - i for s, i in zip(per["served"], per["inproc"], strict=True)])) * 1e6
    metrics["amortised_us_per_query_at_64"] = float(np.median(amort))
    return Result(metrics=metrics, ratios={"overhead_vs_echo_p50": ratio_entry(over)},
                  series={k: [x * 1e6 for x in v] for k, v in per.items()},
                  notes="served = gRPC query API -> frontend (asyncio) -> grpc.aio -> "
                        "container -> back: two loopback RPC hops plus the frontend's "
                        "queue, cache and event-loop work, against one echo hop.")


def cache_case(ctx: Context) -> Result:
    """Closed-loop throughput of an unbatched random forest at cache hit rates 0, 0.5,
    0.9 and 1.0 (rounds interleaved), and hit vs miss latency from one client."""
    from sklearn.ensemble import RandomForestClassifier

    from .batching import BatchingConfig
    from .deployers import deploy_sklearn_model
    from .loadgen import LoadSpec, run_process

    X, y = digits()
    rf = RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)
    rates, rounds, dur = (0.0, 0.5, 0.9, 1.0), ctx.pick(3, 2), ctx.pick(3.0, 1.0)
    pool = X[:400].tolist()
    with running_clipper() as conn:
        conn.register_application("rf", "doubles", -1, 2_000_000)
        deploy_sklearn_model(conn, "rf", 1, "doubles", rf,
                             batching=BatchingConfig("static", size=1))
        conn.link_model_to_app("rf", "rf")
        url = f"http://{conn.get_query_addr()}/rf/predict"
        for x in pool[:16]:  # the hot set, in the cache before anything is timed
            conn.predict("rf", x)
        tput: dict[float, list[float]] = {h: [] for h in rates}
        for r in range(rounds):
            for h in rates[r % 4:] + rates[:r % 4]:
                s = run_process(LoadSpec(url, pool, concurrency=32, duration_s=dur,
                                         slo_s=2.0, hot_fraction=h, seed=r))
                tput[h].append(s["throughput_qps"])
        serial = run_process(LoadSpec(url, pool, concurrency=1, duration_s=dur, slo_s=2.0,
                                      hot_fraction=0.5, seed=99))
        hit_ratio = next(line.split()[1] for line in conn.get_metrics().splitlines()
                         if line.startswith("clipper_cache_hit_ratio "))
    med = {h: float(np.median(v)) for h, v in tput.items()}
    metrics = {f"throughput_qps_h{int(h * 100)}": v for h, v in med.items()}
    ratios = {}
    for h in (0.5, 0.9):
        bound = min(1 / (1 - h), med[1.0] / med[0.0])
        gains = [a / b / bound for a, b in zip(tput[h], tput[0.0], strict=True)]
        ratios[f"gain_vs_ideal_h{int(h * 100)}"] = ratio_entry(gains)
        metrics[f"gain_h{int(h * 100)}"] = med[h] / med[0.0]
        metrics[f"ideal_gain_h{int(h * 100)}"] = bound
    metrics["hit_p50_ms"], metrics["miss_p50_ms"] = serial["hot_p50_ms"], serial["cold_p50_ms"]
    metrics["hit_vs_miss_p50"] = serial["hot_p50_ms"] / serial["cold_p50_ms"]
    metrics["frontend_bound_gain"] = med[1.0] / med[0.0]
    metrics["final_hit_ratio"] = float(hit_ratio)
    metrics.update(eviction_replay())
    png = plots.line_chart({"measured": (list(med), list(med.values())),
                            "ideal 1/(1-h), capped by h=1": (
                                list(med), [med[0.0] * min(1 / max(1 - h, 1e-9),
                                                           med[1.0] / med[0.0])
                                            for h in med])},
                           ctx.out_dir / "cache_throughput.png", "cache hit rate h",
                           "queries / s", "prediction cache: throughput vs hit rate")
    return Result(metrics=metrics, ratios=ratios, series={"throughput": tput},
                  plots=[png],
                  notes="Ideal gain is 1/(1-h) until the frontend binds: the bound used is "
                        "min(1/(1-h), throughput at h=1 / throughput at h=0), both measured "
                        "here. Random forest, 50 trees, static batch size 1, 32 closed-loop "
                        "clients. zipf_*: the cache's eviction on a Zipf(1) replay of 60k "
                        "lookups over 10k keys, room for 500, against an exact LRU.")


def eviction_replay(room: int = 500, keys: int = 10_000, lookups: int = 60_000,
                    zipf_a: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Hit ratio of :class:`PredictionCache`, and of an exact LRU of the same size, on one
    Zipf-distributed key stream over 20x the keys the budget holds, replayed in-process.
    The end-to-end runs above never fill the 32 MiB cache, so they cannot tell one
    eviction policy from another; this replay can (exercise 3). Every output costs the
    same bytes, so the byte budget holds exactly ``room`` entries."""
    import asyncio
    from collections import OrderedDict

    from .cache import ENTRY_BYTES, PredictionCache

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, keys + 1) ** zipf_a
    stream = [b"%05d" % k for k in rng.choice(keys, lookups, p=p / p.sum())]
    out_bytes = 8
    cache = PredictionCache(max_bytes=room * (ENTRY_BYTES + 5 + out_bytes))

    async def replay() -> None:  # the cache's futures need a running event loop
        for key in stream:
            if cache.fetch(key)[0] == "miss":
                cache.put(key, 0, out_bytes)

    asyncio.run(replay())
    lru: OrderedDict[bytes, None] = OrderedDict()
    lru_hits = 0
    for key in stream:
        if key in lru:
            lru_hits += 1
            lru.move_to_end(key)
        else:
            lru[key] = None
            if len(lru) > room:
                lru.popitem(last=False)
    return {"zipf_hit_ratio": cache.hit_ratio(), "zipf_hit_ratio_lru": lru_hits / lookups,
            "zipf_evictions": float(cache.stats.evictions)}


def gpu_case(ctx: Context) -> Result:
    """A torch CNN in a CUDA container vs the same CNN in-process on CUDA, same batch."""
    return container_vs_inproc(ctx, "cuda")


def _closed_loop(call: Callable[[int, int], Any], clients: int, seconds: float) -> float:
    """Calls per second from ``clients`` threads, each calling ``call(client, i)`` back
    to back for ``seconds`` (a closed loop: a client sends its next request when the
    last one is answered)."""
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def client(c: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            call(c, i)
            i += 1
        counts[c] = i

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def container_vs_inproc(ctx: Context, device: str, clients: int = 8, replicas: int = 4
                        ) -> Result:
    """Throughput of 64-image requests served by a torch CNN container on ``device``
    against the same CNN called back to back in-process (Clipper §6's comparison with
    TensorFlow Serving, where the model runs in-process).

    Throughput is measured as a serving system is used: ``clients`` concurrent closed-loop
    clients, so the frontend handles one request while the container computes another.
    Rounds alternate served and in-process (A B A B), one ratio per round, median. Each
    client sends its own inputs (a coalesced duplicate would cost the model nothing).
    The sequential p50 latencies are reported beside it."""
    import torch

    from common import rpc
    from common.wire import pack, unpack

    from .batching import BatchingConfig
    from .deployers import deploy_pytorch_model
    from .frontend import QUERY_SERVICE

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(128, 256, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(256, 10)).eval()
    batch, rounds, seconds = 64, ctx.pick(5, 3), ctx.pick(1.0, 0.5)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3 * 32 * 32)).astype(np.float32)
    mine = copy.deepcopy(net).to(device)

    def inproc() -> None:
        with torch.inference_mode():
            mine(torch.from_numpy(x).to(device).reshape(batch, 3, 32, 32)).argmax(1).cpu()

    with running_clipper(cache_bytes=0) as conn:
        conn.register_application("cnn", "floats", -1, 10_000_000)
        deploy_pytorch_model(conn, "cnn", 1, "floats", net, input_shape=(3, 32, 32),
                             device=device, output="argmax",
                             batching=BatchingConfig("static", size=batch, max_size=batch))
        conn.link_model_to_app("cnn", "cnn")
        ch = rpc.channel(conn.cm.get_grpc_addr())
        call = rpc.method(ch, QUERY_SERVICE, "Predict")
        # packed once: the clients' own CPU is not what is measured
        requests = [[pack({"app": "cnn"}, [x + (4 * c + j + 1) * 1e-3]) for j in range(4)]
                    for c in range(clients)]

        def served(c: int = 0, i: int = 0) -> None:
            call(requests[c][i % 4], timeout=60)

        for _ in range(10):
            served()
            inproc()
        with torch.inference_mode():
            want = mine(torch.from_numpy(x).to(device).reshape(batch, 3, 32, 32)
                        ).argmax(1).cpu().tolist()
        got = [p["output"] for p in unpack(call(pack({"app": "cnn"}, [x]),
                                                timeout=60))[0]["predictions"]]
        # argmax of the same CNN on the same device; kernels may differ between
        # processes, so near-ties may flip: count agreement instead of demanding identity
        agree = float(np.mean(np.array(got) == np.array(want)))
        ts, ti, tput_s, tput_i = [], [], [], []
        for _ in range(rounds):
            tput_s.append(_closed_loop(served, clients, seconds) * batch)
            sync()
            tput_i.append(_closed_loop(lambda c, i: inproc(), 1, seconds) * batch)
            ts.append(_p50(served, 20))
            ti.append(_p50(inproc, 20))
        # Clipper scales a model by replicating its container (section 4.4.1): a replica
        # has one batch in flight, so one replica's throughput is 1 / its round trip.
        # With more replicas their round trips overlap; reported, no target.
        conn.set_num_replicas("cnn", replicas)
        for _ in range(10):
            served()
        tput_r, tput_ri = [], []
        for _ in range(rounds):
            tput_r.append(_closed_loop(served, clients, seconds) * batch)
            sync()
            tput_ri.append(_closed_loop(lambda c, i: inproc(), 1, seconds) * batch)
        ch.close()
    return Result(metrics={"outputs_agree": agree,
                           "served_images_per_s": float(np.median(tput_s)),
                           "inproc_images_per_s": float(np.median(tput_i)),
                           "served_batch_ms_p50": float(np.median(ts)) * 1e3,
                           "inproc_batch_ms_p50": float(np.median(ti)) * 1e3,
                           "clients": float(clients),
                           f"served_images_per_s_{replicas}_replicas": float(np.median(tput_r)),
                           f"served_{replicas}_replicas_vs_inproc_throughput": float(np.median(
                               [a / b for a, b in zip(tput_r, tput_ri, strict=True)]))},
                  ratios={"served_vs_inproc_throughput": ratio_entry(
                      [a / b for a, b in zip(tput_s, tput_i, strict=True)])},
                  notes=f"64-image requests through Clipper (gRPC query API, static batch "
                        f"64, one {device} container, cache off) from {clients} closed-loop "
                        f"clients, over the same CNN called back to back in-process; inputs "
                        f"copied host-to-device in both. The *_ms_p50 metrics are one "
                        f"request at a time. The *_{replicas}_replicas metrics repeat the "
                        f"throughput rounds with {replicas} replicas of the container.")


CASES = [
    Case("batching-goodput", "random forest, 20 ms SLO, open-loop Poisson: adaptive "
         "batching vs batch size 1 and vs the ceiling",
         ("batch size 1", "in-process throughput at the chosen batch size",
          "frontend echo goodput"), with_load(batching_goodput_case),
         (Target("goodput_vs_unbatched", ">=", 5.0, "goodput >= 5x unbatched"),
          Target("goodput_vs_ceiling", ">=", 0.7, "goodput >= 0.7x the ceiling"))),
    Case("aimd-under-change", "load 30% -> 90% of capacity, then the container slows 2x",
         ("best fixed batch size per phase",), with_load(aimd_change_case),
         (Target("min_phase_within_slo", ">=", 0.99, ">= 99% within SLO in every phase"),
          Target("min_phase_goodput_vs_best_fixed", ">=", 0.9,
                 "goodput >= 0.9x the best fixed size, every phase"))),
    Case("overhead", "what serving adds at batch 1, and per query at batch 64",
         ("in-process predict", "bare gRPC echo"), with_load(overhead_case),
         (Target("overhead_vs_echo_p50", "<=", 1.3, "served - in-process <= 1.3x echo p50"),
          Target("amortised_us_per_query_at_64", "<=", 20.0, "<= 20 us/query at 64"))),
    Case("cache", "throughput at hit rates 0, 0.5, 0.9; hit vs miss latency",
         ("hit rate 0",), with_load(cache_case),
         (Target("gain_vs_ideal_h50", ">=", 0.8, "gain >= 0.8/(1-h) (h = 0.5)"),
          Target("gain_vs_ideal_h90", ">=", 0.8, "gain >= 0.8/(1-h) until the frontend binds"),
          Target("hit_vs_miss_p50", "<=", 0.5, "hit p50 <= 0.5x miss p50"))),
    Case("gpu-container", "torch CNN container on CUDA vs in-process CUDA, batch 64",
         ("in-process CUDA at the same batch size",), gpu_case,
         (Target("served_vs_inproc_throughput", ">=", 0.7, ">= 0.7x in-process"),
          Target("outputs_agree", ">=", 0.98, "the same answers", issue=False)),
         device="cuda"),
]


def _echo_server() -> None:
    """``python -m systems.miniclipper.bench echo``: the bare gRPC echo baseline."""
    from common import rpc

    server, port = rpc.serve("Echo", {"Echo": lambda req, ctx: req}, max_workers=4)
    announce_ready(port=port)
    server.wait_for_termination()


if __name__ == "__main__" and sys.argv[1:] == ["echo"]:
    _echo_server()
