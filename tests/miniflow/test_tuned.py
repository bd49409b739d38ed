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
    log = tmp_path / "tune.jsonl"
    ansor.tune_tasks(tasks, trials=6, device="sim", log=log, per_round=3, verify="none",
                     progress=False)
    library = ansor.apply_history_best(log)
    assert all(t in library for t in tasks)
    xv = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        want = s.run(y, {x: xv})
    cfg = mf.ConfigProto(cpu_backend="torch", kernel_library=library)
    with mf.Session(graph=g, config=cfg) as s:
        s.run(mf.global_variables_initializer())
        got = s.run(y, {x: xv})
        types = [n[1] for n in s.plan_for(y, {x: None}).snapshots["optimized"].nodes]
        assert types.count("_TunedGemm") == 2 and types.count("_TunedSoftmax") == 1
        assert s.kernel_stats["tuned"] == 3 and s.kernel_stats["fallback"] == 0
        part = s.run(y, {x: xv[:5]})  # a batch nobody tuned: torch runs it instead
        assert s.kernel_stats["fallback"] == 3
        # an empty batch is no task at all (Task refuses a size of 0): torch, not an error
        assert s.run(y, {x: xv[:0]}).shape == (0, 32)
        assert s.kernel_stats["fallback"] == 6
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert part.shape == (5, 32)
    np.testing.assert_allclose(part, want[:5], rtol=1e-4, atol=1e-6)  # rows are independent


def test_every_extracted_task_runs_tuned_gradients_and_batched_matmuls_too(tmp_path):
    """The gradient graph's transposed MatMuls (``x^T @ dy``, ``dy @ w^T``) and batched
    MatMuls (also with a rank-2 or batch-1 side broadcast) are tasks too; each runs its
    tuned kernel (transposed and broadcast operands as views), and the answers equal the
    untuned graph's."""
    rng = np.random.default_rng(2)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [8, 16], name="x")
        q = mf.placeholder(mf.float32, [3, 5, 6], name="q")
        k = mf.placeholder(mf.float32, [3, 6, 7], name="k")
        w = mf.Variable(rng.normal(0, 0.3, (16, 12)).astype(np.float32), name="w")
        scale = mf.constant(np.arange(12.0, dtype=np.float32))
        loss = mf.reduce_sum(mf.nn.softmax(x @ w) * scale)
        dx, dw = mf.gradients(loss, [x, w])
        att = mf.matmul(q, k)
        proj = q @ mf.constant(rng.standard_normal((6, 4)).astype(np.float32))  # 3-D @ 2-D
        one = q @ mf.constant(rng.standard_normal((1, 6, 7)).astype(np.float32))  # batch 1
    fetches, feeds = [dx, dw, att, proj, one], [x, q, k]
    tasks, _ = extract_tasks_from_miniflow(fetches, feeds)
    kinds = sorted(t.kind for t in tasks)
    assert kinds.count("bmm") == 2 and kinds.count("gemm") >= 3  # forward, dx, dw
    log = tmp_path / "tune.jsonl"
    ansor.tune_tasks(tasks, trials=3 * len(tasks), device="sim", log=log, per_round=3,
                     verify="none", progress=False)
    library = ansor.apply_history_best(log)
    feed = {x: rng.standard_normal((8, 16)).astype(np.float32),
            q: rng.standard_normal((3, 5, 6)).astype(np.float32),
            k: rng.standard_normal((3, 6, 7)).astype(np.float32)}
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        want = s.run(fetches, feed)
    cfg = mf.ConfigProto(cpu_backend="torch", kernel_library=library)
    with mf.Session(graph=g, config=cfg) as s:
        s.run(mf.global_variables_initializer())
        got = s.run(fetches, feed)
        assert s.kernel_stats["fallback"] == 0
        assert s.kernel_stats["tuned"] == sum(n[1].startswith("_Tuned") for n in s.plan_for(
            fetches, {t: None for t in feeds}).snapshots["optimized"].nodes)
        assert s.kernel_stats["tuned"] >= len(tasks)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_fetched_product_is_extracted_and_run_as_the_plain_gemm(tmp_path):
    """When ``x @ w`` is fetched as well as ``relu(x @ w + b)``, the product must exist on
    its own, so both extraction and the run-time rewrite use the plain GEMM (and the
    bias and ReLU run in torch): what is tuned is what runs."""
    g = mf.Graph()
    rng = np.random.default_rng(3)
    with g.as_default():
        x = mf.placeholder(mf.float32, [4, 8])
        w = mf.constant(rng.standard_normal((8, 6)).astype(np.float32))
        b = mf.constant(rng.standard_normal(6).astype(np.float32))
        prod = x @ w
        y = mf.nn.relu(prod + b)
    tasks, _ = extract_tasks_from_miniflow([prod, y], [x])
    assert [t.key for t in tasks] == ["gemm:4x6x8:fp32:none"]
    log = tmp_path / "tune.jsonl"
    ansor.tune_tasks(tasks, trials=3, device="sim", log=log, per_round=3, verify="none",
                     progress=False)
    cfg = mf.ConfigProto(cpu_backend="torch", kernel_library=ansor.apply_history_best(log))
    xv = rng.standard_normal((4, 8)).astype(np.float32)
    with mf.Session(graph=g, config=cfg) as s:
        got_prod, got_y = s.run([prod, y], {x: xv})
        assert s.kernel_stats["tuned"] == 1 and s.kernel_stats["fallback"] == 0
    with mf.Session(graph=g) as s:
        want_prod, want_y = s.run([prod, y], {x: xv})
    np.testing.assert_allclose(got_prod, want_prod, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-4, atol=1e-5)


def _tuned_and_plain(g, fetches, feeds, tasks, tmp_path):
    """``fetches`` run with ``tasks`` tuned (3 trials each, simulated) and without."""
    log = tmp_path / "tune.jsonl"
    ansor.tune_tasks(tasks, trials=3 * len(tasks), device="sim", log=log, per_round=3,
                     verify="none", progress=False)
    cfg = mf.ConfigProto(cpu_backend="torch", kernel_library=ansor.apply_history_best(log))
    out = []
    for config in (cfg, None):
        with mf.Session(graph=g, config=config) as s:
            out.append([s.run(fetches, f) for f in feeds])
    return out


def test_a_matrix_times_a_batch_keeps_its_bias_and_relu_and_an_empty_batch_runs(tmp_path):
    """``relu(x @ w + b)`` with x rank 2 and w rank 3 is a batched product, whose kernel
    takes no epilogue: the rewrite read the product as a plain GEMM from x's rank alone,
    swallowed the Add and ReLU, and the tuned run dropped both (max error 4.8, negative
    "ReLU" outputs). And a batch-1 side against an empty batch raised ("expanded size
    ... must match") where torch gives an empty result."""
    rng = np.random.default_rng(4)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [4, 6])
        w = mf.constant(rng.standard_normal((2, 6, 5)).astype(np.float32))
        b = mf.constant(rng.standard_normal(5).astype(np.float32))
        y = mf.nn.relu(mf.matmul(x, w) + b)
        q = mf.placeholder(mf.float32, [None, 5, 6])
        one = q @ mf.constant(rng.standard_normal((1, 6, 7)).astype(np.float32))
    tasks, _ = extract_tasks_from_miniflow([y, one], [x, q], batch=3)
    assert sorted(t.key for t in tasks) == ["bmm:2x4x5x6:fp32:none", "bmm:3x5x7x6:fp32:none"]
    feeds = [{x: rng.standard_normal((4, 6)).astype(np.float32),
              q: rng.standard_normal((n, 5, 6)).astype(np.float32)} for n in (3, 0)]
    tuned, plain = _tuned_and_plain(g, [y, one], feeds, tasks, tmp_path)
    for got, want in zip(tuned, plain, strict=True):
        for a, e in zip(got, want, strict=True):
            assert a.shape == e.shape
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


def test_extraction_takes_the_contraction_from_either_operand_and_no_unsized_bias():
    """``x: [None, None] @ (6, 5)``: K is 6, known from w; it was read from x alone and
    became the batch (a 32x5x32 task that never runs). And a bias of unknown length is
    not fused (fed as (1,), it broadcasts, and no kernel takes it: the tuned run
    raised where the untuned one ran)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, None])
        y = x @ mf.constant(np.ones((6, 5), np.float32))
        w = mf.placeholder(mf.float32, [6, None])
        b = mf.placeholder(mf.float32, [None])
        z = mf.nn.relu(mf.placeholder(mf.float32, [4, 6]) @ w + b)
    assert [t.key for t in extract_tasks_from_miniflow(y, [x])[0]] == ["gemm:32x5x6:fp32:none"]
    assert [t.key for t in extract_tasks_from_miniflow(z, [w, b], batch=5)[0]] == \
        ["gemm:4x5x6:fp32:none"]
