"""The applications a worker can run: each is a data-parallel step on one data shard.

An app exposes ``key_max`` (its key space), ``init_values()`` (what every worker pushes
before training, the first to arrive kept; or None), ``keys(shard, step)`` (the sorted
keys a step reads and writes), ``step(shard, step, keys, w)`` (gradients and loss from
the pulled values ``w``), ``filters()`` (worker-side filters) and ``evaluate(keys,
vals)`` (objective or accuracy of a full model, for the monitor). :func:`describe`
gives an app's key space and server-side updater without building its data.
"""

from __future__ import annotations

from typing import Any


def make_app(spec: dict[str, Any], num_shards: int, monitor: bool = False) -> Any:
    """Build the app named by ``spec["name"]`` (``sparse_lr``, ``mlp`` or ``count``);
    ``monitor=True`` builds only what :meth:`evaluate` needs."""
    name = spec.get("name")
    if name == "sparse_lr":
        from .sparse_lr import SparseLR

        return SparseLR(spec, num_shards)
    if name == "mlp":
        from .mlp import MLP

        return MLP(spec, num_shards, monitor=monitor)
    if name == "count":
        from .count import Count

        return Count(spec, num_shards)
    raise ValueError(f"unknown app {name!r}; choose from sparse_lr, mlp, count")


# the user-defined filters (paper section 3.6) the sparse LR app can put on its pushes
SPARSE_LR_FILTERS = ("kkt", "sigmod", "key_caching", "compress")
SPARSE_LR_LAM = 5e-3  # its L1 strength unless the spec says otherwise


def describe(spec: dict[str, Any]) -> dict[str, Any]:
    """The app's key space and server-side updater, without building its data (the
    launcher needs them for the cluster config before any worker starts)."""
    name = spec.get("name")
    if name == "sparse_lr":
        unknown = sorted(set(spec.get("filters", [])) - set(SPARSE_LR_FILTERS))
        if unknown:  # an unknown name would be ignored by every worker, without a word
            raise ValueError(f"unknown filter(s) {unknown}; sparse_lr takes "
                             f"{', '.join(SPARSE_LR_FILTERS)}")
        lam = float(spec.get("lam", SPARSE_LR_LAM))
        return {"key_max": int(spec.get("features", 1 << 22)),
                "updater": {"name": "l1prox", "lr": float(spec.get("lr", 0.1)),
                            "lam": lam, "adagrad": True}}
    if name == "mlp":
        from .mlp import param_count

        return {"key_max": param_count(int(spec.get("hidden", 64))),
                "updater": {"name": "sgd", "lr": float(spec.get("lr", 0.25))}}
    if name == "count":
        from .count import tally_size

        shards, steps = tally_size(spec)
        return {"key_max": shards * steps, "updater": {"name": "sum"}}
    raise ValueError(f"unknown app {name!r}; choose from sparse_lr, mlp, count")
