"""Consistency models as task dependencies (paper sections 3.4-3.5): BSP equals the
single-process run; SSP never lets a worker get more than tau clocks ahead; ASP does."""

import asyncio
import math
import time

import numpy as np
import pytest

from systems.minips.clock import VectorClock
from systems.minips.cluster import ClusterSpec
from systems.minips.consistency import Consistency, DependencyGate
from systems.minips.kv import KVWorker

from .conftest import run_threads


def test_parse_and_dependencies():
    assert Consistency.parse("bsp").wait_clock(5) == 4
    assert Consistency.parse("ssp:3").wait_clock(5) == 1
    assert Consistency.parse("asp").wait_clock(5) is None
    assert math.isinf(Consistency.parse("asp").tau)
    assert Consistency.parse("ssp:inf") == Consistency.parse("asp")  # tau = inf: eventual
    assert Consistency.parse("ssp:0").wait_clock(5) == Consistency.parse("bsp").wait_clock(5)
    # tau = 0 is sequential (the paper): ssp:0 also takes BSP's push edge; tau >= 1 not
    assert Consistency.parse("ssp:0").push_wait(5) == Consistency.parse("bsp").push_wait(5) == 5
    assert Consistency.parse("ssp:1").push_wait(5) is None
    for bad in ("ssp:-1", "ssp:x", "stale"):
        with pytest.raises(ValueError, match="ssp|bsp"):
            Consistency.parse(bad)


def test_gate_releases_a_pull_when_the_last_worker_reaches_the_clock():
    async def scenario():
        vc = VectorClock(100)
        gate = DependencyGate(vc)
        gate.workers = ["w0", "w1"]
        vc.of("w0").set(0, 100, 3)
        task = asyncio.ensure_future(gate.wait([(0, 100)], 3, 4, lambda: True))
        await asyncio.sleep(0.05)
        assert not task.done()  # w1 has not finished clock 3
        vc.of("w1").set(0, 50, 3)
        gate.notify()
        await asyncio.sleep(0.05)
        assert not task.done()  # only half of the range
        gate.workers = ["w0"]  # w1 died: it no longer holds anyone back
        gate.notify()
        held = await asyncio.wait_for(task, 1)
        assert held >= 0.09
    asyncio.run(scenario())


def test_a_pull_woken_by_a_ring_change_is_not_counted_in_the_staleness_bound():
    """``max_gap``, the most clocks a served pull was ahead of the slowest worker, is
    what the SSP tests read as "the bound holds". A pull woken by a ring change leaves
    the gate with its dependency unmet and is answered STALE, never served; it was
    counted, and after any failover the metric read above tau."""
    async def scenario():
        vc = VectorClock(100)
        gate = DependencyGate(vc)
        gate.workers = ["w0", "w1"]
        vc.of("w0").set(0, 100, 5)
        vc.of("w1").set(0, 100, 3)
        valid = [True]
        task = asyncio.ensure_future(gate.wait([(0, 100)], 5, 6, lambda: valid[0]))
        await asyncio.sleep(0.05)
        valid[0] = False  # the epoch moved
        gate.notify()
        await asyncio.wait_for(task, 1)
        unserved = gate.max_gap
        await gate.wait([(0, 100)], 3, 4, lambda: True)  # served: w1 is at 3, w0 at 5
        return unserved, gate.max_gap
    assert asyncio.run(scenario()) == (0, 0)


def test_a_held_bsp_push_is_counted_as_a_push_not_as_a_pull():
    """``held_pulls`` (and the seconds pulls were held, the paper's waiting time) counted
    BSP pushes held on the pull clock: a job where no pull waited reported held pulls."""
    async def scenario():
        push_vc, pulled = VectorClock(100), VectorClock(100)
        gate = DependencyGate(push_vc)
        gate.workers = ["w0", "w1"]
        push = asyncio.ensure_future(gate.wait([(0, 100)], 0, None, lambda: True, pulled))
        await asyncio.sleep(0.02)
        for w in ("w0", "w1"):
            pulled.of(w).set(0, 100, 0)
        gate.notify()
        await asyncio.wait_for(push, 1)
        return gate.held_pulls, gate.held_s, gate.held_pushes
    assert asyncio.run(scenario()) == (0, 0.0, 1)


def quadratic(rank: int, n: int = 32):
    rng = np.random.default_rng(rank)
    a = rng.normal(size=(n, n)).astype(np.float32) / np.sqrt(n)
    return a.T @ a, rng.normal(size=n).astype(np.float32)


def check_bsp_against_one_process(make_cluster, clocks: int, sleep_before_push: float,
                                  sleep_after_push: float, consistency: str = "bsp") -> None:
    """Two workers, SGD on the server; worker 1 sleeps ``rank x`` the given seconds
    before or after each push. Each BSP clock must equal one step of
    w <- w - lr * (g0(w) + g1(w)) computed in this process (``consistency``: another
    model that must equal BSP, exercise 1's ``ssp_strict:0``)."""
    n, lr = 32, 0.05
    spec = ClusterSpec(servers=2, workers=2, key_max=n, updater={"name": "sgd", "lr": lr},
                       app={"name": "count"})
    cl = make_cluster(spec)
    keys = np.arange(n, dtype=np.uint64)
    model = Consistency.parse(consistency)

    def body(kv, rank):
        h, b = quadratic(rank)
        for c in range(clocks):
            w = kv.wait(kv.pull(keys, clock=c, wait=model.wait_clock(c))).reshape(-1)
            time.sleep(sleep_before_push * rank)
            kv.push(keys, (h @ w - b).reshape(-1, 1), clock=c, wait=model.push_wait(c))
            time.sleep(sleep_after_push * rank)
        return kv.wait(kv.pull(keys, clock=clocks, wait=model.wait_clock(clocks)))

    finals = run_threads(cl, body, 2)
    w = np.zeros(n, np.float32)
    for _ in range(clocks):
        w = w - lr * sum(h @ w - b for h, b in (quadratic(0), quadratic(1)))
    for f in finals:
        np.testing.assert_allclose(f.reshape(-1), w, rtol=1e-4, atol=1e-5)


def test_bsp_equals_a_single_process_run_of_the_same_updates(make_cluster):
    """One worker slower between its pull and its push: BSP must not care."""
    check_bsp_against_one_process(make_cluster, 12, sleep_before_push=0.01,
                                  sleep_after_push=0.0)


def run_with_straggler(make_cluster, consistency: str, clocks: int = 14):
    spec = ClusterSpec(servers=2, workers=3, key_max=64, updater={"name": "sum"},
                       app={"name": "count"})
    cl = make_cluster(spec)
    keys = np.arange(64, dtype=np.uint64)
    model = Consistency.parse(consistency)
    t0 = time.monotonic()

    def body(kv, rank):
        starts, sent = {}, {}
        for c in range(clocks):
            kv.wait(kv.pull(keys, clock=c, wait=model.wait_clock(c)))
            starts[c] = time.monotonic() - t0
            time.sleep(0.06 if rank == 2 else 0.005)  # worker 2 is 12x slower
            sent[c] = time.monotonic() - t0
            kv.push(keys, np.ones((64, 1), np.float32), clock=c, wait=model.push_wait(c))
        return starts, sent

    out = run_threads(cl, body, 3)
    metrics = [cl.control(s, metrics=True)["metrics"] for s in ("s0", "s1")]
    # the paper's "waiting time": how long the servers held pulls for the dependency
    waited = sum(m.get("consistency_wait_s", 0.0) for m in metrics)
    return out, max(m["max_gap"] for m in metrics), waited


@pytest.mark.parametrize("tau", [0, 2])
def test_ssp_never_lets_a_worker_run_more_than_tau_clocks_ahead(make_cluster, tau):
    out, server_gap, waited = run_with_straggler(make_cluster,
                                                 "bsp" if tau == 0 else f"ssp:{tau}")
    assert server_gap == tau  # the bound holds, and the straggler makes it tight
    # the fast workers' pulls were held for the straggler: about 0.055 s a clock each
    # under BSP, less once tau clocks of slack absorb it
    assert waited > 0.3
    _, slow_sent = out[2]
    for starts, _ in out[:2]:
        for c, t in starts.items():
            dep = c - tau - 1
            if dep >= 0:  # clock c began only after the straggler sent clock c - tau - 1
                assert t >= slow_sent[dep], (c, t, slow_sent[dep])


def test_asp_lets_fast_workers_run_ahead(make_cluster):
    out, server_gap, waited = run_with_straggler(make_cluster, "asp")
    assert server_gap > 4  # no dependency: fast workers got far ahead of the straggler
    assert waited < 0.01  # no pull was held for a dependency (only the check itself)


def test_bsp_holds_a_fast_workers_push_until_every_worker_has_pulled_the_clock(make_cluster):
    """As test_bsp_equals_a_single_process_run_of_the_same_updates, but the slow
    worker dawdles *between its push and its next pull*: the fast worker, released by
    the slow one's push of clock c - 1, pushes clock c before the slow one pulls clock c.
    Only the push dependency (push_wait) keeps that push out of the slow one's view."""
    check_bsp_against_one_process(make_cluster, 8, sleep_before_push=0.0,
                                  sleep_after_push=0.08)


def test_a_worker_that_skips_clocks_ticks_or_its_own_pull_waits_for_it(make_cluster):
    """An heir that had retired rejoins the clock set at the others' clock (section
    4.6). Its clock on the servers is still where it stopped, so its first BSP pull
    waited for itself, and every other worker's next pull for it: the job hung (found
    with 5 workers, 3 of them killed). A tick, a push of no keys at the clock before,
    moves its clock and releases the pull; it changes no value."""
    cl = make_cluster(ClusterSpec(servers=2, workers=2, key_max=64, updater={"name": "sum"},
                                  app={"name": "count"}))
    keys = np.arange(64, dtype=np.uint64)
    w0, w1 = (KVWorker(cl.sched_addr, f"w{i}") for i in range(2))
    try:
        for c in range(10):  # w1 stops after clock 1, w0 goes on to clock 9
            for kv in (w0, w1) if c < 2 else (w0,):
                kv.wait(kv.push(keys, np.ones((64, 1), np.float32), clock=c))
        ts = w1.pull(keys, clock=10, wait=9)
        with pytest.raises(TimeoutError, match="finished clock 9"):
            w1.wait(ts, timeout=1.0)  # held on w1's own clock 1
        w1.tick(9)
        got = w1.wait(ts, timeout=10)
        np.testing.assert_array_equal(got, np.full((64, 1), 12.0))  # 10 + 2 pushes, no more
    finally:
        for kv in (w0, w1):
            kv.close()
