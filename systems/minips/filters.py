"""User-defined filters: send less, lose (almost) nothing (paper sections 3.6 and 4.2).

A filter transforms a message on the sender and, if needed, undoes it on the receiver.
The paper's examples, all here, each counting the bytes it saved:

* :class:`SignificantlyModified`: push only entries whose change since they were last
  sent exceeds a threshold; the rest accumulates locally and goes out once it matters
  (so nothing is lost, only delayed);
* :class:`KKT`: for L1-regularised logistic regression, a weight that is zero and whose
  gradient lies strictly inside ``[-lam, lam]`` stays zero after the proximal step
  (the KKT conditions), so its gradient need not be sent at all (the "KKT filter" of
  section 5.1; dmlc/parameter_server ``src/app/linear_method/darlin.h`` marks such
  coordinates inactive with a margin);
* :class:`Compress`: values as float16 and/or byte-shuffled zlib (a general-purpose
  compressor; the original used snappy, ``src/filter/compressing.h``); on pulls the
  server compresses its reply, which pays off once L1 has made most weights zero;
* :class:`KeyCaching`: a key list the receiver has seen before is sent as its hash
  (``src/filter/key_caching.h``); a pull and the push that follows it use the same keys,
  and data-parallel epochs revisit the same batches.

Worker-side filters run in :class:`FilterChain`: the value filters once per push, before
it is sliced (``KVWorker.push``), key caching and compression once per slice, i.e. per
server (``KVWorker._send_slice``); the server decodes with :func:`decode_request` and
:class:`KeyCache`, driven by the meta the worker set, so it needs no filter objects.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .message import VAL_DTYPE, PSError
from .store import KVStore

ENTRY_KEY_BYTES = 8


@dataclass
class FilterStats:
    """What one filter did: bytes and entries before and after it."""

    name: str
    bytes_in: int = 0
    bytes_out: int = 0
    entries_in: int = 0
    entries_out: int = 0

    @property
    def saved_bytes(self) -> int:
        return self.bytes_in - self.bytes_out

    def add(self, bin_: int, bout: int, ein: int = 0, eout: int = 0) -> None:
        self.bytes_in += bin_
        self.bytes_out += bout
        self.entries_in += ein
        self.entries_out += eout

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "saved_bytes": self.saved_bytes}


def key_signature(keys: np.ndarray) -> str:
    """A 128-bit hash of a key list (collisions are negligible at this width)."""
    return hashlib.blake2b(memoryview(keys).cast("B"), digest_size=16).hexdigest()


FP16_TOP = 15  # the largest |value| is scaled into [2**14, 2**15), under fp16's 65504
EXP_LIMIT = 300  # a codec_exp beyond this is no exponent any float32 could need
CODECS = {"fp16", "zlib", "fp16+zlib"}


def lossless(codec: str | None) -> str | None:
    """``codec`` without its lossy fp16 step (zlib alone, or nothing)."""
    return codec.replace("fp16+", "").replace("fp16", "") or None if codec else None


def safe_codec(codec: str | None, vals: np.ndarray) -> str | None:
    """``codec`` without its fp16 step when a value is inf or nan (the scale of
    :func:`fp16_exponent` needs a finite largest value; the message then goes as exact
    float32, zlib'd if asked)."""
    if codec and "fp16" in codec and vals.size and not np.isfinite(vals).all():
        return lossless(codec)
    return codec


def fp16_exponent(vals: np.ndarray) -> int:
    """The power of two that scales the message's largest |value| into
    ``[2**14, 2**15)`` before the cast to float16.

    float16 alone spans only 6.1e-5 to 65504 at full precision: a gradient of 1e-7
    would lose most of its digits, one of 2e-8 would arrive as 0, and one over 65504 as
    inf. Scaled per message by a power of two (exact, and undone exactly by the
    receiver; the loss scaling of mixed-precision training, Micikevicius et al., ICLR
    2018), every value within 2**28 of the largest keeps float16's 11 significant bits,
    a relative error of at most 2**-11; smaller ones are off by at most
    2**-39 x the largest.
    """
    m = float(np.abs(vals).max()) if vals.size else 0.0
    return FP16_TOP - math.frexp(m)[1] if m > 0 else 0


def compress_values(vals: np.ndarray, codec: str, exp: int = 0) -> np.ndarray:
    """``vals`` (float32) encoded by ``codec`` in {"fp16", "zlib", "fp16+zlib"}; fp16
    casts ``vals * 2**exp`` (:func:`fp16_exponent`)."""
    a = np.ascontiguousarray(vals)
    if "fp16" in codec:
        a = np.ldexp(a, exp).astype(np.float16)
    if "zlib" in codec:
        # byte shuffle (as blosc does): byte j of every number goes together, so the
        # exponent bytes of many similar numbers, or the zeros of exact zeros, line up
        width = a.dtype.itemsize
        planes = a.reshape(-1).view(np.uint8).reshape(-1, width).T
        a = np.frombuffer(zlib.compress(planes.tobytes(), 1), np.uint8)
    return a


def decompress_values(data: np.ndarray, codec: str, n: int, exp: int = 0) -> np.ndarray:
    """Undo :func:`compress_values` for ``n`` numbers; returns float32."""
    a = data
    if "zlib" in codec:
        width = 2 if "fp16" in codec else 4
        # inflated no further than the bytes expected (+1, to see more): a small message
        # of compressed zeros would otherwise make a gigabyte, on the server's event loop
        d = zlib.decompressobj()
        try:
            raw = d.decompress(np.ascontiguousarray(data).tobytes(), n * width + 1)
        except zlib.error as e:
            raise PSError("INVALID", f"zlib-compressed values do not decompress: {e}") from None
        if len(raw) != n * width or d.unconsumed_tail or not d.eof:
            raise PSError("INVALID", f"compressed values hold "
                                     f"{'more than ' if len(raw) > n * width else ''}"
                                     f"{min(len(raw), n * width)} bytes, or are cut short; "
                                     f"expected {n} x {width}")
        planes = np.frombuffer(raw, np.uint8).reshape(width, n)
        a = planes.T.copy().view(np.float16 if width == 2 else VAL_DTYPE).reshape(-1)
    a = a.astype(VAL_DTYPE) if a.dtype != VAL_DTYPE else a
    return np.ldexp(a, -exp).astype(VAL_DTYPE) if "fp16" in codec and exp else a


def encode_values(vals: np.ndarray, codec: str, meta: dict) -> np.ndarray:
    """``vals`` compressed by ``codec``, with what the receiver needs in ``meta``."""
    exp = fp16_exponent(vals) if "fp16" in codec else 0
    meta["codec"] = codec
    if exp:
        meta["codec_exp"] = exp
    return compress_values(vals, codec, exp)


def check_codec(codec: Any, where: str) -> str:
    """``codec`` if it is one we know, else an INVALID error (a raw client may send any)."""
    if codec not in CODECS:
        raise PSError("INVALID", f"{where} must be one of {sorted(CODECS)}, got {codec!r}")
    return codec


def decode_values(data: np.ndarray, meta: dict, n: int) -> np.ndarray:
    """Undo :func:`encode_values` (``meta`` is the sender's, so it is checked)."""
    codec = check_codec(meta["codec"], "codec")
    wire = np.uint8 if "zlib" in codec else np.float16
    if data.dtype != wire:
        raise PSError("INVALID", f"values under codec {codec!r} travel as "
                                 f"{np.dtype(wire).name}, got {data.dtype}")
    exp = meta.get("codec_exp", 0)
    if type(exp) is not int or abs(exp) > EXP_LIMIT:
        raise PSError("INVALID", f"codec_exp must be an integer power of two within "
                                 f"+-{EXP_LIMIT}, got {exp!r}")
    return decompress_values(data, codec, n, exp)


class KeyCache:
    """Receiver side of key caching: per sender, the key lists it sent, by signature
    (least recently used out first, bounded in bytes)."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes, self.bytes = max_bytes, 0
        self.lists: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def put(self, sender: str, sig: str, keys: np.ndarray) -> None:
        k = (sender, sig)
        if k in self.lists:
            self.lists.move_to_end(k)
            return
        self.lists[k] = keys.copy()
        self.bytes += keys.nbytes
        while self.bytes > self.max_bytes and self.lists:
            _, old = self.lists.popitem(last=False)
            self.bytes -= old.nbytes

    def get(self, sender: str, sig: str) -> np.ndarray | None:
        keys = self.lists.get((sender, sig))
        if keys is not None:
            self.lists.move_to_end((sender, sig))
        return keys


def decode_request(meta: dict, keys: np.ndarray | None, vals: np.ndarray | None,
                   cache: KeyCache, val_len: int = 1
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Server side: restore cached keys and decompress pushed values (``val_len`` is
    the server's own: the count to expect is not the sender's to say)."""
    sig = meta.get("key_sig")
    if sig is not None:
        if keys is None:
            keys = cache.get(meta.get("sender", ""), sig)
            if keys is None:
                raise PSError("CACHE_MISS", f"no cached key list {sig[:8]}...")
        else:
            cache.put(meta.get("sender", ""), sig, keys)
    if meta.get("codec") and vals is not None and keys is not None:
        vals = decode_values(vals, meta, keys.size * val_len)
    return keys, vals


def entry_bytes(n: int, val_len: int) -> int:
    return n * (ENTRY_KEY_BYTES + 4 * val_len)


@dataclass
class SignificantlyModified:
    """Push only entries whose accumulated change exceeds ``threshold`` (max-abs). A
    worker's last push (``ctx["final"]``) also carries everything still held back: the
    filter delays small changes, it must not drop them when the job ends. (Inside the
    last push, not after it: a push of its own would need a clock of its own, one more
    than the job's.)"""

    threshold: float = 1e-3
    stats: FilterStats = field(default_factory=lambda: FilterStats("significantly_modified"))
    residual: KVStore | None = None

    def push(self, keys: np.ndarray, vals: np.ndarray, ctx: dict) -> tuple:
        k = vals.shape[1]
        if self.residual is None:
            self.residual = KVStore(k)
        acc = self.residual.get(keys) + vals
        send = np.abs(acc).max(axis=1) > self.threshold
        self.residual.assign(keys, np.where(send[:, None], 0, acc).astype(VAL_DTYPE))
        out_k, out_v = keys[send], acc[send].astype(VAL_DTYPE)
        if ctx.get("final"):  # with everything held back, this push's keys or others'
            held_k, held_v, _ = self.residual.range(0, 1 << 64)
            nz = np.abs(held_v).max(axis=1) > 0
            out_k = np.concatenate([out_k, held_k[nz]])
            order = np.argsort(out_k, kind="stable")
            out_k, out_v = out_k[order], np.concatenate([out_v, held_v[nz]])[order]
            self.residual = None
        self.stats.add(entry_bytes(keys.size, k), entry_bytes(out_k.size, k), keys.size,
                       out_k.size)
        return out_k, out_v


@dataclass
class KKT:
    """Drop gradients of zero weights that the L1 proximal step would keep at zero:
    ``w == 0`` and ``|g| < lam - margin`` (``ctx["weights"]`` are the pulled values).

    Each step is exact for the worker's own view: the dropped entries would not have
    moved the weights it pulled. With several workers another push of the same clock
    can make ``w != 0`` on the server first (and under SSP/ASP the pulled weights are
    stale), so the filter is the paper's approximation, not an exact one. With the
    AdaGrad step (``L1Proximal(adagrad=True)``) the dropped ``g^2`` also never reaches the
    server's accumulator, so a coordinate that becomes active later takes slightly larger
    steps than without the filter; the drift is bounded (tests/minips/test_filters.py) and is
    why the benchmark's objective differs from the unfiltered one in the third digit."""

    lam: float = 1e-3
    margin: float = 0.0
    stats: FilterStats = field(default_factory=lambda: FilterStats("kkt"))
    history: list = field(default_factory=list)  # (entries in, entries out) per push

    def late_suppressed(self, last: float = 0.25) -> float:
        """Fraction of entries dropped over the last ``last`` of the pushes."""
        h = self.history[int(len(self.history) * (1 - last)):]
        n_in = sum(a for a, _ in h)
        return 1 - sum(b for _, b in h) / n_in if n_in else 0.0

    def push(self, keys: np.ndarray, vals: np.ndarray, ctx: dict) -> tuple:
        w = ctx.get("weights")
        if w is None:
            return keys, vals
        k = vals.shape[1]
        # the weights belong to the push's own keys (ctx["keys"]); a filter before this
        # one may have dropped or added entries, so find each key's weight by key; a key
        # without a pulled weight is taken as active (never dropped on a guess)
        wkeys, w = ctx.get("keys", keys), w.reshape(-1, k)
        if wkeys is keys:  # first in the chain (the usual case): aligned already
            zero_w = (w == 0).all(axis=1)
        else:
            at = np.searchsorted(wkeys, keys)
            known = at < wkeys.size
            known[known] = wkeys[at[known]] == keys[known]
            zero_w = np.zeros(keys.size, bool)
            zero_w[known] = (w[at[known]] == 0).all(axis=1)
        inactive = zero_w & (np.abs(vals).max(axis=1) < self.lam - self.margin)
        keep = ~inactive
        n_out = int(keep.sum())
        self.stats.add(entry_bytes(keys.size, k), entry_bytes(n_out, k), keys.size, n_out)
        self.history.append((keys.size, n_out))
        return keys[keep], vals[keep]


@dataclass
class Compress:
    """Compress pushed values (``push_codec``) and ask servers to compress pulled ones
    (``pull_codec``); ``"fp16"`` is lossy: scaled per message by a power of two
    (:func:`fp16_exponent`), each value within 2**28 of the message's largest arrives
    with a relative error of at most 2**-11 (about 3 significant digits)."""

    push_codec: str | None = "fp16"
    pull_codec: str | None = "zlib"
    stats: FilterStats = field(default_factory=lambda: FilterStats("compress"))
    pull_stats: FilterStats = field(default_factory=lambda: FilterStats("compress_pull"))


@dataclass
class KeyCaching:
    """Send a key list the server has already seen as its signature."""

    min_keys: int = 16
    stats: FilterStats = field(default_factory=lambda: FilterStats("key_caching"))
    known: dict[str, set] = field(default_factory=dict)  # server -> signatures it holds


class FilterChain:
    """The worker's filters, applied to each slice of a push or pull, in paper order:
    value filters (drop entries), then key caching, then value compression."""

    def __init__(self, filters: list | None = None):
        self.filters = list(filters or [])
        self.value_filters = [f for f in self.filters if hasattr(f, "push")]
        self.caching = next((f for f in self.filters if isinstance(f, KeyCaching)), None)
        self.compress = next((f for f in self.filters if isinstance(f, Compress)), None)

    def filter_push(self, keys: np.ndarray, vals: np.ndarray, ctx: dict) -> tuple:
        """Run the value filters; the last ``ctx["exempt"]`` entries (the fault tests'
        audit counters, which must arrive exactly) pass through untouched."""
        n = keys.size - int(ctx.get("exempt", 0))
        k, v = keys[:n], vals[:n]
        ctx = {"keys": k, **ctx}  # what ctx["weights"] are aligned with (the KKT filter)
        for f in self.value_filters:
            k, v = f.push(k, v, ctx)
        if n == keys.size:
            return k, v
        return np.concatenate([k, keys[n:]]), np.concatenate([v, vals[n:]])

    def encode(self, server: str, meta: dict, keys: np.ndarray, vals: np.ndarray | None
               ) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
        """Key caching and compression of one slice; returns what goes on the wire."""
        meta = dict(meta)
        if self.caching and keys.size >= self.caching.min_keys and not meta.get("no_cache"):
            sig = key_signature(keys)
            meta["key_sig"] = sig
            sig_bytes = len(f',"key_sig":"{sig}"')  # what the signature adds to the header
            known = self.caching.known.setdefault(server, set())
            if sig in known:
                self.caching.stats.add(keys.nbytes, sig_bytes, keys.size, 0)
                keys = None
            else:
                known.add(sig)
                self.caching.stats.add(keys.nbytes, keys.nbytes + sig_bytes, keys.size,
                                       keys.size)
        if self.compress:
            codec = self.compress.push_codec
            if meta.get("cmd") == "init":  # it carries the model itself: never lossy
                codec = lossless(codec)
            elif vals is not None:
                codec = safe_codec(codec, vals)
            if vals is not None and codec and vals.size:
                packed = encode_values(vals, codec, meta)
                self.compress.stats.add(vals.nbytes, packed.nbytes)
                vals = packed
            if meta.get("op") == "pull" and self.compress.pull_codec:
                meta["pull_codec"] = self.compress.pull_codec
        return meta, keys, vals

    def cache_missed(self, server: str, n_keys: int) -> None:
        """``server`` no longer held a key list we sent as its signature: the keys go
        again in full, so the saving booked for the signature was never made."""
        self.forget(server)
        if self.caching:
            self.caching.stats.add(0, n_keys * ENTRY_KEY_BYTES, 0, n_keys)

    def forget(self, server: str | None = None) -> None:
        """Drop what we believe a server caches (after a failover or a cache miss)."""
        if self.caching:
            if server is None:
                self.caching.known.clear()
            else:
                self.caching.known.pop(server, None)

    def decode_pull(self, reply_meta: dict, vals: np.ndarray, n: int) -> np.ndarray:
        if not reply_meta.get("codec"):
            return vals
        out = decode_values(vals, reply_meta, n)
        if self.compress:
            self.compress.pull_stats.add(out.nbytes, vals.nbytes)
        return out

    def stats(self) -> dict[str, dict]:
        out = {f.stats.name: f.stats.to_dict() for f in self.filters}
        for f in self.filters:
            if isinstance(f, Compress):
                out["compress_pull"] = f.pull_stats.to_dict()
            if isinstance(f, KKT):
                out["kkt"]["late_suppressed"] = f.late_suppressed()
        return out
