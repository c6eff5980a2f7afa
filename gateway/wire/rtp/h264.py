"""H.264 over RTP (RFC 6184, packetization-mode 1): payloads <-> access units, sans I/O.

Works on payload bytes + marker + timestamp + sequence number (another module parses RTP
headers), so the ``udp`` protocol and tests share one implementation; loss is reported, never
turned into garbage NAL units.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...codecs.h264 import NAL_IDR, NAL_PPS, NAL_SPS, join_annexb, join_avcc
from .payload import RtpPayload, RtpPayloadError

__all__ = [
    "CLOCK_RATE",
    "FU_A",
    "STAP_A",
    "AccessUnit",
    "H264Depacketizer",
    "H264Packetizer",
    "RtpPayload",
    "RtpPayloadError",
    "format_sprop_parameter_sets",
    "h264_fmtp",
    "parse_profile_level_id",
    "parse_sprop_parameter_sets",
    "profile_level_id",
]

CLOCK_RATE = 90000
STAP_A = 24
FU_A = 28
_SEQ_MOD = 1 << 16


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """The NAL units (no start codes) of one picture, as far as they arrived.

    ``damaged``: packets were lost (a sequence gap, a FU-A without its start or end); the
    NAL units that did arrive whole are kept, a decoder should wait for the next IDR.
    """

    nals: tuple[bytes, ...]
    timestamp: int
    idr: bool
    damaged: bool = False

    def annexb(self) -> bytes:
        return join_annexb(self.nals)

    def avcc(self) -> bytes:
        return join_avcc(self.nals)


def _nal_units(payload: bytes) -> tuple[list[bytes], int, bytes]:
    """Validate one payload: (whole NAL units, FU-A value or -1, FU-A fragment data).

    The FU-A value is ``(fu_header << 8) | rebuilt_nal_header``.
    """
    if not payload:
        raise RtpPayloadError("empty H.264 payload")
    kind = payload[0] & 0x1F
    if 1 <= kind <= 23:
        return [payload], -1, b""
    if kind == STAP_A:
        nals: list[bytes] = []
        pos = 1
        while pos < len(payload):
            if pos + 2 > len(payload):
                raise RtpPayloadError("STAP-A: truncated NAL unit size")
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size == 0:
                raise RtpPayloadError("STAP-A: zero-length NAL unit")
            if pos + size > len(payload):
                raise RtpPayloadError(f"STAP-A: NAL unit of {size} bytes truncated")
            nal = payload[pos : pos + size]
            if not 1 <= nal[0] & 0x1F <= 23:
                raise RtpPayloadError(f"STAP-A: aggregated NAL type {nal[0] & 0x1F}")
            nals.append(nal)
            pos += size
        if not nals:
            raise RtpPayloadError("STAP-A without NAL units")
        return nals, -1, b""
    if kind == FU_A:
        if len(payload) < 2:
            raise RtpPayloadError("FU-A: missing FU header")
        fu = payload[1]
        inner = fu & 0x1F
        if not 1 <= inner <= 23:
            raise RtpPayloadError(f"FU-A: fragmented NAL type {inner}")
        header = (payload[0] & 0xE0) | inner
        return [], (fu << 8) | header, payload[2:]
    if kind in (25, 26, 27, 29):
        raise RtpPayloadError(f"NAL type {kind} needs interleaved mode (packetization-mode 2)")
    raise RtpPayloadError(f"reserved NAL type {kind}")


@dataclass(slots=True)
class H264Depacketizer:
    """Payloads in sequence order -> access units (emitted on the marker or a new timestamp).

    Reordering is the caller's (a jitter buffer); a packet older than the last one is dropped
    as a duplicate. ``flush()`` hands over what is pending at the end of a stream.
    """

    _nals: list[bytes] = field(default_factory=list)
    _timestamp: int | None = None
    _damaged: bool = False
    _fragment: bytearray | None = None
    _last_seq: int | None = None

    def push(self, payload: bytes, marker: bool, timestamp: int, sequence_number: int
             ) -> list[AccessUnit]:
        payload = bytes(payload)
        nals, fu, data = _nal_units(payload)  # raises before any state changes
        out: list[AccessUnit] = []
        gap = False
        seq = sequence_number % _SEQ_MOD
        if self._last_seq is not None:
            ahead = (seq - self._last_seq - 1) % _SEQ_MOD
            if ahead >= _SEQ_MOD // 2:
                return out  # a duplicate or a late packet: its unit has gone already
            gap = ahead > 0
        self._last_seq = seq
        if self._timestamp is not None and timestamp != self._timestamp:
            if gap:  # the lost packets ended the previous unit or began this one
                self._damaged = True
            out.extend(self.flush())
        if gap:
            self._damaged = True
            self._fragment = None
        self._timestamp = timestamp
        if fu < 0:
            if self._fragment is not None:  # a FU-A that never ended
                self._fragment = None
                self._damaged = True
            self._nals.extend(nals)
        else:
            self._fragment_part(fu, data)
        if marker:
            out.extend(self.flush())
        return out

    def _fragment_part(self, fu: int, data: bytes) -> None:
        start, end = bool(fu & 0x8000), bool(fu & 0x4000)
        if start:
            if self._fragment is not None:
                self._damaged = True
            self._fragment = bytearray((fu & 0xFF,))
        elif self._fragment is None:
            self._damaged = True  # its start was lost: skip to the next NAL unit
            return
        self._fragment += data
        if end:
            self._nals.append(bytes(self._fragment))
            self._fragment = None

    def flush(self) -> list[AccessUnit]:
        """The pending unit, if any (a FU-A still open is dropped and marks it damaged)."""
        if self._fragment is not None:
            self._fragment = None
            self._damaged = True
        nals, damaged, timestamp = tuple(self._nals), self._damaged, self._timestamp
        self._nals = []
        self._damaged = False
        if timestamp is None or not (nals or damaged):
            return []
        idr = any(nal[0] & 0x1F == NAL_IDR for nal in nals)
        return [AccessUnit(nals, timestamp, idr, damaged)]


def _stap_a(nals: Sequence[bytes]) -> bytes:
    nri = max(nal[0] & 0x60 for nal in nals)
    out = bytearray((nri | STAP_A,))
    for nal in nals:
        out += len(nal).to_bytes(2, "big")
        out += nal
    return bytes(out)


@dataclass(frozen=True, slots=True)
class H264Packetizer:
    """Access units -> payloads: a NAL unit alone when it fits ``mtu``, else FU-A fragments.

    ``mtu`` bounds the payload (the RTP header is not counted). The marker is on the last
    packet of the unit.
    """

    mtu: int = 1200

    def __post_init__(self) -> None:
        if self.mtu < 3:
            raise ValueError(f"mtu {self.mtu} too small for FU-A")

    def packetize(self, nals: Sequence[bytes], timestamp: int,
                  parameter_sets: Sequence[bytes] = ()) -> list[RtpPayload]:
        """One access unit (NAL units without start codes) into payloads.

        When the unit holds an IDR, its SPS/PPS (or else ``parameter_sets``) go first,
        aggregated in one STAP-A if it fits, so a receiver joining there can decode.
        """
        units = [bytes(nal) for nal in nals if nal]
        payloads: list[bytes] = []
        if any(nal[0] & 0x1F == NAL_IDR for nal in units):
            sets = [nal for nal in units if nal[0] & 0x1F in (NAL_SPS, NAL_PPS)]
            if sets:
                units = [nal for nal in units if nal[0] & 0x1F not in (NAL_SPS, NAL_PPS)]
            else:
                sets = [bytes(nal) for nal in parameter_sets if nal]
            if len(sets) > 1 and 1 + sum(2 + len(nal) for nal in sets) <= self.mtu:
                payloads.append(_stap_a(sets))
            else:
                units = sets + units
        for nal in units:
            payloads.extend(self._single_or_fu_a(nal))
        return [RtpPayload(p, i == len(payloads) - 1, timestamp) for i, p in enumerate(payloads)]

    def _single_or_fu_a(self, nal: bytes) -> list[bytes]:
        if len(nal) <= self.mtu:
            return [nal]
        indicator = (nal[0] & 0xE0) | FU_A
        kind = nal[0] & 0x1F
        step = self.mtu - 2
        out: list[bytes] = []
        for pos in range(1, len(nal), step):
            fu = kind
            if pos == 1:
                fu |= 0x80
            if pos + step >= len(nal):
                fu |= 0x40
            out.append(bytes((indicator, fu)) + nal[pos : pos + step])
        return out


def parse_sprop_parameter_sets(value: str) -> list[bytes]:
    """The NAL units of an fmtp ``sprop-parameter-sets`` (base64, comma-separated)."""
    nals: list[bytes] = []
    for part in value.strip().split(","):
        if not part:
            continue
        try:
            nal = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RtpPayloadError(f"sprop-parameter-sets: bad base64 {part!r}") from exc
        if not nal:
            raise RtpPayloadError("sprop-parameter-sets: empty NAL unit")
        nals.append(nal)
    return nals


def format_sprop_parameter_sets(nals: Sequence[bytes]) -> str:
    """``sprop-parameter-sets`` value for NAL units (SPS first, then PPS)."""
    return ",".join(base64.b64encode(bytes(nal)).decode("ascii") for nal in nals)


def profile_level_id(sps: bytes) -> str:
    """``profile-level-id`` (six hex digits) of an SPS NAL unit (header byte included)."""
    if len(sps) < 4 or sps[0] & 0x1F != NAL_SPS:
        raise RtpPayloadError("profile-level-id needs an SPS NAL unit")
    return bytes(sps[1:4]).hex()


def parse_profile_level_id(value: str) -> tuple[int, int, int]:
    """(profile_idc, constraint flags byte, level_idc) of a ``profile-level-id``."""
    text = value.strip()
    if len(text) != 6:
        raise RtpPayloadError(f"profile-level-id {value!r} is not six hex digits")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise RtpPayloadError(f"profile-level-id {value!r} is not hex") from exc
    return raw[0], raw[1], raw[2]


def h264_fmtp(sps: bytes, pps: bytes) -> str:
    """The fmtp line's value for packetization-mode 1 with these parameter sets."""
    return (f"packetization-mode=1;profile-level-id={profile_level_id(sps)};"
            f"sprop-parameter-sets={format_sprop_parameter_sets([sps, pps])}")
