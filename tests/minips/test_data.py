"""The synthetic Zipf dataset: reproducible, power-law, shard-independent."""

import numpy as np

from systems.minips import data

SPEC = data.SparseSpec(examples=2048, features=1 << 16, nnz=16, zipf=1.1, seed=7)


def test_same_seed_same_data_and_shards_partition_the_dataset():
    x1, y1 = data.full(SPEC)
    x2, y2 = data.full(SPEC)
    assert (x1 != x2).nnz == 0 and (y1 == y2).all()
    for count in (2, 4):
        parts = [data.shard(SPEC, i, count) for i in range(count)]
        assert sum(p[0].shape[0] for p in parts) == SPEC.examples
        rows = {tuple(r.indices) for p in parts for r in p[0]}
        assert rows == {tuple(r.indices) for r in x1}


def test_feature_frequencies_follow_a_power_law():
    x, y = data.full(SPEC)
    counts = np.sort(np.bincount(x.indices, minlength=SPEC.features))[::-1]
    ranks = np.arange(1, 101)
    slope = np.polyfit(np.log(ranks), np.log(counts[:100] + 1e-9), 1)[0]
    assert -1.4 < slope < -0.8  # Zipf exponent 1.1
    assert 0.3 < y.mean() < 0.7  # both classes present


def test_a_minibatch_touches_under_one_percent_of_a_large_key_space():
    spec = data.SparseSpec(examples=1024, features=1 << 22, nnz=24)
    x, _ = data.shard(spec, 0, 4)
    lo, hi = data.batches(x, 256)[0]
    touched = np.unique(x[lo:hi].indices).size
    assert touched / spec.features < 0.01
