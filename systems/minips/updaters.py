"""User-defined server updates: what a server does with the values a worker pushes.

In the paper (sections 3.2-3.3 and Algorithm 1) workers push *gradients* and servers run the
update ``w <- w - eta * g`` (or a proximal / adaptive variant) on the keys they own;
ps-lite exposes this as the server's request handle (``KVServer::set_request_handle``
in ``kv_app.h``; its default handle just adds the pushed values into the store).

An updater works in place on the rows of the pushed keys: ``w`` (values), ``s`` (one
slot of per-key state, e.g. AdaGrad's sum of squares) and ``g`` (what was pushed), all
``(n, val_len)`` float32. The server keeps ``s`` next to ``w`` and replicates both, so a
replica that takes over continues the same optimiser.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class Sum:
    """ps-lite's default handle: ``w += g`` (used by the counting tests and audits)."""

    name: str = "sum"

    def __call__(self, w: np.ndarray, s: np.ndarray, g: np.ndarray) -> None:
        w += g


@dataclass
class SGD:
    """Plain gradient step ``w -= lr * g`` (Algorithm 1 of the paper)."""

    lr: float = 0.1
    name: str = "sgd"

    def __call__(self, w: np.ndarray, s: np.ndarray, g: np.ndarray) -> None:
        w -= np.float32(self.lr) * g


@dataclass
class AdaGrad:
    """Per-coordinate step ``lr / sqrt(sum g^2)`` (Duchi et al. 2011). Our sparse LR uses
    this scaling where the paper's Algorithm 3 scales each coordinate by a diagonal
    second-order term (section 5.1)."""

    lr: float = 0.1
    eps: float = 1e-8
    name: str = "adagrad"

    def __call__(self, w: np.ndarray, s: np.ndarray, g: np.ndarray) -> None:
        s += g * g
        w -= np.float32(self.lr) * g / (np.sqrt(s) + np.float32(self.eps))


@dataclass
class L1Proximal:
    """Proximal gradient step for ``loss + lam * |w|_1`` (the paper's L1-regularised
    logistic regression, section 5.1): ``z = w - eta g``, then soft-threshold
    ``w = sign(z) max(|z| - eta lam, 0)``. The threshold is what creates exact zeros,
    which the KKT filter and the compressing filter then exploit. With ``adagrad`` the
    step ``eta = lr / sqrt(sum of g^2)`` is per coordinate (diagonal proximal AdaGrad,
    Duchi, Hazan & Singer, JMLR 2011, section 5.1); the paper's delayed block proximal
    gradient also scales each coordinate's step, we chose AdaGrad's scaling for it."""

    lr: float = 0.1
    lam: float = 1e-4
    adagrad: bool = True
    eps: float = 1e-8
    name: str = "l1prox"

    def __call__(self, w: np.ndarray, s: np.ndarray, g: np.ndarray) -> None:
        if self.adagrad:
            s += g * g
            eta = np.float32(self.lr) / (np.sqrt(s) + np.float32(self.eps))
        else:
            eta = np.float32(self.lr)
        z = w - eta * g
        w[...] = np.sign(z) * np.maximum(np.abs(z) - eta * np.float32(self.lam), 0)


UPDATERS = {"sum": Sum, "sgd": SGD, "adagrad": AdaGrad, "l1prox": L1Proximal}


def make(spec: dict[str, Any] | str) -> Any:
    """An updater from ``"sgd"`` or ``{"name": "sgd", "lr": 0.5}``."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in UPDATERS:
        raise ValueError(f"unknown updater {name!r}; choose from {sorted(UPDATERS)}")
    try:
        updater = UPDATERS[name](**spec)
    except TypeError as e:
        raise ValueError(f"bad parameters for updater {name!r}: {e}") from None
    # eps = 0 divides a zero gradient by a zero sum (NaN in the model, a run that looks
    # normal); a negative lr climbs the loss, a negative lam rewards weight
    for field, strict in (("lr", False), ("lam", False), ("eps", True)):
        v = getattr(updater, field, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v) or v < 0 or (strict and v == 0)):
            raise ValueError(f"updater {name!r}: {field} must be a finite number "
                             f"{'above' if strict else 'of at least'} 0, got {v!r}")
    return updater


def spec_of(updater: Any) -> dict[str, Any]:
    return asdict(updater)


@dataclass
class Regions:
    """Which updater applies where: ``[(begin, end, updater)]``, the rest gets ``default``.

    The paper lets applications share one server group through parameter namespaces
    (section 3); we use key ranges to give the audit keys (see :mod:`.apps.count`) a
    plain sum while the model's keys get the optimiser.
    """

    default: Any
    regions: list[tuple[int, int, Any]]

    def __post_init__(self) -> None:
        spans = sorted((b, e) for b, e, _ in self.regions)
        for (b1, e1), (b2, e2) in zip(spans, spans[1:], strict=False):
            if b2 < e1:  # a key in both would be updated twice by one push
                raise ValueError(f"update regions [{b1}, {e1}) and [{b2}, {e2}) overlap")

    def split(self, keys: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        """``(updater, boolean mask over keys)`` groups; masks cover every key once."""
        if not self.regions:
            return [(self.default, np.ones(keys.size, bool))]
        rest = np.ones(keys.size, bool)
        out = []
        for b, e, up in self.regions:
            m = keys >= np.uint64(b)
            if e < 1 << 64:  # a region up to 2**64 includes the last key, 2**64 - 1
                m &= keys < np.uint64(e)
            if m.any():
                out.append((up, m))
            rest &= ~m
        if rest.any():
            out.append((self.default, rest))
        return out
