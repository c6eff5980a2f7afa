"""MPEG-TS (ISO 13818-1), sans-I/O: a serialize-once muxer (jsmpeg, TS players) and a streaming
demuxer (the ``h5`` ingest), with what they share and the naming of what is not TS.
"""

from __future__ import annotations

from .demux import TsDemuxer
from .es import SUPPORTED
from .mux import TsMuxer
from .packets import (
    AUDIO_PID,
    PACKET_SIZE,
    PMT_PID,
    STREAM_TYPE_AAC,
    STREAM_TYPE_H264,
    STREAM_TYPE_MPEG1_AUDIO,
    STREAM_TYPE_MPEG1_VIDEO,
    STREAM_TYPE_MPEG2_AUDIO,
    STREAM_TYPE_MPEG2_VIDEO,
    TIME_BASE,
    VIDEO_PID,
    TsError,
    crc32_mpeg2,
    to_90k,
)
from .sniff import guess_not_ts, stream_type_content

__all__ = [
    "AUDIO_PID",
    "PACKET_SIZE",
    "PMT_PID",
    "STREAM_TYPE_AAC",
    "STREAM_TYPE_H264",
    "STREAM_TYPE_MPEG1_AUDIO",
    "STREAM_TYPE_MPEG1_VIDEO",
    "STREAM_TYPE_MPEG2_AUDIO",
    "STREAM_TYPE_MPEG2_VIDEO",
    "SUPPORTED",
    "TIME_BASE",
    "VIDEO_PID",
    "TsDemuxer",
    "TsError",
    "TsMuxer",
    "crc32_mpeg2",
    "guess_not_ts",
    "stream_type_content",
    "to_90k",
]
