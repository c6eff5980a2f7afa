"""FLV byte stream output (HTTP-FLV and WS-FLV viewers share the tags, each framing once)."""

from __future__ import annotations

from ...hub.output import Output
from ...media import Frame, Track
from ...wire import flv
from . import tags

TAG_AUDIO, TAG_VIDEO, TAG_SCRIPT = 8, 9, 18


class FlvOutput(tags.SharedBodies, Output):
    format_name = "flv"

    def carries(self, track: Track) -> bool:
        return tags.carries(track)

    def _script(self) -> bytes:
        meta = tags.metadata(self.stream)
        return flv.encode_tag(TAG_SCRIPT, 0, flv.script_tag_body("onMetaData", meta))

    def header_bytes(self) -> bytes:
        """The FLV header names every kind the viewer will get, also one still being coded (a
        variant's first AAC frames come after its video): a browser's player (mpegts.js, on
        Media Source Extensions) sets its buffers up from these flags, and fails on a kind
        that starts after the others (``MediaError MediaMSEError``: no sound)."""
        tracks = {k: t for k, t in self.stream.tracks.items() if self.carries(t)}
        kinds = tracks.keys() | (self.stream.output_kinds() - self.stream.tracks.keys())
        parts = [flv.FLV_HEADER("audio" in kinds, "video" in kinds), self._script()]
        for kind, tag_type in (("video", TAG_VIDEO), ("audio", TAG_AUDIO)):
            t = tracks.get(kind)
            if t is not None and t.config:
                parts.append(flv.encode_tag(tag_type, 0, tags.config_body(t)))
        return b"".join(parts)

    def track_bytes(self, track: Track) -> bytes:
        body = tags.config_body(track)
        if not body:
            return b""
        ts = self.stream.gop[-1].dts_ms() if self.stream.gop else 0
        return flv.encode_tag(TAG_VIDEO if track.kind == "video" else TAG_AUDIO, ts, body)

    def metadata_bytes(self) -> bytes:
        return self._script()

    def frame_bytes(self, frame: Frame) -> bytes:
        tag_type = TAG_VIDEO if frame.track.kind == "video" else TAG_AUDIO
        return flv.encode_tag(tag_type, frame.dts_ms() & 0xFFFFFFFF, self.body_of(frame))
