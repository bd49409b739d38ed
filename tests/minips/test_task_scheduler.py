"""The task scheduler, the scheduler's worker half (paper sections 3 and 4.6): shards,
heirs of dead workers, the clock set, barriers."""

import asyncio

import numpy as np

from systems.minips.cluster import ClusterSpec
from systems.minips.launcher import launch
from systems.minips.message import decode, encode

from .conftest import heartbeat, in_process_scheduler


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


def test_the_heir_is_the_least_loaded_live_worker():
    """Section 4.5: the unfinished shard goes to the live worker with the least work."""
    s = in_process_scheduler(workers=4)
    s.progress.update({0: 2, 1: 5, 2: 9, 3: 0})  # remaining: w0 8, w2 1, w3 10
    s.remove_worker("w1", "no heartbeat")
    assert s.workers["w2"]["shards"] == [2, 1]
    assert [s.workers[n]["shards"] for n in ("w0", "w3")] == [[0], [3]]


def test_a_retired_heir_rejoins_the_clock_set():
    """w2 finished its own shard and retired (BSP no longer waits for it); when it
    inherits w1's unfinished shard it trains again, so the servers must wait on its
    clocks again, or BSP pulls run ahead of its pushes."""
    s = in_process_scheduler()
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
    s = in_process_scheduler()
    s.progress.update({0: 3, 1: 4, 2: 10})
    s.remove_worker("w1", "no heartbeat")
    r = heartbeat(s, "w2", retire=True, progress={"2": 10}, clock=12)
    assert r["shards"] == [2, 1] and r["progress"] == {"2": 10, "1": 4}
    assert not s.workers["w2"]["retired"] and "w2" in s.clock_workers()
    heartbeat(s, "w2", retire=True, progress={"2": 10, "1": 10}, clock=20)
    assert s.workers["w2"]["retired"]  # both done: now it may


def test_reported_progress_never_moves_back():
    s = in_process_scheduler()
    heartbeat(s, "w0", progress={"0": 7})
    heartbeat(s, "w0", progress={"0": 5})  # a late heartbeat, sent before the other
    assert s.progress[0] == 7


def test_an_heir_starts_from_the_slowest_other_workers_clock():
    s = in_process_scheduler()
    heartbeat(s, "w0", clock=5)
    heartbeat(s, "w1", clock=9)
    assert heartbeat(s, "w2", clock=0)["clock_floor"] == 5


def test_a_barrier_waits_for_every_live_worker():
    s = in_process_scheduler(workers=2)

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
    s = in_process_scheduler()
    v = s.members_version
    asyncio.run(s.Stop(encode({}), None))
    assert s.clock_workers() == [] and s.members_version == v + 1
    assert heartbeat(s, "w0")["stop"] is True


def _register(s, name):
    return decode(asyncio.run(s.Register(encode({"role": "worker", "name": name}), None)))[0]


def test_a_worker_declared_dead_that_starts_again_is_refused_with_the_reason():
    """The only worker is stopped (Ctrl-C) and declared dead: its shard has no heir.
    Started again, it was told "member" with no shard, retired at once, and the job
    waited silently for ever. It cannot simply take the shard back: its new process
    would push at clocks the dead one used, which the servers drop as resends (a review
    showed minibatches lost under ASP and applied twice under BSP), so it is refused
    and told why; with an heir, it is refused too (its shard is being run)."""
    s = in_process_scheduler(workers=1)
    s.progress[0] = 4
    s.remove_worker("w0", "no heartbeat")
    r = _register(s, "w0")
    assert r["status"] == "error" and "w0 was declared dead" in r["message"]
    assert "shards [0] have no live worker left" in r["message"]
    assert not s.workers["w0"]["alive"] and not heartbeat(s, "w0")["member"]

    s = in_process_scheduler(workers=2)
    s.progress.update({0: 3, 1: 5})
    s.remove_worker("w1", "no heartbeat")
    r = _register(s, "w1")
    assert r["status"] == "error" and "its shards went to the live workers" in r["message"]
    assert s.workers["w0"]["shards"] == [0, 1]
    assert _register(s, "w0")["status"] == "member"  # a live worker still may


def test_a_worker_restarted_after_it_inherited_a_shard_is_refused_and_its_shards_move():
    """A restart before the worker is declared dead is exact only for a worker that ran
    its own shard alone (clock c is its minibatch c). After inheriting, the new process
    would push other minibatches at clocks the servers drop as resends, or apply twice:
    it is declared dead at once and refused, and its shards go to an heir. A second
    process under a name whose first one still sends heartbeats is refused too."""
    s = in_process_scheduler(workers=3, steps=10)
    for w in ("w0", "w1", "w2"):
        assert _register(s, w)["status"] == "member"
    s.progress.update({0: 6, 1: 2, 2: 4})
    s.remove_worker("w1", "no heartbeat")  # w0 (the least work left) inherits shard 1
    assert s.workers["w0"]["shards"] == [0, 1]
    heartbeat(s, "w2", clock=6)
    r = _register(s, "w2")  # its first process is alive (heartbeat just now)
    assert r["status"] == "error" and "is registered and sending heartbeats" in r["message"]
    assert s.workers["w2"]["alive"]
    for w in ("w0", "w2"):
        s.workers[w]["last_hb"] -= 1.0  # both stopped a second ago, not yet declared dead
    assert _register(s, "w2")["status"] == "member"  # its own shard only: exact
    r = _register(s, "w0")
    assert r["status"] == "error" and "restarted after it had inherited" in r["message"]
    # nor does the restarted w2 inherit them: it redoes clocks 0..6, which the servers
    # drop as resends, and shard 0's or 1's minibatches sent at those would be lost
    assert not s.workers["w0"]["alive"] and s.workers["w2"]["shards"] == [2]
    assert "shards [0, 1] have no live worker left" in r["message"]
    assert [e["kind"] for e in s.events].count("shard_orphaned") == 2
