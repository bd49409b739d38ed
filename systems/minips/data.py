"""A synthetic sparse classification dataset with power-law (Zipf) feature frequencies.

The paper's sparse logistic regression ran on an ad-click dataset with 170 billion
examples and 65 billion unique features (section 5.1); what matters for the
system is its *shape*: every example has a few non-zero binary features, and feature
frequencies follow a power law, so a minibatch touches a tiny, skewed fraction of the
keys (the reason a parameter server sends far less than a dense all-reduce). We
generate that shape reproducibly:

* feature *ranks* follow a Zipf law, ``P(rank r) ~ r ** -zipf``, truncated to ``features``;
* ranks map to feature ids through a seeded permutation, so popular features are spread
  over the key space (and over the ring's servers) instead of piling up at key 0;
* a sparse ground-truth weight vector labels each example through a logistic model.

Examples come in blocks of 256, each generated from (seed, block), and a shard is every
``count``-th block, so a worker builds only its own shard, the dataset does not depend on
the number of workers, and the single-process oracle rebuilds the same union.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class SparseSpec:
    """Sizes of the dataset (the ``--examples``, ``--features``... flags)."""

    examples: int = 8192  # over all shards
    features: int = 1 << 22
    nnz: int = 24  # non-zero features per example
    zipf: float = 1.1
    truth_density: float = 0.2  # fraction of features with a true non-zero weight
    seed: int = 0


@lru_cache(maxsize=4)
def _rank_cdf(spec: SparseSpec) -> np.ndarray:
    w = np.arange(1, spec.features + 1, dtype=np.float64) ** -spec.zipf
    c = np.cumsum(w)
    return c / c[-1]


@lru_cache(maxsize=4)
def feature_permutation(spec: SparseSpec) -> np.ndarray:
    return np.random.default_rng([spec.seed, 1]).permutation(spec.features).astype(np.int64)


@lru_cache(maxsize=4)
def true_weights(spec: SparseSpec) -> np.ndarray:
    rng = np.random.default_rng([spec.seed, 2])
    w = np.zeros(spec.features, np.float32)
    nz = rng.random(spec.features) < spec.truth_density
    w[nz] = rng.normal(0, 1.5, int(nz.sum()))
    return w


BLOCK = 256  # examples are generated in blocks, so shards do not change the dataset


def block(spec: SparseSpec, b: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Examples ``[b * BLOCK, (b + 1) * BLOCK)`` as (binary CSR, labels in {0, 1})."""
    n = min(BLOCK, spec.examples - b * BLOCK)
    rng = np.random.default_rng([spec.seed, 3, b])
    ranks = np.searchsorted(_rank_cdf(spec), rng.random(n * spec.nnz))
    cols = feature_permutation(spec)[ranks].reshape(n, spec.nnz)
    cols.sort(axis=1)
    dup = np.zeros_like(cols, dtype=bool)
    dup[:, 1:] = cols[:, 1:] == cols[:, :-1]  # a popular feature drawn twice counts once
    data = (~dup).astype(np.float32).reshape(-1)
    x = sp.csr_matrix((data, cols.reshape(-1), np.arange(0, n * spec.nnz + 1, spec.nnz)),
                      shape=(n, spec.features))
    x.eliminate_zeros()
    margin = x @ true_weights(spec) + rng.logistic(0, 0.5, n)
    return x, (margin > 0).astype(np.float32)


def n_blocks(spec: SparseSpec) -> int:
    return -(-spec.examples // BLOCK)


def shard(spec: SparseSpec, index: int, count: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Shard ``index`` of ``count``: blocks ``index, index + count, ...``."""
    parts = [block(spec, b) for b in range(index, n_blocks(spec), count)]
    if not parts:
        raise ValueError(f"{spec.examples} examples make {n_blocks(spec)} blocks of {BLOCK}: "
                         f"too few for shard {index} of {count}")
    return sp.vstack([p[0] for p in parts]).tocsr(), np.concatenate([p[1] for p in parts])


def full(spec: SparseSpec) -> tuple[sp.csr_matrix, np.ndarray]:
    """Every example (what the single-process oracle trains on)."""
    parts = [block(spec, b) for b in range(n_blocks(spec))]
    return sp.vstack([p[0] for p in parts]).tocsr(), np.concatenate([p[1] for p in parts])


def batches(x: sp.csr_matrix, batch: int) -> list[tuple[int, int]]:
    """The fixed partition of a shard's rows into minibatches (same every epoch)."""
    return [(i, min(i + batch, x.shape[0])) for i in range(0, x.shape[0], batch)]
