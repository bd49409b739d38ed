import pytest

from common.money import PRICES, pareto_front, usd_per_million_inferences, usd_per_training_run


def test_usd_per_million_by_hand():
    # 1000 inferences/s -> 1M take 1000 s = 1/3.6 h; at $3.60/h that is $1.00
    assert usd_per_million_inferences(1000, 3.60) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="throughput must be positive"):
        usd_per_million_inferences(0, 1.0)
    with pytest.raises(ValueError, match="throughput must be positive"):
        usd_per_million_inferences(-5, 1.0)


def test_usd_per_training_run_by_hand():
    assert usd_per_training_run(1800, 2.99) == pytest.approx(1.495)


def test_prices_are_dated_and_sourced():
    for p in PRICES.values():
        assert p.date[:2] == "20" and p.source and p.usd_per_hour > 0
    assert PRICES["aws-p5.48xlarge"].usd_per_device_hour == pytest.approx(98.32 / 8)


def test_pareto_front_keeps_only_undominated_rows():
    rows = [
        {"name": "a", "lat": 1.0, "acc": 0.90},
        {"name": "b", "lat": 2.0, "acc": 0.95},
        {"name": "c", "lat": 3.0, "acc": 0.94},  # dominated by b
        {"name": "d", "lat": 1.0, "acc": 0.89},  # dominated by a
        {"name": "e", "lat": 5.0, "acc": 0.99},
    ]
    front = pareto_front(rows, minimize=["lat"], maximize=["acc"])
    assert [r["name"] for r in front] == ["a", "b", "e"]


def test_pareto_front_against_brute_force():
    import random

    rnd = random.Random(0)
    rows = [{"x": rnd.randint(0, 5), "y": rnd.randint(0, 5), "z": rnd.randint(0, 5)}
            for _ in range(40)]
    front = pareto_front(rows, minimize=["x", "y"], maximize=["z"])
    for r in rows:
        dominated = any(o["x"] <= r["x"] and o["y"] <= r["y"] and o["z"] >= r["z"]
                        and (o["x"], o["y"], o["z"]) != (r["x"], r["y"], r["z"])
                        for o in rows)
        assert (r in front) == (not dominated)
    assert front  # non-empty
    with pytest.raises(ValueError, match="needs at least one objective"):
        pareto_front(rows)
