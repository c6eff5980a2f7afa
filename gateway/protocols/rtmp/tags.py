"""FLV tag bodies of frames: the payload shared by RTMP messages and FLV tags.

RTMP audio/video messages carry exactly FLV tag bodies, so a stream's RTMP and FLV outputs
share one body per frame; the one-slot memo works because every sink of a stream sees the
same ``Frame`` object in turn.
"""

from __future__ import annotations

from dataclasses import replace

from ...hub.stream import Stream
from ...media import Frame, Track
from ...wire import flv

FLV_CODECS = frozenset({"h264", "aac"})

_last: tuple[Frame | None, bytes] = (None, b"")


def carries(track: Track) -> bool:
    return track.codec in FLV_CODECS


def frame_body(frame: Frame) -> bytes:
    global _last
    if _last[0] is frame:
        return _last[1]
    if frame.track.kind == "video":
        cts = frame.pts_ms() - frame.dts_ms()
        body = flv.video_body_avc(frame.keyframe, 1, cts, frame.data)
    else:
        t = frame.track
        body = flv.audio_body_aac(1, frame.data, t.sample_rate, t.channels)
    _last = (frame, body)
    return body


def config_body(track: Track) -> bytes:
    """Sequence header body of a track (AVC decoder configuration / AudioSpecificConfig)."""
    if not track.config:
        return b""
    if track.kind == "video":
        return flv.video_seq_header_avc(track.config)
    return flv.audio_seq_header_aac(track.config)


def metadata(stream: Stream) -> dict[str, object]:
    """Complete onMetaData for egress: size, frame rate, sample rate, channels and data rates
    (measured when the publisher did not say), whatever the publisher sent."""
    tracks = {}
    for kind, t in stream.tracks.items():
        if carries(t):
            tracks[kind] = t if t.bitrate else replace(t, bitrate=stream.bitrate(kind))
    return flv.on_metadata(tracks, stream.info.metadata)
