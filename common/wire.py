"""One binary message format for every RPC in the casebook: a small header, then arrays.

ps-lite sends each message as a *meta* part (a protobuf with the command, keys' dtype,
timestamps) followed by raw data frames holding the packed key and value arrays
(ps-lite ``src/van.cc``, ``PackMeta``); Clipper's RPC (``src/libclipper/src/rpc_service.cpp``)
likewise sends a header and then the raw input buffers. We do the same with one codec:

    [ 4 bytes: b"MLW1" ][ u32 little-endian: header length ][ header: UTF-8 JSON,
      padded with spaces to 8 ][ array 0 bytes, padded to 8 ][ array 1 bytes ...]

The header is a JSON object; its ``"_arrays"`` entry lists each array's dtype, shape and
byte offset. Arrays are decoded without copying (``np.frombuffer`` on the message), so
they are read-only views: copy before mutating. Only plain numeric dtypes are allowed,
never pickled objects, so a malicious peer can at worst send wrong numbers.

An array may also be given as :class:`Concat` (parts sent as their 1-D concatenation):
each part is then copied once, straight into the message, never gathered first (Clipper's
``rpc::PredictionRequest::serialize`` in ``src/libclipper/src/datatypes.cpp`` likewise
hands each input's own buffer to its RPC).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

MAGIC = b"MLW1"
_ALLOWED_KINDS = set("biufc")  # bool, signed/unsigned int, float, complex: no objects
_HEAD = struct.Struct("<4sI")


class WireError(ValueError):
    """A message that cannot be decoded; the text says why."""


class Concat(NamedTuple):
    """A 1-D array sent as the concatenation of ``parts`` (one dtype, any lengths), which
    :func:`pack` copies one by one into the message: ``np.concatenate`` first would copy
    every byte twice (a 64-row batch is 786 KB of float32)."""

    parts: Sequence[np.ndarray]


def _byte_chunks(a: Any) -> tuple[np.dtype, list[int], list[Any]]:
    """(dtype, shape, byte chunks) of one array or :class:`Concat` to send."""
    if isinstance(a, Concat):
        parts = [np.ascontiguousarray(p).reshape(-1) for p in a.parts]
        if not parts or len({p.dtype for p in parts}) != 1:
            raise WireError(f"a Concat needs parts of one dtype, got "
                            f"{sorted({p.dtype.str for p in parts})}")
        # bytes.join reads a C-contiguous array through the buffer protocol: no cast
        return parts[0].dtype, [sum(p.size for p in parts)], [p for p in parts if p.size]
    a = np.asarray(a)
    a = a if a.flags.c_contiguous else a.copy(order="C")  # (keeps 0-d arrays 0-d)
    # A byte view, not a.tobytes(): the join in pack is then the only copy (three
    # copies of a 12 MB push cost more than sending it over loopback).
    return a.dtype, list(a.shape), [memoryview(a.reshape(-1)).cast("B")] if a.size else []


def pack(meta: dict[str, Any], arrays: Sequence[np.ndarray | Concat] = (),
         allow_nan: bool = True) -> bytes:
    """Encode a JSON-able ``meta`` dict and a list of numpy arrays (or :class:`Concat`)
    into one message. ``allow_nan=False`` raises ValueError on a NaN or inf in ``meta``
    (Python's JSON writes them as bare ``NaN``, which other languages' parsers refuse)."""
    specs, chunks, offset = [], [], 0
    for a in arrays:
        dtype, shape, raw = _byte_chunks(a)
        if dtype.kind not in _ALLOWED_KINDS:
            raise WireError(f"cannot send arrays of dtype {dtype} (numeric dtypes only)")
        nbytes = math.prod(shape) * dtype.itemsize
        pad = (-nbytes) % 8
        specs.append({"dtype": dtype.str, "shape": shape, "offset": offset,
                      "nbytes": nbytes})
        chunks += raw
        if pad:
            chunks.append(b"\0" * pad)
        offset += nbytes + pad
    header = json.dumps({**meta, "_arrays": specs}, separators=(",", ":"),
                        allow_nan=allow_nan).encode()
    # Pad the header with JSON whitespace so the arrays start on an 8-byte boundary:
    # numpy and torch take slow paths on misaligned data (a torch Linear on a 786 KB
    # batch ran 4x slower when the header's length happened to be odd).
    header += b" " * (-(_HEAD.size + len(header)) % 8)
    return b"".join([_HEAD.pack(MAGIC, len(header)), header, *chunks])


def _whole(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"{x!r} is not an integer")
    return x


_DTYPE_STR = re.compile(r"[<>|=]?[biufc]\d{1,2}")  # the kinds allowed below


def _descriptor(s: Any) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, offset, nbytes) of one array descriptor, strictly typed: a shape
    of "12" or [1.7], or a dtype of null, is an error, not a guess."""
    if not isinstance(s, dict) or not isinstance(s["dtype"], str) \
            or not isinstance(s["shape"], list):
        raise TypeError("needs a 'dtype' string and a 'shape' list")
    # the form pack writes (dtype.str), checked before numpy parses it: a dtype string
    # with commas goes through Python's own parser, and "(1,1,...)i1" of 2 MB took a GB
    # and seconds of CPU to refuse, on the event loop of whichever server read it
    if not _DTYPE_STR.fullmatch(s["dtype"]):
        raise TypeError(f"dtype {s['dtype']!r:.40} is not a plain numpy type string")
    return (np.dtype(s["dtype"]), tuple(_whole(d) for d in s["shape"]), _whole(s["offset"]),
            _whole(s["nbytes"]))


def unpack(buf: bytes | memoryview) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Decode a message from :func:`pack`. Raises :class:`WireError` on anything malformed."""
    view = memoryview(buf)
    if len(view) < _HEAD.size:
        raise WireError(f"message of {len(view)} bytes is shorter than the 8-byte preamble")
    magic, hlen = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}: not a casebook wire message")
    if _HEAD.size + hlen > len(view):
        raise WireError(f"header length {hlen} runs past the message ({len(view)} bytes)")
    try:  # a hostile header can also overflow the parser (deep nesting, huge numbers)
        meta = json.loads(bytes(view[_HEAD.size:_HEAD.size + hlen]))
    except (ValueError, RecursionError, OverflowError) as e:
        raise WireError(f"header is not valid JSON: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict):
        raise WireError("header must be a JSON object")
    specs = meta.pop("_arrays", [])
    if not isinstance(specs, list):
        raise WireError(f"'_arrays' must be a list of array descriptors, got {specs!r:.80}")
    body = view[_HEAD.size + hlen:]
    arrays = []
    for i, s in enumerate(specs):
        try:
            dtype, shape, off, n = _descriptor(s)
        except (KeyError, TypeError, ValueError, SyntaxError) as e:  # np.dtype reads a
            # dtype string with a comma in it ("<i4,f8") with Python's own parser
            raise WireError(f"array {i}: bad descriptor {s!r:.200} ({e})") from None
        if dtype.kind not in _ALLOWED_KINDS:
            raise WireError(f"array {i}: dtype {dtype} is not allowed")
        # math.prod on Python ints: numpy's prod wraps around for huge shapes
        if any(d < 0 for d in shape) or n != math.prod(shape) * dtype.itemsize:
            raise WireError(f"array {i}: {n} bytes do not hold shape {shape} of {dtype}")
        if off < 0 or off + n > len(body):
            raise WireError(f"array {i}: bytes {off}..{off + n} run past the message")
        try:  # a zero-size shape passes the byte count yet may be one numpy refuses
            arrays.append(np.frombuffer(body[off:off + n], dtype=dtype).reshape(shape))
        except (ValueError, OverflowError) as e:  # > 64 dimensions, a dimension > 2**63
            raise WireError(f"array {i}: shape {shape!r:.200} is not a numpy shape ({e})") \
                from None
    return meta, arrays
