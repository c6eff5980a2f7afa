"""FLV tag bodies (RTMP audio/video messages, HTTP-FLV tags) -> hub tracks and frames."""

from __future__ import annotations

import logging

from ...hub.stream import Stream
from ...media import Frame, Track
from ...wire import flv

log = logging.getLogger(__name__)

CODEC_AVC = 7
SOUND_AAC = 10


class IngestError(ValueError):
    """Media the gateway cannot take; ends the publishing session with this reason."""


class FlvIngest:
    """Per-publisher state: current tracks, metadata, and the warnings already logged."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._video: Track | None = None
        self._audio: Track | None = None
        self._warned: set[str] = set()

    def _warn_once(self, what: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s: %s", self.stream.key, what)

    def metadata(self, values: list[object]) -> None:
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            self.stream.set_metadata(dict(values[1]))

    def video(self, timestamp: int, body: bytes) -> None:
        if not body:
            return
        try:
            tag = flv.parse_video_body(body)
        except flv.FlvError as e:
            raise IngestError(f"bad video tag: {e}") from e
        if tag.codec_id != CODEC_AVC:
            name = flv.VIDEO_CODEC_NAMES.get(tag.codec_id, f"codec id {tag.codec_id}")
            self._warn_once(f"video {name} is not supported over RTMP/FLV (only H.264); ignored")
            return
        if tag.avc_packet_type == 0:
            try:
                track = flv.track_from_avc_config(tag.payload, self.stream.info.metadata)
            except ValueError as e:
                raise IngestError(f"bad AVC sequence header: {e}") from e
            self._video = track
            self.stream.set_track(track)
            return
        if tag.avc_packet_type != 1:
            return  # end of sequence
        if self._video is None:
            self._warn_once("H264 frames before the sequence header; dropped")
            return
        if not tag.payload:
            return
        self.stream.push(Frame(self._video, tag.payload, timestamp + tag.cts, timestamp,
                               keyframe=tag.keyframe))

    def audio(self, timestamp: int, body: bytes) -> None:
        if not body:
            return
        try:
            tag = flv.parse_audio_body(body)
        except flv.FlvError as e:
            raise IngestError(f"bad audio tag: {e}") from e
        if tag.sound_format != SOUND_AAC:
            name = flv.SOUND_FORMAT_NAMES.get(tag.sound_format, f"format {tag.sound_format}")
            self._warn_once(f"audio {name} is not supported over RTMP/FLV (only AAC); ignored")
            return
        if tag.aac_packet_type == 0:
            try:
                track = flv.track_from_aac_config(tag.payload)
            except ValueError as e:
                raise IngestError(f"bad AAC sequence header: {e}") from e
            self._audio = track
            self.stream.set_track(track)
            return
        if self._audio is None:
            self._warn_once("AAC frames before the sequence header; dropped")
            return
        if tag.payload:
            self.stream.push(Frame(self._audio, tag.payload, timestamp, timestamp, keyframe=True))
