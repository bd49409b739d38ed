"""Queries, inputs and outputs: what crosses the frontend and the container RPC.

Clipper types every application and model with an *input type* (``clipper_admin``:
"integers", "floats", "doubles", "bytes" or "strings"; ``src/libclipper/src/datatypes.cpp``)
and rejects a query whose input does not parse as that type. A batch crosses the RPC as
one flat buffer of all inputs plus their offsets; Clipper's layout
(``rpc::PredictionRequest::serialize`` in ``src/libclipper/src/datatypes.cpp``) is a header
of per-input sizes followed by each input's buffer as its own ZeroMQ frame. Ours goes
through :mod:`common.wire` (a JSON header plus packed numpy arrays, never pickles).

Outputs come back the same way: a numeric array (one row or scalar per query), or
strings. Each output is turned into a JSON-able value once, in the frontend, so the
prediction cache stores what the REST API returns.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from common.wire import Concat, pack, unpack

INPUT_DTYPES: dict[str, Any] = {
    "integers": np.int32, "ints": np.int32, "floats": np.float32,
    "doubles": np.float64, "bytes": np.uint8, "strings": np.uint8,
}
NUMERIC_TYPES = ("integers", "ints", "floats", "doubles")
# Clipper's parse_input_type also accepts "ints" (and "int", "i"); we accept this one alias
ALIASES = {"ints": "integers"}


class InputError(ValueError):
    """A query input that does not match its application's declared type or length."""


@dataclass(slots=True)
class PredictTask:
    """One (model, input) pair waiting in a model queue (Clipper ``PredictTask``).

    ``deadline`` is on the ``time.monotonic()`` clock; a coalesced duplicate query may
    push it later (see :mod:`.cache`). ``future`` is shared by every query that asked
    for this exact prediction. ``query_id`` (the first query of the request that made
    the task) labels sampled traces.
    """

    model: tuple[str, str]
    input: Any
    deadline: float
    slo: float
    future: Any
    key: bytes
    enqueued: float = 0.0
    sent: float = 0.0  # when a replica took it in a batch (0: queued, not in flight)
    traced: bool = False
    retries: int = 0
    query_id: int = 0
    # deadlines of the queries waiting for this task, a heap (ModelQueue keeps the task
    # by the earliest still to come); empty until the task is first queued or promoted
    waits: list[float] = field(default_factory=list)


def parse_input(value: Any, input_type: str, input_length: int | None = None) -> Any:
    """Turn one JSON input into the array/str the models see; raise InputError why not."""
    if input_type == "strings":
        if not isinstance(value, str):
            raise InputError(f"input_type 'strings' needs a JSON string, got "
                             f"{type(value).__name__}")
        try:  # JSON's \ud800 escapes decode to lone surrogates, which are not text
            value.encode()
        except UnicodeEncodeError as e:
            raise InputError(f"input is not valid Unicode text: {e.reason} at position "
                             f"{e.start}") from None
        return value
    if input_type == "bytes":
        if not isinstance(value, str):
            raise InputError("input_type 'bytes' needs a base64 JSON string, got "
                             f"{type(value).__name__}")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as e:
            raise InputError(f"input is not valid base64: {e}") from None
    if input_type not in INPUT_DTYPES:
        raise InputError(f"unknown input_type {input_type!r}; use one of {sorted(INPUT_DTYPES)}")
    if not isinstance(value, list) or not value:
        raise InputError(f"input_type {input_type!r} needs a non-empty JSON array of numbers, "
                         f"got {type(value).__name__ if not isinstance(value, list) else '[]'}")
    kinds = set(map(type, value))  # one pass; bool is its own type, so it is refused too
    if not kinds <= {int, float}:
        bad = next(v for v in value if type(v) not in (int, float))
        raise InputError(f"input_type {input_type!r} needs numbers only, found {bad!r}")
    if ALIASES.get(input_type, input_type) == "integers" and float in kinds:
        raise InputError("input_type 'integers' needs whole numbers, found a float")
    if input_length is not None and len(value) != input_length:
        raise InputError(f"input has length {len(value)}, this application expects "
                         f"{input_length}")
    try:
        with np.errstate(over="ignore"):  # a float32 overflow becomes inf: refused below
            x = np.asarray(value, dtype=INPUT_DTYPES[input_type])
    except OverflowError:
        raise InputError(f"input_type {input_type!r}: a value does not fit in "
                         f"{np.dtype(INPUT_DTYPES[input_type]).name}") from None
    return check_finite(x, input_type)


def check_finite(x: np.ndarray, input_type: str) -> np.ndarray:
    """Refuse NaN and infinities, and finite values too large for a float32 app (they
    would become inf): a model cannot give a meaningful answer to them."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InputError(f"input_type {input_type!r}: inputs must be finite numbers that "
                         f"fit in {x.dtype.name}")
    return x


def _no_constant(name: str) -> float:
    raise InputError(f"{name} is not a JSON number (numbers must be finite)")


def _finite_float(text: str) -> float:
    """A JSON number too large for a float (``1e999``) would become inf, which no JSON
    answer can carry back: refuse it as NaN and Infinity are."""
    x = float(text)
    if not math.isfinite(x):
        raise InputError(f"the number {text[:40]} overflows a float (numbers must be finite)")
    return x


def loads_strict(body: bytes | str) -> Any:
    """Parse a request body as JSON proper: Python's parser also takes NaN and Infinity,
    which JSON has no literal for and a model cannot use. Two limits of the parser are
    the client's fault too, and become an :class:`InputError` (a 400) instead of escaping
    as a 500: nesting past Python's recursion limit (``b"[" * 50000``), and an integer
    of more digits than ``int()`` converts (``sys.get_int_max_str_digits``, 4300)."""
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise InputError("the body's JSON nests deeper than the parser can follow") from None
    except (json.JSONDecodeError, UnicodeDecodeError, InputError):
        raise
    except ValueError as e:  # only int()'s digit limit is left to raise a bare ValueError
        raise InputError(f"the body's JSON has a number with too many digits: {e}") from None


def json_output(value: Any) -> Any:
    """An output as Clipper's query frontend answers it: a string that parses as JSON is
    sent as that JSON value (``get_prediction_response_content`` in
    src/frontends/src/query_frontend.hpp), so a closure answering ``"6.6"`` gives the number
    6.6 while ``"cat"`` stays a string. The default output goes the same way. NaN,
    Infinity and numbers too large for a float are not JSON there either: they stay strings."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, InputError, RecursionError):  # JSONDecodeError is a ValueError
        return value


def dumps_strict(obj: Any) -> str:
    """A response body that is valid JSON even when a model answered NaN or inf (sent as
    the strings "NaN", "Infinity", "-Infinity" instead of bare literals)."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(finite_json(obj), allow_nan=False)


def finite_json(obj: Any) -> Any:
    """``obj`` with each NaN or inf float as the string JSON readers know it by."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return json.dumps(obj)  # 'NaN', 'Infinity' or '-Infinity', as a string
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def same_input_type(a: str, b: str) -> bool:
    """Clipper links a model to an app only when their input types agree; "ints" is
    our alias of "integers"."""
    return ALIASES.get(a, a) == ALIASES.get(b, b)


def model_seed(model: tuple[str, str]) -> int:
    """The 64-bit seed of a model version's cache keys: XXH3-64 of its name and version,
    length-prefixed so no two (name, version) pairs hash the same bytes.

    Clipper keys its cache with a fast non-cryptographic hash of the versioned model
    combined with a hash of the input (``PredictionCache::hash``, ``boost::hash_combine`` of
    64-bit hashes, in ``src/libclipper/src/task_executor.cpp``); seeding the input's hash
    with the model's is that combination, done in one call per input. We first used
    BLAKE2b, which cost 1.1 ms of the event loop's time for a 64-image request (786 KB);
    XXH3 takes 0.02 ms. Like Clipper's, the key is not collision-resistant against a
    client that crafts inputs to collide with another's (it would be served that other
    input's prediction); 128 bits per input, 64 per model version, make an accidental
    collision negligible."""
    name, version = (part.encode() for part in model)
    return xxhash.xxh3_64_intdigest(b"%d:%s%d:%s" % (len(name), name, len(version), version))


def input_keys(model: tuple[str, str] | int, xs: Iterable[Any]) -> list[bytes]:
    """Prediction cache keys: a 128-bit hash of each input's bytes seeded with the model
    version's :func:`model_seed` (``model`` may be that seed, made once). Arrays are
    hashed through the buffer protocol: a row of a request's 2-D array is hashed in
    place, never copied; and one-shot digests, not a hasher object copied per input
    (half the time for 64 rows)."""
    seed = model_seed(model) if isinstance(model, tuple) else model
    digest = xxhash.xxh3_128_digest
    keys = []
    for x in xs:
        if isinstance(x, str):
            x = x.encode()
        elif isinstance(x, np.ndarray) and not x.flags.c_contiguous:
            x = x.tobytes()
        keys.append(digest(x, seed))
    return keys


def input_key(model: tuple[str, str], x: Any) -> bytes:
    """The prediction cache key of one input (see :func:`input_keys`)."""
    return input_keys(model, (x,))[0]


def encode_batch(inputs: list[Any], input_type: str, meta: dict[str, Any]) -> bytes:
    """Pack a batch of inputs as one flat buffer plus offsets (n + 1 of them).

    Numeric inputs go in as a :class:`common.wire.Concat`: each row is copied once, from
    wherever it lies (usually the request message it came in), straight into the batch
    message. Clipper never gathers a batch either: ``rpc::PredictionRequest::serialize``
    (``src/libclipper/src/datatypes.cpp``) sends each input's buffer as its own frame.
    ``np.concatenate`` first made a second copy of the whole batch (786 KB for 64
    images) on the event loop, whose time bounds the frontend's throughput."""
    if input_type in NUMERIC_TYPES:
        lengths = [x.shape[0] for x in inputs]
        flat = Concat(inputs)
    else:
        raw = [x.encode() if isinstance(x, str) else x for x in inputs]
        lengths = [len(r) for r in raw]
        flat = np.frombuffer(b"".join(raw), dtype=np.uint8)
    offsets = np.zeros(len(inputs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pack({**meta, "input_type": input_type, "n": len(inputs)}, [flat, offsets])


def decode_batch(buf: bytes) -> tuple[dict[str, Any], Any]:
    """Inverse of :func:`encode_batch`. Equal-length numeric inputs become one 2-D array
    (what sklearn and torch models want); ragged ones a list of 1-D arrays."""
    meta, arrays = unpack(buf)
    if len(arrays) != 2:
        raise InputError(f"a batch carries 2 arrays (values, offsets), got {len(arrays)}")
    flat, offsets = arrays
    n, kind = meta.get("n"), meta.get("input_type")
    # each field as encode_batch writes it: anything else raised TypeError or IndexError,
    # which failed the whole stream of batches, and int32 bytes read as a string's
    if type(n) is not int or n < 0 or offsets.dtype.kind not in "iu" or flat.ndim != 1:
        raise InputError(f"a batch needs an integer count n >= 0 (got {n!r:.20}), integer "
                         f"offsets (got {offsets.dtype}) and 1-D values (got "
                         f"{flat.ndim}-D)")
    want = INPUT_DTYPES.get(kind) if isinstance(kind, str) else None
    if want is None or flat.dtype != want:
        raise InputError(f"values of input_type {kind!r:.20} travel as "
                         f"{np.dtype(want).name if want else '?'}, got {flat.dtype}")
    if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != flat.shape[0] \
            or np.any(np.diff(offsets) < 0):
        raise InputError(f"offsets {offsets.tolist()[:8]} do not split {flat.shape[0]} values "
                         f"into {n} inputs")
    if kind in ("strings", "bytes"):
        raw = flat.tobytes()
        items = [raw[offsets[i]:offsets[i + 1]] for i in range(n)]
        return meta, [b.decode() for b in items] if kind == "strings" else items
    lengths = np.diff(offsets)
    if n and np.all(lengths == lengths[0]):
        return meta, flat.reshape(n, int(lengths[0]))
    return meta, [flat[offsets[i]:offsets[i + 1]] for i in range(n)]


def encode_outputs(outputs: Any, n: int, meta: dict[str, Any]) -> bytes:
    """Check a model's outputs (one per input, numbers, numeric rows or strings) and pack
    them. Raises ValueError naming what came back when they are not that."""
    if isinstance(outputs, np.ndarray) and outputs.dtype.kind in "OUS" and outputs.ndim == 1:
        outputs = outputs.tolist()  # class labels: sklearn's predict for string classes
    if isinstance(outputs, np.ndarray):
        arr = outputs
    else:
        try:
            outputs = list(outputs)
        except TypeError:
            raise ValueError(f"model returned {type(outputs).__name__}, expected a list or "
                             f"array with one output per input") from None
        if outputs and all(isinstance(o, bytes) for o in outputs):
            # byte-string labels (a classifier fitted on numpy 'S' labels): JSON has no
            # bytes, so they go out as text, and only if they are text
            try:
                outputs = [o.decode() for o in outputs]
            except UnicodeDecodeError as e:
                raise ValueError(f"model returned byte strings that are not UTF-8 text "
                                 f"({e}); return str labels or numbers") from None
        if outputs and all(isinstance(o, str) for o in outputs):
            if len(outputs) != n:
                raise ValueError(f"model returned {len(outputs)} outputs for {n} inputs")
            raw = [o.encode() for o in outputs]
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum([len(r) for r in raw], out=offsets[1:])
            return pack({**meta, "kind": "strings", "n": n},
                        [np.frombuffer(b"".join(raw), dtype=np.uint8), offsets])
        try:
            arr = np.asarray(outputs)
        except ValueError as e:
            raise ValueError(f"model outputs are ragged or mixed: {e}") from None
    if arr.ndim == 0 or arr.shape[0] != n:
        raise ValueError(f"model returned {0 if arr.ndim == 0 else arr.shape[0]} outputs "
                         f"for {n} inputs")
    if arr.dtype.kind not in "biuf" or arr.ndim > 2:
        raise ValueError(f"model outputs must be numbers, 1-D numeric rows or strings; got "
                         f"an array of dtype {arr.dtype} and shape {arr.shape}")
    return pack({**meta, "kind": "array", "n": n}, [arr])


def decode_outputs(buf: bytes) -> tuple[dict[str, Any], list[Any], list[int]]:
    """Outputs as JSON-able values, with each one's size in bytes (for the cache budget)."""
    meta, arrays = unpack(buf)
    if meta.get("error"):
        return meta, [], []
    n = int(meta["n"])
    if meta.get("kind") == "strings":
        flat, offsets = arrays
        raw = flat.tobytes()
        vals = [raw[offsets[i]:offsets[i + 1]].decode() for i in range(n)]
        return meta, vals, [len(v.encode()) for v in vals]
    (arr,) = arrays
    vals = arr.tolist()
    row = arr.itemsize * (arr.shape[1] if arr.ndim == 2 else 1)
    return meta, vals, [row] * n
