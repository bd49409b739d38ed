"""``casebook tour`` / ``casebook clipper demo``: Clipper's two big effects in ~20 s.

1. Deploy one random forest twice, unbatched (static batch size 1) and with AIMD
   batching, and drive each with the same closed-loop load: batching multiplies the
   throughput a container sustains (§4.3).
2. Send the same queries twice to a model: the second pass is answered by the prediction
   cache, never reaches the container (its call count does not move), and is faster
   (§4.2).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def demo(quick: bool = True) -> dict[str, Any]:
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    from .admin import ClipperConnection
    from .batching import BatchingConfig
    from .deployers import deploy_sklearn_model
    from .loadgen import LoadSpec, run_process

    X, y = load_digits(return_X_y=True)
    rf = RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)
    from .manager import LocalContainerManager

    conn = ClipperConnection(LocalContainerManager())
    conn.start_clipper(0, 0, 0)
    try:
        for app, batching in (("rf-unbatched", BatchingConfig("static", size=1)),
                              ("rf-aimd", BatchingConfig("aimd"))):
            conn.register_application(app, "doubles", -1, 1_000_000)
            deploy_sklearn_model(conn, app, 1, "doubles", rf, batching=batching)
            conn.link_model_to_app(app, app)
        print(f"  Clipper at {conn.get_query_addr()}; two copies of a 50-tree random forest "
              f"deployed, one unbatched, one with AIMD batching")
        tput = {}
        for app in ("rf-unbatched", "rf-aimd"):
            spec = LoadSpec(f"http://{conn.get_query_addr()}/{app}/predict", X[:300].tolist(),
                            concurrency=24, duration_s=1.5 if quick else 4.0, slo_s=1.0)
            s = run_process(spec)
            tput[app] = s["throughput_qps"]
            print(f"  {app:13s} {s['throughput_qps']:7.0f} queries/s  p50 {s['p50_ms']:.1f} ms"
                  f"  p99 {s['p99_ms']:.1f} ms  (24 closed-loop clients)")
        gain = tput["rf-aimd"] / max(tput["rf-unbatched"], 1e-9)
        batches = [r for r in conn.get_all_model_replicas() if r["model"] == "rf-aimd:1"]
        print(f"  batching: {gain:.1f}x the unbatched throughput; AIMD settled at a batch "
              f"limit of {batches[0]['batch_size']:.0f}")
        import time

        xs = X[1000:1040]
        calls0 = _calls(conn, "rf-aimd:1")
        lat = {}
        for p in ("miss", "hit"):
            t = []
            for x in xs:
                t0 = time.perf_counter()
                conn.predict("rf-aimd", x.tolist())
                t.append(time.perf_counter() - t0)
            lat[p] = float(np.median(t)) * 1e3
            lat[f"{p}_calls"] = _calls(conn, "rf-aimd:1") - calls0
        print(f"  cache: first pass p50 {lat['miss']:.2f} ms ({lat['miss_calls']} container "
              f"calls), repeat pass p50 {lat['hit']:.2f} ms "
              f"({lat['hit_calls'] - lat['miss_calls']} more calls)")
    finally:
        conn.stop_all()
    return {"result": f"batching {gain:.1f}x throughput; cache hit p50 {lat['hit']:.2f} ms vs "
                      f"miss {lat['miss']:.2f} ms",
            "throughput_qps": tput, "cache_ms": lat}


def _calls(conn: Any, model: str) -> int:
    return sum(r["health"]["calls"] for r in conn.get_all_model_replicas(verbose=True)
               if r["model"] == model)


def clipper_step(quick: bool = True) -> dict[str, Any]:
    """The tour step (common.tour.STEPS)."""
    return demo(quick)
