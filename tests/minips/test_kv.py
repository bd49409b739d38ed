"""The key-value API over real processes: counting, async timestamps, range ops, and
bad requests (paper section 3.3; ps-lite ``kv_app.h``)."""

import itertools

import grpc
import numpy as np
import pytest

from common import rpc
from systems.minips import message as M
from systems.minips.cluster import Cluster, ClusterSpec
from systems.minips.ring import Ring

from .conftest import run_threads

KEY_MAX = 1 << 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # one cluster for the whole module, which tests the API, not failure detection: a
    # long heartbeat timeout, so a busy machine (two cores, other tests) cannot get its
    # servers declared dead (two at once lost ranges mid-copy, and every later test here
    # timed out on a ring that kept waiting for them)
    spec = ClusterSpec(servers=3, workers=2, replication=2, val_len=2, updater={"name": "sum"},
                       app={"name": "count"}, key_max=KEY_MAX, hb_timeout=10.0)
    cl = Cluster(spec, tmp_path_factory.mktemp("kv"))
    cl.start(workers=False)
    yield cl
    cl.close()


def test_pull_after_acknowledged_pushes_returns_exactly_the_sum(cluster):
    """Every worker adds known increments; the final values equal the acked total."""
    rng = np.random.default_rng(0)
    region = (0, KEY_MAX // 2)
    plans = [[(np.unique(rng.integers(*region, 300)).astype(np.uint64),
               rng.integers(-5, 6, (300, 2)).astype(np.float32)) for _ in range(25)]
             for _ in range(2)]
    # the cluster is the module's: start from what other tests left in the region (run
    # first, as in file order, it is empty; run after them, it is not)
    client = cluster.client("reader")
    held_k, held_v = client.wait(client.pull_range(*region))
    expect: dict[int, np.ndarray] = dict(zip(held_k.tolist(), held_v, strict=True))
    for plan in plans:
        for keys, inc in plan:
            for k, v in zip(keys.tolist(), inc[:keys.size], strict=True):
                expect[k] = expect.get(k, 0) + v

    def body(kv, rank):
        tss = [kv.push(keys, inc[:keys.size]) for keys, inc in plans[rank]]
        for ts in reversed(tss):  # waiting out of order is fine
            assert kv.wait(ts) is None
        return len(tss)

    assert run_threads(cluster, body, 2) == [25, 25]
    keys = np.array(sorted(expect), np.uint64)
    got = client.wait(client.pull(keys))
    np.testing.assert_array_equal(got, np.array([expect[k] for k in sorted(expect)]))
    # a range pull returns exactly the stored keys of the range, in order
    rk, rv = client.wait(client.pull_range(*region))
    assert rk.tolist() == sorted(expect)
    np.testing.assert_array_equal(rv, got)
    # ... and the same through a range that cuts across servers
    lo, hi = KEY_MAX // 8, KEY_MAX // 3
    rk, _ = client.wait(client.pull_range(lo, hi))
    assert rk.tolist() == [k for k in sorted(expect) if lo <= k < hi]


def test_push_and_pull_are_asynchronous_with_timestamps(cluster):
    kv = cluster.client("async")
    keys = np.arange(KEY_MAX // 2, KEY_MAX // 2 + 1000, dtype=np.uint64)
    ones = np.ones((1000, 2), np.float32)
    ts = [kv.push(keys, ones) for _ in range(5)]
    assert ts == sorted(ts) and len(set(ts)) == 5
    pulled = kv.pull(keys)
    for t in ts:
        kv.wait(t)
    early = kv.wait(pulled)  # issued before the pushes finished: sees some prefix of them
    # these keys all go to one server, which applies each push message atomically (no
    # await inside apply_push), so the early pull reads k pushes on every key, k in 0..5
    slices = Ring.from_dict(cluster.status()["ring"]).slice(keys).values()
    assert [sl.n_keys for sl in slices if sl.n_keys] == [keys.size]
    k = early[0, 0]
    assert early.dtype == np.float32 and k in range(6), early[:3]
    np.testing.assert_array_equal(early, k * ones)
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), 5 * ones)
    with pytest.raises(KeyError, match="no request with timestamp"):
        kv.wait(10_000)


def test_messages_over_grpc_default_limit_go_through(cluster):
    """A push of the whole key space sends each server about a third of a million keys
    with 2 values each: over 5 MB per message, past gRPC's 4 MB default (common.rpc
    raises the limits on every channel and server)."""
    kv = cluster.client("big")
    keys = np.arange(KEY_MAX, dtype=np.uint64)
    before = kv.wait(kv.pull(keys))
    got = {n: cluster.control(n, metrics=True)["metrics"]["bytes_received"]
           for n in cluster.status()["servers"]}
    kv.wait(kv.push(keys, np.zeros((KEY_MAX, 2), np.float32)))  # sum of zeros: no change
    grown = [cluster.control(n, metrics=True)["metrics"]["bytes_received"] - b
             for n, b in got.items()]
    assert max(grown) > 4 << 20
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), before)


def test_values_never_travel_one_message_per_key(cluster):
    kv = cluster.client("packed")
    before = {n: cluster.control(n, metrics=True)["metrics"]["push_requests"]
              for n in cluster.status()["servers"]}
    keys = np.arange(KEY_MAX - 5000, KEY_MAX, dtype=np.uint64)
    kv.wait(kv.push(keys, np.ones((5000, 2), np.float32)))
    after = {n: cluster.control(n, metrics=True)["metrics"]["push_requests"] for n in before}
    assert sum(after.values()) - sum(before.values()) <= len(before)  # one per server


def raw_call(cluster, server, method, payload: bytes):
    ch = rpc.channel(cluster.status()["addrs"][server])
    try:
        return rpc.method(ch, M.SERVICE, method)(payload, timeout=10)
    finally:
        ch.close()


def bad(meta: dict, keys, vals) -> bytes:
    return M.encode({"epoch": 1, "sender": "x", "clock": 0, **meta}, keys, vals)


ONE = np.ones((1, 2), np.float32)
NAMES = itertools.count()  # a client name is registered once per cluster
ALL = {"ranges": [[0, KEY_MAX]]}


@pytest.mark.parametrize("method,payload,needle", [
    ("Push", b"\x00garbage", "malformed message"),
    ("Pull", b"\x00garbage", "malformed message"),
    ("Push", bad(ALL, np.array([5, 3], np.uint64), np.ones((2, 2), np.float32)),
     "sorted and unique"),
    ("Pull", bad(ALL, np.array([5, 3], np.uint64), None), "sorted and unique"),
    ("Push", bad(ALL, np.array([KEY_MAX + 7], np.uint64), ONE), f"unknown key {KEY_MAX + 7}"),
    ("Pull", bad(ALL, np.array([KEY_MAX + 7], np.uint64), None), f"unknown key {KEY_MAX + 7}"),
    ("Push", bad(ALL, np.array([1, 2], np.uint64), np.ones(3, np.float32)),
     "2 keys x 2 values per key need 4 values, got 3"),
    ("Push", bad({}, np.array([1], np.uint64), ONE), "needs 'ranges'"),
    ("Pull", bad({"ranges": [[0, 10]]}, np.array([50], np.uint64), None),
     "outside the request's ranges"),
    ("Pull", bad({"ranges": [[10, 5]], "range_pull": True}, None, None),
     "empty or outside the key space"),
    ("Pull", bad(ALL, None, None), "a pull needs keys"),
    ("Push", M.encode({"ranges": [[0, 8]]}, np.array([1], np.uint64), ONE),
     "malformed request meta: KeyError 'epoch'"),
    ("Push", bad({**ALL, "clock": float("nan")}, np.array([1], np.uint64), ONE),
     "clock must be an integer clock or null, got nan"),
    ("Pull", bad({**ALL, "wait": 1.5}, np.array([1], np.uint64), None),
     "wait must be an integer clock or null, got 1.5"),
    ("Push", bad({**ALL, "codec": "bogus"}, np.array([1], np.uint64),
                 np.array([200, 7], np.uint8)), "codec must be one of"),
    ("Push", bad({**ALL, "codec": "fp16"}, np.array([1], np.uint64),
                 np.array([9, 9], np.int32)), "travel as float16, got int32"),
    ("Pull", bad({**ALL, "pull_codec": "snappy"}, np.array([1], np.uint64), None),
     "pull_codec must be one of"),
    ("Push", bad({"ranges": [[100, 200], [0, 100]]}, np.array([50, 130], np.uint64),
                 np.ones((2, 2), np.float32)), "ranges must be sorted and disjoint"),
])
def test_malformed_requests_get_a_clear_error_and_nothing_breaks(cluster, method, payload,
                                                                 needle):
    with pytest.raises(grpc.RpcError) as e:
        raw_call(cluster, "s0", method, payload)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in e.value.details()
    kv = cluster.client(f"after-bad-{next(NAMES)}")  # the servers still serve
    keys = np.array([KEY_MAX - 1], np.uint64)
    before = kv.wait(kv.pull(keys))
    kv.wait(kv.push(keys, ONE))
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), before + 1)


COPY = {"from": "x", "worker": "w0", "clock": 0, "ranges": [[0, 10]], "clocks": {}}


@pytest.mark.parametrize("service,method,payload,needle", [
    (M.SERVICE, "Forward", M.encode({"epoch": 99, **COPY}, np.array([1], np.uint64)),
     "forward: no values were sent"),
    (M.SERVICE, "Forward", M.encode({"epoch": 99, **COPY}, np.array([1], np.uint64), ONE),
     "a copy needs the optimiser state"),
    (M.SERVICE, "Sync", M.encode({"epoch": 99, **COPY}, np.array([1], np.uint64)),
     "sync: no values were sent"),
    (M.SERVICE, "Sync", M.encode({"epoch": 99, **COPY}, np.array([1, 2], np.uint64), ONE,
                                 [ONE]), "sync: 2 keys x 2 values per key need 4 values"),
    (M.SCHEDULER_SERVICE, "Heartbeat", b"garbage", "malformed message"),
    (M.SCHEDULER_SERVICE, "Heartbeat", M.encode({"role": "worker"}), "KeyError 'name'"),
    (M.SCHEDULER_SERVICE, "Register", M.encode({"name": "w9"}), "KeyError 'role'"),
])
def test_malformed_server_and_scheduler_requests_get_a_clear_error(cluster, service, method,
                                                                  payload, needle):
    """The internal RPCs (a master's forward, a range sync, the scheduler's) answer a
    malformed request with INVALID_ARGUMENT and the reason, install nothing of it, and
    the cluster goes on."""
    addr = cluster.sched_addr if service == M.SCHEDULER_SERVICE else \
        cluster.status()["addrs"]["s0"]
    kv = cluster.client(f"after-bad-copy-{next(NAMES)}")
    keys = np.array([1, 2], np.uint64)
    before = kv.wait(kv.pull(keys))
    ch = rpc.channel(addr)
    try:
        with pytest.raises(grpc.RpcError) as e:
            rpc.method(ch, service, method)(payload, timeout=10)
    finally:
        ch.close()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in e.value.details()
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), before)  # nothing installed
    kv.wait(kv.push(keys, np.ones((2, 2), np.float32)))
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), before + 1)


def test_client_side_checks_name_the_problem(cluster):
    kv = cluster.client("checks")
    with pytest.raises(M.PSError, match="unknown key"):
        kv.pull(np.array([KEY_MAX], np.uint64))
    with pytest.raises(M.PSError, match="sorted and unique"):
        kv.push(np.array([2, 1], np.uint64), np.ones((2, 2), np.float32))
    with pytest.raises(M.PSError, match="non-negative integers"):
        kv.pull(np.array([-1, 2]))
    # an empty or inverted range would be sliced into no message and never finish; keys
    # outside a push's range would be cut away by the slicer and silently lost
    for rng in ((5, 5), (10, 5), (0, KEY_MAX + 100)):
        with pytest.raises(M.PSError, match="empty or outside the key space"):
            kv.pull_range(*rng)
    with pytest.raises(M.PSError, match="lie outside key_range"):
        kv.push(np.array([500], np.uint64), np.ones((1, 2), np.float32), key_range=(0, 100))
    k, both = np.array([7], np.uint64), np.array([7, 200], np.uint64)
    before = kv.wait(kv.pull(both))  # the module's cluster is shared with other tests
    kv.wait(kv.push(k, np.ones((1, 2), np.float32), clock=3, key_range=(0, 100)))
    with pytest.raises(ValueError, match="already covered"):  # would be dropped as a resend
        kv.push(k, np.ones((1, 2), np.float32), clock=3)
    kv.wait(kv.push(np.array([200], np.uint64), np.ones((1, 2), np.float32), clock=3,
                    key_range=(100, 300)))  # another range at the same clock is fine
    np.testing.assert_array_equal(kv.wait(kv.pull(both)), before + 1)
    kv.wait(kv.push(k, np.ones((1, 2), np.float32)))  # the queue was not left stuck
    np.testing.assert_array_equal(kv.wait(kv.pull(k)), before[:1] + 2)


def test_numpy_clocks_work_and_clocks_that_are_no_integers_are_refused(cluster):
    """A numpy integer clock used to fail inside the push queue (JSON cannot write it),
    leaving every later push of the worker stuck behind it; a NaN clock was taken, and
    every later push was acknowledged and applied nowhere."""
    kv = cluster.client(f"np-clocks-{next(NAMES)}")
    keys = np.array([KEY_MAX - 300, KEY_MAX - 299], np.uint64)
    before = kv.wait(kv.pull(keys))
    for c in np.arange(3):
        kv.wait(kv.push(keys, np.ones((2, 2), np.float32), clock=c), timeout=30)
    np.testing.assert_array_equal(kv.wait(kv.pull(keys, clock=np.int64(3)), timeout=30),
                                  before + 3)
    assert type(M.as_clock(np.int32(1), "wait", "pull")) is int
    for bad in (float("nan"), 4.0, "5"):
        with pytest.raises(M.PSError, match="clock must be an integer clock"):
            kv.push(keys, np.ones((2, 2), np.float32), clock=bad)
        with pytest.raises(M.PSError, match="wait must be an integer clock"):
            kv.pull(keys, wait=bad)
    # -1 is below every clock a range holds: such a push was acknowledged and dropped as
    # a resend, from the API and from a raw client alike
    with pytest.raises(M.PSError, match="clock must be >= 0"):
        kv.push(keys, np.ones((2, 2), np.float32), clock=-1)
    with pytest.raises(M.PSError, match="clock must be >= 0"):
        M.check_clocks({"clock": -1}, "push")
    kv.wait(kv.push(keys, np.ones((2, 2), np.float32)), timeout=30)
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), before + 4)


def test_keys_as_python_ints_past_2_63_are_taken_as_they_are():
    """numpy infers float64 for [0, 2**64 - 1]; the keys are still valid uint64."""
    np.testing.assert_array_equal(M.as_keys([0, 2**64 - 1], 1 << 64, "pull"),
                                  np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(M.PSError, match=r"integers in \[0, 2\*\*64\)"):
        M.as_keys([-1, 2**63], 1 << 64, "pull")


def test_a_request_that_cannot_be_encoded_fails_alone(cluster, monkeypatch):
    """Whatever goes wrong while a queued push is written, it fails that push (raised by
    wait) and the pushes queued behind it still leave."""
    kv = cluster.client(f"bad-encode-{next(NAMES)}")
    keys = np.array([KEY_MAX - 310], np.uint64)
    before = kv.wait(kv.pull(keys))
    real = kv.filters.encode
    calls = iter([RuntimeError("boom")])

    def encode(*a):
        err = next(calls, None)
        if err is not None:
            raise err
        return real(*a)

    monkeypatch.setattr(kv.filters, "encode", encode)
    bad = kv.push(keys, np.ones((1, 2), np.float32))
    good = kv.push(keys, np.ones((1, 2), np.float32))
    with pytest.raises(M.PSError, match="could not be encoded: RuntimeError: boom"):
        kv.wait(bad, timeout=30)
    kv.wait(good, timeout=30)
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), before + 1)


def test_a_request_routed_with_the_wrong_ring_is_told_to_refresh(cluster):
    st = cluster.status()
    from systems.minips.ring import Ring

    ring = Ring.from_dict(st["ring"])
    pc = next(p for p in ring.pieces if p.master != "s0")
    msg = M.encode({"epoch": st["epoch"], "ranges": [[pc.begin, pc.end]], "sender": "x",
                    "clock": 0}, np.array([pc.begin], np.uint64), np.ones((1, 2), np.float32))
    meta = M.decode(raw_call(cluster, "s0", "Push", msg))[0]
    assert meta["code"] == M.STALE
    stale = M.encode({"epoch": st["epoch"] - 1, "ranges": [[0, KEY_MAX]], "sender": "x"},
                     np.array([1], np.uint64))
    assert M.decode(raw_call(cluster, "s0", "Pull", stale))[0]["code"] == M.STALE


@pytest.mark.parametrize("buffer", ["numpy", "torch"])
def test_a_push_owns_its_arrays_once_it_returns(cluster, buffer):
    """push returns before it is sent (the previous push is still out); a loop that
    refills its gradient buffer for the next step must not change a queued push, as
    ps-lite's Push copies (ZPush, copy=False here, is the opt-out). A torch tensor was
    not copied: numpy reads a CPU tensor's memory without a copy."""
    import torch

    kv = cluster.client(f"refiller-{buffer}")
    keys = np.arange(KEY_MAX - 64, KEY_MAX - 32, dtype=np.uint64)
    before = kv.wait(kv.pull(keys))  # the module's other tests share the cluster
    g = np.ones((keys.size, 2), np.float32)
    g = torch.from_numpy(g) if buffer == "torch" else g
    first = kv.push(keys, g)
    g[:] = 2.0
    second = kv.push(keys, g)  # queued behind the first
    g[:] = 1000.0
    kv.wait(first), kv.wait(second)
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)) - before, np.full((keys.size, 2), 3.0))


def test_a_final_push_flushes_held_back_updates_outside_its_key_range(cluster):
    """Block by block, as the paper's block-coordinate algorithms push: the significantly-
    modified filter holds back the first block's small updates, and the last push (of
    another block) must still deliver them."""
    from systems.minips.filters import SignificantlyModified

    kv = cluster.client("blocks", filters=[SignificantlyModified(threshold=1.0)])
    a, b = KEY_MAX - 1000, KEY_MAX - 500
    first = np.array([a + 10, a + 20], np.uint64)
    last = np.array([b + 10, b + 20], np.uint64)
    before = kv.wait(kv.pull(np.concatenate([first, last])))
    kv.wait(kv.push(first, np.full((2, 2), 0.25, np.float32), clock=0, key_range=(a, b)))
    kv.wait(kv.push(last, np.full((2, 2), 0.5, np.float32), clock=1, key_range=(b, KEY_MAX),
                    ctx={"final": True}))
    got = kv.wait(kv.pull(np.concatenate([first, last]))) - before
    np.testing.assert_array_equal(got, [[0.25] * 2] * 2 + [[0.5] * 2] * 2)
    # at a clock an earlier push used, the flush could land in ranges that clock covered,
    # where the servers drop it as a resend: refused before anything is flushed
    late = cluster.client("blocks2", filters=[SignificantlyModified(threshold=1.0)])
    late.wait(late.push(first, np.full((2, 2), 0.25, np.float32), clock=2, key_range=(a, b)))
    with pytest.raises(ValueError, match="needs a clock no push has used"):
        late.push(last, np.full((2, 2), 0.5, np.float32), clock=2, key_range=(b, KEY_MAX),
                  ctx={"final": True})


def test_a_closed_client_refuses_new_requests_instead_of_keeping_them(cluster):
    """A request made after close() used to be registered and then never sent or
    answered, so a monitor polling a closed client grew its request table forever."""
    kv = cluster.client("closer")
    kv.close()
    keys = np.arange(4, dtype=np.uint64)
    with pytest.raises(M.PSError, match="closer is closed"):
        kv.push(keys, np.ones((4, 2), np.float32))
    with pytest.raises(M.PSError, match="is closed"):
        kv.pull(keys)
    assert not kv.requests


def test_values_of_another_shape_none_or_past_float32_are_refused(cluster):
    """Values are (n, val_len) or n * val_len flat; a (val_len, n) transpose used to be
    reshaped into the wrong keys, float64 beyond float32 stored as inf with only numpy's
    warning, and None or pull([]) gave messages about something else."""
    kv = cluster.client("shapes")
    keys = np.array([11, 12, 13], np.uint64)
    with pytest.raises(M.PSError, match=r"values of shape \(2, 3\) for 3 keys x 2 values"):
        kv.push(keys, np.ones((2, 3), np.float32))
    with pytest.raises(M.PSError, match="no values were given for 3 keys"):
        kv.push(keys, None)
    with pytest.raises(M.PSError, match="overflow float32"):
        kv.push(keys, np.full((3, 2), 1e39))
    before = kv.wait(kv.pull(keys))
    kv.wait(kv.push(keys, np.arange(6, dtype=np.float64)))  # flat, and cast: fine
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)) - before, [[0, 1], [2, 3], [4, 5]])
    assert kv.wait(kv.pull([])).shape == (0, 2)


def test_a_key_space_past_uint64_and_a_give_up_time_below_zero_are_refused_by_the_spec():
    with pytest.raises(ValueError, match="exceeds 2\\*\\*64"):
        ClusterSpec(servers=1, workers=0, app={"name": "count"}, key_max=1 << 70).config(None)
    for bad in (0, -1.0):  # 0 used to mean the default, silently
        with pytest.raises(ValueError, match="give_up_s must be above 0"):
            ClusterSpec(app={"name": "count"}, give_up_s=bad).config(None)
    assert ClusterSpec(app={"name": "count"}, hb_timeout=0.5).config(None)["give_up_s"] == 5.0


def test_a_client_without_a_scheduler_says_so():
    """Nodes may start in any order, so a client waits for the scheduler (connect_s);
    past that, the error names the address, not a raw gRPC traceback."""
    from systems.minips.kv import KVWorker

    with pytest.raises(M.PSError, match="no scheduler answered at 127.0.0.1:1 within 0.5 s"):
        KVWorker("127.0.0.1:1", "nobody", role="client", connect_s=0.5)


def test_a_registration_the_scheduler_refuses_says_why(cluster):
    """A scheduler that answers with an error is not "no scheduler answered"."""
    from systems.minips.kv import KVWorker

    with pytest.raises(M.PSError, match="refused to register .*malformed"):
        KVWorker(cluster.sched_addr, ["w0"], role="client")


def test_a_held_pull_says_what_it_waits_for_and_close_wakes_its_waiter(make_cluster):
    """A pull held on a clock no worker reaches: the timeout names the dependency;
    close() from another thread ends the wait (it used to leave the waiter for ever);
    and every later wait raises the same error."""
    import threading

    from systems.minips.kv import KVWorker

    cl = make_cluster(ClusterSpec(servers=1, workers=1, app={"name": "count"}, key_max=64))
    w0 = KVWorker(cl.sched_addr, "w0")  # the job's one worker, which never pushes clock 2
    try:
        ts = w0.pull(np.arange(4, dtype=np.uint64), clock=3, wait=2)
        with pytest.raises(TimeoutError, match="held until every worker has finished clock 2"):
            w0.wait(ts, timeout=0.5)
        threading.Timer(0.3, w0.close, kwargs={"drain_s": 0.1}).start()
        with pytest.raises(M.PSError, match="w0 was closed before this request finished"):
            w0.wait(ts, timeout=20)
        # waited again, a failed request raises its error again (it used to be a
        # KeyError, "no request with timestamp": its record was dropped unmarked)
        for check in (w0.wait, w0.finished) * 50:
            with pytest.raises(M.PSError, match="w0 was closed before this request"):
                check(ts)
        # each raise is a new exception: raising the kept one again grew its traceback
        # by every raiser's frames (and kept their locals, a pull's buffer among them)
        kept = w0.errors[ts]
        assert kept.__traceback__ is None and str(kept).startswith("[UNAVAILABLE] w0 was")
    finally:
        w0.close(drain_s=0)


def test_without_a_scheduler_the_ring_serves_and_a_request_to_a_dead_server_fails(
        make_cluster):
    """With the scheduler dead the current ring goes on serving (exercise 5); once its
    server dies too, no new ring can come, and a request used to be resent for ever. It
    now fails after resending for ``give_up_s`` (10 heartbeat timeouts by default; 2 s
    here), and the next push is not held behind it."""
    import signal
    import time

    from systems.minips.kv import KVWorker

    # a long heartbeat timeout: a busy machine must not get the server declared dead
    cl = make_cluster(ClusterSpec(servers=1, workers=0, app={"name": "count"}, key_max=64,
                                  hb_timeout=3.0, give_up_s=2.0))
    ext = KVWorker(cl.sched_addr, "ext", role="client")
    keys, ones = np.arange(4, dtype=np.uint64), np.ones((4, 1), np.float32)
    try:
        # one push first: the server has installed the ring (a server that has not would
        # ask the scheduler for it, and there is none after the kill)
        ext.wait(ext.push(keys, 0 * ones), timeout=30)
        cl.group.children["scheduler"].signal(signal.SIGKILL)
        time.sleep(2.5)  # past give_up_s: a healthy ring is not given up on
        ext.wait(ext.push(keys, ones), timeout=10)
        np.testing.assert_array_equal(ext.wait(ext.pull(keys), timeout=10), ones)
        cl.group.children["s0"].signal(signal.SIGKILL)
        stuck, queued = ext.push(keys, ones), ext.push(keys, ones)
        for ts in (stuck, queued):
            with pytest.raises(M.PSError, match="the scheduler has not answered for"):
                ext.wait(ts, timeout=30)
    finally:
        ext.close(drain_s=0)


def test_a_pull_held_at_a_live_server_after_a_failover_is_not_given_up(make_cluster):
    """Only resending requests are failed once the scheduler is silent: a pull held by
    consistency at a live server, moved there by an earlier failover, used to be failed
    ("no reply in 4 s of resending") because it had failed once before."""
    import signal
    import time

    from systems.minips.kv import KVWorker

    cl = make_cluster(ClusterSpec(servers=2, workers=1, replication=2, app={"name": "count"},
                                  key_max=64, hb_timeout=1.0, give_up_s=2.0))
    w0 = KVWorker(cl.sched_addr, "w0")
    keys = np.arange(64, dtype=np.uint64)
    try:
        w0.wait(w0.push(keys, np.ones((64, 1), np.float32), clock=0), timeout=30)
        ts = w0.pull(keys, clock=3, wait=2)  # held: w0 never finishes clock 2
        epoch = w0.ring.epoch
        cl.group.children["s1"].signal(signal.SIGKILL)  # s0 holds a copy of everything
        t_end = time.monotonic() + 20
        while w0.ring.epoch == epoch and time.monotonic() < t_end:
            time.sleep(0.1)
        time.sleep(1.0)  # the pull is resent to s0, which holds it
        assert w0.requests[ts].resends >= 1 and w0.ring.epoch > epoch
        cl.group.children["scheduler"].signal(signal.SIGKILL)
        time.sleep(4.0)  # past give_up_s of silence
        assert not w0.finished(ts)  # still held, not failed (finished() raises if it was)
    finally:
        w0.close(drain_s=0)


def test_a_pull_held_past_its_call_deadline_is_asked_again_not_counted_as_a_failure(
        make_cluster, monkeypatch):
    """A pull's call has a deadline (600 s; 1 s here); a pull held on its dependency that
    long used to count as a server failure, be resent as a "recovery", and read so in the
    metrics. It is asked again, and answered once its dependency is met."""
    import time

    from systems.minips import kv as kv_module
    from systems.minips.kv import KVWorker

    monkeypatch.setattr(kv_module, "PULL_TIMEOUT_S", 1.0)
    cl = make_cluster(ClusterSpec(servers=1, workers=1, app={"name": "count"}, key_max=64))
    w0 = KVWorker(cl.sched_addr, "w0")
    keys, ones = np.arange(4, dtype=np.uint64), np.ones((4, 1), np.float32)
    try:
        w0.wait(w0.push(keys, ones, clock=0), timeout=30)
        ts = w0.pull(keys, clock=3, wait=2)  # held until w0 finishes clock 2
        time.sleep(2.5)  # two deadlines pass
        req = w0.requests[ts]
        assert not w0.finished(ts) and req.resends >= 1
        assert req.first_failure is None and req.whys == []
        assert w0.metrics.counters.get("resends", 0) == 0
        for c in (1, 2):
            w0.wait(w0.push(keys, ones, clock=c), timeout=30)
            w0.wait(w0.pull(keys, clock=c, wait=c - 1), timeout=30)  # finish clock c
        np.testing.assert_array_equal(w0.wait(ts, timeout=30), 3 * ones)
    finally:
        w0.close(drain_s=0)



def test_a_bsp_push_held_past_its_call_deadline_is_asked_again_not_counted_as_a_failure(
        make_cluster, monkeypatch):
    """A BSP push waits until every worker has pulled its clock; one held past its call's
    deadline (10 s) was taken for a dead server: resent after up to 3 s more of waiting
    for a new ring, and booked as a resend and a recovery in a job with no fault."""
    import time

    from systems.minips import kv as kv_module
    from systems.minips.kv import KVWorker

    monkeypatch.setattr(kv_module, "PUSH_TIMEOUT_S", 1.0)
    cl = make_cluster(ClusterSpec(servers=1, workers=2, app={"name": "count"}, key_max=64))
    w0, w1 = KVWorker(cl.sched_addr, "w0"), KVWorker(cl.sched_addr, "w1")
    keys, ones = np.arange(4, dtype=np.uint64), np.ones((4, 1), np.float32)
    try:
        ts = w0.push(keys, ones, clock=0, wait=0)  # held until w0 and w1 pull clock 0
        w0.wait(w0.pull(keys, clock=0), timeout=30)
        time.sleep(2.5)  # w1 is slow: two deadlines pass
        req = w0.requests[ts]
        assert not w0.finished(ts) and req.resends >= 1
        assert req.first_failure is None and req.whys == []
        t0 = time.monotonic()
        w1.wait(w1.pull(keys, clock=0), timeout=30)
        w0.wait(ts, timeout=30)
        assert time.monotonic() - t0 < 2.0  # not a failed server's wait for a new ring
        assert w0.metrics.counters.get("resends", 0) == 0
        assert w0.metrics.counters.get("recoveries", 0) == 0
        np.testing.assert_array_equal(w0.wait(w0.pull(keys, clock=1), timeout=30), ones)
    finally:
        w0.close(drain_s=0)
        w1.close(drain_s=0)


def test_a_key_list_the_server_does_not_hold_is_resent_in_full_once(cluster):
    """KeyCaching: a client that believes each server holds its key list (as after the
    server's LRU evicted it) sends only the signature; each server answers CACHE_MISS,
    the client resends that slice's keys in full, and the push is applied exactly once.
    The miss drops the belief: the next push sends keys and signature (the server caches
    them), and the one after goes bare, with no miss."""
    from systems.minips.filters import KeyCaching, key_signature

    kv = cluster.client("evicted", filters=[KeyCaching(min_keys=4)])
    keys = np.arange(11, KEY_MAX, 1999, dtype=np.uint64)  # across the key space
    slices = {s: sl.take(keys) for s, sl in
              Ring.from_dict(cluster.status()["ring"]).slice(keys).items() if sl.n_keys}
    assert len(slices) >= 2  # the keys span servers: a miss per server
    reader = cluster.client("evicted-reader")  # (kv's pulls would send the key list)
    before = reader.wait(reader.pull(keys), timeout=30)
    for s, sk in slices.items():  # believed held, never sent
        kv.filters.caching.known.setdefault(s, set()).add(key_signature(sk))
    ones = np.ones((keys.size, 2), np.float32)
    n = keys.size
    for i, entries_out in ((1, n), (2, 2 * n), (3, 2 * n)):
        kv.wait(kv.push(keys, ones), timeout=30)
        # one resend per missed slice, on the first push only
        assert kv.metrics.counters.get("resends", 0) == len(slices), i
        np.testing.assert_array_equal(reader.wait(reader.pull(keys), timeout=30), before + i)
        st = kv.filters.stats()["key_caching"]
        # 1: a signature, then each list in full; 2: in full with the signature; 3: bare
        assert (st["entries_in"], st["entries_out"]) == (i * n, entries_out), (i, st)
