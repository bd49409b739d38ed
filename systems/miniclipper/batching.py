"""Batch-size controllers: how many queued queries a replica takes at once (Clipper §4.3).

Batching amortises the RPC and the framework's per-call cost, and lets a model use its
vectorised kernels; but a larger batch takes longer, and every query in it waits for the
whole batch. Each replica therefore owns a controller that, after every batch, is told
how large the batch was and how long it took, and answers the largest batch size it may
take next. This is the one seam of clipper-v0 (``clipper_server/src/clipper/batching.rs``,
``trait Batcher { fn update_batch_size(measurement, max_latency) -> usize }``) behind
which three strategies live:

* :class:`StaticBatcher`: a fixed size (Clipper's ``batch_size`` argument of
  ``deploy_model``);
* :class:`AIMDBatcher`: additive increase while the batch latency is under the target by
  a margin, multiplicative back-off when over it (Clipper §4.3.1; ``update_batch_size_aimd``
  in batching.rs: +2, margin 10% of the target, back-off to 90%);
* :class:`QuantileRegressionBatcher`: fit the high quantile of latency as a linear
  function of batch size and take the largest size whose predicted quantile fits the
  target (Clipper §4.3.1, "quantile regression"; batching.rs ``LearnedBatcher``).

The *target* is the share of the query SLO a batch may take: a query that arrives just
after a batch left waits for that batch and then for its own, so a batch may use about
half the SLO (``slo_fraction``). The newer C++ Clipper does the same thing differently,
sizing a batch from the earliest deadline in the queue (``containers.cpp``,
``get_batch_size``).

Delayed batching (§4.3.2), a bounded wait for a fuller batch, belongs to the queue
(``max_delay_s`` here, used by :meth:`.queues.ModelQueue.get_batch`).
"""

from __future__ import annotations

import abc
import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class BatchingConfig:
    """How a model's replicas batch. ``policy`` is "static", "aimd" or "quantile"."""

    policy: str = "aimd"
    size: int = 1                # the static size, and where adaptive ones start
    max_size: int = 512
    max_delay_s: float = 0.0     # delayed batching: wait up to this for a fuller batch
    slo_fraction: float = 0.45   # share of the SLO one batch may take
    quantile: float = 0.95       # for "quantile" (a 64-sample window cannot see a p99)

    def __post_init__(self) -> None:
        if self.policy not in CONTROLLERS:
            raise ValueError(f"batching policy must be one of {sorted(CONTROLLERS)}, "
                             f"got {self.policy!r}")
        for f in ("size", "max_size"):  # a float size would break the queue's range(n)
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"batching {f} must be a whole number, got {v!r}")
        if not (1 <= self.size <= self.max_size):
            raise ValueError(f"batch size {self.size} must be in 1..max_size={self.max_size}")
        for f, ok, want in (("max_delay_s", lambda v: 0 <= v < 10, "in [0, 10) s"),
                            ("slo_fraction", lambda v: 0 < v <= 1, "in (0, 1]"),
                            ("quantile", lambda v: 0.5 <= v < 1, "in [0.5, 1)")):
            v = getattr(self, f)  # a number first: "x" made the comparison a TypeError
            if not isinstance(v, (int, float, np.number)) or isinstance(v, bool) or not ok(v):
                raise ValueError(f"batching {f} must be a number {want}, got {v!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchingConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown batching fields {sorted(unknown)}; "
                             f"expected some of {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BatchController(abc.ABC):
    """The seam: after each batch, decide the next maximum batch size."""

    name = "base"

    def __init__(self, cfg: BatchingConfig):
        self.cfg = cfg
        self.batch_size = cfg.size

    @abc.abstractmethod
    def update_batch_size(self, batch_size: int, latency_s: float, target_s: float) -> int:
        """Told that a batch of ``batch_size`` took ``latency_s`` against a latency target
        ``target_s``; returns the largest batch the replica may take next."""

    def state(self) -> dict[str, float]:
        """Numbers worth exporting as metrics (the current size, fitted parameters)."""
        return {"batch_size": float(self.batch_size)}


class StaticBatcher(BatchController):
    """Always the configured size (Clipper's user-set ``batch_size``)."""

    name = "static"

    def update_batch_size(self, batch_size: int, latency_s: float, target_s: float) -> int:
        return self.batch_size


def aimd_step(limit: int, batch_size: int, latency_s: float, target_s: float,
              max_size: int, increment: int = 2, backoff: float = 0.9,
              margin: float = 0.1) -> int:
    """One AIMD step, batching.rs ``update_batch_size_aimd``: under ``target - margin``
    grow by ``increment``; between that and the target hold; over it, back off by
    ``backoff``.

    Two refinements over batching.rs, both about batches that did not fill the limit:
    we grow only after a *full* batch (a half-empty batch says nothing about a larger
    one; the Rust code notes the same intent in a comment), and a slow batch less than
    half the limit does not shrink it (something other than the batch size slowed it:
    another process, a pause; shrinking would only cut throughput while a backlog
    forms). Back-off multiplies the limit, by at least one.
    """
    if latency_s < target_s * (1 - margin):
        return min(max_size, limit + increment) if batch_size >= limit else limit
    if latency_s < target_s or 2 * batch_size < limit:
        return limit
    return max(1, min(limit - 1, math.floor(limit * backoff)))


class AIMDBatcher(BatchController):
    """Additive increase, multiplicative decrease (Clipper §4.3.1)."""

    name = "aimd"

    def update_batch_size(self, batch_size: int, latency_s: float, target_s: float) -> int:
        self.batch_size = aimd_step(self.batch_size, batch_size, latency_s, target_s,
                                    self.cfg.max_size)
        return self.batch_size


def pinball_loss(x: np.ndarray, y: np.ndarray, alpha: float, beta: float, q: float) -> float:
    """The quantile (pinball) loss of the line ``y = alpha * x + beta`` at quantile ``q``."""
    r = y - (alpha * x + beta)
    return float(np.sum(np.maximum(q * r, (q - 1) * r)))


def fit_quantile_line(x: np.ndarray, y: np.ndarray, q: float) -> tuple[float, float]:
    """Exact linear quantile regression ``y ~ alpha * x + beta`` at quantile ``q``.

    Quantile regression is a linear programme, and a linear programme's optimum lies on a
    vertex: with two parameters, a line through two of the points (Koenker & Bassett,
    1978). So we try every line through two points with distinct x and keep the one of
    least pinball loss: O(n^3) work, about a millisecond for the 64-sample window we keep,
    and exact (tests check it against scikit-learn's ``QuantileRegressor``). clipper-v0
    sends its samples to a separate optimiser process instead (``quantile_estimator``).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    i, j = np.triu_indices(len(x), 1)
    keep = x[i] != x[j]
    if not keep.any():
        raise ValueError("quantile regression needs samples at two or more batch sizes")
    i, j = i[keep], j[keep]
    alphas = (y[j] - y[i]) / (x[j] - x[i])
    betas = y[i] - alphas * x[i]
    r = y[None, :] - (alphas[:, None] * x[None, :] + betas[:, None])
    losses = np.maximum(q * r, (q - 1) * r).sum(axis=1)
    best = int(np.argmin(losses))
    return float(alphas[best]), float(betas[best])


class QuantileRegressionBatcher(BatchController):
    """Fit the ``quantile`` of batch latency vs size; take the largest size that fits.

    As clipper-v0's ``LearnedBatcher``, it explores with AIMD until it holds ``warmup``
    samples. Unlike it, it keeps refitting on a sliding window of the last 64 batches, so
    it follows a model that slows down; when the fit has no positive slope (latency flat
    in batch size over the sizes seen) or predicts that not even a batch of one fits, it
    steps as AIMD does instead of trusting the line. The paper fits the p99; a window of
    64 samples cannot estimate a p99 (it is the window's maximum), so our default
    quantile is 0.95 (``BatchingConfig.quantile``).
    """

    name = "quantile"

    def __init__(self, cfg: BatchingConfig, window: int = 64, warmup: int = 16,
                 refit_every: int = 16):
        super().__init__(cfg)
        self.samples: deque[tuple[int, float]] = deque(maxlen=window)
        self.warmup, self.refit_every = warmup, refit_every
        self.alpha = self.beta = float("nan")
        self._since_fit = 0

    def update_batch_size(self, batch_size: int, latency_s: float, target_s: float) -> int:
        self.samples.append((batch_size, latency_s))
        self._since_fit += 1
        xs = {b for b, _ in self.samples}
        if len(self.samples) < self.warmup or len(xs) < 2:
            self.batch_size = aimd_step(self.batch_size, batch_size, latency_s, target_s,
                                        self.cfg.max_size)
            return self.batch_size
        if self._since_fit >= self.refit_every or math.isnan(self.alpha):
            self._since_fit = 0
            x, y = np.array(self.samples, dtype=np.float64).T
            self.alpha, self.beta = fit_quantile_line(x, y, self.cfg.quantile)
        if latency_s >= target_s or self.alpha <= 0 or self.alpha + self.beta >= target_s:
            # over the target (the fit lags a sudden slow-down: back off at once), or
            # flat in batch size, or not even one query fits the target by the fit: the
            # line cannot pick a size, so step as AIMD does (choosing 1 here would shrink
            # throughput exactly when the queue is growing)
            self.batch_size = aimd_step(self.batch_size, batch_size, latency_s, target_s,
                                        self.cfg.max_size)
        else:
            best = math.floor((target_s - self.beta) / self.alpha)
            # never jump far past the largest size measured: the line is a local fit
            ceiling = max(xs) + 2
            self.batch_size = int(min(self.cfg.max_size, ceiling, max(1, best)))
        return self.batch_size

    def state(self) -> dict[str, float]:
        return {"batch_size": float(self.batch_size), "alpha_s": self.alpha,
                "beta_s": self.beta}


CONTROLLERS: dict[str, type[BatchController]] = {
    "static": StaticBatcher, "aimd": AIMDBatcher, "quantile": QuantileRegressionBatcher}


def make_controller(cfg: BatchingConfig) -> BatchController:
    """A fresh controller for one replica (each replica learns its own, as in Clipper)."""
    return CONTROLLERS[cfg.policy](cfg)
