"""Checkpoints: atomic files, restored into a ring of a different size."""

import numpy as np
import pytest

from systems.minips import checkpoint
from systems.minips.launcher import ClusterSpec


def test_checkpoint_restores_values_and_clocks_into_a_bigger_ring(make_cluster, tmp_path):
    km = 1 << 16
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, km, 3000)).astype(np.uint64)
    vals = rng.normal(size=(keys.size, 2)).astype(np.float32)
    a = make_cluster(ClusterSpec(servers=2, app={"name": "count"}, key_max=km, val_len=2,
                                 updater={"name": "sum"}))
    kv = a.client("writer")
    kv.wait(kv.push(keys, vals, clock=5))
    ckpt = tmp_path / "ckpt"
    manifest = a.checkpoint(ckpt)
    assert manifest.name == "manifest.json"
    assert not list(ckpt.glob(".*"))  # no temporary file left behind
    a.close()

    b = make_cluster(ClusterSpec(servers=3, replication=2, app={"name": "count"}, key_max=km,
                                 val_len=2, updater={"name": "sum"}), restore=ckpt)
    kv = b.client("writer")  # same name, new cluster: its clocks came back too
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), vals)
    kv.wait(kv.push(keys, vals, clock=5))  # a resend of the checkpointed push: dropped
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), vals)
    kv.wait(kv.push(keys, vals, clock=6))  # a new one: applied
    np.testing.assert_array_equal(kv.wait(kv.pull(keys)), 2 * vals)


def test_an_unfinished_checkpoint_is_refused(tmp_path):
    (tmp_path / "s0.npz").write_bytes(b"partial")
    with pytest.raises(FileNotFoundError, match="not a finished checkpoint"):
        checkpoint.load(tmp_path)
