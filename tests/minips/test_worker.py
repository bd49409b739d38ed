"""The worker loop: simulated compute, stragglers, and the progress it reports."""

import signal
import time

import numpy as np
import pytest

from systems.minips.cluster import Cluster, ClusterSpec
from systems.minips.launcher import launch
from systems.minips.worker import ShardProgress, straggle_s


def test_persistent_straggler_is_always_the_same_worker():
    cfg = {"num_workers": 4, "step_sleep_s": 0.01,
           "straggler": {"mode": "persistent", "rank": 2, "factor": 4}}
    for c in range(20):
        assert [straggle_s(cfg, r, c) for r in range(4)] == [0.01, 0.01, 0.04, 0.01]


def test_rotating_straggler_is_exactly_one_worker_per_clock():
    cfg = {"num_workers": 4, "step_sleep_s": 0.01,
           "straggler": {"mode": "rotating", "factor": 4, "seed": 3}}
    slow = []
    for c in range(400):
        times = [straggle_s(cfg, r, c) for r in range(4)]
        assert sorted(times) == [0.01, 0.01, 0.01, 0.04]
        slow.append(times.index(0.04))
    counts = [slow.count(r) for r in range(4)]
    assert min(counts) > 60  # every worker takes its turn


def test_progress_counts_a_step_only_once_its_push_is_acknowledged(tmp_path):
    """An heir starts a dead worker's shard at the reported progress, so a step whose
    push never reached the servers must not be in it. A frozen server (SIGSTOP, shorter
    than the failure timeout) holds one push unacknowledged."""
    spec = ClusterSpec(servers=1, workers=0, app={"name": "count"}, key_max=64,
                       hb_timeout=30.0)
    keys, ones = np.arange(8, dtype=np.uint64), np.ones((8, 1), np.float32)
    with Cluster(spec, tmp_path) as cl:
        cl.start(workers=False)
        kv = cl.client("w")
        done = ShardProgress([3], start=5)

        def settled(want: int) -> bool:
            t_end = time.monotonic() + 10
            while done.settle(kv)[3] != want and time.monotonic() < t_end:
                time.sleep(0.01)
            return done.acked[3] == want

        first = kv.push(keys, ones)
        done.pushed(3, first)
        assert settled(6) and done.issued[3] == 6
        cl.signal("s0", signal.SIGSTOP)
        try:
            second = kv.push(keys, ones)
            done.pushed(3, second)
            time.sleep(0.3)
            assert done.settle(kv) == {3: 6} and done.issued[3] == 7  # not acknowledged
        finally:
            cl.signal("s0", signal.SIGCONT)
        assert settled(7)
        kv.wait(first), kv.wait(second)  # settle() did not consume the requests
        np.testing.assert_array_equal(kv.wait(kv.pull(keys)), 2 * ones)


def test_idle_fraction_counts_only_consistency_holds(tmp_path):
    """ASP pulls are never held by a dependency: idle_fraction (time held by servers
    for consistency) must be ~0 (microseconds of bookkeeping), while blocked_fraction
    (all time in wait) is not."""
    out = launch(ClusterSpec(servers=1, workers=2, steps=15, consistency="asp",
                             app={"name": "count"}),
                 run_dir=tmp_path, progress=False, eval_every_s=None, timeout=120)
    import json
    for n in ("w0", "w1"):
        blocked = json.loads((tmp_path / f"report-{n}.json").read_text())["blocked_fraction"]
        assert blocked > 0.05  # the pulls' round trips: most of a count app's step
        assert out["idle_fraction"][n] < 0.01 * blocked, (out["idle_fraction"], blocked)


def test_a_worker_killed_before_its_init_push_leaves_a_model_that_trains(tmp_path):
    """Only worker 0 used to push the MLP's initial values: killed as it started, the
    job ran on from an all-zero MLP (symmetric units; it stayed at chance). Now every
    worker pushes them and the servers keep the first to arrive."""
    from systems.minips.apps import make_app

    spec = ClusterSpec(servers=2, workers=2, steps=60, hb_interval=0.1, hb_timeout=3.0,
                       app={"name": "mlp", "seed": 0, "hidden": 32, "batch": 32, "lr": 0.25,
                            "device": "cpu"})
    with Cluster(spec, tmp_path) as cl:
        cl.start(workers=False)
        kids = cl.start_workers(wait=False)
        cl.group.wait_ready(kids[0], 120)
        cl.signal("w0", signal.SIGKILL)  # as it starts: before its init push is out
        cl.wait_workers(150)
        kv = cl.client("probe")
        keys, vals = kv.wait(kv.pull_range(0, cl.config["app_key_max"]), timeout=60)
        assert cl.status()["progress"] == {"0": 60, "1": 60}  # w1 finished both shards
        assert make_app(cl.config["app"], 2, monitor=True).evaluate(keys, vals)["accuracy"] > 0.6


def test_an_init_push_sets_only_what_is_not_stored_yet(tmp_path):
    """A late init push (its worker was frozen) must not reset trained weights; the first
    one to arrive wins, over real processes and on the replica too."""
    spec = ClusterSpec(servers=2, workers=0, replication=2, app={"name": "count"},
                       key_max=64, hb_timeout=30.0)
    keys = np.arange(8, dtype=np.uint64)
    with Cluster(spec, tmp_path) as cl:
        cl.start(workers=False)
        a, b = cl.client("a"), cl.client("b")
        a.wait(a.push(keys[:4], np.full((4, 1), 5.0, np.float32), cmd="init"))
        a.wait(a.push(keys, np.ones((8, 1), np.float32)))  # training moves them
        b.wait(b.push(keys, np.full((8, 1), 9.0, np.float32), cmd="init"))  # late
        got = a.wait(a.pull(keys)).ravel()
        np.testing.assert_array_equal(got, [6, 6, 6, 6, 1, 1, 1, 1])
        from .conftest import assert_replicas_consistent
        assert_replicas_consistent(cl)


@pytest.mark.parametrize("name", ["worker1", "w", "w1x", "s1"])
def test_a_worker_name_not_w_and_its_rank_is_refused_in_words(name):
    """``lstrip("w")`` read "worker1" as rank "orker1": int()'s message about a string
    the user never typed."""
    from systems.minips.worker import Worker

    with pytest.raises(ValueError, match=f"worker name '{name}': workers are named w0"):
        Worker(name, "127.0.0.1:9")
    assert Worker("w12", "127.0.0.1:9").rank == 12
