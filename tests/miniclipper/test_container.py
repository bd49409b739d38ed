"""The model container process (systems/miniclipper/container.py), driven over gRPC."""

import time

import numpy as np
import pytest

from common import rpc
from common.procs import ProcessGroup
from common.wire import pack, unpack
from systems.miniclipper.container import SERVICE, ModelContainer, model_dir_in_store
from systems.miniclipper.datatypes import decode_outputs, encode_batch
from systems.miniclipper.deployers import save_python_closure


def _linear_model():
    w = np.random.default_rng(0).standard_normal((4, 3))

    def predict(xs):
        xs = np.asarray(xs)
        if np.any(xs[:, 0] < 0):
            raise ValueError("negative first feature")
        return (xs @ w).argmax(axis=1)
    return predict, w


SLEEP_S = 0.04  # the "sleepy" model's compute time per batch


def _sleepy(xs):
    import time
    time.sleep(SLEEP_S)
    return [0.0] * len(xs)


def _quitter(xs):
    """Model code that calls sys.exit() (an argument parser would) or is interrupted."""
    import sys
    if xs[0][0] < 0:
        sys.exit("bad input")
    if xs[0][0] > 100:
        raise KeyboardInterrupt
    return [float(x[0]) for x in xs]


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    fn, w = _linear_model()
    save_python_closure(fn, store / "lin" / "1")
    save_python_closure(lambda xs: [1.0], store / "short" / "1")
    save_python_closure(_sleepy, store / "sleepy" / "1")
    save_python_closure(_quitter, store / "quits" / "1")
    with ProcessGroup(tmp_path_factory.mktemp("logs")) as group:
        calls = {}
        names = ("lin", "short", "sleepy", "quits")
        children = [group.spawn(name, "systems.miniclipper.container",
                                ["--store", str(store), "--model", f"{name}/1"],
                                wait_ready=False) for name in names]  # start in parallel
        for name, child in zip(names, children, strict=True):
            group.wait_ready(child, 60)
            ch = rpc.channel(f"127.0.0.1:{child.info['port']}")
            calls[name] = {m: rpc.method(ch, SERVICE, m) for m in ("Predict", "Health",
                                                                     "Control")}
        yield calls, w, store, group


def _predict(call, xs):
    batch = [np.asarray(x, np.float64) for x in xs]
    return decode_outputs(call(encode_batch(batch, "doubles", {}), timeout=10))


def test_outputs_equal_the_in_process_model(container):
    calls, w, _, _ = container
    xs = np.random.default_rng(1).uniform(0, 1, (50, 4))
    meta, outs, _ = _predict(calls["lin"]["Predict"], xs)
    assert outs == (xs @ w).argmax(axis=1).tolist()
    assert meta["pid"] > 0 and meta["t1"] >= meta["t0"]


def test_a_model_exception_fails_only_its_batch(container):
    calls, w, _, _ = container
    before = unpack(calls["lin"]["Health"](b"", timeout=5))[0]["calls"]
    meta, outs, _ = _predict(calls["lin"]["Predict"], [[-1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    assert "ValueError: negative first feature" in meta["error"] and outs == []
    meta, outs, _ = _predict(calls["lin"]["Predict"], [[1.0, 0, 0, 0]])
    assert "error" not in meta and outs == [int(np.argmax(w[0]))]
    assert unpack(calls["lin"]["Health"](b"", timeout=5))[0]["calls"] == before + 2


def test_a_model_that_exits_or_is_interrupted_fails_only_its_batch(container):
    """SystemExit and KeyboardInterrupt are no Exception: they used to escape the
    handler, leave the batch unanswered, and cost a restart after the hang timeout."""
    calls = container[0]["quits"]
    for bad, why in (([-1.0], "SystemExit: bad input"), ([101.0], "KeyboardInterrupt")):
        meta, outs, _ = _predict(calls["Predict"], [bad])
        assert meta["error"].startswith(why) and outs == []
        meta, outs, _ = _predict(calls["Predict"], [[3.0]])  # the next batch is served
        assert "error" not in meta and outs == [3.0]


def test_output_count_is_checked(container):
    calls, _, _, _ = container
    meta, _, _ = _predict(calls["short"]["Predict"], [[1.0], [2.0], [3.0]])
    assert "returned 1 outputs for 3 inputs" in meta["error"]


def test_garbage_batches_get_an_error_not_a_crash(container):
    calls, _, _, _ = container
    meta, _ = unpack(calls["lin"]["Predict"](pack({"n": 5}, [np.zeros(3)]), timeout=5))
    assert meta["error"].startswith("bad batch")
    assert unpack(calls["lin"]["Health"](b"", timeout=5))[0]["model"] == "lin/1"


def _compute_s(call):
    """The container's own compute time of one batch (its t1 - t0, in seconds), so that
    the RPC's and this process's scheduling delays do not count."""
    meta, _, _ = _predict(call, [[1.0]])
    assert "error" not in meta
    return (meta["t1"] - meta["t0"]) / 1e6


def test_control_sets_the_slowdown(container):
    """Slowdown f makes each batch take f times its compute time: with a model that
    sleeps SLEEP_S per batch, f = 3 takes at least 2.5x what f = 1 takes (a margin for
    a loaded machine: sleeping only ever overshoots)."""
    calls, _, _, _ = container
    c = calls["sleepy"]
    try:
        base = min(_compute_s(c["Predict"]) for _ in range(2))
        h = unpack(c["Control"](pack({"slowdown": 3}), timeout=5))[0]
        assert h["slowdown"] == 3
        slow = _compute_s(c["Predict"])
        assert base >= SLEEP_S * 0.9 and slow >= 2.5 * base, (base, slow)
        assert unpack(c["Control"](pack({"slowdown": 0.5}), timeout=5))[0]["slowdown"] == 1
        for bad in (float("inf"), "x", None, -10 ** 400):  # inf failed every later batch
            got = unpack(c["Control"](pack({"slowdown": bad}), timeout=5))[0]
            assert "slowdown must be a number" in got["error"]
        assert unpack(c["Control"](pack({}), timeout=5))[0]["slowdown"] == 1
    finally:
        c["Control"](pack({"slowdown": 1}), timeout=5)


def test_containers_load_only_from_their_store(container, tmp_path):
    _, _, store, group = container
    for bad in ("../lin/1", "lin", "lin/1/extra", "/etc/passwd/1"):
        with pytest.raises(ValueError, match="inside the store"):
            model_dir_in_store(store, bad)
    with pytest.raises(RuntimeError, match="exited with code"):
        group.spawn("escape", "systems.miniclipper.container",
                    ["--store", str(store), "--model", "../outside"], ready_timeout=30)


SLOW_SLEEP_S = 0.1


def _sleepy_slow(xs):
    time.sleep(SLOW_SLEEP_S)
    return [0.0] * len(xs)


def _batch_s(c):
    t0 = time.perf_counter()
    meta, outs, _ = decode_outputs(c.Predict(encode_batch([np.zeros(2)], "doubles", {}), None))
    assert "error" not in meta and outs == [0.0]
    return time.perf_counter() - t0


def test_slowdown_makes_a_batch_take_f_times_its_compute_not_f_plus_one():
    c = ModelContainer(_sleepy_slow, {}, "sleepy/1")
    base = min(_batch_s(c) for _ in range(2))
    c.slowdown = 3.0
    slow = min(_batch_s(c) for _ in range(2))
    assert 2.6 * base <= slow < 3.6 * base, (base, slow)  # 3x, not 4x


def test_the_container_module_runs_once_without_runpy_warning():
    """The package used to import container.py (for MODEL_META), so ``python -m`` ran it a
    second time, and runpy's warning was the first line of every failed start's log."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m",
                          "systems.miniclipper.container", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "RuntimeWarning" not in out.stderr, out.stderr[-500:]
