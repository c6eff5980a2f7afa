"""RTMP chunk stream: reassembling messages from chunks, and framing messages into chunks.

The reader only acts on a chunk once all of it (headers and payload) is buffered, so its
output never depends on how the input was split. It applies Set Chunk Size and Abort itself,
in order, because they change how the very next chunk must be parsed.

After a header that used the extended timestamp, the 4 bytes following a type-3 basic
header are taken as a repeated extended timestamp only if they equal it (FFmpeg, Adobe and
librtmp >= 2.4 repeat it; old encoders don't). So such a type-3 chunk is parsed once 4 bytes
after its basic header are buffered: a tiny final message waits for the next bytes.

The writer is a pure function: every message starts with a type-0 header (absolute timestamp)
and continues with type-3 chunks, so the same bytes can be sent to any number of peers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from .messages import ABORT, AUDIO, SET_CHUNK_SIZE, VIDEO, RtmpError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_CHUNK_SIZE",
    "ChunkError",
    "ChunkReader",
    "Message",
    "encode_message",
]

DEFAULT_CHUNK_SIZE: Final = 128
MAX_CHUNK_SIZE: Final = 0x7FFFFFFF
MAX_CSID: Final = 65599
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
DEFAULT_MAX_CHUNK_STREAMS: Final = 64

_EXTENDED: Final = 0xFFFFFF
_MASK32: Final = 0xFFFFFFFF

_U32 = struct.Struct(">I")
_U32_LE = struct.Struct("<I")
_HDR0 = struct.Struct(">BIHB")  # basic byte, ts<<8|len>>16, len&0xffff, type id


class ChunkError(RtmpError):
    """The chunk stream is malformed or exceeds a configured bound."""


@dataclass(slots=True)
class Message:
    """One reassembled RTMP message.

    ``size`` is the length announced in the chunk header; it differs from ``len(payload)``
    only when the reader was told to keep just a prefix of media payloads.
    """

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes = field(repr=False)
    csid: int = 3
    size: int = field(default=0, compare=False)


class _ChunkStream:
    """Per-csid header state plus the message being reassembled on it."""

    __slots__ = (
        "buffered",
        "delta",
        "ext",
        "ext_value",
        "keep",
        "length",
        "parts",
        "remaining",
        "stream_id",
        "timestamp",
        "type_id",
    )

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.ext = False  # last type 0/1/2 header used the extended timestamp field
        self.ext_value = 0
        self.remaining = 0  # bytes of the current message still to come (0: none started)
        self.parts: list[bytes] = []
        self.keep = 0  # payload bytes still to keep (less than remaining in prefix mode)
        self.buffered = 0


class ChunkReader:
    """Turns received bytes into :class:`Message` objects.

    ``media_prefix``: when not None, audio/video payloads are cut to that many bytes (the
    full length stays in ``Message.size``), which spares load generators the copies.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_chunk_streams: int = DEFAULT_MAX_CHUNK_STREAMS,
        max_pending: int | None = None,
        media_prefix: int | None = None,
    ) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.max_chunk_streams = max_chunk_streams
        # Partially assembled bytes over all csids; interleaving several huge messages at
        # once is legal but never needed, so cap it to bound memory per connection.
        self.max_pending = 2 * max_message_size if max_pending is None else max_pending
        self.media_prefix = media_prefix
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into messages (header bytes included)."""
        return len(self._buf) + self._pending

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Feed bytes; return the messages they complete, in order."""
        if self._error is not None:
            raise ChunkError(f"chunk stream already failed: {self._error}")
        buf = self._buf
        buf += data
        out: list[Message] = []
        try:
            consumed = self._parse(buf, out)
        except ChunkError as exc:
            self._error = str(exc)
            raise
        if consumed:
            del buf[:consumed]  # CPython makes front deletion of a bytearray cheap
        return out

    def _parse(self, buf: bytearray, out: list[Message]) -> int:
        n = len(buf)
        pos = 0
        streams = self._streams
        u32 = _U32.unpack_from
        with memoryview(buf) as mv:
            while pos < n:
                b0 = buf[pos]
                fmt = b0 >> 6
                csid = b0 & 0x3F
                p = pos + 1
                if csid == 0:
                    if p >= n:
                        break
                    csid = buf[p] + 64
                    p += 1
                elif csid == 1:
                    if p + 1 >= n:
                        break
                    csid = buf[p] + (buf[p + 1] << 8) + 64
                    p += 2
                st = streams.get(csid)

                if fmt == 3:
                    if st is None:
                        raise ChunkError(f"type-3 chunk on csid {csid} with no previous header")
                    continuing = st.remaining > 0
                    if continuing:
                        timestamp = st.timestamp
                    else:
                        timestamp = (st.timestamp + st.delta) & _MASK32
                    if st.ext:
                        # Repeated extended timestamp: FFmpeg, librtmp >= 2.4 and Adobe send
                        # it, older encoders don't. Take the 4 bytes as such only when they
                        # match the header's value (or the absolute timestamp some send).
                        if p + 4 > n:
                            break
                        v = u32(buf, p)[0]
                        if v == st.ext_value or v == timestamp:
                            p += 4
                    length = st.length
                    remaining = st.remaining if continuing else length
                    clen = self.chunk_size if remaining > self.chunk_size else remaining
                    if p + clen > n:
                        break
                    if not continuing:
                        st.timestamp = timestamp
                        st.remaining = length
                        st.keep = self._keep_for(st.type_id, length)
                else:
                    if st is not None and st.remaining:
                        raise ChunkError(
                            f"type-{fmt} header on csid {csid} interrupts a message with "
                            f"{st.remaining} bytes still missing"
                        )
                    if fmt == 0:
                        if p + 11 > n:
                            break
                        tsf = u32(buf, p)[0] >> 8
                        length = u32(buf, p + 3)[0] >> 8
                        type_id = buf[p + 6]
                        stream_id = _U32_LE.unpack_from(buf, p + 7)[0]
                        p += 11
                    else:
                        if st is None:
                            raise ChunkError(f"type-{fmt} chunk on csid {csid} with no previous header")
                        if fmt == 1:
                            if p + 7 > n:
                                break
                            tsf = u32(buf, p)[0] >> 8
                            length = u32(buf, p + 3)[0] >> 8
                            type_id = buf[p + 6]
                            p += 7
                        else:
                            if p + 3 > n:
                                break
                            tsf = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
                            length = st.length
                            type_id = st.type_id
                            p += 3
                        stream_id = st.stream_id
                    ext = tsf == _EXTENDED
                    if ext:
                        if p + 4 > n:
                            break
                        tsf = u32(buf, p)[0]
                        p += 4
                    if length > self.max_message_size:
                        raise ChunkError(
                            f"message of {length} bytes on csid {csid} exceeds the limit of "
                            f"{self.max_message_size}"
                        )
                    clen = self.chunk_size if length > self.chunk_size else length
                    if p + clen > n:
                        break
                    # Whole chunk is buffered: commit the header.
                    if st is None:
                        if len(streams) >= self.max_chunk_streams:
                            raise ChunkError(
                                f"more than {self.max_chunk_streams} chunk streams in use"
                            )
                        st = streams[csid] = _ChunkStream()
                    if fmt == 0:
                        st.timestamp = tsf
                    else:
                        st.timestamp = (st.timestamp + tsf) & _MASK32
                    st.delta = tsf  # after type 0 the spec makes the absolute value the delta
                    st.ext = ext
                    st.ext_value = tsf
                    st.length = length
                    st.type_id = type_id
                    st.stream_id = stream_id
                    st.remaining = length
                    st.keep = self._keep_for(type_id, length)

                # Chunk payload [p, p+clen) is present.
                end = p + clen
                if clen == st.remaining and not st.parts:
                    # Whole message in one chunk: the common case, one copy.
                    keep = st.keep
                    payload = bytes(mv[p:end]) if keep >= clen else bytes(mv[p : p + keep])
                    st.remaining = 0
                    self._emit(st, csid, payload, out)
                else:
                    keep = st.keep
                    if keep:
                        take = clen if keep >= clen else keep
                        self._pending += take
                        if self._pending > self.max_pending:
                            raise ChunkError(
                                f"more than {self.max_pending} bytes of partial messages buffered"
                            )
                        st.parts.append(bytes(mv[p : p + take]))
                        st.keep = keep - take
                        st.buffered += take
                    st.remaining -= clen
                    if not st.remaining:
                        payload = b"".join(st.parts)
                        st.parts.clear()
                        self._pending -= st.buffered
                        st.buffered = 0
                        self._emit(st, csid, payload, out)
                pos = end
        return pos

    def _keep_for(self, type_id: int, length: int) -> int:
        prefix = self.media_prefix
        if prefix is not None and (type_id == AUDIO or type_id == VIDEO) and prefix < length:
            return prefix
        return length

    def _emit(self, st: _ChunkStream, csid: int, payload: bytes, out: list[Message]) -> None:
        type_id = st.type_id
        out.append(Message(type_id, st.stream_id, st.timestamp, payload, csid, st.length))
        if type_id == SET_CHUNK_SIZE or type_id == ABORT:
            self._control(type_id, payload)

    def _control(self, type_id: int, payload: bytes) -> None:
        if len(payload) < 4:
            name = "Set Chunk Size" if type_id == SET_CHUNK_SIZE else "Abort"
            raise ChunkError(f"{name} message with a {len(payload)}-byte payload")
        value: int = _U32.unpack_from(payload)[0]
        if type_id == SET_CHUNK_SIZE:
            if value == 0 or value > MAX_CHUNK_SIZE:
                raise ChunkError(f"peer set an invalid chunk size {value}")
            self.chunk_size = value
        else:
            st = self._streams.get(value)
            if st is not None and st.remaining:
                self._pending -= st.buffered
                st.parts.clear()
                st.buffered = 0
                st.remaining = 0


# --------------------------------------------------------------------------- writer


def _basic_header(fmt: int, csid: int) -> bytes:
    if 2 <= csid <= 63:
        return bytes(((fmt << 6) | csid,))
    if 64 <= csid <= 319:
        return bytes((fmt << 6, csid - 64))
    if 320 <= csid <= MAX_CSID:
        v = csid - 64
        return bytes(((fmt << 6) | 1, v & 0xFF, v >> 8))
    raise ValueError(f"chunk stream id {csid} out of range 2..{MAX_CSID}")


_TYPE3 = {c: _basic_header(3, c) for c in range(2, 64)}
_SIDS = {s: _U32_LE.pack(s) for s in range(16)}


def encode_message(
    type_id: int,
    stream_id: int,
    timestamp: int,
    payload: bytes | bytearray | memoryview,
    csid: int = 3,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """Frame one message; the result depends only on the arguments (safe to share)."""
    n = len(payload)
    if n > 0xFFFFFF:
        raise ValueError(f"message of {n} bytes does not fit RTMP's 24-bit length")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} out of range")
    timestamp &= _MASK32
    sid = _SIDS.get(stream_id) or _U32_LE.pack(stream_id)
    ext = timestamp >= _EXTENDED
    tsf = _EXTENDED if ext else timestamp
    if 2 <= csid <= 63:
        head = _HDR0.pack(csid, (tsf << 8) | (n >> 16), n & 0xFFFF, type_id) + sid
        cont = _TYPE3[csid]
    else:
        head = _basic_header(0, csid) + _HDR0.pack(0, (tsf << 8) | (n >> 16), n & 0xFFFF, type_id)[1:] + sid
        cont = _basic_header(3, csid)
    if ext:
        tail = _U32.pack(timestamp)
        head += tail
        cont += tail  # repeated on continuation chunks, as FFmpeg and Adobe expect
    if n <= chunk_size:
        return head + payload
    mv = memoryview(payload)
    parts: list[bytes | memoryview] = [head + mv[:chunk_size]]
    parts += [mv[i : i + chunk_size] for i in range(chunk_size, n, chunk_size)]
    return cont.join(parts)
