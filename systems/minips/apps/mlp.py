"""Data-parallel training of a small torch MLP on scikit-learn's digits (8x8 images).

The dense counterpart of sparse logistic regression: every step reads and writes *all*
parameters, so a parameter server moves the whole model twice per step, exactly what an
all-reduce moves once (the comparison in docs/minips/vs-allreduce.md). The parameters
of ``Linear(64, hidden) -> ReLU -> Linear(hidden, 10)`` are flattened, in
``model.parameters()`` order, onto keys ``0 .. P-1``. Every worker pushes torch's
seeded initialisation (``cmd="init"``; the servers keep the first to arrive); then each
step pulls the flat vector, copies it into the module, runs forward and backward on a
minibatch of the worker's shard and pushes the gradient divided by the number of
workers, so that a BSP clock with SGD on the server equals one single-process step on
the union of the workers' minibatches.
With ``"device": "cuda"`` the forward and backward run on the GPU (the values still travel
as numpy arrays: a parameter server moves host memory).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..message import KEY_DTYPE, VAL_DTYPE


def param_count(hidden: int) -> int:
    return 64 * hidden + hidden + hidden * 10 + 10


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1], 80% train / 20% test, shuffled by ``seed``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def build(hidden: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def flat(model) -> np.ndarray:
    return np.concatenate([p.detach().cpu().numpy().reshape(-1) for p in model.parameters()])


def load_flat(model, w: np.ndarray) -> None:
    import torch

    at = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(torch.from_numpy(np.ascontiguousarray(w[at:at + n])).view_as(p))
            at += n


def evaluate_flat(keys: np.ndarray, vals: np.ndarray, hidden: int, x: np.ndarray,
                  y: np.ndarray) -> dict[str, float]:
    """The forward pass of ``build(hidden)`` on a flat parameter vector (torch's
    ``Linear`` stores ``weight`` as (out, in), then ``bias``)."""
    w = np.zeros(param_count(hidden), np.float32)
    w[keys.astype(np.int64)] = vals.reshape(-1)
    sizes = [(hidden, 64), (hidden,), (10, hidden), (10,)]
    parts, at = [], 0
    for shape in sizes:
        n = int(np.prod(shape))
        parts.append(w[at:at + n].reshape(shape))
        at += n
    w1, b1, w2, b2 = parts
    logits = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return {"accuracy": float((logits.argmax(1) == y).mean()),
            "loss": float(-logp[np.arange(len(y)), y].mean())}


class MLP:
    def __init__(self, spec: dict[str, Any], num_shards: int, monitor: bool = False):
        self.spec, self.num_shards = spec, num_shards
        self.hidden = int(spec.get("hidden", 64))
        self.batch = int(spec.get("batch", 32))
        self.seed = int(spec.get("seed", 0))
        self.key_max = param_count(self.hidden)
        self.xtr, self.ytr, self.xte, self.yte = digits_split(self.seed)
        self.all_keys = np.arange(self.key_max, dtype=KEY_DTYPE)
        if monitor:  # evaluation only: no torch needed
            return
        import torch

        torch.set_num_threads(1)  # several processes share two cores
        self.device = torch.device(spec.get("device", "cpu"))  # "cuda": GPU workers
        self.model = build(self.hidden, self.seed).to(self.device)

    def init_values(self):
        return self.all_keys, flat(self.model).reshape(-1, 1).astype(VAL_DTYPE)

    def filters(self) -> list:
        return []

    def _rows(self, s: int, step: int) -> np.ndarray:
        idx = np.arange(s, len(self.ytr), self.num_shards)
        n_b = max(len(idx) // self.batch, 1)
        b = step % n_b
        # each epoch reshuffles the shard, reproducibly
        perm = np.random.default_rng([self.seed, s, step // n_b]).permutation(idx)
        return perm[b * self.batch:(b + 1) * self.batch]

    def keys(self, s: int, step: int) -> np.ndarray:
        return self.all_keys

    def step(self, s: int, step: int, keys: np.ndarray, w: np.ndarray):
        import torch

        load_flat(self.model, w.reshape(-1))
        rows = self._rows(s, step)
        self.model.zero_grad()
        x = torch.from_numpy(self.xtr[rows]).to(self.device)
        y = torch.from_numpy(self.ytr[rows]).to(self.device)
        loss = torch.nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        g = np.concatenate([p.grad.cpu().numpy().reshape(-1) for p in self.model.parameters()])
        return (g / self.num_shards).astype(VAL_DTYPE).reshape(-1, 1), loss.item()

    def evaluate(self, keys: np.ndarray, vals: np.ndarray) -> dict[str, float]:
        """Test accuracy and loss of a flat model, in numpy (the monitor needs no torch)."""
        return evaluate_flat(keys, vals, self.hidden, self.xte, self.yte)
