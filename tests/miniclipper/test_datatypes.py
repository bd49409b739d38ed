"""Inputs and outputs on the wire (systems/miniclipper/datatypes.py)."""

import json

import numpy as np
import pytest

from common.wire import pack
from systems.miniclipper.datatypes import (
    InputError,
    decode_batch,
    decode_outputs,
    dumps_strict,
    encode_batch,
    encode_outputs,
    input_key,
    input_keys,
    json_output,
    loads_strict,
    parse_input,
)


def test_parse_input_accepts_the_declared_type_and_says_why_not():
    np.testing.assert_array_equal(parse_input([1, 2.5], "doubles"), [1.0, 2.5])
    assert parse_input([1, 2], "integers").dtype == np.int32
    assert parse_input("aGk=", "bytes") == b"hi"
    with pytest.raises(InputError, match="needs numbers only, found 'x'"):
        parse_input([1, "x"], "doubles")
    with pytest.raises(InputError, match="found True"):
        parse_input([1, True], "doubles")
    with pytest.raises(InputError, match="whole numbers"):
        parse_input([1, 2.5], "integers")
    with pytest.raises(InputError, match="length 2, this application expects 3"):
        parse_input([1, 2], "doubles", input_length=3)
    with pytest.raises(InputError, match="does not fit in int32"):
        parse_input([2 ** 40], "integers")
    with pytest.raises(InputError, match="finite numbers that fit in float32"):
        parse_input([1e300], "floats")
    with pytest.raises(InputError, match="needs a JSON string"):
        parse_input([1], "strings")
    with pytest.raises(InputError, match="not valid base64"):
        parse_input("%%%", "bytes")


@pytest.mark.parametrize("kind,inputs", [
    ("doubles", [np.arange(3.0), np.arange(3.0) + 1]),
    ("floats", [np.ones(2, np.float32), np.ones(5, np.float32)]),
    ("strings", ["héllo", "", "x"]),
    ("bytes", [b"\x00\x01", b"zz"]),
])
def test_batches_round_trip(kind, inputs):
    meta, back = decode_batch(encode_batch(inputs, kind, {"batch_id": 7}))
    assert meta["batch_id"] == 7 and meta["n"] == len(inputs)
    for a, b in zip(inputs, back, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b
    if kind == "doubles":
        assert isinstance(back, np.ndarray) and back.shape == (2, 3)  # what sklearn wants


def test_a_batch_of_request_rows_is_packed_without_concatenating_first(monkeypatch):
    """The task executor packs a batch straight from the request arrays its rows came in
    (common.wire.Concat): the same message as concatenating first, one copy fewer. Rows
    of two requests interleaved, a strided view and an empty row cover the slow cases."""
    from common.wire import pack

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(100, 112, dtype=np.float32).reshape(3, 4)
    batches = [list(a), [a[0], b[2], a[1], b[0]], [a[:, ::2][1], b[1, :2]],
               [a[0, :0], a[1]]]
    want = []
    for rows in batches:
        offsets = np.cumsum([0] + [len(r) for r in rows])
        want.append(pack({"batch_id": 3, "input_type": "floats", "n": len(rows)},
                         [np.concatenate(rows), offsets]))

    def no_concatenate(*args, **kwargs):
        raise AssertionError("encode_batch copied the batch into an intermediate array")

    monkeypatch.setattr(np, "concatenate", no_concatenate)
    for rows, msg in zip(batches, want, strict=True):
        assert encode_batch(rows, "floats", {"batch_id": 3}) == msg
        _, back = decode_batch(msg)
        for r, got in zip(rows, back, strict=True):
            np.testing.assert_array_equal(r, got)


def test_cache_keys_are_one_shot_digests_of_the_input_in_place(monkeypatch):
    """Keys hash each input once, in place, seeded with its model version (no hasher
    object per input); a strided row and its copy share a key."""
    import xxhash

    x = np.arange(12.0).reshape(3, 4)
    want = [input_key(("m", "1"), r) for r in (x[0], x[:, 1], "s")]
    monkeypatch.setattr(xxhash, "xxh3_128", lambda *a: pytest.fail("a hasher per input"))
    assert input_keys(("m", "1"), [x[0].copy(), x[:, 1].copy(), "s"]) == want


def test_outputs_are_checked_and_round_trip():
    meta, vals, sizes = decode_outputs(encode_outputs(np.array([3, 1]), 2, {"t0": 1}))
    assert vals == [3, 1] and sizes == [8, 8] and meta["t0"] == 1
    _, vals, _ = decode_outputs(encode_outputs(["a", "bc"], 2, {}))
    assert vals == ["a", "bc"]
    _, vals, _ = decode_outputs(encode_outputs(np.eye(2), 2, {}))
    assert vals == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="returned 1 outputs for 2 inputs"):
        encode_outputs([1.0], 2, {})
    with pytest.raises(ValueError, match="numbers, 1-D numeric rows or strings"):
        encode_outputs([{"a": 1}, {"b": 2}], 2, {})
    with pytest.raises(ValueError, match="expected a list or array"):
        encode_outputs(None, 2, {})


@pytest.mark.parametrize("labels", [np.array(["pos", "neg", "pos"]),  # dtype <U3
                                    np.array(["pos", "neg", "pos"], dtype=object),
                                    np.array([b"pos", b"neg", b"pos"]),  # dtype |S3
                                    [b"pos", b"neg", b"pos"]])
def test_a_numpy_array_of_class_labels_goes_out_as_strings(labels):
    """What sklearn's predict returns for a classifier fit on string labels."""
    meta, vals, sizes = decode_outputs(encode_outputs(labels, 3, {"batch_id": 4}))
    assert vals == ["pos", "neg", "pos"] and meta["batch_id"] == 4 and sizes == [3, 3, 3]
    with pytest.raises(ValueError, match="returned 2 outputs for 3 inputs"):
        encode_outputs(labels[:2], 3, {})
    with pytest.raises(ValueError, match="numbers, 1-D numeric rows or strings"):
        encode_outputs(np.array([["a"], ["b"], ["c"]]), 3, {})


def test_byte_labels_that_are_not_text_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="byte strings that are not UTF-8"):
        encode_outputs(np.array([b"\xff", b"ok"]), 2, {})


def test_cache_keys_separate_models_versions_and_inputs():
    x = np.arange(4.0)
    keys = {input_key(("m", "1"), x), input_key(("m", "2"), x), input_key(("n", "1"), x),
            input_key(("m", "1"), x + 1)}
    assert len(keys) == 4 and input_key(("m", "1"), x.copy()) in keys


def test_a_string_input_must_be_text():
    """JSON may escape a lone surrogate ("\\ud800"); Python decodes it into a str that
    cannot be encoded, which used to surface as a 500 when the input was hashed."""
    doc = loads_strict(b'{"input": "a\\ud800b"}')
    with pytest.raises(InputError, match="not valid Unicode text: surrogates not allowed"):
        parse_input(doc["input"], "strings")
    assert parse_input("caf\u00e9", "strings") == "caf\u00e9"


def test_json_is_parsed_and_written_strictly():
    """JSON has no NaN or Infinity; Python's json module reads and writes them anyway."""
    with pytest.raises(InputError, match="NaN is not a JSON number"):
        loads_strict(b'{"input": [NaN]}')
    assert loads_strict(b'{"input": [1.5]}') == {"input": [1.5]}
    with pytest.raises(InputError, match="1e999 overflows a float"):
        loads_strict(b'{"default_output": 1e999}')  # would be inf: no JSON answer carries it
    with pytest.raises(InputError, match="nests deeper"):
        loads_strict(b"[" * 50000)  # the parser's recursion limit, not a RecursionError
    with pytest.raises(InputError, match="too many digits"):
        loads_strict(b"[" + b"1" * 5000 + b"]")  # Python's int-from-string limit
    with pytest.raises(json.JSONDecodeError):
        loads_strict(b"[1,")  # still the parser's own error, with its position
    body = dumps_strict({"output": [float("nan"), float("-inf"), 2.0], "default": False})
    assert json.loads(body, parse_constant=lambda c: pytest.fail(c)) == {
        "output": ["NaN", "-Infinity", 2.0], "default": False}


def test_a_string_output_that_is_json_goes_out_as_that_value_as_in_clipper():
    """Clipper's frontend parses each string output (and the default) as JSON where it
    can: the quickstart's ``str(sum(x))`` answers a number, a label stays a string."""
    assert json_output("6.6000000000000005") == 6.6000000000000005
    assert json_output("-1.0") == -1.0 and json_output("[1, 2]") == [1, 2]
    assert json_output('{"label": "cat"}') == {"label": "cat"}
    for text in ("cat", "", "NaN", "Infinity", "1e999", "[1,", "1 2"):  # not JSON values
        assert json_output(text) == text
    assert json_output(3) == 3 and json_output(["x"]) == ["x"]  # not strings: unchanged


def test_grpc_arrays_are_refused_where_rest_would_refuse_them():
    """The gRPC API's array path must not truncate floats or wrap big ints that the REST
    path refuses (frontend.rows_of)."""
    from systems.miniclipper.frontend import rows_of

    with pytest.raises(InputError, match="whole numbers"):
        rows_of(np.array([1.7, 2.9]), "integers", None)
    with pytest.raises(InputError, match="does not fit in int32"):
        rows_of(np.array([2 ** 33 + 5, 0]), "integers", None)
    with pytest.raises(InputError, match="finite"):
        rows_of(np.array([[np.inf, 1.0]]), "doubles", None)
    assert [r.tolist() for r in rows_of(np.array([[1, 2], [3, 4]]), "ints", 2)] == \
        [[1, 2], [3, 4]]


@pytest.mark.parametrize("meta, flat, offsets", [
    ({"input_type": "doubles", "n": None}, np.array([1.0, 2.0]), np.array([0, 1, 2])),
    ({"input_type": "doubles", "n": 2}, np.array([1.0, 2.0]), np.array([0.0, 1.0, 2.0])),
    ({"input_type": "doubles"}, np.array([1.0, 2.0]), np.zeros(0, np.int64)),
    ({"input_type": "strings", "n": 2}, np.array([104, 105], np.int32), np.array([0, 1, 2])),
    ({"input_type": "floats", "n": 2}, np.array([1 + 2j, 3 + 4j], np.complex64),
     np.array([0, 1, 2])),
    ({"input_type": "doubles", "n": 1}, np.ones((1, 2)), np.array([0, 2])),
])
def test_a_malformed_batch_is_an_input_error_never_another_exception(meta, flat, offsets):
    """A null count, float offsets or no offsets raised TypeError or IndexError, which the
    container does not answer in band: the whole stream of batches to it ended. And int32
    values under "strings" were read as their bytes, complex ones handed to the model."""
    with pytest.raises(InputError):
        decode_batch(pack({"batch_id": 1, **meta}, [flat, offsets]))
