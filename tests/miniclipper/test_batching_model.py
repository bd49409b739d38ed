"""Batch-size controllers: sequences of measurements against the docstrings' rules.

Model-based (hypothesis) tests from a stateful audit (2026-11-28): the real code and
a brute-force model take the same random operations and must agree after each.
Raise ``MODEL_EXAMPLES`` (default 100) to search longer.
"""

import math
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from systems.miniclipper.batching import (
    AIMDBatcher,
    BatchingConfig,
    QuantileRegressionBatcher,
    StaticBatcher,
)

MAX = int(os.environ.get("MODEL_EXAMPLES", 100))
lat = st.just(0.0) | st.floats(1e-9, 0.05)  # measured: monotonic() differences
steps = st.lists(st.tuples(st.integers(1, 70), lat), min_size=1, max_size=120)


def aimd_model(limit, b, latency, target, max_size):
    if latency < target * 0.9:
        return min(max_size, limit + 2) if b >= limit else limit
    if latency < target or 2 * b < limit:
        return limit
    return max(1, min(limit - 1, math.floor(limit * 0.9)))


@settings(max_examples=MAX, deadline=None)
@given(st.integers(1, 64), st.data(), steps, st.floats(0.001, 0.05))
def test_aimd_sequence_follows_its_rule_and_stays_in_range(max_size, data, seq, target):
    size = data.draw(st.integers(1, max_size))
    c = AIMDBatcher(BatchingConfig("aimd", size=size, max_size=max_size))
    limit = size
    for b, latency in seq:
        b = min(b, limit)  # a replica never takes more than the limit
        new = c.update_batch_size(b, latency, target)
        want = aimd_model(limit, b, latency, target, max_size)
        assert new == want == c.batch_size
        assert 1 <= new <= max_size
        if latency >= target and b == limit and limit > 1:
            assert new < limit  # a full slow batch always shrinks the limit
        if latency < 0.9 * target and b == limit and limit < max_size:
            assert new > limit
        limit = new


@settings(max_examples=MAX, deadline=None)
@given(st.integers(1, 64), st.data(), steps, st.floats(0.001, 0.05),
       st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_quantile_batcher_stays_in_range(max_size, data, seq, target, q):
    size = data.draw(st.integers(1, max_size))
    c = QuantileRegressionBatcher(BatchingConfig("quantile", size=size, max_size=max_size,
                                                 quantile=q), warmup=4, refit_every=3)
    seen = set()
    for b, latency in seq:
        b = min(b, c.batch_size)
        seen.add(b)
        prev = c.batch_size
        new = c.update_batch_size(b, latency, target)
        assert isinstance(new, int) and 1 <= new <= max_size
        if len(c.samples) >= 4 and len({x for x, _ in c.samples}) >= 2 and latency < target \
                and c.alpha > 0 and c.alpha + c.beta < target:
            xs = {x for x, _ in c.samples}
            assert new <= max(xs) + 2
            assert new == 1 or c.alpha * new + c.beta <= target * (1 + 1e-12)
        else:
            assert new == aimd_model(prev, b, latency, target, max_size)


@settings(max_examples=MAX, deadline=None)
@given(st.integers(1, 64), st.data(), steps)
def test_static_never_moves(max_size, data, seq):
    size = data.draw(st.integers(1, max_size))
    c = StaticBatcher(BatchingConfig("static", size=size, max_size=max_size))
    assert all(c.update_batch_size(b, x, 0.01) == size for b, x in seq)
