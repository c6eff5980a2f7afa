"""RTMP message vocabulary: type ids, user-control events, payload builders and parsers.

Builders return message *payloads*; framing them into chunks is :mod:`.chunk`'s job, so this
module stays free of per-connection state and of the chunk layer (which imports it).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Final

from . import amf0

__all__ = [
    "Command",
    "MessageError",
    "RtmpError",
    "UserControl",
    "pack_abort",
    "pack_acknowledgement",
    "pack_command",
    "pack_set_chunk_size",
    "pack_set_peer_bandwidth",
    "pack_status",
    "pack_user_control",
    "pack_window_ack_size",
    "split_aggregate",
    "unpack_command",
    "unpack_data",
    "unpack_u32",
    "unpack_user_control",
]


class RtmpError(ValueError):
    """Base of every error raised because of what an RTMP peer sent (or local misuse)."""


class MessageError(RtmpError):
    """A complete message whose payload is malformed (short control message, bad AMF)."""


# Message type ids.
SET_CHUNK_SIZE: Final = 1
ABORT: Final = 2
ACK: Final = 3
USER_CONTROL: Final = 4
WINDOW_ACK_SIZE: Final = 5
SET_PEER_BANDWIDTH: Final = 6
AUDIO: Final = 8
VIDEO: Final = 9
DATA_AMF3: Final = 15
SHARED_OBJECT_AMF3: Final = 16
COMMAND_AMF3: Final = 17
DATA_AMF0: Final = 18
SHARED_OBJECT_AMF0: Final = 19
COMMAND_AMF0: Final = 20
AGGREGATE: Final = 22

# User control event ids.
STREAM_BEGIN: Final = 0
STREAM_EOF: Final = 1
STREAM_DRY: Final = 2
SET_BUFFER_LENGTH: Final = 3
STREAM_IS_RECORDED: Final = 4
PING_REQUEST: Final = 6
PING_RESPONSE: Final = 7

# Set Peer Bandwidth limit types.
LIMIT_HARD: Final = 0
LIMIT_SOFT: Final = 1
LIMIT_DYNAMIC: Final = 2

# Chunk stream ids used by this gateway (the usual FMS / FFmpeg layout).
CSID_PROTOCOL: Final = 2
CSID_COMMAND: Final = 3
CSID_AUDIO: Final = 4
CSID_DATA: Final = 5
CSID_VIDEO: Final = 6
CSID_STREAM: Final = 8

_U32 = struct.Struct(">I")
_U32_U8 = struct.Struct(">IB")
_U16_U32 = struct.Struct(">HI")
_U16_U32_U32 = struct.Struct(">HII")


# --------------------------------------------------------------------------- protocol control


def pack_set_chunk_size(size: int) -> bytes:
    if not 1 <= size <= 0x7FFFFFFF:
        raise ValueError(f"chunk size {size} out of range 1..2**31-1")
    return _U32.pack(size)


def pack_abort(csid: int) -> bytes:
    return _U32.pack(csid)


def pack_acknowledgement(sequence: int) -> bytes:
    return _U32.pack(sequence & 0xFFFFFFFF)


def pack_window_ack_size(size: int) -> bytes:
    return _U32.pack(size)


def pack_set_peer_bandwidth(size: int, limit: int = LIMIT_DYNAMIC) -> bytes:
    return _U32_U8.pack(size, limit)


def pack_user_control(event: int, value: int, extra: int | None = None) -> bytes:
    """Event payload; ``extra`` is the buffer length (ms) of SetBufferLength."""
    if extra is None:
        return _U16_U32.pack(event, value & 0xFFFFFFFF)
    return _U16_U32_U32.pack(event, value & 0xFFFFFFFF, extra & 0xFFFFFFFF)


def unpack_u32(payload: bytes, what: str = "control message") -> int:
    if len(payload) < 4:
        raise MessageError(f"{what} payload too short ({len(payload)} bytes, need 4)")
    value: int = _U32.unpack_from(payload)[0]
    return value


@dataclass(frozen=True, slots=True)
class UserControl:
    event: int
    value: int
    extra: int | None = None


def unpack_user_control(payload: bytes) -> UserControl:
    if len(payload) < 6:
        raise MessageError(f"user control message too short ({len(payload)} bytes)")
    if len(payload) >= 10:
        event, value, extra = _U16_U32_U32.unpack_from(payload)
        if event == SET_BUFFER_LENGTH:
            return UserControl(event, value, extra)
        return UserControl(event, value)
    event, value = _U16_U32.unpack_from(payload)
    return UserControl(event, value)


# --------------------------------------------------------------------------- commands and data


@dataclass(slots=True)
class Command:
    """A decoded command message: name, transaction id, command object, then arguments."""

    name: str
    transaction_id: float
    command_object: Any = None
    args: list[Any] = field(default_factory=list)


def pack_command(name: str, transaction_id: float, command_object: Any = None, *args: Any) -> bytes:
    return amf0.encode(name, transaction_id, command_object, *args)


def pack_status(level: str, code: str, description: str, **info: Any) -> bytes:
    """``onStatus`` payload; ``info`` adds fields such as ``details`` or ``clientid``."""
    return amf0.encode(
        "onStatus",
        0,
        None,
        {"level": level, "code": code, "description": description, **info},
    )


def _amf_body(payload: bytes, amf3: bool, what: str) -> bytes | memoryview:
    # AMF3 command/data messages (types 17/15) start with a format byte, then AMF0 values
    # (Flash switches individual values to AMF3 with the AVM+ marker, which we reject).
    if not amf3:
        return payload
    if not payload or payload[0] != 0:
        raise MessageError(f"{what}: AMF3-encoded body is not supported")
    return memoryview(payload)[1:]


def unpack_command(payload: bytes, amf3: bool = False) -> Command:
    body = _amf_body(payload, amf3, "command")
    try:
        values = amf0.decode_all(body)
    except amf0.AMF0Error as exc:
        raise MessageError(f"malformed command: {exc}") from None
    if not values or not isinstance(values[0], str):
        raise MessageError("command message does not start with a command name")
    name = values[0]
    tid = values[1] if len(values) > 1 else 0.0
    if isinstance(tid, bool) or not isinstance(tid, (int, float)) or not math.isfinite(tid):
        tid = 0.0
    obj = values[2] if len(values) > 2 else None
    return Command(name, float(tid), obj, values[3:])


def unpack_data(payload: bytes, amf3: bool = False) -> list[Any]:
    body = _amf_body(payload, amf3, "data message")
    try:
        return amf0.decode_all(body)
    except amf0.AMF0Error as exc:
        raise MessageError(f"malformed data message: {exc}") from None


def split_aggregate(payload: bytes, timestamp: int) -> list[tuple[int, int, bytes]]:
    """Sub-messages ``(type_id, timestamp, payload)`` of an Aggregate message.

    Sub-message timestamps are rebased so the first one equals the aggregate's timestamp.
    """
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    end = len(payload)
    base: int | None = None
    while pos < end:
        if pos + 11 > end:
            raise MessageError("aggregate message: truncated sub-message header")
        type_id = payload[pos]
        size = int.from_bytes(payload[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(payload[pos + 4 : pos + 7], "big") | (payload[pos + 7] << 24)
        body_start = pos + 11
        body_end = body_start + size
        if body_end + 4 > end:
            raise MessageError("aggregate message: sub-message overruns the payload")
        if base is None:
            base = ts
        out.append((type_id, (timestamp + ts - base) & 0xFFFFFFFF, payload[body_start:body_end]))
        pos = body_end + 4  # skip the back pointer
    return out
