import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.wire import Concat, WireError, pack, unpack

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.uint64, np.bool_])


@given(st.lists(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
                max_size=4),
       st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda k: k != "_arrays"),
                       st.integers() | st.text(max_size=5), max_size=3))
def test_round_trip_is_exact(arrays, meta):
    meta2, arrays2 = unpack(pack(meta, arrays))
    assert meta2 == meta
    assert len(arrays2) == len(arrays)
    for a, b in zip(arrays, arrays2, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_arrays_are_zero_copy_read_only_views():
    msg = pack({"cmd": "push"}, [np.arange(10, dtype=np.uint64)])
    _, (keys,) = unpack(msg)
    assert not keys.flags.writeable
    assert keys.base is not None  # a view on the message buffer, not a copy


@pytest.mark.parametrize("name_len", range(9))
def test_every_array_is_aligned_whatever_the_header_length(name_len):
    # numpy and torch take slow paths on misaligned data: the arrays must start on an
    # 8-byte boundary of the message (a bytes object's data is itself 8-aligned)
    arrays = [np.arange(3, dtype=np.float64), np.ones((2, 5), np.float32)]
    msg = pack({"m": "x" * name_len}, arrays)
    _, got = unpack(msg)
    for a in got:
        assert a.flags.aligned and a.ctypes.data % 8 == 0


@pytest.mark.parametrize("bad, why", [
    (b"", "shorter than"),
    (b"XXXX\x00\x00\x00\x00", "bad magic"),
    (b"MLW1\xff\x00\x00\x00{}", "runs past the message"),
    (b"MLW1\x03\x00\x00\x00{x}", "not valid JSON"),
    (b"MLW1\x02\x00\x00\x00[]", "JSON object"),
])
def test_malformed_messages_raise_with_a_reason(bad, why):
    with pytest.raises(WireError, match=why):
        unpack(bad)


def test_lying_array_descriptors_are_refused():
    msg = bytearray(pack({}, [np.zeros(4, np.float32)]))
    tampered = bytes(msg).replace(b'"shape":[4]', b'"shape":[9]')
    with pytest.raises(WireError, match="do not hold shape"):
        unpack(tampered)
    objects = bytes(msg).replace(b'"<f4"', b'"|O8"')
    with pytest.raises(WireError, match="not a plain numpy type string"):
        unpack(objects)
    with pytest.raises(WireError, match="numeric dtypes only"):
        pack({}, [np.array([object()])])



def _msg(header: str) -> bytes:
    raw = header.encode()
    return b"MLW1" + len(raw).to_bytes(4, "little") + raw + bytes(64)


@pytest.mark.parametrize("header, why", [
    ('{"_arrays": 5}', "must be a list"),
    ('{"_arrays": null}', "must be a list"),
    ("[" * 100000, "not valid JSON"),  # nesting deeper than the parser's recursion
    ('{"a": 1' + "0" * 5000 + "}", "not valid JSON"),  # past Python's int-string limit
    ('{"_arrays": [{"dtype": "<f4", "shape": [1], "offset": 0, "nbytes": Infinity}]}',
     "bad descriptor"),
    ('{"_arrays": [{"dtype": "<f4", "shape": "1", "offset": 0, "nbytes": 4}]}',
     "bad descriptor"),
    ('{"_arrays": [{"dtype": null, "shape": [1], "offset": 0, "nbytes": 8}]}',
     "bad descriptor"),
    ('{"_arrays": [{"dtype": "<f4", "shape": [1.7], "offset": 0, "nbytes": 4}]}',
     "bad descriptor"),
    ('{"_arrays": [{"dtype": "|u1", "shape": [4294967296, 4294967296], "offset": 0, '
     '"nbytes": 0}]}', "do not hold shape"),  # numpy's prod of this shape wraps to 0
    # zero elements, so zero bytes, yet shapes numpy refuses: > 64 dimensions, a huge one
    ('{"_arrays": [{"dtype": "<f4", "shape": [0' + ", 1" * 70 + '], "offset": 0, '
     '"nbytes": 0}]}', "not a numpy shape"),
    ('{"_arrays": [{"dtype": "<f4", "shape": [0, 4611686018427387904], "offset": 0, '
     '"nbytes": 0}]}', "not a numpy shape"),
])
def test_hostile_headers_raise_wire_errors_only(header, why):
    """Servers catch WireError to answer "bad request"; any other exception would crash
    the handler instead (TypeError, RecursionError, OverflowError, a numpy reshape)."""
    with pytest.raises(WireError, match=why):
        unpack(_msg(header))


@given(st.lists(hnp.arrays(st.just(np.float32), hnp.array_shapes(min_dims=1, max_dims=2,
                                                                   min_side=0, max_side=5)),
                min_size=1, max_size=6),
       st.booleans())
def test_concat_is_the_message_of_the_concatenation(parts, strided):
    """A Concat's parts go into the message one by one: byte for byte what packing their
    concatenation gives, and it decodes to that concatenation."""
    if strided:
        parts = [p[..., ::2] for p in parts]
    flat = np.concatenate([p.reshape(-1) for p in parts])
    msg = pack({"n": len(parts)}, [Concat(parts), np.arange(3)])
    assert msg == pack({"n": len(parts)}, [flat, np.arange(3)])
    _, (got, tail) = unpack(msg)
    np.testing.assert_array_equal(got, flat)
    np.testing.assert_array_equal(tail, np.arange(3))


def test_concat_needs_parts_of_one_dtype():
    with pytest.raises(WireError, match="one dtype"):
        pack({}, [Concat([np.zeros(2, np.float32), np.zeros(2, np.float64)])])
    with pytest.raises(WireError, match="one dtype"):
        pack({}, [Concat([])])
    with pytest.raises(WireError, match="numeric dtypes only"):
        pack({}, [Concat([np.array(["a"], dtype=object)])])


# ---- model-based checks (a stateful audit, 2026-11-28): any dtype and layout, and
# damaged or hostile bytes, against the only two outcomes allowed ------------------
ANY_DTYPE = (hnp.boolean_dtypes() | hnp.integer_dtypes(endianness="=")
             | hnp.unsigned_integer_dtypes(endianness="=")
             | hnp.floating_dtypes(endianness="=") | hnp.complex_number_dtypes(endianness="=")
             | hnp.integer_dtypes(endianness=">") | hnp.floating_dtypes(endianness=">"))


@st.composite
def _views(draw):
    """Arrays, and non-contiguous views of them (transposed, strided, reversed)."""
    a = draw(hnp.arrays(ANY_DTYPE, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                     max_side=4)))
    how = draw(st.sampled_from(["plain", "T", "step", "rev", "fortran"]))
    if how == "T":
        return a.T
    if how == "step" and a.ndim:
        return a[..., ::2]
    if how == "rev" and a.ndim:
        return a[::-1]
    return np.asfortranarray(a) if how == "fortran" else a


@settings(max_examples=100, deadline=None)
@given(st.lists(_views(), max_size=4))
def test_any_numeric_array_and_layout_round_trips_bit_for_bit(arrs):
    meta, got = unpack(pack({"k": 1}, arrs))
    assert meta == {"k": 1} and len(got) == len(arrs)
    for a, b in zip(arrs, got, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()  # NaN payloads and -0.0 included


@settings(max_examples=100, deadline=None)
@given(st.lists(_views(), max_size=3), st.data())
def test_cut_or_flipped_bytes_raise_wire_errors_only(arrs, data):
    msg = pack({"k": [1, 2]}, arrs)
    with contextlib.suppress(WireError):
        unpack(msg[:data.draw(st.integers(0, len(msg) - 1))])
    b = bytearray(msg)
    for _ in range(data.draw(st.integers(1, 3))):
        b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(WireError):
        unpack(bytes(b))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789,()<>|=:fiucbUOV ", min_size=1, max_size=8),
       st.lists(st.integers(-2, 3), max_size=3))
def test_any_dtype_string_in_a_header_is_a_wire_error_or_an_array(dtype, shape):
    header = json.dumps({"_arrays": [{"dtype": dtype, "shape": shape, "offset": 0,
                                      "nbytes": 8}]})
    with contextlib.suppress(WireError):
        unpack(_msg(header))


@pytest.mark.parametrize("dtype", ["<08", ",i1", "(1e9,)i4"])
def test_dtype_strings_numpy_parses_as_python_raise_wire_errors(dtype):
    """np.dtype reads a dtype string with a comma (or a leading zero) with Python's own
    parser: a corrupt or hostile one raised SyntaxError, which neither the minips
    server's guard nor the Clipper frontend catches (both answer WireError as a bad
    request), so the handler died with gRPC's bare UNKNOWN."""
    header = json.dumps({"_arrays": [{"dtype": dtype, "shape": [1], "offset": 0,
                                      "nbytes": 1}]})
    with pytest.raises(WireError, match="bad descriptor"):
        unpack(_msg(header))


def test_a_long_dtype_string_is_refused_before_numpy_parses_it():
    """np.dtype parses a string with commas with Python's own parser: a 2 MB
    "(1,1,...)i1" took a GB and three seconds to refuse, on the event loop of the server
    that read it (which then missed its heartbeats)."""
    import tracemalloc

    header = json.dumps({"_arrays": [{"dtype": "(" + "1," * 100_000 + ")i1", "shape": [1],
                                      "offset": 0, "nbytes": 1}]})
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match="not a plain numpy type string"):
            unpack(_msg(header))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
