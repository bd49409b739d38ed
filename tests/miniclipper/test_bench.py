"""The cache case's in-process eviction replay (the part of the bench that needs no
processes, and so can be checked against an oracle)."""

import numpy as np

from systems.miniclipper.bench import eviction_replay


def test_with_room_for_every_key_only_first_lookups_miss():
    """Nothing is evicted: both caches miss exactly once per distinct key."""
    got = eviction_replay(room=2000, keys=1000, lookups=5000)
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, 1001)
    distinct = len(set(rng.choice(1000, 5000, p=p / p.sum()).tolist()))
    assert got["zipf_hit_ratio"] == got["zipf_hit_ratio_lru"] == (5000 - distinct) / 5000
    assert got["zipf_evictions"] == 0


def test_clock_comes_close_to_lru_when_the_budget_binds():
    """CLOCK approximates LRU (Clipper's reason for it): on a Zipf stream over ten
    times the keys it holds, it evicts, and its hit ratio is within a few points."""
    got = eviction_replay(room=100, keys=1000, lookups=20_000)
    assert got["zipf_evictions"] > 1000
    assert abs(got["zipf_hit_ratio"] - got["zipf_hit_ratio_lru"]) < 0.03
    assert got["zipf_hit_ratio_lru"] > 0.3
