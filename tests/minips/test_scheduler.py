"""The scheduler's server half: membership, the ring, failures (paper sections 4.3 and 4.5).
The worker half is in test_task_scheduler.py."""

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

from .conftest import heartbeat, in_process_scheduler


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


def test_the_death_of_the_last_copy_fails_the_job_whatever_the_replication_was():
    """Replication 2, then one death: the ring of one server holds the only copy, so
    the next death loses data and must end the job (it was only logged)."""
    import asyncio


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


def test_a_join_abandoned_by_its_servers_reset_cannot_complete_the_next_one():
    """s3 joins, is frozen during its pre-copy and dropped, wakes, resets and registers
    again (incarnation 1). Its first join, still running in the same process, finished
    and called JoinReady: with the same name and pending epoch it was let in, and the
    ring took a master whose copies the reset had wiped (with replication 1 the job then
    failed as "values lost"). Only the incarnation the pending ring went to may switch."""
    s = _ring_of_three()

    def call(method, **meta):
        return decode(asyncio.run(getattr(s, method)(encode(meta), None)))[0]
    first = call("Register", role="server", name="s3", addr="s3")
    assert first["status"] == "join" and first["incarnation"] == 0
    s.remove_server("s3", "no heartbeat")  # frozen during its pre-copy
    again = call("Register", role="server", name="s3", addr="s3")
    assert again["status"] == "join" and again["incarnation"] == 1
    epoch = again["pending"]["epoch"]
    assert not call("JoinReady", name="s3", epoch=epoch, incarnation=0)["ok"]
    assert "s3" not in s.ring_servers and s.joining == "s3"  # the new join goes on
    assert call("JoinReady", name="s3", epoch=epoch, incarnation=1)["ok"]
    assert "s3" in s.ring_servers


def test_a_silent_server_is_removed_after_hb_timeout_not_worker_timeout():
    """Servers are judged by hb_timeout (0.3 s here), workers by worker_timeout (30 s)."""
    s = in_process_scheduler()

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


def test_a_pause_of_the_scheduler_itself_is_not_taken_for_the_servers_silence():
    """SIGSTOP of the scheduler for 1.5 s (or a stall of its VM): on waking, its
    monitor found every server silent for longer than hb_timeout, removed them one by
    one, and failed the job as "values lost" though no server had died. Time the
    monitor did not run is excused; silence while it ran is still judged."""
    s = in_process_scheduler(hb_timeout=1.0)
    t = time.monotonic()
    for n in ("s0", "s1", "s2"):
        s.servers[n] = {"addr": n, "alive": True, "incarnation": 0, "last_hb": t}
    s.commit(["s0", "s1", "s2"], "initial")
    s.watchdog.last = t
    s.check_nodes(t + 1.5)  # the first round after a pause of 1.5 s
    assert s.failure is None and s.ring_servers == ["s0", "s1", "s2"]
    assert [e["kind"] for e in s.events][-1] == "scheduler_stalled"
    for k in range(1, 80):  # the monitor runs every 0.025 s; s2 stays silent
        now = t + 1.5 + 0.025 * k
        for n in ("s0", "s1"):
            s.servers[n]["last_hb"] = now
        s.check_nodes(now)
        if s.ring_servers == ["s0", "s1"]:
            break
    assert s.ring_servers == ["s0", "s1"] and s.failure is None
    assert 0.9 < now - (t + 1.5) < 1.1  # judged over the time the monitor ran


def test_stalls_excuse_a_dead_servers_silence_once_and_a_late_round_not_at_all():
    """A monitor round late by less than half of hb_timeout is a busy loop that read
    heartbeats all along: not excused. A scheduler stalled 0.95 s in every round of a
    second still finds a dead server after about two seconds (each stall is excused for
    one hb_timeout after it, not summed for ever: it took 17 s), and a restarted worker
    is judged by its real last heartbeat (a stall once made it look alive, and refused)."""
    s = in_process_scheduler(hb_timeout=1.0, hb_interval=0.1)
    t = time.monotonic()
    for n in ("s0", "s1", "s2"):
        s.servers[n] = {"addr": n, "alive": True, "incarnation": 0, "last_hb": t}
    s.commit(["s0", "s1", "s2"], "initial")
    s.watchdog.last = t
    s.check_nodes(t + 0.4)  # late by 0.35 s
    assert not s.watchdog.stalls and "scheduler_stalled" not in [e["kind"] for e in s.events]
    now = t + 0.4
    while "s2" in s.ring_servers:
        now += 1.0  # a stall of 0.95 s before each round; s0 and s1 are heard after it
        s.check_nodes(now)
        for n in ("s0", "s1"):
            s.servers[n]["last_hb"] = now
        assert now - t < 5, "a dead server escaped detection"
    assert now - t < 3.5 and s.ring_servers == ["s0", "s1"]
    assert s.servers["s2"]["last_hb"] == t  # the record of heartbeats is left as heard


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
    s = in_process_scheduler(**cfg)
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
        in s.failure and "servers s1 left the ring" in s.failure
    assert heartbeat(s, "w0")["failure"] == s.failure  # every node learns it
    r = decode(asyncio.run(s.Register(encode({"role": "server", "name": "s1",
                                              "addr": "s1"}), None)))[0]
    assert r["status"] == "failed"  # a restarted server does not try to join forever


def test_the_lost_ranges_name_every_server_that_left_even_one_that_came_back():
    """s0 froze past hb_timeout and was declared dead; s1 died before s0's ranges were
    copied again. s0 woke and registers to join, alive again: the failure named only
    s1, one death, which replication 2 is documented to survive."""
    s = _ring_of_three(loss_grace_s=1.0)
    s.remove_server("s0", "no heartbeat")
    r = decode(asyncio.run(s.Register(encode({"role": "server", "name": "s0",
                                              "addr": "s0"}), None)))[0]
    assert r["status"] == "join"
    s.remove_server("s1", "no heartbeat")
    _report(s, "s2", [(500, 1000)])
    s.check_copies(10.0)
    s.check_copies(11.0)
    assert "servers s0 (declared dead, since back), s1 left the ring, more at once than " \
        "replication 2 survives" in s.failure


def test_servers_that_left_while_every_range_kept_a_copy_are_not_named_later():
    s = _ring_of_three(loss_grace_s=1.0)
    s.remove_server("s0", "no heartbeat")
    _report(s, "s1", [(0, 600)])
    _report(s, "s2", [(400, 1000)])
    s.check_copies(5.0)  # every range has a copy again: s0's leaving cost nothing
    s.remove_server("s1", "no heartbeat")
    _report(s, "s2", [(400, 1000)])
    s.check_copies(10.0)
    s.check_copies(11.0)
    assert "servers s1 left the ring" in s.failure and "s0" not in s.failure


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
    s = in_process_scheduler(loss_grace_s=1.0)
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
