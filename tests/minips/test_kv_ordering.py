"""The worker's request bookkeeping (kv.py, recovery.py): clock order, waiting on old
timestamps, one push at a time, held pulls, a failed job. Real processes, one small
cluster for the module."""

import threading
import time

import numpy as np
import pytest

from systems.minips.cluster import Cluster, ClusterSpec
from systems.minips.kv import KVWorker

KEY_MAX = 1 << 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    spec = ClusterSpec(servers=3, workers=2, replication=2, updater={"name": "sum"},
                       app={"name": "count"}, key_max=KEY_MAX)
    cl = Cluster(spec, tmp_path_factory.mktemp("kv2"))
    cl.start(workers=False)
    yield cl
    cl.close()


def test_a_pull_held_on_several_servers_counts_its_wait_once(cluster):
    """(First in the module: w0 and w1 must register within the scheduler's start
    grace, or they are declared dead and nothing is held.)
    A BSP pull is held by every server it reaches until the slowest worker pushes;
    its slices wait together, so the worker's consistency_held_s (the report's
    idle_fraction) is at most the pull's own wall time, not the sum over servers."""
    keys = np.arange(0, KEY_MAX, 5, dtype=np.uint64)  # on all three servers
    w0, w1 = KVWorker(cluster.sched_addr, "w0"), KVWorker(cluster.sched_addr, "w1")
    try:
        assert len({s for s in w1.ring.slice(keys, [(0, KEY_MAX)])}) == 3
        one = np.ones((keys.size, 1), np.float32)
        w1.wait(w1.push(keys, one, clock=0))
        t0 = time.monotonic()
        ts = w1.pull(keys, clock=1, wait=0)  # held until w0 finished clock 0

        def late():
            time.sleep(0.6)
            w0.wait(w0.push(keys, one, clock=0))
        t = threading.Thread(target=late)
        t.start()
        w1.wait(ts, timeout=30)
        wall = time.monotonic() - t0
        t.join()
        held = w1.metrics.snapshot()["consistency_held_s"]
        assert 0.3 < held <= wall + 0.05, (held, wall)
    finally:
        w0.close()
        w1.close()


def test_a_push_with_an_older_clock_is_refused_not_dropped(cluster):
    """The servers drop a push whose clock a range has passed as a resend: a caller that
    pushes clock 2 after clock 5 would lose it silently, so push() must refuse it."""
    kv = cluster.client("older")
    k = np.array([11], np.uint64)
    before = kv.wait(kv.pull(k))
    kv.wait(kv.push(k, np.ones((1, 1), np.float32), clock=5))
    with pytest.raises(ValueError, match="older than the last one"):
        kv.push(k, np.ones((1, 1), np.float32), clock=2)
    np.testing.assert_array_equal(kv.wait(kv.pull(k)), before + 1)


def test_waiting_for_an_acknowledged_push_forgotten_among_many_returns_none(cluster):
    """Past ``prune_at`` open records (4096; 256 here, to be quick) the worker forgets
    acknowledged pushes nobody waited for; wait() on one of them must still return None,
    not raise KeyError, and the records stay bounded."""
    kv = cluster.client("many")
    kv.prune_at = 256
    k, one = np.array([12], np.uint64), np.ones((1, 1), np.float32)
    before = kv.wait(kv.pull(k))
    tss = [kv.push(k, one, key_range=(12, 13)) for _ in range(1000)]  # one slice each
    assert kv.wait(tss[-1], timeout=120) is None
    assert len(kv.requests) <= 257
    assert kv.wait(tss[0]) is None  # forgotten, but acknowledged: not an error
    assert kv.finished(tss[1])
    with pytest.raises(KeyError, match="no request with timestamp"):
        kv.wait(tss[-1] + 10)  # never made: still an error
    np.testing.assert_array_equal(kv.wait(kv.pull(k)), before + 1000)


def test_pushes_leave_one_at_a_time(cluster):
    """The module docstring: the next push is sent only when the previous one is
    acknowledged everywhere (clock de-duplication needs each range to see a worker's
    pushes in order). Spy on the slices sent: none of a push may leave while an earlier
    push of the same worker is still open."""
    kv = cluster.client("ordered")
    overlaps, orig = [], kv._send_slice

    def spy(req, p, no_cache):
        if req.op == "push":
            overlaps.extend(r.ts for r in list(kv.requests.values())
                            if r.op == "push" and r.ts < req.ts and not r.done.is_set())
        orig(req, p, no_cache)
    kv._send_slice = spy
    keys = np.arange(0, KEY_MAX, 7, dtype=np.uint64)
    before = kv.wait(kv.pull(keys))
    tss = [kv.push(keys, np.ones((keys.size, 1), np.float32)) for _ in range(30)]
    for ts in tss:
        kv.wait(ts, timeout=60)
    assert overlaps == []
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), before + 30)


def test_one_worker_shared_by_threads_loses_no_acknowledged_push(cluster, race):
    """Threads may share one KVWorker (ps-lite's requests are mutex-protected, and
    MXNet's engine threads share one). Each push takes the next clock; the clock used
    to be chosen outside the lock, so a later clock could leave first, and the servers
    dropped the earlier push as a resend after acknowledging it (about 1 push in 100
    was lost with 4 threads)."""
    kv = cluster.client("shared")
    keys = np.arange(0, KEY_MAX, 64, dtype=np.uint64)  # every server's ranges
    ones = np.ones((keys.size, 1), np.float32)
    before = kv.wait(kv.pull(keys))
    n_threads, n_pushes = 4, 60

    def body():
        for _ in range(n_pushes):
            kv.wait(kv.push(keys, ones), timeout=60)

    race(*[body] * n_threads)
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), before + n_threads * n_pushes)
    kv.close()


def test_a_value_filter_may_pull_through_its_own_worker(cluster):
    """A user's value filter (paper section 3.6: any function of the update) may read
    the current weights, say by pulling them through the worker it filters for. The
    filters used to run under the worker's lock, which the reply threads need to finish
    a request: the filter's pull never finished, and the push never returned."""

    class HalveWhereWeightIsOdd:
        def push(self, keys, vals, ctx):
            w = kv.wait(kv.pull(keys), timeout=20)
            return keys, np.where(w % 2 == 1, vals / 2, vals)

    kv = KVWorker(cluster.sched_addr, "pulling-filter", role="client",
                  filters=[HalveWhereWeightIsOdd()])
    try:
        k = np.array([3000, 3001], np.uint64)
        before = kv.wait(kv.pull(k))
        kv.wait(kv.push(k, np.ones((2, 1), np.float32), key_range=(3000, 3002)), timeout=30)
        kv.wait(kv.push(k, np.full((2, 1), 4, np.float32), key_range=(3000, 3002)),
                timeout=30)
        np.testing.assert_array_equal(  # the second push saw the first's odd weights
            kv.wait(kv.pull(k)), before + 1 + np.where((before + 1) % 2 == 1, 2, 4))
    finally:
        kv.close(drain_s=0)


@pytest.mark.parametrize("op", ["pull", "push"])
def test_threads_waiting_for_one_timestamp_all_get_its_result(cluster, op):
    """ps-lite lets any number of threads wait for one timestamp. The first wait used
    to drop the record, and a second waiter got a KeyError at random (70 of 100 pulls).
    Now every waiter gets the values (None for a push), and so does a later wait, as
    long as the pull is one of the last ``keep_pulls`` waited for."""
    kv = cluster.client(f"waits-{op}")
    keys = np.arange(100, 200, dtype=np.uint64)
    for _ in range(20):
        ts = (kv.pull(keys) if op == "pull"
              else kv.push(keys, np.zeros((keys.size, 1), np.float32)))
        got, barrier = [None] * 3, threading.Barrier(3)

        def w(j, ts=ts):
            barrier.wait()
            try:
                got[j] = kv.wait(ts, timeout=60)
            except Exception as e:  # noqa: BLE001 - compared below
                got[j] = e
        threads = [threading.Thread(target=w, args=(j,)) for j in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if op == "pull":
            assert all(isinstance(g, np.ndarray) for g in got), got
            for g in got[1:] + [kv.wait(ts)]:
                np.testing.assert_array_equal(g, got[0])
        else:
            assert got == [None] * 3
            assert kv.wait(ts) is None  # acknowledged and forgotten: still not an error
    if op == "pull":  # the values of older pulls are dropped, and the error says so
        for _ in range(kv.keep_pulls):
            kv.wait(kv.pull(keys))
        with pytest.raises(KeyError, match=f"pull {ts} was waited for, and its values"):
            kv.wait(ts)
    kv.close()
