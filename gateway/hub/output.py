"""Shared shape of an output format: serialize each frame once, then one ``Fanout`` per framing."""

from __future__ import annotations

import logging

from ..media import Frame, Track
from .fanout import Fanout, Framing, Limits, Viewer
from .stream import Stream

log = logging.getLogger(__name__)


class Output:
    """A stream sink producing one byte format; subclasses say how frames become bytes.

    Several framings of the same bytes (raw for RTMP, HTTP chunks, WebSocket frames) each get
    their own ``Fanout`` so that framing is also done once per batch, not per viewer.
    """

    format_name = "?"

    def __init__(self, stream: Stream, key: object, limits: Limits | None = None) -> None:
        self.stream = stream
        self.key = key
        self.limits = limits or Limits()
        self.fanouts: dict[str, Fanout] = {}
        self._warned: set[str] = set()

    # -- subclass hooks ------------------------------------------------------------------

    def header_bytes(self) -> bytes:
        raise NotImplementedError

    def frame_bytes(self, frame: Frame) -> bytes | None:
        raise NotImplementedError

    def track_bytes(self, track: Track) -> bytes:
        """Bytes announcing a changed codec configuration mid-stream."""
        return b""

    def metadata_bytes(self) -> bytes:
        return b""

    def end_bytes(self) -> bytes:
        return b""

    # -- sink interface ------------------------------------------------------------------

    def carries(self, track: Track) -> bool:
        return True

    def on_track(self, track: Track) -> None:
        self._refresh_header()
        data = self.track_bytes(track) if self.carries(track) else b""
        if data:
            for f in self.fanouts.values():
                f.push(data)

    def on_metadata(self, metadata: dict[str, object]) -> None:
        self._refresh_header()
        data = self.metadata_bytes()
        if data:
            for f in self.fanouts.values():
                f.push(data)

    def on_frame(self, frame: Frame) -> None:
        if not self.fanouts:
            return
        track = frame.track
        if not self.carries(track):
            if track.codec not in self._warned:
                self._warned.add(track.codec)
                log.warning("%s: %s output cannot carry %s; track skipped (needs a transcode variant)",
                            self.stream.key, self.format_name, track.codec)
            return
        data = self.frame_bytes(frame)
        if data is None:
            return
        video = track.kind == "video"
        key = frame.keyframe if video else not self.stream.has_video
        for f in self.fanouts.values():
            f.push(data, keyframe=key, flush=video)

    def on_end(self, reason: str) -> None:
        tail = self.end_bytes()
        for f in list(self.fanouts.values()):
            f.end(reason, tail)
        self.fanouts.clear()

    # -- viewers -------------------------------------------------------------------------

    def _refresh_header(self) -> None:
        head = self.header_bytes()
        for f in self.fanouts.values():
            f.set_header(head)

    def fanout(self, framing_name: str, framing: Framing) -> Fanout:
        """The fan-out for one framing, created and primed from the stream's GOP cache."""
        f = self.fanouts.get(framing_name)
        if f is None:
            f = Fanout(f"{self.stream.key} {self.format_name}/{framing_name}", framing, self.limits)
            f.framing_name = framing_name
            f.set_header(self.header_bytes())
            self.fanouts[framing_name] = f
            self._prime(f)
        return f

    def _prime(self, f: Fanout) -> None:
        has_video = self.stream.has_video
        for frame in self.stream.gop:
            if not self.carries(frame.track):
                continue
            data = self.frame_bytes(frame)
            if data is None:
                continue
            video = frame.track.kind == "video"
            f.push(data, keyframe=frame.keyframe if video else not has_video, flush=video)
        f.flush()

    def add_viewer(self, framing_name: str, framing: Framing, viewer: Viewer,
                   send_initial: bool = True) -> Fanout:
        f = self.fanout(framing_name, framing)
        f.add(viewer, send_initial)
        if viewer.waiting_key:
            self.stream.request_keyframe()  # nothing cached to start from
        return f

    def remove_viewer(self, fanout: Fanout, viewer: Viewer, reason: str = "left") -> None:
        fanout.remove(viewer, reason)
        if not fanout.viewers and self.fanouts.get(fanout.framing_name) is fanout:
            del self.fanouts[fanout.framing_name]
        if not self.fanouts:
            self.stream.drop_sink(self.key)
