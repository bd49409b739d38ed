"""``casebook bench miniflow``: miniflow against numpy and torch, in the same run.

Every comparison is interleaved (common.timing) and reported as a median per-pair ratio
with its spread; each case states the targets of the issue.
"""

from __future__ import annotations

import time

import numpy as np

from common import cost, plots
from common.bench import Case, Context, Result, Target
from common.devices import cpu_spec
from common.timing import interleaved, interleaved_many, paired_ratios

from . import digits
from .dtypes import float32, int32
from .graph import Graph
from .ops.control_ops import placeholder
from .ops.math_ops import add_n, matmul, tanh
from .ops.nn_ops import sparse_softmax_cross_entropy_with_logits
from .ops.reduction_ops import reduce_mean
from .ops.state_ops import Variable, global_variables_initializer
from .session import ConfigProto, GraphOptions, RunMetadata, Session
from .train import GradientDescentOptimizer

NO_FUSION = GraphOptions(fusion=False)


# -- 1. per-node overhead ---------------------------------------------------------------

def _chain(n: int):
    g = Graph()
    with g.as_default():
        x = placeholder(float32, [1])
        y = x
        for _ in range(n):
            y = y + 1.0
    return g, x, y


def overhead_case(ctx: Context) -> Result:
    import torch

    n = 1000
    xv = np.ones(1, np.float32)
    builds, plans = [], []
    for _ in range(ctx.pick(7, 3)):  # median of several: a cyclic-GC pass may hit any one
        t0 = time.perf_counter()
        g, x, y = _chain(n)
        builds.append(time.perf_counter() - t0)
        sess = Session(graph=g, config=ConfigProto(graph_options=NO_FUSION))
        sess.run(y, {x: xv})
        plans.append(sess.plan_for(y, {x: xv}).build_seconds)
    build_s, plan_s = float(np.median(builds)), float(np.median(plans))
    one = np.ones(1, np.float32)
    tx, tone = torch.ones(1), torch.ones(1)

    def ours():
        sess.run(y, {x: xv})

    def numpy_loop():
        v = xv
        for _ in range(n):
            v = v + one
        return v

    def torch_eager():
        v = tx
        for _ in range(n):
            v = v + tone
        return v

    reps = ctx.pick(21, 9)
    r = interleaved_many({"ours": ours, "numpy": numpy_loop, "torch": torch_eager},
                         repeats=reps, warmup=3, number=ctx.pick(20, 10))
    vs_numpy = paired_ratios(r["ours"], r["numpy"])
    vs_torch = paired_ratios(r["ours"], r["torch"])
    per_node_us = float(np.median(r["ours"])) / n * 1e6

    # with the default passes the chain becomes one fused node: the same work, fewer nodes
    fused = Session(graph=g)
    fused.run(y, {x: xv})
    fused_cmp = interleaved(lambda: fused.run(y, {x: xv}), numpy_loop, repeats=reps,
                            number=ctx.pick(20, 10))

    # the fixed cost of a step: a one-node graph
    g1 = Graph()
    with g1.as_default():
        x1 = placeholder(float32, [1])
        y1 = x1 + 1.0
    s1 = Session(graph=g1)
    s1.run(y1, {x1: xv})
    fixed = interleaved(lambda: s1.run(y1, {x1: xv}), lambda: np.add(xv, one),
                        repeats=reps)
    fixed_us = (fixed.a.median - fixed.b.median) * 1e6
    sess.close()
    fused.close()
    s1.close()
    return Result(
        metrics={"per_node_us": per_node_us, "fixed_per_run_us": fixed_us,
                 "build_plus_passes_ms": (build_s + plan_s) * 1e3, "graph_build_ms":
                 build_s * 1e3, "plan_build_ms": plan_s * 1e3,
                 "numpy_per_add_us": float(np.median(r["numpy"])) / n * 1e6,
                 "torch_per_add_us": float(np.median(r["torch"])) / n * 1e6,
                 "fused_chain_vs_numpy": fused_cmp.ratio},
        ratios={"ours_vs_numpy": _ratio(vs_numpy), "ours_vs_torch_eager": _ratio(vs_torch)},
        notes="executor overhead measured with fusion off (1000 executor nodes); with the "
              "default passes the chain is folded into one fused node "
              f"({fused_cmp.ratio:.2f}x the numpy loop)")


def _ratio(stats) -> dict:
    return {"ratio": stats.median, "q1": stats.q1, "q3": stats.q3, "pairs": stats.n}


# -- 2. MLP training step ----------------------------------------------------------------

def _mlp_graph(w1, w2, lr, batch: int | None = None):
    """The digits MLP as a TF1 training graph. ``batch`` fixes the placeholders' first
    dimension, as a fixed-batch TF1 graph does: then every gradient shape is static,
    ``reduce_mean``'s gradient uses a constant factor (TF's ``_MeanGrad`` does the same)
    and constant folding turns its ``Shape``/``Size``/``BroadcastTo`` chain into one
    constant. With ``None`` the chain runs every step."""
    g = Graph()
    with g.as_default():
        x = placeholder(float32, [batch, 64])
        y = placeholder(int32, [batch])
        v1, v2 = Variable(w1.copy(), name="w1"), Variable(w2.copy(), name="w2")
        from .ops.math_ops import relu

        logits = matmul(relu(matmul(x, v1)), v2)
        loss = reduce_mean(sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        train = GradientDescentOptimizer(lr).minimize(loss)
        init = global_variables_initializer()
    return g, x, y, train, init


def mlp_case(ctx: Context) -> Result:
    import torch

    Xtr, _, ytr, _ = digits.load_split()
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.125, (64, 128)).astype(np.float32)
    w2 = rng.normal(0, 0.09, (128, 10)).astype(np.float32)
    lr = 0.1
    kinds = ("ours", "ours, batch unknown", "torch", "numpy")
    metrics, ratios, series = {}, {}, {"batch": [], **{k: [] for k in kinds}}
    for batch in ctx.pick((32, 64, 128, 256), (32, 256)):
        xb, yb = Xtr[:batch], ytr[:batch]
        sessions = []
        for declared in (batch, None):  # the graph as the numpy step knows it, and not
            g, x, y, train, init = _mlp_graph(w1, w2, lr, declared)
            sessions.append((Session(graph=g), train, {x: xb, y: yb}))
            sessions[-1][0].run(init)
        (sess, train, feed), (dyn, dyn_train, dyn_feed) = sessions
        tw1 = torch.tensor(w1.copy(), requires_grad=True)
        tw2 = torch.tensor(w2.copy(), requires_grad=True)
        opt = torch.optim.SGD([tw1, tw2], lr=lr)
        txb, tyb = torch.tensor(xb), torch.tensor(yb, dtype=torch.long)
        nw1, nw2 = w1.copy(), w2.copy()

        def torch_step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(torch.relu(txb @ tw1) @ tw2, tyb)
            loss.backward()
            opt.step()

        def numpy_step():
            nonlocal nw1, nw2
            h = np.maximum(xb @ nw1, 0)
            z = h @ nw2
            z = z - z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            p[np.arange(batch), yb] -= 1
            dz = p / batch
            dh = (dz @ nw2.T) * (h > 0)
            nw2 = nw2 - lr * (h.T @ dz)
            nw1 = nw1 - lr * (xb.T @ dh)

        r = interleaved_many({"ours": lambda: sess.run(train, feed),
                              "ours, batch unknown": lambda: dyn.run(dyn_train, dyn_feed),
                              "torch": torch_step, "numpy": numpy_step},
                             repeats=ctx.pick(21, 9), warmup=5, number=ctx.pick(20, 10))
        vt, vn = paired_ratios(r["ours"], r["torch"]), paired_ratios(r["ours"], r["numpy"])
        ratios[f"ours_vs_torch_b{batch}"] = _ratio(vt)
        ratios[f"ours_vs_numpy_b{batch}"] = _ratio(vn)
        ratios[f"ours_batch_unknown_vs_numpy_b{batch}"] = _ratio(
            paired_ratios(r["ours, batch unknown"], r["numpy"]))
        step = float(np.median(r["ours"]))
        # forward + backward matmuls: both layers need a weight gradient, only the second
        # an input gradient (nothing flows into the images)
        flops = 2 * batch * (2 * 64 * 128 + 3 * 128 * 10)
        metrics[f"step_us_b{batch}"] = step * 1e6
        metrics[f"step_us_batch_unknown_b{batch}"] = float(np.median(r["ours, batch unknown"])
                                                            ) * 1e6
        metrics[f"mfu_b{batch}"] = cost.mfu(flops, step, cpu_spec())
        series["batch"].append(batch)
        for k in kinds:
            series[k].append(float(np.median(r[k])) * 1e6)
        sess.close()
        dyn.close()
    path = plots.line_chart({k: (series["batch"], series[k]) for k in kinds},
                            ctx.out_dir / "mlp_step.png", "batch size", "us per training step",
                            "MLP 64-128-10 SGD step on digits (this CPU)", logy=True)
    return Result(metrics=metrics, ratios=ratios, series=series, plots=[path],
                  notes="ours: the graph declares its batch size, as the numpy step knows "
                        "it; 'batch unknown': placeholders of shape [None, ...], so the "
                        "mean's gradient computes Shape/Size/BroadcastTo every step.")


# -- 3. inter-op parallelism ---------------------------------------------------------------

def _branches(size: int, n_branches: int = 8, depth: int = 4):
    g = Graph()
    rng = np.random.default_rng(0)
    with g.as_default():
        x = placeholder(float32, [size, size])
        outs = []
        for _ in range(n_branches):
            h = x
            for _ in range(depth):
                w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
                h = tanh(matmul(h, w))
            outs.append(h)
        y = add_n(outs)
    return g, x, y, rng.standard_normal((size, size)).astype(np.float32)


def interop_case(ctx: Context) -> Result:
    from threadpoolctl import threadpool_limits

    metrics, ratios, series = {}, {}, {"size": [], "speedup": []}
    with threadpool_limits(limits=1, user_api="blas"):
        for size in (64, 128, 256, 512):
            g, x, y, xv = _branches(size)
            one = Session(graph=g, config=ConfigProto(inter_op_parallelism_threads=1))
            two = Session(graph=g, config=ConfigProto(inter_op_parallelism_threads=2))
            for s in (one, two):
                for _ in range(3 if size > 128 else 40):  # let cost estimates settle
                    s.run(y, {x: xv})
            comp = interleaved(lambda: two.run(y, {x: xv}), lambda: one.run(y, {x: xv}),
                               repeats=ctx.pick(15, 7), warmup=2,
                               number=1 if size >= 256 else None)
            ratios[f"two_vs_one_thread_{size}"] = comp.to_dict()
            metrics[f"speedup_{size}"] = comp.speedup
            series["size"].append(size)
            series["speedup"].append(comp.speedup)
            one.close()
            two.close()
    path = plots.line_chart({"2 inter-op threads vs 1": (series["size"], series["speedup"])},
                            ctx.out_dir / "interop.png", "matrix size", "speedup",
                            "8 branches x 4 (matmul + tanh), BLAS 1 thread", logx=True)
    return Result(metrics=metrics, ratios=ratios, series=series, plots=[path],
                  notes="cheap steps run inline (learned cost estimates), expensive ones on "
                        "the pool; numpy releases the GIL inside matmul and tanh")


# -- 4. passes and memory -------------------------------------------------------------------

def passes_case(ctx: Context) -> Result:
    from .ops.math_ops import relu

    rng = np.random.default_rng(0)
    g = Graph()
    with g.as_default():
        x = placeholder(float32, [None, 64])
        w1 = Variable(rng.normal(0, 0.1, (64, 128)).astype(np.float32))
        w2 = Variable(rng.normal(0, 0.1, (128, 10)).astype(np.float32))
        # copy-pasted code: the same tower on the same weights, four times (as when a
        # model's forward pass is called once per loss term)
        towers = [matmul(relu(matmul(x, w1) + 0.1), w2) * 2.0 for _ in range(4)]
        y = add_n(towers) * 0.25
    xv = rng.standard_normal((32, 64)).astype(np.float32)
    outs = {}
    for label, opts in (("off", GraphOptions.all_off()),
                        ("on", GraphOptions())):
        with Session(graph=g, config=ConfigProto(graph_options=opts)) as s:
            s.run(global_variables_initializer())
            outs[label] = s.run(y, {x: xv})
            outs[label + "_stats"] = s.plan_for(y, {x: None}).pass_stats
    on = outs["on_stats"]
    identical = float(np.array_equal(outs["on"], outs["off"]))

    layer = 256 * 256 * 4
    g2 = Graph()
    with g2.as_default():
        x2 = placeholder(float32, [256, 256])
        h = x2
        for i in range(100):
            h = tanh(h) if i % 2 else h * 1.01
    with Session(graph=g2, config=ConfigProto(graph_options=GraphOptions(fusion=False))) as s:
        md = RunMetadata()
        s.run(h, {x2: rng.standard_normal((256, 256)).astype(np.float32)}, run_metadata=md)
    return Result(metrics={
        "nodes_before": on.nodes_before, "nodes_after": on.nodes_after,
        "node_reduction": 1 - on.nodes_after / on.nodes_before,
        "outputs_identical": identical,
        "peak_live_layers": md.peak_live_bytes["/cpu:0"] / layer,
        "keep_everything_layers": 100.0},
        notes=f"pass changes: {on.changes}; the 100-layer chain runs with fusion off so each "
              f"layer is a node of its own")


# -- 5. GPU ------------------------------------------------------------------------------------

def gpu_case(ctx: Context) -> Result:
    """MLP and CNN training steps with every op on /gpu:0 (torch CUDA kernels) against
    the same model in PyTorch eager on CUDA."""
    import torch

    Xtr, _, ytr, _ = digits.load_split()
    metrics, ratios = {}, {}
    xb, yb = Xtr[:256], ytr[:256]
    for model in ("mlp", "cnn"):
        runs = {}
        for tag, declared in (("", 256), ("_batch_unknown", None)):
            m = digits.build(model, "cuda", batch=declared)
            sess = Session(graph=m["graph"])
            sess.run(m["init"])
            runs[tag] = (sess, m["train"], {m["x"]: xb, m["y"]: yb})
        net = _torch_twin(model).cuda()
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        txb, tyb = torch.tensor(xb).cuda(), torch.tensor(yb, dtype=torch.long).cuda()

        def torch_step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(txb), tyb).backward()
            opt.step()

        for tag, (sess, train, feed) in runs.items():
            comp = interleaved(lambda sess=sess, train=train, feed=feed: sess.run(train, feed),
                               torch_step, repeats=ctx.pick(15, 7), warmup=5,
                               sync=torch.cuda.synchronize)
            ratios[f"ours{tag}_vs_torch_cuda_{model}"] = comp.to_dict()
            metrics[f"{model}{tag}_step_us"] = comp.a.median * 1e6
            sess.close()
    return Result(metrics=metrics, ratios=ratios,
                  notes="Batch 256. ours: the graph declares its batch size (gradient shapes "
                        "fold to constants); batch_unknown: placeholders of shape [None, ...]. "
                        "Feeds are host arrays copied to the GPU every step, as feed_dict "
                        "does; PyTorch's inputs already live on the GPU.")


def _torch_twin(model: str):
    import torch.nn as nn

    if model == "mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = x.reshape(-1, 1, 8, 8)
            x = nn.functional.max_pool2d(nn.functional.relu(self.c1(x)), 2)
            x = nn.functional.max_pool2d(nn.functional.relu(self.c2(x)), 2)
            return self.fc(x.reshape(x.shape[0], -1))
    return CNN()


CASES = [
    Case("per-node-overhead", "1000-node chain of 1-element adds, cached plan",
         ("numpy loop", "torch eager"), overhead_case,
         (Target("per_node_us", "<=", 2.0), Target("ours_vs_numpy", "<=", 3.0),
          Target("ours_vs_torch_eager", "<=", 0.75), Target("fixed_per_run_us", "<=", 20.0),
          Target("build_plus_passes_ms", "<=", 50.0))),
    Case("mlp-step", "MLP 64-128-10 SGD training step on digits",
         ("torch eager (same model, same init)", "hand-written numpy"), mlp_case,
         (Target("ours_vs_torch_b32", "<=", 0.6), Target("ours_vs_torch_b256", "<=", 1.0),
          Target("ours_vs_numpy_b32", "<=", 1.5))),
    Case("inter-op", "8 independent branches of 4 x (matmul + tanh), BLAS 1 thread",
         ("the same graph with 1 inter-op thread",), interop_case,
         (Target("speedup_512", ">=", 1.6), Target("speedup_64", ">=", 0.95))),
    Case("passes", "duplicated sub-graphs; a 100-layer forward chain",
         ("passes off", "keeping every activation"), passes_case,
         (Target("node_reduction", ">=", 0.3), Target("outputs_identical", ">=", 1.0),
          Target("peak_live_layers", "<=", 2.0))),
    Case("gpu-step", "MLP and CNN training step, every op on /gpu:0",
         ("PyTorch eager CUDA",), gpu_case,
         (Target("ours_vs_torch_cuda_mlp", "<=", 1.2),
          Target("ours_vs_torch_cuda_cnn", "<=", 1.2)), device="cuda"),
]
