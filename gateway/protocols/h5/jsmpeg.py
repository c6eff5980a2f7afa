"""MPEG-TS output for jsmpeg (MPEG-1 video + MP2 audio), muxed once for all viewers.

Viewers join at a batch that starts with a video keyframe; the muxer puts PAT/PMT before every
keyframe and FFmpeg's MPEG-1 encoder starts every keyframe with a sequence header, so each viewer
starts at a sequence header followed by an I-frame. Batches hold whole 188-byte packets, so every
WebSocket message is a whole number of TS packets.
"""

from __future__ import annotations

from ...hub.fanout import Limits
from ...hub.output import Output
from ...hub.stream import Stream
from ...media import Frame, Track
from ...wire.mpegts import TsMuxer

JSMPEG_CODECS = frozenset({"mpeg1video", "mp2"})


class JsmpegOutput(Output):
    format_name = "jsmpeg"

    def __init__(self, stream: Stream, key: object, limits: Limits | None = None) -> None:
        super().__init__(stream, key, limits)
        self.muxer = TsMuxer({k: t for k, t in stream.tracks.items() if self.carries(t)})

    def carries(self, track: Track) -> bool:
        return track.codec in JSMPEG_CODECS

    def header_bytes(self) -> bytes:
        return self.muxer.header()

    def frame_bytes(self, frame: Frame) -> bytes:
        return self.muxer.mux(frame)
