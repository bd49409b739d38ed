"""Checkpoints of server state, written atomically. These are ours: the paper relies on
live replication (section 4.4) and takes no snapshots.

Each server writes the ranges it masters (keys, values, optimiser state, and every
worker's vector clock on them) to ``<dir>/<server>.<generation>.npz`` through a temporary
file that is fsynced and then renamed, so a reader sees the old file or the new one,
never half of one. The caller then writes ``manifest.json`` the same way, last, naming
the new generation's files; only then are older generations deleted. A directory
without a manifest is an unfinished checkpoint, and a checkpoint interrupted half-way
through rewriting a directory leaves the previous manifest, which still names only the
previous generation's files: a reader never mixes two checkpoints.

Each range is captured under its server's lock, so each is internally consistent, and
its clocks say exactly which pushes it contains. Every server saves its ranges in one
ring, the one the manifest names (a server not yet in it, or still waiting for ranges it
takes over, is asked again), and the manifest is written only if those ranges cover the
whole key space. Across servers a checkpoint is a
consistent cut when no push is in flight (the launcher takes it at the end of a run; a
BSP job can take it between clocks); otherwise a restore followed by the workers'
resends converges anyway, because the clocks drop what the checkpoint already holds.

A restored server (``--restore DIR``) loads every file of the manifest and keeps the
keys that fall in the ranges it holds in the new ring, which may differ from the ring
that wrote the checkpoint (a different number of servers).
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np

from common import rpc
from common.trace import fsync_dir, write_json_atomic

from . import message as M
from .ring import intersect, merge_ranges, positions, subtract

if TYPE_CHECKING:
    from .server import KVServer

MANIFEST = "manifest.json"


def _atomic_npz(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def save_server(ckpt_dir: str | os.PathLike, server: KVServer, generation: int = 0) -> Path:
    """Write the ranges ``server`` masters (call under the server's lock)."""
    ranges = server.ring.ranges_of(server.name, "master")
    parts = [server.store.range(b, e) for b, e in ranges]
    k = server.config["val_len"]
    keys = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, M.KEY_DTYPE)
    vals = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), M.VAL_DTYPE)
    state = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, k), M.VAL_DTYPE)
    clocks: dict[str, list] = {}
    for b, e in ranges:
        for n, segs in server.clocks.export(b, e).items():
            clocks.setdefault(n, []).extend(segs)
    meta = {"server": server.name, "epoch": server.epoch, "ranges": ranges,
            "clocks": {n: [[str(b), str(e), t] for b, e, t in s] for n, s in clocks.items()}}
    info = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return _atomic_npz(Path(ckpt_dir) / f"{server.name}.{generation}.npz", keys=keys,
                       vals=vals, state=state, meta=info)


def checkpoint(ring_info: dict, ckpt_dir: str | os.PathLike, timeout: float = 30.0,
               status: Callable[[], dict] | None = None) -> Path:
    """Ask every server of the ring to save a new generation, write the manifest (last,
    atomically), then delete the files of older generations.

    The manifest is written only when every server saved its master ranges *in the ring
    of* ``ring_info`` and those ranges cover the whole key space: a server that has not
    yet moved to that ring, or is still waiting for the copies of ranges it takes over,
    would otherwise save the old ring's ranges, and the ranges changing hands would be in
    no file of a checkpoint that looks finished. Such a server answers RETRY; so does a
    ring that changes again during the round (a server dies or joins). Then, if
    ``status`` (the scheduler's ``Status``) is given, the round is asked again for the
    ring it names now, until ``timeout``."""
    d = Path(ckpt_dir)
    old = json.loads((d / MANIFEST).read_text()) if (d / MANIFEST).exists() else {}
    generation = int(old.get("generation", -1)) + 1
    t_end, asked = time.monotonic() + timeout, set()
    while True:
        asked |= set(ring_info["servers"])
        files, why = _save_round(ring_info, d, generation, max(1.0, t_end - time.monotonic()),
                                 status)
        if why is None:
            break
        if status is None or time.monotonic() > t_end:
            raise RuntimeError(f"no checkpoint of ring {ring_info['epoch']}: {why}")
        time.sleep(0.05)
        ring_info = status()
    path = write_json_atomic(d / MANIFEST, {"epoch": ring_info["epoch"], "files": files,
                                            "servers": ring_info["servers"],
                                            "key_max": ring_info["ring"]["key_max"],
                                            "generation": generation}, durable=True)
    # only our own older files: the previous manifest's, and generations of ring
    # servers' files that a torn checkpoint (or a round asked again) left (the directory
    # may hold other things)
    ours = set(old.get("files", [])) | {
        f.name for f in d.glob("*.*.npz")
        if f.name.split(".")[0] in asked | set(old.get("servers", []))}
    for name in ours - set(files):
        (d / name).unlink(missing_ok=True)
    return path


def _save_round(ring_info: dict, d: Path, generation: int, timeout: float,
                status: Callable[[], dict] | None = None) -> tuple[list[str], str | None]:
    """One request to every server of the ring, all at once: (the files, why the round
    failed or None). While they save, the ring is watched: a hung server is dropped from
    it after a heartbeat timeout, and waiting out the whole budget for its answer would
    leave no time to save the ring that replaced it."""
    calls = {}
    for name in ring_info["servers"]:
        ch = rpc.channel(ring_info["addrs"][name])
        calls[name] = (ch, rpc.method(ch, M.SERVICE, "Control").future(
            M.encode({"checkpoint": str(d), "generation": generation,
                      "epoch": ring_info["epoch"]}), timeout=timeout))
    try:
        while status is not None and not all(f.done() for _, f in calls.values()):
            time.sleep(0.1)
            if status()["epoch"] != ring_info["epoch"]:
                return [], f"the ring changed from epoch {ring_info['epoch']} meanwhile"
        files, saved = [], []
        for name, (_, fut) in calls.items():
            try:
                out = fut.result()
            except grpc.RpcError as e:
                if M.server_bug(e):  # an exception in the server: asking again will not help
                    raise RuntimeError(f"server {name} did not checkpoint: "
                                       f"{e.details()}") from None
                return files, f"server {name}: {e.code().name}"  # died: the ring will change
            reply = M.decode(out)[0]
            if reply.get("code") == M.RETRY:
                return files, f"server {name}: {reply.get('message')}"
            if reply.get("code") != M.OK or "file" not in reply:
                raise RuntimeError(f"server {name} did not checkpoint: {reply.get('code')} "
                                   f"{reply.get('message', reply)}")
            files.append(Path(reply["file"]).name)
            saved += [(int(b), int(e)) for b, e in reply["ranges"]]
    finally:
        for ch, fut in calls.values():
            fut.cancel()
            ch.close()
    gap = subtract([(0, ring_info["ring"]["key_max"])], merge_ranges(saved))
    return files, (f"the saved ranges miss {gap[:3]}" if gap else None)


def load(ckpt_dir: str | os.PathLike) -> list[dict]:
    """The files of a finished checkpoint (raises if the manifest is missing)."""
    d = Path(ckpt_dir)
    if not (d / MANIFEST).exists():
        raise FileNotFoundError(f"{d} has no {MANIFEST}: not a finished checkpoint")
    out = []
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        for name in manifest["files"]:
            with np.load(d / name) as z:
                meta = _checked_meta(json.loads(bytes(z["meta"]).decode()), name)
                out.append({"keys": z["keys"], "vals": z["vals"], "state": z["state"],
                            "meta": meta})
        _check_coverage(out, manifest)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        # a part cut short by a copy, a manifest edited by hand: one line, not numpy's
        raise ValueError(f"{d} is not a readable checkpoint: {type(e).__name__}: "
                         f"{e}") from None
    return out


def _checked_meta(meta: dict, name: str) -> dict:
    """A part's meta with the fields restoring reads, each of the right shape."""
    ranges = [(int(b), int(e)) for b, e in meta["ranges"]]
    for node, segs in meta["clocks"].items():
        for seg in segs:
            if len(seg) != 3 or type(seg[2]) is not int:
                raise ValueError(f"{name}: clock segment {seg!r} of {node} is not "
                                 f"[begin, end, clock]")
            int(seg[0]), int(seg[1])
    return {**meta, "ranges": ranges}


def _check_coverage(parts: list[dict], manifest: dict) -> None:
    """The files must hold one contiguous key space from 0 (to ``key_max``, where the
    manifest names it): a file the manifest lost would leave ranges with no values and
    no clocks, and a job restored from the rest would wait for ever on them."""
    have = merge_ranges([r for p in parts for r in p["meta"]["ranges"]])
    end = manifest.get("key_max", have[-1][1] if have else 0)
    gap = subtract([(0, end)], have)
    if not have or gap:
        raise ValueError(f"its files do not cover the key space: missing {gap[:3] or 'all'} "
                         f"(the manifest names {len(manifest['files'])} file(s))")


def check_fits(parts: list[dict], ckpt_dir: str | os.PathLike, key_max: int,
               val_len: int) -> dict[str, int]:
    """Refuse a checkpoint this job cannot hold whole (keys outside its key space would be
    dropped, values of another length broadcast), and return each sender's last clock
    in it: a client of that name goes on after it, or its pushes would be dropped as
    resends of ones the checkpoint already holds."""
    past, top = 0, 0
    for part in parts:
        keys, vals = part["keys"], part["vals"]
        if vals.ndim != 2 or vals.shape[1] != val_len:
            raise ValueError(f"{ckpt_dir}: the checkpoint holds {vals.shape[-1]} values per "
                             f"key, this job {val_len} (val_len)")
        if keys.size and int(keys[-1]) >= key_max:  # keys are sorted
            past += int(keys.size - positions(keys, [key_max])[0])
            top = max(top, int(keys[-1]))
    if past:
        raise ValueError(f"{ckpt_dir}: {past} stored keys lie at or past this job's key "
                         f"space ({key_max} keys; the checkpoint goes up to key {top}): "
                         f"restoring would drop them")
    last: dict[str, int] = {}
    for part in parts:
        for node, segs in part["meta"]["clocks"].items():
            for _, _, t in segs:
                last[node] = max(last.get(node, -1), int(t))
    return last


def restore_ranges(ckpt_dir: str | os.PathLike, server: KVServer) -> int:
    """Load the part of a checkpoint that ``server`` holds in its ring; returns keys."""
    held = server.ring.ranges_of(server.name, "any")
    n = 0
    parts = load(ckpt_dir)
    check_fits(parts, ckpt_dir, server.config["key_max"], server.config["val_len"])
    for part in parts:
        for b, e in held:
            lo, hi = positions(part["keys"], [b, e])
            if hi > lo:
                server.store.assign(part["keys"][lo:hi], part["vals"][lo:hi],
                                    part["state"][lo:hi])
                n += int(hi - lo)
        for node, segs in part["meta"]["clocks"].items():
            c = server.clocks.of(node)
            for b, e, t in segs:
                for lo, hi in intersect([(int(b), int(e))], held):
                    c.set(lo, hi, t)
    return n


def resume_clock(ckpt_dir: str | os.PathLike, steps: int, workers: int | None = None,
                 key_max: int | None = None) -> int:
    """The clock a job restored from ``ckpt_dir`` goes on from (``casebook ps launch
    --restore``). Every worker must have finished the same clock on every range (a
    checkpoint at the end of a job, or between BSP clocks): the servers restore each
    worker's range clocks, so a worker going on from an earlier clock would have its
    pushes dropped as resends, and one from a later clock would leave the others' pulls
    waiting for pushes that never come. For the same reason the job must have the
    checkpoint's workers (``workers``) and no key the checkpoint has no clock for
    (``key_max``, the job's key space)."""
    parts = load(ckpt_dir)
    per: dict[str, set[int]] = {}
    for part in parts:
        for node, segs in part["meta"]["clocks"].items():
            if node.startswith("w"):
                per.setdefault(node, set()).update(t for _, _, t in segs)
    clocks = set().union(*per.values()) if per else set()
    if not clocks:
        raise ValueError(f"{ckpt_dir}: holds no worker's clock (its pushes had none, or it "
                         f"has no worker's pushes): nothing says where the workers stopped, "
                         f"so a job cannot go on from it")
    if len(clocks) != 1:
        at = ", ".join(f"{n} at {'/'.join(map(str, sorted(c)))}" for n, c in sorted(per.items()))
        raise ValueError(
            f"{ckpt_dir}: the workers' clocks in the checkpoint differ ({at or 'none'}); "
            f"resuming needs one clock for all: a checkpoint written at the end of a job "
            f"(--checkpoint) or between BSP clocks, by a job in which no worker died (a dead "
            f"worker's shard is finished by another on that worker's own clocks, and "
            f"resuming would need each shard's progress, which is not kept)")
    if workers is not None and set(per) != {f"w{i}" for i in range(workers)}:
        raise ValueError(f"{ckpt_dir}: written by workers {sorted(per)}; this job has "
                         f"{workers}: resume with --workers {len(per)} (a new worker would "
                         f"have no clock, and the others would wait for it for ever)")
    end = max((e for p in parts for _, e in p["meta"]["ranges"]), default=0)
    if key_max is not None and key_max > end:
        raise ValueError(f"{ckpt_dir}: holds the key space [0, {end}); this job's is "
                         f"[0, {key_max}) (another app or model size?): the keys past it "
                         f"would have no clocks, and pulls of them would wait for ever")
    start = clocks.pop() + 1
    if steps <= start:
        raise ValueError(f"the checkpoint already holds {start} steps; ask for more than "
                         f"that (--steps {steps})")
    return start
