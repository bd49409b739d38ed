"""Sparse logistic regression with L1 regularisation (paper section 5.1).

Minimise ``mean_i log(1 + exp(-s_i x_i.w)) + lam * |w|_1`` over the Zipf dataset of
:mod:`..data`. A worker step takes one minibatch of its shard, *pulls only the weights of
the features that occur in it* (under 1% of the keys), computes the logistic-loss
gradient on those keys, and pushes it; the servers run the L1 proximal step
(:class:`..updaters.L1Proximal`, AdaGrad-scaled). The minibatches are a fixed partition
of the shard, so every epoch revisits the same key lists (key caching pays off), and a
pull and the push after it share their keys.

:func:`optimum` is the single-process oracle: full-batch proximal gradient with
Nesterov acceleration (FISTA, Beck & Teboulle 2009) on the whole dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .. import data
from ..filters import KKT, Compress, KeyCaching, SignificantlyModified
from ..message import KEY_DTYPE, VAL_DTYPE
from . import SPARSE_LR_LAM


def spec_of(args: dict[str, Any]) -> data.SparseSpec:
    return data.SparseSpec(examples=int(args.get("examples", 8192)),
                           features=int(args.get("features", 1 << 22)),
                           nnz=int(args.get("nnz", 24)), zipf=float(args.get("zipf", 1.1)),
                           seed=int(args.get("seed", 0)))


def logistic(x: sp.csr_matrix, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean logistic loss and its residual ``sigmoid(m) - y`` for labels in {0, 1}."""
    m = np.asarray(x @ w, dtype=np.float64).reshape(-1)
    loss = float(np.mean(np.logaddexp(0, m) - y * m))
    return loss, (1 / (1 + np.exp(-m)) - y)


def objective(x: sp.csr_matrix, y: np.ndarray, w: np.ndarray, lam: float) -> float:
    return logistic(x, y, w)[0] + lam * float(np.abs(w).sum())


def optimum(args: dict[str, Any], iters: int = 400) -> float:
    """The objective's minimum on the full dataset (FISTA, step 1/L with L = max row
    norm squared / 4 bound, checked by backtracking)."""
    spec, lam = spec_of(args), float(args.get("lam", SPARSE_LR_LAM))
    x, y = data.full(spec)
    n = x.shape[0]
    w = np.zeros(spec.features)
    z, tk = w.copy(), 1.0
    step = 4.0 * n / max(float(sp.linalg.norm(x, "fro") ** 2), 1e-12) * 8
    f_prev = objective(x, y, w, lam)
    for _ in range(iters):
        loss, r = logistic(x, y, z)
        g = np.asarray(x.T @ r).reshape(-1) / n
        while True:
            v = z - step * g
            w_new = np.sign(v) * np.maximum(np.abs(v) - step * lam, 0)
            d = w_new - z
            if logistic(x, y, w_new)[0] <= loss + g @ d + (d @ d) / (2 * step) + 1e-12:
                break
            step /= 2
        t_next = (1 + np.sqrt(1 + 4 * tk * tk)) / 2
        z = w_new + ((tk - 1) / t_next) * (w_new - w)
        w, tk = w_new, t_next
        f = objective(x, y, w, lam)
        if f > f_prev:  # restart the momentum when it overshoots (O'Donoghue & Candes)
            z, tk = w.copy(), 1.0
        f_prev = f
    return objective(x, y, w, lam)


class SparseLR:
    def __init__(self, spec: dict[str, Any], num_shards: int):
        self.args = spec
        self.spec = spec_of(spec)
        self.num_shards = num_shards
        self.key_max = self.spec.features
        self.batch = int(spec.get("batch", 256))
        self.lam = float(spec.get("lam", SPARSE_LR_LAM))
        self._shards: dict[int, tuple] = {}
        self._eval: tuple | None = None

    def shard(self, s: int) -> tuple:
        if s not in self._shards:
            x, y = data.shard(self.spec, s, self.num_shards)
            self._shards[s] = (x, y, data.batches(x, self.batch))
        return self._shards[s]

    def init_values(self):
        return None  # weights start at zero

    def filters(self) -> list:
        out: list = []
        f = self.args.get("filters", [])
        if "kkt" in f:
            out.append(KKT(lam=self.lam, margin=float(self.args.get("kkt_margin", 0.0))))
        if "sigmod" in f:
            out.append(SignificantlyModified(float(self.args.get("sigmod_threshold", 1e-4))))
        if "key_caching" in f:
            out.append(KeyCaching())
        if "compress" in f:
            out.append(Compress(push_codec=self.args.get("push_codec", "fp16"),
                                pull_codec=self.args.get("pull_codec", "zlib")))
        return out

    def _batch(self, s: int, step: int) -> tuple[sp.csr_matrix, np.ndarray]:
        x, y, bs = self.shard(s)
        lo, hi = bs[step % len(bs)]
        return x[lo:hi], y[lo:hi]

    def keys(self, s: int, step: int) -> np.ndarray:
        xb, _ = self._batch(s, step)
        return np.unique(xb.indices).astype(KEY_DTYPE)

    def step(self, s: int, step: int, keys: np.ndarray, w: np.ndarray):
        xb, yb = self._batch(s, step)
        local = sp.csr_matrix((xb.data, np.searchsorted(keys, xb.indices.astype(KEY_DTYPE)),
                               xb.indptr), shape=(xb.shape[0], keys.size))
        loss, r = logistic(local, yb, w.reshape(-1).astype(np.float64))
        g = np.asarray(local.T @ r).reshape(-1) / xb.shape[0]
        return g.astype(VAL_DTYPE).reshape(-1, 1), loss

    def evaluate(self, keys: np.ndarray, vals: np.ndarray) -> dict[str, float]:
        """Objective on the whole training set for a model given as (keys, vals)."""
        if self._eval is None:
            self._eval = data.full(self.spec)
        x, y = self._eval
        w = np.zeros(self.spec.features)
        w[keys.astype(np.int64)] = vals.reshape(-1)
        loss = logistic(x, y, w)[0]
        return {"objective": loss + self.lam * float(np.abs(w).sum()), "loss": loss,
                "nnz": int(np.count_nonzero(w))}
