"""Ring changes (systems/minips/transitions.py), in process: one real KVServer object and
no other processes. Its peers' addresses refuse connections, so the copies a transition
sends fail at once, and each test delivers the copies the server receives. The process-
level fault tests (kill -9, freezing, partitions, joins) are in test_replication.py."""

import asyncio

import numpy as np

from systems.minips import message as M
from systems.minips import transitions
from systems.minips.clock import NEVER
from systems.minips.ring import Ring, intersect, subtract
from systems.minips.server import KVServer
from systems.minips.transitions import booked, note, restrict


def _server_on(ring):
    async def make():
        s = KVServer("s0", "127.0.0.1:9", "127.0.0.1")
        s.configure({"val_len": 1, "key_max": ring.key_max,
                     "updater": {"name": "sgd", "lr": 0.1}})
        s.addrs = {n: "127.0.0.1:9" for n in ring.servers}
        await s.repl.transition(ring)
        return s
    return make()


def _whole_copy(epoch, ranges, keys, value, **kind):
    k = np.array(keys, np.uint64)
    v = np.full((k.size, 1), value, np.float32)
    return M.encode({"op": "sync", "epoch": epoch, "from": "s1", "ranges": ranges,
                     "clocks": {}, "full": True, **kind}, k, v, [np.zeros_like(v)])


def _rings():
    three = dict(key_max=1000, vnodes=4, replication=2)
    # s2 dies at epoch 3: s0 becomes a new replica of (514, 596) and (737, 917)
    return (Ring(["s0", "s1", "s2"], epoch=1, **three),
            Ring(["s0", "s1", "s2"], epoch=2, **three), Ring(["s0", "s1"], epoch=3, **three))


def test_a_copy_for_a_later_ring_still_counts_after_an_intermediate_transition():
    """A backup copy sent in ring 3 reaches s0 while it is still in ring 1; s0 then moves
    through ring 2 to ring 3. The copy must still count there: the range is not waiting
    for a copy that already came (it used to be forgotten at the end of ring 2's
    transition, and a replica range then waited for good)."""
    r1, r2, r3 = _rings()

    async def run():
        s = await _server_on(r1)
        await s.repl._sync(_whole_copy(3, [(514, 596)], [520], 7.0, backup=True))
        await s.repl.transition(r2)
        await s.repl.transition(r3)
        return s
    s = asyncio.run(run())
    assert s.repl.unsynced == [(737, 917)]
    assert s.store.get(np.array([520], np.uint64)).item() == 7.0


def test_a_copy_that_comes_mid_transition_counts_for_the_ring_being_entered(
        monkeypatch):
    """Replication 3 on four servers; s1 dies at ring 3, where s0 becomes a new replica
    of (514, 596) and, in step 1, sends backup copies to s2. While it waits on the first
    of those sends, the master's copy of (514, 596) for ring 3 arrives: s0 has taken
    epoch 3 but not yet worked out what waits in it. The copy must count (it used to be
    judged by ring 2's waiting sets, dropped, and waited for again)."""
    kw = dict(key_max=1000, vnodes=4, replication=3)
    r1, r2 = Ring(["s0", "s1", "s2", "s3"], epoch=1, **kw), \
        Ring(["s0", "s1", "s2", "s3"], epoch=2, **kw)
    r3 = Ring(["s0", "s2", "s3"], epoch=3, **kw)
    came = []

    async def run():
        s = await _server_on(r1)
        await s.repl.transition(r2)
        backup = s.repl.backup

        async def backup_while_a_copy_comes(replica, ranges):
            if not came:
                came.append(s.repl.next_epoch)
                await s.repl._sync(_whole_copy(3, [(514, 596)], [520], 7.0))
            await backup(replica, ranges)
        monkeypatch.setattr(s.repl, "backup", backup_while_a_copy_comes)
        await s.repl.transition(r3)
        return s
    s = asyncio.run(run())
    assert came == [3]  # the copy came inside step 1 of the transition to ring 3
    assert not any(b < 596 and 514 < e for b, e in s.repl.unsynced), s.repl.unsynced
    assert s.store.get(np.array([520], np.uint64)).item() == 7.0


def test_a_masters_copy_for_an_older_ring_never_overwrites_one_booked_for_a_later_ring():
    """s0, still in ring 1, gets a copy of (514, 596) sent in ring 3 (booked for it), then
    a master's whole copy of the same range sent in ring 2, which is older: it must not
    overwrite the newer data."""
    r1, _, _ = _rings()

    async def run():
        s = await _server_on(r1)
        await s.repl._sync(_whole_copy(3, [(514, 596)], [520], 7.0))
        await s.repl._sync(_whole_copy(2, [(514, 596)], [520], 1.0))
        return s
    s = asyncio.run(run())
    assert s.store.get(np.array([520], np.uint64)).item() == 7.0


def test_no_copy_overwrites_a_range_its_receiver_holds_complete():
    """s0 holds (0, 514) in ring 1 with pushes applied; a late whole copy of part of it,
    sent for ring 2 by a server that thought s0 lacked it, must not roll it back."""
    r1, _, _ = _rings()

    async def run():
        s = await _server_on(r1)
        s.store.assign(np.array([10], np.uint64), np.array([[5.0]], np.float32))
        await s.repl._sync(_whole_copy(2, [(0, 100)], [10], 0.0, backup=True))
        await s.repl._sync(_whole_copy(2, [(0, 100)], [10], 0.0, catchup=True))
        return s
    s = asyncio.run(run())
    assert s.store.get(np.array([10], np.uint64)).item() == 5.0
    assert s.repl.caught_up == {} and s.repl.synced == {}


def test_an_untracked_snapshot_is_refused_for_ranges_not_held_complete():
    """The fallback copy a new master asks for must be the data: a server answers only
    for ranges it holds complete (not ones it dropped or still waits for)."""
    r1, _, _ = _rings()

    async def run():
        s = await _server_on(r1)
        s.store.assign(np.array([10], np.uint64), np.array([[5.0]], np.float32))
        s.repl.unsynced = [(50, 100)]  # held in the ring, but waiting for its copy
        return [M.decode(await s.repl.Snapshot(M.encode({"ranges": r, "track": False}), None))
                for r in ([(0, 50)], [(514, 596)], [(40, 60)])]
    (ok, keys, vals, _), (other, *_), (waiting, *_) = asyncio.run(run())
    assert ok["code"] == M.OK and keys.tolist() == [10] and vals.ravel().tolist() == [5.0]
    assert other["code"] == M.NOT_HELD and waiting["code"] == M.NOT_HELD


def _snapshot(s, ranges, key, value, install):
    """What the real ``fetch`` does with a holder's whole copy of ``ranges``: install it
    and return its meta, or with ``install=False`` return it to the caller."""
    k = np.array([key], np.uint64)
    v = np.full((1, 1), value, np.float32)
    meta = {"code": M.OK, "ranges": ranges, "clocks": {}}
    if install:
        s.repl.install({**meta, "full": True}, k, v, np.zeros_like(v))
        return meta
    return meta, k, v, np.zeros_like(v)


def _fallback_run(monkeypatch, make_fetch, seconds):
    """s0 in ring 3 with two ranges waiting for a catch-up that never came; its fallback
    runs every 50 ms for ``seconds`` with ``make_fetch(s0)`` in place of the real RPC."""
    r1, r2, r3 = _rings()

    async def run():
        s = await _server_on(r1)
        await s.repl.transition(r2)
        await s.repl.transition(r3)
        s.repl.not_ready = [(514, 596), (737, 917)]
        monkeypatch.setattr(transitions, "CATCHUP_TIMEOUT_S", 0.05)
        monkeypatch.setattr(s.repl, "fetch", make_fetch(s))
        task = asyncio.ensure_future(s.repl.await_catchup(r2, s.epoch))
        await asyncio.sleep(seconds)
        task.cancel()
        return s
    return asyncio.run(run())


def test_the_catch_up_fallback_serves_only_what_a_holder_could_give(monkeypatch):
    """Two ranges wait for a catch-up that never comes; a surviving holder can give one.
    That one is installed and served; the other keeps waiting (and is asked for again)
    instead of being served empty. Every request is for a part that waits."""
    asked = []

    def make_fetch(s):
        async def fetch(server, ranges, track, install=True):
            asked.append((server, ranges, track))
            if ranges[0][0] >= 514 and ranges[0][1] <= 596:
                return _snapshot(s, ranges, 520, 3.0, install)
            return None
        return fetch
    s = _fallback_run(monkeypatch, make_fetch, 0.4)
    assert s.repl.not_ready == [(737, 917)]
    assert s.store.get(np.array([520], np.uint64)).item() == 3.0
    assert all(track is False and server == "s1" for server, _, track in asked)
    waiting = [(514, 596), (737, 917)]
    assert all(any(b <= rb and re <= e for b, e in waiting) for _, r, _ in asked
               for rb, re in r)
    assert sum(737 <= r[0][0] < 917 for _, r, _ in asked) >= 2  # asked for again


def test_a_fallback_copy_never_lands_on_a_catch_up_that_came_while_it_was_asked_for(
        monkeypatch):
    """The real catch-up of (514, 596) arrives while the fallback's request for it is in
    flight, and is served; the holder's older snapshot that comes back after it must not
    be installed over it (that would roll acknowledged pushes back)."""
    def make_fetch(s):
        async def fetch(server, ranges, track, install=True):
            if ranges[0][0] >= 514 and ranges[0][1] <= 596:
                await s.repl._sync(_whole_copy(3, [(514, 596)], [520], 9.0, catchup=True))
                await asyncio.sleep(0.01)  # finish() runs: (514, 596) is served
                return _snapshot(s, ranges, 520, 1.0, install)
            return None
        return fetch
    s = _fallback_run(monkeypatch, make_fetch, 0.2)
    assert s.store.get(np.array([520], np.uint64)).item() == 9.0
    assert s.repl.not_ready == [(737, 917)]


def test_booked_counts_the_epochs_after_and_up_to_its_bounds():
    """``booked(book, after, upto)`` is the copies for rings of epochs in (after, upto]:
    a copy for the ring being left is not 'for a later ring'."""
    book = {}
    note(book, 2, [(0, 10)])
    note(book, 3, [(10, 20)])
    note(book, 4, [(30, 40)])
    assert booked(book, after=3) == [(30, 40)]
    assert booked(book, upto=3) == [(0, 20)]
    assert booked(book, after=2, upto=3) == [(10, 20)]


def test_restrict_cuts_the_clocks_to_the_kept_ranges():
    """A copy cut down to the ranges its receiver still waits for must not bring clocks
    for the rest: they would overwrite the receiver's own clocks there."""
    meta = {"ranges": [(0, 300)],
            "clocks": {"w0": [(0, 100, 5), (100, 300, 7)], "w1": [(0, 300, 2)]}}
    restrict(meta, [(50, 150), (250, 260)])
    assert meta["ranges"] == [(50, 150), (250, 260)]
    assert meta["clocks"] == {"w0": [(50, 100, 5), (100, 150, 7), (250, 260, 7)],
                              "w1": [(50, 150, 2), (250, 260, 2)]}


def test_a_snapshot_asked_for_by_a_server_in_a_newer_ring_is_refused():
    """Our ring may be wrong when the asker is ahead: a range we still think we hold
    may have moved on, and a copy of it could be stale."""
    r1, _, _ = _rings()

    async def run():
        s = await _server_on(r1)
        s.store.assign(np.array([10], np.uint64), np.array([[5.0]], np.float32))
        s.refresh_soon = lambda: None  # no scheduler here
        return [M.decode(await s.repl.Snapshot(M.encode({"ranges": [(0, 50)], "track": False,
                                                          "epoch": e}), None))[0]
                for e in (1, 2)]
    same, ahead = asyncio.run(run())
    assert same["code"] == M.OK and ahead["code"] == M.NOT_HELD


def test_a_broken_master_resends_every_range_to_every_replica(monkeypatch):
    """A master whose forward failed is broken: in its next transition it copies every
    range it masters to all its replicas, not only to the new ones."""
    r1, r2, _ = _rings()
    sent = []

    async def run():
        s = await _server_on(r1)

        async def sync_to(replica, ranges):
            sent.append((replica, ranges))
            return True
        monkeypatch.setattr(s.repl, "sync_to", sync_to)
        s.repl.broken = True
        await s.repl.transition(r2)  # the same servers: no replica is new
        return s
    s = asyncio.run(run())
    want = {(r, (pc.begin, pc.end)) for pc in r2.pieces if pc.master == "s0"
            for r in pc.replicas}
    assert want and {(r, tuple(x)) for r, rs in sent for x in rs} == want
    assert s.repl.broken is False  # every copy went through


def test_a_caught_up_range_whose_replica_copy_failed_leaves_the_master_broken(monkeypatch):
    """finish(): the new master serves a caught-up range, but if copying it to a replica
    failed, that replica lacks it and the master must resync (broken) before acking."""
    r1, _, _ = _rings()

    async def run():
        s = await _server_on(r1)

        async def sync_to(replica, ranges):
            return False
        monkeypatch.setattr(s.repl, "sync_to", sync_to)
        mine = [(pc.begin, pc.end) for pc in r1.pieces if pc.master == "s0"]
        s.repl.not_ready = mine[:1]
        await s.repl.finish(mine[:1])
        return s
    s = asyncio.run(run())
    assert s.repl.not_ready == [] and s.repl.broken is True


def test_a_rejoin_forgets_copies_booked_before_it(monkeypatch):
    """A server declared dead rejoins as a new one: copies booked before (for epochs it
    will enter again) describe data it dropped and must not count as caught up."""
    r1, _, r3 = _rings()
    pending = Ring(["s0", "s1", "s2"], key_max=1000, vnodes=4, replication=2, epoch=4)
    seen = []

    async def run():
        s = await _server_on(r1)
        s.repl.caught_up = {4: [(0, 1000)]}
        s.repl.synced = {4: [(0, 1000)]}

        async def fetch(server, ranges, track, install=True):
            seen.append((dict(s.repl.caught_up), dict(s.repl.synced)))
            return None  # the pre-copy fails: join gives up (and would be retried)
        monkeypatch.setattr(s.repl, "fetch", fetch)
        return await s.repl.join({"pending": pending.to_dict(), "ring": r3.to_dict(),
                                  "addrs": {}})
    assert asyncio.run(run()) is False
    assert seen and seen[0] == ({}, {})


def test_a_dropped_range_forgets_its_clocks():
    """A range a server no longer holds loses its data and its clocks: should it come
    back (a later join, a copy installed with full=False), stale clocks would make the
    server drop new pushes there as resends."""
    kw = dict(key_max=1000, vnodes=4, replication=2)
    r1 = Ring(["s0", "s1", "s2"], epoch=1, **kw)
    r2 = Ring(["s0", "s1", "s2", "s3"], epoch=2, **kw)
    lost = subtract(r1.ranges_of("s0", "any"), r2.ranges_of("s0", "any"))
    assert lost

    async def run():
        s = await _server_on(r1)
        for b, e in r1.ranges_of("s0", "any"):
            s.clocks.of("w0").set(b, e, 9)
        await s.repl.transition(r2)
        return s
    s = asyncio.run(run())
    for b, e in lost:
        assert s.clocks.of("w0").min(b, e) == NEVER, (b, e)
    kept = intersect(r1.ranges_of("s0", "any"), r2.ranges_of("s0", "any"))
    assert all(s.clocks.of("w0").min(b, e) == 9 for b, e in kept)


def test_a_catch_up_sent_in_an_older_ring_still_serves_a_waiting_range():
    """The old master sends its catch-up in the ring of the join; if the new master has
    moved on meanwhile (another ring change), the copy is still the only one of a range
    that waits for it: it must be installed and the range served, not refused STALE."""
    from .test_transitions import _whole_copy
    r1, r2, r3 = _rings()

    async def run():
        s = await _server_on(r1)
        await s.repl.transition(r2)
        await s.repl.transition(r3)
        s.repl.not_ready = [(514, 596)]
        reply = M.decode(await s.repl._sync(_whole_copy(2, [(514, 596)], [520], 9.0,
                                                          catchup=True)))[0]
        await asyncio.sleep(0.05)  # finish() runs
        return s, reply
    s, reply = asyncio.run(run())
    assert reply.get("code", M.OK) == M.OK
    assert s.store.get(np.array([520], np.uint64)).item() == 9.0
    assert s.repl.not_ready == []


def test_a_failed_catch_up_is_sent_again_before_the_range_is_dropped(monkeypatch):
    """With replication 1 the old master's copy is a moved range's only complete one, and
    the transition drops it once the catch-up was sent: one failed RPC (no server died)
    lost every acknowledged push there. A failed catch-up is sent again."""
    kw = dict(key_max=1000, vnodes=8, replication=1)
    r1 = Ring(["s0", "s1"], epoch=1, **kw)
    r2 = Ring(["s0", "s1", "s2"], epoch=2, **kw)
    moved = intersect(r1.ranges_of("s0", "master"), r2.ranges_of("s2", "master"))
    assert moved
    sent = []

    async def run():
        s = await _server_on(r1)
        real_sleep = asyncio.sleep
        monkeypatch.setattr(asyncio, "sleep", lambda d: real_sleep(0))

        async def send(server, method, msg, timeout=None, bugs=False):
            sent.append((server, method))
            return None if len(sent) == 1 else {"code": M.OK}  # the first one fails
        monkeypatch.setattr(s.repl, "send", send)
        await s.repl.transition(r2)
    asyncio.run(run())
    to_s2 = [m for m in sent if m == ("s2", "Sync")]
    assert len(to_s2) == len(moved) + 1  # each moved range once, the failed one twice


def test_the_keys_tracked_for_a_joiner_stay_within_the_ranges_size():
    """A joiner that dies after its pre-copy is only forgotten at the next ring change;
    until then the old master added a copy of the keys of every push to its record (839
    MB after 200 pushes of 1M keys). The record is now merged into distinct keys, and
    the catch-up still sends exactly the keys pushed since the pre-copy."""
    ring = Ring(["s0"], key_max=1 << 16, vnodes=4, replication=1, epoch=1)
    half = (0, 1 << 15)

    async def run():
        s = await _server_on(ring)
        await s.repl.Snapshot(M.encode({"ranges": [half], "track": True, "epoch": 1}), None)
        rng = np.random.default_rng(0)
        pushed = set()
        for i in range(60):
            keys = np.unique(rng.integers(0, 1 << 16, 8000)).astype(np.uint64)
            pushed |= {int(k) for k in keys if k < half[1]}
            s.apply_push({"sender": "w0", "clock": i}, keys,
                         np.ones((keys.size, 1), np.float32), [(0, 1 << 16)])
        return s.repl.transfers[half], pushed
    dirty, pushed = asyncio.run(run())
    assert sum(k.size for k in dirty) <= 2 * (1 << 15) + 8000  # not 60 x ~4,000
    assert set(np.unique(np.concatenate(dirty)).tolist()) == pushed


def test_a_catch_up_to_a_frozen_new_master_gives_way_to_a_newer_ring(monkeypatch):
    """The old master sends its catch-ups holding its lock, which every push waits for:
    resent to a frozen new master, they must stop once a newer ring is announced (the one
    that found it dead), not run their attempts out."""
    kw = dict(key_max=1000, vnodes=8, replication=1)
    r1 = Ring(["s0", "s1"], epoch=1, **kw)
    r2 = Ring(["s0", "s1", "s2"], epoch=2, **kw)
    sends = []

    async def run():
        s = await _server_on(r1)
        frozen = asyncio.Event()  # never set: the peer does not answer

        async def send(server, method, msg, timeout=None, bugs=False):
            sends.append(server)
            await frozen.wait()

        monkeypatch.setattr(s.repl, "send", send)
        moving = asyncio.ensure_future(s.repl.transition(r2))
        await asyncio.sleep(0.05)
        s.repl.ring_moved.set()  # the scheduler announces the ring without s2
        await asyncio.wait_for(moving, 5)
    asyncio.run(run())
    assert sends and set(sends) == {"s2"}


def test_a_snapshot_of_repeated_or_overlapping_ranges_is_refused():
    """One range listed 64 times made an 832-byte Snapshot a 1 GB reply, and overlapping
    ones each tracked every later push's keys: its ranges are checked as a push's are."""
    ring = Ring(["s0"], key_max=1000, vnodes=4, replication=1, epoch=1)

    async def run():
        s = await _server_on(ring)
        for ranges in ([(0, 1000), (0, 1000)], [(0, 600), (500, 1000)], [(0, 2000)]):
            try:
                await s.repl.Snapshot(M.encode({"ranges": ranges, "epoch": 1}), None)
            except M.PSError as e:
                assert e.code == "INVALID", e
            else:
                raise AssertionError(f"a Snapshot of {ranges} was served")
        return s.repl.transfers
    assert asyncio.run(run()) == {}  # and nothing is tracked for them


def test_a_join_refused_because_the_ring_moved_registers_again(monkeypatch):
    """s2 joins; during its pre-copy s1 dies, so the scheduler refuses its JoinReady
    (the pending ring is stale) and s2 resets. Its registration must go on: a change of
    2026-11-29 took that reset for a rejoin's and returned, leaving s2 a non-member with
    no incarnation, whose heartbeats never register again: out of the ring for good.
    The scheduler and the server are the real ones, in this process; the pre-copy is
    cut short at the moment the ring moves."""
    from systems.minips.cluster import ClusterSpec
    from systems.minips.scheduler import Scheduler

    async def main():
        sched = Scheduler(ClusterSpec(servers=3, workers=0, replication=2,
                                      key_max=64).config(None))
        sched.broadcast = lambda: None  # no server processes to tell
        for n in ("s0", "s1", "s2"):
            await sched.Register(M.encode({"role": "server", "name": n, "addr": n}), None)
        sched.remove_server("s2", "no heartbeat")
        node = KVServer("s2", "127.0.0.1:1", "127.0.0.1")  # s2 again, joining
        node.addr = "s2-new"

        def sched_call(method):
            async def call(req, timeout=None):
                return await getattr(sched, method)(req, None)
            return call
        node.sched_call = sched_call
        copies = []

        async def fetch(repl, server, ranges, track, install=True):
            copies.append(server)
            if len(copies) == 1:
                sched.remove_server("s1", "no heartbeat")  # the ring moves meanwhile
            return {}
        monkeypatch.setattr(transitions.RingTransitions, "fetch", fetch)
        await asyncio.wait_for(node.register(), 5)
        return node, sched
    node, sched = asyncio.run(main())
    assert node.member and node.incarnation >= 1
    assert sched.ring_servers == ["s0", "s2"] and sched.joining is None
