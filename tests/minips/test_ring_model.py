"""Ring and interval helpers against brute force over small key spaces.

Model-based (hypothesis) tests from a stateful audit (2026-11-28): the real code and
a brute-force model take the same random operations and must agree after each.
Raise ``MODEL_EXAMPLES`` (default 100) to search longer.
"""

import os

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from systems.minips.ring import Ring, intersect, merge_ranges, moved_keys, subtract

MAX = int(os.environ.get("MODEL_EXAMPLES", 100))
K = 40
ivals = st.lists(st.tuples(st.integers(0, K), st.integers(0, K)), max_size=6)


def as_set(rs):
    return {k for b, e in rs for k in range(b, e)}


def canonical(s):
    """The sorted, disjoint, non-touching interval list of a set of ints."""
    out = []
    for k in sorted(s):
        if out and out[-1][1] == k:
            out[-1] = (out[-1][0], k + 1)
        else:
            out.append((k, k + 1))
    return out


@settings(max_examples=MAX * 3, deadline=None)
@given(ivals, ivals)
def test_interval_algebra_matches_sets(a, b):
    a = [(x, y) for x, y in a]
    ma, mb = merge_ranges(a), merge_ranges(b)
    assert ma == canonical(as_set(a))
    assert intersect(ma, mb) == canonical(as_set(a) & as_set(b))
    assert subtract(ma, mb) == canonical(as_set(a) - as_set(b))


servers_st = st.lists(st.sampled_from([f"s{i}" for i in range(6)]), min_size=1, max_size=5,
                      unique=True)


def brute_master(ring, key):
    for p, s in ring.points:
        if p > key:
            return s
    return ring.points[0][1]


def brute_holders(ring, key):
    """Master = owner of the first point > key (wrapping); replicas = next distinct
    servers clockwise from that point."""
    pts = ring.points
    i = next((j for j, (p, _) in enumerate(pts) if p > key), 0)
    owner = pts[i][1]
    reps = []
    for j in range(1, len(pts)):
        s = pts[(i + j) % len(pts)][1]
        if s != owner and s not in reps and len(reps) < ring.replication - 1:
            reps.append(s)
    return owner, tuple(reps)


@settings(max_examples=MAX, deadline=None)
@given(servers_st, st.integers(1, 200), st.integers(1, 5), st.integers(1, 4),
       st.data())
def test_ring_views_agree_per_key(servers, key_max, vnodes, repl, data):
    ring = Ring(servers, key_max, vnodes=vnodes, replication=repl)
    assert ring.pieces[0].begin == 0 and ring.pieces[-1].end == key_max
    for a, b in zip(ring.pieces, ring.pieces[1:], strict=False):
        assert a.end == b.begin and a.begin < a.end and a.holders != b.holders
    per_key = [brute_holders(ring, k) for k in range(key_max)]
    for k in range(key_max):
        pc = ring.piece_at(k)
        assert (pc.master, pc.replicas) == per_key[k]
        assert ring.master_of(k) == brute_master(ring, k)
    for s in ring.servers:
        for role in ("master", "replica", "any"):
            want = {k for k, (m, r) in enumerate(per_key)
                    if (role != "replica" and m == s) or (role != "master" and s in r)}
            assert ring.ranges_of(s, role) == canonical(want), (s, role)
    b = data.draw(st.integers(0, key_max))
    e = data.draw(st.integers(b, key_max))
    ov = ring.overlapping(b, e)
    assert as_set((p.begin, p.end) for p in ov) == set(range(b, e))
    for p in ov:
        for k in range(p.begin, p.end):
            assert (p.master, p.replicas) == per_key[k]
    # slice over several disjoint ranges
    rr = merge_ranges(data.draw(st.lists(st.tuples(st.integers(0, key_max),
                                                   st.integers(0, key_max)).map(sorted),
                                         max_size=3)))
    keys = np.array(sorted(data.draw(st.sets(st.integers(0, key_max - 1), max_size=20))),
                    np.uint64)
    sl = ring.slice(keys, rr)
    seen = []
    for srv, x in sl.items():
        assert len(x.ranges) == len(x.segments)
        for (rb, re_), (lo, hi) in zip(x.ranges, x.segments, strict=True):
            assert all(per_key[k][0] == srv for k in range(rb, re_))
            assert [int(k) for k in keys[lo:hi]] == [int(k) for k in keys if rb <= k < re_]
        seen += [int(k) for k in x.take(keys)]
        assert x.n_keys == len(x.take(keys))
    assert sorted(seen) == [int(k) for k in keys if any(rb <= k < re_ for rb, re_ in rr)]
    assert merge_ranges([r for x in sl.values() for r in x.ranges]) == rr
    # round trip
    r2 = Ring.from_dict(ring.to_dict())
    assert r2.pieces == ring.pieces


@settings(max_examples=MAX, deadline=None)
@given(servers_st, servers_st, st.integers(1, 200), st.integers(1, 5), st.integers(1, 3))
def test_moved_keys_is_the_brute_force_diff(old_s, new_s, key_max, vnodes, repl):
    old = Ring(old_s, key_max, vnodes=vnodes, replication=repl)
    new = Ring(new_s, key_max, vnodes=vnodes, replication=repl, epoch=1)
    moved = moved_keys(old, new)
    want = {k: (old.master_of(k), new.master_of(k)) for k in range(key_max)
            if old.master_of(k) != new.master_of(k)}
    got = {}
    for b, e, a, c in moved:
        assert b < e
        for k in range(b, e):
            assert k not in got
            got[k] = (a, c)
    assert got == want


BIG = 1 << 40


@settings(max_examples=MAX, deadline=None)
@given(servers_st, st.sampled_from([f"s{i}" for i in range(6)] + ["x"]), st.integers(1, 6),
       st.integers(1, 3))
def test_membership_changes_move_only_affected_ranges(servers, other, vnodes, repl):
    old = Ring(servers, BIG, vnodes=vnodes, replication=repl)
    if other in servers:
        assume(len(servers) > 1)
        new = Ring([s for s in servers if s != other], BIG, vnodes=vnodes, replication=repl)
        for b, _e, a, c in moved_keys(old, new):
            assert a == other
            if repl > 1:  # the first replica takes over: it already had the data
                assert c == old.piece_at(b).replicas[0]
    else:
        new = Ring(servers + [other], BIG, vnodes=vnodes, replication=repl)
        for _b, _e, _a, c in moved_keys(old, new):
            assert c == other
