"""WHEP egress: viewers get the stream's encoded frames, converted once, never re-encoded.

``WebRtcOutput`` is the one sink per stream (or per transcoding variant) that all WebRTC viewers
of it share: each frame becomes an ``av.Packet`` once (H.264 AVCC -> Annex B with SPS/PPS before
every IDR; VP8 and Opus as they are), and that same packet object is queued to every viewer.
aiortc's sender only packetizes ``av.Packet``s (verified by ``tests/test_webrtc_seam.py``), so
the per-viewer cost is RTP packetization and SRTP, never a codec.

Each viewer's queue is bounded: a viewer that falls behind is emptied and waits for the next
keyframe (memory never grows). A new viewer starts with the GOP cache, its timestamps squeezed
into the instant before the newest cached frame so the picture appears at once without adding
latency. A viewer's PLI/FIR goes to the publisher when it can make keyframes (WHIP), otherwise
it is answered by re-sending the GOP cache to that viewer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from fractions import Fraction

import av
from aiortc import (
    RTCRtpSender,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ... import planner
from ...codecs import h264
from ...hub.sessions import Code, Player, Refusal, Sessions
from ...hub.stream import Stream
from ...media import Frame, Track
from ...wire import sdp
from . import PeerSession, SessionError, Settings, seam
from .whip import request_keyframe

log = logging.getLogger(__name__)

__all__ = ["PacketTrack", "WebRtcOutput", "WhepSession"]

SINK_KEY = "webrtc"
RTP_TB = Fraction(1, 90000)  # the grid squeezed (primed / re-sent) frames are placed on
PLI_INTERVAL = 0.5  # seconds between two keyframe answers to one viewer


class PacketTrack(MediaStreamTrack):
    """A viewer's track: pre-encoded packets from a bounded queue, handed to aiortc's sender."""

    def __init__(self, kind: str, settings: Settings) -> None:
        super().__init__()
        self.kind = kind
        self._q: deque[av.Packet] = deque()
        self._bytes = 0
        self._wake: asyncio.Event = asyncio.Event()
        self._max_frames = settings.video_queue_frames if kind == "video" else settings.audio_queue_packets
        self._max_bytes = settings.video_queue_bytes
        self.waiting_key = kind == "video"
        self.active = False  # set once the connection is up: nothing goes stale in the queue
        self.drops = 0
        self.sent = 0
        self.bytes_sent = 0
        self.first_sent_at = 0.0
        self.last_pts_seconds = 0.0

    def put(self, packet: av.Packet, keyframe: bool) -> None:
        if not self.active or self.readyState != "live":
            return
        if self.kind == "video":
            if self.waiting_key:
                if not keyframe:
                    return
                self.waiting_key = False
            if len(self._q) >= self._max_frames or self._bytes > self._max_bytes:
                self.drops += 1
                self._q.clear()
                self._bytes = 0
                if not keyframe:
                    self.waiting_key = True
                    log.info("WebRTC viewer behind (%d frames queued): dropped to next keyframe",
                             self._max_frames)
                    return
        elif len(self._q) >= self._max_frames:
            self._q.popleft()
            self.drops += 1
        self._q.append(packet)
        self._bytes += packet.size
        self._wake.set()

    def reset(self, packets: list[av.Packet]) -> None:
        """Replace whatever is queued by ``packets`` (starting at a keyframe)."""
        self._q.clear()
        self._q.extend(packets)
        self._bytes = sum(p.size for p in packets)
        self.waiting_key = not packets
        if packets:
            self._wake.set()

    async def recv(self) -> av.Packet:
        while not self._q:
            if self.readyState != "live":
                raise MediaStreamError
            self._wake.clear()
            await self._wake.wait()
        if self.readyState != "live":
            raise MediaStreamError
        packet = self._q.popleft()
        self._bytes -= packet.size
        self.sent += 1
        self.bytes_sent += packet.size
        if not self.first_sent_at:
            self.first_sent_at = time.monotonic()
        if packet.pts is not None and packet.time_base is not None:
            self.last_pts_seconds = float(packet.pts * packet.time_base)
        return packet

    @property
    def queued(self) -> int:
        """Packets waiting for aiortc's sender (no ``__len__``: aiortc tests tracks' truth)."""
        return len(self._q)

    def stop(self) -> None:
        super().stop()
        self._wake.set()


class WebRtcOutput:
    """Shared sink: one conversion per frame, the same ``av.Packet`` to every viewer."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.viewers: list[WhepSession] = []
        self._configs: dict[bytes, h264.AvcConfig] = {}  # avcC bytes -> parsed, for SPS/PPS
        self.packetizers: dict[str, seam.SharedPacketizer] = {}
        self.frames = 0

    def packetizer(self, codec: str) -> seam.SharedPacketizer:
        """The RTP packetizer every viewer's sender of ``codec`` shares (split once per frame)."""
        p = self.packetizers.get(codec)
        if p is None:
            p = self.packetizers[codec] = seam.SharedPacketizer(codec)
        return p

    # -- sink interface ------------------------------------------------------------------

    def on_track(self, track: Track) -> None:
        pass

    def on_metadata(self, metadata: dict[str, object]) -> None:
        pass

    def on_frame(self, frame: Frame) -> None:
        if not self.viewers:
            return
        packet = self.packet(frame)
        if packet is None:
            return
        self.frames += 1
        keyframe = frame.keyframe
        for v in self.viewers:
            v.deliver(frame.track.kind, packet, keyframe)

    def on_end(self, reason: str) -> None:
        viewers, self.viewers = self.viewers, []
        for v in viewers:
            asyncio.ensure_future(v.close(f"stream ended: {reason}"))

    # -- conversion ----------------------------------------------------------------------

    def payload(self, frame: Frame) -> bytes | None:
        track = frame.track
        if track.codec == "h264":
            cfg = self._configs.get(track.config)
            if cfg is None and track.config:
                try:
                    cfg = h264.parse_avc_config(track.config)
                except h264.H264Error as e:
                    log.warning("%s: bad avcC (%s); frames sent without parameter sets", self.stream.key, e)
                else:
                    if len(self._configs) > 8:
                        self._configs.clear()
                    self._configs[track.config] = cfg
            try:
                return h264.avcc_to_annexb(frame.data, cfg)
            except h264.H264Error as e:
                log.warning("%s: malformed H264 frame skipped (%s)", self.stream.key, e)
                return None
        if track.codec in ("vp8", "opus"):
            return frame.data
        return None

    def packet(self, frame: Frame, pts: int | None = None, time_base: Fraction | None = None) -> av.Packet | None:
        data = self.payload(frame)
        if data is None:
            return None
        packet = av.Packet(data)
        packet.pts = frame.pts if pts is None else pts
        packet.time_base = frame.time_base if time_base is None else time_base
        return packet

    def squeezed_gop(self, after: float | None = None) -> list[av.Packet]:
        """The cached GOP's video as packets on a 1/90000 grid: ending at the newest cached
        frame's time (a joiner), or starting right after ``after`` seconds (a re-send)."""
        video = [f for f in self.stream.gop if f.track.kind == "video"]
        if not video or not video[0].keyframe:
            return []
        last = round(video[-1].pts * video[-1].time_base / RTP_TB)
        start = last - (len(video) - 1) if after is None else round(after / RTP_TB) + 1
        out = []
        for i, f in enumerate(video):
            p = self.packet(f, start + i, RTP_TB)
            if p is not None:
                out.append(p)
        return out

    # -- viewers -------------------------------------------------------------------------

    def add(self, viewer: WhepSession) -> None:
        """Register a viewer; frames reach it once ``start_viewer`` (connected) ran."""
        self.viewers.append(viewer)

    def start_viewer(self, viewer: WhepSession) -> None:
        """The viewer is connected: prime it with the GOP cache, then live frames."""
        for track in viewer.tracks.values():
            track.active = True
        video = viewer.tracks.get("video")
        if video is not None:
            gop = self.squeezed_gop()
            if gop:
                video.reset(gop)
            elif not request_keyframe(self.stream):
                log.debug("%s: no GOP cached and no publisher to ask; viewer waits", self.stream.key)

    def remove(self, viewer: WhepSession) -> None:
        try:
            self.viewers.remove(viewer)
        except ValueError:
            pass
        if not self.viewers:
            self.stream.drop_sink(SINK_KEY)


class WhepSession(PeerSession):
    """One WHEP viewer of one stream (or of the variant its codecs call for)."""

    role = "whep"

    def __init__(self, settings: Settings, sessions: Sessions, key: str, peer: str,
                 query: Mapping[str, str]) -> None:
        super().__init__(settings, key, peer)
        self.sessions = sessions
        self.query = query
        self.player: Player[WebRtcOutput] | None = None
        self.source: Stream | None = None  # the published stream
        self.media: Stream | None = None  # what this viewer is served from (it, or a variant)
        self.plan: planner.Plan | None = None
        self.output: WebRtcOutput | None = None
        self.tracks: dict[str, PacketTrack] = {}
        self._senders: dict[str, RTCRtpSender] = {}
        self.codecs: dict[str, str] = {}
        self._last_pli = 0.0
        self.plis = 0

    async def start(self, offer: sdp.Offer) -> str:
        kinds = offer.kinds()
        offers = {k: m.offered() for k, m in kinds.items()}
        chosen: dict[str, int] = {}

        def target(source: Stream) -> planner.TargetSpec:
            """What this viewer is sent, planned from the settled source and the offer: a kind
            the answer has no sender for (the source's video came after the viewer settled for
            audio) must not be transcoded for it later, so the variant plans it a Drop."""
            for kind, m in kinds.items():
                if m.direction not in ("recvonly", "sendrecv"):
                    raise Refusal(Code.BAD_REQUEST,
                                  f"{kind} m-section is {m.direction}: a WHEP offer receives media")
            for kind in source.tracks:
                offers.setdefault(kind, [])  # not offered: dropped, never transcoded for nobody
            try:
                plan = planner.plan(self.sessions.matrix, source.tracks,
                                    planner.TargetSpec("webrtc", offers))
            except ValueError as e:
                raise Refusal(Code.UNSUPPORTED,
                              f"cannot plan this stream for WebRTC: {e}") from None
            for kind, tp in plan.tracks.items():
                section = kinds.get(kind)
                if section is None or isinstance(tp, planner.Drop):
                    continue
                if isinstance(tp, planner.PassThrough):
                    codec_name, profile = tp.codec, source.tracks[kind].profile
                else:
                    codec_name, profile = tp.to_codec, str(tp.params.get("profile", ""))
                codec = (sdp.choose_h264(section.codecs, profile) if codec_name == "h264"
                         else next((c for c in section.usable() if c.name == codec_name), None))
                if codec is None:
                    continue
                chosen[section.mid] = codec.pt
                self.codecs[kind] = codec_name
            if not chosen:
                raise Refusal(Code.UNSUPPORTED,
                              f"no common codec: the stream has "
                              f"{ {k: t.codec for k, t in source.tracks.items()} }, "
                              f"the offer {offers}; {plan}")
            self.plan = plan
            return planner.TargetSpec("webrtc", {k: (offers.get(k, []) if k in self.codecs else [])
                                                 for k in {"video", "audio", *offers}})

        try:
            self.player = await self.sessions.play(
                self.key, target, self.peer, self.query, WebRtcOutput, sink_key=SINK_KEY,
                protocol="webrtc", settle=self.settings.track_wait)
        except Refusal as e:
            raise SessionError(e.http_status, str(e)) from None
        self.player.counters = self._counters
        self.player.kick = self._kicked
        self.source, self.media = self.player.source, self.player.media
        self.output = self.player.sink
        assert self.output is not None
        self.output.add(self)  # (frames reach it once connected: ``start_viewer``)
        answer = await self.answer(offer, chosen, self._add_tracks)
        if self.closed:
            raise SessionError(404, f"stream {self.key} ended")
        for kind, sender in self._senders.items():
            seam.share_packetizer(sender, self.output.packetizer(self.codecs[kind]))
        log.info("%r: %s", self, self.plan)
        return answer

    def _kicked(self, reason: str) -> None:
        asyncio.ensure_future(self.close(reason))

    def _counters(self) -> dict[str, object]:
        tracks = self.tracks.values()
        return {"bytes_out": sum(t.bytes_sent for t in tracks),
                "drops": sum(t.drops for t in tracks),
                "queue_frames": sum(t.queued for t in tracks), **self.stats()}

    def _add_tracks(self) -> None:
        for kind in self.codecs:
            track = PacketTrack(kind, self.settings)
            sender = self.pc.addTrack(track)
            self.tracks[kind] = track
            self._senders[kind] = sender
            if kind == "video":
                seam.watch_sender(sender, self._viewer_wants_keyframe)

    def on_connected(self) -> None:
        if self.output is not None:
            self.output.start_viewer(self)

    def deliver(self, kind: str, packet: av.Packet, keyframe: bool) -> None:
        track = self.tracks.get(kind)
        if track is not None:
            track.put(packet, keyframe)

    def _viewer_wants_keyframe(self) -> None:
        """PLI/FIR from the viewer: the publisher makes one, or the GOP cache answers."""
        now = time.monotonic()
        if now - self._last_pli < PLI_INTERVAL or self.media is None or self.output is None:
            return
        self._last_pli = now
        self.plis += 1
        if request_keyframe(self.media):
            return
        video = self.tracks.get("video")
        if video is not None:
            gop = self.output.squeezed_gop(after=video.last_pts_seconds)
            if gop:
                video.reset(gop)

    @property
    def first_frame_delay(self) -> float:
        """Seconds from the session's creation to its first video (else audio) packet sent."""
        t = self.tracks.get("video") or self.tracks.get("audio")
        return t.first_sent_at - self.created if t is not None and t.first_sent_at else -1.0

    def on_closing(self, reason: str) -> None:
        for t in self.tracks.values():
            t.stop()
        if self.player is not None:
            self.sessions.stop(self.player)
        if self.output is not None:
            self.output.remove(self)

    def stats(self) -> dict[str, object]:
        return {"codecs": self.codecs, "plan": str(self.plan), "plis": self.plis,
                "tracks": {k: {"sent": t.sent, "drops": t.drops} for k, t in self.tracks.items()}}
