"""Random ops and dropout: the distributions, TF's seed rules, and the runtime's
treatment of stateful ops (never folded, never merged, one stream per op and session)."""

import numpy as np
import pytest

import systems.miniflow as mf

from .helpers import BACKENDS, session


def _run(graph, fetches, feeds=None, runs=1, backend="numpy", **config):
    with session(graph, backend, **config) as s:
        return [s.run(fetches, feeds or {}) for _ in range(runs)]


def test_the_distributions_have_their_moments_and_ranges():
    """Oracle: the moments of each distribution, over 200,000 draws (a failure is a
    4-sigma event or a wrong formula). A normal truncated at two standard deviations has
    a standard deviation of 0.8796 of the untruncated one."""
    n = 200_000
    g = mf.Graph()
    with g.as_default():
        mf.set_random_seed(1)
        normal = mf.random_normal([n], mean=3.0, stddev=2.0)
        trunc = mf.truncated_normal([n], mean=-1.0, stddev=0.5, dtype=mf.float64)
        unif = mf.random_uniform([n], minval=-2.0, maxval=6.0)
        ints = mf.random_uniform([n], minval=3, maxval=7, dtype=mf.int64)
    (a, t, u, i), = _run(g, [normal, trunc, unif, ints])
    assert (a.dtype, t.dtype, u.dtype, i.dtype) == (np.float32, np.float64, np.float32,
                                                    np.int64)
    tol = 4 / np.sqrt(n)
    assert abs(a.mean() - 3.0) < 2.0 * tol and abs(a.std() - 2.0) < 2.0 * tol * 1.5
    assert np.abs(t + 1.0).max() <= 1.0 and abs(t.std() / 0.5 - 0.8796) < 0.01
    assert -2.0 <= u.min() and u.max() < 6.0 and abs(u.mean() - 2.0) < 8 * tol
    counts = np.bincount(i, minlength=8)
    assert counts[:3].sum() == counts[7:].sum() == 0
    assert np.all(np.abs(counts[3:7] / n - 0.25) < 0.01)


def test_seeds_follow_tf_and_each_session_replays_its_ops_streams():
    """As TF (random_seed.get_seed; a kernel's generator lives as long as its session):
    with a graph seed, two graphs built alike draw alike; a run draws each op once, however
    often it is fetched; the next run draws the next values; a new session starts again;
    two ops of one graph draw differently; an op seed alone is enough."""
    def build():
        g = mf.Graph()
        with g.as_default():
            mf.set_random_seed(7)
            a, b = mf.random_normal([3]), mf.random_normal([3])
            mf.random_uniform([3], seed=4)
            return g, [a, a * 1.0, b]

    g, fetches = build()
    first, second = _run(g, fetches, runs=2)
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], second[0]) and not np.array_equal(first[0], first[2])
    again = _run(g, fetches)[0]
    other = _run(*build())[0]
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(first, other, strict=True):
        np.testing.assert_array_equal(x, y)
    assert [op.attrs["seed2"] for op in g.get_operations() if op.type == "RandomUniform"] == [4]

    h = mf.Graph()
    with h.as_default():
        d = mf.random_uniform([3], seed=4)  # no graph seed: TF's default one
        e = mf.random_uniform([3])  # no seed at all: the OS's entropy
    assert d.op.inputs[0].op.type == "Const"
    np.testing.assert_array_equal(_run(h, d)[0], _run(h, d)[0])
    assert not np.array_equal(_run(h, e)[0], _run(h, e)[0])


def test_a_stream_is_the_sessions_not_the_plans():
    """Two run signatures (fetches a; fetches a and b) get two plans, and the second
    continues the first's sequence, as TF's OpSegment hands a stateful kernel to every
    executor of the session: a[0] a[1] a[2] in one session equals three runs of a."""
    g = mf.Graph()
    with g.as_default():
        mf.set_random_seed(3)
        a = mf.random_normal([4])
        b = a * 2.0
    with mf.Session(graph=g) as s:
        mixed = [s.run(a), s.run([a, b])[0], s.run(b) / 2.0]
    np.testing.assert_allclose(np.array(mixed), np.array(_run(g, a, runs=3)), rtol=1e-6)


@pytest.mark.parametrize("folding", [True, False])
def test_passes_neither_fold_nor_merge_random_ops(folding):
    """A random op under arithmetic on constants is not folded into one constant (a
    folded graph would repeat its first draw for ever), and two ops with one seed are not
    merged by CSE: they have a stream each, so after the first is run alone they differ."""
    g = mf.Graph()
    with g.as_default():
        a = mf.random_normal([2], seed=1) * 2.0 + 1.0
        b = mf.random_normal([2], seed=1) * 2.0 + 1.0
    opts = mf.GraphOptions(constant_folding=folding, common_subexpression=folding)
    with mf.Session(graph=g, config=mf.ConfigProto(graph_options=opts)) as s:
        a1, = s.run([a])
        a2, b1 = s.run([a, b])
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a1, a2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_depend_on_neither_threads_nor_backend(backend):
    """One stream per op: 16 random ops run by 1 or 4 inter-op threads, on either CPU
    backend, over two devices, give the same values."""
    g = mf.Graph()
    with g.as_default():
        mf.set_random_seed(11)
        outs = []
        for i in range(16):
            with mf.device(f"/cpu:{i % 2}"):
                outs.append(mf.tanh(mf.random_normal([64, 64])) @ mf.random_uniform([64, 8]))
    want = _run(g, outs, inter_op_parallelism_threads=1, device_count={"CPU": 2})[0]
    got = _run(g, outs, backend=backend, inter_op_parallelism_threads=4,
               device_count={"CPU": 2})[0]
    for x, y in zip(want, got, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_a_variable_initialised_from_a_random_op_keeps_its_draw():
    """TF1's usual initialiser: the draw happens when the initializer runs, once; reading
    the variable afterwards does not draw again."""
    g = mf.Graph()
    with g.as_default():
        w = mf.Variable(mf.truncated_normal([3, 2], stddev=0.1, seed=5), name="w")
    with mf.Session(graph=g) as s:
        s.run(w.initializer)
        v1, v2 = s.run(w), s.run(w)
    np.testing.assert_array_equal(v1, v2)
    assert np.abs(v1).max() <= 0.2 and v1.std() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_keeps_scales_and_differentiates_through_its_mask(backend):
    """keep_prob 0.25: every output is 0 or 4x its input, about a quarter are kept, and
    the gradient of the sum is the same mask times 4 (oracle: out / x). Fed 1.0 as a
    tensor, it is the identity; a noise shape of (1, n) drops whole columns."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 500])
        kp = mf.placeholder(mf.float32, [])
        d = mf.nn.dropout(x, kp, seed=2)
        (dx,) = mf.gradients(mf.reduce_sum(d), [x])
        cols = mf.nn.dropout(x, rate=0.5, noise_shape=[1, 500], seed=3)
    xv = np.random.default_rng(0).uniform(1, 2, (40, 500)).astype(np.float32)
    with session(g, backend) as s:
        out, grad, c = s.run([d, dx, cols], {x: xv, kp: 0.25})
        same = s.run(d, {x: xv, kp: 1.0})
    kept = out != 0
    np.testing.assert_allclose(out[kept], 4 * xv[kept], rtol=1e-6)
    assert abs(kept.mean() - 0.25) < 0.02
    np.testing.assert_allclose(grad, out / xv, rtol=1e-6)
    np.testing.assert_array_equal(same, xv)
    assert np.all((c != 0) == (c[:1] != 0)) and 0.3 < (c[0] != 0).mean() < 0.7


def test_dropout_and_random_ops_refuse_what_tf_refuses():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2])
        assert mf.nn.dropout(x, rate=0.0) is x  # as TF: nothing to drop, no ops
        with pytest.raises(ValueError, match="Cannot specify both 'keep_prob' and 'rate'"):
            mf.nn.dropout(x, keep_prob=0.5, rate=0.5)
        with pytest.raises(ValueError, match=r"rate must be a float in \[0, 1\), got -0.5"):
            mf.nn.dropout(x, keep_prob=1.5)
        with pytest.raises(ValueError, match="must be a floating point tensor"):
            mf.nn.dropout(mf.constant([1, 2]), 0.5)
        with pytest.raises(ValueError, match="Must specify maxval for integer dtype int32"):
            mf.random_uniform([2], dtype=mf.int32)
        with pytest.raises(ValueError, match="dtype must be a floating type, got int32"):
            mf.random_normal([2], dtype=mf.int32)
        n = mf.placeholder(mf.int32, [1])
        r = mf.random_normal(n)
    assert r.shape == (None,)
    with mf.Session(graph=g) as s:
        assert s.run(r, {n: [3]}).shape == (3,)
        with pytest.raises(mf.InvalidArgumentError, match="negative dimension"):
            s.run(r, {n: [-1]})


def test_op_seeds_count_the_random_ops_as_tf2s_get_seed_does():
    """With only a graph seed, TF 2.21 gave these four ops the op seeds 0, 9 (its own),
    1, 2, with or without an unrelated placeholder built first: the counter is of random
    ops, so other ops change no draw (we counted every op, so one placeholder reseeded
    all). Negative seeds are taken modulo 2**31, as TF's, not refused when run."""
    for extra in (False, True):
        g = mf.Graph()
        with g.as_default():
            mf.set_random_seed(1)
            if extra:
                mf.placeholder(mf.float32, [3])
            mf.random_uniform([3]), mf.random_normal([2], seed=9)
            mf.truncated_normal([2]), mf.random_uniform([2], maxval=5, dtype=mf.int32)
        assert [op.attrs["seed2"] for op in g.get_operations() if "seed2" in op.attrs] == \
            [0, 9, 1, 2]
    g = mf.Graph()
    with g.as_default():
        mf.set_random_seed(-1)
        a, b = mf.random_normal([2]), mf.random_normal([2], seed=-5)
    assert (a.op.inputs[0].op.inputs[0].op.attrs["seed"], b.op.inputs[0].op.inputs[0].op.attrs[
        "seed2"]) == (2**31 - 1, 2**31 - 5)
    assert all(v.shape == (2,) for v in _run(g, [a, b])[0])


def test_uniform_draws_stay_below_maxval_in_every_precision():
    """A float64 draw rounded to float16 was 1.0 about once in 4,000 (279 in a million,
    where TF gave none): draws are made in the op's own precision."""
    g = mf.Graph()
    with g.as_default():
        u16 = mf.random_uniform([1_000_000], dtype=mf.float16, seed=1)
        u32 = mf.random_uniform([1_000_000], minval=-1.0, maxval=1.0, seed=2)
    (a, b), = _run(g, [u16, u32])
    assert a.dtype == np.float16 and 0 <= a.min() and a.max() < 1.0
    assert np.all(np.diff(np.unique(a)) >= 2.0**-11) and len(np.unique(a)) == 1024
    assert b.dtype == np.float32 and -1.0 <= b.min() and b.max() < 1.0
