import numpy as np
import pytest
from hypothesis import given
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
    with pytest.raises(WireError, match="not allowed"):
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
