"""The scheduler (server manager and task scheduler, paper sections 4.3 and 4.5)."""

import time

import numpy as np
import pytest

from systems.minips import message as M
from systems.minips.kv import KVWorker
from systems.minips.launcher import ClusterSpec, launch


def test_a_killed_workers_shard_is_finished_by_another_and_bsp_does_not_hang(tmp_path):
    steps = 40
    out = launch(ClusterSpec(servers=2, workers=3, steps=steps, audit=2, app={"name": "count"},
                             step_sleep_s=0.02, worker_timeout=1.0, consistency="bsp"),
                 run_dir=tmp_path, faults=[{"at": 0.5, "kill": "w1"}], progress=False,
                 timeout=90)
    kinds = [e["kind"] for e in out["events"]]
    assert "worker_dead" in kinds and "reassign" in kinds
    heir = next(e["worker"] for e in out["events"] if e["kind"] == "reassign")
    assert heir != "w1" and "w1" not in out["clocks"]  # it never reported
    # the heir did its own shard and the rest of w1's: more clocks than anyone else
    assert out["clocks"][heir] > steps and out["clocks"][heir] < 2 * steps
    audit = out["audit"]
    assert audit["acked_lost"] == 0 and audit["acked_duplicated"] == 0
    assert audit["unacked_duplicated"] == 0 and audit["unacked_applied"] > 0


def test_no_minibatch_of_a_dead_workers_shard_is_skipped(tmp_path):
    """At least once, end to end: w1 dies while a frozen server holds its pushes
    unacknowledged (under ASP it keeps computing, its later pushes queued behind the
    stuck one), and its heir starts from the progress w1 reported. Had w1 reported the
    minibatches it had *sent*, the queued ones would never be applied by anyone."""
    steps = 40
    out = launch(ClusterSpec(servers=2, workers=3, steps=steps, consistency="asp",
                             app={"name": "count", "tally": {"shards": 3, "steps": steps}},
                             step_sleep_s=0.02, worker_timeout=1.0, hb_timeout=10.0),
                 run_dir=tmp_path, progress=False, timeout=90,
                 faults=[{"at": 0.3, "freeze": "s0", "for": 2.5}, {"at": 0.8, "kill": "w1"}])
    assert "reassign" in [e["kind"] for e in out["events"]]
    tally = np.array(out["tally"])
    assert tally.min() >= 1, f"skipped minibatches (shard, step): {np.argwhere(tally < 1)}"
    # only w1's shard can have a repeat, and only the few its heir redid
    assert (tally[[0, 2]] == 1).all()
    assert (tally[1] > 1).sum() <= 10


def test_a_dead_server_without_replicas_fails_the_job_with_its_reason(tmp_path):
    """With replication 1 nobody else holds the dead server's ranges: the job must end
    with the reason, not hang with the ranges' new owners waiting for a copy."""
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="s1 died .* no other server keeps a copy"):
        launch(ClusterSpec(servers=2, workers=2, steps=2000, app={"name": "count"},
                           step_sleep_s=0.01, replication=1),
               run_dir=tmp_path, faults=[{"at": 0.5, "kill": "s1"}], progress=False,
               timeout=60)
    assert time.monotonic() - t0 < 30


def test_registration_errors_are_clear(tmp_path):
    from systems.minips.launcher import Cluster

    with Cluster(ClusterSpec(servers=1, workers=1, app={"name": "count"}, key_max=64),
                 tmp_path) as cl:
        cl.start(workers=False)
        with pytest.raises(M.PSError, match="unknown worker 'w7'"):
            KVWorker(cl.sched_addr, "w7")
        kv = cl.client("reader")
        with pytest.raises(M.PSError, match="already registered"):
            KVWorker(cl.sched_addr, "reader", role="client")
        got = kv.wait(kv.pull(np.arange(4)))  # the failed registrations broke nothing
        assert got.dtype == np.float32 and got.shape == (4, 1)
        np.testing.assert_array_equal(got, np.zeros((4, 1)))  # never pushed: zeros


def test_a_dead_workers_shard_never_goes_to_a_worker_that_has_reported():
    """The least-loaded heir rule would pick a worker that already reported (load 0);
    that worker is about to exit and would never run the shard, so the job would never
    finish. In process: the scheduler's bookkeeping, no servers."""
    from systems.minips.scheduler import Scheduler

    sched = Scheduler({"num_workers": 3, "steps": 10})
    sched.progress.update({0: 10, 1: 4, 2: 10})  # w1 dies half-way through its shard
    sched.workers["w0"]["shards"] = []  # w0 finished and reported: no load at all
    sched.workers["w0"]["exited"] = True
    sched.remove_worker("w1", "no heartbeat")
    assert sched.workers["w2"]["shards"] == [2, 1]
    assert sched.workers["w0"]["shards"] == []
    assert not sched.workers["w2"]["retired"]


def test_the_death_of_the_last_copy_fails_the_job_whatever_the_replication_was():
    """Replication 2, then one death: the ring of one server holds the only copy, so
    the next death loses data and must end the job (it was only logged)."""
    import asyncio

    from systems.minips.scheduler import Scheduler

    async def main():
        s = Scheduler({"num_workers": 1, "num_servers": 2, "key_max": 1000, "vnodes": 4,
                       "replication": 2, "steps": 5, "hb_interval": 0.1})
        s.broadcast = lambda: None  # no servers to tell
        for n in ("s0", "s1"):
            s.servers[n] = {"addr": n, "alive": True, "incarnation": 0, "last_hb": 0}
        s.commit(["s0", "s1"], "initial")
        s.remove_server("s0", "no heartbeat")
        survived = s.failure
        s.remove_server("s1", "no heartbeat")
        return survived, s.failure
    survived, failure = asyncio.run(main())
    assert survived is None and "no other server keeps a copy" in failure
    assert "though the job ran with replication 2" in failure  # not "run with R >= 2"
