"""Counting pushes: the exactly-once audit behind the fault tests and the fault benchmark.

Every push of worker ``r`` at clock ``c`` adds 1.0 to ``per_push`` *audit keys* that no
other push touches, spread over the audit region (and so over every server of the
ring): key ``base + (r * clocks + c) + j * workers * clocks`` for ``j < per_push``. The
region is summed by the servers (:class:`.updaters.Sum`), whatever the model's
optimiser. After a run, the value of each audit key counts how many times its push was
applied, which makes the guarantees checkable:

* a push the worker saw acknowledged must read exactly 1 on all its keys;
* a push never acknowledged (its worker was killed) must read at most 1;
* anything else is a lost or a duplicated update.

The ``count`` app trains nothing: its steps push only audit keys (the counting test of
the issue: "every worker adds known increments, the final values equal the
acknowledged total"), and, if asked, a tally of minibatches (:class:`Count`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..message import KEY_DTYPE, VAL_DTYPE


def audit_size(cfg: dict[str, Any]) -> int:
    return cfg["workers"] * cfg["clocks"] * cfg["per_push"]


def audit_keys(cfg: dict[str, Any], rank: int, clock: int) -> np.ndarray:
    """The keys push (rank, clock) adds 1 to (empty past the audited clocks)."""
    w, c, s = cfg["workers"], cfg["clocks"], cfg["per_push"]
    if clock >= c or clock < 0:
        return np.zeros(0, KEY_DTYPE)
    first = cfg["base"] + rank * c + clock
    return (first + np.arange(s, dtype=np.int64) * (w * c)).astype(KEY_DTYPE)


def audit_check(cfg: dict[str, Any], keys: np.ndarray, vals: np.ndarray,
                acked: dict[int, list[int]], reported: set[int]) -> dict[str, int]:
    """Compare the audit region's values with what the workers saw acknowledged.

    ``acked[rank]`` lists the clocks whose pushes worker ``rank`` saw acknowledged;
    ``reported`` holds the ranks that lived to report (the others' pushes are all
    "unacknowledged" as far as anyone knows).
    """
    w, c, s = cfg["workers"], cfg["clocks"], cfg["per_push"]
    counts = np.zeros(audit_size(cfg), np.float64)
    off = keys.astype(np.int64) - cfg["base"]
    ok = (off >= 0) & (off < counts.size)
    counts[off[ok]] = vals.reshape(-1)[ok]
    # index (r * c + clock) + j * w * c  ->  grid [j, r * c + clock]
    grid = counts.reshape(s, w * c)
    per_push_min, per_push_max = grid.min(axis=0), grid.max(axis=0)
    out = {"acked": 0, "acked_lost": 0, "acked_duplicated": 0, "unacked_applied": 0,
           "unacked_duplicated": 0, "partial": 0}
    acked_mask = np.zeros(w * c, bool)
    for r, clocks in acked.items():
        idx = [r * c + k for k in clocks if 0 <= k < c]
        acked_mask[idx] = True
    out["acked"] = int(acked_mask.sum())
    out["acked_lost"] = int((per_push_min[acked_mask] < 1).sum())
    out["acked_duplicated"] = int((per_push_max[acked_mask] > 1).sum())
    un = ~acked_mask
    out["unacked_applied"] = int((per_push_max[un] >= 1).sum())
    out["unacked_duplicated"] = int((per_push_max[un] > 1).sum())
    out["partial"] = int(((per_push_min != per_push_max) & acked_mask).sum())
    bad = np.flatnonzero(((per_push_min < 1) | (per_push_max > 1)) & acked_mask)[:5]
    out["examples"] = [{"rank": int(i // c), "clock": int(i % c),
                        "counts": grid[:, i].tolist()} for i in bad]
    return out


class Count:
    """No model: each step pushes only its audit keys, and with ``tally`` one more.

    ``{"name": "count", "tally": {"shards": W, "steps": S}}`` gives every minibatch
    (shard, step) a key of its own, ``shard * S + step``, to which its step adds 1 (the
    servers sum it). The audit counts *pushes* by the worker and clock that sent them;
    the tally counts *minibatches*, whoever ran them, so it shows what happened to a dead
    worker's shard: every key must read at least 1 (no minibatch skipped), and more
    than 1 only where an heir redid a minibatch whose push was applied but not yet
    reported (worker.py: at least once).
    """

    def __init__(self, spec: dict[str, Any], num_shards: int):
        self.spec = spec
        self.tally = tally_size(spec)
        self.key_max = self.tally[0] * self.tally[1]

    def init_values(self):
        return None

    def filters(self) -> list:
        return []

    def keys(self, shard: int, step: int) -> np.ndarray:
        shards, steps = self.tally
        if shard < shards and step < steps:
            return np.array([shard * steps + step], KEY_DTYPE)
        return np.zeros(0, KEY_DTYPE)

    def step(self, shard: int, step: int, keys: np.ndarray, w: np.ndarray):
        return np.ones((keys.size, 1), VAL_DTYPE), 0.0

    def evaluate(self, keys: np.ndarray, vals: np.ndarray) -> dict[str, float]:
        return {"sum": float(vals.sum())}


def tally_size(spec: dict[str, Any]) -> tuple[int, int]:
    """(shards, steps) of the minibatch tally; (0, 0) without one."""
    t = spec.get("tally") or {}
    shards, steps = int(t.get("shards", 0)), int(t.get("steps", 0))
    if shards < 0 or steps < 0:
        raise ValueError(f"count's tally needs non-negative shards and steps, got {t}")
    return shards, steps
