"""The stream hub: live streams keyed ``app/stream``, one publisher each, frame GOP cache, sinks.

A *sink* is anything that consumes a stream's frames: an output format with its viewers (RTMP,
FLV, jsmpeg, WHEP) or a transcoding variant (itself a ``Stream`` with sinks). Sinks are created
on demand by key (``Stream.sink``, through the session service's ``play``) so that every viewer
needing the same output shares one, and removed when their last viewer leaves. The hub never
knows which protocol a frame came from; who may publish or play is ``hub.sessions``'s call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from ..media import Frame, StreamInfo, Track
from .timeline import Timeline

log = logging.getLogger(__name__)


class HubError(Exception):
    """A request the hub refuses; ``str()`` is the reason shown to the client."""


class StreamBusy(HubError):
    pass


class NoMediaYet(HubError):
    """Published, but no track known yet: worth trying again in a moment."""


class StreamNotFound(HubError):
    pass


class Sink(Protocol):
    def on_track(self, track: Track) -> None: ...
    def on_metadata(self, metadata: dict[str, object]) -> None: ...
    def on_frame(self, frame: Frame) -> None: ...
    def on_end(self, reason: str) -> None: ...


S = TypeVar("S", bound=Sink)

#: A viewer that comes while the publisher is still announcing its tracks waits until both kinds
#: are known, or until this long after the first one when only one is: its plan (what passes
#: through, what is transcoded) is made once, from the tracks known then. A publisher sends its
#: audio and video configurations within a fraction of a second of each other (WHIP: once its
#: connection is up, which can take longer than that after the publish itself).
SETTLE = 1.0
SETTLE_WAIT = 3.0  # s a viewer waits at most for the first track
#: ... unless the publisher announced its kinds (a TS's PMT lists its streams): then a viewer
#: waits for an announced kind up to this long after the first track, to cover a publisher
#: that started mid-GOP (its video is known at its first keyframe, seconds after the audio).
#: A browser's HTTP-FLV player (mpegts.js on Media Source Extensions) cannot take video that
#: starts after its audio; one announced kind alone settles at once.
SETTLE_ANNOUNCED = 4.0

MAX_GOP_FRAMES = 3000  # ~100 s at 30 fps; a source without keyframes must not grow memory
MAX_GOP_BYTES = 32 << 20


class Stream:
    """One live stream. Frames in from the publisher, out to every sink, GOP kept for late joiners."""

    def __init__(self, key: str, info: StreamInfo, publisher: str) -> None:
        self.key = key
        self.info = info
        self.publisher = publisher
        self.sinks: dict[object, Sink] = {}
        self.gop: list[Frame] = []
        self._gop_bytes = 0
        #: set when the stream ends for any reason: what a publisher's session waits on besides
        #: its socket, so that it ends with the stream (say, at shutdown), not at its next read
        self.finished = asyncio.Event()
        self.end_reason = ""
        self._first_track_at = 0.0  # monotonic time the first track was announced
        #: the kinds the publisher says it sends (``expect``), empty when it does not say
        self.announced: frozenset[str] = frozenset()
        self.frames_in = 0
        self.bytes_in = 0
        self._rate: dict[str, list[float]] = {}  # kind -> [first ms, last ms, bytes]
        self.timeline = Timeline(key)
        # set by publishers that can produce a keyframe on demand (WebRTC: PLI); RTMP cannot
        self.keyframe_hook: Callable[[], bool] | None = None

    @property
    def tracks(self) -> dict[str, Track]:
        return self.info.tracks

    @property
    def ended(self) -> bool:
        return self.finished.is_set()

    @property
    def has_video(self) -> bool:
        return "video" in self.info.tracks

    def output_kinds(self) -> frozenset[str]:
        """The kinds this stream sends or will send to its sinks (a variant: those its plan
        produces, before its encoders' first output)."""
        return frozenset(self.info.tracks)

    def expect(self, kinds: frozenset[str]) -> None:
        """The kinds the publisher announces (see ``SETTLE_ANNOUNCED``)."""
        self.announced = kinds

    def settled(self) -> bool:
        """Whether the publisher's tracks are all known (see ``SETTLE``): video and audio, or
        one of them, announced ``SETTLE`` ago (``SETTLE_ANNOUNCED`` while the publisher has
        announced a kind still unknown; at once when it announced that one only)."""
        n = len(self.info.tracks)
        if n >= 2:
            return True
        if n == 0:
            return False
        waited = time.monotonic() - self._first_track_at
        if self.announced:
            return self.announced <= self.info.tracks.keys() or waited >= SETTLE_ANNOUNCED
        return waited >= SETTLE

    async def wait_settled(self, timeout: float = SETTLE_WAIT) -> None:
        """Until ``settled()``, the end of the stream, or ``timeout``; then ``HubError`` if it
        ended, ``NoMediaYet`` if it still has no track. Polls: it only ever waits in the first
        moments after a publish. The wait for an announced kind (``settled``) may outlast
        ``timeout``: it has its own bound."""
        deadline = time.monotonic() + timeout
        while not self.settled() and not self.ended and (
                time.monotonic() < deadline or (self.announced and self.info.tracks)):
            await asyncio.sleep(0.05)
        if self.ended:
            raise HubError(f"stream {self.key} ended")
        if not self.info.tracks:
            raise NoMediaYet(f"stream {self.key} has no media yet")

    # -- publisher side ------------------------------------------------------------------

    def set_track(self, track: Track) -> None:
        """A new or changed codec configuration; sinks get it before the next frame.

        A track that changes *codec* (an h5 publisher's TS going from MPEG-1 to H.264 under a
        running upload) ends every sink: each was planned for the old codec, and no player
        follows a codec change mid-stream (jsmpeg, flv.js, ffplay all stop or show garbage).
        Their viewers are closed with the reason and get a new plan when they play again."""
        if not self.info.tracks:
            self._first_track_at = time.monotonic()
        old = self.info.tracks.get(track.kind)
        if old is not None and old.codec != track.codec:
            reason = (f"the publisher switched its {track.kind} from {old.codec} to {track.codec}; "
                      f"play again")
            log.info("%s: %s; %d output(s) ended", self.key, reason, len(self.sinks))
            self.gop = []
            self._gop_bytes = 0
            self._end_sinks(reason)
        self.info.tracks[track.kind] = track
        for sink in list(self.sinks.values()):
            sink.on_track(track)

    def set_metadata(self, metadata: dict[str, object]) -> None:
        self.info.metadata = dict(metadata)
        for sink in list(self.sinks.values()):
            sink.on_metadata(self.info.metadata)

    def push(self, frame: Frame) -> None:
        """Publish one frame; a frame carrying a new ``Track`` object announces it first, so
        producers whose configuration arrives in-band (TS, transcoders) need no bookkeeping."""
        if self.info.tracks.get(frame.track.kind) is not frame.track:
            self.set_track(frame.track)
        self.frames_in += 1
        placed = self.timeline.place(frame)  # a source clock that jumps back continues instead
        if placed is None:
            return
        frame = placed
        n = len(frame.data)
        self.bytes_in += n
        r = self._rate.get(frame.track.kind)
        tb = frame.time_base  # integer arithmetic: Fraction's is slow on this per-frame path
        ms = frame.dts * tb.numerator * 1000 / tb.denominator
        if r is None:
            self._rate[frame.track.kind] = [ms, ms, 0.0]
        else:
            r[1] = ms
            r[2] += n
        self._remember(frame)
        for key, sink in list(self.sinks.items()):
            try:
                sink.on_frame(frame)
            except Exception:  # a broken output must not take the publisher (or others) down
                log.exception("%s: sink %r failed on a frame; removed", self.key, key)
                self._fail_sink(key, sink)

    def _remember(self, frame: Frame) -> None:
        if not self.has_video:
            self.gop = [frame]  # audio only: any packet is a valid start
            self._gop_bytes = len(frame.data)
            return
        if frame.keyframe and frame.track.kind == "video":
            self.gop = [frame]
            self._gop_bytes = len(frame.data)
            return
        if not self.gop:
            return  # no keyframe yet: nothing decodable to cache
        if len(self.gop) >= MAX_GOP_FRAMES or self._gop_bytes > MAX_GOP_BYTES:
            log.warning("%s: GOP cache over %d frames / %d bytes, cleared until next keyframe",
                        self.key, MAX_GOP_FRAMES, MAX_GOP_BYTES)
            self.gop = []
            self._gop_bytes = 0
            return
        self.gop.append(frame)
        self._gop_bytes += len(frame.data)

    def request_keyframe(self) -> bool:
        """Ask the publisher for a keyframe (a new viewer or variant has no GOP to start from).
        False when it cannot be asked: then only the GOP cache or the next keyframe helps."""
        hook = self.keyframe_hook
        return bool(hook()) if hook is not None else False

    def bitrate(self, kind: str) -> int:
        """Measured bit/s of one track since publishing started (0 until 0.5 s are known)."""
        r = self._rate.get(kind)
        if r is None or r[1] - r[0] < 500:
            return 0
        return int(r[2] * 8000 / (r[1] - r[0]))

    # -- consumer side -------------------------------------------------------------------

    def sink(self, key: object, factory: Callable[[Stream], S]) -> S:
        """The shared sink for ``key``, created (and primed with the GOP cache) on first use."""
        sink = self.sinks.get(key)
        if sink is None:
            sink = factory(self)
            self.sinks[key] = sink
            log.debug("%s: sink %r started", self.key, key)
        return sink  # type: ignore[return-value]

    def _fail_sink(self, key: object, sink: Sink) -> None:
        if self.sinks.get(key) is sink:
            del self.sinks[key]
            try:
                sink.on_end("internal error in this output")
            except Exception:
                log.exception("%s: sink %r failed while ending", self.key, key)

    def drop_sink(self, key: object) -> None:
        if self.sinks.pop(key, None) is not None:
            log.debug("%s: sink %r stopped", self.key, key)

    def end(self, reason: str) -> None:
        if self.ended:
            return
        self.end_reason = reason
        self.finished.set()
        self._end_sinks(reason)
        self.gop = []

    def _end_sinks(self, reason: str) -> None:
        sinks, self.sinks = list(self.sinks.values()), {}
        for sink in sinks:
            try:
                sink.on_end(reason)
            except Exception:  # one broken sink must not keep the others from ending
                log.exception("%s: sink failed while ending", self.key)


class Hub:
    """Registry of live streams: one publisher per key (``hub.sessions`` is the way in)."""

    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self._listeners: list[Callable[[str, Stream], None]] = []

    def publish(self, key: str, info: StreamInfo, publisher: str) -> Stream:
        current = self.streams.get(key)
        if current is not None and not current.ended:
            raise StreamBusy(f"stream {key} is already being published by {current.publisher}")
        stream = Stream(key, info, publisher)
        self.streams[key] = stream
        log.info("%s: published by %s (%s)", key, publisher, info.protocol)
        self._notify("publish", stream)
        return stream

    def unpublish(self, stream: Stream, reason: str = "publisher left") -> None:
        if self.streams.get(stream.key) is stream:
            del self.streams[stream.key]
        if not stream.ended:
            log.info("%s: unpublished: %s (%d frames received)", stream.key, reason,
                     stream.frames_in)
            stream.end(reason)
            self._notify("unpublish", stream)

    def get(self, key: str) -> Stream:
        stream = self.streams.get(key)
        if stream is None or stream.ended:
            raise StreamNotFound(f"stream {key} not found")
        return stream

    def subscribe(self, listener: Callable[[str, Stream], None]) -> None:
        """Hub events (``publish``/``unpublish``), e.g. for CDN push or the HTTP API."""
        self._listeners.append(listener)

    def _notify(self, event: str, stream: Stream) -> None:
        for listener in self._listeners:
            try:
                listener(event, stream)
            except Exception:
                log.exception("hub listener failed on %s %s", event, stream.key)

    def close(self, reason: str = "gateway shutting down") -> None:
        for stream in list(self.streams.values()):
            self.unpublish(stream, reason)
