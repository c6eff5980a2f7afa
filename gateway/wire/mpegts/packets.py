"""What both directions of MPEG-TS (ISO 13818-1) share: packet layout, PIDs, stream types,
the PSI CRC and PES time stamps, so the muxer and demuxer cannot disagree on them.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Final

__all__ = [
    "AUDIO_PID",
    "CLOCK",
    "NULL_PID",
    "PACKET_SIZE",
    "PAT_PID",
    "PMT_PID",
    "STREAM_TYPE_AAC",
    "STREAM_TYPE_H264",
    "STREAM_TYPE_MPEG1_AUDIO",
    "STREAM_TYPE_MPEG1_VIDEO",
    "STREAM_TYPE_MPEG2_AUDIO",
    "STREAM_TYPE_MPEG2_VIDEO",
    "SYNC",
    "TIME_BASE",
    "TS_MASK",
    "TS_WRAP",
    "VIDEO_PID",
    "Buf",
    "TsError",
    "crc32_mpeg2",
    "decode_ts",
    "encode_ts",
    "to_90k",
]


class TsError(ValueError):
    """Bytes that are not MPEG-TS (no sync found), or a frame MPEG-TS cannot carry."""


Buf = bytes | bytearray | memoryview

PACKET_SIZE: Final = 188
SYNC: Final = 0x47
TIME_BASE: Final = Fraction(1, 90000)
CLOCK: Final = 90000
TS_WRAP: Final = 1 << 33
TS_MASK: Final = TS_WRAP - 1

PAT_PID: Final = 0x0000
PMT_PID: Final = 0x1000  # FFmpeg's defaults, so dumps compare easily
VIDEO_PID: Final = 0x0100
AUDIO_PID: Final = 0x0101
NULL_PID: Final = 0x1FFF

STREAM_TYPE_MPEG1_VIDEO: Final = 0x01
STREAM_TYPE_MPEG2_VIDEO: Final = 0x02  # FFmpeg labels MPEG-1 video with this too
STREAM_TYPE_MPEG1_AUDIO: Final = 0x03
STREAM_TYPE_MPEG2_AUDIO: Final = 0x04
STREAM_TYPE_AAC: Final = 0x0F  # ADTS
STREAM_TYPE_H264: Final = 0x1B


# --- CRC-32/MPEG-2 --------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else c << 1
        table.append(c & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc32_mpeg2(data: bytes) -> int:
    """CRC of PSI sections (non-reflected, unlike zlib's); a section including its CRC gives 0."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ b]
    return crc


# --- timestamps -----------------------------------------------------------------------------


def to_90k(value: int, time_base: Fraction) -> int:
    """``value`` in ``time_base`` as 90 kHz ticks, rounded to nearest (exact for ms and 1/90000)."""
    num = time_base.numerator * CLOCK  # no Fraction arithmetic or hashing: a per-frame path
    den = time_base.denominator
    if den == 1:
        return value * num
    return (2 * value * num + den) // (2 * den)


def encode_ts(prefix: int, ts: int) -> bytes:
    """A PES PTS/DTS field: 4-bit ``prefix`` and 33 bits of ``ts`` (wrapped) with marker bits."""
    ts &= TS_MASK
    return bytes(
        (
            (prefix << 4) | ((ts >> 29) & 0x0E) | 1,
            (ts >> 22) & 0xFF,
            ((ts >> 14) & 0xFE) | 1,
            (ts >> 7) & 0xFF,
            ((ts << 1) & 0xFE) | 1,
        )
    )


def decode_ts(b: Buf, i: int) -> int:
    """The 33-bit time stamp of the PES PTS/DTS field at ``b[i:i + 5]``."""
    return (
        ((b[i] & 0x0E) << 29)
        | (b[i + 1] << 22)
        | ((b[i + 2] & 0xFE) << 14)
        | (b[i + 3] << 7)
        | (b[i + 4] >> 1)
    )
