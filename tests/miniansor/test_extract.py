"""Task extraction from torch modules: anchors, fused consumers, de-duplication."""

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
