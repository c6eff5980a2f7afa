"""AAC over RTP, sans I/O: RFC 3640 ``mpeg4-generic`` (AAC-hbr) and RFC 6416 ``MP4A-LATM``
(``cpresent=0``, what the FFmpeg CLI writes with ``-rtpflags latm``), payloads <-> raw AAC
frames, plus the SDP ``config=`` values that carry the AudioSpecificConfig.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ...codecs.aac import AacError, BitReader, parse_asc
from .payload import RtpPayload, RtpPayloadError

__all__ = [
    "AacFrame",
    "AacHbrDepacketizer",
    "AacHbrPacketizer",
    "LatmDepacketizer",
    "LatmPacketizer",
    "asc_from_latm_config",
    "latm_config",
    "mpeg4_generic_config",
    "parse_mpeg4_generic_config",
]

_SEQ_MOD = 1 << 16


@dataclass(frozen=True, slots=True)
class AacFrame:
    """One raw AAC access unit and its RTP timestamp (the sample rate is the clock)."""

    data: bytes
    timestamp: int


def _bits(data: bytes) -> BitReader:
    """MSB-first reader; running out of bits is an ``RtpPayloadError``."""
    return BitReader(data, RtpPayloadError, "bit field")


class _Sequence:
    """Sequence-number bookkeeping: is a packet new, and did packets go missing before it."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: int | None = None

    def step(self, sequence_number: int) -> tuple[bool, bool]:
        """(fresh, gap): a packet that is not fresh (duplicate or late) should be dropped."""
        seq = sequence_number % _SEQ_MOD
        if self.last is None:
            self.last = seq
            return True, False
        ahead = (seq - self.last - 1) % _SEQ_MOD
        if ahead >= _SEQ_MOD // 2:
            return False, False
        self.last = seq
        return True, ahead > 0


# --- RFC 3640 mpeg4-generic ------------------------------------------------------------------


def mpeg4_generic_config(asc: bytes) -> str:
    """The fmtp ``config=`` value (hex) for an AudioSpecificConfig."""
    return bytes(asc).hex()


def parse_mpeg4_generic_config(value: str) -> bytes:
    """The AudioSpecificConfig of an fmtp ``config=`` value (checked to parse)."""
    try:
        asc = bytes.fromhex(value.strip())
        parse_asc(asc)
    except (ValueError, AacError) as exc:
        raise RtpPayloadError(f"config={value!r}: {exc}") from exc
    return asc


@dataclass(slots=True)
class AacHbrDepacketizer:
    """``mpeg4-generic`` payloads -> AAC frames (defaults: AAC-hbr, sizelength=13,
    indexlength=3, indexdeltalength=3; no CTS/DTS deltas or auxiliary data).

    Several AUs in one packet get timestamps ``frame_samples`` apart; an AU fragmented over
    packets is kept until it is whole, dropped (counted in ``dropped``) on a gap.
    """

    size_length: int = 13
    index_length: int = 3
    index_delta_length: int = 3
    frame_samples: int = 1024
    dropped: int = 0
    _seq: _Sequence = field(default_factory=_Sequence)
    _fragment: bytearray | None = None
    _fragment_size: int = 0
    _fragment_ts: int = 0
    _skipping: bool = False

    def _headers(self, payload: bytes) -> tuple[list[tuple[int, int]], int]:
        """[(AU size, AU index)] and where the AU data starts."""
        if len(payload) < 2:
            raise RtpPayloadError("mpeg4-generic: no AU-headers-length")
        bits_total = (payload[0] << 8) | payload[1]
        start = 2 + (bits_total + 7) // 8
        if start > len(payload):
            raise RtpPayloadError(f"mpeg4-generic: AU headers of {bits_total} bits truncated")
        bits = _bits(payload[2:start])
        headers: list[tuple[int, int]] = []
        index = 0
        while bits.pos < bits_total:
            first = not headers
            size = bits.u(self.size_length)
            delta = bits.u(self.index_length if first else self.index_delta_length)
            index = delta if first else index + delta + 1
            headers.append((size, index))
        if bits.pos != bits_total:
            raise RtpPayloadError("mpeg4-generic: AU-headers-length splits an AU header")
        if not headers:
            raise RtpPayloadError("mpeg4-generic: no AU header")
        return headers, start

    def push(self, payload: bytes, marker: bool, timestamp: int, sequence_number: int
             ) -> list[AacFrame]:
        payload = bytes(payload)
        headers, start = self._headers(payload)
        data = payload[start:]
        fragment = len(headers) == 1 and len(data) < headers[0][0]
        if not fragment and sum(size for size, _ in headers) > len(data):
            raise RtpPayloadError("mpeg4-generic: AU data shorter than its headers say")
        fresh, gap = self._seq.step(sequence_number)
        if not fresh:
            return []
        size = headers[0][0]
        same_au = fragment and (timestamp, size) == (self._fragment_ts, self._fragment_size)
        if self._fragment is not None and (gap or not same_au):
            self._drop()
            if same_au:
                self._skipping = True  # the rest of the AU just dropped
        if self._skipping and same_au:
            return []
        self._skipping = False
        if fragment:
            # After a loss a middle fragment passes for a start: the AU then comes out short
            # when the marker arrives and is dropped, never emitted.
            if self._fragment is None:
                self._fragment = bytearray()
                self._fragment_size, self._fragment_ts = size, timestamp
            self._fragment += data
            if len(self._fragment) == size:
                au = bytes(self._fragment)
                self._fragment = None
                return [AacFrame(au, timestamp)]
            if len(self._fragment) > size or marker:
                self._drop()
            return []
        out: list[AacFrame] = []
        pos = 0
        first_index = headers[0][1]
        for size, index in headers:
            out.append(AacFrame(data[pos : pos + size],
                                timestamp + (index - first_index) * self.frame_samples))
            pos += size
        return out

    def _drop(self) -> None:
        self._fragment = None
        self.dropped += 1


@dataclass(frozen=True, slots=True)
class AacHbrPacketizer:
    """AAC frames -> ``mpeg4-generic`` payloads: as many whole AUs per packet as fit ``mtu``
    (at most ``max_aus``), an AU that does not fit alone fragmented, marker set on every
    packet that ends an AU."""

    mtu: int = 1200
    max_aus: int = 8
    size_length: int = 13
    index_length: int = 3
    index_delta_length: int = 3
    frame_samples: int = 1024

    def _header_bits(self, count: int) -> int:
        return self.size_length + self.index_length + (count - 1) * (
            self.size_length + self.index_delta_length)

    def _payload(self, sizes: Sequence[int], data: bytes) -> bytes:
        value = 0
        nbits = 0
        for i, size in enumerate(sizes):
            if size >= 1 << self.size_length:
                raise ValueError(f"AU of {size} bytes does not fit sizelength={self.size_length}")
            index_bits = self.index_length if i == 0 else self.index_delta_length
            value = (value << (self.size_length + index_bits)) | (size << index_bits)
            nbits += self.size_length + index_bits
        pad = -nbits % 8
        headers = (value << pad).to_bytes((nbits + pad) // 8, "big")
        return nbits.to_bytes(2, "big") + headers + data

    def packetize(self, aus: Sequence[bytes], timestamp: int) -> list[RtpPayload]:
        """Consecutive AUs, the first at ``timestamp``, into payloads."""
        out: list[RtpPayload] = []
        group: list[bytes] = []
        group_ts = timestamp

        def close() -> None:
            if group:
                out.append(RtpPayload(self._payload([len(a) for a in group], b"".join(group)),
                                      True, group_ts))
                group.clear()

        for i, au in enumerate(aus):
            au = bytes(au)
            ts = timestamp + i * self.frame_samples
            size_with = 2 + (self._header_bits(len(group) + 1) + 7) // 8 + sum(
                len(a) for a in group) + len(au)
            if group and (size_with > self.mtu or len(group) >= self.max_aus):
                close()
            if not group and 2 + (self._header_bits(1) + 7) // 8 + len(au) > self.mtu:
                out.extend(self._fragments(au, ts))
                continue
            if not group:
                group_ts = ts
            group.append(au)
        close()
        return out

    def _fragments(self, au: bytes, timestamp: int) -> list[RtpPayload]:
        room = self.mtu - 2 - (self._header_bits(1) + 7) // 8
        if room < 1:
            raise ValueError(f"mtu {self.mtu} too small for mpeg4-generic")
        parts = [au[pos : pos + room] for pos in range(0, len(au), room)]
        return [RtpPayload(self._payload([len(au)], part), i == len(parts) - 1, timestamp)
                for i, part in enumerate(parts)]


# --- RFC 6416 MP4A-LATM, cpresent=0 ----------------------------------------------------------


def _latm_value(bits: BitReader) -> int:
    count = bits.u(2) + 1
    return bits.u(8 * count)


def _asc_bit_length(bits: BitReader) -> None:
    """Read one AudioSpecificConfig (AAC family) to its end, to learn where it stops."""

    def aot() -> int:
        value = bits.u(5)
        return 32 + bits.u(6) if value == 31 else value

    def rate() -> None:
        if bits.u(4) == 15:
            bits.u(24)

    object_type = aot()
    rate()
    channel_config = bits.u(4)
    if object_type in (5, 29):
        rate()
        object_type = aot()
    if object_type not in (1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23):
        raise RtpPayloadError(f"LATM: audioObjectType {object_type} not supported")
    if channel_config == 0:
        raise RtpPayloadError("LATM: program config element not supported")
    bits.u(1)  # frameLengthFlag
    if bits.u(1):  # dependsOnCoreCoder
        bits.u(14)
    if bits.u(1):  # extensionFlag
        if object_type == 22:
            bits.u(16)
        if object_type in (17, 19, 20, 23):
            bits.u(3)
        bits.u(1)


def asc_from_latm_config(value: str) -> bytes:
    """The AudioSpecificConfig inside an fmtp ``config=`` StreamMuxConfig (hex), for one
    program and one layer (audioMuxVersion 0 or 1)."""
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError as exc:
        raise RtpPayloadError(f"LATM config={value!r} is not hex") from exc
    bits = _bits(raw)
    version = bits.u(1)
    if version and bits.u(1):
        raise RtpPayloadError("LATM: audioMuxVersionA 1 not supported")
    if version:
        _latm_value(bits)  # taraBufferFullness
    bits.u(1)  # allStreamsSameTimeFraming
    bits.u(6)  # numSubFrames
    if bits.u(4) != 0 or bits.u(3) != 0:
        raise RtpPayloadError("LATM: only one program with one layer is supported")
    if version:
        length = _latm_value(bits)
        start = bits.pos
        asc = bits.take(length)
        _asc_bit_length(_bits(asc))
        bits.pos = start + length
    else:
        start = bits.pos
        _asc_bit_length(bits)
        end = bits.pos
        bits.pos = start
        asc = bits.take(end - start)
    if bits.u(3) != 0:
        raise RtpPayloadError("LATM: only frameLengthType 0 is supported")
    try:
        parse_asc(asc)
    except AacError as exc:
        raise RtpPayloadError(f"LATM: {exc}") from exc
    return asc


def latm_config(asc: bytes) -> str:
    """StreamMuxConfig hex for fmtp ``config=`` (audioMuxVersion 0, one program, one layer,
    one subframe, frameLengthType 0, no other data, no CRC)."""
    reader = _bits(bytes(asc))
    _asc_bit_length(reader)
    length = reader.pos
    reader.pos = 0
    asc_bits = reader.u(length)
    # version 0, sameTimeFraming 1, numSubFrames 0, numProgram 0, numLayer 0
    value, nbits = 0b0_1_000000_0000_000, 15
    value = (value << length) | asc_bits
    nbits += length
    # frameLengthType 0, latmBufferFullness 0xFF, otherDataPresent 0, crcCheckPresent 0
    value = (value << 13) | (0b000_11111111_0_0)
    nbits += 13
    pad = -nbits % 8
    return (value << pad).to_bytes((nbits + pad) // 8, "big").hex()


def _latm_elements(data: bytes) -> tuple[list[bytes], int]:
    """Whole (PayloadLengthInfo, PayloadMux) pairs in ``data`` and the bytes they use."""
    frames: list[bytes] = []
    pos = 0
    while pos < len(data):
        size = 0
        cursor = pos
        while cursor < len(data) and data[cursor] == 0xFF:
            size += 255
            cursor += 1
        if cursor >= len(data):
            break
        size += data[cursor]
        cursor += 1
        if cursor + size > len(data):
            break
        frames.append(data[cursor : cursor + size])
        pos = cursor + size
    return frames, pos


@dataclass(slots=True)
class LatmDepacketizer:
    """``MP4A-LATM`` (cpresent=0) payloads -> AAC frames.

    An audioMuxElement split over packets (same timestamp) is joined; the marker is not
    relied on, since the FFmpeg CLI sets it on every fragment. A gap drops what is pending
    (counted in ``dropped``), and so do later packets of the timestamp the loss fell in.
    Subframes of one packet get timestamps ``frame_samples`` apart.
    """

    frame_samples: int = 1024
    max_pending: int = 1 << 16
    dropped: int = 0
    _seq: _Sequence = field(default_factory=_Sequence)
    _pending: bytearray = field(default_factory=bytearray)
    _pending_ts: int = 0
    _last_ts: int | None = None
    _skip_ts: int | None = None

    def push(self, payload: bytes, marker: bool, timestamp: int, sequence_number: int
             ) -> list[AacFrame]:
        payload = bytes(payload)
        if not payload:
            raise RtpPayloadError("MP4A-LATM: empty payload")
        fresh, gap = self._seq.step(sequence_number)
        if not fresh:
            return []
        if gap and timestamp == self._last_ts:
            self._skip_ts = timestamp  # the rest of an element whose start was lost
        self._last_ts = timestamp
        if self._skip_ts == timestamp:
            return []
        self._skip_ts = None
        if self._pending and (gap or timestamp != self._pending_ts):
            self._pending.clear()
            self.dropped += 1
        self._pending += payload
        self._pending_ts = timestamp
        frames, used = _latm_elements(bytes(self._pending))
        del self._pending[:used]
        if len(self._pending) > self.max_pending:
            self._pending.clear()
            self.dropped += 1
            raise RtpPayloadError("MP4A-LATM: element larger than max_pending")
        return [AacFrame(frame, timestamp + i * self.frame_samples)
                for i, frame in enumerate(frames)]


@dataclass(frozen=True, slots=True)
class LatmPacketizer:
    """AAC frames -> ``MP4A-LATM`` (cpresent=0) payloads: one audioMuxElement per frame,
    fragmented when it exceeds ``mtu``, the marker on its last packet."""

    mtu: int = 1200

    def packetize(self, frame: bytes, timestamp: int) -> list[RtpPayload]:
        if self.mtu < 2:
            raise ValueError(f"mtu {self.mtu} too small")
        size = len(frame)
        element = b"\xff" * (size // 255) + bytes((size % 255,)) + bytes(frame)
        parts = [element[pos : pos + self.mtu] for pos in range(0, len(element), self.mtu)]
        return [RtpPayload(part, i == len(parts) - 1, timestamp) for i, part in enumerate(parts)]
