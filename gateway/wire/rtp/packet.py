"""RTP and RTCP packets (RFC 3550, feedback from RFC 4585 / RFC 5104) parsed and serialized
without I/O, for the plain-UDP protocol: anything malformed raises ``RtpError`` / ``RtcpError``
with its reason, so a socket loop can drop the datagram and go on."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "Bye", "Fir", "FirEntry", "Nack", "Pli", "ReceiverReport", "ReportBlock", "RtcpError",
    "RtcpPacket", "RtcpUnknown", "RtpError", "RtpExtension", "RtpPacket", "Sdes", "SdesChunk",
    "SenderReport", "compound", "is_rtcp", "ntp_from_unix", "ntp_middle", "parse_rtcp",
    "parse_rtp", "rtp_header", "seq_delta", "unix_from_ntp",
]

RTP_HEADER_SIZE = 12
RTCP_HEADER_SIZE = 4
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_RTPFB = 205  # transport-layer feedback (RFC 4585)
RTCP_PSFB = 206  # payload-specific feedback (RFC 4585)
FMT_NACK = 1  # RTPFB: generic NACK
FMT_PLI = 1  # PSFB: picture loss indication
FMT_FIR = 4  # PSFB: full intra request (RFC 5104)
SDES_END = 0
SDES_CNAME = 1

_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence number, timestamp, SSRC
_RTCP_HEADER = struct.Struct("!BBH")  # V/P/count, packet type, length in 32-bit words - 1
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC, NTP, RTP time, packet count, octet count
_REPORT = struct.Struct("!IB3sIIII")  # SSRC, fraction lost, cumulative lost, ext. seq, ...
_TWO_SSRC = struct.Struct("!II")  # feedback: sender SSRC, media source SSRC
_NACK_FCI = struct.Struct("!HH")  # PID, BLP
_FIR_FCI = struct.Struct("!IB3x")  # SSRC, command sequence number, reserved


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet; the message says why."""


class RtcpError(ValueError):
    """A datagram that is not a well-formed RTCP compound packet; the message says why."""


# --------------------------------------------------------------------------- helpers


def ntp_from_unix(seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900) of a Unix time in seconds."""
    frac, whole = math.modf(seconds)
    if frac < 0:
        frac, whole = frac + 1.0, whole - 1.0
    low = min(int(frac * (1 << 32)), 0xFFFFFFFF)
    return (((int(whole) + NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32) | low


def unix_from_ntp(ntp: int) -> float:
    """Unix seconds of a 64-bit NTP timestamp (era 0: before 2036)."""
    return (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: a report block's LSR for that sender report."""
    return (ntp >> 16) & 0xFFFFFFFF


def seq_delta(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers across the wrap, in -32768..32767: positive when
    ``a`` comes after ``b``."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: on a port carrying both, a second byte of 192..223 is RTCP
    (RTP payload types 64..95 with the marker bit are the range that must not be used)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


# --------------------------------------------------------------------------- RTP


@dataclass(slots=True)
class RtpExtension:
    """A header extension, kept opaque: its profile (0xBEDE one-byte, 0x100x two-byte, ...)
    and its data (a multiple of 4 bytes)."""

    profile: int
    data: bytes


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet. ``padding`` is the padding length (the count byte included; 0 for none):
    its bytes are not kept, and ``serialize`` writes zeros."""

    version: ClassVar[int] = 2
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension: RtpExtension | None = None
    padding: int = 0

    def serialize(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} is not 0..127")
        if len(self.csrc) > 15:
            raise RtpError(f"{len(self.csrc)} CSRCs, at most 15")
        if not 0 <= self.padding <= 255:
            raise RtpError(f"padding {self.padding} is not 0..255")
        ext = self.extension
        first = 0x80 | (0x20 if self.padding else 0) | (0x10 if ext else 0) | len(self.csrc)
        parts = [_HEADER.pack(first, (0x80 if self.marker else 0) | self.payload_type,
                              self.sequence_number, self.timestamp, self.ssrc)]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if ext is not None:
            words, rest = divmod(len(ext.data), 4)
            if rest or words > 0xFFFF:
                raise RtpError(f"extension data of {len(ext.data)} bytes is not 4 * 0..65535")
            parts.append(struct.pack("!HH", ext.profile, words))
            parts.append(ext.data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def parse_rtp(data: bytes) -> RtpPacket:
    """The RTP packet in ``data`` (one datagram), or ``RtpError`` saying what is wrong."""
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise RtpError(f"RTP packet of {size} bytes is shorter than its 12-byte header")
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    cc = first & 0x0F
    pos = RTP_HEADER_SIZE + 4 * cc
    if size < pos:
        raise RtpError(f"CSRC count {cc} needs {pos} bytes, the packet has {size}")
    csrc = list(struct.unpack_from(f"!{cc}I", data, RTP_HEADER_SIZE)) if cc else []
    extension = None
    if first & 0x10:
        if size < pos + 4:
            raise RtpError(f"extension header needs {pos + 4} bytes, the packet has {size}")
        profile, words = struct.unpack_from("!HH", data, pos)
        pos += 4
        end = pos + 4 * words
        if size < end:
            raise RtpError(f"extension length {words} words needs {end} bytes, "
                           f"the packet has {size}")
        extension = RtpExtension(profile, bytes(data[pos:end]))
        pos = end
    padding = 0
    end = size
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or padding > size - pos:
            raise RtpError(f"padding length {padding} is not 1..{size - pos} "
                           f"(the bytes after the header)")
        end -= padding
    return RtpPacket(payload_type=second & 0x7F, sequence_number=seq, timestamp=ts, ssrc=ssrc,
                     payload=bytes(data[pos:end]), marker=bool(second & 0x80), csrc=csrc,
                     extension=extension, padding=padding)


def rtp_header(marker: bool, pt: int, seq: int, ts: int, ssrc: int) -> bytes:
    """The 12-byte header of a plain packet (no CSRC, extension or padding), for egress where
    one payload is shared and only the header differs per viewer. ``seq`` and ``ts`` are taken
    modulo 2^16 and 2^32, so counters can just grow."""
    return _HEADER.pack(0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


# --------------------------------------------------------------------------- RTCP


def _rtcp(packet_type: int, count: int, payload: bytes) -> bytes:
    """One RTCP packet: header and ``payload`` (already a multiple of 4 bytes)."""
    if not 0 <= count <= 31:
        raise RtcpError(f"count {count} is not 0..31")
    return _RTCP_HEADER.pack(0x80 | count, packet_type, len(payload) // 4) + payload


@dataclass(slots=True)
class ReportBlock:
    """Reception statistics for one source (RFC 3550 6.4.1); ``packets_lost`` is signed."""

    ssrc: int
    fraction_lost: int = 0  # 0..255, lost fraction * 256 since the last report
    packets_lost: int = 0  # cumulative, 24-bit signed (duplicates can make it negative)
    highest_sequence: int = 0  # extended highest sequence number received
    jitter: int = 0  # in RTP timestamp units
    lsr: int = 0  # ntp_middle() of the last sender report received
    dlsr: int = 0  # delay since that report, in 1/65536 s

    def serialize(self) -> bytes:
        lost = max(-0x800000, min(self.packets_lost, 0x7FFFFF)) & 0xFFFFFF  # clamped (6.4.1)
        return _REPORT.pack(self.ssrc, self.fraction_lost, lost.to_bytes(3, "big"),
                            self.highest_sequence, self.jitter, self.lsr, self.dlsr)

    @classmethod
    def parse(cls, data: bytes, pos: int) -> ReportBlock:
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _REPORT.unpack_from(data, pos)
        n = int.from_bytes(lost, "big")
        return cls(ssrc, fraction, n - (1 << 24) if n & 0x800000 else n, highest, jitter, lsr,
                   dlsr)


def _reports(reports: list[ReportBlock]) -> bytes:
    return b"".join(r.serialize() for r in reports)


@dataclass(slots=True)
class SenderReport:
    """SR (200): the sender's NTP time (see ``ntp_from_unix``) and the RTP time of the same
    instant, its counts, and report blocks on what it receives."""

    ssrc: int
    ntp_time: int
    rtp_time: int
    packet_count: int = 0
    octet_count: int = 0
    reports: list[ReportBlock] = field(default_factory=list)

    def serialize(self) -> bytes:
        info = _SENDER_INFO.pack(self.ssrc, self.ntp_time, self.rtp_time, self.packet_count,
                                 self.octet_count)
        return _rtcp(RTCP_SR, len(self.reports), info + _reports(self.reports))


@dataclass(slots=True)
class ReceiverReport:
    """RR (201): report blocks from a participant that does not send."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    def serialize(self) -> bytes:
        return _rtcp(RTCP_RR, len(self.reports),
                     struct.pack("!I", self.ssrc) + _reports(self.reports))


@dataclass(slots=True)
class SdesChunk:
    """One source's description; only CNAME is kept (other items are skipped)."""

    ssrc: int
    cname: str | None = None


@dataclass(slots=True)
class Sdes:
    """SDES (202): source descriptions, one chunk per source."""

    chunks: list[SdesChunk] = field(default_factory=list)

    def serialize(self) -> bytes:
        parts = []
        for chunk in self.chunks:
            body = struct.pack("!I", chunk.ssrc)
            if chunk.cname is not None:
                name = chunk.cname.encode()
                if len(name) > 255:
                    raise RtcpError(f"CNAME of {len(name)} bytes, at most 255")
                body += bytes((SDES_CNAME, len(name))) + name
            body += bytes(4 - len(body) % 4)  # END item, then padding to a 32-bit boundary
            parts.append(body)
        return _rtcp(RTCP_SDES, len(self.chunks), b"".join(parts))


@dataclass(slots=True)
class Bye:
    """BYE (203): these sources leave, with an optional reason."""

    sources: list[int] = field(default_factory=list)
    reason: str = ""

    def serialize(self) -> bytes:
        body = struct.pack(f"!{len(self.sources)}I", *self.sources)
        if self.reason:
            text = self.reason.encode()
            if len(text) > 255:
                raise RtcpError(f"BYE reason of {len(text)} bytes, at most 255")
            body += bytes((len(text),)) + text
            body += bytes(-len(body) % 4)
        return _rtcp(RTCP_BYE, len(self.sources), body)


@dataclass(slots=True)
class Nack:
    """Generic NACK (RTPFB 205, FMT 1): the sequence numbers ``media_ssrc`` should resend."""

    sender_ssrc: int
    media_ssrc: int
    lost: list[int] = field(default_factory=list)

    def serialize(self) -> bytes:
        """``lost`` in ascending order (modulo 2^16) packs best: each PID takes the next 16
        sequence numbers into its BLP; a number already covered is not repeated."""
        pairs: list[list[int]] = []
        for seq in self.lost:
            seq &= 0xFFFF
            if pairs:
                d = (seq - pairs[-1][0]) & 0xFFFF
                if d == 0:
                    continue
                if d <= 16:
                    pairs[-1][1] |= 1 << (d - 1)
                    continue
            pairs.append([seq, 0])
        fci = b"".join(_NACK_FCI.pack(pid, blp) for pid, blp in pairs)
        return _rtcp(RTCP_RTPFB, FMT_NACK, _TWO_SSRC.pack(self.sender_ssrc, self.media_ssrc) + fci)


@dataclass(slots=True)
class Pli:
    """Picture loss indication (PSFB 206, FMT 1): ``media_ssrc`` should send a key frame."""

    sender_ssrc: int
    media_ssrc: int

    def serialize(self) -> bytes:
        return _rtcp(RTCP_PSFB, FMT_PLI, _TWO_SSRC.pack(self.sender_ssrc, self.media_ssrc))


@dataclass(slots=True)
class FirEntry:
    """One FIR request: the source asked for a key frame and the command sequence number
    (incremented per new request, so a repeat is recognised)."""

    ssrc: int
    sequence_number: int


@dataclass(slots=True)
class Fir:
    """Full intra request (PSFB 206, FMT 4, RFC 5104); ``media_ssrc`` is 0 by the RFC, the
    sources are in the entries."""

    sender_ssrc: int
    entries: list[FirEntry] = field(default_factory=list)
    media_ssrc: int = 0

    def serialize(self) -> bytes:
        fci = b"".join(_FIR_FCI.pack(e.ssrc, e.sequence_number) for e in self.entries)
        return _rtcp(RTCP_PSFB, FMT_FIR, _TWO_SSRC.pack(self.sender_ssrc, self.media_ssrc) + fci)


@dataclass(slots=True)
class RtcpUnknown:
    """Any other RTCP packet (APP, XR, REMB, transport-wide CC, ...), kept as its payload
    (padding removed)."""

    packet_type: int
    count: int  # the header's 5-bit count / FMT field
    payload: bytes = b""

    def serialize(self) -> bytes:
        return _rtcp(self.packet_type, self.count, self.payload + bytes(-len(self.payload) % 4))


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | Nack | Pli | Fir | RtcpUnknown


def compound(*packets: RtcpPacket) -> bytes:
    """A compound packet: the packets back to back, in order (RFC 3550 wants an SR or RR
    first; RFC 5506 reduced-size RTCP sends feedback alone)."""
    return b"".join(p.serialize() for p in packets)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """The packets of an RTCP compound packet (one datagram), or ``RtcpError`` saying what is
    wrong. Unknown packet types and feedback formats come back as ``RtcpUnknown``."""
    packets: list[RtcpPacket] = []
    pos, size = 0, len(data)
    if not size:
        raise RtcpError("empty RTCP packet")
    while pos < size:
        if size - pos < RTCP_HEADER_SIZE:
            raise RtcpError(f"RTCP header at byte {pos} truncated: {size - pos} bytes left")
        first, ptype, words = _RTCP_HEADER.unpack_from(data, pos)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version {first >> 6} at byte {pos}, expected 2")
        start = pos + RTCP_HEADER_SIZE
        end = start + 4 * words
        if end > size:
            raise RtcpError(f"RTCP packet type {ptype} at byte {pos}: length {words} words "
                            f"needs {end - pos} bytes, {size - pos} left")
        body = bytes(data[start:end])
        if first & 0x20:
            pad = body[-1] if body else 0
            if pad == 0 or pad > len(body):
                raise RtcpError(f"RTCP packet type {ptype} at byte {pos}: padding length {pad} "
                                f"is not 1..{len(body)}")
            body = body[:-pad]
        packets.append(_parse_one(ptype, first & 0x1F, body))
        pos = end
    return packets


def _parse_one(ptype: int, count: int, body: bytes) -> RtcpPacket:
    size = len(body)
    if ptype == RTCP_SR:
        need = _SENDER_INFO.size + _REPORT.size * count
        if size < need:
            raise RtcpError(f"SR with {count} report blocks needs {need} bytes, has {size}")
        ssrc, ntp, rtp, packets, octets = _SENDER_INFO.unpack_from(body)
        return SenderReport(ssrc, ntp, rtp, packets, octets, _parse_reports(body, 24, count))
    if ptype == RTCP_RR:
        need = 4 + _REPORT.size * count
        if size < need:
            raise RtcpError(f"RR with {count} report blocks needs {need} bytes, has {size}")
        (ssrc,) = struct.unpack_from("!I", body)
        return ReceiverReport(ssrc, _parse_reports(body, 4, count))
    if ptype == RTCP_SDES:
        return _parse_sdes(body, count)
    if ptype == RTCP_BYE:
        need = 4 * count
        if size < need:
            raise RtcpError(f"BYE with {count} sources needs {need} bytes, has {size}")
        sources = list(struct.unpack_from(f"!{count}I", body))
        reason = ""
        if size > need:
            length = body[need]
            if need + 1 + length > size:
                raise RtcpError(f"BYE reason of {length} bytes overruns the packet "
                                f"({size - need - 1} bytes left)")
            reason = body[need + 1:need + 1 + length].decode("utf-8", "replace")
        return Bye(sources, reason)
    if (ptype, count) in ((RTCP_RTPFB, FMT_NACK), (RTCP_PSFB, FMT_PLI), (RTCP_PSFB, FMT_FIR)):
        if size < 8:
            raise RtcpError(f"feedback packet type {ptype} FMT {count} needs 8 bytes, "
                            f"has {size}")
        sender, media = _TWO_SSRC.unpack_from(body)
        if ptype == RTCP_PSFB and count == FMT_PLI:
            return Pli(sender, media)
        unit = _NACK_FCI.size if ptype == RTCP_RTPFB else _FIR_FCI.size
        if (size - 8) % unit:
            raise RtcpError(f"feedback packet type {ptype} FMT {count}: {size - 8} bytes of "
                            f"FCI is not a multiple of {unit}")
        if ptype == RTCP_PSFB:
            return Fir(sender, [FirEntry(s, n) for s, n in _FIR_FCI.iter_unpack(body[8:])],
                       media)
        lost = []
        for pid, blp in _NACK_FCI.iter_unpack(body[8:]):
            lost.append(pid)
            lost.extend((pid + bit + 1) & 0xFFFF for bit in range(16) if blp >> bit & 1)
        return Nack(sender, media, lost)
    return RtcpUnknown(ptype, count, body)


def _parse_reports(body: bytes, pos: int, count: int) -> list[ReportBlock]:
    return [ReportBlock.parse(body, pos + _REPORT.size * i) for i in range(count)]


def _parse_sdes(body: bytes, count: int) -> Sdes:
    chunks = []
    pos, size = 0, len(body)
    for i in range(count):
        if size - pos < 4:
            raise RtcpError(f"SDES chunk {i} of {count} truncated: {max(size - pos, 0)} bytes left")
        (ssrc,) = struct.unpack_from("!I", body, pos)
        pos += 4
        cname = None
        while True:
            if pos >= size:
                raise RtcpError(f"SDES chunk {i} has no END item")
            kind = body[pos]
            if kind == SDES_END:
                pos += 4 - pos % 4  # END, then padding to the next 32-bit boundary
                break
            if pos + 2 > size or pos + 2 + body[pos + 1] > size:
                raise RtcpError(f"SDES chunk {i}: item type {kind} overruns the packet")
            length = body[pos + 1]
            if kind == SDES_CNAME:
                cname = body[pos + 2:pos + 2 + length].decode("utf-8", "replace")
            pos += 2 + length
        chunks.append(SdesChunk(ssrc, cname))
    return Sdes(chunks)
