"""Batch-size controllers (systems/miniclipper/batching.py) against their definitions."""

import asyncio
import time

import numpy as np
import pytest

from systems.miniclipper import task_executor
from systems.miniclipper.batching import (
    CONTROLLERS,
    AIMDBatcher,
    BatchController,
    BatchingConfig,
    QuantileRegressionBatcher,
    StaticBatcher,
    aimd_step,
    fit_quantile_line,
    make_controller,
    pinball_loss,
)
from systems.miniclipper.cache import PredictionCache
from systems.miniclipper.container import ModelContainer
from systems.miniclipper.datatypes import decode_batch
from systems.miniclipper.metrics import Metrics
from systems.miniclipper.task_executor import TaskExecutor


def test_static_never_moves():
    c = StaticBatcher(BatchingConfig("static", size=8, max_size=8))
    for lat in (0.001, 0.5, 0.0):
        assert c.update_batch_size(8, lat, 0.01) == 8


def test_aimd_follows_batching_rs():
    # under target - 10%: +2 (only after a full batch); between: hold; over: x0.9
    assert aimd_step(10, 10, 0.005, 0.010, 512) == 12
    assert aimd_step(10, 4, 0.005, 0.010, 512) == 10          # a half-empty batch: hold
    assert aimd_step(10, 10, 0.0095, 0.010, 512) == 10        # inside the margin: hold
    assert aimd_step(10, 10, 0.011, 0.010, 512) == 9          # floor(10 * 0.9)
    assert aimd_step(100, 60, 0.011, 0.010, 512) == 90        # x0.9 of the limit
    assert aimd_step(3, 3, 0.011, 0.010, 512) == 2            # by at least one
    assert aimd_step(10, 3, 0.011, 0.010, 512) == 10          # a small slow batch: hold
    assert aimd_step(1, 1, 1.0, 0.010, 512) == 1              # never below 1
    assert aimd_step(511, 511, 0.0, 0.010, 512) == 512        # capped


def test_aimd_converges_to_the_largest_size_within_target():
    """Latency 1 ms + 0.1 ms per query and a 5 ms target: the largest size that meets the
    target is 40; AIMD ends oscillating just below it, never settling above it."""
    c = AIMDBatcher(BatchingConfig("aimd"))
    sizes = []
    for _ in range(400):
        b = c.batch_size
        sizes.append(c.update_batch_size(b, 0.001 + 0.0001 * b, 0.005))
    tail = sizes[-100:]
    assert max(tail) <= 41 and min(tail) >= 30


def _pairs_bruteforce(x, y, q):
    best = np.inf
    for i in range(len(x)):
        for j in range(len(x)):
            if x[i] != x[j]:
                a = (y[j] - y[i]) / (x[j] - x[i])
                best = min(best, pinball_loss(x, y, a, y[i] - a * x[i], q))
    return best


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_quantile_fit_is_optimal(q):
    """Our exact fit reaches the least pinball loss: no line through two points, and
    no line from scikit-learn's LP solver, does better."""
    from sklearn.linear_model import QuantileRegressor

    rng = np.random.default_rng(1)
    x = rng.integers(1, 64, 40).astype(float)
    y = 0.002 + 0.0001 * x + rng.exponential(0.0005, 40)
    a, b = fit_quantile_line(x, y, q)
    ours = pinball_loss(x, y, a, b, q)
    assert ours <= _pairs_bruteforce(x, y, q) + 1e-12
    sk = QuantileRegressor(quantile=q, alpha=0.0, solver="highs").fit(x[:, None], y)
    assert ours <= pinball_loss(x, y, sk.coef_[0], sk.intercept_, q) + 1e-9
    assert np.mean(y <= a * x + b) >= q - 1.5 / len(x)  # the line sits at the q-quantile


def test_quantile_fit_needs_two_sizes():
    with pytest.raises(ValueError, match="two or more batch sizes"):
        fit_quantile_line(np.ones(5), np.arange(5.0), 0.9)


def test_quantile_batcher_picks_the_largest_size_whose_quantile_fits():
    """Latency = 2 ms + 0.2 ms per query (+ noise up to 0.3 ms); target 10 ms. The p99
    line is about 2.3 + 0.2 b, so the answer is floor((10 - 2.3) / 0.2) = 38 (+-1)."""
    rng = np.random.default_rng(0)
    c = QuantileRegressionBatcher(BatchingConfig("quantile", quantile=0.99))
    for _ in range(300):
        b = max(1, int(rng.integers(max(1, c.batch_size - 4), c.batch_size + 1)))
        c.update_batch_size(b, 0.002 + 0.0002 * b + rng.uniform(0, 0.0003), 0.010)
    assert 36 <= c.batch_size <= 39, c.state()
    assert c.alpha == pytest.approx(0.0002, rel=0.2)


def test_quantile_batcher_backs_off_when_the_model_slows():
    c = QuantileRegressionBatcher(BatchingConfig("quantile"))
    for _ in range(100):
        b = c.batch_size
        c.update_batch_size(b, 0.001 + 0.0001 * b, 0.008)
    fast = c.batch_size
    for _ in range(100):
        b = c.batch_size
        c.update_batch_size(b, 2 * (0.001 + 0.0001 * b), 0.008)
    assert c.batch_size < fast and 2 * (0.001 + 0.0001 * c.batch_size) < 0.008 * 1.05


def test_config_rejects_nonsense_with_a_reason():
    with pytest.raises(ValueError, match="policy must be one of"):
        BatchingConfig("lifo")
    for bad in ({"size": 1.5}, {"max_size": 8.0}, {"size": True}):  # range(n) needs ints
        with pytest.raises(ValueError, match="must be a whole number"):
            BatchingConfig.from_dict({"policy": "static", "max_size": 8, **bad})
    with pytest.raises(ValueError, match="unknown batching fields"):
        BatchingConfig.from_dict({"policy": "aimd", "sizee": 3})
    assert make_controller(BatchingConfig("static", size=4)).update_batch_size(1, 9, 1) == 4


class _Scripted(BatchController):
    """A controller written against the base class only: after each batch it takes the
    next size of a script, and remembers what the replica loop told it."""

    name = "scripted"
    script = [5, 1, 4, 4]

    def __init__(self, cfg):
        super().__init__(cfg)
        self.told, self._next = [], iter(self.script)

    def update_batch_size(self, batch_size, latency_s, target_s):
        self.told.append((batch_size, latency_s, target_s))
        self.batch_size = next(self._next, self.batch_size)
        return self.batch_size


class _InProcessStream:
    """The container's PredictStream, answered in this process by its real handler."""

    def __init__(self, container):
        self.container, self.pending, self.sizes = container, [], []

    async def write(self, req):
        self.sizes.append(int(decode_batch(req)[0]["n"]))
        self.pending.append(req)

    async def read(self):
        return self.container.Predict(self.pending.pop(0), None)

    def cancel(self):
        pass


def test_a_subclassed_controller_sizes_the_replicas_batches(monkeypatch):
    """The BatchController seam: register a subclass by name and the task executor's
    replica loop takes exactly the batch sizes it answers, starting from the configured
    size, and tells it each batch's size, latency and target (the SLO's share)."""
    with pytest.raises(TypeError):
        BatchController(BatchingConfig())  # update_batch_size is abstract
    monkeypatch.setitem(CONTROLLERS, "scripted", _Scripted)
    stream = _InProcessStream(ModelContainer(lambda xs: [x[0] * 10 for x in xs], {}))

    class _Channel:
        async def close(self):
            pass

    monkeypatch.setattr(task_executor.rpc, "aio_channel", lambda address: _Channel())
    monkeypatch.setattr(task_executor.rpc, "stream", lambda ch, svc, m: lambda: stream)
    model = ("m", "1")
    cfg = BatchingConfig("scripted", size=2, max_size=8, slo_fraction=0.5)

    async def run():
        ex = TaskExecutor(PredictionCache(), Metrics(), lambda rep, why: None)
        ex.add_model(model, "doubles", cfg)
        futures = ex.schedule(model, [np.array([float(i)]) for i in range(12)],
                              time.monotonic() + 30, 2.0)  # all queued before the loop runs
        rep = ex.add_replica(model, 0, "in-process", 0)
        outs = await asyncio.wait_for(asyncio.gather(*futures), 20)
        await ex.remove_replica(model, 0)
        return rep.controller, outs

    ctrl, outs = asyncio.run(run())
    assert isinstance(ctrl, _Scripted) and ctrl.state() == {"batch_size": 4.0}
    assert outs == [10.0 * i for i in range(12)]
    assert stream.sizes == [2, 5, 1, 4]  # the configured size, then the script's
    assert [b for b, _, _ in ctrl.told] == [2, 5, 1, 4]
    assert all(lat > 0 and target == 1.0 for _, lat, target in ctrl.told)


def test_quantile_pick_is_the_largest_size_whose_predicted_latency_fits():
    """A noise-free line 2 ms + 0.2 ms/query, target 10.1 ms: every pair of samples
    fits the same line, so the pick must be exactly floor(8.1 / 0.2) = 40 and its
    predicted latency must fit the target (ceil would pick 41: 10.2 ms > 10.1 ms)."""
    c = QuantileRegressionBatcher(BatchingConfig("quantile", max_size=512))
    lat = lambda b: 0.002 + 0.0002 * b  # noqa: E731
    for b in list(range(30, 46)) + [30]:  # sizes 30..45 seen: the ceiling (47) is slack
        c.update_batch_size(b, lat(b), 0.0101)
    assert c.batch_size == 40, c.state()
    assert c.alpha * c.batch_size + c.beta <= 0.0101


def test_quantile_pick_never_jumps_far_past_the_sizes_measured():
    """The docstring's "never jump far past the largest size measured": with latency flat
    over sizes 1..4, the line alone would pick the maximum, 512."""
    c = QuantileRegressionBatcher(BatchingConfig("quantile", max_size=512))
    for i in range(20):
        b = 1 + i % 4  # sizes 1..4 only
        c.update_batch_size(b, 0.001 + 0.0001 * b, 1.0)
    assert c.batch_size <= 4 + 2, c.state()


def test_quantile_batcher_steps_as_aimd_when_not_even_a_batch_of_one_fits_the_fit():
    """Fit: 50 ms + 10 ms/query. With the target cut to 55 ms the line says no batch
    fits (alpha + beta = 60 ms > 55 ms), though the batch just run (50 ms) was under
    it; the batcher must step as AIMD does (here: hold the limit), not collapse to a
    batch of one, which would cut throughput just as the queue grows."""
    c = QuantileRegressionBatcher(BatchingConfig("quantile", size=10))
    for i in range(20):
        b = 10 if i % 2 else 20
        c.update_batch_size(b, 0.01 * b + 0.05, 1.0)  # a generous target while learning
    assert (c.alpha, c.beta) == (pytest.approx(0.01), pytest.approx(0.05))
    limit = c.batch_size
    assert limit == 22  # the largest size measured + 2
    want = aimd_step(limit, 10, 0.05, 0.055, c.cfg.max_size)
    assert want == limit  # under the target, inside AIMD's margin: hold
    assert c.update_batch_size(10, 0.05, 0.055) == want
