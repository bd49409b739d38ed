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
