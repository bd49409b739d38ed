"""What travels between nodes: a meta header plus packed key and value arrays.

ps-lite sends every request as a ``Meta`` (``include/ps/internal/message.h``: command,
push/pull flags, sender, timestamp, data types) followed by data frames holding the
keys and the values as raw arrays (``src/van.cc`` ``PackMeta``; the frames are sent by
``ZMQVan::SendMsg`` in ``src/zmq_van.h``). We do the same with
:mod:`common.wire`: the JSON header is the meta, and the arrays are ``keys`` (sorted,
unique ``uint64``) and ``vals`` (``float32``, one row of ``val_len`` numbers per key).
A push of a million keys is one message per server, never one message per key.

Errors come back in two ways. A request that is malformed (bad bytes, unsorted keys,
keys outside the key space, wrong value shape) is a *client bug*: the server aborts the
call with gRPC ``INVALID_ARGUMENT`` and a text naming what was expected and what came.
Protocol signals that the client must act on travel *in band*, as ``{"code": ...}`` in
the reply's meta:

* ``STALE``: the request was routed with an old ring (epoch); refresh it and resend;
* ``RETRY``: the server could not replicate right now; resend later (never acked);
* ``CACHE_MISS``: a key-caching signature the server does not hold; resend the keys;
* ``NOT_MASTER``: the server does not own these ranges in its ring.
"""

from __future__ import annotations

import operator
from typing import Any

import grpc
import numpy as np

from common import wire

KEY_DTYPE = np.dtype(np.uint64)
VAL_DTYPE = np.dtype(np.float32)

OK, STALE, RETRY, CACHE_MISS, NOT_MASTER = "OK", "STALE", "RETRY", "CACHE_MISS", "NOT_MASTER"
NOT_HELD = "NOT_HELD"  # a snapshot of ranges the server does not hold complete

SERVICE = "minips.Server"
SCHEDULER_SERVICE = "minips.Scheduler"


SERVER_BUG = "[INTERNAL] an exception in server"  # gRPC INTERNAL details: fail, never resend


def server_bug(exc: grpc.RpcError) -> str | None:
    """The details of a gRPC error that is a server's exception (``KVServer.guard``),
    else None: gRPC itself may say INTERNAL for a broken stream, which is resent."""
    details = exc.details() or ""
    return details if exc.code() == grpc.StatusCode.INTERNAL and \
        details.startswith(SERVER_BUG) else None


class PeerBug(RuntimeError):
    """A peer server answered a replication RPC with ``SERVER_BUG``: passed on as it is."""


class PSError(RuntimeError):
    """A request the system refused; ``code`` is ``INVALID`` or one of the in-band codes."""

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code


def encode(meta: dict[str, Any], keys: np.ndarray | None = None,
           vals: np.ndarray | None = None, extra: list[np.ndarray] = ()) -> bytes:
    """Pack a message: meta header, then the keys and values arrays if given."""
    arrays: list[np.ndarray] = []
    if keys is not None:
        arrays.append(np.ascontiguousarray(keys, dtype=KEY_DTYPE))
        meta = {**meta, "has_keys": True}
    if vals is not None:
        arrays.append(np.ascontiguousarray(vals))
        meta = {**meta, "has_vals": True}
    arrays.extend(extra)
    return wire.pack(meta, arrays)


def decode(buf: bytes) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None,
                                 list[np.ndarray]]:
    """Unpack a message into (meta, keys, vals, extra arrays); raises :class:`PSError`."""
    try:
        meta, arrays = wire.unpack(buf)
    except wire.WireError as e:
        raise PSError("INVALID", f"malformed message: {e}") from None
    keys = arrays.pop(0) if meta.get("has_keys") and arrays else None
    vals = arrays.pop(0) if meta.get("has_vals") and arrays else None
    if meta.get("has_keys") and keys is None:
        raise PSError("INVALID", "meta says the message has keys but it carries no arrays")
    return meta, keys, vals, arrays


def check_keys(keys: np.ndarray, key_max: int, where: str = "request") -> None:
    """Keys must be a 1-D uint64 array, strictly increasing, inside ``[0, key_max)``.

    ps-lite's KVPairs carry the same contract ("keys must be unique and sorted in an
    increasing order", ``kv_app.h``); we check it on both sides so that a bad request
    fails with a reason instead of corrupting a server.
    """
    if keys.dtype != KEY_DTYPE or keys.ndim != 1:
        raise PSError("INVALID", f"{where}: keys must be a 1-D uint64 array, "
                                 f"got {keys.dtype} with shape {keys.shape}")
    if keys.size and int(keys[-1]) >= key_max:
        bad = keys[keys >= np.uint64(key_max)][0]
        raise PSError("INVALID", f"{where}: unknown key {int(bad)}: outside the key space "
                                 f"[0, {key_max})")
    if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        i = int(np.argmin(keys[1:] > keys[:-1]))
        raise PSError("INVALID", f"{where}: keys must be sorted and unique, but key[{i}]="
                                 f"{int(keys[i])} >= key[{i + 1}]={int(keys[i + 1])}")


def check_range(key_range: tuple[int, int] | None, keys: np.ndarray | None, key_max: int,
                where: str = "request") -> list[tuple[int, int]]:
    """A request's key range (default: the whole key space) as ``[(begin, end)]``.
    Checked on the worker: an empty range would be sliced into no message at all, so the
    request would never finish, and keys outside it would be cut away without a word."""
    if key_range is None:
        return [(0, key_max)]
    try:
        b, e = (int(x) for x in key_range)
    except (TypeError, ValueError):
        raise PSError("INVALID", f"{where}: key_range must be (begin, end), got "
                                 f"{key_range!r}") from None
    if not 0 <= b < e <= key_max:
        raise PSError("INVALID", f"{where}: key_range [{b}, {e}) is empty or outside the "
                                 f"key space [0, {key_max})")
    if keys is not None and keys.size and not (b <= int(keys[0]) and int(keys[-1]) < e):
        raise PSError("INVALID", f"{where}: keys {int(keys[0])}..{int(keys[-1])} lie "
                                 f"outside key_range [{b}, {e})")
    return [(b, e)]


def check_vals(vals: np.ndarray, n_keys: int, val_len: int, where: str = "push") -> np.ndarray:
    """Values are ``float32`` with ``val_len`` numbers per key; returns them as (n, val_len)."""
    if vals is None:
        raise PSError("INVALID", f"{where}: no values were sent for {n_keys} keys")
    if vals.dtype != VAL_DTYPE:
        raise PSError("INVALID", f"{where}: values must be float32, got {vals.dtype}")
    if vals.size != n_keys * val_len:
        raise PSError("INVALID", f"{where}: {n_keys} keys x {val_len} values per key need "
                                 f"{n_keys * val_len} values, got {vals.size}")
    return vals.reshape(n_keys, val_len)


def check_copy(keys: np.ndarray | None, vals: np.ndarray | None, extra: list[np.ndarray],
               key_max: int, val_len: int, where: str) -> None:
    """A copy between servers (a master's forward to its replica, a range sync) carries
    keys, values and optimiser state of matching sizes. Checked before any of it is
    installed, so that a malformed copy is refused whole instead of half applied."""
    if keys is None:
        raise PSError("INVALID", f"{where}: a copy needs keys")
    check_keys(keys, key_max, where)
    check_vals(vals, keys.size, val_len, where)
    if not extra:
        raise PSError("INVALID", f"{where}: a copy needs the optimiser state array")
    check_vals(extra[0], keys.size, val_len, f"{where} (optimiser state)")


def reuse_large_buffers() -> bool:
    """Keep freed multi-megabyte buffers in this process instead of returning them.

    glibc serves allocations above 128 KiB-32 MiB with a fresh ``mmap`` and unmaps them on
    ``free``, so every 12 MB push message is page-faulted into existence again: on our VM
    that cost more than sending it (measured in the throughput benchmark). Raising the
    mmap and trim thresholds lets the allocator reuse the pages. ps-lite avoids the copy
    altogether with zero-copy ``SArray`` buffers handed to ZeroMQ.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and
                libc.mallopt(m_trim_threshold, 1 << 30))


def reply(code: str = OK, message: str = "", **meta: Any) -> dict[str, Any]:
    """The meta of a reply: ``code`` plus anything else."""
    return {"code": code, "message": message, **meta} if message else {"code": code, **meta}


def as_keys(keys: Any, key_max: int, op: str) -> np.ndarray:
    """A caller's keys as the sorted unique uint64 array the wire carries (ints of
    another type are converted; an empty list is no keys), or an INVALID error."""
    given = keys
    keys = np.ascontiguousarray(keys)
    if keys.dtype.kind in "fO" and isinstance(given, (list, tuple)) and given and \
            all(type(k) is int for k in given):
        # numpy makes [0, 2**64 - 1] float64 (no signed type holds both): take the
        # Python ints as they are
        if min(given) < 0 or max(given) >= 1 << 64:
            raise PSError("INVALID", f"{op}: keys must be integers in [0, 2**64), got "
                                     f"{min(given)}..{max(given)}")
        keys = np.array(given, dtype=KEY_DTYPE)
    if keys.size == 0 and keys.dtype != KEY_DTYPE:  # pull([]): a float64 list
        keys = keys.astype(KEY_DTYPE).reshape(0)
    if keys.dtype != KEY_DTYPE:
        if keys.dtype.kind not in "iu" or (keys.size and keys.min() < 0):
            raise PSError("INVALID", f"{op}: keys must be non-negative integers, got dtype "
                                     f"{keys.dtype}")
        keys = keys.astype(KEY_DTYPE)
    check_keys(keys, key_max, op)
    return keys


def as_clock(value: Any, what: str, op: str) -> int | None:
    """A caller's clock (``clock``, ``wait``) as an int, or None, or an INVALID error.

    Checked before the request is queued: a numpy integer cannot be written into the
    JSON header, and failing there would leave the push queued for ever with every later
    push of the worker behind it; a NaN compares as neither older nor newer than any
    clock, so the servers would acknowledge every later push and apply none."""
    if value is None:
        return None
    try:
        c = int(operator.index(value))
    except TypeError:
        raise PSError("INVALID", f"{op}: {what} must be an integer clock, got "
                                 f"{value!r}") from None
    if what == "clock" and c < 0:  # below every clock a range holds: taken for a resend
        raise PSError("INVALID", f"{op}: clock must be >= 0, got {c} (a push at a "
                                 f"negative clock would be dropped as a resend)")
    return c


def check_clocks(meta: dict[str, Any], where: str) -> None:
    """A request's clocks must be integers or absent (the server's side of
    :func:`as_clock`: a raw client can send any JSON)."""
    for what in ("clock", "wait", "push_wait"):
        c = meta.get(what)
        if c is not None and type(c) is not int:
            raise PSError("INVALID", f"{where}: {what} must be an integer clock or null, "
                                     f"got {c!r}")
        if what == "clock" and c is not None and c < 0:  # acknowledged, never applied
            raise PSError("INVALID", f"{where}: clock must be >= 0, got {c}")


def as_vals(vals: Any, n: int, val_len: int) -> np.ndarray:
    """A caller's values as (n, val_len) float32: given so, or n * val_len of them flat
    (ps-lite's ``SArray<Val>``); another 2-D shape of the right size (a transpose) is a
    caller's bug, refused rather than reshaped into the wrong keys."""
    if vals is None:
        raise PSError("INVALID", f"push: no values were given for {n} keys")
    arr = np.asarray(vals)
    if arr.ndim > 1 and arr.shape != (n, val_len):
        raise PSError("INVALID", f"push: values of shape {arr.shape} for {n} keys x {val_len} "
                                 f"values per key: give ({n}, {val_len}), or {n * val_len} "
                                 f"flat")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, VAL_DTYPE)
    if arr.dtype != VAL_DTYPE and arr.dtype.kind == "f" and \
            not np.isfinite(out).all() and np.isfinite(arr).all():
        raise PSError("INVALID", f"push: values up to {np.abs(arr).max():.3g} overflow "
                                 f"float32, the servers' type")
    return check_vals(out, n, val_len)
