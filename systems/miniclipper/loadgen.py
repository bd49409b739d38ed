"""The load generator: open-loop Poisson arrivals, latency from the *scheduled* send time.

A closed-loop client (send, wait for the answer, send the next) slows down exactly when
the server does, so it never sees the queue it would have built: the requests it did
not send are the slow ones it does not measure. Gil Tene calls this *coordinated
omission*. An open-loop generator fixes the arrival times in advance (here a Poisson
process, exponential gaps at the offered rate, as user traffic is usually modelled) and
measures each latency from when the request *should* have been sent; if the generator
itself falls behind, that lateness counts against the server too, never in its favour.

It runs in its own process (``python -m systems.miniclipper.loadgen``, or
:func:`run_process`), so its CPU is not the frontend's event loop. It reports goodput
(answers within the SLO that are not the default output, per second), p50/p99/p99.9,
rejections (429) and errors, per phase of a piecewise-constant rate schedule. The plain
percentiles are of answered queries (200); the ``*_all_ms`` ones are of every query
sent, each at the time its answer, rejection or failure came back, so that a query that
timed out stays in the tail instead of leaving it (a timeout counts at least the
client's ``timeout_s``). A closed-loop mode (``concurrency > 0``) measures peak
throughput, where omission does not matter; it sends each of its ``CLOSED_LOOP_BODIES``
bodies once at most, and ends early (the throughput is over the time it ran) rather than
cycle through them again. For cache experiments a share ``hot_fraction`` of queries
repeats a small hot set; all others are made unique (salted per run: for a float app a
few float32 ulps on the last features, :func:`unique_floats`, so that they stay unique
once a "floats" app parses them to float32; a whole-number offset for an "integers" app,
which refuses floats), so no unintended cache hit inflates a result. Within a run the
cold queries are distinct (one that repeats an earlier query is moved again); across
runs with the same seed two runs overlap only if they drew the same per-run salt, one
chance in about 2^29 / n for n queries of an integer app or a float app of four features
or more. A float app of fewer features has room for fewer salts, since no feature may
move far (2^19 / n for two features, 2^15 / n for one), and an integer app whose values
come within 2n of int32's limit is refused.
It sends numeric inputs only: a "strings" or "bytes" app is refused when the spec is made.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datatypes import NUMERIC_TYPES, same_input_type

CLOSED_LOOP_BODIES = 20_000  # made before a closed-loop run starts (~0.1 ms each)


@dataclass
class LoadSpec:
    """One load run. ``phases`` is a list of (seconds, queries/s) for open loop."""

    url: str
    inputs: list[list[float]]
    phases: list[tuple[float, float]] = field(default_factory=list)
    concurrency: int = 0          # > 0: closed loop for ``duration_s`` instead
    duration_s: float = 0.0
    slo_s: float = 0.02
    hot_fraction: float = 0.0
    hot_set: int = 16
    seed: int = 0
    timeout_s: float = 10.0
    max_connections: int = 1024
    start_at: float = 0.0         # time.monotonic() to start at (0: at once); machine-wide
    actions: list[tuple[float, str, dict]] = field(default_factory=list)  # (t, url, json)
    input_type: str = "doubles"   # the application's: how inputs are sent and varied

    def __post_init__(self) -> None:
        if self.actions and self.concurrency > 0:  # the closed loop has no schedule to
            raise ValueError("timed actions need an open-loop run (phases), not "  # keep
                             "concurrency > 0: they would be dropped without a word")
        if integer_inputs(self.input_type):  # which also refuses "strings" and "bytes"
            pool = np.asarray(self.inputs, dtype=np.float64)
            if not np.array_equal(pool, np.round(pool)):
                raise ValueError(f"input_type {self.input_type!r} needs whole-number inputs")

    @property
    def integers(self) -> bool:
        return same_input_type(self.input_type, "integers")


def integer_inputs(input_type: str) -> bool:
    """Whether an application of ``input_type`` takes whole numbers only; a ValueError
    for one whose inputs are not numbers ("strings", "bytes"): the generator has no
    way to make those unique that would mean anything to the model."""
    if input_type not in NUMERIC_TYPES:
        raise ValueError(f"the load generator sends numeric inputs; it cannot load an "
                         f"application of input_type {input_type!r} (it needs one of "
                         f"{', '.join(NUMERIC_TYPES)})")
    return same_input_type(input_type, "integers")


def poisson_arrivals(phases: list[tuple[float, float]], seed: int = 0,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Send times (seconds from the start) of a Poisson process whose rate is constant
    within each phase, and the phase index of each arrival."""
    rng = np.random.default_rng(seed)
    times, which, t0 = [], [], 0.0
    for k, (dur, rate) in enumerate(phases):
        if rate > 0:
            n = rng.poisson(rate * dur)  # given the count, arrivals are uniform order stats
            times.append(t0 + np.sort(rng.uniform(0, dur, n)))
            which.append(np.full(n, k))
        t0 += dur
    if not times:
        return np.zeros(0), np.zeros(0, int)
    return np.concatenate(times), np.concatenate(which)


def make_bodies(spec: LoadSpec, n: int, rng: np.random.Generator,
                ) -> tuple[list[bytes], np.ndarray]:
    pool = np.asarray(spec.inputs, dtype=np.int64 if spec.integers else np.float64)
    hot = rng.random(n) < spec.hot_fraction
    # unseeded: two runs with the same seed send the same arrivals, not the same inputs.
    # A run's cold inputs take the offsets from salt*n+1 on, so two runs share none
    # unless they drew the same salt (with offsets salt+i+1, salts under n apart shared
    # most of them).
    salt = int(np.random.default_rng().integers(0, _salts(pool, spec.integers, n)))
    hot_rows = pool[:min(spec.hot_set, len(pool))] if hot.any() else pool[:0]
    seen = {_body(x) for x in hot_rows}  # a cold query repeats neither these nor another
    bodies, k = [], salt * n
    for i in range(n):
        if hot[i]:
            bodies.append(_body(pool[rng.integers(len(hot_rows))]))
            continue
        base = pool[rng.integers(len(pool))]
        while True:  # rows that differ by a few steps can meet: move on until new
            k += 1
            if spec.integers:
                x = base.copy()
                x[-1] += k
            else:  # a step of 1e-9 vanished in float32 (spacing 1.2e-7 at 1.0): half of
                x = unique_floats(base, k)  # the "unique" queries were cache hits
            body = _body(x)
            if body not in seen:
                break
        seen.add(body)
        bodies.append(body)
    return bodies, hot


def _body(x: np.ndarray) -> bytes:
    return json.dumps({"input": x.tolist()}).encode()


def _salts(pool: np.ndarray, integers: bool, n: int) -> int:
    """How many per-run salts fit: the offsets a run may use, over n. Whole numbers stay
    under 2^30 and within what the pool's largest last feature leaves below int32's
    limit; a float's first feature, which takes what the other features' base-256 digits
    cannot (:func:`unique_floats`), moves by at most 2^12 ulps (0.05%), or 2^16 (0.8%)
    when it is the only one (else a run of more than 4,096 queries could not be
    distinct)."""
    if integers:
        room = min(1 << 30, (1 << 31) - 1 - max(int(pool[:, -1].max(initial=0)), 0))
        if room < 2 * (n + 1):  # some slack for the repeats moved on
            raise ValueError(f"the inputs' last feature (up to {int(pool[:, -1].max())}) "
                             f"leaves no room below int32's limit for {n} distinct queries")
    else:
        d = pool.shape[-1]
        room = 1 << (16 if d == 1 else min(8 * (d - 1) + 12, 40))
    return max(room // (2 * (n + 1)), 1)


def unique_floats(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` in float32, its last features moved by the base-256 digits of ``k`` in
    ulps (the next representable numbers): each ``k`` gives another input, in float32
    and float64 alike, and no feature moves by more than 255 ulps (3e-5 relative) while
    there are features for the digits (the first takes what is left)."""
    bits = x.astype(np.float32).view(np.int32).copy()
    j = len(bits) - 1
    while k and j > 0:
        bits[j] += k & 255
        k >>= 8
        j -= 1
    bits[0] += k
    return bits.view(np.float32)


async def _post(session: Any, url: str, body: bytes, ctx: dict | None = None
                ) -> tuple[int, bool]:
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"},
                                trace_request_ctx=ctx) as r:
            payload = await r.read()
            return r.status, b'"default": true' in payload
    except Exception:  # timeout, reset, refused: a failed query, counted as such
        return -1, False


SYN_RETRY_S = 0.9  # a connect this long waited for a SYN resent (the first after 1 s)


class ActionFailed(RuntimeError):
    """One of a load spec's timed actions was refused or did not reach its server."""


async def _run(spec: LoadSpec) -> dict[str, Any]:
    import aiohttp

    rng = np.random.default_rng(spec.seed)
    loop = asyncio.get_running_loop()
    conn = aiohttp.TCPConnector(limit=spec.max_connections)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    # when each request's headers actually left: after the event loop got to it *and*
    # a connection was free (past max_connections in flight, requests queue in the pool)
    sent = aiohttp.TraceConfig()

    async def on_sent(session: Any, ctx: Any, params: Any) -> None:
        if ctx.trace_request_ctx is not None:
            ctx.trace_request_ctx["sent"] = loop.time()
    sent.on_request_headers_sent.append(on_sent)

    # A new TCP connection waits for the *server* when its listen queue is full (a
    # stalled server: the kernel drops the SYN, resent after 1 s, 3 s): timed apart, so
    # that it is not taken for the generator's own lag
    async def on_connecting(session: Any, ctx: Any, params: Any) -> None:
        if ctx.trace_request_ctx is not None:
            ctx.trace_request_ctx["connect_from"] = loop.time()

    async def on_connected(session: Any, ctx: Any, params: Any) -> None:
        c = ctx.trace_request_ctx
        if c is not None and "connect_from" in c:
            c["connecting"] = c.get("connecting", 0.0) + loop.time() - c.pop("connect_from")
    sent.on_connection_create_start.append(on_connecting)
    sent.on_connection_create_end.append(on_connected)
    rec: dict[str, list] = {"scheduled": [], "latency": [], "status": [], "default": [],
                            "hot": [], "phase": [], "send_late": [], "connecting": []}
    async with aiohttp.ClientSession(connector=conn, timeout=timeout,
                                     trace_configs=[sent]) as session:
        if spec.concurrency > 0:
            bodies, hot = make_bodies(spec, CLOSED_LOOP_BODIES, rng)
            counter = iter(range(10 ** 9))
            cpu0 = time.process_time()
            start = loop.time()
            end = start + spec.duration_s

            async def worker() -> None:
                while loop.time() < end:
                    i = next(counter)
                    if i >= len(bodies):  # every unique body sent: cycling through them
                        return            # again would turn cold queries into cache hits
                    t = loop.time()
                    status, default = await _post(session, spec.url, bodies[i])
                    for k, v in (("scheduled", t - start), ("latency", loop.time() - t),
                                 ("status", status), ("default", default),
                                 ("hot", bool(hot[i])), ("phase", 0)):
                        rec[k].append(v)

            await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
            duration = loop.time() - start  # shorter than asked if the bodies ran out
            return {"records": rec, "duration_s": duration,
                    "cpu_s": time.process_time() - cpu0}
        times, phase = poisson_arrivals(spec.phases, spec.seed)
        bodies, hot = make_bodies(spec, len(times), rng)

        async def one(i: int, due: float) -> None:
            ctx = {"sent": loop.time()}  # (kept if it fails before sending)
            began = ctx["sent"]
            status, default = await _post(session, spec.url, bodies[i], ctx)
            if "connect_from" in ctx:  # failed while connecting: that wait was the server's
                ctx["connecting"] = ctx.get("connecting", 0.0) + loop.time() - ctx["connect_from"]
            # only a wait of the kernel's SYN-retry kind (1 s, 3 s...) is the server's: on
            # loopback a handshake completes at once even when nobody accept()s, and a
            # shorter "connecting" is this loop getting back to the request late
            connecting = ctx.get("connecting", 0.0)
            connecting = connecting if connecting >= SYN_RETRY_S else 0.0
            # the generator's own lag; the connect wait lies inside it only if the headers
            # went out after it (a query that failed unsent kept its first "sent")
            unsent = ctx["sent"] == began
            rec["send_late"].append(max(0.0, ctx["sent"] - due - (0.0 if unsent else connecting)))
            rec["connecting"].append(connecting)
            rec["scheduled"].append(due - start)
            rec["latency"].append(loop.time() - due)
            rec["status"].append(status)
            rec["default"].append(default)
            rec["hot"].append(bool(hot[i]))
            rec["phase"].append(int(phase[i]))

        async def act(t: float, url: str, doc: dict) -> str | None:
            """A timed change (slow the container down mid-run); why it failed, or None.
            A refused change must not leave a run that looks as if it had happened."""
            try:
                async with session.post(url, json=doc) as r:
                    return None if r.status < 400 else \
                        f"{url} at {t} s: {r.status} {(await r.text())[:200]}"
            except Exception as e:  # noqa: BLE001 - unreachable, timed out: said below
                return f"{url} at {t} s: {type(e).__name__}: {e}"

        tasks, acts = [], []
        cpu0 = time.process_time()  # from here on: the generator's CPU during the run
        start = max(loop.time() + 0.05, spec.start_at)  # loop.time() is time.monotonic()
        for t, url, doc in spec.actions:  # e.g. slow the container down mid-run, on time
            loop.call_at(start + t, lambda a=(t, url, doc): acts.append(
                asyncio.ensure_future(act(*a))))
        i = 0
        while i < len(times):
            now = loop.time()
            while i < len(times) and start + times[i] <= now:
                tasks.append(asyncio.ensure_future(one(i, start + times[i])))
                i += 1
            if i < len(times):
                await asyncio.sleep(max(0.0, start + times[i] - loop.time()))
        await asyncio.sleep(max(0.0, start + max([t for t, _, _ in spec.actions] or [0])
                                - loop.time()))
        await asyncio.gather(*tasks)
        failed = [why for why in await asyncio.gather(*acts) if why]
        if failed:
            raise ActionFailed("a timed action failed, so the run measured something else: "
                               + "; ".join(failed))
        return {"records": rec, "duration_s": sum(d for d, _ in spec.phases), "start": start,
                "cpu_s": time.process_time() - cpu0}


def summarize_records(rec: dict[str, list], slo_s: float, duration_s: float,
                      phases: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """Goodput, tails and outcome counts, overall and per phase."""
    lat = np.asarray(rec["latency"], np.float64)
    status = np.asarray(rec["status"])
    default = np.asarray(rec["default"], bool)
    hot = np.asarray(rec["hot"], bool)
    phase = np.asarray(rec["phase"])
    ok = status == 200

    def stats(mask: np.ndarray, dur: float, offered: float | None = None) -> dict[str, Any]:
        n = int(mask.sum())
        good = mask & ok & ~default & (lat <= slo_s)
        lm = lat[mask & ok] * 1e3
        out = {"sent": n, "ok": int((mask & ok).sum()), "default": int((mask & default).sum()),
               "rejected": int((mask & (status == 429)).sum()),
               "errors": int((mask & ~ok & (status != 429)).sum()),
               "within_slo": float(good.sum() / n) if n else 0.0,
               "goodput_qps": float(good.sum() / dur) if dur else 0.0,
               "throughput_qps": float((mask & ok).sum() / dur) if dur else 0.0}
        if offered is not None:
            out["offered_qps"] = offered
        la = lat[mask] * 1e3
        for q, name in ((50, "p50"), (99, "p99"), (99.9, "p999")):
            out[f"{name}_ms"] = float(np.percentile(lm, q)) if lm.size else float("nan")
            out[f"{name}_all_ms"] = float(np.percentile(la, q)) if la.size else float("nan")
        return out

    everything = np.ones(lat.shape, bool)
    summary = stats(everything, duration_s)
    for name, mask in (("hot", hot), ("cold", ~hot)):
        if mask.any() and ok[mask].any():
            summary[f"{name}_p50_ms"] = float(np.percentile(lat[mask & ok] * 1e3, 50))
    if phases:
        summary["phases"] = [stats(phase == k, d, r) for k, (d, r) in enumerate(phases)]
    return summary


def run(spec: LoadSpec) -> dict[str, Any]:
    """Run ``spec`` in this process; return the summary and the raw latencies (ms)."""
    gc.collect()
    gc.freeze()  # a gen-2 collection mid-run would pause the generator, not the server
    gc.disable()
    try:
        out = asyncio.run(_run(spec))
    finally:
        gc.enable()
    summary = summarize_records(out["records"], spec.slo_s, out["duration_s"],
                                spec.phases or None)
    # the generator's own CPU per query: what it took from the machine it shares
    summary["loadgen_cpu_us_per_query"] = (out["cpu_s"] / max(1, len(out["records"]["latency"]))
                                           * 1e6)
    # how late the generator itself sent (open loop only): the latencies include it,
    # so a large one means the numbers describe this process as much as the server;
    # and how long queries waited for the server to accept a connection (its doing)
    for name in ("send_late", "connecting"):
        got = out["records"].get(name)
        summary[f"{name}_p99_ms"] = float(np.percentile(got, 99)) * 1e3 if got else 0.0
    summary["latencies_ms"] = [x * 1e3 for x in out["records"]["latency"]]
    summary["start_monotonic"] = out.get("start", 0.0)
    summary["duration_s"] = out["duration_s"]  # closed loop: shorter if its bodies ran out
    summary["scheduled_s"] = out["records"]["scheduled"]
    return summary


# The child ignores Ctrl-C while it imports (a terminal sends it to the whole process
# group, and a KeyboardInterrupt inside numpy's import printed its whole stack); this
# process, interrupted too, then stops it.
_CHILD = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
          "from systems.miniclipper.loadgen import main\n"
          "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
          "sys.exit(main(sys.argv[1:]))")


def run_process(spec: LoadSpec, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``spec`` in a separate Python process (so the generator has its own CPU time
    and event loop) and return its summary."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as d:
        spec_path, out_path = Path(d) / "spec.json", Path(d) / "out.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        length = sum(p[0] for p in spec.phases) + spec.duration_s
        limit = timeout_s or length + spec.timeout_s + 60
        try:
            subprocess.run([sys.executable, "-c", _CHILD, "--spec", str(spec_path),
                            "--out", str(out_path)], cwd=root, check=True, timeout=limit)
        except subprocess.CalledProcessError as e:
            if e.returncode == 130:  # its Ctrl-C, as the caller's own
                raise KeyboardInterrupt from None
            raise RuntimeError(f"the load generator failed (exit code {e.returncode}); its "
                               f"message is above") from None
        except subprocess.TimeoutExpired:  # (subprocess.run has killed it)
            raise RuntimeError(f"the load generator did not finish in {limit:.0f} s: it "
                               f"could not send at the rate asked (one process sends a "
                               f"few thousand queries per second)") from None
        return json.loads(out_path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="open-loop Poisson load for a Clipper app")
    p.add_argument("--spec", required=True, help="a JSON LoadSpec")
    p.add_argument("--out", required=True, help="where to write the summary JSON")
    a = p.parse_args(argv)
    doc = json.loads(Path(a.spec).read_text())
    doc["phases"] = [tuple(x) for x in doc.get("phases", [])]
    doc["actions"] = [tuple(x) for x in doc.get("actions", [])]
    t0 = time.perf_counter()
    try:
        summary = run(LoadSpec(**doc))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the caller
        return 130             # says "interrupted" once, without this process's stack
    except ActionFailed as e:
        print(f"load generator: {e}", file=sys.stderr, flush=True)
        return 1
    summary["wall_s"] = time.perf_counter() - t0
    summary["pid"] = os.getpid()  # the generator's own process, not the caller's
    Path(a.out).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
