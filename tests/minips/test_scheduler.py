"""The scheduler (server manager and task scheduler, paper sections 4.3 and 4.5)."""

import asyncio
import signal
import time

import numpy as np
import pytest

from systems.minips import message as M
from systems.minips.cluster import Cluster, ClusterSpec
from systems.minips.kv import KVWorker
from systems.minips.launcher import launch
from systems.minips.message import decode, encode
from systems.minips.scheduler import Scheduler


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


def test_a_worker_started_before_the_servers_is_not_declared_dead(tmp_path):
    """Nodes may start in any order, but a worker only began its heartbeats once the ring
    had formed: started more than worker_timeout before the servers, it was declared
    dead before it began, and the job then waited for its shard for ever."""
    with Cluster(ClusterSpec(servers=1, workers=1, steps=3, app={"name": "count"},
                             worker_timeout=0.5), tmp_path) as cl:
        cl.start(workers=False, servers=False)
        cl.start_workers(wait=False)
        time.sleep(1.5)  # three worker timeouts, and no ring yet
        cl.add_server("s0")
        cl.wait_workers(timeout=30)
        st = cl.status()
    assert {int(k): v for k, v in st["progress"].items()} == {0: 3}  # its shard, done


def test_a_worker_interrupted_while_it_waits_for_the_ring_stops_its_heartbeats(
        tmp_path, monkeypatch):
    """The heartbeats start at registration; a worker whose wait for the ring ends in an
    exception (Ctrl-C) must stop them, or the scheduler never finds it dead nor hands its
    shard on."""
    import threading

    def interrupted(self):  # Ctrl-C reaches the main thread; the heartbeats see no ring
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        return 0
    with Cluster(ClusterSpec(servers=1, workers=1, app={"name": "count"}), tmp_path) as cl:
        cl.start(workers=False, servers=False)
        monkeypatch.setattr(KVWorker, "_refresh_ring", interrupted)
        with pytest.raises(KeyboardInterrupt):
            KVWorker(cl.sched_addr, "w0")
        t_end = time.monotonic() + 2
        while any("_heartbeats" in t.name for t in threading.enumerate()):
            assert time.monotonic() < t_end, "the heartbeat thread outlived its worker"
            time.sleep(0.05)


def test_a_worker_pointed_at_a_server_says_it_is_no_scheduler():
    """Every node prints READY with its address; a worker given a server's said "the
    scheduler ... refused to register 'w0': Method not found!" of a node that is none."""
    from common import rpc

    server, port = rpc.serve(M.SERVICE, {"Push": lambda req, ctx: req})  # a server's API
    try:
        with pytest.raises(M.PSError, match=r"is not a minips scheduler \(a server's"):
            KVWorker(f"127.0.0.1:{port}", "w0", connect_s=5)
    finally:
        server.stop(0)


def test_registration_errors_are_clear(tmp_path):

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


def test_a_second_live_server_with_the_same_name_is_refused_not_swapped_in():
    """Two servers left at the default --name s0 took the name from each other at every
    heartbeat (each registration made the other a non-member, which registered again),
    and no ring ever formed. A restarted server, whose predecessor has gone quiet, is
    still let in."""
    import asyncio

    from systems.minips.scheduler import Scheduler

    async def main():
        s = Scheduler({"num_workers": 1, "num_servers": 2, "key_max": 1000, "vnodes": 4,
                       "replication": 1, "steps": 5, "hb_interval": 0.1})
        s.broadcast = lambda: None

        async def register(addr):
            return decode(await s.Register(encode({"role": "server", "name": "s0",
                                                   "addr": addr}), None))[0]
        first = await register("10.0.0.1:5000")
        second = await register("10.0.0.2:5000")  # s0 at 10.0.0.1 heartbeats still
        s.servers["s0"]["last_hb"] -= 1.0          # ... and now it has gone quiet
        restarted = await register("10.0.0.2:5000")
        return first, second, restarted, s.servers["s0"]["addr"]
    first, second, restarted, addr = asyncio.run(main())
    assert first["status"] == "member" and restarted["status"] == "member"
    assert second["status"] == "duplicate" and "10.0.0.1:5000" in second["message"]
    assert "its own --name" in second["message"] and addr == "10.0.0.2:5000"


def _sched(workers=3, steps=10, **cfg):
    s = Scheduler({"num_workers": workers, "steps": steps, "num_servers": 2, "key_max": 1000,
                   "vnodes": 4, "replication": 2, "hb_interval": 0.05, "hb_timeout": 0.3,
                   "worker_timeout": 30.0, **cfg})
    s.broadcast = lambda: None  # no servers to tell
    return s


def _hb(s, name, **meta):
    return decode(asyncio.run(s.Heartbeat(encode({"role": "worker", "name": name, **meta}),
                                          None)))[0]


def test_the_heir_is_the_least_loaded_live_worker():
    """Section 4.5: the unfinished shard goes to the live worker with the least work."""
    s = _sched(workers=4)
    s.progress.update({0: 2, 1: 5, 2: 9, 3: 0})  # remaining: w0 8, w2 1, w3 10
    s.remove_worker("w1", "no heartbeat")
    assert s.workers["w2"]["shards"] == [2, 1]
    assert [s.workers[n]["shards"] for n in ("w0", "w3")] == [[0], [3]]


def test_a_retired_heir_rejoins_the_clock_set():
    """w2 finished its own shard and retired (BSP no longer waits for it); when it
    inherits w1's unfinished shard it trains again, so the servers must wait on its
    clocks again, or BSP pulls run ahead of its pushes."""
    s = _sched()
    s.progress.update({0: 3, 1: 4, 2: 10})
    s.workers["w2"]["retired"] = True
    s.workers["w0"]["shards"].append(99)  # w0 is the busier one
    s.progress[99] = 0
    assert s.clock_workers() == ["w0", "w1"]
    s.remove_worker("w1", "no heartbeat")
    assert s.workers["w2"]["shards"] == [2, 1]
    assert s.clock_workers() == ["w0", "w2"]


def test_a_worker_with_an_unfinished_inherited_shard_cannot_retire():
    """A heartbeat that still says retire (sent before the worker saw its new shard)
    must not take the heir out of the clock set while that shard is unfinished."""
    s = _sched()
    s.progress.update({0: 3, 1: 4, 2: 10})
    s.remove_worker("w1", "no heartbeat")
    r = _hb(s, "w2", retire=True, progress={"2": 10}, clock=12)
    assert r["shards"] == [2, 1] and r["progress"] == {"2": 10, "1": 4}
    assert not s.workers["w2"]["retired"] and "w2" in s.clock_workers()
    _hb(s, "w2", retire=True, progress={"2": 10, "1": 10}, clock=20)
    assert s.workers["w2"]["retired"]  # both done: now it may


def test_reported_progress_never_moves_back():
    s = _sched()
    _hb(s, "w0", progress={"0": 7})
    _hb(s, "w0", progress={"0": 5})  # a late heartbeat, sent before the other
    assert s.progress[0] == 7


def test_an_heir_starts_from_the_slowest_other_workers_clock():
    s = _sched()
    _hb(s, "w0", clock=5)
    _hb(s, "w1", clock=9)
    assert _hb(s, "w2", clock=0)["clock_floor"] == 5


def test_a_barrier_waits_for_every_live_worker():
    s = _sched(workers=2)

    async def main():
        first = asyncio.ensure_future(s.Barrier(encode({"name": "w0", "barrier": "b"}), None))
        await asyncio.sleep(0.5)
        early = first.done()
        await s.Barrier(encode({"name": "w1", "barrier": "b"}), None)
        await asyncio.wait_for(first, 2.0)
        return early
    assert asyncio.run(main()) is False


def test_stop_takes_every_worker_out_of_the_clock_set():
    """Stop: workers finish their current step and exit; a BSP pull of one must not
    wait on another that will never push the next clock."""
    s = _sched()
    v = s.members_version
    asyncio.run(s.Stop(encode({}), None))
    assert s.clock_workers() == [] and s.members_version == v + 1
    assert _hb(s, "w0")["stop"] is True


def test_a_silent_server_is_removed_after_hb_timeout_not_worker_timeout():
    """Servers are judged by hb_timeout (0.3 s here), workers by worker_timeout (30 s)."""
    s = _sched()

    async def main():
        for n in ("s0", "s1", "s2"):
            s.servers[n] = {"addr": n, "alive": True, "incarnation": 0,
                            "last_hb": time.monotonic()}
        s.commit(["s0", "s1", "s2"], "initial")
        mon = asyncio.ensure_future(s.monitor())
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end and s.servers["s2"]["alive"]:
            for n in ("s0", "s1"):
                s.servers[n]["last_hb"] = time.monotonic()
            await asyncio.sleep(0.05)
        mon.cancel()
        return time.monotonic() - (t_end - 3)
    took = asyncio.run(main())
    assert not s.servers["s2"]["alive"] and s.ring_servers == ["s0", "s1"]
    assert took < 2.0
    assert all(w["alive"] for w in s.workers.values())


def test_after_the_job_failed_every_new_request_fails_at_once_with_the_reason(
        one_copy_pushed):
    """recovery._job_failed: once the scheduler ends the job (a server died holding the
    only copy), a new request must fail with that reason, not be resent forever."""
    cl, kv, keys = one_copy_pushed
    cl.signal("s1", signal.SIGKILL)
    t_end = time.monotonic() + 20
    while not kv.hb_state.get("failure") and time.monotonic() < t_end:
        time.sleep(0.05)
    assert "s1 died" in kv.hb_state["failure"]
    time.sleep(0.2)  # the heartbeat thread records it right after
    # refused when made (KVWorker._new), not sent and failed by a later heartbeat:
    # a push sent after the failure could still be applied by a surviving server
    with pytest.raises(M.PSError, match="no other server keeps a copy"):
        kv.pull(keys)
    with pytest.raises(M.PSError, match="no other server keeps a copy"):
        kv.push(keys, np.ones((64, 1), np.float32))


def _ring_of_three(**cfg):
    s = _sched(**cfg)
    for n in ("s0", "s1", "s2"):
        s.servers[n] = {"addr": n, "alive": True, "incarnation": 0, "last_hb": 0}
    s.commit(["s0", "s1", "s2"], "initial")
    return s


def _report(s, name, held, epoch=None):
    asyncio.run(s.Heartbeat(encode({"role": "server", "name": name, "incarnation": 0,
                                    "epoch": s.epoch if epoch is None else epoch,
                                    "held": held}), None))


def test_a_range_no_live_server_holds_fails_the_job_once_the_gap_outlasts_the_grace():
    """check_copies: s0 and s2 report the current ring, and [300, 500) is in neither's
    complete set. The job fails after loss_grace_s, naming the range and the dead."""
    s = _ring_of_three(loss_grace_s=1.0)
    s.remove_server("s1", "no heartbeat")
    _report(s, "s0", [(0, 300)])
    _report(s, "s2", [(500, 1000)])
    s.check_copies(10.0)
    s.check_copies(10.9)
    assert s.failure is None  # a copy may be in flight for a moment
    s.check_copies(11.0)
    assert "no live server holds a complete copy of key ranges [300, 500) (200 keys)" \
        in s.failure and "['s1'] died" in s.failure
    assert _hb(s, "w0")["failure"] == s.failure  # every node learns it
    r = decode(asyncio.run(s.Register(encode({"role": "server", "name": "s1",
                                              "addr": "s1"}), None)))[0]
    assert r["status"] == "failed"  # a restarted server does not try to join forever


def test_a_gap_that_closes_within_the_grace_or_an_old_report_fails_nothing():
    s = _ring_of_three(loss_grace_s=1.0)
    s.remove_server("s1", "no heartbeat")
    _report(s, "s0", [(0, 300)])
    _report(s, "s2", [(500, 1000)], epoch=s.epoch - 1)  # not yet in the current ring
    s.check_copies(10.0)
    s.check_copies(20.0)
    assert s.failure is None and s.uncovered_since is None  # undecided, not a gap
    _report(s, "s2", [(500, 1000)])
    s.check_copies(21.0)
    _report(s, "s0", [(0, 500)])  # the copy came
    s.check_copies(21.5)
    s.check_copies(30.0)
    assert s.failure is None and s.uncovered_since is None


def test_servers_waiting_for_the_initial_ring_are_not_a_lost_range():
    """Before the first ring (epoch 0) a registered server holds nothing and says so in
    its heartbeats; a second server registering after loss_grace_s (started by hand on
    another machine) must find the job alive, not failed before it began (a review
    reproduced it with real processes: a 5 s gap failed the job)."""
    s = _sched(loss_grace_s=1.0)
    asyncio.run(s.Register(encode({"role": "server", "name": "s0", "addr": "s0"}), None))
    _report(s, "s0", [])
    s.check_copies(10.0)
    s.check_copies(12.0)
    assert s.failure is None
    asyncio.run(s.Register(encode({"role": "server", "name": "s1", "addr": "s1"}), None))
    assert s.epoch == 1 and s.failure is None


def test_a_gap_is_timed_within_one_ring_not_across_an_undecided_spell():
    """A one-tick gap in ring e, a ring change, a server slow to report ring e + 1, then
    a one-tick gap there: no gap lasted loss_grace_s, so nothing fails (with
    replication 1 every join has such a gap)."""
    s = _ring_of_three(loss_grace_s=1.0)
    _report(s, "s0", [(0, 300)])
    _report(s, "s1", [(300, 500)])
    _report(s, "s2", [(600, 1000)])  # [500, 600) in flight for a moment
    s.check_copies(10.0)
    s.commit(["s0", "s1", "s2"], "again")  # the ring moves on
    for t in (10.1, 10.6, 11.2):  # s2 has not reported the new ring yet
        s.check_copies(t)
    _report(s, "s0", [(0, 300)])
    _report(s, "s1", [(300, 500)])
    _report(s, "s2", [(600, 1000)])  # again one tick with a copy in flight
    s.check_copies(11.3)
    assert s.failure is None


def _register(s, name):
    return decode(asyncio.run(s.Register(encode({"role": "worker", "name": name}), None)))[0]


def test_a_worker_declared_dead_that_starts_again_is_refused_with_the_reason():
    """The only worker is stopped (Ctrl-C) and declared dead: its shard has no heir.
    Started again, it was told "member" with no shard, retired at once, and the job
    waited silently for ever. It cannot simply take the shard back: its new process
    would push at clocks the dead one used, which the servers drop as resends (a review
    showed minibatches lost under ASP and applied twice under BSP), so it is refused
    and told why; with an heir, it is refused too (its shard is being run)."""
    s = _sched(workers=1)
    s.progress[0] = 4
    s.remove_worker("w0", "no heartbeat")
    r = _register(s, "w0")
    assert r["status"] == "error" and "w0 was declared dead" in r["message"]
    assert "shards [0] have no live worker left" in r["message"]
    assert not s.workers["w0"]["alive"] and not _hb(s, "w0")["member"]

    s = _sched(workers=2)
    s.progress.update({0: 3, 1: 5})
    s.remove_worker("w1", "no heartbeat")
    r = _register(s, "w1")
    assert r["status"] == "error" and "its shards went to the live workers" in r["message"]
    assert s.workers["w0"]["shards"] == [0, 1]
    assert _register(s, "w0")["status"] == "member"  # a live worker still may
