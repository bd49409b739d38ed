"""Fixtures for minips tests: clusters of real processes, in-test workers, and a real
network partition (a network namespace joined to ours by a veth pair)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from systems.minips import message as M
from systems.minips.cluster import Cluster, ClusterSpec
from systems.minips.kv import KVWorker
from systems.minips.message import decode, encode
from systems.minips.scheduler import Scheduler


@pytest.fixture
def make_cluster(tmp_path):
    """``make_cluster(spec, workers=False)`` starts a cluster; all are stopped after."""
    made: list[Cluster] = []

    def make(spec: ClusterSpec, workers: bool = False, **kw) -> Cluster:
        cl = Cluster(spec, tmp_path / f"run{len(made)}")
        made.append(cl)
        cl.start(workers=workers, **kw)
        return cl

    yield make
    for cl in made:
        cl.close()


@pytest.fixture
def one_copy_pushed(make_cluster):
    """Two servers, no replicas, no workers, and a client that has pushed ones to all 64
    keys (acknowledged): ``(cluster, client, keys)``. Killing either server then loses
    data, and the scheduler fails the job."""
    cl = make_cluster(ClusterSpec(servers=2, workers=0, app={"name": "count"}, key_max=64,
                                  replication=1))
    kv = cl.client("c")
    keys = np.arange(64, dtype=np.uint64)
    kv.wait(kv.push(keys, np.ones((64, 1), np.float32)))
    return cl, kv, keys


def run_threads(cl: Cluster, body, n: int, filters=None) -> list:
    """Run ``body(kv, rank)`` in ``n`` threads, each a worker ``w<rank>`` of ``cl``."""
    kvs = [KVWorker(cl.sched_addr, f"w{i}", filters=filters) for i in range(n)]
    out, errors = [None] * n, []

    def go(i: int) -> None:
        try:
            out[i] = body(kvs[i], i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)

    ts = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    for kv in kvs:
        kv.close()
    if errors:
        raise errors[0]
    return out


def dump(cl: Cluster, server: str, begin: int, end: int):
    addr = cl.status()["addrs"][server]
    from common import rpc

    ch = rpc.channel(addr)
    try:
        out = rpc.method(ch, M.SERVICE, "Control")(M.encode({"dump": [begin, end]}), timeout=10)
    finally:
        ch.close()
    meta, keys, vals, extra = M.decode(out)
    return meta, keys, vals, extra[0]


def assert_replicas_consistent(cl: Cluster) -> int:
    """Every range's replicas hold exactly its master's keys, values, state and clocks.
    Returns the number of (range, replica) pairs compared."""
    from systems.minips.ring import Ring

    st = cl.status()
    ring = Ring.from_dict(st["ring"])
    compared = 0
    for pc in ring.pieces:
        m_meta, mk, mv, ms = dump(cl, pc.master, pc.begin, pc.end)
        for r in pc.replicas:
            r_meta, rk, rv, rs = dump(cl, r, pc.begin, pc.end)
            where = f"range [{pc.begin}, {pc.end}) master {pc.master} replica {r}"
            assert np.array_equal(mk, rk), where
            assert np.array_equal(mv, rv) and np.array_equal(ms, rs), where
            assert m_meta["clocks"] == r_meta["clocks"], where
            compared += 1
    return compared


class NetNS:
    """A network namespace with a veth link to ours: ``cut()`` takes the link down (a
    real partition, both directions), ``heal()`` brings it back."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.name, self.host_if, self.ns_if = f"mpsns{tag}", f"mpsh{tag}", f"mpsn{tag}"
        net = 100 + tag % 150
        self.outer, self.inner = f"10.{net}.7.1", f"10.{net}.7.2"

    def _ip(self, *args: str, ns: bool = False) -> None:
        cmd = ["ip", "netns", "exec", self.name, "ip", *args] if ns else ["ip", *args]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")

    def create(self) -> NetNS:
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("link", "set", self.ns_if, "netns", self.name)
        self._ip("addr", "add", f"{self.outer}/30", "dev", self.host_if)
        self._ip("link", "set", self.host_if, "up")
        self._ip("addr", "add", f"{self.inner}/30", "dev", self.ns_if, ns=True)
        self._ip("link", "set", self.ns_if, "up", ns=True)
        self._ip("link", "set", "lo", "up", ns=True)
        return self

    def cut(self) -> None:
        self._ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        self._ip("link", "set", self.host_if, "up")

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def netns():
    if not Path("/var/run/netns").exists() and os.geteuid() != 0:
        raise RuntimeError("the partition test needs root for `ip netns` (it runs as root "
                           "in this project's environment)")
    ns = NetNS().create()
    yield ns
    ns.remove()


def in_process_scheduler(workers=3, steps=10, **cfg):
    """A scheduler object without its gRPC server, for its logic alone."""
    s = Scheduler({"num_workers": workers, "steps": steps, "num_servers": 2, "key_max": 1000,
                   "vnodes": 4, "replication": 2, "hb_interval": 0.05, "hb_timeout": 0.3,
                   "worker_timeout": 30.0, **cfg})
    s.broadcast = lambda: None  # no servers to tell
    return s


def heartbeat(s, name, **meta):
    """Worker ``name``'s heartbeat to ``s``; the reply."""
    return decode(asyncio.run(s.Heartbeat(encode({"role": "worker", "name": name, **meta}),
                                          None)))[0]
