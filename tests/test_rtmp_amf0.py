"""AMF0 encoding and decoding."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from gateway.wire.rtmp.amf0 import (
    MAX_DEPTH,
    UNDEFINED,
    AMF0Error,
    Date,
    Decoder,
    ECMAArray,
    TypedObject,
    XMLDocument,
    decode,
    decode_all,
    encode,
)


def roundtrip(value: Any) -> Any:
    [out] = decode_all(encode(value))
    return out


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -1.5,
        1e300,
        True,
        False,
        "",
        "hello",
        "ünïcödé ✓",
        None,
        [],
        [1.0, "two", None, [3.0]],
        {},
        {"a": 1.0, "nested": {"b": [True, None]}, "": "empty key"},
        Date(1_700_000_000_000.0, 0),
        Date(-5.0, -60),
    ],
)
def test_round_trip(value: Any) -> None:
    assert roundtrip(value) == value


def test_int_encodes_as_number() -> None:
    assert encode(3) == b"\x00" + struct.pack(">d", 3.0)
    out = roundtrip(3)
    assert out == 3 and isinstance(out, float)


def test_tuple_encodes_as_strict_array() -> None:
    assert roundtrip((1, "a")) == [1.0, "a"]


def test_undefined_is_distinct_from_null() -> None:
    assert encode(UNDEFINED) == b"\x06" and encode(None) == b"\x05"
    assert roundtrip(UNDEFINED) is UNDEFINED
    assert not UNDEFINED and repr(UNDEFINED) == "UNDEFINED"


def test_long_string_switch() -> None:
    short = "x" * 0xFFFF
    long = "x" * 0x10000
    assert encode(short)[0] == 0x02
    assert encode(long)[0] == 0x0C
    assert roundtrip(long) == long and roundtrip(short) == short


def test_ecma_array_type_preserved() -> None:
    arr = ECMAArray(duration=0.0, width=1280.0)
    data = encode(arr)
    assert data[:5] == b"\x08\x00\x00\x00\x02"
    assert data.endswith(b"\x00\x00\x09")
    out = roundtrip(arr)
    assert isinstance(out, ECMAArray) and out == arr


def test_typed_object_and_xml() -> None:
    obj = TypedObject("flex.Thing", x=1.0)
    out = roundtrip(obj)
    assert isinstance(out, TypedObject) and out.class_name == "flex.Thing" and out == {"x": 1.0}
    xml = roundtrip(XMLDocument("<a/>"))
    assert isinstance(xml, XMLDocument) and xml == "<a/>"


def test_known_connect_bytes() -> None:
    data = encode("connect", 1, {"app": "live"})
    expected = (
        b"\x02\x00\x07connect"
        + b"\x00" + struct.pack(">d", 1.0)
        + b"\x03" + b"\x00\x03app" + b"\x02\x00\x04live" + b"\x00\x00\x09"
    )
    assert data == expected
    assert decode_all(expected) == ["connect", 1.0, {"app": "live"}]


def test_ecma_array_count_is_advisory() -> None:
    # Count says 5 but there is one property, as some muxers write it.
    data = b"\x08\x00\x00\x00\x05" + b"\x00\x01k\x05" + b"\x00\x00\x09"
    assert decode(data) == {"k": None}


def test_ecma_array_without_terminator_at_end_of_data() -> None:
    data = b"\x02\x00\x0aonMetaData" + b"\x08\x00\x00\x00\x01" + b"\x00\x01w\x00" + struct.pack(">d", 2.0)
    assert decode_all(data) == ["onMetaData", {"w": 2.0}]


def test_object_without_terminator_is_an_error() -> None:
    with pytest.raises(AMF0Error, match="truncated"):
        decode_all(b"\x03\x00\x01k\x05")


def test_references_resolve() -> None:
    data = b"\x0a\x00\x00\x00\x02" + b"\x03\x00\x01a\x05\x00\x00\x09" + b"\x07\x00\x01"
    out = decode(data)
    assert out[1] is out[0] and out[0] == {"a": None}
    with pytest.raises(AMF0Error, match="reference"):
        decode(b"\x07\x00\x05")


def test_unsupported_marker_maps_to_undefined() -> None:
    assert decode(b"\x0d") is UNDEFINED


def test_decoder_reads_one_value_at_a_time() -> None:
    data = encode("onStatus", 0, None, {"code": "x"}) + b"\xff"
    dec = Decoder(data)
    assert dec.read() == "onStatus"
    assert dec.read() == 0.0
    assert dec.read() is None
    assert dec.read() == {"code": "x"}
    assert not dec.at_end
    with pytest.raises(AMF0Error, match="marker 0xff"):
        dec.read()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x00\x01\x02", "truncated number"),
        (b"\x02\x00\x05ab", "truncated string"),
        (b"\x0c\xff\xff\xff\xffab", "truncated long string"),
        (b"\x09", "object-end"),
        (b"\x11\x01", "AMF3"),
        (b"\x04", "unsupported"),
        (b"\x0a\xff\xff\xff\xff\x05", "strict array claims"),
        (b"\x01", "truncated boolean"),
        (b"\x0b\x00", "truncated date"),
    ],
)
def test_malformed_input(data: bytes, reason: str) -> None:
    with pytest.raises(AMF0Error, match=reason):
        decode_all(data)


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert decode(b"\x02\x00\x02\xff\xfe") == "\ufffd\ufffd"


def test_nesting_depth_is_bounded() -> None:
    deep = b"\x0a\x00\x00\x00\x01" * 100_000 + b"\x05"
    with pytest.raises(AMF0Error, match="nesting"):
        decode(deep)
    ok = b"\x0a\x00\x00\x00\x01" * (MAX_DEPTH - 1) + b"\x05"
    decode(ok)


def test_encode_errors() -> None:
    with pytest.raises(AMF0Error):
        encode(object())
    with pytest.raises(AMF0Error):
        encode({1: "non-str key"})
    with pytest.raises(AMF0Error):
        encode(10**400)
    with pytest.raises(AMF0Error):
        encode("\ud800")  # lone surrogate
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(AMF0Error, match="nesting"):
        encode(cyclic)


def test_amf0_error_is_value_error() -> None:
    assert issubclass(AMF0Error, ValueError)
