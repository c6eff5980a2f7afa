"""Naming what a stream carries, from its first bytes or a PMT stream type, so that a refused
publish tells the operator what was sent instead of only what was not.
"""

from __future__ import annotations

from typing import Final

from .packets import SYNC

__all__ = ["HEAD_SIZE", "guess_not_ts", "stream_type_content"]

#: First bytes of a stream kept to name it when it turns out not to be TS.
HEAD_SIZE: Final = 4096

_STREAM_TYPE_NAMES: Final = {
    0x01: "MPEG-1 video", 0x02: "MPEG-2 video", 0x03: "MPEG-1 audio", 0x04: "MPEG-2 audio",
    0x06: "private data (e.g. Opus, AC-3 or subtitles)", 0x0F: "AAC", 0x10: "MPEG-4 Part 2 video",
    0x11: "AAC in LATM", 0x1B: "H.264 video", 0x15: "metadata", 0x24: "HEVC video",
    0x33: "VVC video", 0x42: "AVS video", 0x81: "AC-3 audio", 0x82: "DTS audio",
    0x83: "TrueHD audio", 0x86: "SCTE-35 cues", 0x87: "E-AC-3 audio", 0xD1: "Dirac video",
    0xEA: "VC-1 video",
}  # fmt: skip


def stream_type_content(stream_type: int) -> str:
    """What a PMT stream type carries, in an operator's words (``HEVC video``)."""
    return _STREAM_TYPE_NAMES.get(stream_type) or f"stream type 0x{stream_type:02x}"


#: Leading bytes of what is sent by mistake where MPEG-TS belongs (``-f flv``, ``-f mp4``, a
#: file through ``curl -T``, the old jsmpeg's ``-f mpeg1video``), and what to call it.
_NOT_TS_SIGNATURES: Final[tuple[tuple[int, bytes, str], ...]] = (
    (0, b"FLV\x01", "FLV"),
    (4, b"ftyp", "MP4 / MOV"), (4, b"moov", "MP4 / MOV"), (4, b"moof", "fragmented MP4"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska / WebM"),
    (0, b"OggS", "Ogg"),
    (0, b"RIFF", "RIFF (WAV / AVI)"),
    (0, b"ID3", "MP3 (ID3 tag)"),
    (0, b"\x00\x00\x01\xba", "MPEG program stream (-f mpeg / .mpg)"),
    (0, b"\x00\x00\x01\xb3", "raw MPEG-1/2 video (-f mpeg1video, the old jsmpeg format)"),
    (0, b"\x00\x00\x00\x01", "raw H.264 / HEVC (Annex B)"),
    (0, b"\x00\x00\x01", "a raw elementary stream (no container)"),
)  # fmt: skip

#: Packet sizes of TS variants a plain TS demuxer cannot take, and what to call them.
_OTHER_PACKET_SIZES: Final = (
    (192, "192-byte packets (M2TS / BDAV)"),
    (204, "204-byte packets (TS with Reed-Solomon parity)"),
)


def guess_not_ts(head: bytes) -> str:
    """What the first bytes of a stream that has no TS sync look like, or ``""``.

    So that the refusal tells a publisher what it sent instead ("looks like FLV"), not only
    what it did not.
    """
    for at, magic, what in _NOT_TS_SIGNATURES:
        if head[at : at + len(magic)] == magic:
            return what
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "raw AAC (ADTS)"
    for size, what in _OTHER_PACKET_SIZES:
        for first in range(size):  # a sync byte every ``size`` bytes, five times over
            if len(head) < first + 4 * size + 1:
                break
            if all(head[first + k * size] == SYNC for k in range(5)):
                return what
    return ""
