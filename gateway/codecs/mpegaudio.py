"""MPEG audio (layers I-III: MP2, MP3) frame headers.

Such audio is framed in-band, so an ingest finds frames, their length and their format here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "HEADER_SIZE",
    "MpegAudioError",
    "MpegAudioHeader",
    "parse_mpeg_audio_header",
]


class MpegAudioError(ValueError):
    """Malformed or free-format MPEG audio header (the only exception these helpers raise)."""


HEADER_SIZE: Final = 4

# kbit/s by [version is MPEG-1][layer][index]; layer 1 = I, 2 = II, 3 = III
_BITRATES: Final = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES: Final = {
    3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000),
}


@dataclass(frozen=True, slots=True)
class MpegAudioHeader:
    """One MPEG-1/2/2.5 audio frame header (layers I-III)."""

    layer: int
    sample_rate: int
    channels: int
    bitrate: int  # bit/s
    frame_length: int  # bytes, header included
    samples: int  # per frame


def parse_mpeg_audio_header(data: bytes | bytearray | memoryview, at: int = 0) -> MpegAudioHeader:
    """Parse the 4-byte MPEG audio header at ``at`` (free-format frames are rejected)."""
    if len(data) - at < HEADER_SIZE:
        raise MpegAudioError("MPEG audio header truncated")
    b1, b2, b3 = data[at + 1], data[at + 2], data[at + 3]
    if data[at] != 0xFF or b1 & 0xE0 != 0xE0:
        raise MpegAudioError("MPEG audio sync missing")
    version = (b1 >> 3) & 3
    layer = 4 - ((b1 >> 1) & 3)
    index = b2 >> 4
    rate_index = (b2 >> 2) & 3
    if version == 1 or layer == 4 or index in (0, 15) or rate_index == 3:
        raise MpegAudioError("reserved or free-format MPEG audio header")
    mpeg1 = version == 3
    sample_rate = _SAMPLE_RATES[version][rate_index]
    kbps = _BITRATES[(mpeg1, layer)][index]
    padding = (b2 >> 1) & 1
    if layer == 1:
        length = (12000 * kbps // sample_rate + padding) * 4
        samples = 384
    else:
        lsf_layer3 = layer == 3 and not mpeg1
        length = (72000 if lsf_layer3 else 144000) * kbps // sample_rate + padding
        samples = 576 if lsf_layer3 else 1152
    return MpegAudioHeader(
        layer=layer,
        sample_rate=sample_rate,
        channels=1 if b3 >> 6 == 3 else 2,
        bitrate=kbps * 1000,
        frame_length=length,
        samples=samples,
    )
