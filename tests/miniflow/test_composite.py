"""The TF1 staples built from other ops (ops/composite.py), against numpy oracles. (The
same functions run through TF 2.21's ``tf.compat.v1`` while they were written gave the
same values and gradients.)"""

import numpy as np
import pytest

import systems.miniflow as mf


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_losses_clipping_and_lookups_and_their_gradients():
    rng = np.random.default_rng(0)
    zv = rng.standard_normal((4, 5)).astype(np.float32)
    soft = rng.dirichlet(np.ones(5), 4).astype(np.float32)
    g = mf.Graph()
    with g.as_default():
        z, lab = mf.Variable(zv), mf.Variable(soft)
        x1 = mf.nn.softmax_cross_entropy_with_logits(labels=lab, logits=z)
        x2 = mf.nn.softmax_cross_entropy_with_logits_v2(labels=lab, logits=z)
        clip = mf.clip_by_value(z, -0.5, 0.7)
        l2, rows = mf.nn.l2_loss(z), mf.nn.embedding_lookup(z, [3, 0, 3])
        g1 = mf.gradients(mf.reduce_sum(x1), [z, lab])
        g2 = mf.gradients(mf.reduce_sum(x2), [z, lab])
        gc, gl, ge = (mf.gradients(mf.reduce_sum(t), [z])[0] for t in (clip, l2, rows))
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        got = s.run([x1, x2, clip, l2, rows, g1[0], g2, gc, gl, ge])
    x1v, x2v, cv, l2v, rv, g1z, (g2z, g2l), gcv, glv, gev = got
    want_x = -(soft * _log_softmax(zv)).sum(-1)
    np.testing.assert_allclose(x1v, want_x, rtol=1e-5)
    np.testing.assert_allclose(x2v, want_x, rtol=1e-5)
    p = np.exp(_log_softmax(zv))
    assert g1[1] is None  # TF1's v1: no gradient into the labels
    np.testing.assert_allclose(g1z, p - soft, atol=1e-6)  # rows of labels sum to 1
    np.testing.assert_allclose(g2z, p - soft, atol=1e-6)
    np.testing.assert_allclose(g2l, -_log_softmax(zv), rtol=1e-5)
    np.testing.assert_array_equal(cv, np.clip(zv, -0.5, 0.7))
    np.testing.assert_array_equal(gcv, ((zv > -0.5) & (zv < 0.7)).astype(np.float32))
    np.testing.assert_allclose(l2v, (zv ** 2).sum() / 2, rtol=1e-6)
    np.testing.assert_allclose(glv, zv, rtol=1e-6)
    np.testing.assert_array_equal(rv, zv[[3, 0, 3]])
    np.testing.assert_array_equal(gev, np.bincount([3, 0, 3], minlength=4)[:, None]
                                  * np.ones((4, 5), np.float32))


def test_zeros_ones_and_an_interactive_session():
    """``zeros``/``ones`` of a known shape are constants, of a shape tensor a Fill; an
    InteractiveSession is the default session until it is closed, so ``eval`` needs no
    ``with``; the TF1 loss wants both its labels and its logits."""
    g = mf.Graph()
    with g.as_default():
        n = mf.placeholder(mf.int32, [2])
        a, b = mf.zeros([2, 3]), mf.ones(n, dtype=mf.int64)
        with pytest.raises(ValueError, match="needs labels and logits"):
            mf.nn.softmax_cross_entropy_with_logits(logits=a)
    assert (a.op.type, b.op.type, a.shape, b.shape) == ("Const", "Fill", (2, 3), (None, None))
    sess = mf.InteractiveSession(graph=g)
    assert mf.get_default_session() is sess
    np.testing.assert_array_equal(a.eval(), np.zeros((2, 3), np.float32))
    got = b.eval({n: [1, 2]})
    assert got.dtype == np.int64 and got.tolist() == [[1, 1]]
    sess.close()
    assert mf.get_default_session() is None


def test_clipping_by_norm_and_by_global_norm():
    """Oracles in numpy: the global norm of all tensors together, the scale
    ``c / max(norm, c)``; None passes through (a variable without a gradient); an
    infinite norm makes NaN, as TF's; a zero tensor clipped by its norm stays zero with
    a finite gradient. (TF 2.21 gave the same values for this program.)"""
    rng = np.random.default_rng(1)
    av, bv = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(
        np.float32)
    g = mf.Graph()
    with g.as_default():
        a, b, z = mf.Variable(av), mf.Variable(bv), mf.Variable(np.zeros(3, np.float32))
        (ca, none, cb), norm = mf.clip_by_global_norm([a, None, b], 0.5)
        (big,), _ = mf.clip_by_global_norm([a], 100.0)
        rows, zero = mf.clip_by_norm(a, 1.0, axes=[1]), mf.clip_by_norm(z, 1.0)
        (nan,), _ = mf.clip_by_global_norm([a], 1.0, use_norm=np.float32(np.inf))
        gz = mf.gradients(mf.reduce_sum(zero), [z])[0]
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        cav, cbv, nv, bigv, rv, zv, nanv, gzv = s.run([ca, cb, norm, big, rows, zero, nan, gz])
    total = np.sqrt((av ** 2).sum() + (bv ** 2).sum())
    assert none is None
    np.testing.assert_allclose(nv, total, rtol=1e-6)
    np.testing.assert_allclose(cav, av * 0.5 / total, rtol=1e-5)
    np.testing.assert_allclose(cbv, bv * 0.5 / total, rtol=1e-5)
    np.testing.assert_allclose(bigv, av, rtol=1e-6)  # under the clip: unchanged
    row_norm = np.sqrt((av ** 2).sum(1, keepdims=True))
    np.testing.assert_allclose(rv, av / np.maximum(row_norm, 1.0), rtol=1e-5)
    assert np.all(zv == 0) and np.all(np.isfinite(gzv)) and np.all(np.isnan(nanv))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_expand_dims_squeeze_stack_and_unstack_against_numpy(backend):
    """Values against numpy's expand_dims/squeeze/stack, static shapes as TF 2.21's
    (``(None, 1, None)`` for a new axis between two unknown ones), and the gradient of a
    weighted sum through each (oracle: the weights, moved back by numpy)."""
    from .helpers import session

    rng = np.random.default_rng(2)
    xv = rng.standard_normal((3, 1, 4)).astype(np.float32)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 1, 4])
        y = mf.placeholder(mf.float32, [None, None])
        outs = [mf.expand_dims(x, 0), mf.expand_dims(x, -1), mf.expand_dims(y, 1),
                mf.squeeze(x, [1]), mf.squeeze(x, axis=-2), mf.stack([x, x * 2.0], axis=1),
                *mf.unstack(x, axis=2)]
        with pytest.raises(ValueError, match="every dimension must be known"):
            mf.squeeze(y)  # TF's would be of unknown rank: a batch of one loses its axis
        assert mf.squeeze(mf.zeros([1, 3, 1])).shape == (3,)
        with pytest.raises(ValueError, match="size is not 1"):
            mf.squeeze(mf.zeros([3, 1]), 0)
        loss = sum(mf.reduce_sum(o * float(i + 1)) for i, o in enumerate(outs) if o is not
                   outs[2])
        (gx,) = mf.gradients(loss, [x])
    assert [o.shape for o in outs[:6]] == [(1, None, 1, 4), (None, 1, 4, 1), (None, 1, None),
                                           (None, 4), (None, 4), (None, 2, 1, 4)]
    with session(g, backend) as s:
        got = s.run(outs + [gx], {x: xv, y: np.ones((2, 5), np.float32)})
    want = [xv[None], xv[..., None], np.ones((2, 1, 5), np.float32), xv[:, 0], xv[:, 0],
            np.stack([xv, 2 * xv], 1), *[xv[:, :, i] for i in range(4)]]
    for a, b in zip(got, want, strict=False):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # d(loss)/dx: each output's weight, summed back over where x went (stack: 6 + 2 * 6)
    w = 1 + 2 + 4 + 5 + 6 + 2 * 6 + np.array([7, 8, 9, 10], np.float32)[None, None, :]
    np.testing.assert_allclose(got[-1], np.broadcast_to(w, xv.shape), rtol=1e-6)


def test_what_a_review_found_in_these_composites():
    """Each was a silent wrong answer or a confusing error; TF 2.21 refuses or accepts
    the same calls as now here."""
    import threading

    g = mf.Graph()
    with g.as_default():
        y = mf.placeholder(mf.float32, [None, None])
        sq = mf.squeeze(y, 1)  # was reshaped to (6,) when fed (2, 3): no check at all
        assert mf.squeeze(mf.zeros([1, 3, 1]), []).shape == (3,)  # [] means every axis
        for bad, why in ((lambda: mf.unstack(mf.zeros([2, 3]), axis=2), "out of range"),
                         (lambda: mf.unstack(mf.zeros([])), "rank 1 or more"),
                         (lambda: mf.unstack(mf.zeros([2, 3]), num=3), "num is 3"),
                         (lambda: mf.clip_by_value(mf.zeros([2]), mf.zeros([3, 2]), 1.0),
                          "would broadcast"),
                         (lambda: mf.clip_by_norm(mf.zeros([2]), [1.0, 2.0]), "scalar")):
            with pytest.raises(ValueError, match=why):
                bad()
        n = mf.shape(y)[0]  # shapes mixing tensors and ints: one stacked int32 tensor
        z, r = mf.zeros([n, 3]), mf.random_normal([n, 2], seed=1)
        flat = mf.reshape(y, [n, 1, -1])
        assert (z.shape, flat.shape) == ((None, 3), (None, 1, None))  # as TF's
        i = mf.placeholder(mf.int32, [1])
    with mf.Session(graph=g) as s:
        assert s.run(sq, {y: np.ones((2, 1))}).shape == (2,)
        with pytest.raises(mf.InvalidArgumentError, match="Squeeze"):
            s.run(sq, {y: np.ones((2, 3))})
        zv, rv, fv = s.run([z, r, flat], {y: np.ones((4, 5))})
        assert zv.shape == (4, 3) and rv.shape == (4, 2) and fv.shape == (4, 1, 5)
        with pytest.raises(TypeError, match="not whole numbers, or out of its range"):
            s.run(i, {i: np.array([2**31 - 1], np.float32)})  # rounds to 2**31: wrapped

    empty = mf.Graph()  # falsy (it has a __len__): `graph or default` took the default
    assert mf.train.get_or_create_global_step(empty).graph is empty
    assert mf.Session(graph=empty).graph is empty
    h = mf.Graph()
    with h.as_default():
        mine = mf.Variable(0, name="global_step", trainable=False)  # as tutorials make it
        assert mf.train.get_or_create_global_step() is mine
        w = mf.Variable(1.0, name="w")
        put = mf.assign(w, 5.0)  # w never initialised: the fetch must follow the write
    for opts in (mf.GraphOptions(), mf.GraphOptions.all_off()):
        with mf.Session(graph=h, config=mf.ConfigProto(graph_options=opts)) as s:
            assert s.run([put, w])[1] == 5.0

    made = []  # made in one thread, closed from another: no error (it raised)
    t = threading.Thread(target=lambda: made.append(mf.InteractiveSession(graph=h)))
    t.start()
    t.join()
    made[0].close()
    assert mf.get_default_session() is None
