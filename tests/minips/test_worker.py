"""The worker loop: simulated compute, stragglers, and the progress it reports."""

import signal
import time

import numpy as np

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
