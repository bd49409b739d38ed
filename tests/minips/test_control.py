"""The server's Control RPC (systems/minips/control.py) on a real cluster: metrics that
agree with what was pushed, a debug view of the clocks, and a bad crash point refused
without killing anything."""

import grpc
import numpy as np
import pytest

from common import rpc
from systems.minips import message as M
from systems.minips.cluster import ClusterSpec

KEY_MAX = 1 << 16


def _control(cl, server: str, meta: dict) -> dict:
    ch = rpc.channel(cl.status()["addrs"][server])
    try:
        return M.decode(rpc.method(ch, M.SERVICE, "Control")(M.encode(meta), timeout=10))[0]
    finally:
        ch.close()


def test_control_reports_state_and_refuses_a_bad_crash_point(make_cluster):
    cl = make_cluster(ClusterSpec(servers=2, workers=1, replication=1, val_len=1,
                                  updater={"name": "sum"}, app={"name": "count"},
                                  key_max=KEY_MAX))
    kv = cl.client("w0")
    keys = np.arange(0, KEY_MAX, 97, dtype=np.uint64)
    kv.wait(kv.push(keys, np.ones((keys.size, 1), np.float32), clock=0))
    servers = sorted(cl.status()["addrs"])

    stats = [_control(cl, s, {"metrics": True})["metrics"] for s in servers]
    assert sum(m["stored_keys"] for m in stats) == keys.size  # replication 1: one copy
    assert sum(m["push_keys"] for m in stats) == keys.size

    debug = _control(cl, servers[0], {"debug": True})["debug"]
    assert debug["ranges"] and set(debug["w0"]["push"]) == {0}  # clock 0 applied everywhere

    bad = _control(cl, servers[0], {"crash": "somewhere_else"})
    assert bad["code"] == "INVALID" and "before_apply" in bad["message"]
    for meta, why in (({"dump": [1]}, "'dump' must be [begin, end]"),
                      ({"crash": "after_apply", "after": "x"}, "'after' must be"),
                      ({"checkpoint": 7}, "'checkpoint' must be a directory")):
        bad = _control(cl, servers[0], meta)
        assert bad["code"] == "INVALID" and why in bad["message"], bad
    ch = rpc.channel(cl.status()["addrs"][servers[0]])
    try:
        with pytest.raises(grpc.RpcError) as e:
            rpc.method(ch, M.SERVICE, "Snapshot")(b"garbage", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        ch.close()
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), np.ones((keys.size, 1)))
    kv.close()


def _two_servers_and_a_client(make_cluster, replication: int):
    cl = make_cluster(ClusterSpec(servers=2, workers=0, replication=replication, val_len=1,
                                  updater={"name": "sum"}, app={"name": "count"},
                                  key_max=KEY_MAX))
    keys = np.arange(0, KEY_MAX, 97, dtype=np.uint64)
    return cl, cl.client("w0"), keys, np.ones((keys.size, 1), np.float32)


def test_a_bug_in_the_server_fails_the_request_with_its_name_and_nothing_hangs(make_cluster):
    """An exception in a server's own code (a student's seam change, say) reached the
    worker as gRPC UNKNOWN, which it took for a dead server and resent for ever: a job
    hung without a word. Now the request fails with the exception, and the server goes
    on serving the next one."""
    import time

    cl, kv, keys, ones = _two_servers_and_a_client(make_cluster, replication=1)
    assert cl.control("s0", crash="before_apply", how="raise")["code"] == M.OK
    assert cl.control("s0", crash="before_apply", how="nope")["code"] == "INVALID"
    t0 = time.monotonic()
    with pytest.raises(M.PSError, match=r"\[INTERNAL\] an exception in server s0: "
                                        r"RuntimeError: a bug injected at before_apply"):
        kv.wait(kv.push(keys, ones, clock=0))
    assert time.monotonic() - t0 < 30
    kv.wait(kv.push(keys, ones, clock=1))  # the bug was one-off: s0 still serves
    assert cl.control("s0", metrics=True)["metrics"]["handler_errors"] == 1
    got = kv.wait(kv.pull(keys))
    assert set(np.unique(got).tolist()) <= {1.0, 2.0}  # s1's half of clock 0 was applied
    kv.close()


def test_a_bug_in_a_replica_fails_the_push_that_met_it(make_cluster):
    """A replica's exception used to look like an unreachable replica to the master,
    which answered RETRY, and the worker resent for ever (exercise 3 edits exactly this
    code). Now the master passes the replica's exception on to the push."""
    cl, kv, keys, ones = _two_servers_and_a_client(make_cluster, replication=2)
    assert cl.control("s1", crash="replica_after_apply", how="raise")["code"] == M.OK
    with pytest.raises(M.PSError, match=r"an exception in server s1: RuntimeError: a bug "
                                        r"injected at replica_after_apply .*met by s0"):
        kv.wait(kv.push(keys, ones, clock=0))
    kv.wait(kv.push(keys, ones, clock=1))  # one-off: both still serve
    kv.close()


def test_a_bug_that_stays_in_a_replicas_sync_fails_the_next_push_instead_of_a_hang(
        make_cluster):
    """A ring change copies ranges to new replicas (``Sync``). A bug in the receiving
    code used to look like an unreachable replica: the master stayed broken, answered
    every push RETRY, and the job resent for ever without a word. Now the broken master's
    resync meets the bug again and the push fails with it, naming both servers."""
    cl = make_cluster(ClusterSpec(servers=3, workers=0, replication=2, val_len=1,
                                  updater={"name": "sum"}, app={"name": "count"},
                                  key_max=KEY_MAX, hb_timeout=3.0))
    kv = cl.client("w0")
    keys = np.arange(0, KEY_MAX, 97, dtype=np.uint64)
    ones = np.ones((keys.size, 1), np.float32)
    kv.wait(kv.push(keys, ones, clock=0))
    for s in ("s0", "s1"):
        assert cl.control(s, crash="replica_sync", how="raise_always")["code"] == M.OK
    e0 = cl.status()["epoch"]
    cl.signal("s2")  # s0 and s1 each copy ranges to the other, which raises
    cl.wait_ring(lambda st: st["epoch"] > e0, timeout=30)
    with pytest.raises(M.PSError, match=r"an exception in server s[01]: RuntimeError: a bug "
                                        r"injected at replica_sync .*met by s[01]'s Sync"):
        kv.wait(kv.push(keys, ones, clock=1), timeout=60)
    kv.close()
