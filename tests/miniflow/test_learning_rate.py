"""``train.exponential_decay``, ``train.AdagradOptimizer`` and ``train.RMSPropOptimizer``:
five steps whose losses, rates, slot names and final weights TF 2.21's ``tf.compat.v1``
gave for the same program (numpy initial values, so both start alike)."""

import numpy as np
import pytest

import systems.miniflow as mf


def _model(seed):
    """A 3x2 weight ``w`` and the loss ``sum(tanh(x @ w) ** 2)`` on fixed data, built in
    the default graph."""
    rng = np.random.default_rng(seed)
    wv = rng.standard_normal((3, 2)).astype(np.float32)
    xv = rng.standard_normal((4, 3)).astype(np.float32)
    w = mf.Variable(wv, name="w")
    return w, mf.reduce_sum(mf.tanh(mf.matmul(mf.constant(xv), w)) ** 2.0)


def test_an_adagrad_run_on_a_decaying_rate_ends_where_tf1s_does():
    g = mf.Graph()
    with g.as_default():
        w, loss = _model(3)
        gs = mf.Variable(0, name="global_step", trainable=False)
        lr = mf.train.exponential_decay(0.5, gs, 2, 0.5, staircase=True)
        smooth = mf.train.exponential_decay(0.5, gs, 3, 0.9)
        step = mf.train.AdagradOptimizer(lr).minimize(loss, global_step=gs)
        with pytest.raises(ValueError, match="must be positive"):
            mf.train.AdagradOptimizer(0.1, initial_accumulator_value=0.0)
    assert [v.op.name for v in g.get_collection("variables")] == ["w", "global_step",
                                                                  "w/Adagrad"]
    assert lr.op.name == "ExponentialDecay"
    seen = []
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        for _ in range(5):
            seen.append(s.run([step, loss, lr, smooth])[1:])
        final = s.run(w)
    np.testing.assert_allclose(np.array(seen), [
        [5.50908, 0.5, 0.5], [4.77339, 0.5, 0.48274], [4.13505, 0.25, 0.46608],
        [4.01515, 0.25, 0.45], [3.96328, 0.125, 0.43447]], atol=2e-5)
    np.testing.assert_allclose(final.ravel(), [1.3191, -1.60282, 0.69026, -0.62907, -0.82888,
                                               0.79343], atol=2e-5)


@pytest.mark.parametrize("kw,losses,weights", [
    ({}, [4.95144, 4.82633, 4.72948, 4.59718, 4.40651],
     [-0.64599, 0.07554, 1.66574, 0.36799, -1.59435, 0.10091]),
    ({"momentum": 0.5}, [4.95144, 4.82633, 4.68708, 4.4493, 4.13506],
     [-0.64247, 0.18973, 1.66697, 0.21897, -1.56589, 0.06622]),
    ({"momentum": 0.3, "centered": True, "decay": 0.8, "epsilon": 1e-6},
     [4.95144, 4.82419, 4.68963, 4.46472, 4.15057],
     [-0.64262, 0.18361, 1.66692, 0.23725, -1.56725, 0.0678]),
])
def test_rmsprop_with_and_without_momentum_and_centring_ends_where_tf1s_does(kw, losses,
                                                                           weights):
    """Five steps of each variant: TF 2.21's losses and weights for the same program, and
    its slot names (the rms slot first, starting at 1)."""
    g = mf.Graph()
    with g.as_default():
        w, loss = _model(4)
        step = mf.train.RMSPropOptimizer(0.05, **kw).minimize(loss)
    slots = ["w/RMSProp", "w/RMSProp_1"] + (["w/RMSProp_2"] if kw.get("centered") else [])
    assert [v.op.name for v in g.get_collection("variables")] == ["w", *slots]
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        got = [s.run([step, loss])[1] for _ in range(5)]
        final = s.run(w)
    np.testing.assert_allclose(got, losses, atol=2e-5)
    np.testing.assert_allclose(final.ravel(), weights, atol=2e-5)
