"""miniansor-tuned Triton kernels inside miniflow: tasks extracted from a miniflow graph,
tuned (on the simulated GPU), and run by miniflow's torch backend through
apply_history_best, with the same answers as the untuned graph. Without a GPU the Triton
kernels run under Triton's interpreter (importing miniansor sets it up)."""

import numpy as np

import systems.miniansor as ansor
import systems.miniflow as mf
from systems.miniansor.extract_miniflow import extract_tasks_from_miniflow


def _mlp(batch_dim=None):
    g = mf.Graph()
    rng = np.random.default_rng(0)
    with g.as_default():
        x = mf.placeholder(mf.float32, [batch_dim, 16], name="x")
        w1 = mf.Variable(rng.normal(0, 0.3, (16, 32)).astype(np.float32), name="w1")
        b1 = mf.Variable(rng.normal(0, 0.1, 32).astype(np.float32), name="b1")
        w2 = mf.Variable(rng.normal(0, 0.3, (32, 32)).astype(np.float32), name="w2")
        h = mf.nn.relu(x @ w1 + b1)
        y = mf.nn.softmax(h @ w2)
    return g, x, y


def test_tasks_are_extracted_after_miniflow_fusion_with_their_epilogues():
    g, x, y = _mlp()
    tasks, weights = extract_tasks_from_miniflow(y, [x], batch=32)
    keys = [t.key for t in tasks]
    assert keys == ["gemm:32x32x16:fp32:bias+relu", "gemm:32x32x32:fp32:none",
                    "softmax:32x32:fp32:none"]
    assert weights == [1, 1, 1]


def test_repeated_layers_become_one_weighted_task():
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 8])
        h = x
        for i in range(3):
            h = mf.nn.relu(h @ mf.constant(np.eye(8, dtype=np.float32)) +
                           mf.constant(np.zeros(8, np.float32) + i))
    tasks, weights = extract_tasks_from_miniflow(h, [x], batch=4)
    assert [t.key for t in tasks] == ["gemm:4x8x8:fp32:bias+relu"] and weights == [3]


def test_tuned_kernels_run_in_miniflow_and_match_the_untuned_graph(tmp_path):
    g, x, y = _mlp()
    tasks, weights = extract_tasks_from_miniflow(y, [x], batch=32)
    gemms = [t for t in tasks if t.kind == "gemm"]
    log = tmp_path / "tune.jsonl"
    ansor.tune_tasks(gemms, trials=6, device="sim", log=log, per_round=3, verify="none",
                     progress=False)
    library = ansor.apply_history_best(log)
    assert all(t in library for t in gemms)
    xv = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        want = s.run(y, {x: xv})
    cfg = mf.ConfigProto(cpu_backend="torch", kernel_library=library)
    with mf.Session(graph=g, config=cfg) as s:
        s.run(mf.global_variables_initializer())
        got = s.run(y, {x: xv})
        types = [n[1] for n in s.plan_for(y, {x: None}).snapshots["optimized"].nodes]
        assert types.count("_TunedGemm") == 2
        assert s.kernel_stats["tuned"] == 2 and s.kernel_stats["fallback"] == 0
        part = s.run(y, {x: xv[:5]})  # a batch nobody tuned: torch runs it instead
        assert s.kernel_stats["fallback"] == 2
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert part.shape == (5, 32)
    np.testing.assert_allclose(part, want[:5], rtol=1e-4, atol=1e-6)  # rows are independent
