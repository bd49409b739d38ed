"""The worker loop's knobs: simulated compute and stragglers."""

from systems.minips.worker import straggle_s


def test_persistent_straggler_is_always_the_same_worker():
    cfg = {"num_workers": 4, "step_sleep_s": 0.01,
           "straggler": {"mode": "persistent", "rank": 2, "factor": 4}}
    for c in range(20):
        assert [straggle_s(cfg, r, c) for r in range(4)] == [0.01, 0.01, 0.04, 0.01]


def test_rotating_straggler_is_exactly_one_worker_per_clock():
    cfg = {"num_workers": 4, "step_sleep_s": 0.01,
           "straggler": {"mode": "rotating", "factor": 4, "seed": 3}}
    slow = []
    for c in range(400):
        times = [straggle_s(cfg, r, c) for r in range(4)]
        assert sorted(times) == [0.01, 0.01, 0.01, 0.04]
        slow.append(times.index(0.04))
    counts = [slow.count(r) for r in range(4)]
    assert min(counts) > 60  # every worker takes its turn
