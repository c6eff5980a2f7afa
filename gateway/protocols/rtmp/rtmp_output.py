"""RTMP play output: every message chunked once (type-0 header, absolute timestamp) for all players.

Chunk bytes depend only on the message and the chunk size, never on connection state, so the
same bytes go to every player; players all get message stream id 1 (see the RTMP session).
"""

from __future__ import annotations

from ...hub.output import Output
from ...media import Frame, Track
from ...wire.rtmp import amf0
from ...wire.rtmp.chunk import encode_message
from ...wire.rtmp.messages import AUDIO as MSG_AUDIO
from ...wire.rtmp.messages import CSID_AUDIO, CSID_DATA, CSID_VIDEO
from ...wire.rtmp.messages import DATA_AMF0 as MSG_DATA
from ...wire.rtmp.messages import VIDEO as MSG_VIDEO
from . import tags

PLAY_STREAM_ID = 1
CHUNK_SIZE = 4096


def _msg(type_id: int, ts: int, payload: bytes, csid: int) -> bytes:
    return encode_message(type_id, PLAY_STREAM_ID, ts & 0xFFFFFFFF, payload, csid, CHUNK_SIZE)


class RtmpOutput(tags.SharedBodies, Output):
    format_name = "rtmp"

    def carries(self, track: Track) -> bool:
        return tags.carries(track)

    def _ts(self) -> int:
        return self.stream.gop[-1].dts_ms() if self.stream.gop else 0

    def metadata_bytes(self) -> bytes:
        meta = tags.metadata(self.stream)
        return _msg(MSG_DATA, 0, amf0.encode("onMetaData", meta), CSID_DATA)

    def header_bytes(self) -> bytes:
        parts = [self.metadata_bytes()]
        for t in self.stream.tracks.values():
            if self.carries(t):
                parts.append(self._config(t, 0))
        return b"".join(parts)

    def _config(self, track: Track, ts: int) -> bytes:
        body = tags.config_body(track)
        if not body:
            return b""
        if track.kind == "video":
            return _msg(MSG_VIDEO, ts, body, CSID_VIDEO)
        return _msg(MSG_AUDIO, ts, body, CSID_AUDIO)

    def track_bytes(self, track: Track) -> bytes:
        return self._config(track, self._ts())

    def frame_bytes(self, frame: Frame) -> bytes:
        if frame.track.kind == "video":
            return _msg(MSG_VIDEO, frame.dts_ms(), self.body_of(frame), CSID_VIDEO)
        return _msg(MSG_AUDIO, frame.dts_ms(), self.body_of(frame), CSID_AUDIO)
