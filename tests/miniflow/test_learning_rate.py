"""``train.exponential_decay`` driving ``train.AdagradOptimizer``: five steps whose loss,
rates, slot names and final weights TF 2.21's ``tf.compat.v1`` gave for the same program
(numpy initial values, so both start alike)."""

import numpy as np
import pytest

import systems.miniflow as mf


def test_an_adagrad_run_on_a_decaying_rate_ends_where_tf1s_does():
    rng = np.random.default_rng(3)
    wv = rng.standard_normal((3, 2)).astype(np.float32)
    xv = rng.standard_normal((4, 3)).astype(np.float32)
    g = mf.Graph()
    with g.as_default():
        w = mf.Variable(wv, name="w")
        gs = mf.Variable(0, name="global_step", trainable=False)
        lr = mf.train.exponential_decay(0.5, gs, 2, 0.5, staircase=True)
        smooth = mf.train.exponential_decay(0.5, gs, 3, 0.9)
        loss = mf.reduce_sum(mf.tanh(mf.matmul(mf.constant(xv), w)) ** 2.0)
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
