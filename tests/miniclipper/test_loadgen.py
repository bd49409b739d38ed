"""The load generator (systems/miniclipper/loadgen.py): Poisson arrivals, and latency
measured from the scheduled send time (no coordinated omission)."""

import asyncio
import json
import os
import threading
import time

import numpy as np
import pytest
from aiohttp import web

from systems.miniclipper import loadgen
from systems.miniclipper.datatypes import parse_input
from systems.miniclipper.loadgen import (
    LoadSpec,
    _salts,
    make_bodies,
    poisson_arrivals,
    run,
    run_process,
    summarize_records,
)


def test_arrivals_are_poisson_at_the_offered_rate_per_phase():
    t, phase = poisson_arrivals([(20.0, 500.0), (20.0, 100.0)], seed=3)
    assert np.all(np.diff(t) >= 0)
    n0, n1 = (phase == 0).sum(), (phase == 1).sum()
    assert abs(n0 - 10_000) < 4 * 100 and abs(n1 - 2_000) < 4 * 45  # 4 sigma
    gaps = np.diff(t[phase == 0])
    assert gaps.mean() == pytest.approx(1 / 500, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV 1


def test_cold_queries_to_an_integers_app_are_whole_numbers_and_all_different():
    """An "integers" app refuses any float (a 400), so a cold query is made unique by a
    whole-number offset; the frontend's own parser is the judge of what it accepts."""
    spec = LoadSpec("http://x/a/predict", [[1, 2, 3], [4, 5, 6]], input_type="integers")
    bodies, hot = make_bodies(spec, 300, np.random.default_rng(0))
    xs = [json.loads(b)["input"] for b in bodies]
    assert not hot.any() and len({tuple(x) for x in xs}) == 300
    assert all(parse_input(x, "integers").dtype == np.int32 for x in xs)
    floats = make_bodies(LoadSpec("u", [[1.0, 2.0]]), 50, np.random.default_rng(0))[0]
    assert len(set(floats)) == 50
    assert np.allclose([json.loads(b)["input"] for b in floats], [1.0, 2.0], rtol=1e-3)
    with pytest.raises(ValueError, match="needs whole-number inputs"):
        LoadSpec("u", [[1.5, 2.0]], input_type="ints")
    for kind in ("strings", "bytes"):
        with pytest.raises(ValueError, match=f"cannot load an application of input_type "
                                             f"'{kind}'"):
            LoadSpec("u", [[1.0]], input_type=kind)


@pytest.mark.parametrize("pool,input_type", [([[1, 2, 3]], "integers"),
                                             ([[0.5, 1.0, 2.0, 4.0]], "floats")])
def test_two_runs_with_the_same_seed_never_send_the_same_cold_input(monkeypatch, pool,
                                                                    input_type):
    """Runs salted 0 and 1 (what the unseeded generator drew) with one pool entry: with
    offsets salt+i+1 the second run resent all but one of the first run's inputs, which
    the cache then answered."""
    real, salts = np.random.default_rng, iter([0, 1])

    class Salt:
        def integers(self, lo, hi):
            assert hi > 1000  # a space of salts, not a handful
            return next(salts)

    monkeypatch.setattr(np.random, "default_rng",
                        lambda seed=None: Salt() if seed is None else real(seed))
    spec = LoadSpec("u", pool, input_type=input_type)
    a, b = (set(make_bodies(spec, 500, real(0))[0]) for _ in range(2))
    assert len(a) == len(b) == 500 and not a & b


def test_cold_queries_are_distinct_within_a_run_even_from_rows_a_step_apart():
    """The CLI's --inputs 1 pool for an integers app (whole numbers -100..100): rows a few
    steps apart met under the per-query offset, and a third of the "cold" queries
    repeated (cache hits). A one-feature float app at 4,096 queries had no salt left,
    so two runs sent the same inputs; an int32 pool near the limit overflowed."""
    ints = np.random.default_rng(0).integers(-100, 100, (500, 1)).tolist()
    bodies, _ = make_bodies(LoadSpec("u", ints, input_type="integers"), 10_000,
                            np.random.default_rng(0))
    assert len(set(bodies)) == 10_000
    one = np.random.default_rng(0).standard_normal((500, 1))
    assert _salts(one, False, 4096) == 7  # 2^16 // (2 * 4097); it was 1: offsets 1..n
    assert len(set(make_bodies(LoadSpec("u", one.tolist()), 4096,
                               np.random.default_rng(0))[0])) == 4096
    big = [[7, 2_000_000_000]]
    for body in make_bodies(LoadSpec("u", big, input_type="integers"), 100,
                            np.random.default_rng(0))[0]:
        parse_input(json.loads(body)["input"], "integers")  # fits in int32
    with pytest.raises(ValueError, match="no room below int32's limit"):
        make_bodies(LoadSpec("u", [[2**31 - 50]], input_type="integers"), 100,
                    np.random.default_rng(0))


def test_summary_counts_goodput_only_for_timely_non_default_answers():
    rec = {"latency": [0.001, 0.001, 0.05, 0.001, 0.001], "status": [200, 200, 200, 429, -1],
           "default": [False, True, False, False, False], "hot": [False] * 5,
           "phase": [0] * 5, "scheduled": [0.0] * 5}
    s = summarize_records(rec, slo_s=0.02, duration_s=2.0)
    assert s["goodput_qps"] == 0.5 and s["rejected"] == 1 and s["errors"] == 1
    assert s["default"] == 1 and s["within_slo"] == pytest.approx(1 / 5)


def test_a_timed_out_query_stays_in_the_tail_of_the_all_queries_percentiles():
    """499 fast answers and one query that timed out after 5 s: the answered-only p99.9
    never sees it; the every-query p99.9 does."""
    n = 500
    rec = {"latency": [0.002] * (n - 1) + [5.0], "status": [200] * (n - 1) + [-1],
           "default": [False] * n, "hot": [False] * n, "phase": [0] * n,
           "scheduled": [0.0] * n}
    s = summarize_records(rec, slo_s=0.02, duration_s=1.0)
    assert s["p999_ms"] == pytest.approx(2.0) and s["p50_all_ms"] == pytest.approx(2.0)
    assert s["p999_all_ms"] > 1000 and s["errors"] == 1


@pytest.fixture
def stalling_server():
    """An HTTP server that freezes its event loop for 300 ms once, 400 ms in."""
    state = {}
    ready = threading.Event()

    async def handler(request):
        if not state.get("stalled") and time.monotonic() > state["t0"] + 0.4:
            state["stalled"] = True
            time.sleep(0.3)  # the whole server stops, as in a GC pause
        state.setdefault("bodies", []).append(await request.read())
        return web.json_response({"output": 1, "default": False})

    async def main():
        app = web.Application()
        app.add_routes([web.post("/a/predict", handler)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["port"] = site._server.sockets[0].getsockname()[1]
        state["stop"] = asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        ready.set()
        await state["stop"].wait()
        await runner.cleanup()

    th = threading.Thread(target=asyncio.run, args=(main(),))
    th.start()
    ready.wait(10)
    yield state
    state["loop"].call_soon_threadsafe(state["stop"].set)
    th.join(10)


def test_open_loop_sees_the_stall_that_closed_loop_hides(stalling_server):
    s = stalling_server
    url = f"http://127.0.0.1:{s['port']}/a/predict"
    s["t0"], s["stalled"] = time.monotonic(), False
    open_loop = run(LoadSpec(url, [[1.0]], phases=[(1.2, 200.0)], slo_s=0.05))
    lat = np.array(open_loop["latencies_ms"])
    # every query scheduled during the 300 ms stall waited for it: ~60 late queries
    assert (lat > 100).sum() >= 30 and lat.max() > 250
    s["t0"], s["stalled"] = time.monotonic(), False
    closed = run(LoadSpec(url, [[1.0]], concurrency=1, duration_s=1.2, slo_s=0.05))
    # one client, one request in flight: the stall shows up as a single slow query
    assert (np.array(closed["latencies_ms"]) > 100).sum() <= 2


def test_the_generator_measures_how_late_it_sent(stalling_server):
    """A rate one process cannot send still runs (open loop: each latency counts from
    the scheduled time), but it must say that it fell behind, not pass its own lag off
    as the server's."""
    s = stalling_server
    s["t0"], s["stalled"] = time.monotonic() + 100, False  # no stall
    url = f"http://127.0.0.1:{s['port']}/a/predict"
    slow = run(LoadSpec(url, [[1.0]], phases=[(0.5, 100.0)], slo_s=0.05))
    fast = run(LoadSpec(url, [[1.0]], phases=[(0.4, 20000.0)], slo_s=0.05))
    assert slow["send_late_p99_ms"] < 25, slow["send_late_p99_ms"]
    assert fast["send_late_p99_ms"] > 100, fast["send_late_p99_ms"]  # ~8,000 queries
    # its own lag is not passed off as the server's slowness to accept: the hooks that
    # time a connection run on its loop, late as everything else on it
    assert fast["connecting_p99_ms"] == 0.0, fast["connecting_p99_ms"]
    # queries waiting for one of the generator's connections leave late too: while the
    # server stalls for 300 ms, two connections hold everything behind them (the lag
    # used to be taken before the connection pool, and was a few ms here)
    s["t0"], s["stalled"] = time.monotonic(), False
    pooled = run(LoadSpec(url, [[1.0]], phases=[(1.2, 200.0)], slo_s=0.05,
                          max_connections=2))
    assert pooled["send_late_p99_ms"] > 100, pooled["send_late_p99_ms"]


def test_a_server_that_does_not_accept_is_not_taken_for_the_generators_lag():
    """A stalled server's listen queue fills and the kernel drops new clients' SYNs,
    which retry after 1 s: that wait was counted as the generator sending late, and the
    CLI told the user to lower a rate the generator sent with 3 ms of lag. It is
    reported apart, as time spent connecting."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)  # room for about one; nothing accepts for the first 1.2 s
    port = sock.getsockname()[1]
    stop = threading.Event()

    async def serve():
        await asyncio.sleep(1.2)

        async def handler(request):
            return web.json_response({"output": 1, "default": False})
        app = web.Application()
        app.add_routes([web.post("/a/predict", handler)])
        runner = web.AppRunner(app)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()
    th = threading.Thread(target=asyncio.run, args=(serve(),))
    th.start()
    try:
        out = run(LoadSpec(f"http://127.0.0.1:{port}/a/predict", [[1.0]],
                           phases=[(0.4, 50.0)], slo_s=0.05, timeout_s=10.0))
    finally:
        stop.set()
        th.join(10)
        sock.close()
    assert out["ok"] == out["sent"] > 0
    assert out["connecting_p99_ms"] > 500, out["connecting_p99_ms"]
    assert out["send_late_p99_ms"] < 100, out["send_late_p99_ms"]


def test_runs_in_its_own_process(stalling_server):
    s = stalling_server
    s["t0"], s["stalled"] = time.monotonic() + 100, False  # no stall this time
    out = run_process(LoadSpec(f"http://127.0.0.1:{s['port']}/a/predict", [[1.0, 2.0]],
                               phases=[(0.5, 100.0)]))
    assert out["sent"] == out["ok"] > 20 and out["errors"] == 0
    assert out["pid"] != os.getpid()  # its own interpreter, CPU time and event loop


def test_a_timed_action_that_fails_fails_the_run(stalling_server):
    """A mid-run change (slow the container down) that the server refused left a run
    that reported as if it had happened; one whose host was unreachable raised a bare
    connection error. Both now fail the run, naming the action; a good one passes."""
    s = stalling_server
    s["t0"], s["stalled"] = time.monotonic() + 100, False  # no stall
    base = f"http://127.0.0.1:{s['port']}"

    def load(action_url):
        return run(LoadSpec(f"{base}/a/predict", [[1.0]], phases=[(0.3, 50.0)],
                            actions=[(0.1, action_url, {"slowdown": 2.0})]))

    assert load(f"{base}/a/predict")["ok"] > 5
    with pytest.raises(loadgen.ActionFailed, match=r"/nope at 0.1 s: 404"):
        load(f"{base}/nope")
    with pytest.raises(loadgen.ActionFailed, match=r":9/x at 0.1 s: ClientConnectorError"):
        load("http://127.0.0.1:9/x")
    with pytest.raises(ValueError, match="timed actions need an open-loop run"):
        LoadSpec(f"{base}/a/predict", [[1.0]], concurrency=4, duration_s=0.3,
                 actions=[(0.1, f"{base}/nope", {})])  # the closed loop dropped them


def test_a_silent_phase_still_takes_its_time():
    t, phase = poisson_arrivals([(1.0, 0.0), (1.0, 200.0), (0.5, 0.0), (1.0, 200.0)], seed=1)
    assert set(phase.tolist()) == {1, 3}
    assert t[phase == 1].min() >= 1.0 and t[phase == 1].max() < 2.0
    assert t[phase == 3].min() >= 2.5 and t[phase == 3].max() < 3.5


@pytest.mark.parametrize("input_type", ["floats", "doubles"])
def test_cold_queries_stay_different_once_the_app_parses_them(input_type):
    """A float app's cold queries differed by 1e-9 steps, which float32 cannot tell
    apart near 1.0 (spacing 1.2e-7): half of 'unique' queries were cache hits."""
    from systems.miniclipper.datatypes import input_keys

    pool = np.random.default_rng(1).random((16, 8)).tolist()
    pool[0] = [0.0] * 7 + [-0.0]  # zeros move to the smallest subnormals, still apart
    bodies, hot = make_bodies(LoadSpec("u", pool, input_type=input_type), 5000,
                              np.random.default_rng(0))
    xs = [parse_input(json.loads(b)["input"], input_type) for b in bodies]
    assert not hot.any() and len(set(input_keys(0, xs))) == 5000
    assert np.allclose(xs, [pool[i] for i in _picks(5000)], rtol=1e-4, atol=1e-30)


def _picks(n):  # the pool entries make_bodies drew with rng seed 0, hot_fraction 0
    rng = np.random.default_rng(0)
    rng.random(n)
    return [int(rng.integers(16)) for _ in range(n)]


def test_hot_queries_repeat_only_the_hot_set():
    pool = [[float(i), 0.0] for i in range(50)]
    bodies, hot = make_bodies(LoadSpec("u", pool, hot_fraction=1.0, hot_set=3), 400,
                              np.random.default_rng(0))
    assert hot.all()
    assert {tuple(json.loads(b)["input"]) for b in bodies} <= {tuple(x) for x in pool[:3]}


def _rec():
    # phase 0 (2 s): 3 answered in time, 1 rejected; phase 1 (0.5 s): 1 answered late,
    # 1 failed; hot: one slow failure, one fast answer
    return {"latency": [0.001, 0.002, 0.003, 0.001, 0.5, 9.0],
            "status": [200, 200, 200, 429, 200, -1],
            "default": [False] * 6, "hot": [True, False, False, False, False, True],
            "phase": [0, 0, 0, 0, 1, 1], "scheduled": [0.0] * 6}


def test_throughput_counts_answers_only_and_phases_use_their_own_length():
    s = summarize_records(_rec(), slo_s=0.02, duration_s=2.5, phases=[(2.0, 2.0), (0.5, 4.0)])
    assert s["throughput_qps"] == pytest.approx(4 / 2.5)  # the 429 and the failure: no
    assert s["goodput_qps"] == pytest.approx(3 / 2.5)
    p0, p1 = s["phases"]
    assert p0["goodput_qps"] == pytest.approx(3 / 2.0)
    assert p0["throughput_qps"] == pytest.approx(3 / 2.0)
    assert p1["throughput_qps"] == pytest.approx(1 / 0.5) and p1["goodput_qps"] == 0.0
    assert p1["offered_qps"] == 4.0


def test_hot_and_cold_medians_are_of_answered_queries():
    s = summarize_records(_rec(), slo_s=0.02, duration_s=2.5)
    assert s["hot_p50_ms"] == pytest.approx(1.0)  # the hot failure (9 s) is not an answer
    assert s["cold_p50_ms"] == pytest.approx(np.median([2.0, 3.0, 500.0]))


def test_latency_counts_from_the_scheduled_send_even_when_the_generator_is_late(monkeypatch):
    """Coordinated omission: the generator's own stall (here its first send blocks the
    event loop 0.3 s) delays the sends due meanwhile; their latency must include that
    delay, since a real user would have waited it."""
    calls = []

    async def post(session, url, body, ctx=None):
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(0.3)  # blocks the loop: everything due now goes out late
        return 200, False
    monkeypatch.setattr(loadgen, "_post", post)
    spec = LoadSpec("http://127.0.0.1:9/x/predict", [[1.0]], phases=[(0.6, 200.0)])
    out = asyncio.run(loadgen._run(spec))
    lat = np.asarray(out["records"]["latency"])
    sched = np.asarray(out["records"]["scheduled"])
    first = sched.min()
    late = (sched > first + 0.01) & (sched < first + 0.2)  # due while the loop was blocked
    assert late.sum() >= 10
    # each was sent when the stall ended, ~0.3 s after the first was due
    np.testing.assert_array_less(first + 0.28 - sched[late] - 0.02, lat[late])


def test_closed_loop_never_sends_a_cold_body_twice(stalling_server, monkeypatch):
    """It used to cycle through its bodies: past the 20,000th query every cold query was
    a repeat, a cache hit at hot_fraction 0. It ends early instead."""
    s = stalling_server
    s["t0"], s["stalled"], s["bodies"] = time.monotonic() + 100, False, []  # no stall
    monkeypatch.setattr(loadgen, "CLOSED_LOOP_BODIES", 40)
    url = f"http://127.0.0.1:{s['port']}/a/predict"
    out = run(LoadSpec(url, [[1.0, 2.0]], concurrency=4, duration_s=30.0, slo_s=1.0))
    assert len(s["bodies"]) == 40 == len(set(s["bodies"]))
    assert out["duration_s"] < 10
