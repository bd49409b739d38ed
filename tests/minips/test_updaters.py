"""Server-side updates against torch.optim and the closed-form proximal step."""

import numpy as np
import pytest
import torch

from systems.minips import updaters
from systems.minips.store import KVStore


def run(up, w0, grads):
    w, s = w0.copy(), np.zeros_like(w0)
    for g in grads:
        up(w, s, g)
    return w


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(50, 3)).astype(np.float32),
            [rng.normal(size=(50, 3)).astype(np.float32) for _ in range(5)])


def torch_run(opt_cls, w0, grads, **kw):
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = torch.from_numpy(g)
        opt.step()
    return p.detach().numpy()


def test_sgd_matches_torch(data):
    w0, gs = data
    ours = run(updaters.make({"name": "sgd", "lr": 0.3}), w0, gs)
    np.testing.assert_allclose(ours, torch_run(torch.optim.SGD, w0, gs, lr=0.3), rtol=1e-6,
                               atol=1e-7)


def test_adagrad_matches_torch(data):
    w0, gs = data
    ours = run(updaters.make({"name": "adagrad", "lr": 0.1, "eps": 1e-10}), w0, gs)
    ref = torch_run(torch.optim.Adagrad, w0, gs, lr=0.1, eps=1e-10)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_l1_proximal_is_the_soft_threshold():
    w = np.array([[0.5], [0.01], [-0.3], [0.0]], np.float32)
    g = np.array([[0.1], [0.0], [-0.1], [0.05]], np.float32)
    up = updaters.L1Proximal(lr=1.0, lam=0.1, adagrad=False)
    out = w.copy()
    up(out, np.zeros_like(w), g)
    z = w - g
    np.testing.assert_allclose(out, np.sign(z) * np.maximum(np.abs(z) - 0.1, 0), atol=1e-7)
    assert out[1, 0] == 0 and out[3, 0] == 0  # small weights become exactly zero


def test_sum_is_ps_lite_default_handle():
    w = np.ones((3, 1), np.float32)
    updaters.Sum()(w, w * 0, np.full((3, 1), 2, np.float32))
    assert (w == 3).all()


def test_store_update_gathers_non_contiguous_rows():
    store = KVStore(1)
    store.assign(np.arange(10, dtype=np.uint64), np.ones((10, 1), np.float32))
    store.update(np.array([2, 5, 11], np.uint64), np.ones((3, 1), np.float32),
                 updaters.SGD(lr=1.0))
    assert store.get(np.array([2, 3, 5, 11], np.uint64)).reshape(-1).tolist() == \
        [0.0, 1.0, 0.0, -1.0]


def test_regions_give_each_key_one_updater():
    reg = updaters.Regions(updaters.SGD(1.0), [(100, 200, updaters.Sum())])
    keys = np.array([1, 99, 100, 150, 199, 200], np.uint64)
    groups = reg.split(keys)
    cover = sum(m.astype(int) for _, m in groups)
    assert (cover == 1).all()
    summed = next(m for u, m in groups if isinstance(u, updaters.Sum))
    assert keys[summed].tolist() == [100, 150, 199]


def test_unknown_updater_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown updater 'adam'"):
        updaters.make("adam")
    with pytest.raises(ValueError, match="bad parameters for updater 'sgd'"):
        updaters.make({"name": "sgd", "momentum": 0.9})
