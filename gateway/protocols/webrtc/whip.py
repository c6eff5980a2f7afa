"""WHIP ingest: a WebRTC publisher's encoded frames into the hub, on one A/V clock.

Nothing is decoded. H.264 arrives as Annex B access units (aiortc's depayloader output); the
in-band SPS/PPS become the track's avcC and the rest is re-framed as AVCC. VP8 frames and Opus
packets are pushed as they are. Each RTP timestamp is placed on the session clock:

* before a track's first RTCP sender report, its first frame is anchored at its arrival time;
* from the first sender report on, RTP time maps through the publisher's NTP clock, the same
  for audio and video, so both stay in sync however differently their packets were delayed.

The publisher is asked for keyframes (PLI) when it starts, after a loss, when a consumer asks
(``request_keyframe(stream)``), and whenever its GOP grows past ``keyframe_interval``: browsers
send keyframes only on request, and every late RTMP/FLV/WHEP joiner must start at one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from fractions import Fraction

from ... import planner
from ...codecs import h264
from ...hub.sessions import Publisher, Refusal, Sessions
from ...hub.stream import Stream
from ...media import Frame, Track
from ...wire import sdp
from ...wire.rtp.clock import RtpClock
from . import PeerSession, SessionError, Settings, seam

log = logging.getLogger(__name__)

__all__ = ["WhipSession", "request_keyframe"]

VIDEO_TB = Fraction(1, 90000)
AUDIO_TB = Fraction(1, 48000)
KEYFRAME_RETRY = 0.5  # seconds between PLIs while waiting for a keyframe


# -- keyframe requests ---------------------------------------------------------------------------

KeyframeHook = Callable[[], bool]


def set_keyframe_hook(stream: Stream, hook: KeyframeHook | None) -> None:
    """Let consumers of ``stream`` ask its publisher for a keyframe (``Stream.request_keyframe``)."""
    stream.keyframe_hook = hook


def request_keyframe(stream: Stream) -> bool:
    """Ask whoever produces ``stream`` (variants delegate to their source) for a keyframe.

    True if a publisher was asked; False when none can be (e.g. RTMP): the caller then has only
    the GOP cache.
    """
    return stream.request_keyframe()


# -- the ingest session ------------------------------------------------------------------------


class WhipSession(PeerSession):
    """One WHIP publisher: an aiortc peer whose frames go to the hub still encoded."""

    role = "whip"

    def __init__(self, settings: Settings, sessions: Sessions, key: str, peer: str,
                 query: Mapping[str, str]) -> None:
        super().__init__(settings, key, peer)
        self.sessions = sessions
        self.matrix = sessions.matrix
        self.query = query
        self.publisher: Publisher | None = None
        self.stream: Stream | None = None
        self.codecs: dict[str, str] = {}  # kind -> gateway codec negotiated
        self.taps: dict[str, seam.ReceiverTap] = {}
        self.clock = RtpClock()
        self.video: Track | None = None
        self.audio: Track | None = None
        self._sps: list[bytes] = []
        self._pps: list[bytes] = []
        self._need_key = True
        self._last_key = 0.0
        self._last_pli = 0.0
        self._last_pts: dict[str, int] = {}
        self._pt_codec: dict[int, str] = {}
        self._ssrc_kind: dict[int, str] = {}
        self._guard: asyncio.Task[None] | None = None
        self.frames = {"video": 0, "audio": 0}
        self.dropped = {"video": 0, "audio": 0}
        self.keyframes = 0
        self.first_keyframe_at = 0.0

    async def start(self, offer: sdp.Offer) -> str:
        """Negotiate (H.264 preferred, then VP8; Opus), claim the stream key, return the answer."""
        kinds = offer.kinds()
        for kind, m in kinds.items():
            if m.direction not in ("sendonly", "sendrecv"):
                raise SessionError(400, f"{kind} m-section is {m.direction}: a WHIP offer sends media")
        chosen_codec = planner.negotiate_publish(self.matrix, "webrtc",
                                                 {k: m.offered() for k, m in kinds.items()})
        chosen: dict[str, int] = {}
        for kind, m in kinds.items():
            name = chosen_codec.get(kind)
            if name is None:
                continue
            codec = (sdp.choose_h264(m.codecs) if name == "h264"
                     else next(c for c in m.usable() if c.name == name))
            assert codec is not None
            chosen[m.mid] = codec.pt
            self.codecs[kind] = name
            self._pt_codec[codec.pt] = name
            if kind == "audio":
                self.audio = Track("audio", name, sample_rate=48000, channels=codec.channels or 2)
        if not chosen:
            offered = {k: [c.name for c in m.codecs] for k, m in kinds.items()}
            raise SessionError(422, f"no codec the gateway can ingest was offered (got {offered}; "
                                    "want H264 packetization-mode=1 or VP8, and Opus)")
        for kind in kinds:
            if kind in self.codecs:
                self.clock.add(kind, 90000 if kind == "video" else 48000)
        try:
            # watched for media once connected (``on_connected``): ICE may take longer
            self.publisher = await self.sessions.publish(
                self.key, "webrtc", self.peer, self.query, kick=self._kicked, watch=False)
        except Refusal as e:
            raise SessionError(e.http_status, str(e)) from None
        self.publisher.counters = self._counters
        self.stream = self.publisher.stream
        assert self.stream is not None
        set_keyframe_hook(self.stream, self.request_keyframe)
        try:
            return await self.answer(offer, chosen, self._tap)
        except BaseException:
            await self.close("negotiation failed")
            raise

    def _tap(self) -> None:
        for t in self.pc.getTransceivers():
            if t.kind not in self.codecs:
                continue
            self.taps[t.kind] = seam.tap_receiver(t.receiver, t.kind, *self._callbacks(t.kind))

    def _callbacks(self, kind: str) -> tuple[seam.FrameCallback, seam.SenderReportCallback]:
        def frame(f: seam.EncodedFrame) -> None:
            self._frame(kind, f)

        def report(ssrc: int, ntp: int, rtp: int) -> None:
            self.clock.sender_report(kind, ntp, rtp)

        return frame, report

    def on_connected(self) -> None:
        log.info("%r: connected (%s)", self, ", ".join(f"{k} {c}" for k, c in self.codecs.items()))
        self.request_keyframe()
        if self.publisher is not None:
            self.sessions.watch_idle(self.publisher, "media")
        self._guard = asyncio.ensure_future(self._guard_loop())

    def _kicked(self, reason: str) -> None:
        asyncio.ensure_future(self.close(reason))  # its own task: closing cancels the guard

    def _counters(self) -> dict[str, object]:
        assert self.stream is not None
        return {"bytes_in": self.stream.bytes_in, **self.stats()}

    # -- keyframes -----------------------------------------------------------------------

    def request_keyframe(self) -> bool:
        """PLI to the publisher, at most once per ``KEYFRAME_RETRY`` seconds."""
        tap = self.taps.get("video")
        if tap is None or self.closed:
            return False
        now = time.monotonic()
        if now - self._last_pli < KEYFRAME_RETRY:
            return True
        if tap.request_keyframe():
            self._last_pli = now
        return True

    async def _guard_loop(self) -> None:
        """Keep GOPs short (browsers send keyframes only when asked) and retry missing ones."""
        try:
            while not self.closed:
                await asyncio.sleep(0.25)
                if "video" not in self.codecs:
                    continue
                since = time.monotonic() - (self._last_key or self.connected_at)
                if self._need_key or since >= self.settings.keyframe_interval:
                    self.request_keyframe()
        except asyncio.CancelledError:
            pass

    # -- frames --------------------------------------------------------------------------

    def _frame(self, kind: str, f: seam.EncodedFrame) -> None:
        if self.closed or self.stream is None or self.publisher is None:
            return
        self.publisher.last_active = f.arrival
        codec = self._pt_codec.get(f.payload_type)
        if codec is None:
            return
        seconds = self.clock.seconds(kind, f.rtp_timestamp, f.arrival)
        if codec == "h264":
            self._h264(f, seconds)
        elif codec == "vp8":
            self._vp8(f, seconds)
        elif codec == "opus":
            self._opus(f, seconds)

    def _pts(self, kind: str, seconds: float, tb: Fraction) -> int:
        """Session seconds -> pts, never going back within a track (clock re-anchoring), and
        at least 1 ms after the previous frame, so millisecond outputs (FLV, RTMP) keep
        strictly increasing timestamps too."""
        pts = max(0, round(seconds / tb))
        last = self._last_pts.get(kind)
        if last is not None:
            step = max(1, tb.denominator // (1000 * tb.numerator))  # 1 ms
            pts = max(pts, last + step)
        self._last_pts[kind] = pts
        return pts

    def _lost(self, why: str) -> None:
        if not self._need_key:
            log.info("%r: %s; waiting for a keyframe", self, why)
        self._need_key = True
        self.dropped["video"] += 1
        self.request_keyframe()

    def _h264(self, f: seam.EncodedFrame, seconds: float) -> None:
        if f.discontinuity and self.frames["video"]:
            self._need_key = True
        try:
            if not f.data.startswith(b"\x00\x00\x00\x01"):
                raise h264.H264Error("frame does not start with a NAL unit")
            nals = h264.split_annexb(f.data)
            types = [h264.nal_type(n) for n in nals]
        except h264.H264Error as e:
            self._lost(f"unusable H264 frame ({e})")
            return
        sps = [n for n, t in zip(nals, types, strict=False) if t == h264.NAL_SPS]
        pps = [n for n, t in zip(nals, types, strict=False) if t == h264.NAL_PPS]
        if sps and pps and (sps != self._sps or pps != self._pps):
            try:
                info = h264.parse_sps(sps[0])
                config = h264.build_avc_config(sps, pps)
            except h264.H264Error as e:
                self._lost(f"bad SPS/PPS ({e})")
                return
            self._sps, self._pps = sps, pps
            self.video = Track("video", "h264", config, width=info.width, height=info.height,
                               frame_rate=info.frame_rate or 0.0, profile=info.profile,
                               level=info.level)
            self._announce(self.video)
        keyframe = h264.NAL_IDR in types
        if self.video is None or (self._need_key and not keyframe):
            self._lost("no keyframe yet" if self.video is None else "frames lost")
            return
        body = [n for n, t in zip(nals, types, strict=False)
                if t not in (h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD)]
        if not body:
            return
        self._video_out(h264.join_avcc(body), keyframe, seconds)

    def _vp8(self, f: seam.EncodedFrame, seconds: float) -> None:
        if f.discontinuity and self.frames["video"]:
            self._need_key = True
        data = f.data
        if len(data) < 3:
            return
        keyframe = not data[0] & 1
        if keyframe:
            if len(data) < 10 or data[3:6] != b"\x9d\x01\x2a":
                self._lost("malformed VP8 keyframe")
                return
            width = int.from_bytes(data[6:8], "little") & 0x3FFF
            height = int.from_bytes(data[8:10], "little") & 0x3FFF
            if self.video is None or (self.video.width, self.video.height) != (width, height):
                self.video = Track("video", "vp8", b"", width=width, height=height)
                self._announce(self.video)
        if self.video is None or (self._need_key and not keyframe):
            self._lost("no keyframe yet" if self.video is None else "frames lost")
            return
        self._video_out(data, keyframe, seconds)

    def _video_out(self, data: bytes, keyframe: bool, seconds: float) -> None:
        assert self.stream is not None and self.video is not None
        if keyframe:
            if self._need_key:
                log.info("%r: keyframe received, video flowing", self)
            self._need_key = False
            self._last_key = time.monotonic()
            self.keyframes += 1
            if not self.first_keyframe_at:
                self.first_keyframe_at = self._last_key
        pts = self._pts("video", seconds, VIDEO_TB)
        self.frames["video"] += 1
        self.stream.push(Frame(self.video, data, pts, pts, VIDEO_TB, keyframe))

    def _opus(self, f: seam.EncodedFrame, seconds: float) -> None:
        assert self.stream is not None and self.audio is not None
        if "video" in self.codecs and "video" not in self.stream.tracks:
            # start both tracks together (FLV headers, GOP cache): audio waits for video's
            # first keyframe, unless the publisher never sends one
            if time.monotonic() - (self.connected_at or self.created) < self.settings.track_wait:
                self.dropped["audio"] += 1
                return
        pts = self._pts("audio", seconds, AUDIO_TB)
        self.frames["audio"] += 1
        self.stream.push(Frame(self.audio, f.data, pts, pts, AUDIO_TB, True))

    def _announce(self, track: Track) -> None:
        assert self.stream is not None
        log.info("%r: %s %dx%d %s", self, track.codec, track.width, track.height, track.profile)
        self.stream.set_track(track)
        if self.audio is not None and "audio" not in self.stream.tracks:
            self.stream.set_track(self.audio)

    # -- end -----------------------------------------------------------------------------

    def on_closing(self, reason: str) -> None:
        if self._guard is not None:
            self._guard.cancel()
        if self.stream is not None:
            set_keyframe_hook(self.stream, None)
        if self.publisher is not None:
            self.sessions.unpublish(self.publisher, f"WHIP session ended: {reason}")

    def stats(self) -> dict[str, object]:
        return {"codecs": self.codecs, "frames": dict(self.frames), "dropped": dict(self.dropped),
                "keyframes": self.keyframes, "synced": sorted(self.clock.synced),
                "plis": sum(t.plis_sent for t in self.taps.values())}
