"""The applications against their oracles: torch autograd, scikit-learn, brute force."""

import numpy as np
import pytest
import torch

from systems.minips import data
from systems.minips.apps import make_app
from systems.minips.apps.count import audit_check, audit_keys, audit_size
from systems.minips.apps.mlp import build, flat
from systems.minips.apps.sparse_lr import objective, optimum, spec_of
from systems.minips.cluster import ClusterSpec
from systems.minips.launcher import launch

SMALL = {"name": "sparse_lr", "features": 1 << 12, "examples": 1024, "nnz": 12, "batch": 128,
         "lam": 5e-3}


def test_sparse_lr_gradient_matches_torch_autograd():
    app = make_app(SMALL, 2)
    keys = app.keys(1, 3)
    w = np.random.default_rng(0).normal(0, 0.1, (keys.size, 1)).astype(np.float32)
    g, loss = app.step(1, 3, keys, w)
    xb, yb = app._batch(1, 3)
    x = torch.tensor(xb[:, keys.astype(np.int64)].toarray(), dtype=torch.float64)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    m = (x @ wt).reshape(-1)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(m, torch.tensor(yb).double())
    assert abs(loss - ref.detach().item()) < 1e-9
    ref.backward()
    np.testing.assert_allclose(g, wt.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_single_process_optimum_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    spec, lam = spec_of(SMALL), SMALL["lam"]
    x, y = data.full(spec)
    sk = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=1 / (x.shape[0] * lam),
                            fit_intercept=False, tol=1e-8, max_iter=10_000).fit(x, y)
    ref = objective(x, y, sk.coef_.reshape(-1), lam)
    ours = optimum(SMALL, iters=500)
    assert ours <= ref * 1.001 and ours >= ref * 0.99


def test_mlp_step_is_torch_backward_scaled_by_the_workers():
    app = make_app({"name": "mlp", "hidden": 16, "batch": 8}, 4)
    keys, w = app.init_values()
    model = build(16)
    np.testing.assert_array_equal(w.reshape(-1), flat(model))
    g, loss = app.step(2, 5, keys, w)
    rows = app._rows(2, 5)
    model.zero_grad()
    ref = torch.nn.functional.cross_entropy(model(torch.from_numpy(app.xtr[rows])),
                                            torch.from_numpy(app.ytr[rows]))
    ref.backward()
    expect = np.concatenate([p.grad.numpy().reshape(-1) for p in model.parameters()]) / 4
    np.testing.assert_allclose(g.reshape(-1), expect, rtol=1e-5, atol=1e-7)
    assert abs(loss - ref.item()) < 1e-6
    # the monitor's numpy forward pass agrees with torch's
    with torch.no_grad():
        logits = model(torch.from_numpy(app.xte))
    got = app.evaluate(keys, flat(model).reshape(-1, 1))
    assert got["accuracy"] == float((logits.argmax(1).numpy() == app.yte).mean())
    ref_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(app.yte)).item()
    assert abs(got["loss"] - ref_loss) < 1e-5


def test_audit_counts_every_push_exactly():
    cfg = {"base": 100, "workers": 2, "clocks": 5, "per_push": 3}
    pushes = [(r, c) for r in range(2) for c in range(5)]
    seen = [k for r, c in pushes for k in audit_keys(cfg, r, c).tolist()]
    assert len(seen) == len(set(seen)) == 30 and min(seen) >= 100
    assert max(seen) < 100 + audit_size(cfg)
    counts = {k: 1.0 for k in seen}
    counts.update({k: 0.0 for k in audit_keys(cfg, 0, 2).tolist()[:1]})  # one key lost
    counts.update({k: 2.0 for k in audit_keys(cfg, 1, 4).tolist()})  # applied twice
    keys = np.array(sorted(counts), np.uint64)
    vals = np.array([counts[k] for k in sorted(counts)], np.float32)
    out = audit_check(cfg, keys, vals, {0: list(range(5)), 1: list(range(4))}, {0, 1})
    assert out["acked_lost"] == 1 and out["partial"] == 1
    assert out["unacked_duplicated"] == 1 and out["acked_duplicated"] == 0


def test_sparse_lr_trains_over_real_processes(tmp_path):
    out = launch(ClusterSpec(servers=2, workers=2, steps=40, app={**SMALL, "lr": 0.1}),
                 run_dir=tmp_path, eval_every_s=0.2, progress=False, timeout=120)
    first, last = out["curve"][0]["objective"], out["final"]["objective"]
    assert abs(first - np.log(2)) < 1e-6  # w = 0 at the start
    assert last < first - 0.02
    # minibatch prox-AdaGrad on 1024 examples plateaus a little above the full-batch
    # optimum; the benchmark measures time to within 1% on a bigger dataset
    assert last < 1.15 * optimum(SMALL, iters=200)


@pytest.mark.gpu
def test_mlp_step_on_cuda_matches_the_cpu_step():
    cpu = make_app({"name": "mlp", "hidden": 32, "batch": 16}, 2)
    gpu = make_app({"name": "mlp", "hidden": 32, "batch": 16, "device": "cuda"}, 2)
    keys, w = cpu.init_values()
    g_cpu, l_cpu = cpu.step(1, 4, keys, w)
    g_gpu, l_gpu = gpu.step(1, 4, keys, w)
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-4, atol=1e-6)
    assert abs(l_gpu - l_cpu) < 1e-4
