"""What a result costs in money, DAWNBench-style, and which results are worth having.

DAWNBench (Coleman et al., "DAWNBench: An End-to-End Deep Learning Benchmark and
Competition", NIPS ML Systems Workshop 2017) ranked systems not only by speed but by
*cost to train to a target accuracy* and *cost per 10,000 inferences*: a fast system on
an expensive machine can lose to a slower one on a cheap machine. We report
$ per 1M inferences and $ per training run.

Prices are data with a date, never fetched: cloud prices change, and a benchmark's
money column must be reproducible. Pass your own ``price_per_hour`` for your machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    name: str
    usd_per_hour: float  # for the whole instance
    devices: int  # accelerators (or 1 for a CPU instance)
    source: str
    date: str

    @property
    def usd_per_device_hour(self) -> float:
        return self.usd_per_hour / self.devices


# On-demand list prices as published on the dates given; they have changed since and
# differ by region. They are here so that every run of a benchmark uses the same numbers.
PRICES: dict[str, Price] = {
    "aws-p5.48xlarge": Price("AWS p5.48xlarge (8x H100 SXM), us-east-1, on-demand",
                             98.32, 8, "aws.amazon.com/ec2/instance-types/p5 (launch price)",
                             "2023-07"),
    "lambda-h100-sxm": Price("Lambda Cloud 1x H100 SXM, on-demand", 2.99, 1,
                             "lambdalabs.com/service/gpu-cloud pricing page", "2024-06"),
    "aws-c7i.large": Price("AWS c7i.large (2 vCPU, 4 GiB), us-east-1, on-demand", 0.08925, 1,
                           "aws.amazon.com/ec2/pricing/on-demand", "2024-06"),
}


def usd_per_million_inferences(throughput_per_s: float, usd_per_hour: float) -> float:
    """Dollars for 1M inferences at a sustained throughput on a machine billed hourly."""
    if throughput_per_s <= 0:
        raise ValueError("throughput must be positive")
    seconds = 1e6 / throughput_per_s
    return usd_per_hour * seconds / 3600.0


def usd_per_training_run(time_to_accuracy_s: float, usd_per_hour: float) -> float:
    """Dollars for one run to the target accuracy (DAWNBench's training-cost metric)."""
    return usd_per_hour * time_to_accuracy_s / 3600.0


def pareto_front(rows: Sequence[dict], minimize: Sequence[str] = (),
                 maximize: Sequence[str] = ()) -> list[dict]:
    """The rows that no other row dominates, in their original order.

    Row *a* dominates *b* if *a* is at least as good on every objective and strictly
    better on one. E.g. ``pareto_front(rows, minimize=["latency_ms", "usd"],
    maximize=["accuracy"])``: the configurations worth choosing between.
    """
    if not minimize and not maximize:
        raise ValueError("pareto_front needs at least one objective")

    def key(r: dict) -> tuple[float, ...]:
        # Turn every objective into "smaller is better".
        return tuple(r[m] for m in minimize) + tuple(-r[m] for m in maximize)

    keys = [key(r) for r in rows]

    def dominates(a: tuple, b: tuple) -> bool:
        pairs = list(zip(a, b, strict=True))
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    return [r for r, k in zip(rows, keys, strict=True)
            if not any(dominates(o, k) for o in keys if o is not k)]
