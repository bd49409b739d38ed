"""Task extraction from torch modules: anchors, fused consumers, de-duplication."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from systems.miniansor import zoo
from systems.miniansor.extract import extract_tasks


def keys(module, *inputs, dtype="fp16"):
    tasks, weights = extract_tasks(module, inputs, dtype)
    return dict(zip((t.key for t in tasks), weights, strict=True))


def test_mlp_layers_are_deduplicated_with_weights():
    m = zoo.MLP(64, 256, 32, depth=4)
    assert keys(m, torch.zeros(8, 64)) == {
        "gemm:8x256x64:fp16:bias+relu": 1, "gemm:8x256x256:fp16:bias+relu": 2,
        "gemm:8x32x256:fp16:bias": 1}


def test_transformer_block_tasks():
    m = zoo.TransformerBlock(d_model=64, n_heads=4, ffn=256)
    assert keys(m, torch.zeros(2, 32, 64)) == {
        "layernorm:64x64:fp16:none": 2,
        "gemm:64x192x64:fp16:bias": 1,
        "bmm:8x32x32x16:fp16:none": 1,  # QK^T, per (batch, head)
        "softmax:256x32:fp16:none": 1,
        "bmm:8x32x16x32:fp16:none": 1,  # PV
        "gemm:64x64x64:fp16:bias+res": 1,
        "gemm:64x256x64:fp16:bias+gelu": 1,
        "gemm:64x64x256:fp16:bias+res": 1,
    }


def test_repeated_identical_layers_become_one_task():
    m = nn.Sequential(*[nn.Linear(32, 32) for _ in range(5)])
    assert keys(m, torch.zeros(4, 32)) == {"gemm:4x32x32:fp16:bias": 5}


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(48, 32))
        self.b = nn.Parameter(torch.zeros(48))
        self.w2 = nn.Parameter(torch.zeros(48, 48))

    def forward(self, x, y):
        h = F.gelu(F.linear(x, self.w, self.b))  # linear + bias + gelu
        z = torch.relu(h @ self.w2.t() + self.b) + h  # matmul, bias, relu, residual
        s = torch.bmm(y, y.transpose(1, 2)).softmax(dim=-1)
        return F.layer_norm(z, (48,)), s


def test_functional_forms_and_the_epilogue_order():
    got = keys(Functional(), torch.zeros(10, 32), torch.zeros(3, 7, 5), dtype="fp32")
    assert got == {"gemm:10x48x32:fp32:bias+gelu": 1, "gemm:10x48x48:fp32:bias+relu+res": 1,
                   "bmm:3x7x7x5:fp32:none": 1, "softmax:21x7:fp32:none": 1,
                   "layernorm:10x48:fp32:none": 1}


def test_a_consumer_with_two_users_is_not_fused():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            y = self.fc(x)
            return torch.relu(y) + y.sum()

    assert keys(TwoUsers(), torch.zeros(4, 16)) == {"gemm:4x16x16:fp16:bias": 1}
    approx = nn.Sequential(nn.Linear(8, 8), nn.GELU(approximate="tanh"))
    assert keys(approx, torch.zeros(2, 8)) == {"gemm:2x8x8:fp16:bias": 1}


class _SumOfTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


class _Doubled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16, bias=False)

    def forward(self, x):
        y = self.a(x)
        return y + y


def test_an_add_joins_one_gemm_and_never_adds_the_chain_to_itself():
    x = torch.zeros(4, 16)
    # one add: fused into the first GEMM as its residual; the second keeps its bias only
    got = keys(_SumOfTwo(), x, x)
    assert got == {"gemm:4x16x16:fp16:bias+res": 1, "gemm:4x16x16:fp16:bias": 1}
    assert sum(got.values()) == 2  # one task per Linear, as many as there are GEMMs
    # y + y needs y whole before the add: not a residual of y's own GEMM
    assert keys(_Doubled(), x) == {"gemm:4x16x16:fp16:none": 1}


def _miniflow_layer(bias_first: bool):
    import numpy as np

    import systems.miniflow as mf

    g, rng = mf.Graph(), np.random.default_rng(0)
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 16], name="x")
        w = mf.Variable(rng.normal(0, 0.3, (16, 32)).astype(np.float32), name="w")
        b = mf.Variable(rng.normal(0, 0.1, 32).astype(np.float32), name="b")
        y = mf.nn.relu(b + x @ w) if bias_first else mf.nn.relu(x @ w + b)
    return g, x, y


def test_miniflow_bias_add_is_fused_in_either_operand_order(tmp_path):
    """Extraction and miniflow's runtime rewrite share gemm_epilogue: b + x @ w must be
    tuned and run as the same bias+relu GEMM as x @ w + b, with the untuned answer."""
    import numpy as np

    import systems.miniflow as mf
    from systems.miniansor.extract_miniflow import extract_tasks_from_miniflow
    from systems.miniansor.records import apply_history_best
    from systems.miniansor.tune import tune_tasks

    for bias_first in (False, True):
        g, x, y = _miniflow_layer(bias_first)
        tasks, _ = extract_tasks_from_miniflow(y, [x], batch=8)
        assert [t.key for t in tasks] == ["gemm:8x32x16:fp32:bias+relu"], bias_first
    log = tmp_path / "t.jsonl"
    tune_tasks(tasks, trials=2, log=log, per_round=2, verify="none", progress=False)
    xv = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        want = s.run(y, {x: xv})
    cfg = mf.ConfigProto(cpu_backend="torch", kernel_library=apply_history_best(log))
    with mf.Session(graph=g, config=cfg) as s:
        s.run(mf.global_variables_initializer())
        got = s.run(y, {x: xv})
        assert s.kernel_stats["tuned"] == 1  # one kernel: GEMM, bias and ReLU together
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


class Keywords(nn.Module):
    """Calls written with keyword arguments; and an add that scales its operand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(24, 16))
        self.b = nn.Parameter(torch.zeros(24))

    def forward(self, x, r):
        y = F.linear(x, weight=self.w, bias=self.b)
        z = F.linear(input=x, weight=self.w)
        return torch.add(y, r, alpha=2.0), torch.matmul(input=z, other=self.w)


def test_keyword_arguments_are_read_and_a_scaled_add_is_not_a_residual():
    got = keys(Keywords(), torch.zeros(4, 16), torch.zeros(4, 24), dtype="fp32")
    assert got == {"gemm:4x24x16:fp32:bias": 1, "gemm:4x24x16:fp32:none": 1,
                   "gemm:4x16x24:fp32:none": 1}


class _Softmax(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return torch.softmax(x, dim=self.dim)


class _MatMul(nn.Module):
    def forward(self, a, b):
        return a @ b


def test_a_softmax_over_another_axis_is_not_a_row_softmax_task():
    assert keys(_Softmax(0), torch.zeros(4, 8)) == {}
    assert keys(_Softmax(-1), torch.zeros(4, 8)) == \
        {"softmax:4x8:fp16:none": 1}


def test_a_broadcast_batched_matmul_takes_its_batch_from_the_output():
    # [M, K] @ [B, K, N] and [1, M, K] @ [B, K, N]: B products of M x N x K
    assert keys(_MatMul(), torch.zeros(8, 64), torch.zeros(3, 64, 32)) == \
        {"bmm:3x8x32x64:fp16:none": 1}
    assert keys(_MatMul(), torch.zeros(1, 8, 64), torch.zeros(3, 64, 32)) == \
        {"bmm:3x8x32x64:fp16:none": 1}


class _Score(nn.Module):
    """A 1-D weight: ``F.linear`` is then a dot product per row (valid torch)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(16))

    def forward(self, x):
        return F.linear(x, self.w), F.linear(x, self.w.view(1, 16))


def test_a_linear_with_a_one_dimensional_weight_is_no_gemm_and_no_crash():
    """It raised "not enough values to unpack" out of extract_tasks, as ``x @ w`` did not."""
    assert keys(_Score(), torch.zeros(4, 16), dtype="fp32") == {"gemm:4x1x16:fp32:none": 1}


def test_only_one_activation_joins_the_epilogue():
    """gelu(relu(x W + b)): the epilogue is bias+relu; the GELU after it is not fused (an
    epilogue has one activation, and fusing the second would replace the first)."""
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.GELU())
    assert keys(m, torch.zeros(4, 16)) == {"gemm:4x32x16:fp16:bias+relu": 1}


def test_modules_it_cannot_use_get_a_message_that_says_so(capsys):
    """An untraceable module used to raise torch.fx's own error, one with no task the
    scheduler's "one weight per task; got 0 tasks", and a MultiheadAttention (a leaf of
    the trace) was left out of the tasks without a word."""
    from systems.miniansor.tune import tune_model

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    class Elementwise(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2 + 1

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha, self.head = torch.nn.MultiheadAttention(16, 2), torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.head(self.mha(x, x, x)[0])

    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="cannot extract tasks from Branchy: torch.fx could "
                                         "not trace it"):
        extract_tasks(Branchy(), (x,))
    with pytest.raises(ValueError, match="no tunable task in Elementwise"):
        tune_model(Elementwise(), (x,), trials=8, device="sim", progress=False)
    tasks, _ = extract_tasks(Attention(), (torch.randn(4, 1, 16),))
    assert [t.kind for t in tasks] == ["gemm"]  # only the head
    assert "mha (MultiheadAttention) stays one module" in capsys.readouterr().err


class _Methods(nn.Module):
    def forward(self, q, k, x, w):
        return q.bmm(k).sum() + x.mm(w).sum() + torch.mm(x, mat2=w).sum()


class _TracedNorm(nn.Module):
    def __init__(self, affine=True):
        super().__init__()
        self.w = nn.Parameter(torch.ones(64)) if affine else None

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.w)


def test_method_matmuls_and_a_traced_layer_norm_shape_are_tasks():
    """x.mm(w) and q.bmm(k) are torch.mm and torch.bmm, but only the functions were
    extracted (the methods were dropped without a word); torch.mm's keyword is mat2.
    F.layer_norm(x, x.shape[-1:], w) is a common idiom whose traced shape made
    extraction die in a TypeError; its weight says over which axes it normalises."""
    got = keys(_Methods(), torch.zeros(4, 32, 16), torch.zeros(4, 16, 32),
               torch.zeros(64, 48), torch.zeros(48, 80))
    assert got == {"bmm:4x32x32x16:fp16:none": 1, "gemm:64x80x48:fp16:none": 2}
    assert keys(_TracedNorm(), torch.zeros(8, 64)) == {"layernorm:8x64:fp16:none": 1}
    assert keys(_TracedNorm(affine=False), torch.zeros(8, 64)) == {}  # cannot tell


def test_extraction_leaves_the_users_model_and_inputs_as_they_were():
    """Shape propagation runs the model once: on the model itself, a BatchNorm in
    training mode took its running statistics from the example inputs (and an in-place
    op changed the caller's tensor). TVM's extraction never runs the model."""
    import threading

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()  # no copy of the model can be made, either
            self.net = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                     nn.Linear(8, 4))

        def forward(self, x):
            x.mul_(2.0)
            return self.net(x)
    m = InPlace()
    x = torch.randn(16, 8) * 10 + 3
    state, x0 = {k: v.clone() for k, v in m.state_dict().items()}, x.clone()
    tasks, _ = extract_tasks(m, (x,))
    assert [t.key for t in tasks] == ["gemm:16x8x8:fp16:bias", "gemm:16x4x8:fp16:bias"]
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert torch.equal(x, x0)
