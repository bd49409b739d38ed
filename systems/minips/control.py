"""A server's operator interface: fault injection, checkpoints, metrics and debug dumps.

The paper's server manager only keeps the servers' metadata (liveness, key-range
assignment; section 3), and ps-lite has no such RPC either, so this is ours. The
``Control`` RPC carries one request meta dict; each key asks for one thing:

* ``{"crash": POINT, "after": n}``: SIGKILL the server the n-th time it reaches POINT
  (one of :data:`CRASH_POINTS`, the places in the apply-then-replicate sequence where a
  crash loses something different); the fault tests and the fault benchmark use this.
  With ``"how": "raise"`` the server raises an exception there instead, once, as a bug
  in its own code would (what the request that met it gets back is in ``KVServer.guard``);
  ``"raise_always"`` raises every time, as a bug that stays in the code does;
* ``{"checkpoint": DIR, "generation": g, "epoch": e}``: write the mastered ranges of ring
  ``e`` atomically (:mod:`.checkpoint`); answered ``RETRY`` if this server cannot reach
  that ring with its master ranges in hand within a few seconds, ``FAILED`` with the
  reason if it cannot write there (a full disk, say);
* ``{"metrics": true}``: the node's counters (:func:`snapshot`);
* ``{"dump": [begin, end]}``: every stored key, value and clock of a range;
* ``{"debug": true}``: every worker's push and pull clock on the ranges it masters;
* ``{"stop": true}``: shut down cleanly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from . import message as M
from .checkpoint import save_server

if TYPE_CHECKING:
    from .server import KVServer

CRASH_POINTS = ("before_apply", "after_apply", "after_forward", "replica_after_apply")
# reached only while a server joins: an old master dies before it sends the changes made
# since the joiner's pre-copy (the joiner must then copy them from a surviving replica)
JOIN_CRASH_POINTS = ("before_catchup",)
# reached only when a whole copy of a range arrives (``Sync``: a ring change, or a broken
# master's resync), before the replica installs it
COPY_CRASH_POINTS = ("replica_sync",)
ALL_CRASH_POINTS = CRASH_POINTS + JOIN_CRASH_POINTS + COPY_CRASH_POINTS


def crash_point(node: KVServer, point: str) -> None:
    """Die here if a test asked for it (``node.crash[point]`` counts down to the kill),
    or raise, if it asked for a bug (``node.crash_how``)."""
    if point in node.crash:
        node.crash[point] -= 1
        if node.crash[point] <= 0:
            how = node.crash_how.get(point, "kill")
            if how.startswith("raise"):
                if how == "raise":  # once; "raise_always" stays armed
                    del node.crash[point], node.crash_how[point]
                raise RuntimeError(f"a bug injected at {point}")
            print(f"[{node.name}] crash injected at {point}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


async def control(node: KVServer, req: bytes) -> bytes:
    """Undecodable bytes are the server's guard's business (INVALID_ARGUMENT, as for
    every RPC); a well-formed request with unusable fields is answered in band, like an
    unknown crash point."""
    meta = M.decode(req)[0]
    bad = _malformed(meta)
    if bad:
        return M.encode(M.reply("INVALID", f"malformed Control request: {bad}"))
    out: dict[str, Any] = {"code": M.OK, "name": node.name, "epoch": node.epoch}
    if "crash" in meta:
        if meta["crash"] not in ALL_CRASH_POINTS:
            out = M.reply("INVALID", f"crash point must be one of {ALL_CRASH_POINTS}")
        else:
            node.crash[meta["crash"]] = int(meta.get("after", 1))
            node.crash_how[meta["crash"]] = meta.get("how", "kill")
    if meta.get("checkpoint"):
        why = await ready_for_checkpoint(node, meta.get("epoch"))
        async with node.lock:
            if not why and meta.get("epoch") not in (None, node.epoch):
                why = f"the ring moved on to {node.epoch} meanwhile"
            if why:
                return M.encode(M.reply(M.RETRY, why, epoch=node.epoch))
            try:
                path = save_server(meta["checkpoint"], node, int(meta.get("generation", 0)))
            except OSError as e:  # the disk, not a bug: say why, so nobody waits on it
                return M.encode(M.reply("FAILED", f"cannot save to {meta['checkpoint']}: "
                                                  f"{type(e).__name__}: {e}"))
            out["ranges"] = node.ring.ranges_of(node.name, "master") if node.ring else []
        out["file"] = str(path)
    if meta.get("metrics"):
        out["metrics"] = snapshot(node)
    if "dump" in meta:
        b, e = meta["dump"]
        k, v, s = node.store.range(int(b), int(e))
        return M.encode({**out, "clocks": node.clocks.export(int(b), int(e))}, k, v, [s])
    if meta.get("debug"):
        mr = node.ring.ranges_of(node.name, "master") if node.ring else []
        out["debug"] = {w: {"push": [node.clocks.of(w).min(b, e) for b, e in mr],
                            "pull": [node.pulled.of(w).min(b, e) for b, e in mr]}
                        for w in (node.gate.workers if node.gate else [])}
        out["debug"]["ranges"] = mr
    if meta.get("stop"):
        node.stopping.set()
    return M.encode(out)


async def ready_for_checkpoint(node: KVServer, epoch: int | None,
                               timeout: float = 5.0) -> str | None:
    """Why this server cannot save the ring ``epoch``'s master ranges now (None: it can).

    A server learns of a new ring a moment after the scheduler makes it, and a new master
    holds its ranges only once their copies came (``not_ready``); a file written before
    that would save the old ring's ranges, or an empty pre-copy, under a manifest that
    says the new ring, and the ranges changing hands would be in nobody's file. So the
    server first catches up to ``epoch`` and waits for its master ranges."""
    if epoch is None:  # an old-style request: save what this server masters now
        return None
    if int(epoch) > node.epoch:
        await node.refresh()
    t_end = time.monotonic() + timeout
    while node.repl.next_epoch is not None or node.ring is None:
        if time.monotonic() > t_end:
            return f"still moving to ring {node.repl.next_epoch}"
        await asyncio.sleep(0.005)
    if node.epoch != int(epoch):
        return f"this server is in ring {node.epoch}, not {epoch}"
    if not await node.wait_ready(node.ring.ranges_of(node.name, "master"), timeout):
        return f"master ranges still waiting for their copies: {node.repl.not_ready}"
    return None


def _malformed(meta: dict) -> str | None:
    """Why a Control request's fields cannot be used, or None (an operator's typo must
    get a reason back, not a Python traceback from inside the handler)."""
    for field in ("after", "generation", "epoch"):
        if field in meta and (not isinstance(meta[field], int) or isinstance(meta[field], bool)
                              or meta[field] < 0):
            return f"{field!r} must be a non-negative integer, got {meta[field]!r}"
    if "dump" in meta:
        d = meta["dump"]
        if not (isinstance(d, list) and len(d) == 2 and all(
                isinstance(x, (int, str)) and str(x).isdigit() for x in d)
                and int(d[0]) < int(d[1])):
            return f"'dump' must be [begin, end] with begin < end, got {d!r}"
    if meta.get("how", "kill") not in ("kill", "raise", "raise_always"):
        return f"'how' must be 'kill', 'raise' or 'raise_always', got {meta['how']!r}"
    if "checkpoint" in meta and not isinstance(meta["checkpoint"], str):
        return f"'checkpoint' must be a directory path, got {meta['checkpoint']!r}"
    return None


def snapshot(node: KVServer) -> dict[str, Any]:
    """The node's metrics plus the state a fault test wants to see at a glance."""
    snap = node.metrics.snapshot()
    snap.update(epoch=node.epoch, stored_keys=len(node.store) if node.store else 0,
                not_ready=node.repl.not_ready, broken=node.repl.broken,
                locked=node.lock.locked(), member=node.member,
                workers=node.gate.workers if node.gate else [],
                clock_segments=node.clocks.size() if node.clocks else 0,
                held_pulls=node.gate.held_pulls if node.gate else 0,
                held_pushes=node.gate.held_pushes if node.gate else 0,
                max_gap=node.gate.max_gap if node.gate else 0)
    return snap
