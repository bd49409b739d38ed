"""Two whole models for ``tune-model`` and the task-scheduler benchmark, as torch modules.

* ``MLP``: a stack of linear layers with ReLU, whose middle layers repeat (so task
  extraction de-duplicates them into one task of weight > 1);
* ``TransformerBlock``: a pre-LayerNorm block (Vaswani et al. 2017; GPT-2's layout):
  LN -> QKV projection -> per-head QK^T, softmax, PV -> output projection + residual;
  LN -> up projection + GELU -> down projection + residual.

Written with plain ops (``torch.matmul``, ``softmax``) rather than
``nn.MultiheadAttention``, so ``torch.fx`` sees every anchor op.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in: int = 4096, hidden: int = 14336, d_out: int = 4096,
                 depth: int = 4):
        super().__init__()
        dims = [d_in] + [hidden] * (depth - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b)
                                    for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int = 4096, n_heads: int = 32, ffn: int = 14336):
        super().__init__()
        self.h, self.d = n_heads, d_model // n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.up, self.act = nn.Linear(d_model, ffn), nn.GELU()
        self.down = nn.Linear(ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(b, s, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d), dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, s, c)
        x = x + self.proj(y)
        return x + self.down(self.act(self.up(self.ln2(x))))


def example(name: str, batch: int = 1, seq: int = 2048) -> tuple[nn.Module, tuple]:
    """(module, example inputs) for ``"mlp"`` or ``"transformer"``, at the sizes of a
    Llama-3-8B-like layer (d_model 4096, FFN 14336, 32 heads) over ``batch * seq`` tokens.
    Tracing needs only shapes: the module is built on the ``meta`` device."""
    with torch.device("meta"):
        if name == "mlp":
            return MLP(), (torch.zeros(batch * seq, 4096),)
        if name == "transformer":
            return TransformerBlock(), (torch.zeros(batch, seq, 4096),)
    raise ValueError(f"unknown model {name!r}; choose 'mlp' or 'transformer'")
