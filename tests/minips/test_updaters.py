"""Server-side updates against torch.optim and the closed-form proximal step."""

import math

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


def l1_adagrad_oracle(w0, grads, lr, lam, eps):
    """Prox-AdaGrad for ``lam |w|_1``, one coordinate at a time in float64: Duchi, Hazan
    and Singer (JMLR 2011), section 5.1 (composite mirror descent, diagonal case) with
    ``H_t,ii = eps + sqrt(sum_{tau<=t} g_tau,i ** 2)``:
    ``w_i <- sign(w_i - lr g_i / H_ii) * max(|w_i - lr g_i / H_ii| - lam lr / H_ii, 0)``.
    Also returns each coordinate's closest approach to the kink (|z| = threshold)."""
    out = np.empty(w0.shape, np.float64)
    kink = np.full(w0.shape, np.inf)
    for i in np.ndindex(w0.shape):
        w, s = float(w0[i]), 0.0
        for g in grads:
            gi = float(g[i])
            s += gi * gi
            step = lr / (math.sqrt(s) + eps)
            z = w - step * gi
            w = math.copysign(max(abs(z) - step * lam, 0.0), z)
            kink[i] = min(kink[i], abs(abs(z) - step * lam))
        out[i] = w
    return out, kink


def test_l1_proximal_adagrad_by_hand():
    """One coordinate, two steps, worked on paper: lr 0.1, lam 0.5, w 0.5, g 0.3 then -0.4.
    Step 1: s = 0.09, eta = 0.1 / 0.3 = 1/3, z = 0.5 - 0.1 = 0.4, w = 0.4 - 1/6 = 7/30.
    Step 2: s = 0.25, eta = 0.2, z = 7/30 + 0.08 = 0.31333, w = 0.31333 - 0.1 = 0.21333."""
    w, s = np.array([[0.5]], np.float32), np.zeros((1, 1), np.float32)
    up = updaters.L1Proximal(lr=0.1, lam=0.5, adagrad=True, eps=0.0)
    up(w, s, np.array([[0.3]], np.float32))
    assert w[0, 0] == pytest.approx(7 / 30, rel=1e-6) and s[0, 0] == pytest.approx(0.09)
    up(w, s, np.array([[-0.4]], np.float32))
    assert w[0, 0] == pytest.approx(7 / 30 + 0.08 - 0.1, rel=1e-6)
    assert s[0, 0] == pytest.approx(0.25, rel=1e-6)


def test_l1_proximal_adagrad_matches_the_closed_form_over_several_steps():
    """The default mode (what sparse_lr runs), six steps, against the per-coordinate
    prox-AdaGrad formula; some weights get thresholded to zero, some come back."""
    rng = np.random.default_rng(7)
    w0 = rng.normal(0, 0.3, size=(60, 2)).astype(np.float32)
    grads = [rng.normal(size=(60, 2)).astype(np.float32) for _ in range(6)]
    grads[3][:20] = 0  # a step where some keys get no gradient: only the shrink applies
    lr, lam, eps = 0.1, 0.8, 1e-8
    w, s = w0.copy(), np.zeros_like(w0)
    up = updaters.make({"name": "l1prox", "lr": lr, "lam": lam, "eps": eps})
    assert up.adagrad  # the default
    was_zero, came_back = np.zeros(w.shape, bool), np.zeros(w.shape, bool)
    for g in grads:
        up(w, s, g)
        came_back |= was_zero & (w != 0)
        was_zero |= w == 0
    assert came_back.any()
    want, kink = l1_adagrad_oracle(w0, grads, lr, lam, eps)
    np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, sum(g.astype(np.float64) ** 2 for g in grads), rtol=1e-6)
    # exact zeros exactly where the formula thresholds (away from the kink, where float32
    # and float64 may round differently)
    clear = kink > 1e-5
    assert clear.mean() > 0.9
    assert np.array_equal(w[clear] == 0, want[clear] == 0)
    assert 0.2 < (want == 0).mean() < 0.8  # both branches of the prox are exercised


def test_l1_proximal_adagrad_without_l1_is_torch_adagrad(data):
    w0, gs = data
    ours = run(updaters.L1Proximal(lr=0.1, lam=0.0, adagrad=True, eps=1e-10), w0, gs)
    ref = torch_run(torch.optim.Adagrad, w0, gs, lr=0.1, eps=1e-10)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


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


def test_regions_reach_the_last_key_and_may_not_overlap():
    top = updaters.Regions(updaters.SGD(), [(1 << 63, 1 << 64, updaters.Sum())])
    keys = np.array([5, 1 << 63, (1 << 64) - 1], np.uint64)
    groups = {type(u).__name__: keys[m].tolist() for u, m in top.split(keys)}
    assert groups == {"Sum": [1 << 63, (1 << 64) - 1], "SGD": [5]}
    with pytest.raises(ValueError, match=r"\[0, 10\) and \[5, 15\) overlap"):
        updaters.Regions(updaters.SGD(), [(0, 10, updaters.Sum()), (5, 15, updaters.Sum())])


def test_adagrad_matches_torch_with_a_non_negligible_eps():
    """With eps = 1e-10 an eps inside or outside the sqrt cannot be told apart."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(20, 2)).astype(np.float32)
    gs = [rng.normal(0, 0.01, size=(20, 2)).astype(np.float32) for _ in range(4)]
    w, s = w0.copy(), np.zeros_like(w0)
    up = updaters.AdaGrad(lr=0.1, eps=0.1)
    for g in gs:
        up(w, s, g)
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = torch.optim.Adagrad([p], lr=0.1, eps=0.1)
    for g in gs:
        p.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_regions_sharing_a_single_key_overlap_but_touching_ones_do_not():
    """[0, 10) and [9, 20) share key 9, which one push would update twice (once per
    updater); [0, 10) and [10, 20) only touch, and every key has one updater."""
    with pytest.raises(ValueError, match=r"\[0, 10\) and \[9, 20\) overlap"):
        updaters.Regions(updaters.SGD(), [(0, 10, updaters.Sum()), (9, 20, updaters.Sum())])
    r = updaters.Regions(updaters.SGD(), [(10, 20, updaters.Sum()), (0, 10, updaters.AdaGrad())])
    keys = np.array([0, 9, 10, 19, 20], np.uint64)
    groups = {type(u).__name__: keys[m].tolist() for u, m in r.split(keys)}
    assert groups == {"Sum": [10, 19], "AdaGrad": [0, 9], "SGD": [20]}
