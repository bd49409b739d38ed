"""Partitioning: Send/Recv pairs, one Recv per tensor per device, control edges across
devices, the rendezvous, and multi-device runs equal to single-device runs."""

import threading

import numpy as np
import pytest

import systems.miniflow as mf
from systems.miniflow.op_def import make_op
from systems.miniflow.partition import Rendezvous

TWO_CPUS = mf.ConfigProto(device_count={"CPU": 2})


def test_rendezvous_pairs_send_and_recv_in_either_order():
    r = Rendezvous()
    got = []
    r.send("a", 1)
    r.recv_async("a", lambda v, e: got.append((v, e)))
    r.recv_async("b", lambda v, e: got.append((v, e)))
    assert got == [(1, None)]
    threading.Thread(target=r.send, args=("b", 2)).start()
    for _ in range(100):
        if len(got) == 2:
            break
        threading.Event().wait(0.01)
    assert got[1] == (2, None)
    r.recv_async("c", lambda v, e: got.append((v, e)))
    boom = RuntimeError("partition failed")
    r.abort(boom)
    assert got[2] == (None, boom)


def test_one_recv_per_tensor_per_destination_device():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3], name="x")
        with mf.device("/cpu:0"):
            a = mf.tanh(x, name="a")
        with mf.device("/cpu:1"):
            outs = [mf.identity(a * float(k), name=f"use{k}") for k in range(3)]
        y = mf.add_n(outs)
    with mf.Session(graph=g, config=mf.ConfigProto(
            device_count={"CPU": 2},
            graph_options=mf.GraphOptions(fusion=False))) as s:
        got = s.run(y, {x: np.ones(3)})
        nodes = s.plan_for(y, {x: None}).snapshots["partitioned"].nodes
    sends_of_a = [n for n in nodes if n[1] == "_Send" and n[2] == ["a:0"]]
    recvs_of_a = [n for n in nodes if n[1] == "_Recv" and n[0].startswith("a/")]
    assert len(sends_of_a) == 1 and len(recvs_of_a) == 1
    np.testing.assert_allclose(got, np.tanh(1.0) * 3 * np.ones(3), rtol=1e-6)


def test_a_control_edge_across_devices_still_orders_the_ops():
    g = mf.Graph()
    with g.as_default():
        with mf.device("/cpu:1"):
            v = mf.Variable(np.float32(0.0), name="v")
            bump = v.assign_add(1.0)
        with mf.device("/cpu:0"):
            with mf.control_dependencies([bump]):
                after = mf.constant(7.0, name="seven") + 0.0
        read = v.read_value()
    with mf.Session(graph=g, config=TWO_CPUS) as s:
        s.run(v.initializer)
        for _ in range(3):
            assert s.run(after) == 7.0
        assert s.run(read) == 3.0  # each run of 'after' ran the assignment first
        nodes = s.plan_for(after).snapshots["partitioned"].nodes
    assert any(n[1] == "_Recv" and "control" in n[0] for n in nodes)


def _mlp_step(config, split: bool):
    g = mf.Graph()
    rng = np.random.default_rng(0)
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 8])
        y = mf.placeholder(mf.int32, [None])
        with mf.device("/cpu:1" if split else None):
            w1 = mf.Variable(rng.normal(0, 0.3, (8, 16)).astype(np.float32))
            h = mf.nn.relu(x @ w1)
        w2 = mf.Variable(rng.normal(0, 0.3, (16, 3)).astype(np.float32))
        loss = mf.reduce_mean(mf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=h @ w2))
        train = mf.train.MomentumOptimizer(0.1, 0.9).minimize(loss)
    xv = rng.standard_normal((10, 8)).astype(np.float32)
    yv = rng.integers(0, 3, 10).astype(np.int32)
    with mf.Session(graph=g, config=config) as s:
        s.run(mf.global_variables_initializer())
        losses = [s.run([loss, train], {x: xv, y: yv})[0] for _ in range(5)]
        devices = s.plan_for([loss, train], {x: None, y: None}).devices
        return losses, s.run(w1), devices


def test_partitioned_training_equals_single_device_training():
    base, w_base, dev1 = _mlp_step(mf.ConfigProto(), split=False)
    split, w_split, dev2 = _mlp_step(TWO_CPUS, split=True)
    assert dev1 == ["/cpu:0"] and dev2 == ["/cpu:0", "/cpu:1"]
    np.testing.assert_allclose(base, split, rtol=1e-6)
    np.testing.assert_allclose(w_base, w_split, rtol=1e-6)
    assert base[-1] < base[0]


@pytest.mark.timeout(30)
def test_an_error_in_one_partition_does_not_hang_the_others():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2], name="x")
        with mf.device("/cpu:1"):
            bad = mf.check_numerics(mf.log(x), message="log of x")
        with mf.device("/cpu:0"):
            y = bad * 2.0  # waits on a Recv that never comes
    with mf.Session(graph=g, config=TWO_CPUS) as s:
        with pytest.raises(mf.InvalidArgumentError, match="log of x: Tensor had NaN or Inf"):
            s.run(y, {x: np.array([1.0, -1.0])})
        np.testing.assert_allclose(s.run(y, {x: np.array([1.0, 1.0])}), [0.0, 0.0])


def test_each_device_partition_runs_on_one_long_lived_thread(monkeypatch):
    """A device keeps its thread across steps (TF gives each device its own threads).
    On a GPU this matters: PyTorch caches cuDNN execution plans per thread
    (aten/src/ATen/native/cudnn/Conv_v8.cpp), so a new thread each step rebuilds them."""
    from systems.miniflow import executor

    seen: dict[str, set[int]] = {}
    real_run = executor.Executor.run

    def spy(self, step):
        seen.setdefault(self.device, set()).add(threading.get_ident())
        return real_run(self, step)

    monkeypatch.setattr(executor.Executor, "run", spy)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3], name="x")
        with mf.device("/cpu:1"):
            a = mf.tanh(x, name="a")
        with mf.device("/cpu:0"):
            y = a * 2.0
    with mf.Session(graph=g, config=TWO_CPUS) as s:
        for _ in range(5):
            np.testing.assert_allclose(s.run(y, {x: np.ones(3, np.float32)}),
                                       2 * np.tanh(np.ones(3)), rtol=1e-6)
    assert set(seen) == {"/cpu:0", "/cpu:1"}
    assert all(len(threads) == 1 for threads in seen.values()), seen


def _spy_on_executors(monkeypatch) -> dict[str, list[tuple[int, str]]]:
    """Per device: (thread, loop) for each step, 'inline' or 'driver'."""
    from systems.miniflow import executor

    seen: dict[str, list[tuple[int, str]]] = {}
    real_inline, real_driver = executor.Executor._run_inline, executor.Executor._run_driver

    def inline(self, vals):
        seen.setdefault(self.device, []).append((threading.get_ident(), "inline"))
        return real_inline(self, vals)

    def driver(self, vals, *args):
        seen.setdefault(self.device, []).append((threading.get_ident(), "driver"))
        return real_driver(self, vals, *args)

    monkeypatch.setattr(executor.Executor, "_run_inline", inline)
    monkeypatch.setattr(executor.Executor, "_run_driver", driver)
    return seen


def _fed_forward_to(device):
    """x fed on the client's device, ``tanh(x) * 2`` on ``device``: data flows one way."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3], name="x")
        with mf.device(device):
            y = mf.tanh(x) * 2.0
    return g, x, y


def test_a_gpu_partition_fed_from_the_cpu_runs_after_it_on_the_calling_thread(monkeypatch):
    # the feeds go from /cpu:0 to /gpu:0 and nothing comes back: /gpu:0 runs after
    # /cpu:0, on the client's thread, and finds its values already sent
    from .test_cross_device import pretend_gpu

    pretend_gpu(monkeypatch)
    seen = _spy_on_executors(monkeypatch)
    g, x, y = _fed_forward_to("/gpu:0")
    with mf.Session(graph=g) as s:
        for _ in range(3):
            np.testing.assert_allclose(s.run(y, {x: np.ones(3, np.float32)}),
                                       2 * np.tanh(np.ones(3)), rtol=1e-6)
        assert s.plan_for(y, {x: None}).sequential == [0, 1]
    me = threading.get_ident()
    assert seen["/cpu:0"] == seen["/gpu:0"] == [(me, "inline")] * 3


def test_cpu_partitions_keep_their_own_threads_even_when_they_send_only_forward(
        monkeypatch):
    # CPU kernels compute (numpy releases the GIL), so partitions overlap on their threads
    seen = _spy_on_executors(monkeypatch)
    g, x, y = _fed_forward_to("/cpu:1")
    with mf.Session(graph=g, config=TWO_CPUS) as s:
        s.run(y, {x: np.ones(3, np.float32)})
        assert s.plan_for(y, {x: None}).sequential is None
    assert seen["/cpu:1"][0][0] != threading.get_ident()
    assert seen["/cpu:1"][0][1] == "inline"  # it sends nothing: it waits in place


def _three_devices(bad: bool):
    """/cpu:0 and /cpu:1 send to each other (so the partitions run concurrently); /cpu:2
    only receives."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2], name="x")
        with mf.device("/cpu:1"):
            a = mf.check_numerics(mf.log(x), message="log of x") if bad else mf.tanh(x)
        with mf.device("/cpu:0"):
            b = a * 2.0
        with mf.device("/cpu:2"):
            c = a + b
    return g, x, b, c


def test_a_partition_that_sends_nothing_waits_for_its_recvs_on_the_inline_loop(monkeypatch):
    seen = _spy_on_executors(monkeypatch)
    g, x, b, c = _three_devices(bad=False)
    cfg = mf.ConfigProto(device_count={"CPU": 3})
    with mf.Session(graph=g, config=cfg) as s:
        for _ in range(3):
            got = s.run([b, c], {x: np.ones(2, np.float32)})
            np.testing.assert_allclose(got[1], 3 * np.tanh(np.ones(2)), rtol=1e-6)
        assert s.plan_for([b, c], {x: None}).sequential is None
    assert {loop for _, loop in seen["/cpu:2"]} == {"inline"}
    assert {loop for _, loop in seen["/cpu:0"]} == {"driver"}  # it receives and sends


@pytest.mark.timeout(30)
def test_an_inline_recv_wakes_up_when_its_sender_fails():
    g, x, b, c = _three_devices(bad=True)
    cfg = mf.ConfigProto(device_count={"CPU": 3})
    with mf.Session(graph=g, config=cfg) as s:
        with pytest.raises(mf.InvalidArgumentError, match="log of x: Tensor had NaN or Inf"):
            s.run([b, c], {x: np.array([1.0, -1.0], np.float32)})
        np.testing.assert_allclose(s.run(c, {x: np.ones(2, np.float32)}), [0.0, 0.0])


def test_two_outputs_of_one_op_cross_to_one_device_as_two_tensors():
    """Each output of a multi-output op is its own rendezvous key (TF keys by
    'name:index'): two outputs sent to one device must not be mixed up."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [4], name="x")
        with mf.device("/cpu:0"):
            first, second = make_op("SplitByShapes", [mf.tanh(x), mf.shape(x[:1]),
                                                      mf.shape(x[1:])], {"axis": 0}).outputs
        with mf.device("/cpu:1"):
            y = mf.concat([second, first * 10.0], 0)
    xv = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    with mf.Session(graph=g, config=TWO_CPUS) as s:
        got = s.run(y, {x: xv})
        plan = s.plan_for(y, {x: None})
        assert plan.devices == ["/cpu:0", "/cpu:1"]
        keys = list(plan.executors[1].recv_keys.values())
    assert len(keys) == 2 and len(set(keys)) == 2, keys  # one rendezvous key per output
    t = np.tanh(xv)
    np.testing.assert_allclose(got, np.concatenate([t[1:], t[:1] * 10]), rtol=1e-6)


def test_a_recv_registered_after_an_abort_gets_the_error():
    r = Rendezvous()
    boom = RuntimeError("partition failed")
    r.abort(boom)
    got = []
    r.recv_async("late", lambda v, e: got.append((v, e)))
    assert got == [(None, boom)]


@pytest.mark.timeout(60)
def test_an_op_after_a_cross_device_control_edge_waits_for_its_source():
    """The control edge's dummy Send on the source device waits for the source op: if
    the source fails, the op ordered after it on the other device never runs."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [400, 400], name="x")
        with mf.device("/cpu:1"):
            slow = x
            for _ in range(6):
                slow = mf.matmul(slow, x)
            checked = mf.check_numerics(mf.log(slow), message="late failure")
        with mf.device("/cpu:0"):
            w = mf.Variable(np.float32(0.0), name="w")
            with mf.control_dependencies([checked]):
                bump = w.assign_add(1.0)
    with mf.Session(graph=g, config=TWO_CPUS) as s:
        s.run(w.initializer)
        with pytest.raises(mf.InvalidArgumentError, match="late failure"):
            s.run(bump, {x: -np.ones((400, 400), np.float32)})
        assert s.run(w) == 0.0  # the assignment never ran
        nodes = s.plan_for(bump, {x: None}).snapshots["partitioned"].nodes
    dummies = [n for n in nodes if n[0].endswith("_control_dummy")]
    assert dummies and all(n[3] for n in dummies)  # the dummy has its source as control


def test_a_user_op_named_like_a_node_the_passes_make_gets_its_own_value_across_devices():
    """Rendezvous keys were names; the fusion pass names a fused chain "a/fused" without
    checking the graph, where a user op may hold that name: the two tensors crossing to
    /cpu:1 then traded values, without an error."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3], name="x")
        with mf.device("/cpu:0"):
            u = mf.multiply(x, 100.0, name="a/fused")
            t = mf.tanh(mf.negative(x), name="a")  # Neg + Tanh: fused as "a/fused"
        with mf.device("/cpu:1"):
            out_t, out_u = mf.identity(t), mf.identity(u)
    xv = np.array([1.0, 2.0, 3.0], np.float32)
    with mf.Session(graph=g, config=mf.ConfigProto(device_count={"CPU": 2})) as s:
        got_t, got_u = s.run([out_t, out_u], {x: xv})
    np.testing.assert_allclose(got_t, np.tanh(-xv), rtol=1e-6)
    np.testing.assert_allclose(got_u, xv * 100)
