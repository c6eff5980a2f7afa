"""AMF0, the value encoding of RTMP commands and FLV/RTMP data messages.

Python mapping: ``float``/``int`` <-> number (decoded as ``float``), ``bool``, ``str`` (long
string when over 65535 UTF-8 bytes), ``dict`` <-> object, :class:`ECMAArray` <-> ECMA array,
``list``/``tuple`` <-> strict array, ``None`` <-> null, :data:`UNDEFINED` <-> undefined,
:class:`Date`, :class:`TypedObject`, :class:`XMLDocument`.

Decoding is written for hostile input: every failure is an :class:`AMF0Error`, nesting depth
is bounded and every loop consumes input, so garbage can neither crash nor hang a session.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "UNDEFINED",
    "AMF0Error",
    "Date",
    "Decoder",
    "ECMAArray",
    "TypedObject",
    "XMLDocument",
    "decode",
    "decode_all",
    "encode",
]

NUMBER: Final = 0x00
BOOLEAN: Final = 0x01
STRING: Final = 0x02
OBJECT: Final = 0x03
MOVIECLIP: Final = 0x04
NULL: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
REFERENCE: Final = 0x07
ECMA_ARRAY: Final = 0x08
OBJECT_END: Final = 0x09
STRICT_ARRAY: Final = 0x0A
DATE: Final = 0x0B
LONG_STRING: Final = 0x0C
UNSUPPORTED: Final = 0x0D
RECORDSET: Final = 0x0E
XML_DOCUMENT: Final = 0x0F
TYPED_OBJECT: Final = 0x10
AVMPLUS: Final = 0x11

MAX_DEPTH: Final = 64
"""Deepest container nesting accepted; real RTMP traffic nests two or three levels."""

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE = struct.Struct(">dh")
_OBJECT_END = b"\x00\x00\x09"


class AMF0Error(ValueError):
    """Malformed AMF0 data, or a Python value AMF0 cannot represent."""


class _Undefined:
    """AMF0 ``undefined``, distinct from ``null`` because some peers care (e.g. ``_result``)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()


class ECMAArray(dict):
    """Associative array; ``onMetaData`` is usually sent as one, and some peers insist on it."""


class TypedObject(dict):
    """Object carrying an ActionScript class name."""

    def __init__(self, class_name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_name = class_name

    def __repr__(self) -> str:
        return f"TypedObject({self.class_name!r}, {dict.__repr__(self)})"


class XMLDocument(str):
    """XML document value, kept apart from ``str`` so it re-encodes with its own marker."""


@dataclass(frozen=True, slots=True)
class Date:
    """AMF0 date: milliseconds since the Unix epoch; ``timezone`` is reserved and usually 0."""

    timestamp_ms: float
    timezone: int = 0


# --------------------------------------------------------------------------- encoding


def encode(*values: Any) -> bytes:
    """Encode values back to back, as RTMP command and data messages carry them."""
    out: list[bytes] = []
    for value in values:
        _encode(value, out, 0)
    return b"".join(out)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AMF0Error(f"string is not encodable as UTF-8: {exc}") from None


def _encode_key(key: Any, out: list[bytes]) -> None:
    if not isinstance(key, str):
        raise AMF0Error(f"object keys must be str, not {type(key).__name__}")
    raw = _utf8(key)
    if len(raw) > 0xFFFF:
        raise AMF0Error("object key longer than 65535 bytes")
    out.append(_U16.pack(len(raw)))
    out.append(raw)


def _encode_properties(mapping: dict[Any, Any], out: list[bytes], depth: int) -> None:
    for key, item in mapping.items():
        _encode_key(key, out)
        _encode(item, out, depth)
    out.append(_OBJECT_END)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise AMF0Error(f"nesting deeper than {MAX_DEPTH} (cyclic structure?)")
    if value is None:
        out.append(b"\x05")
    elif value is UNDEFINED:
        out.append(b"\x06")
    elif value is True or value is False:
        out.append(b"\x01\x01" if value else b"\x01\x00")
    elif isinstance(value, (int, float)):
        try:
            out.append(b"\x00" + _DOUBLE.pack(float(value)))
        except (OverflowError, struct.error) as exc:
            raise AMF0Error(f"number out of range: {exc}") from None
    elif isinstance(value, XMLDocument):
        raw = _utf8(value)
        if len(raw) > 0xFFFFFFFF:
            raise AMF0Error("XML document longer than 4 GiB")
        out.append(b"\x0f" + _U32.pack(len(raw)))
        out.append(raw)
    elif isinstance(value, str):
        raw = _utf8(value)
        if len(raw) <= 0xFFFF:
            out.append(b"\x02" + _U16.pack(len(raw)))
        elif len(raw) <= 0xFFFFFFFF:
            out.append(b"\x0c" + _U32.pack(len(raw)))
        else:
            raise AMF0Error("string longer than 4 GiB")
        out.append(raw)
    elif isinstance(value, ECMAArray):
        out.append(b"\x08" + _U32.pack(len(value) & 0xFFFFFFFF))
        _encode_properties(value, out, depth + 1)
    elif isinstance(value, TypedObject):
        raw = _utf8(value.class_name)
        if len(raw) > 0xFFFF:
            raise AMF0Error("class name longer than 65535 bytes")
        out.append(b"\x10" + _U16.pack(len(raw)))
        out.append(raw)
        _encode_properties(value, out, depth + 1)
    elif isinstance(value, dict):
        out.append(b"\x03")
        _encode_properties(value, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        if len(value) > 0xFFFFFFFF:
            raise AMF0Error("strict array longer than 2**32-1")
        out.append(b"\x0a" + _U32.pack(len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, Date):
        try:
            out.append(b"\x0b" + _DATE.pack(float(value.timestamp_ms), value.timezone))
        except (OverflowError, struct.error, TypeError) as exc:
            raise AMF0Error(f"bad date: {exc}") from None
    else:
        raise AMF0Error(f"cannot encode {type(value).__name__} as AMF0")


# --------------------------------------------------------------------------- decoding


def decode_all(data: bytes | bytearray | memoryview) -> list[Any]:
    """Decode every value in ``data``; trailing garbage is an error, not silently dropped."""
    decoder = Decoder(data)
    values: list[Any] = []
    while not decoder.at_end:
        values.append(decoder.read())
    return values


def decode(data: bytes | bytearray | memoryview) -> Any:
    """Decode the first value of ``data`` (the rest is ignored)."""
    return Decoder(data).read()


class Decoder:
    """Reads AMF0 values one at a time, so a caller can keep what parsed before a fault.

    References (marker 0x07) resolve against the complex values read so far by this decoder.
    """

    __slots__ = ("_data", "_end", "_max_depth", "_refs", "offset")

    def __init__(
        self, data: bytes | bytearray | memoryview, offset: int = 0, max_depth: int = MAX_DEPTH
    ) -> None:
        self._data = bytes(data)
        self._end = len(self._data)
        self.offset = offset
        self._refs: list[Any] = []
        self._max_depth = max_depth

    @property
    def at_end(self) -> bool:
        return self.offset >= self._end

    def read(self) -> Any:
        """Read one value and advance ``offset``."""
        return self._value(0)

    # helpers -----------------------------------------------------------------

    def _take(self, n: int, what: str) -> int:
        start = self.offset
        if start + n > self._end:
            raise AMF0Error(f"truncated {what} at offset {start}")
        self.offset = start + n
        return start

    def _u16(self, what: str) -> int:
        value: int = _U16.unpack_from(self._data, self._take(2, what))[0]
        return value

    def _u32(self, what: str) -> int:
        value: int = _U32.unpack_from(self._data, self._take(4, what))[0]
        return value

    def _text(self, n: int, what: str) -> str:
        start = self._take(n, what)
        return self._data[start : start + n].decode("utf-8", "replace")

    def _value(self, depth: int) -> Any:
        marker = self._data[self._take(1, "value marker")]
        if marker == NUMBER:
            number: float = _DOUBLE.unpack_from(self._data, self._take(8, "number"))[0]
            return number
        if marker == BOOLEAN:
            return self._data[self._take(1, "boolean")] != 0
        if marker == STRING:
            return self._text(self._u16("string length"), "string")
        if marker == NULL:
            return None
        if marker in (UNDEFINED_MARKER, UNSUPPORTED):
            return UNDEFINED
        if marker == LONG_STRING:
            return self._text(self._u32("long string length"), "long string")
        if marker == XML_DOCUMENT:
            return XMLDocument(self._text(self._u32("XML length"), "XML document"))
        if marker == DATE:
            ms, tz = _DATE.unpack_from(self._data, self._take(10, "date"))
            return Date(ms, tz)
        if marker == REFERENCE:
            index = self._u16("reference")
            if index >= len(self._refs):
                raise AMF0Error(f"reference {index} to an unknown object")
            return self._refs[index]
        if depth >= self._max_depth:
            raise AMF0Error(f"nesting deeper than {self._max_depth}")
        if marker == OBJECT:
            obj: dict[str, Any] = {}
            self._refs.append(obj)
            self._properties(obj, depth + 1, lenient_end=False)
            return obj
        if marker == ECMA_ARRAY:
            self._u32("ECMA array count")  # advisory only; many muxers write it wrong
            arr = ECMAArray()
            self._refs.append(arr)
            self._properties(arr, depth + 1, lenient_end=True)
            return arr
        if marker == STRICT_ARRAY:
            count = self._u32("strict array count")
            if count > self._end - self.offset:  # every element takes at least one byte
                raise AMF0Error(f"strict array claims {count} elements, too few bytes left")
            items: list[Any] = []
            self._refs.append(items)
            for _ in range(count):
                items.append(self._value(depth + 1))
            return items
        if marker == TYPED_OBJECT:
            typed = TypedObject(self._text(self._u16("class name length"), "class name"))
            self._refs.append(typed)
            self._properties(typed, depth + 1, lenient_end=False)
            return typed
        if marker == OBJECT_END:
            raise AMF0Error(f"object-end marker outside an object at offset {self.offset - 1}")
        if marker == AVMPLUS:
            raise AMF0Error("AMF3 values (AVM+ marker) are not supported")
        raise AMF0Error(f"unsupported AMF0 marker 0x{marker:02x} at offset {self.offset - 1}")

    def _properties(self, target: dict[str, Any], depth: int, lenient_end: bool) -> None:
        # ``lenient_end``: some encoders end an ECMA array at the end of the data without
        # writing the 00 00 09 terminator; accept that rather than dropping the metadata.
        data = self._data
        while True:
            if lenient_end and self.offset >= self._end:
                return
            key_len = self._u16("property name length")
            if key_len == 0 and self.offset < self._end and data[self.offset] == OBJECT_END:
                self.offset += 1
                return
            key = self._text(key_len, "property name")
            target[key] = self._value(depth)


def is_integral(value: Any) -> bool:
    """True for an AMF number holding a whole value (transaction ids, stream ids)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and float(value).is_integer()
    )
