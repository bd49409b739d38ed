"""Key ranges on a consistent-hash ring with virtual nodes (paper section 4.3).

The key space ``[0, key_max)`` is a ring. Each server is inserted at ``vnodes``
pseudo-random points (its *virtual nodes*, the hash of ``"name#v"``); a virtual node at
point ``p`` owns the keys from the previous point up to ``p``, so the whole space is cut
into contiguous key ranges (:class:`Piece`). Keys are *not* hashed: a range is an
interval of keys, so a sorted key list splits into one contiguous slice per range with
two binary searches (ps-lite's ``DefaultSlicer`` in ``kv_app.h`` does the same over
``Postoffice::GetServerKeyRanges``, which there are ``num_servers`` equal intervals).

Each range is replicated on the next ``replication - 1`` *distinct* servers clockwise
(the paper: "each server node stores a replica of the k counterclockwise neighbor key
ranges relative to the one it owns"). That choice is what makes recovery local:

* a server that leaves takes its virtual nodes with it, and each of its ranges merges
  into the next virtual node clockwise that belongs to someone else, which is exactly
  the first replica: the new master already holds the data;
* a server that joins inserts its virtual nodes; each one takes the part of one existing
  range before it, and nothing else moves (:func:`moved_keys` measures it).

Both hold while no two virtual nodes hash to one point. In a key space of a few hundred
keys they do collide; the later one then takes the next free point, so a membership
change can also shift such a neighbour by a key or two (the transitions copy whatever
ranges change hands, so no value is lost).

Many virtual nodes per server even out the load (section 4.3: "a physical server is often
represented in the ring via multiple 'virtual' servers to improve load balancing and
recovery"; Chord suggests O(log N) per node).
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

import numpy as np

UINT64_END = 1 << 64


def vnode_position(name: str, v: int, key_max: int) -> int:
    """Where virtual node ``v`` of server ``name`` sits on the ring (stable across runs)."""
    h = hashlib.blake2b(f"{name}#{v}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % key_max


@dataclass(frozen=True)
class Piece:
    """One key range ``[begin, end)``: its master and the servers that keep replicas."""

    begin: int
    end: int
    master: str
    replicas: tuple[str, ...] = ()

    @property
    def holders(self) -> tuple[str, ...]:
        return (self.master, *self.replicas)


@dataclass
class Slice:
    """The part of a request that goes to one server: its ranges and, for each, the
    positions ``[lo, hi)`` of its keys in the request's sorted key array."""

    server: str
    ranges: list[tuple[int, int]] = field(default_factory=list)
    segments: list[tuple[int, int]] = field(default_factory=list)

    def take(self, arr: np.ndarray | None) -> np.ndarray | None:
        """This slice's rows of ``arr`` (a view when it is one contiguous segment)."""
        if arr is None:
            return None
        parts = [arr[lo:hi] for lo, hi in self.segments if hi > lo]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else arr[:0]

    @property
    def n_keys(self) -> int:
        return sum(hi - lo for lo, hi in self.segments)


def positions(keys: np.ndarray, bounds: list[int]) -> np.ndarray:
    """``np.searchsorted(keys, bounds)``, also for the bound 2**64 (the end of uint64)."""
    out = np.full(len(bounds), keys.size, dtype=np.int64)
    small = [i for i, b in enumerate(bounds) if b < UINT64_END]
    if small:
        out[small] = np.searchsorted(keys, np.array([bounds[i] for i in small],
                                                    dtype=np.uint64))
    return out


class Ring:
    """The servers' key ranges for one membership (``epoch``) of the server group."""

    def __init__(self, servers: list[str], key_max: int = UINT64_END, vnodes: int = 4,
                 replication: int = 1, epoch: int = 0):
        if not servers:
            raise ValueError("a ring needs at least one server")
        if not 0 < key_max <= UINT64_END:
            raise ValueError(f"key_max must be in (0, 2**64], got {key_max}")
        self.servers = sorted(set(servers))
        self.key_max, self.vnodes, self.epoch = key_max, vnodes, epoch
        self.replication = max(1, min(replication, len(self.servers)))
        points: dict[int, str] = {}
        for s in self.servers:  # in name order, so the placement does not depend on input
            for v in range(vnodes):
                # two virtual nodes on one point (likely in a key space of a few hundred
                # keys) would leave one server short of a range, or a range short of a
                # replica: take the next free point (linear probing moves the fewest keys
                # when membership changes: a sliver of the next range, not a whole range
                # re-hashed elsewhere); a key space smaller than the virtual nodes cannot
                # hold them all, and the rest are left out
                p = vnode_position(s, v, key_max)
                for _ in range(min(key_max, 64)):
                    if p not in points:
                        points[p] = s
                        break
                    p = (p + 1) % key_max
        self.points = sorted(points.items())
        self.pieces = self._cut()
        self.begins = [p.begin for p in self.pieces]

    def _successors(self, i: int) -> tuple[str, ...]:
        """The next ``replication - 1`` distinct servers clockwise after point ``i``."""
        owner, out, n = self.points[i][1], [], len(self.points)
        for j in range(1, n if self.replication > 1 else 1):
            s = self.points[(i + j) % n][1]
            if s != owner and s not in out:
                out.append(s)
                if len(out) == self.replication - 1:
                    break
        return tuple(out)

    def _cut(self) -> list[Piece]:
        pts = self.points
        raw: list[Piece] = []
        # point i owns [point i-1, point i); the first point also owns the wrap-around
        # [last point, key_max), kept as a separate interval so every range is one span
        for i, (p, s) in enumerate(pts):
            lo = pts[i - 1][0] if i else 0
            if p > lo:
                raw.append(Piece(lo, p, s, self._successors(i)))
        if pts[-1][0] < self.key_max:
            raw.append(Piece(pts[-1][0], self.key_max, pts[0][1], self._successors(0)))
        merged: list[Piece] = []
        for pc in raw:  # neighbours with the same holders are one range
            if merged and merged[-1].holders == pc.holders and merged[-1].end == pc.begin:
                merged[-1] = Piece(merged[-1].begin, pc.end, pc.master, pc.replicas)
            else:
                merged.append(pc)
        return merged

    def piece_at(self, key: int) -> Piece:
        return self.pieces[bisect.bisect_right(self.begins, key) - 1]

    def master_of(self, key: int) -> str:
        return self.piece_at(key).master

    def overlapping(self, begin: int, end: int) -> list[Piece]:
        """The pieces cut to ``[begin, end)`` (each keeps its master and replicas)."""
        out = []
        i = max(bisect.bisect_right(self.begins, begin) - 1, 0)
        while i < len(self.pieces) and self.pieces[i].begin < end:
            p = self.pieces[i]
            lo, hi = max(p.begin, begin), min(p.end, end)
            if hi > lo:
                out.append(Piece(lo, hi, p.master, p.replicas))
            i += 1
        return out

    def ranges_of(self, server: str, role: str = "any") -> list[tuple[int, int]]:
        """Ranges ``server`` holds as ``"master"``, ``"replica"`` or either (``"any"``)."""
        out = []
        for p in self.pieces:
            if ((role in ("master", "any") and p.master == server)
                    or (role in ("replica", "any") and server in p.replicas)):
                out.append((p.begin, p.end))
        return merge_ranges(out)

    def slice(self, keys: np.ndarray, ranges: list[tuple[int, int]] | None = None
              ) -> dict[str, Slice]:
        """Split a sorted key array (and the key ranges it covers) by master server.

        Every range of the request is cut by the pieces; a server gets the ranges it
        masters even when no key falls in them, since a push *of a range* also advances
        that range's vector clock (section 4.1).
        """
        ranges = ranges if ranges is not None else [(0, self.key_max)]
        cut = [pc for b, e in ranges for pc in self.overlapping(b, e)]
        pos = positions(keys, [b for pc in cut for b in (pc.begin, pc.end)])
        out: dict[str, Slice] = {}
        for i, pc in enumerate(cut):
            s = out.setdefault(pc.master, Slice(pc.master))
            lo, hi = int(pos[2 * i]), int(pos[2 * i + 1])
            if s.ranges and s.ranges[-1][1] == pc.begin:  # contiguous: extend
                s.ranges[-1] = (s.ranges[-1][0], pc.end)
                s.segments[-1] = (s.segments[-1][0], hi)
            else:
                s.ranges.append((pc.begin, pc.end))
                s.segments.append((lo, hi))
        return out

    def to_dict(self) -> dict:
        return {"servers": self.servers, "key_max": self.key_max, "vnodes": self.vnodes,
                "replication": self.replication, "epoch": self.epoch}

    @classmethod
    def from_dict(cls, d: dict) -> Ring:
        return cls(d["servers"], d["key_max"], d["vnodes"], d["replication"], d["epoch"])


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and join touching or overlapping ``[b, e)`` intervals."""
    out: list[tuple[int, int]] = []
    for b, e in sorted(ranges):
        if out and b <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        elif e > b:
            out.append((b, e))
    return out


def intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Intersection of two lists of disjoint sorted intervals."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``a`` minus ``b`` (both disjoint sorted interval lists)."""
    out = []
    for lo, hi in a:
        cur = lo
        for bl, bh in b:
            if bh <= cur or bl >= hi:
                continue
            if bl > cur:
                out.append((cur, bl))
            cur = max(cur, bh)
        if cur < hi:
            out.append((cur, hi))
    return out


def moved_keys(old: Ring, new: Ring) -> list[tuple[int, int, str, str]]:
    """Intervals whose master changed between two rings: ``(begin, end, old, new)``."""
    bounds = sorted({0, old.key_max, *old.begins, *new.begins})
    out = []
    for b, e in zip(bounds, bounds[1:], strict=False):
        a, c = old.master_of(b), new.master_of(b)
        if a != c:
            out.append((b, e, a, c))
    return out
