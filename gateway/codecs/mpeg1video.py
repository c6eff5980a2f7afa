"""MPEG-1 video bitstream helpers: sequence headers and picture headers.

What an ingest needs to describe an MPEG-1 track (size, rate, B-frames) and to tell MPEG-2 apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "EXTENSION_START_CODE",
    "PICTURE_B",
    "PICTURE_I",
    "PICTURE_P",
    "PICTURE_START_CODE",
    "SEQUENCE_HEADER_CODE",
    "Mpeg1VideoError",
    "MpegVideoSequence",
    "find_picture_coding_type",
    "is_mpeg2_sequence",
    "parse_mpeg_video_sequence",
]


class Mpeg1VideoError(ValueError):
    """Malformed MPEG video data (the only exception these helpers raise)."""


SEQUENCE_HEADER_CODE: Final = b"\x00\x00\x01\xb3"
EXTENSION_START_CODE: Final = b"\x00\x00\x01\xb5"
PICTURE_START_CODE: Final = b"\x00\x00\x01\x00"

#: picture_coding_type values
PICTURE_I: Final = 1
PICTURE_P: Final = 2
PICTURE_B: Final = 3

_FRAME_RATES: Final = (
    0.0, 24000 / 1001, 24.0, 25.0, 30000 / 1001, 30.0, 50.0, 60000 / 1001, 60.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MpegVideoSequence:
    """What a track needs from an MPEG-1/2 video sequence header."""

    width: int
    height: int
    frame_rate: float
    bitrate: int  # bit/s, 0 = variable/unknown


def parse_mpeg_video_sequence(
    data: bytes | bytearray | memoryview, at: int = 0
) -> MpegVideoSequence:
    """Parse the sequence header whose start code (00 00 01 B3) is at ``at``."""
    b = bytes(data[at : at + 12])
    if len(b) < 12 or b[:4] != SEQUENCE_HEADER_CODE:
        raise Mpeg1VideoError("MPEG video sequence header truncated")
    width = (b[4] << 4) | (b[5] >> 4)
    height = ((b[5] & 0x0F) << 8) | b[6]
    rate_code = b[7] & 0x0F
    bitrate = (b[8] << 10) | (b[9] << 2) | (b[10] >> 6)
    if not width or not height or not 0 < rate_code < len(_FRAME_RATES):
        raise Mpeg1VideoError("invalid MPEG video sequence header")
    rate = _FRAME_RATES[rate_code]
    return MpegVideoSequence(width, height, rate, 0 if bitrate == 0x3FFFF else bitrate * 400)


def is_mpeg2_sequence(data: bytes, at: int) -> bool:
    """Whether the sequence header at ``at`` is followed by a sequence_extension before the
    first picture: MPEG-2 video, which an MPEG-1 decoder (jsmpeg) cannot take."""
    ext = data.find(EXTENSION_START_CODE, at + 12)
    pic = data.find(PICTURE_START_CODE, at + 12)
    return ext >= 0 and (pic < 0 or ext < pic)


def find_picture_coding_type(data: bytes) -> int:
    """``picture_coding_type`` (``PICTURE_I`` ...) of the first picture header in ``data``."""
    pic = data.find(PICTURE_START_CODE)
    if pic < 0 or pic + 6 > len(data):
        raise Mpeg1VideoError("no MPEG video picture header")
    return (data[pic + 5] >> 3) & 7
